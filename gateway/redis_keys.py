"""Every Redis key and channel name the gateway uses, in one place.

Per-phone records are single-key operations and may live in any cluster slot.
The nonce and idempotency keys are written in the same Lua script as the
XADD, so they carry the stream's hash tag and share its slot in Redis Cluster.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


def hash_tag(key: str) -> str:
    """The part of a key Redis Cluster hashes: the first non-empty {...}, else the whole key."""
    start = key.find("{")
    if start != -1:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key


@dataclass(frozen=True, slots=True)
class KeyNames:
    prefix: str = "gateway"
    stream: str = "gateway:events"

    def phone(self, phone_id: str) -> str:
        return f"{self.prefix}:phone:{phone_id}"

    @property
    def phone_index(self) -> str:
        return f"{self.prefix}:phones"

    def number(self, number: str) -> str:
        return f"{self.prefix}:number:{number}"

    @property
    def changes_channel(self) -> str:
        return f"{self.prefix}:changes"

    @property
    def _tag(self) -> str:
        return "{" + hash_tag(self.stream) + "}"

    def nonce(self, phone_id: str, nonce: str) -> str:
        digest = hashlib.blake2b(nonce.encode(), digest_size=12).hexdigest()
        return f"{self._tag}:nonce:{phone_id}:{digest}"

    def idempotency(self, phone_id: str, key: str) -> str:
        digest = hashlib.blake2b(key.encode(), digest_size=16).hexdigest()
        return f"{self._tag}:idem:{phone_id}:{digest}"

    @property
    def readiness(self) -> str:
        """Written by /readyz: a write in the stream's slot, the thing every webhook needs."""
        return f"{self._tag}:ready"

    @property
    def unused(self) -> str:
        """A placeholder key in the stream's slot, for script arguments that are absent."""
        return f"{self._tag}:unused"

"""Every Redis key and channel name the gateway uses, in one place.

Per-phone records are single-key operations and may live in any cluster slot.
The nonce and idempotency keys are written in the same Lua script as the
XADD, so they carry a hash tag that puts them in the stream's slot in Redis
Cluster (`stream_tag`), whatever the stream is called.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from redis.crc import key_slot

if TYPE_CHECKING:
    from gateway.settings import Settings


def hash_tag(key: str) -> str:
    """The part of a key Redis Cluster hashes: what is between the first "{" and the next "}"
    when that is not empty, else the whole key (the cluster spec's rule)."""
    start = key.find("{")
    if start != -1:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key


def slot(key: str) -> int:
    """The Redis Cluster slot of a key."""
    return key_slot(key.encode())


@functools.lru_cache(maxsize=64)
def stream_tag(stream: str) -> str:
    """A "{...}" prefix that puts any key it starts in the same cluster slot as `stream`.

    Usually the stream's own hash tag. When that cannot be written between braces
    (a stream name hashed whole that contains "}"), a brace-free tag with the same
    slot is searched for instead (at most a few ten thousand CRC16s, once).
    """
    target = slot(stream)
    tag = hash_tag(stream)
    if "}" not in tag and slot("{" + tag + "}") == target:
        return "{" + tag + "}"
    base = tag.replace("{", "").replace("}", "")
    for counter in range(1_000_000):
        candidate = f"{base}~{counter}"
        if slot(candidate) == target:
            return "{" + candidate + "}"
    raise AssertionError("unreachable: CRC16 covers every slot")  # pragma: no cover


@dataclass(frozen=True, slots=True)
class KeyNames:
    prefix: str = "gateway"
    stream: str = "gateway:events"
    _tag: str = field(init=False, repr=False, compare=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyNames:
        """The names for GATEWAY_KEY_PREFIX and GATEWAY_STREAM."""
        return cls(prefix=settings.key_prefix, stream=settings.stream)

    def phone(self, phone_id: str) -> str:
        return f"{self.prefix}:phone:{phone_id}"

    @property
    def phone_index(self) -> str:
        return f"{self.prefix}:phones"

    def number(self, number: str) -> str:
        return f"{self.prefix}:number:{number}"

    @property
    def fingerprint_key(self) -> str:
        """The deployment's fingerprint key (gateway/secrets.py), sealed under GATEWAY_KEK; created once (SET NX)."""
        return f"{self.prefix}:fingerprint-key"

    @property
    def changes_channel(self) -> str:
        return f"{self.prefix}:changes"

    def __post_init__(self) -> None:
        object.__setattr__(self, "_tag", stream_tag(self.stream))  # used for two keys of every event

    @property
    def dead_letter(self) -> str:
        """The reference consumer's dead-letter stream (gateway/consumer.py)."""
        return self.dead_letter_of(self.stream)

    @staticmethod
    def dead_letter_of(stream: str) -> str:
        """The dead-letter stream of any stream a consumer reads (`gateway consume --stream`)."""
        return f"{stream}:dead"

    def nonce(self, phone_id: str, nonce: str) -> str:
        digest = hashlib.blake2b(nonce.encode(), digest_size=12).hexdigest()
        return f"{self._tag}:nonce:{phone_id}:{digest}"

    def idempotency(self, phone_id: str, key: str) -> str:
        digest = hashlib.blake2b(key.encode(), digest_size=16).hexdigest()
        return f"{self._tag}:idem:{phone_id}:{digest}"

    def signed_content(self, phone_id: str, digest: bytes) -> str:
        """A verifier's digest of what a signature covered (`Verified.signed_digest`): duplicates by content."""
        return f"{self._tag}:signed:{phone_id}:{digest.hex()}"

    @property
    def readiness(self) -> str:
        """Written by /readyz: a write in the stream's slot, the thing every webhook needs."""
        return f"{self._tag}:ready"

    def call(self, phone_id: str, call_id: str) -> str:
        """A call's state hash for call-aware checks (gateway/calls.py)."""
        digest = hashlib.blake2b(call_id.encode(), digest_size=16).hexdigest()
        return f"{self._tag}:call:{phone_id}:{digest}"

    def call_keys(self, phone_id: str, call_id: str) -> tuple[str, str, str]:
        """A call's state hash, timeline list and held-events list (the forwarder's CallCheck.keys)."""
        state = self.call(phone_id, call_id)
        return state, f"{state}:timeline", f"{state}:held"

    def unlisted_sources(self, provider: str) -> tuple[str, str]:
        """Allowlist discovery (gateway/source_log.py): a carrier's index of source networks (a sorted
        set scored by last seen) and their counts (a hash), in one cluster slot (one hash tag)."""
        tag = "{" + f"{self.prefix}:unlisted-sources".replace("{", "").replace("}", "") + "}"
        return f"{tag}:{provider}:index", f"{tag}:{provider}:networks"

    def inspector_logout(self, session_id: str) -> str:
        """A logged-out inspector session (gateway/inspector/session.py), until its cookie expires."""
        return f"{self.prefix}:inspector-logout:{session_id}"

    @property
    def unused(self) -> str:
        """A placeholder key in the stream's slot, for script arguments that are absent."""
        return f"{self._tag}:unused"

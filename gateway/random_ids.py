"""Random 128-bit ids (hex) from the OS CSPRNG, read in blocks; and new random keys (`new_key`).

`os.urandom(16)` per event is one getrandom() system call per request; on the VMs we
measured, that call cost as much as the rest of building the event (loadtests/README.md).
Reading 4 KiB at a time gives the same kernel randomness for 256 ids per call. The block
is dropped in a forked child, so two processes never hand out the same ids.
"""

from __future__ import annotations

import base64
import os
import secrets

_ID_BYTES = 16
_BLOCK_IDS = 256


class RandomIds:
    def __init__(self, block_ids: int = _BLOCK_IDS) -> None:
        self._block_bytes = block_ids * _ID_BYTES
        self._block = b""
        self._offset = 0

    def next_hex(self) -> str:
        """32 hex characters, as `secrets.token_hex(16)`."""
        offset = self._offset
        if offset >= len(self._block):
            self._block = os.urandom(self._block_bytes)
            offset = 0
        self._offset = offset + _ID_BYTES
        return self._block[offset : offset + _ID_BYTES].hex()

    def forget(self) -> None:
        self._block = b""
        self._offset = 0


def new_key(size: int = 32) -> str:
    """`size` random bytes from the OS CSPRNG, base64: a new GATEWAY_KEK (`gateway genkey`), a signing key."""
    return base64.b64encode(secrets.token_bytes(size)).decode()


event_ids = RandomIds()
os.register_at_fork(after_in_child=event_ids.forget)

"""A string type that never shows its value in repr(), str() or a traceback."""

from __future__ import annotations

import hashlib


class Secret:
    """Holds a secret value; only `.reveal()` returns it (cf. starlette.datastructures.Secret)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:  # only for tests/config comparison; not for auth checks
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("Secret values are not picklable")


def fingerprint(material: bytes) -> str:
    """A short, non-reversible identifier for a key: safe for logs, events and API answers.

    Keyed BLAKE2b with a fixed personalisation, truncated to 8 bytes (16 hex chars):
    enough to tell keys apart, far too short to help brute-force a 32+ character token.
    """
    digest = hashlib.blake2b(material, digest_size=8, person=b"gw-key-fp").hexdigest()
    return f"fp_{digest}"

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


FINGERPRINT_KEY_BYTES = 32


def fingerprint(material: bytes, key: bytes) -> str:
    """A short, non-reversible identifier for a key: safe for logs, events and API answers.

    BLAKE2b keyed with the deployment's fingerprint key (docs/operations.md "Fingerprints"),
    truncated to 8 bytes (16 hex chars): enough to tell keys apart. Keyed, so a fingerprint seen
    in an event, an answer or a log cannot be used to test guesses of a weak secret offline
    without also holding the fingerprint key.
    """
    if len(key) != FINGERPRINT_KEY_BYTES:
        raise ValueError("the fingerprint key must be 32 bytes")
    digest = hashlib.blake2b(material, digest_size=8, key=key, person=b"gw-key-fp").hexdigest()
    return f"fp_{digest}"

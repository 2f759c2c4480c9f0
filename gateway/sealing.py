"""Encryption at rest for per-phone secrets: PyNaCl SecretBox under GATEWAY_KEK.

Sealed form (a str, stored inside the phone's JSON record):
    "v1:" + kek_id + ":" + base64(nonce || ciphertext || MAC)
kek_id names the KEK that sealed it, so GATEWAY_KEK can be rotated: new values
are sealed with the current KEK and old ones still open with GATEWAY_KEK_PREVIOUS.
The phone id is bound as associated data in spirit by sealing "phone_id\\0secret":
a sealed token copied into another phone's record does not open there.
"""

from __future__ import annotations

import base64
import binascii
import hashlib

import nacl.exceptions
import nacl.secret
import nacl.utils

from gateway.errors import GatewayError
from gateway.settings import Settings, kek_bytes

_VERSION = "v1"


class SealError(GatewayError):
    """A sealed value cannot be opened (wrong KEK, tampered, or for another phone)."""


def kek_id(kek: bytes) -> str:
    return hashlib.blake2b(kek, digest_size=4, person=b"gw-kek-id").hexdigest()


_KEK_ID_LENGTH = 8  # kek_id(): 4 bytes as lowercase hex


def _is_kek_id(text: str) -> bool:
    """The shape of a kek_id() (8 lowercase hex digits): only such a text is ever echoed as one."""
    return len(text) == _KEK_ID_LENGTH and all(c in "0123456789abcdef" for c in text)


class Sealer:
    def __init__(self, kek: bytes, previous: tuple[bytes, ...] = ()) -> None:
        if len(kek) != nacl.secret.SecretBox.KEY_SIZE:
            raise ValueError("KEK must be 32 bytes")
        self._current_id = kek_id(kek)
        self._current = nacl.secret.SecretBox(kek)
        self._boxes = {self._current_id: self._current}
        for old in previous:
            self._boxes.setdefault(kek_id(old), nacl.secret.SecretBox(old))

    @classmethod
    def from_settings(cls, settings: Settings) -> Sealer:
        """The sealer for GATEWAY_KEK, opening values sealed under GATEWAY_KEK_PREVIOUS too."""
        return cls(kek_bytes(settings.kek), tuple(kek_bytes(s) for s in settings.kek_previous))

    @property
    def current_kek_id(self) -> str:
        return self._current_id

    def seal(self, phone_id: str, secret: str) -> str:
        plaintext = phone_id.encode() + b"\0" + secret.encode()
        box = self._current.encrypt(plaintext, nacl.utils.random(nacl.secret.SecretBox.NONCE_SIZE))
        return f"{_VERSION}:{self._current_id}:{base64.b64encode(bytes(box)).decode()}"

    def open(self, phone_id: str, sealed: str) -> str:
        try:
            version, key_id, payload = sealed.split(":", 2)
        except ValueError:
            raise SealError("not a sealed value") from None
        if version != _VERSION or not _is_kek_id(key_id):
            # Echo nothing: a field holding plain text (or anything else) splits at ':' too.
            raise SealError("not a sealed value")
        box = self._boxes.get(key_id)
        if box is None:
            raise SealError(f"sealed with an unknown KEK ({key_id}); set GATEWAY_KEK_PREVIOUS")
        try:
            plaintext = box.decrypt(base64.b64decode(payload, validate=True))
        except (nacl.exceptions.CryptoError, binascii.Error, ValueError):
            raise SealError("sealed value does not open under its KEK (tampered?)") from None
        owner, _, secret = plaintext.partition(b"\0")
        if owner != phone_id.encode():
            raise SealError("sealed value belongs to another phone")
        return secret.decode()

    def needs_reseal(self, sealed: str) -> bool:
        return not sealed.startswith(f"{_VERSION}:{self._current_id}:")

"""Carriers: one file each (its verifier and every other rule of it), and the types they share.

Verifiers are pure, synchronous functions of (request, credentials, clock). They import
neither Redis nor Starlette, so they are tested against the carriers' SDK vectors
without a server. Each verifier either returns `Verified` or
raises `Rejected(reason)`; every parse or crypto failure inside a verifier is
folded into a reason, never an unexpected exception.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import quote

from gateway.inbound import InboundRequest


class Provider(enum.StrEnum):
    PLIVO = "plivo"
    VOBIZ = "vobiz"
    EXOTEL = "exotel"
    TELNYX = "telnyx"
    TWILIO = "twilio"


class RouteFamily(enum.StrEnum):
    """The URL family a request arrived on; each admits some providers."""

    PLIVO = "plivo"  # /plivo/... serves Plivo and Vobiz phones
    EXOTEL = "exotel"
    TELNYX = "telnyx"
    TWILIO = "twilio"


class KeyKind(enum.StrEnum):
    """What a key is for. Secrets are sealed at rest; public keys are not."""

    AUTH_TOKEN = "auth_token"  # Plivo/Vobiz/Twilio HMAC key (secret)
    MAIN_AUTH_TOKEN = "main_auth_token"  # Plivo main account token for X-Plivo-Signature-Ma-V3 (secret)
    TWILIO_SIGNING_KEY = "twilio_signing_key"  # Twilio shared webhook key, HMAC-SHA256 (secret)
    PUBLIC_KEY = "public_key"  # Telnyx Ed25519 public key, raw 32 bytes (public)
    EXOTEL_WEBHOOK_TOKEN = "exotel_webhook_token"  # Exotel ?token= (secret)


@dataclass(frozen=True, slots=True)
class Key:
    """One active key. `material` is the raw secret/public key bytes, never logged."""

    material: bytes = field(repr=False)
    fingerprint: str  # short, non-reversible id safe for logs and events
    expires_at: float | None = None  # unix seconds; None = no expiry
    prepared: Any = field(default=None, repr=False, compare=False)  # e.g. a nacl VerifyKey built once

    def active(self, now: float) -> bool:
        return self.expires_at is None or now < self.expires_at


@dataclass(frozen=True, slots=True)
class PhoneCredentials:
    """Everything a verifier needs about one phone, secrets already unsealed."""

    phone_id: str
    provider: Provider
    keys: Mapping[KeyKind, tuple[Key, ...]]  # newest first
    config: Mapping[str, Any] = field(default_factory=dict)

    def active_keys(self, kind: KeyKind, now: float) -> tuple[Key, ...]:
        keys = self.keys.get(kind, ())
        if type(keys) is tuple and len(keys) == 1 and keys[0].expires_at is None:
            return keys  # the usual phone: one key, no rotation under way
        return tuple(k for k in keys if k.active(now))


@dataclass(slots=True)  # not frozen: built on every request, and read-only by convention (see InboundRequest)
class Verified:
    """Proof that a request is authentic."""

    key_fingerprint: str | None  # which key verified it (None: Exotel IP-only)
    nonce: str | None = None  # single-use value to remember (Plivo/Vobiz V3 nonce)
    # Another nonce the request carried in a second header family (Vobiz: the Plivo and the
    # Vobiz V3 headers), single-use as well: else the other family's captured signature and
    # nonce could be sent once more with any body (Vobiz's own string does not cover it).
    other_nonce: str | None = None
    # The event's identity by content: a digest of the exact bytes the signature covered
    # (`signed_digest()`), so a copy, a carrier's identical retry or a re-split of the same
    # signed string is recognised as the event already accepted. None: nothing is signed (Exotel).
    signed_digest: bytes | None = None


def signed_digest(*parts: bytes) -> bytes:
    """16-byte BLAKE2b of the signed bytes (several parts: each length-prefixed, so boundaries count)."""
    if len(parts) == 1:
        return hashlib.blake2b(parts[0], digest_size=16).digest()
    digest = hashlib.blake2b(digest_size=16)
    for part in parts:
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.digest()


class Verifier(Protocol):
    def verify(self, inbound: InboundRequest, creds: PhoneCredentials, now: float) -> Verified:
        """Return Verified, or raise Rejected(reason). Never raise anything else."""
        ...


# Characters urllib's quote() never escapes: a part made only of them is its own quoting.
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~")


def quote_part(part: str) -> str:
    """`urllib.parse.quote(part, safe="")`, without the call for the usual ids and statuses."""
    return part if _UNRESERVED.issuperset(part) else quote(part, safe="")


def params_digest(params: Mapping[str, object], exclude: frozenset[str] = frozenset()) -> str:
    """A short digest of every parameter: identity for callbacks that carry no status.

    A carrier's retry of the same callback has the same parameters (a duplicate); the
    next callback of the call (a second recording, the next applet) does not.
    """
    canonical = "&".join(
        f"{quote_part(name)}={quote_part(str(value))}" for name, value in sorted(params.items()) if name not in exclude
    )
    return "p-" + hashlib.blake2b(canonical.encode("utf-8", "surrogatepass"), digest_size=12).hexdigest()

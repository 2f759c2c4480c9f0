"""Build verifier inputs the way the HTTP edge does, for the provider unit tests."""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

from nacl.signing import VerifyKey

from gateway.inbound import InboundRequest
from gateway.providers import Key, KeyKind, PhoneCredentials, Provider

# A fixed clock for the HMAC carriers (their verdicts do not depend on time).
NOW = 1_795_000_000.0

Headers = Mapping[str, str] | Iterable[tuple[str, str]]


def inbound(
    url: str,
    *,
    method: str = "POST",
    headers: Headers = (),
    body: bytes | str = b"",
    client_ip: str = "192.0.2.10",
) -> InboundRequest:
    """An InboundRequest for `url` exactly as called: raw path and query, no re-encoding.

    Header names are lower-cased; a name given twice lands in `duplicate_headers`, as the
    edge records it. Path and query become latin-1 text of their UTF-8 bytes, like ASGI's
    `raw_path` and `query_string`.
    """
    parts = urlsplit(url)
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    merged: dict[str, str] = {}
    duplicates: set[str] = set()
    for name, value in pairs:
        lname = name.lower()
        if lname in merged:
            duplicates.add(lname)
            continue
        merged[lname] = value
    return InboundRequest(
        method=method.upper(),
        scheme=parts.scheme,
        netloc=parts.netloc,
        raw_path=_wire(parts.path or "/"),
        query_string=_wire(parts.query),
        headers=merged,
        body=body.encode("utf-8") if isinstance(body, str) else body,
        client_ip=client_ip,
        duplicate_headers=frozenset(duplicates),
    )


def _wire(text: str) -> str:
    return text.encode("utf-8").decode("latin-1")


def key(material: str | bytes, fingerprint: str = "fp-test", expires_at: float | None = None) -> Key:
    raw = material.encode("utf-8") if isinstance(material, str) else material
    return Key(material=raw, fingerprint=fingerprint, expires_at=expires_at)


def public_key(raw: bytes, fingerprint: str = "fp-test", expires_at: float | None = None, prepare: bool = True) -> Key:
    prepared = VerifyKey(raw) if prepare else None
    return Key(material=raw, fingerprint=fingerprint, expires_at=expires_at, prepared=prepared)


def creds(provider: Provider, keys: Mapping[KeyKind, Iterable[Key]], phone_id: str = "ph_test") -> PhoneCredentials:
    return PhoneCredentials(
        phone_id=phone_id,
        provider=provider,
        keys={kind: tuple(ks) for kind, ks in keys.items()},
    )


def creds_from_vector(phone: Mapping[str, Any]) -> PhoneCredentials:
    """The credentials the admin API would store for a vector's `phone` record."""
    provider = Provider(phone["provider"])
    given = phone.get("credentials", {})
    config = phone.get("config", {})
    keys: dict[KeyKind, list[Key]] = {}
    if provider in (Provider.PLIVO, Provider.VOBIZ, Provider.TWILIO):
        keys[KeyKind.AUTH_TOKEN] = [key(given["auth_token"], "fp-auth")]
    elif provider is Provider.TELNYX:
        keys[KeyKind.PUBLIC_KEY] = [public_key(base64.b64decode(given["public_key"]), "fp-public")]
    if config.get("exotel_webhook_token"):
        keys[KeyKind.EXOTEL_WEBHOOK_TOKEN] = [key(config["exotel_webhook_token"], "fp-token")]
    return PhoneCredentials(
        phone_id=phone["id"],
        provider=provider,
        keys={kind: tuple(ks) for kind, ks in keys.items()},
        config=config,
    )


def inbound_from_vector(request: Mapping[str, Any]) -> InboundRequest:
    return inbound(
        request["url"],
        method=request["method"],
        headers=request["headers"],
        body=request["body"],
        client_ip=request["client_ip"],
    )

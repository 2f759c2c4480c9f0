"""Build verifier inputs the way the HTTP edge does, for the provider unit tests."""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl.signing import VerifyKey

from gateway.errors import Reason, Rejected
from gateway.inbound import InboundRequest
from gateway.providers import Key, KeyKind, PhoneCredentials, Provider, Verified, Verifier

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
    secrets = phone.get("credentials", {})
    config = phone.get("config", {})
    keys: dict[KeyKind, list[Key]] = {}
    if provider in (Provider.PLIVO, Provider.VOBIZ, Provider.TWILIO):
        keys[KeyKind.AUTH_TOKEN] = [key(secrets["auth_token"], "fp-auth")]
    elif provider is Provider.TELNYX:
        keys[KeyKind.PUBLIC_KEY] = [public_key(base64.b64decode(secrets["public_key"]), "fp-public")]
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


@dataclasses.dataclass(frozen=True)
class Req:
    """A request as the carrier sends it; `build()` makes a fresh InboundRequest each time."""

    url: str
    method: str = "POST"
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    client_ip: str = "192.0.2.10"

    def build(self) -> InboundRequest:
        return inbound(self.url, method=self.method, headers=self.headers, body=self.body, client_ip=self.client_ip)

    def header(self, name: str) -> str:
        return next(value for n, value in self.headers if n.lower() == name.lower())

    def with_header(self, name: str, value: str) -> Req:
        """`name` set to `value` (replacing any previous value)."""
        return dataclasses.replace(self, headers=(*self.without_header(name).headers, (name, value)))

    def without_header(self, name: str) -> Req:
        return dataclasses.replace(self, headers=tuple((n, v) for n, v in self.headers if n.lower() != name.lower()))

    def with_duplicate(self, name: str, value: str) -> Req:
        """`name` sent a second time."""
        return dataclasses.replace(self, headers=(*self.headers, (name, value)))

    def replace(self, **changes: Any) -> Req:
        return dataclasses.replace(self, **changes)


def rejection(verifier: Verifier, request: Req | InboundRequest, creds: PhoneCredentials, now: float) -> Reason:
    """The reason `verifier` rejects `request` (fails the test if it accepts)."""
    built = request.build() if isinstance(request, Req) else request
    with pytest.raises(Rejected) as info:
        verifier.verify(built, creds, now)
    return info.value.reason


def accepted(verifier: Verifier, request: Req | InboundRequest, creds: PhoneCredentials, now: float) -> Verified:
    built = request.build() if isinstance(request, Req) else request
    return verifier.verify(built, creds, now)


# Header values as the edge hands them over: latin-1 text of arbitrary bytes.
latin1_text = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=255), max_size=120)
base64_like = st.binary(min_size=0, max_size=80).map(lambda raw: base64.b64encode(raw).decode())
header_values = st.one_of(latin1_text, base64_like)


class SignatureContract:
    """Behaviour every signing carrier's verifier must have (standard-webhooks style).

    A subclass provides a verifier, a way to make keys and to sign a request with one,
    and a way to tamper with the body; each test changes exactly one thing.
    """

    verifier: Verifier
    key_kind: KeyKind
    provider: Provider
    signature_header: str
    now: float = NOW

    # --- what a subclass provides ---

    def key_for(self, name: str, expires_at: float | None = None) -> Key:
        raise NotImplementedError

    def signed(self, signer: str = "current") -> Req:
        """A valid request signed with the key named `signer`."""
        raise NotImplementedError

    def tampered(self, request: Req) -> Req:
        """`request` with one value in its body changed (signature untouched)."""
        raise NotImplementedError

    def random_headers(self) -> st.SearchStrategy[dict[str, str]]:
        """Headers a fuzzer may send (the carrier's own names with garbage values)."""
        raise NotImplementedError

    # --- helpers ---

    def creds(self, *keys: Key) -> PhoneCredentials:
        return creds(self.provider, {self.key_kind: keys or (self.key_for("current"),)})

    def reason(self, request: Req | InboundRequest, phone: PhoneCredentials | None = None) -> Reason:
        return rejection(self.verifier, request, phone or self.creds(), self.now)

    def verify(self, request: Req | InboundRequest, phone: PhoneCredentials | None = None) -> Verified:
        return accepted(self.verifier, request, phone or self.creds(), self.now)

    # --- the contract ---

    def test_valid_request_is_accepted(self) -> None:
        assert self.verify(self.signed()).key_fingerprint == "fp-current"

    def test_signed_with_another_key_is_rejected(self) -> None:
        assert self.reason(self.signed(signer="stranger")) is Reason.INVALID_SIGNATURE

    def test_phone_without_keys_rejects(self) -> None:
        phone = creds(self.provider, {})
        assert self.reason(self.signed(), phone) in (Reason.INVALID_SIGNATURE, Reason.MISSING_SIGNATURE)

    def test_tampered_body_is_rejected(self) -> None:
        assert self.reason(self.tampered(self.signed())) is Reason.INVALID_SIGNATURE

    def test_missing_signature_header_is_rejected(self) -> None:
        assert self.reason(self.signed().without_header(self.signature_header)) is Reason.MISSING_SIGNATURE

    def test_empty_signature_header_counts_as_missing(self) -> None:
        assert self.reason(self.signed().with_header(self.signature_header, "")) is Reason.MISSING_SIGNATURE

    def test_garbled_signature_is_rejected(self) -> None:
        request = self.signed().with_header(self.signature_header, "%%% not base64 %%%")
        assert self.reason(request) is Reason.MALFORMED_SIGNATURE

    def test_signature_of_wrong_length_is_rejected(self) -> None:
        request = self.signed()
        short = request.header(self.signature_header)[:-4]
        assert self.reason(request.with_header(self.signature_header, short)) is Reason.MALFORMED_SIGNATURE

    def test_signature_with_a_flipped_character_is_rejected(self) -> None:
        request = self.signed()
        value = request.header(self.signature_header)
        flipped = ("B" if value[0] == "A" else "A") + value[1:]
        assert self.reason(request.with_header(self.signature_header, flipped)) is Reason.INVALID_SIGNATURE

    def test_duplicated_signature_header_is_rejected(self) -> None:
        request = self.signed()
        twice = request.with_duplicate(self.signature_header, request.header(self.signature_header))
        assert self.reason(twice) is Reason.MALFORMED_SIGNATURE

    def test_non_utf8_body_is_rejected(self) -> None:
        request = self.signed()
        assert self.reason(request.replace(body=request.body + b"\xff\xfe")) in (
            Reason.MALFORMED_REQUEST,
            Reason.INVALID_SIGNATURE,
        )

    def test_rotation_old_and_new_keys_both_verify_while_active(self) -> None:
        phone = self.creds(self.key_for("current"), self.key_for("old", expires_at=self.now + 3600))
        assert self.verify(self.signed(signer="current"), phone).key_fingerprint == "fp-current"
        assert self.verify(self.signed(signer="old"), phone).key_fingerprint == "fp-old"

    def test_rotation_expired_old_key_no_longer_verifies(self) -> None:
        phone = self.creds(self.key_for("current"), self.key_for("old", expires_at=self.now))
        assert self.verify(self.signed(signer="current"), phone).key_fingerprint == "fp-current"
        assert self.reason(self.signed(signer="old"), phone) is Reason.INVALID_SIGNATURE

    def test_random_input_is_never_accepted_and_never_crashes(self) -> None:
        @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(
            headers=self.random_headers(),
            body=st.binary(max_size=300),
            method=st.sampled_from(["POST", "GET", "PUT"]),
            content_type=st.sampled_from(["application/x-www-form-urlencoded", "application/json", "text/plain"]),
            query=latin1_text,
        )
        def check(headers: dict[str, str], body: bytes, method: str, content_type: str, query: str) -> None:
            request = InboundRequest(
                method=method,
                scheme="https",
                netloc="hooks.example.com",
                raw_path="/hooks/ph_test",
                query_string=query,
                headers={**headers, "content-type": content_type},
                body=body,
                client_ip="192.0.2.10",
            )
            with pytest.raises(Rejected):
                self.verifier.verify(request, self.creds(), self.now)

        check()

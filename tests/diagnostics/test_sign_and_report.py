"""gateway/diagnostics without argparse or Redis: a request built by `signing` is parsed by `capture`
and judged by `report` as the gateway's own verifier judges it, for every carrier."""

from __future__ import annotations

import secrets

import pytest
from nacl.signing import SigningKey

from gateway.diagnostics.capture import parse_capture
from gateway.diagnostics.errors import SignError
from gateway.diagnostics.report import received_request, report
from gateway.diagnostics.signing import (
    ALGORITHMS,
    DEFAULT_ALGORITHM,
    Secret,
    as_curl,
    as_http,
    build,
    secret_from_env,
    secret_from_phone,
)
from gateway.diagnostics.strings_to_sign import strings_to_sign
from gateway.diagnostics.variants import SUPPORTED
from gateway.diagnostics.wire import wire_text
from gateway.errors import Rejected
from gateway.inbound import wire_text as strict_wire_text
from gateway.providers import KeyKind, PhoneCredentials, Provider
from gateway.providers.registry import spec_for
from gateway.providers.spec import UrlSigning
from gateway.providers.twilio import HMAC_SHA256
from gateway.settings import PublicBase
from tests.helpers.inbound_builders import creds, key, public_key

URL = "https://hooks.example.com/plivo/status/ph_test"
TOKEN = "diagnostics-token-0123456789abcdef"
NOW = 1_795_000_000
PUBLIC = PublicBase("https", "hooks.example.com", "")


def phone(provider: Provider) -> tuple[PhoneCredentials, Secret]:
    if provider is Provider.TELNYX:
        seed = secrets.token_bytes(32)
        public = SigningKey(seed).verify_key.encode()
        return creds(provider, {KeyKind.PUBLIC_KEY: [public_key(public)]}), Secret(seed, "test")
    kind = KeyKind.EXOTEL_WEBHOOK_TOKEN if provider is Provider.EXOTEL else KeyKind.AUTH_TOKEN
    return creds(provider, {kind: [key(TOKEN)]}), Secret(TOKEN.encode(), "test")


@pytest.mark.parametrize("provider", list(Provider))
@pytest.mark.parametrize("fmt", ["curl", "http"])
def test_what_sign_builds_explain_finds_matching(provider: Provider, fmt: str) -> None:
    phone_creds, secret = phone(provider)
    signed = build(provider, URL, secret=secret, timestamp=NOW)
    data = as_curl(signed).encode() if fmt == "curl" else as_http(signed)
    captured = parse_capture(data)
    base = PUBLIC if fmt == "http" else None  # raw HTTP has no scheme
    lines, status = report(captured, phone_creds, public_base=base, public_url=None, now=NOW)
    assert status == 0, lines
    assert TOKEN not in "\n".join(lines)
    if provider is Provider.EXOTEL:
        assert "token: MATCHES the phone's exotel_webhook_token" in lines
    else:
        assert any(line.startswith("signature as captured: MATCHES") for line in lines), lines


def test_a_changed_body_does_not_match_and_the_string_to_sign_is_shown() -> None:
    phone_creds, secret = phone(Provider.PLIVO)
    signed = build(Provider.PLIVO, URL, secret=secret, params=[("CallUUID", "c-1"), ("CallStatus", "ringing")])
    signed.body = signed.body.replace(b"ringing", b"completed")
    captured = parse_capture(as_http(signed))
    lines, status = report(captured, phone_creds, public_base=PUBLIC, public_url=None)
    assert status == 1
    assert "signature as captured: does not match (invalid_signature)" in lines
    received, _how = received_request(captured, PUBLIC)
    (what, text), *_ = strings_to_sign(received, Provider.PLIVO)
    assert what == "Plivo V3 (X-Plivo-Signature-V3)" and b"CallStatuscompleted" in text


def test_secrets_come_from_the_environment_or_the_phone_and_are_never_echoed() -> None:
    environ = {"SIGN_TOKEN": TOKEN}
    found = secret_from_env(Provider.PLIVO, token_env="SIGN_TOKEN", seed_env=None, environ=environ)
    assert found is not None and found.value == TOKEN.encode() and TOKEN not in repr(found)
    with pytest.raises(SignError, match="NAME of an environment variable") as refused:
        secret_from_env(Provider.PLIVO, token_env=TOKEN + "!", seed_env=None, environ=environ)
    assert TOKEN not in str(refused.value)
    with pytest.raises(SignError, match="only the public key"):
        secret_from_phone(phone(Provider.TELNYX)[0], "HMAC_SHA1", NOW)
    with pytest.raises(SignError, match="no active twilio_signing_key"):
        secret_from_phone(phone(Provider.TWILIO)[0], HMAC_SHA256, NOW)


@pytest.mark.parametrize("provider", list(Provider))
def test_every_carrier_spec_says_how_it_is_signed_and_explained(provider: Provider) -> None:
    """sign and explain read only the specs: each carrier either signs (headers, a string-to-sign) or
    proves itself otherwise (its proof in the URL, its own report lines), never neither or both."""
    spec = spec_for(provider)
    signs = spec.sign_headers is not None
    assert signs == (spec.strings_to_sign is not None)
    assert signs == (spec.unsigned_proof is None) == (spec.explain_unsigned is None)
    assert spec.title.lower() == provider.value
    assert spec.seed_signed == (spec.signing_key is None)  # a seed-signed phone's record holds no private key
    if spec.url_signing is UrlSigning.NONE and signs:
        assert spec.explain_hint, "a failed signature that covers no URL needs words: no variant explains it"
    assert (provider in SUPPORTED) == (spec.url_signing is not UrlSigning.NONE or spec.signed_body)
    assert not (spec.signed_body and not signs), "an unsigned carrier has no signed body to vary"
    assert DEFAULT_ALGORITHM in ALGORITHMS and all(name in ALGORITHMS for name in spec.sign_algorithms)


@pytest.mark.parametrize(
    "raw", ["", "/plain?a=1", "/caf\u00c3\u00a9", "/caf\u00e9", "/r\u00e9al-text-\u4e2d", "/a%20b", "/\u00ff\u00fe"]
)
def test_one_wire_text_decoder_that_shows_what_the_gateway_rejects(raw: str) -> None:
    """diagnostics decode wire text as the gateway does (gateway/inbound.py); what the gateway rejects
    as not UTF-8 is shown as it is instead of refused."""
    try:
        expected = strict_wire_text(raw)
    except Rejected:
        expected = raw
    assert wire_text(raw) == expected

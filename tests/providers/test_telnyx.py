"""Telnyx verifier: shared vectors, the signature contract, the time window, event helpers."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from gateway.errors import Reason, Rejected
from gateway.providers import Key, KeyKind, Provider
from gateway.providers.telnyx import (
    TelnyxVerifier,
    event_id,
    event_numbers,
    idempotency_key,
    parse_event,
    sign,
)
from tests.helpers.inbound_builders import (
    Req,
    SignatureContract,
    creds,
    creds_from_vector,
    header_values,
    inbound_from_vector,
    public_key,
    rejection,
)
from tests.providers.conftest import VectorStep, vector_cases, vector_steps

VECTOR_PROVIDERS = ("telnyx",)

URL = "https://hooks.example.com/webhooks/telnyx/voice/ph_test"
NOW = 1_795_000_885
SEEDS = {name: bytes([index]) * 32 for index, name in enumerate(("current", "old", "stranger"), start=1)}


def event_body(
    *, event_id_: str = "evt-1", direction: str | None = "incoming", to: Any = "+19553173295", **extra: Any
) -> bytes:
    payload: dict[str, Any] = {"call_control_id": "v3:abc", "from": "+14155550123", "to": to, **extra}
    if direction is not None:
        payload["direction"] = direction
    document = {"data": {"event_type": "call.initiated", "id": event_id_, "payload": payload}, "meta": {"attempt": 1}}
    return json.dumps(document).encode()


BODY = event_body(client_state="nämé ✓")


def telnyx_request(
    body: bytes = BODY, *, seed: bytes = SEEDS["current"], timestamp: str | None = None, signed_timestamp: str = ""
) -> Req:
    """A webhook sent at `timestamp` (default: NOW), signed over `signed_timestamp` (default: the same)."""
    sent = timestamp if timestamp is not None else str(NOW)
    headers = (
        ("telnyx-signature-ed25519", sign(seed, signed_timestamp or sent, body)),
        ("telnyx-timestamp", sent),
        ("Content-Type", "application/json"),
    )
    return Req(url=URL, headers=headers, body=body)


def verkey(name: str, expires_at: float | None = None, prepare: bool = True) -> Key:
    raw = bytes(SigningKey(SEEDS[name]).verify_key)
    return public_key(raw, f"fp-{name}", expires_at, prepare=prepare)


def phone(*keys: Key) -> Any:
    return creds(Provider.TELNYX, {KeyKind.PUBLIC_KEY: keys or (verkey("current"),)})


def reason(request: Req, verifier: TelnyxVerifier | None = None, now: float = NOW, phone_: Any = None) -> Reason:
    return rejection(verifier or TelnyxVerifier(), request, phone_ or phone(), now)


def accepts(request: Req, verifier: TelnyxVerifier | None = None, now: float = NOW, phone_: Any = None) -> bool:
    return bool((verifier or TelnyxVerifier()).verify(request.build(), phone_ or phone(), now).key_fingerprint)


# --- (1) shared vectors, on each case's clock ---


def test_vector_step(vector_step: VectorStep) -> None:
    request = inbound_from_vector(vector_step.request)
    phone_ = creds_from_vector(vector_step.case["phone"])
    now = vector_step.case["now"]
    if vector_step.expected == "accept":
        assert TelnyxVerifier().verify(request, phone_, now).key_fingerprint == "fp-public"
    else:
        with pytest.raises(Rejected):
            TelnyxVerifier().verify(request, phone_, now)


@pytest.mark.parametrize("known", vector_steps(VECTOR_PROVIDERS, where=lambda s: s.expected == "accept"))
def test_sign_reproduces_the_vector_signatures(known: VectorStep) -> None:
    seed = base64.b64decode(known.step["signing_seed"])
    headers = {k.lower(): v for k, v in known.request["headers"].items()}
    signature = sign(seed, headers["telnyx-timestamp"], known.request["body"].encode())
    assert signature == headers["telnyx-signature-ed25519"]


@pytest.mark.parametrize(
    "case", vector_cases(VECTOR_PROVIDERS, where=lambda c: c["oracle"].startswith("rule: idempotency"))
)
def test_vector_duplicates_share_an_idempotency_key(case: Mapping[str, Any]) -> None:
    keys = {idempotency_key(inbound_from_vector(step["request"]), "voice") for step in case["steps"]}
    assert len(keys) == 1 and None not in keys


@pytest.mark.parametrize("known", vector_steps(VECTOR_PROVIDERS, where=lambda s: s.expected == "accept"))
def test_vector_events_name_the_phone_number(known: VectorStep) -> None:
    assert event_numbers(known.request["body"].encode()) == [known.case["phone"]["config"]["number"]]


# --- (2) the contract ---


class TestTelnyxContract(SignatureContract):
    verifier = TelnyxVerifier()
    key_kind = KeyKind.PUBLIC_KEY
    provider = Provider.TELNYX
    signature_header = "telnyx-signature-ed25519"
    now = NOW

    def key_for(self, name: str, expires_at: float | None = None) -> Key:
        return verkey(name, expires_at)

    def signed(self, signer: str = "current") -> Req:
        return telnyx_request(seed=SEEDS[signer])

    def tampered(self, request: Req) -> Req:
        return request.replace(body=request.body.replace(b"call.initiated", b"call.hangup"))

    def random_headers(self) -> st.SearchStrategy[dict[str, str]]:
        timestamps = st.one_of(header_values, st.integers(NOW - 400, NOW + 400).map(str))
        raw_signatures = st.binary(min_size=64, max_size=64).map(lambda raw: base64.b64encode(raw).decode())
        signatures = st.one_of(header_values, raw_signatures)
        return st.fixed_dictionaries(
            {}, optional={"telnyx-signature-ed25519": signatures, "telnyx-timestamp": timestamps}
        )


class TestTimestampWindow:
    @pytest.mark.parametrize("offset", [-300, -1, 0, 1, 300])
    def test_inside_the_window_inclusive(self, offset: int) -> None:
        assert accepts(telnyx_request(timestamp=str(NOW + offset)))

    @pytest.mark.parametrize("offset", [-301, 301, -86_400, 86_400])
    def test_outside_the_window(self, offset: int) -> None:
        assert reason(telnyx_request(timestamp=str(NOW + offset))) is Reason.STALE_TIMESTAMP

    def test_clock_is_truncated_to_whole_seconds_like_the_sdk(self) -> None:
        # SDK: int(time.time()): at NOW + 0.9 a webhook 300 s old is still on the edge.
        assert accepts(telnyx_request(timestamp=str(NOW - 300)), now=NOW + 0.9)
        assert reason(telnyx_request(timestamp=str(NOW - 300)), now=NOW + 1.0) is Reason.STALE_TIMESTAMP

    def test_configurable_tolerance(self) -> None:
        narrow = TelnyxVerifier(tolerance_s=10)
        assert accepts(telnyx_request(timestamp=str(NOW - 10)), narrow)
        assert reason(telnyx_request(timestamp=str(NOW - 11)), narrow) is Reason.STALE_TIMESTAMP

    def test_negative_tolerance_is_refused(self) -> None:
        with pytest.raises(ValueError, match="tolerance_s"):
            TelnyxVerifier(tolerance_s=-1)

    def test_signature_over_another_timestamp(self) -> None:
        request = telnyx_request(timestamp=str(NOW), signed_timestamp=str(NOW - 5))
        assert reason(request) is Reason.INVALID_SIGNATURE

    @pytest.mark.parametrize("value", ["yesterday", "1.5", "1795000885.0", "0x10", "--1"])
    def test_non_integer_timestamp(self, value: str) -> None:
        assert reason(telnyx_request(timestamp=value)) is Reason.MALFORMED_SIGNATURE

    def test_missing_timestamp(self) -> None:
        assert reason(telnyx_request().without_header("telnyx-timestamp")) is Reason.MISSING_SIGNATURE

    def test_empty_timestamp_counts_as_missing(self) -> None:
        assert reason(telnyx_request().with_header("telnyx-timestamp", "")) is Reason.MISSING_SIGNATURE

    def test_duplicated_timestamp(self) -> None:
        request = telnyx_request().with_duplicate("telnyx-timestamp", str(NOW))
        assert reason(request) is Reason.MALFORMED_SIGNATURE

    def test_timestamp_is_signed_exactly_as_sent(self) -> None:
        # int(" 1795000885") parses (as in the SDK); the signature covers the spelling sent.
        spaced = f" {NOW}"
        assert accepts(telnyx_request(timestamp=spaced))
        assert reason(telnyx_request(timestamp=spaced, signed_timestamp=str(NOW))) is Reason.INVALID_SIGNATURE


class TestSignatureEncoding:
    def test_63_bytes(self) -> None:
        request = telnyx_request()
        short = base64.b64encode(base64.b64decode(request.header("telnyx-signature-ed25519"))[:63]).decode()
        assert reason(request.with_header("telnyx-signature-ed25519", short)) is Reason.MALFORMED_SIGNATURE

    def test_bad_padding(self) -> None:
        request = telnyx_request()
        unpadded = request.header("telnyx-signature-ed25519").rstrip("=")
        assert reason(request.with_header("telnyx-signature-ed25519", unpadded)) is Reason.MALFORMED_SIGNATURE

    def test_non_ascii(self) -> None:
        request = telnyx_request()
        value = "é" + request.header("telnyx-signature-ed25519")
        assert reason(request.with_header("telnyx-signature-ed25519", value)) is Reason.MALFORMED_SIGNATURE

    def test_whitespace_around_base64_is_ignored_like_the_sdk(self) -> None:
        # b64decode() without validate=True drops non-alphabet characters.
        request = telnyx_request()
        value = request.header("telnyx-signature-ed25519") + "\n"
        assert accepts(request.with_header("telnyx-signature-ed25519", value))


class TestBodyAndKeys:
    def test_body_reserialised_is_rejected(self) -> None:
        request = telnyx_request()
        reformatted = json.dumps(json.loads(request.body), separators=(",", ":")).encode()
        assert reason(request.replace(body=reformatted)) is Reason.INVALID_SIGNATURE

    def test_body_verified_as_raw_utf8_bytes(self) -> None:
        assert accepts(telnyx_request(body='{"data": {"id": "é"}}'.encode()))

    def test_non_utf8_body_is_refused_even_if_signed(self) -> None:
        assert reason(telnyx_request(body=b'{"data": "\xff"}')) is Reason.MALFORMED_REQUEST

    def test_unprepared_key_is_built_on_the_fly(self) -> None:
        assert accepts(telnyx_request(), phone_=phone(verkey("current", prepare=False)))

    def test_stored_key_of_the_wrong_size_never_verifies(self) -> None:
        broken = Key(material=b"\x01" * 31, fingerprint="fp-broken")
        assert reason(telnyx_request(), phone_=phone(broken)) is Reason.INVALID_SIGNATURE

    def test_wrong_size_key_is_skipped_not_fatal(self) -> None:
        broken = Key(material=b"\x01" * 33, fingerprint="fp-broken")
        assert accepts(telnyx_request(), phone_=phone(broken, verkey("current")))


class TestEvents:
    def test_event_id(self) -> None:
        assert event_id(BODY) == "evt-1"
        assert idempotency_key(telnyx_request().build(), "voice") == "evt-1"

    @pytest.mark.parametrize(
        "body",
        [
            b"",
            b"null",
            b"[]",
            b'"x"',
            b"{}",
            b'{"data": []}',
            b'{"data": {"id": 5}}',
            b'{"data": {"id": ""}}',
            b"\xff\xfe",
            b'{"data": {"id": "x"}',
            b"[" * 2000 + b"]" * 2000,
            b'{"data": {"id": "x", "n": 1e999999}}',
        ],
    )
    def test_unusable_bodies_give_none(self, body: bytes) -> None:
        assert event_id(body) is None
        assert event_numbers(body) == []

    def test_parse_event(self) -> None:
        data = parse_event(BODY)
        assert data is not None and data["event_type"] == "call.initiated"

    def test_incoming_call_is_routed_by_to(self) -> None:
        assert event_numbers(event_body(direction="incoming")) == ["+19553173295"]

    def test_outgoing_call_is_routed_by_from(self) -> None:
        assert event_numbers(event_body(direction="outgoing")) == ["+14155550123"]

    def test_without_direction_to_comes_first_then_from(self) -> None:
        # call.answered / call.hangup payloads carry no direction.
        assert event_numbers(event_body(direction=None)) == ["+19553173295", "+14155550123"]

    def test_same_number_is_listed_once(self) -> None:
        assert event_numbers(event_body(direction=None, to="+14155550123")) == ["+14155550123"]

    @pytest.mark.parametrize(
        "to", ["sip:alice@example.com", "19553173295", "+0123", "+1", "+1234567890123456", "+١٢٣٤", 7, None]
    )
    def test_only_e164_numbers_are_candidates(self, to: Any) -> None:
        assert event_numbers(event_body(to=to)) == []

    @pytest.mark.parametrize("direction", [["incoming"], {"a": 1}, 3])
    def test_odd_direction_values_do_not_crash(self, direction: Any) -> None:
        assert event_numbers(event_body(direction=direction)) == ["+19553173295", "+14155550123"]

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=300))
    def test_helpers_never_raise(self, body: bytes) -> None:
        event_id(body)
        assert isinstance(event_numbers(body), list)

"""Twilio verifier: shared vectors, the signature contract, ports, bodySHA256, shared keys."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode

import pytest
from hypothesis import strategies as st

from gateway.errors import Reason, Rejected
from gateway.providers import Key, KeyKind, PhoneCredentials, Provider
from gateway.providers.twilio import (
    HMAC_SHA1,
    HMAC_SHA256,
    TwilioVerifier,
    body_sha256,
    idempotency_key,
    sign,
    signature_algorithm,
    string_to_sign,
    url_variants,
)
from tests.helpers.inbound_builders import (
    NOW,
    Req,
    SignatureContract,
    accepted,
    creds,
    creds_from_vector,
    header_values,
    inbound,
    inbound_from_vector,
    key,
    rejection,
)
from tests.providers.conftest import VectorStep, vector_cases, vector_steps

VECTOR_PROVIDERS = ("twilio",)

URL = "https://hooks.example.com/twilio/status/ph_test"
FORM = (
    ("CallSid", "CA0123456789abcdef0123456789abcdef"),
    ("AccountSid", "AC0123456789abcdef0123456789abcdef"),
    ("CallStatus", "ringing"),
    ("From", "+14155550199"),
    ("To", "+14155550100"),
)
TOKENS = {"current": "auth-token-current-000000000000", "old": "auth-token-old", "stranger": "auth-token-stranger"}
SHARED = {"current": "shared-key-current-00000000000000", "old": "shared-key-old", "stranger": "shared-key-stranger"}
FORM_TYPE = ("Content-Type", "application/x-www-form-urlencoded")
JSON_TYPE = ("Content-Type", "application/json")
SETTINGS = "X-Twilio-Webhooks-Signature-Settings"

verifier = TwilioVerifier()


def twilio_request(
    url: str = URL,
    params: tuple[tuple[str, str], ...] = FORM,
    *,
    secret: str = TOKENS["current"],
    signed_url: str | None = None,
    algorithm: str = HMAC_SHA1,
) -> Req:
    """A form POST Twilio signed for `signed_url` (default: `url`) and sent to `url`."""
    signature = sign(secret, signed_url or url, list(params), algorithm=algorithm)
    return Req(url=url, headers=(("X-Twilio-Signature", signature), FORM_TYPE), body=urlencode(params).encode())


def json_request(body: bytes = b'{"CallSid": "CA1", "CallStatus": "completed"}', *, url: str = URL) -> Req:
    signed_url = f"{url}?bodySHA256={body_sha256(body)}"
    headers = (("X-Twilio-Signature", sign(TOKENS["current"], signed_url)), JSON_TYPE)
    return Req(url=signed_url, headers=headers, body=body)


def phone(*keys: Key, shared: tuple[Key, ...] = ()) -> PhoneCredentials:
    mapping: dict[KeyKind, tuple[Key, ...]] = {KeyKind.AUTH_TOKEN: keys or (key(TOKENS["current"], "fp-current"),)}
    if shared:
        mapping[KeyKind.TWILIO_SIGNING_KEY] = shared
    return creds(Provider.TWILIO, mapping)


def reason(request: Req, creds_: PhoneCredentials | None = None) -> Reason:
    return rejection(verifier, request, creds_ or phone(), NOW)


def verify(request: Req, creds_: PhoneCredentials | None = None) -> Any:
    return accepted(verifier, request, creds_ or phone(), NOW)


# --- (1) shared vectors ---


def test_vector_step(vector_step: VectorStep) -> None:
    request = inbound_from_vector(vector_step.request)
    phone_ = creds_from_vector(vector_step.case["phone"])
    if vector_step.expected == "accept":
        assert verifier.verify(request, phone_, NOW).key_fingerprint == "fp-auth"
    else:
        with pytest.raises(Rejected):
            verifier.verify(request, phone_, NOW)


@pytest.mark.parametrize("known", vector_steps(VECTOR_PROVIDERS, where=lambda s: s.expected == "accept"))
def test_sign_reproduces_the_sdk_signatures_of_the_vectors(known: VectorStep) -> None:
    request = known.request
    headers = {k.lower(): v for k, v in request["headers"].items()}
    is_form = headers.get("content-type", "").startswith("application/x-www-form-urlencoded")
    params = parse_qsl(request["body"], keep_blank_values=True) if is_form else None
    signature = sign(known.case["phone"]["credentials"]["auth_token"], request["url"], params)
    assert signature == headers["x-twilio-signature"]


@pytest.mark.parametrize(
    "case", vector_cases(VECTOR_PROVIDERS, where=lambda c: c["oracle"].startswith("rule: idempotency"))
)
def test_vector_duplicates_share_an_idempotency_key(case: Mapping[str, Any]) -> None:
    keys = {idempotency_key(inbound_from_vector(step["request"]), "status") for step in case["steps"]}
    assert len(keys) == 1 and None not in keys  # ... so the Redis layer forwards it once


# --- (2) the contract ---


class TestTwilioContract(SignatureContract):
    verifier = verifier
    key_kind = KeyKind.AUTH_TOKEN
    provider = Provider.TWILIO
    signature_header = "X-Twilio-Signature"

    def key_for(self, name: str, expires_at: float | None = None) -> Key:
        return key(TOKENS[name], f"fp-{name}", expires_at)

    def signed(self, signer: str = "current") -> Req:
        return twilio_request(secret=TOKENS[signer])

    def tampered(self, request: Req) -> Req:
        return request.replace(body=request.body.replace(b"ringing", b"completed"))

    def random_headers(self) -> st.SearchStrategy[dict[str, str]]:
        names = st.sampled_from(["x-twilio-signature", "x-twilio-webhooks-signature-settings"])
        return st.dictionaries(names, header_values, max_size=2)


class TestSharedKeyContract(TestTwilioContract):
    """The same contract for requests signed with a shared key and HMAC-SHA256."""

    key_kind = KeyKind.TWILIO_SIGNING_KEY

    def key_for(self, name: str, expires_at: float | None = None) -> Key:
        return key(SHARED[name], f"fp-{name}", expires_at)

    def signed(self, signer: str = "current") -> Req:
        request = twilio_request(secret=SHARED[signer], algorithm=HMAC_SHA256)
        return request.with_header(SETTINGS, "key=KS0123,algorithm=HMAC_SHA256")


class TestUrlIsSigned:
    def test_wrong_scheme(self) -> None:
        assert reason(twilio_request(signed_url=URL.replace("https:", "http:"))) is Reason.INVALID_SIGNATURE

    def test_wrong_host(self) -> None:
        assert reason(twilio_request(signed_url=URL.replace("hooks.", "other."))) is Reason.INVALID_SIGNATURE

    def test_wrong_path(self) -> None:
        assert reason(twilio_request(signed_url=URL.replace("/status/", "/incoming/"))) is Reason.INVALID_SIGNATURE

    def test_query_added(self) -> None:
        assert reason(twilio_request(URL + "?x=1", signed_url=URL)) is Reason.INVALID_SIGNATURE

    def test_query_removed(self) -> None:
        assert reason(twilio_request(URL, signed_url=URL + "?x=1")) is Reason.INVALID_SIGNATURE

    def test_query_reordered_is_rejected(self) -> None:
        # Twilio signs the URL as called, byte for byte (unlike Plivo, nothing is sorted).
        assert reason(twilio_request(URL + "?b=2&a=1", signed_url=URL + "?a=1&b=2")) is Reason.INVALID_SIGNATURE

    def test_query_reencoded_is_rejected(self) -> None:
        assert reason(twilio_request(URL + "?n=a%20b", signed_url=URL + "?n=a+b")) is Reason.INVALID_SIGNATURE

    def test_query_is_signed_raw(self) -> None:
        assert verify(twilio_request(URL + "?n=J%2Bo%20x&m=%41")).key_fingerprint == "fp-current"


class TestPorts:
    """RequestValidator.validate tries the URL with the default port added and with any port removed."""

    def test_signed_with_default_port_called_without(self) -> None:
        signed = URL.replace("example.com", "example.com:443")
        assert verify(twilio_request(URL, signed_url=signed)).key_fingerprint == "fp-current"

    def test_signed_without_port_called_with_default_port(self) -> None:
        called = URL.replace("example.com", "example.com:443")
        assert verify(twilio_request(called, signed_url=URL)).key_fingerprint == "fp-current"

    def test_http_default_port_is_80(self) -> None:
        called = URL.replace("https:", "http:")
        signed = called.replace("example.com", "example.com:80")
        assert verify(twilio_request(called, signed_url=signed)).key_fingerprint == "fp-current"
        wrong = called.replace("example.com", "example.com:443")
        assert reason(twilio_request(called, signed_url=wrong)) is Reason.INVALID_SIGNATURE

    def test_non_default_port_may_be_dropped(self) -> None:
        # SDK quirk: remove_port() drops any port, not only the default one.
        called = URL.replace("example.com", "example.com:8443")
        assert verify(twilio_request(called, signed_url=URL)).key_fingerprint == "fp-current"
        assert verify(twilio_request(called)).key_fingerprint == "fp-current"

    def test_another_port_is_rejected(self) -> None:
        called = URL.replace("example.com", "example.com:8443")
        signed = URL.replace("example.com", "example.com:9443")
        assert reason(twilio_request(called, signed_url=signed)) is Reason.INVALID_SIGNATURE

    def test_url_variants(self) -> None:
        assert url_variants("https://h.example.com/p?q=1") == (
            "https://h.example.com/p?q=1",
            "https://h.example.com:443/p?q=1",
        )
        assert url_variants("http://h.example.com:8080/p") == ("http://h.example.com/p", "http://h.example.com:8080/p")
        assert url_variants("https://h.example.com:notaport/p") is None


class TestParameters:
    def test_added_parameter(self) -> None:
        request = twilio_request()
        assert reason(request.replace(body=request.body + b"&Extra=1")) is Reason.INVALID_SIGNATURE

    def test_removed_parameter(self) -> None:
        request = twilio_request()
        assert reason(request.replace(body=urlencode(FORM[:-1]).encode())) is Reason.INVALID_SIGNATURE

    def test_parameter_order_does_not_matter(self) -> None:
        request = twilio_request()
        assert verify(request.replace(body=urlencode(tuple(reversed(FORM))).encode())).key_fingerprint

    def test_repeated_values_are_sorted(self) -> None:
        request = twilio_request(params=(*FORM, ("Digits", "4"), ("Digits", "2")))
        swapped = request.replace(body=request.body.replace(b"Digits=4&Digits=2", b"Digits=2&Digits=4"))
        assert verify(swapped).key_fingerprint == "fp-current"

    def test_repeated_identical_values_count_once(self) -> None:
        # SDK quirk: sorted(set(values)).
        signed = twilio_request(params=(*FORM, ("Digits", "1")))
        twice = signed.replace(body=signed.body + b"&Digits=1")
        assert verify(twice).key_fingerprint == "fp-current"

    def test_unicode_values(self) -> None:
        assert verify(twilio_request(params=(*FORM, ("CallerName", "Zoë Ångström")))).key_fingerprint

    def test_get_with_query_only(self) -> None:
        url = URL + "?CallSid=CA1&CallStatus=ringing"
        request = Req(url=url, method="GET", headers=(("X-Twilio-Signature", sign(TOKENS["current"], url)),))
        assert verify(request).key_fingerprint == "fp-current"


class TestJsonBody:
    def test_valid(self) -> None:
        assert verify(json_request()).key_fingerprint == "fp-current"

    def test_tampered_body(self) -> None:
        request = json_request()
        assert reason(request.replace(body=request.body.replace(b"completed", b"ringing"))) is Reason.INVALID_SIGNATURE

    def test_hash_of_another_body(self) -> None:
        request = json_request()
        other = URL + "?bodySHA256=" + body_sha256(b"{}")
        resigned = request.replace(url=other).with_header("X-Twilio-Signature", sign(TOKENS["current"], other))
        assert reason(resigned) is Reason.INVALID_SIGNATURE

    def test_body_stripped_is_rejected(self) -> None:
        assert reason(json_request().replace(body=b"")) is Reason.INVALID_SIGNATURE

    def test_body_without_body_hash_is_refused(self) -> None:
        request = Req(url=URL, headers=(("X-Twilio-Signature", sign(TOKENS["current"], URL)), JSON_TYPE), body=b"{}")
        assert reason(request) is Reason.MALFORMED_REQUEST

    def test_uppercase_hash_does_not_match(self) -> None:
        # The SDK compares its lower-case hexdigest with the query value exactly.
        body = b'{"a": 1}'
        url = f"{URL}?bodySHA256={body_sha256(body).upper()}"
        request = Req(url=url, headers=(("X-Twilio-Signature", sign(TOKENS["current"], url)), JSON_TYPE), body=body)
        assert reason(request) is Reason.INVALID_SIGNATURE

    def test_non_utf8_json_body_is_refused(self) -> None:
        assert reason(json_request(b'{"a": "\xff"}')) is Reason.MALFORMED_REQUEST


class TestSharedKeys:
    settings = "key=KS0123,algorithm=HMAC_SHA256"

    def shared_request(self, settings: str | None = None, algorithm: str = HMAC_SHA256) -> Req:
        request = twilio_request(secret=SHARED["current"], algorithm=algorithm)
        return request.with_header(SETTINGS, settings if settings is not None else self.settings)

    def shared_phone(self) -> PhoneCredentials:
        return phone(shared=(key(SHARED["current"], "fp-shared"),))

    def test_hmac_sha256_with_shared_key(self) -> None:
        assert verify(self.shared_request(), self.shared_phone()).key_fingerprint == "fp-shared"

    def test_algorithm_name_is_case_insensitive_and_trimmed(self) -> None:
        request = self.shared_request("key=KS1, algorithm = hmac_sha256 ")
        assert verify(request, self.shared_phone()).key_fingerprint == "fp-shared"

    def test_settings_without_algorithm_means_sha1_with_the_shared_key(self) -> None:
        request = self.shared_request("key=KS1", algorithm=HMAC_SHA1)
        assert verify(request, self.shared_phone()).key_fingerprint == "fp-shared"

    def test_unknown_algorithm_is_rejected(self) -> None:
        assert reason(self.shared_request("key=KS1,algorithm=HMAC_MD5"), self.shared_phone()) is (
            Reason.MALFORMED_SIGNATURE
        )

    def test_auth_token_does_not_verify_a_shared_key_request(self) -> None:
        request = twilio_request(secret=TOKENS["current"], algorithm=HMAC_SHA256).with_header(SETTINGS, self.settings)
        assert reason(request, self.shared_phone()) is Reason.INVALID_SIGNATURE

    def test_shared_key_request_for_a_phone_without_shared_keys(self) -> None:
        assert reason(self.shared_request()) is Reason.INVALID_SIGNATURE

    def test_settings_header_stripped(self) -> None:
        request = self.shared_request().without_header(SETTINGS)
        assert reason(request, self.shared_phone()) is Reason.MALFORMED_SIGNATURE  # a SHA-256 length, SHA-1 expected

    def test_signature_algorithm_parsing(self) -> None:
        assert signature_algorithm(None) == HMAC_SHA1
        assert signature_algorithm("") == HMAC_SHA1
        assert signature_algorithm("key=a,algorithm=") == HMAC_SHA1
        assert signature_algorithm("algorithm=X,algorithm=Y") == "X"
        assert signature_algorithm("key=a=b,algorithm=HMAC_SHA256") == HMAC_SHA256


class TestStringToSign:
    def test_url_then_sorted_name_value_pairs(self) -> None:
        assert string_to_sign("https://h.example.com/p?x=1", [("b", "2"), ("a", "1")]) == (
            b"https://h.example.com/p?x=1a1b2"
        )

    def test_signature_sizes(self) -> None:
        assert len(sign("t", URL)) == 28
        assert len(sign("t", URL, algorithm=HMAC_SHA256)) == 44


class TestIdempotencyKey:
    def test_form(self) -> None:
        key_ = idempotency_key(twilio_request().build(), "status")
        assert key_ == "status:CA0123456789abcdef0123456789abcdef:ringing"

    def test_json_body(self) -> None:
        assert idempotency_key(json_request().build(), "status") == "status:CA1:completed"

    @pytest.mark.parametrize("body", [b"[]", b"not json", b'{"CallSid": 7}', b'{"CallSid": ""}', b"\xff"])
    def test_json_without_a_usable_call_sid(self, body: bytes) -> None:
        request = inbound(URL, headers={"content-type": "application/json"}, body=body)
        assert idempotency_key(request, "status") is None

    def test_query(self) -> None:
        key_ = idempotency_key(inbound(URL + "?CallSid=CA9&CallStatus=ringing", method="GET"), "incoming")
        assert key_ == "incoming:CA9:ringing"

    def test_callbacks_without_status_are_told_apart_by_their_parameters(self) -> None:
        def key_for(query: str) -> str | None:
            return idempotency_key(inbound(URL + "?" + query, method="GET"), "status")

        first = key_for("CallSid=CA9&RecordingSid=RE1")
        assert first is not None and first.startswith("status:CA9:p-")
        assert first == key_for("CallSid=CA9&RecordingSid=RE1")  # the carrier's retry: a duplicate
        assert first != key_for("CallSid=CA9&RecordingSid=RE2")  # the call's second recording: not

    def test_sequence_number_separates_status_events(self) -> None:
        def key_for(query: str) -> str | None:
            return idempotency_key(inbound(URL + "?" + query, method="GET"), "status")

        assert key_for("CallSid=CA9&CallStatus=in-progress&SequenceNumber=1") != key_for(
            "CallSid=CA9&CallStatus=in-progress&SequenceNumber=2"
        )

"""Plivo / Vobiz V3 verifier: shared vectors, the signature contract, and Plivo's quirks."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode

import pytest
from hypothesis import strategies as st

from gateway.errors import Reason, Rejected
from gateway.inbound import InboundRequest
from gateway.providers import Key, KeyKind, PhoneCredentials, Provider, Verified, vobiz
from gateway.providers.plivo import PlivoVerifier, idempotency_key, sign_v3, v3_string_to_sign
from gateway.providers.vobiz import sign_vobiz_v3, vobiz_v3_string_to_sign
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

VECTOR_PROVIDERS = ("plivo", "vobiz")

URL = "https://hooks.example.com/plivo/status/ph_test"
FORM = (
    ("CallUUID", "3b1a11df-0001"),
    ("CallStatus", "ringing"),
    ("From", "+918973981844"),
    ("To", "+918044556677"),
    ("Event", "StartApp"),
)
NONCE = "12345678901234567890"
TOKENS = {"current": "TokenCurrent000000000000000000000000000", "old": "TokenOld", "stranger": "TokenStranger"}
FORM_TYPE = ("Content-Type", "application/x-www-form-urlencoded")

_VERIFIERS = {Provider.PLIVO: PlivoVerifier(), Provider.VOBIZ: vobiz.verifier()}


class _PlivoRoute:
    """The /plivo/ route's verifier for each phone (Plivo's for a phone of another carrier)."""

    def verify(self, inbound: InboundRequest, creds: PhoneCredentials, now: float) -> Verified:
        return _VERIFIERS.get(creds.provider, _VERIFIERS[Provider.PLIVO]).verify(inbound, creds, now)


verifier = _PlivoRoute()


def form_body(params: tuple[tuple[str, str], ...] | list[tuple[str, str]]) -> bytes:
    return urlencode(params).encode()


def plivo_request(
    url: str = URL,
    params: tuple[tuple[str, str], ...] = FORM,
    *,
    token: str = TOKENS["current"],
    method: str = "POST",
    nonce: str = NONCE,
    signed_url: str | None = None,
) -> Req:
    """A callback Plivo signed for `signed_url` (default: `url`) and sent to `url`."""
    signature = sign_v3(token, method, signed_url or url, list(params) if method == "POST" else None, nonce)
    headers = [("X-Plivo-Signature-V3", signature), ("X-Plivo-Signature-V3-Nonce", nonce)]
    if method == "POST":
        headers.append(FORM_TYPE)
    body = form_body(params) if method == "POST" else b""
    return Req(url=url, method=method, headers=tuple(headers), body=body)


def plivo_phone(*keys: Key, main: tuple[Key, ...] = (), provider: Provider = Provider.PLIVO) -> Any:
    mapping: dict[KeyKind, tuple[Key, ...]] = {KeyKind.AUTH_TOKEN: keys or (key(TOKENS["current"], "fp-current"),)}
    if main:
        mapping[KeyKind.MAIN_AUTH_TOKEN] = main
    return creds(provider, mapping)


def reason(request: Req, phone: Any = None) -> Reason:
    return rejection(verifier, request, phone or plivo_phone(), NOW)


def verify(request: Req, phone: Any = None) -> Any:
    return accepted(verifier, request, phone or plivo_phone(), NOW)


# --- (1) shared vectors, through the verifier directly ---


def test_vector_step(vector_step: VectorStep) -> None:
    phone = creds_from_vector(vector_step.case["phone"])
    request = inbound_from_vector(vector_step.request)
    if vector_step.expected == "accept":
        verified = verifier.verify(request, phone, NOW)
        assert verified.key_fingerprint == "fp-auth"
        assert verified.nonce  # the caller stores it: single use
    else:
        with pytest.raises(Rejected):
            verifier.verify(request, phone, NOW)


@pytest.mark.parametrize(
    "case", vector_cases(VECTOR_PROVIDERS, where=lambda c: c["oracle"].startswith("rule: nonce single use"))
)
def test_vector_replays_carry_the_same_nonce(case: Mapping[str, Any]) -> None:
    phone = creds_from_vector(case["phone"])
    nonces = {verifier.verify(inbound_from_vector(s["request"]), phone, NOW).nonce for s in case["steps"]}
    assert len(nonces) == 1  # ... so the Redis layer refuses the second one


def _accepted_with(header: str) -> Callable[[VectorStep], bool]:
    return lambda item: item.expected == "accept" and header in {k.lower() for k in item.request["headers"]}


@pytest.mark.parametrize("known", vector_steps(VECTOR_PROVIDERS, where=_accepted_with("x-plivo-signature-v3")))
def test_sign_v3_reproduces_the_sdk_signatures_of_the_vectors(known: VectorStep) -> None:
    request = known.request
    headers = {k.lower(): v for k, v in request["headers"].items()}
    params = parse_qsl(request["body"], keep_blank_values=True) if request["method"] == "POST" else None
    token = known.case["phone"]["credentials"]["auth_token"]
    signature = sign_v3(token, request["method"], request["url"], params, headers["x-plivo-signature-v3-nonce"])
    assert signature in headers["x-plivo-signature-v3"].split(",")


@pytest.mark.parametrize("known", vector_steps(VECTOR_PROVIDERS, where=_accepted_with("x-vobiz-signature-v3")))
def test_sign_vobiz_v3_reproduces_the_vobiz_vector(known: VectorStep) -> None:
    headers = {k.lower(): v for k, v in known.request["headers"].items()}
    token = known.case["phone"]["credentials"]["auth_token"]
    signature = sign_vobiz_v3(token, known.request["url"], headers["x-vobiz-signature-v3-nonce"])
    assert signature == headers["x-vobiz-signature-v3"]


# --- (2) the contract: one change at a time ---


class TestPlivoContract(SignatureContract):
    verifier = verifier
    key_kind = KeyKind.AUTH_TOKEN
    provider = Provider.PLIVO
    signature_header = "X-Plivo-Signature-V3"

    def key_for(self, name: str, expires_at: float | None = None) -> Key:
        return key(TOKENS[name], f"fp-{name}", expires_at)

    def signed(self, signer: str = "current") -> Req:
        return plivo_request(token=TOKENS[signer])

    def tampered(self, request: Req) -> Req:
        return request.replace(body=request.body.replace(b"ringing", b"completed"))

    def random_headers(self) -> st.SearchStrategy[dict[str, str]]:
        names = st.sampled_from(
            ["x-plivo-signature-v3", "x-plivo-signature-v3-nonce", "x-plivo-signature-ma-v3", "x-plivo-signature-v2"]
        )
        return st.dictionaries(names, header_values, max_size=4)


class TestVobizContract(TestPlivoContract):
    """The same contract for a Vobiz phone, through Vobiz's own header."""

    provider = Provider.VOBIZ
    signature_header = "X-Vobiz-Signature-V3"

    def signed(self, signer: str = "current") -> Req:
        return vobiz_request(token=TOKENS[signer])

    def tampered(self, request: Req) -> Req:
        # Vobiz's string covers the URL and nonce only (its design): tamper with the URL.
        return request.replace(url=request.url.replace("/status/", "/incoming/"))

    def random_headers(self) -> st.SearchStrategy[dict[str, str]]:
        names = st.sampled_from(
            ["x-vobiz-signature-v3", "x-vobiz-signature-v3-nonce", "x-plivo-signature-v3", "x-plivo-signature-v3-nonce"]
        )
        return st.dictionaries(names, header_values, max_size=4)


def vobiz_request(url: str = URL, *, token: str = TOKENS["current"], nonce: str = NONCE) -> Req:
    headers = (
        ("X-Vobiz-Signature-V3", sign_vobiz_v3(token, url, nonce)),
        ("X-Vobiz-Signature-V3-Nonce", nonce),
        FORM_TYPE,
    )
    return Req(url=url, headers=headers, body=form_body(FORM))


class TestUrlIsSigned:
    def test_wrong_scheme(self) -> None:
        assert reason(plivo_request(signed_url=URL.replace("https:", "http:"))) is Reason.INVALID_SIGNATURE

    def test_wrong_host(self) -> None:
        assert reason(plivo_request(signed_url=URL.replace("hooks.", "other."))) is Reason.INVALID_SIGNATURE

    def test_explicit_default_port_is_not_the_same_url(self) -> None:
        # Plivo signs netloc as configured: :443 is a different string (vector plivo-023).
        signed = URL.replace("example.com", "example.com:443")
        assert reason(plivo_request(signed_url=signed)) is Reason.INVALID_SIGNATURE

    def test_non_default_port_is_signed(self) -> None:
        url = URL.replace("example.com", "example.com:8443")
        assert verify(plivo_request(url)).key_fingerprint == "fp-current"
        assert reason(plivo_request(url, signed_url=URL)) is Reason.INVALID_SIGNATURE

    def test_wrong_path(self) -> None:
        assert reason(plivo_request(signed_url=URL.replace("/status/", "/incoming/"))) is Reason.INVALID_SIGNATURE

    def test_path_is_signed_as_sent_not_decoded(self) -> None:
        url = URL + "%2Fx"
        assert verify(plivo_request(url)).key_fingerprint == "fp-current"
        assert reason(plivo_request(url, signed_url=URL + "/x")) is Reason.INVALID_SIGNATURE

    def test_query_added(self) -> None:
        assert reason(plivo_request(URL + "?x=1", signed_url=URL)) is Reason.INVALID_SIGNATURE

    def test_query_removed(self) -> None:
        assert reason(plivo_request(URL, signed_url=URL + "?x=1")) is Reason.INVALID_SIGNATURE

    def test_query_value_changed(self) -> None:
        assert reason(plivo_request(URL + "?x=2", signed_url=URL + "?x=1")) is Reason.INVALID_SIGNATURE

    def test_query_reordered_still_verifies(self) -> None:
        # The SDK sorts the decoded query: order on the wire does not matter.
        request = plivo_request(URL + "?b=2&a=1", signed_url=URL + "?a=1&b=2")
        assert verify(request).key_fingerprint == "fp-current"

    def test_query_reencoded_to_the_same_values_still_verifies(self) -> None:
        # Values are signed decoded: %20 and + are both a space, %41 is A, hex case is free.
        request = plivo_request(URL + "?n=J%2bo%20x&m=%41", signed_url=URL + "?n=J%2Bo+x&m=A")
        assert verify(request).key_fingerprint == "fp-current"

    def test_query_reencoded_to_another_value_is_rejected(self) -> None:
        # "+" decodes to a space, %2B to a plus: different values.
        assert reason(plivo_request(URL + "?n=a+b", signed_url=URL + "?n=a%2Bb")) is Reason.INVALID_SIGNATURE

    def test_last_segment_path_params_are_not_signed(self) -> None:
        # SDK quirk: urlparse() puts ";x=1" of the last segment in `params`, which
        # construct_get_url drops. Kept for bit-exactness; routing sees the full path.
        assert verify(plivo_request(URL + ";x=1", signed_url=URL)).key_fingerprint == "fp-current"


class TestParameters:
    def test_added_parameter(self) -> None:
        request = plivo_request()
        assert reason(request.replace(body=request.body + b"&Extra=1")) is Reason.INVALID_SIGNATURE

    def test_removed_parameter(self) -> None:
        request = plivo_request()
        body = form_body(FORM[:-1])
        assert reason(request.replace(body=body)) is Reason.INVALID_SIGNATURE

    def test_parameter_order_does_not_matter(self) -> None:
        request = plivo_request()
        assert verify(request.replace(body=form_body(tuple(reversed(FORM))))).key_fingerprint == "fp-current"

    def test_repeated_parameter_values_are_sorted(self) -> None:
        request = plivo_request(params=(*FORM, ("Digits", "9"), ("Digits", "1")))
        swapped = request.replace(body=request.body.replace(b"Digits=9&Digits=1", b"Digits=1&Digits=9"))
        assert verify(swapped).key_fingerprint == "fp-current"

    def test_repeated_parameter_value_dropped(self) -> None:
        request = plivo_request(params=(*FORM, ("Digits", "9"), ("Digits", "1")))
        assert reason(request.replace(body=request.body.replace(b"&Digits=1", b""))) is Reason.INVALID_SIGNATURE

    def test_empty_value_is_signed(self) -> None:
        request = plivo_request(params=(*FORM, ("SIPHeaders", "")))
        assert verify(request).key_fingerprint == "fp-current"
        assert reason(request.replace(body=request.body.replace(b"&SIPHeaders=", b""))) is Reason.INVALID_SIGNATURE

    def test_unicode_values(self) -> None:
        request = plivo_request(params=(*FORM, ("CallerName", "Jürgen Müller & Söhne")))
        assert verify(request).key_fingerprint == "fp-current"

    def test_post_without_parameters(self) -> None:
        assert verify(plivo_request(params=())).key_fingerprint == "fp-current"

    def test_get_with_query_parameters(self) -> None:
        query = "?CallUUID=abc&CallStatus=ringing&From=%2B918000000000"
        assert verify(plivo_request(URL + query, method="GET")).key_fingerprint == "fp-current"

    def test_get_signed_as_post_is_rejected(self) -> None:
        request = plivo_request(URL + "?a=1", method="GET")
        as_post = sign_v3(TOKENS["current"], "POST", URL + "?a=1", [("b", "2")], NONCE)
        assert reason(request.with_header("X-Plivo-Signature-V3", as_post)) is Reason.INVALID_SIGNATURE

    def test_json_body_is_refused(self) -> None:
        # Plivo signs form parameters only: a JSON body would reach dispatch unsigned.
        request = plivo_request(params=()).with_header("Content-Type", "application/json")
        assert reason(request.replace(body=b'{"CallUUID": "x"}')) is Reason.MALFORMED_REQUEST

    def test_get_with_a_body_is_refused(self) -> None:
        request = plivo_request(URL + "?a=1", method="GET").replace(body=b"a=2")
        assert reason(request) is Reason.MALFORMED_REQUEST

    def test_other_methods_are_refused(self) -> None:
        assert reason(plivo_request().replace(method="PUT")) is Reason.METHOD_NOT_ALLOWED

    def test_query_with_invalid_utf8_is_malformed_not_a_crash(self) -> None:
        assert reason(plivo_request(URL + "?a=%FF", signed_url=URL)) is Reason.MALFORMED_REQUEST


class TestHeaders:
    def test_nonce_missing(self) -> None:
        assert reason(plivo_request().without_header("X-Plivo-Signature-V3-Nonce")) is Reason.MISSING_SIGNATURE

    def test_nonce_empty_counts_as_missing(self) -> None:
        assert reason(plivo_request().with_header("X-Plivo-Signature-V3-Nonce", "")) is Reason.MISSING_SIGNATURE

    def test_nonce_changed(self) -> None:
        request = plivo_request().with_header("X-Plivo-Signature-V3-Nonce", NONCE[::-1])
        assert reason(request) is Reason.INVALID_SIGNATURE

    def test_nonce_duplicated(self) -> None:
        request = plivo_request().with_duplicate("X-Plivo-Signature-V3-Nonce", NONCE)
        assert reason(request) is Reason.MALFORMED_SIGNATURE

    def test_verified_nonce_is_the_signed_one(self) -> None:
        assert verify(plivo_request()).nonce == NONCE

    def test_header_names_are_case_insensitive(self) -> None:
        request = plivo_request()
        lower = request.replace(headers=tuple((name.lower(), value) for name, value in request.headers))
        assert verify(lower).key_fingerprint == "fp-current"

    def test_valid_signature_among_several(self) -> None:
        request = plivo_request()
        valid = request.header("X-Plivo-Signature-V3")
        other = sign_v3(TOKENS["stranger"], "POST", URL, list(FORM), NONCE)
        assert verify(request.with_header("X-Plivo-Signature-V3", f"{other},{valid}")).nonce == NONCE

    def test_several_signatures_match_exactly_without_trimming(self) -> None:
        # SDK: `signature in header.split(",")`: " sig" is not "sig".
        request = plivo_request()
        valid = request.header("X-Plivo-Signature-V3")
        other = sign_v3(TOKENS["stranger"], "POST", URL, list(FORM), NONCE)
        assert reason(request.with_header("X-Plivo-Signature-V3", f"{other}, {valid}")) is Reason.INVALID_SIGNATURE

    def test_v2_only_is_not_accepted(self) -> None:
        request = plivo_request().without_header("X-Plivo-Signature-V3")
        v2 = request.with_header("X-Plivo-Signature-V2", "c2lnbmF0dXJlLXYyLXNpZ25hdHVyZQ==").with_header(
            "X-Plivo-Signature-V2-Nonce", NONCE
        )
        with pytest.raises(Rejected) as info:
            verifier.verify(v2.build(), plivo_phone(), NOW)
        assert info.value.reason is Reason.MISSING_SIGNATURE
        assert "downgrade" in info.value.detail


class TestMainAccountSignature:
    main_token = "MainAccountToken0000000000000000000000"

    def ma_request(self) -> Req:
        request = plivo_request()
        ma = sign_v3(self.main_token, "POST", URL, list(FORM), NONCE)
        bad_v3 = sign_v3(TOKENS["stranger"], "POST", URL, list(FORM), NONCE)
        return request.with_header("X-Plivo-Signature-V3", bad_v3).with_header("X-Plivo-Signature-Ma-V3", ma)

    def test_accepted_with_a_main_account_key(self) -> None:
        phone = plivo_phone(main=(key(self.main_token, "fp-main"),))
        assert verify(self.ma_request(), phone).key_fingerprint == "fp-main"

    def test_ignored_without_a_main_account_key(self) -> None:
        assert reason(self.ma_request()) is Reason.INVALID_SIGNATURE

    def test_main_key_does_not_verify_the_subaccount_header(self) -> None:
        phone = plivo_phone(key(TOKENS["stranger"], "fp-x"), main=(key(TOKENS["current"], "fp-main"),))
        request = plivo_request().without_header("X-Plivo-Signature-Ma-V3")
        assert reason(request, phone) is Reason.INVALID_SIGNATURE


class TestVobiz:
    def vobiz_phone(self) -> Any:
        return plivo_phone(provider=Provider.VOBIZ)

    def test_plivo_header_verifies_for_a_vobiz_phone(self) -> None:
        assert verify(plivo_request(), self.vobiz_phone()).nonce == NONCE

    def test_vobiz_header_verifies_and_returns_its_nonce(self) -> None:
        assert verify(vobiz_request(nonce="777"), self.vobiz_phone()).nonce == "777"

    def test_vobiz_header_signs_the_url_without_its_query(self) -> None:
        request = vobiz_request(URL + "?a=1")
        assert verify(request.replace(url=URL + "?a=2"), self.vobiz_phone()).key_fingerprint == "fp-current"

    def test_vobiz_header_is_not_accepted_for_a_plivo_phone(self) -> None:
        assert reason(vobiz_request()) is Reason.MISSING_SIGNATURE

    def test_vobiz_nonce_missing(self) -> None:
        request = vobiz_request().without_header("X-Vobiz-Signature-V3-Nonce")
        assert reason(request, self.vobiz_phone()) is Reason.MISSING_SIGNATURE

    def test_vobiz_string_to_sign(self) -> None:
        assert vobiz_v3_string_to_sign("https://h.example.com/p?q=1", "42") == b"https://h.example.com/p.42"

    def test_wrong_provider_is_refused(self) -> None:
        phone = plivo_phone(provider=Provider.TWILIO)
        assert reason(plivo_request(), phone) is Reason.WRONG_PROVIDER


class TestStringToSign:
    """Known answers for the SDK's construction (plivo-python 4.63.0 signature_v3.py)."""

    def test_post_with_parameters_always_has_a_question_mark(self) -> None:
        message = v3_string_to_sign("POST", "https://h.example.com/p", [("b", "2"), ("a", "1")], "9")
        assert message == b"https://h.example.com/p?a1b2.9"

    def test_post_with_query_and_parameters_has_a_dot_between(self) -> None:
        message = v3_string_to_sign("POST", "https://h.example.com/p?z=1&y=%2F", [("a", "1")], "9")
        assert message == b"https://h.example.com/p?y=/&z=1.a1.9"

    def test_post_without_parameters_is_like_get(self) -> None:
        assert v3_string_to_sign("POST", "https://h.example.com/p", [], "9") == b"https://h.example.com/p.9"
        assert v3_string_to_sign("POST", "https://h.example.com/p?a=1", None, "9") == b"https://h.example.com/p?a=1.9"

    def test_get_repeated_query_values_are_sorted_and_repeated(self) -> None:
        message = v3_string_to_sign("GET", "https://h.example.com/p?d=9&d=1&c=", None, "9")
        assert message == b"https://h.example.com/p?c=&d=1&d=9.9"

    def test_scheme_is_lowercased_host_case_is_kept(self) -> None:
        message = v3_string_to_sign("GET", "HTTPS://Hooks.Example.com/P", None, "9")
        assert message == b"https://Hooks.Example.com/P.9"

    def test_non_ascii_values_are_utf8(self) -> None:
        message = v3_string_to_sign("POST", "https://h.example.com/p", [("n", "é")], "9")
        assert message == "https://h.example.com/p?né.9".encode()

    def test_non_ascii_nonce_is_double_encoded_like_the_sdk(self) -> None:
        # get_signature_v3 reads the UTF-8 nonce bytes back as latin-1 and encodes them again.
        message = v3_string_to_sign("GET", "https://h.example.com/p", None, "é")
        assert message == b"https://h.example.com/p." + "é".encode().decode("latin-1").encode()

    def test_signature_is_padded_standard_base64(self) -> None:
        signature = sign_v3("token", "GET", "https://h.example.com/p", None, "1")
        assert len(signature) == 44 and signature.endswith("=")

    def test_wire_path_with_utf8_bytes_is_signed_as_utf8(self) -> None:
        url = "https://hooks.example.com/plivo/status/ph_é"
        request = plivo_request(url)
        assert request.build().raw_path.endswith("ph_Ã©")  # latin-1 view of the wire bytes
        assert verify(request).key_fingerprint == "fp-current"


class TestIdempotencyKey:
    def test_call_uuid_status_and_event(self) -> None:
        assert idempotency_key(plivo_request().build(), "status") == "status:3b1a11df-0001:ringing:StartApp"

    def test_route_kind_is_part_of_the_key(self) -> None:
        request = plivo_request().build()
        assert idempotency_key(request, "incoming") != idempotency_key(request, "status")

    def test_without_event(self) -> None:
        request = plivo_request(params=FORM[:-1]).build()
        assert idempotency_key(request, "status") == "status:3b1a11df-0001:ringing"

    def test_from_get_query(self) -> None:
        request = inbound(URL + "?CallUUID=u1&CallStatus=busy", method="GET")
        assert idempotency_key(request, "incoming") == "incoming:u1:busy"

    def test_parts_are_quoted(self) -> None:
        request = inbound(URL + "?CallUUID=a%3Ab&CallStatus=c", method="GET")
        assert idempotency_key(request, "status") == "status:a%3Ab:c"

    def test_none_without_call_uuid(self) -> None:
        assert idempotency_key(plivo_request(params=()).build(), "status") is None

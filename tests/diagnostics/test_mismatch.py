"""Signature mismatch diagnosis (gateway/diagnostics/mismatch.py): each kind found and labelled, never accepted.

Pure tests call `diagnose` on InboundRequests built like the edge builds them; HTTP tests go
through the real app and socket and read the real metric and log.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import httpx
import orjson
import pytest
import redis
from prometheus_client import REGISTRY

from gateway.diagnostics import explainer
from gateway.diagnostics.explainer import MismatchExplainer
from gateway.diagnostics.mismatch import MAX_VARIANTS, diagnose
from gateway.diagnostics.variants import LABELS, variants
from gateway.errors import Reason, Rejected
from gateway.inbound import InboundRequest
from gateway.providers import KeyKind, PhoneCredentials, Provider, Verified
from gateway.providers import plivo as plivo_sig
from gateway.providers import twilio as twilio_sig
from gateway.providers import vobiz as vobiz_sig
from gateway.providers.plivo import PlivoVerifier
from gateway.providers.telnyx import TelnyxVerifier
from gateway.providers.twilio import TwilioVerifier
from gateway.settings import PublicBase
from tests.helpers.builders import new_token, plivo_params, plivo_phone
from tests.helpers.inbound_builders import creds, inbound, key
from tests.helpers.support import RunningGateway, make_settings, random_id, run_gateway

FORM = "application/x-www-form-urlencoded"
NOW = 1_795_000_000.0
STREAM = "gateway:events"
TOKEN = "explain-test-token-0123456789"
PATH = "/plivo/status/ph_x"


# ---- building requests -------------------------------------------------------------------


def plivo_signed(
    url: str, *, params: list[tuple[str, str]] | None = None, token: str = TOKEN, nonce: str | None = None
) -> dict[str, str]:
    """Plivo V3 headers for a POST of `params` to `url` (what the carrier signed)."""
    nonce = nonce or str(secrets.randbelow(10**20))
    params = plivo_params() if params is None else params
    signature = plivo_sig.sign_v3(token, "POST", url, params, nonce)
    return {"X-Plivo-Signature-V3": signature, "X-Plivo-Signature-V3-Nonce": nonce, "Content-Type": FORM}


def plivo_creds(provider: Provider = Provider.PLIVO, token: str = TOKEN) -> PhoneCredentials:
    return creds(provider, {KeyKind.AUTH_TOKEN: [key(token, "fp_test")]}, phone_id="ph_x")


def twilio_creds(token: str = TOKEN) -> PhoneCredentials:
    return creds(Provider.TWILIO, {KeyKind.AUTH_TOKEN: [key(token, "fp_test")]}, phone_id="ph_x")


def plivo_case(received_url: str, signed_url: str, **extra_headers: str) -> InboundRequest:
    params = plivo_params()
    headers = {**plivo_signed(signed_url, params=params), **extra_headers}
    return inbound(received_url, headers=headers, body=urlencode(params))


def twilio_case(
    received_url: str, signed_url: str, params: list[tuple[str, str]] | None = None, **extra_headers: str
) -> InboundRequest:
    params = [("CallSid", "CA" + secrets.token_hex(16)), ("CallStatus", "ringing")] if params is None else params
    headers = {"X-Twilio-Signature": twilio_sig.sign(TOKEN, signed_url, params), "Content-Type": FORM}
    return inbound(received_url, headers={**headers, **extra_headers}, body=urlencode(params))


def twilio_json_case(base_url: str, *, content_type: str) -> InboundRequest:
    body = orjson.dumps({"CallSid": "CA" + secrets.token_hex(16), "CallStatus": "ringing"})
    url = f"{base_url}?bodySHA256={twilio_sig.body_sha256(body)}"
    headers = {"X-Twilio-Signature": twilio_sig.sign(TOKEN, url), "Content-Type": content_type}
    return inbound(url, headers=headers, body=body)


H = "https://hooks.example.com"

# (name, provider, request, expected labels of the first matching variant)
PURE_CASES: list[tuple[str, Provider, InboundRequest, tuple[str, ...]]] = [
    ("scheme", Provider.PLIVO, plivo_case(f"http://hooks.example.com{PATH}", f"{H}{PATH}"), ("scheme",)),
    ("port present", Provider.PLIVO, plivo_case(f"{H}{PATH}", f"https://hooks.example.com:443{PATH}"), ("port",)),
    ("port absent", Provider.PLIVO, plivo_case(f"https://hooks.example.com:443{PATH}", f"{H}{PATH}"), ("port",)),
    (
        "host from X-Forwarded-Host",
        Provider.PLIVO,
        plivo_case(f"https://10.0.0.5:8080{PATH}", f"{H}{PATH}", **{"X-Forwarded-Host": "hooks.example.com"}),
        ("host",),
    ),
    (
        "host from the Host header",
        Provider.TWILIO,
        twilio_case(f"https://lb.example.net{PATH}", f"{H}{PATH}", Host="hooks.example.com"),
        ("host",),
    ),
    (
        "host from RFC 7239 Forwarded",
        Provider.PLIVO,
        plivo_case(f"https://lb.example.net{PATH}", f"{H}{PATH}", Forwarded='for=192.0.2.1;host="hooks.example.com"'),
        ("host",),
    ),
    (
        "path prefix from X-Forwarded-Prefix",
        Provider.PLIVO,
        plivo_case(f"{H}{PATH}", f"{H}/gw{PATH}", **{"X-Forwarded-Prefix": "/gw"}),
        ("path_prefix",),
    ),
    (
        "path prefix from X-Original-URI",
        Provider.TWILIO,
        twilio_case(f"{H}{PATH}", f"{H}/edge/v1{PATH}", None, **{"X-Original-URI": f"/edge/v1{PATH}"}),
        ("path_prefix",),
    ),
    ("trailing slash", Provider.PLIVO, plivo_case(f"{H}{PATH}", f"{H}{PATH}/"), ("trailing_slash",)),
    (
        "query order",
        Provider.TWILIO,
        twilio_case(f"{H}{PATH}?b=2&a=1", f"{H}{PATH}?a=1&b=2"),
        ("query_order",),
    ),
    (
        "query encoding + vs %20",
        Provider.TWILIO,
        twilio_case(f"{H}{PATH}?q=a+b", f"{H}{PATH}?q=a%20b"),
        ("query_encoding",),
    ),
    (
        "query encoding, hex case",
        Provider.TWILIO,
        twilio_case(f"{H}{PATH}?q=%2fx", f"{H}{PATH}?q=%2Fx"),
        ("query_encoding",),
    ),
    (
        "query encoding %2B decoded by a proxy",
        Provider.PLIVO,
        plivo_case(f"{H}{PATH}?q=a+b", f"{H}{PATH}?q=a%2Bb"),
        ("query_encoding",),
    ),
    (
        "raw JSON body sent as form",
        Provider.TWILIO,
        twilio_json_case(f"{H}{PATH}", content_type=FORM),
        ("form_vs_raw",),
    ),
    (
        "scheme and host together",
        Provider.PLIVO,
        plivo_case(f"http://10.0.0.5:8080{PATH}", f"{H}{PATH}", **{"X-Forwarded-Host": "hooks.example.com"}),
        ("scheme", "host"),
    ),
    (
        "scheme and default port together",
        Provider.PLIVO,
        plivo_case(f"http://hooks.example.com{PATH}", f"https://hooks.example.com:443{PATH}"),
        ("scheme", "port"),
    ),
]


def _verifier(provider: Provider) -> PlivoVerifier | TwilioVerifier:
    if provider is Provider.VOBIZ:
        return vobiz_sig.verifier()
    return TwilioVerifier() if provider is Provider.TWILIO else PlivoVerifier()


def _creds(provider: Provider) -> PhoneCredentials:
    return twilio_creds() if provider is Provider.TWILIO else plivo_creds(provider)


# ---- pure diagnosis ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "request_", "labels"), [c[1:] for c in PURE_CASES], ids=[c[0] for c in PURE_CASES]
)
def test_each_mismatch_is_found_and_labelled(
    provider: Provider, request_: InboundRequest, labels: tuple[str, ...]
) -> None:
    verifier, phone = _verifier(provider), _creds(provider)
    with pytest.raises(Rejected):  # the request as received fails...
        verifier.verify(request_, phone, NOW)
    diagnosis = diagnose(request_, phone, verifier, NOW)
    assert diagnosis is not None  # ...and one variant would have verified
    assert diagnosis.labels == labels
    assert diagnosis.key_fingerprint == "fp_test"
    assert 1 <= diagnosis.tried <= MAX_VARIANTS
    with pytest.raises(Rejected):  # diagnosing changed nothing about the request itself
        verifier.verify(request_, phone, NOW)


def test_public_base_host_and_prefix_are_variants() -> None:
    base = PublicBase("https", "hooks.example.com", "/gw")
    # GATEWAY_PUBLIC_BASE_URL says /gw, the carrier was configured without it.
    received = plivo_case(f"{H}/gw{PATH}", f"{H}{PATH}")
    found = diagnose(received, plivo_creds(), PlivoVerifier(), NOW, public_base=base)
    assert found is not None and found.labels == ("path_prefix",)
    assert "GATEWAY_PUBLIC_BASE_URL" in found.variant.description
    # A gateway that rebuilt another host than the configured base (no base in effect here).
    received = plivo_case(f"https://old.example.com{PATH}", f"{H}{PATH}")
    found = diagnose(received, plivo_creds(), PlivoVerifier(), NOW, public_base=PublicBase("https", H[8:], ""))
    assert found is not None and found.labels == ("host",)


def test_content_type_lost_on_the_way_is_form_vs_raw() -> None:
    # Plivo itself refuses a body it did not sign (malformed); the CLI still explains it.
    params = plivo_params()
    headers = {**plivo_signed(f"{H}{PATH}", params=params), "Content-Type": "text/plain"}
    received = inbound(f"{H}{PATH}", headers=headers, body=urlencode(params))
    with pytest.raises(Rejected) as info:
        PlivoVerifier().verify(received, plivo_creds(), NOW)
    assert info.value.reason is Reason.MALFORMED_REQUEST
    found = diagnose(received, plivo_creds(), PlivoVerifier(), NOW)
    assert found is not None and found.labels == ("form_vs_raw",)


def test_vobiz_own_header_is_diagnosed_too() -> None:
    nonce = "12345678901234567890"
    signature = vobiz_sig.sign_vobiz_v3(TOKEN, f"{H}{PATH}", nonce)
    headers = {"X-Vobiz-Signature-V3": signature, "X-Vobiz-Signature-V3-Nonce": nonce, "Content-Type": FORM}
    received = inbound(f"http://hooks.example.com{PATH}", headers=headers, body="CallUUID=1&CallStatus=ringing")
    found = diagnose(received, plivo_creds(Provider.VOBIZ), vobiz_sig.verifier(), NOW)
    assert found is not None and found.labels == ("scheme",)


def test_forgery_matches_nothing_and_tries_a_bounded_number_of_variants() -> None:
    headers = {
        "X-Plivo-Signature-V3": "A" * 43 + "=",
        "X-Plivo-Signature-V3-Nonce": "1",
        "Content-Type": FORM,
        "X-Forwarded-Host": "a.example.com",
        "Forwarded": "host=b.example.com",
        "Host": "c.example.com:8443",
        "X-Forwarded-Prefix": "/p",
        "X-Original-URI": f"/q{PATH}",
        "X-Forwarded-Uri": f"/r{PATH}",
    }
    received = inbound(f"http://d.example.com{PATH}?x=1+2&y=%2f", headers=headers, body="CallUUID=1")
    calls: list[InboundRequest] = []

    class Counting(PlivoVerifier):
        def verify(self, inbound: InboundRequest, creds: PhoneCredentials, now: float) -> Verified:
            calls.append(inbound)
            return super().verify(inbound, creds, now)

    assert len(list(variants(received, Provider.PLIVO))) > MAX_VARIANTS  # there were more to try...
    assert diagnose(received, plivo_creds(), Counting(), NOW) is None
    assert len(calls) == MAX_VARIANTS  # ...but only MAX_VARIANTS were verified
    assert len({(c.scheme, c.netloc, c.raw_path, c.query_string) for c in calls}) == len(calls)  # all distinct


def test_wrong_token_is_not_explained() -> None:
    received = plivo_case(f"http://hooks.example.com{PATH}", f"{H}{PATH}")
    assert diagnose(received, plivo_creds(token="another-token-0123456789"), PlivoVerifier(), NOW) is None


def test_a_carrier_signing_the_body_only_gets_body_variants_and_an_unsigned_one_none() -> None:
    received = inbound(f"{H}/webhooks/telnyx/voice", headers={"telnyx-signature-ed25519": "x"}, body=b'{"a": 1}')
    telnyx_phone = creds(Provider.TELNYX, {KeyKind.PUBLIC_KEY: [key(b"\x01" * 32)]})
    found = list(variants(received, Provider.TELNYX))
    assert found and {label for v in found for label in v.labels} <= {"body_newline", "body_json", "body_encoding"}
    assert all(v.request.raw_path == received.raw_path and v.request.scheme == received.scheme for v in found)
    assert list(variants(received, Provider.EXOTEL)) == []
    assert diagnose(received, telnyx_phone, TelnyxVerifier(), NOW) is None  # a wrong key: nothing matches


def test_variant_descriptions_never_show_query_values() -> None:
    received = twilio_case(f"{H}{PATH}?secretish=v%20alue+x&a=1", f"{H}{PATH}?zzz=1")
    for variant in variants(received, Provider.TWILIO):
        assert "alue" not in variant.description
        assert "secretish" not in variant.description


# ---- the request-path explainer: budget, log rate limit, never raises ------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def mismatch_count(provider: str, mismatch: str) -> float:
    value = REGISTRY.get_sample_value("gateway_signature_mismatch_total", {"provider": provider, "mismatch": mismatch})
    return value or 0.0


def scheme_mismatch() -> InboundRequest:
    return plivo_case(f"http://hooks.example.com{PATH}", f"{H}{PATH}")


def test_explainer_counts_every_diagnosis_but_logs_once_per_phone_and_mismatch_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    explainer = MismatchExplainer(clock=clock)
    before = mismatch_count("plivo", "scheme")
    with caplog.at_level(logging.WARNING, logger="gateway.explain"):
        for _ in range(3):
            assert explainer(scheme_mismatch(), plivo_creds(), PlivoVerifier(), NOW) is not None
        assert mismatch_count("plivo", "scheme") == before + 3
        assert len(caplog.records) == 1
        record = caplog.records[0]
        assert record.levelno == logging.WARNING
        assert "plivo signature would match with scheme=https" in record.getMessage()
        assert "X-Forwarded-Proto" in record.getMessage()
        # Another phone with the same mismatch is logged on its own.
        other = creds(Provider.PLIVO, {KeyKind.AUTH_TOKEN: [key(TOKEN, "fp_test")]}, phone_id="ph_other")
        explainer(scheme_mismatch(), other, PlivoVerifier(), NOW)
        assert len(caplog.records) == 2
        # After the interval the first phone is logged again, with what was suppressed meanwhile.
        clock.now += 61
        explainer(scheme_mismatch(), plivo_creds(), PlivoVerifier(), NOW)
        assert len(caplog.records) == 3
        assert "2 more like it" in caplog.records[2].getMessage()
    assert TOKEN not in caplog.text


def test_explainer_log_has_a_global_cap(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    explainer = MismatchExplainer(clock=clock, log_rate_per_s=0.0, log_burst=2)
    with caplog.at_level(logging.WARNING, logger="gateway.explain"):
        for i in range(5):
            phone = creds(Provider.PLIVO, {KeyKind.AUTH_TOKEN: [key(TOKEN)]}, phone_id=f"ph_{i}")
            assert explainer(scheme_mismatch(), phone, PlivoVerifier(), NOW) is not None
    assert len(caplog.records) == 2


class Counting(PlivoVerifier):
    """The real verifier, counting its runs."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def verify(self, inbound: InboundRequest, creds: PhoneCredentials, now: float) -> Verified:
        self.calls += 1
        return super().verify(inbound, creds, now)


class SteppingTimer:
    """A timer that advances `step` seconds each time it is read (every diagnosis looks costly)."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def test_explainer_cpu_budget_bounds_the_work() -> None:
    clock = FakeClock()
    # Each reading of the timer advances 1 ms, so each diagnosis costs a few ms of budget;
    # the budget refills 1 ms per second and holds 5 ms.
    explainer = MismatchExplainer(
        clock=clock, timer=SteppingTimer(0.001), cpu_share=0.001, cpu_burst_s=0.005, max_diagnosis_s=1.0
    )
    verifier = Counting()
    results = [explainer(scheme_mismatch(), plivo_creds(), verifier, NOW) for _ in range(6)]
    done = [r is not None for r in results]
    assert done[0] and not done[-1] and done.count(True) < 6
    calls = verifier.calls
    assert explainer(scheme_mismatch(), plivo_creds(), verifier, NOW) is None
    assert verifier.calls == calls  # out of budget: the verifier does not even run
    clock.now += 60.0  # refilled
    assert explainer(scheme_mismatch(), plivo_creds(), verifier, NOW) is not None


def test_one_diagnosis_stops_at_its_deadline_after_the_first_variant() -> None:
    forged = plivo_case(f"http://hooks.example.com{PATH}", f"{H}{PATH}", **{"X-Forwarded-Host": "a.example.com"})
    forged = dataclasses.replace(forged, headers={**forged.headers, "x-plivo-signature-v3": "A" * 43 + "="})
    verifier = Counting()
    assert diagnose(forged, plivo_creds(), verifier, NOW, deadline=0.5, timer=SteppingTimer(1.0)) is None
    assert verifier.calls == 1
    verifier = Counting()
    assert diagnose(forged, plivo_creds(), verifier, NOW) is None
    assert verifier.calls > 1


def test_explainer_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(PlivoVerifier):
        def verify(self, inbound: InboundRequest, creds: PhoneCredentials, now: float) -> Verified:
            raise RuntimeError(f"boom {TOKEN}")

    with caplog.at_level(logging.ERROR, logger="gateway.explain"):
        assert MismatchExplainer()(scheme_mismatch(), plivo_creds(), Broken(), NOW) is None
    assert "RuntimeError" in caplog.text
    assert TOKEN not in caplog.text


def test_explainer_skips_carriers_that_sign_nothing() -> None:
    exotel_phone = creds(Provider.EXOTEL, {KeyKind.EXOTEL_WEBHOOK_TOKEN: [key(b"t" * 24)]})
    assert MismatchExplainer()(scheme_mismatch(), exotel_phone, TelnyxVerifier(), NOW) is None


# ---- through the real app ------------------------------------------------------------------


@pytest.fixture(scope="module")
def gw(redis_server: str) -> Iterator[RunningGateway]:
    with run_gateway(make_settings(redis_server)) as running:
        assert running.app.components is not None
        handler = running.app.components.webhooks
        assert isinstance(handler._explain, MismatchExplainer)  # wired by default
        # The same explainer with time budgets no test can exhaust: these tests check what is
        # diagnosed, not how fast (the budgets have their own tests above, on a fake timer).
        handler._explain = MismatchExplainer(max_diagnosis_s=60.0, cpu_burst_s=600.0)
        yield running


def put_plivo(gw: RunningGateway, provider: str = "plivo") -> tuple[str, str]:
    phone_id, token = random_id(), new_token()
    gw.put_phone(plivo_phone(phone_id, token, provider=provider))
    return phone_id, token


def put_twilio(gw: RunningGateway) -> tuple[str, str]:
    phone_id, token = random_id(), new_token()
    gw.put_phone(
        {
            "id": phone_id,
            "provider": "twilio",
            "credentials": {"account_sid": "AC" + "0" * 32, "auth_token": token},
        }
    )
    return phone_id, token


def send(
    gw: RunningGateway,
    target: str,
    *,
    headers: dict[str, str],
    body: bytes | str = b"",
    method: str = "POST",
) -> httpx.Response:
    """Send from 127.0.0.1, a trusted proxy in these settings: its X-Forwarded-* are believed."""
    content = body.encode() if isinstance(body, str) else body
    return gw.client.request(method, target, headers={"x-forwarded-for": "198.51.100.20", **headers}, content=content)


def rejected_count(provider: str, reason: str) -> float:
    return REGISTRY.get_sample_value("gateway_rejections_total", {"provider": provider, "reason": reason}) or 0.0


def all_mismatches() -> float:
    return sum(mismatch_count(p, m) for p in ("plivo", "vobiz", "twilio") for m in LABELS)


def plivo_http(
    token: str, phone_id: str, signed_url: str, *, nonce: str | None = None
) -> tuple[str, dict[str, str], str]:
    params = plivo_params()
    headers = plivo_signed(signed_url, params=params, token=token, nonce=nonce)
    return f"/plivo/status/{phone_id}", headers, urlencode(params)


def expect_diagnosis(
    gw: RunningGateway,
    caplog: pytest.LogCaptureFixture,
    redis_sync: redis.Redis,
    provider: str,
    labels: tuple[str, ...],
    target: str,
    headers: dict[str, str],
    body: bytes | str,
    secret: str,
) -> None:
    before = {label: mismatch_count(provider, label) for label in labels}
    total_before = all_mismatches()
    invalid_before = rejected_count(provider, "invalid_signature")
    with caplog.at_level(logging.WARNING, logger="gateway.explain"):
        response = send(gw, target, headers=headers, body=body)
    assert response.status_code == 403  # never accepted
    assert response.content == b"forbidden\n"
    assert redis_sync.xlen(STREAM) == 0  # nothing forwarded
    assert rejected_count(provider, "invalid_signature") == invalid_before + 1
    for label in labels:
        assert mismatch_count(provider, label) == before[label] + 1
    assert all_mismatches() == total_before + len(labels)  # and nothing else
    warnings = [r for r in caplog.records if r.name == "gateway.explain"]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    assert f"{provider} signature would match with" in warnings[0].getMessage()
    assert secret not in caplog.text
    for name, value in headers.items():  # not even the (non-secret) signature is logged
        if "signature" in name.lower():
            assert value not in caplog.text


def test_http_scheme_rewritten_by_the_load_balancer(
    gw: RunningGateway, redis_sync: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    phone_id, token = put_plivo(gw)
    # The carrier was configured with http:// but the proxy reports https.
    target, headers, body = plivo_http(token, phone_id, f"http://hooks.example.com/plivo/status/{phone_id}")
    headers |= {"x-forwarded-proto": "https", "x-forwarded-host": "hooks.example.com"}
    expect_diagnosis(gw, caplog, redis_sync, "plivo", ("scheme",), target, headers, body, token)
    assert "scheme=http:" in caplog.text
    assert "your load balancer rewrites the scheme" in caplog.text


def test_http_default_port(gw: RunningGateway, redis_sync: redis.Redis, caplog: pytest.LogCaptureFixture) -> None:
    phone_id, token = put_plivo(gw)
    target, headers, body = plivo_http(token, phone_id, f"https://hooks.example.com:443/plivo/status/{phone_id}")
    headers |= {"x-forwarded-proto": "https", "x-forwarded-host": "hooks.example.com"}
    expect_diagnosis(gw, caplog, redis_sync, "plivo", ("port",), target, headers, body, token)


def test_http_host_header_vs_forwarded_host(
    gw: RunningGateway, redis_sync: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    phone_id, token = put_plivo(gw)
    target, headers, body = plivo_http(token, phone_id, f"https://hooks.example.com/plivo/status/{phone_id}")
    headers |= {"host": "hooks.example.com", "x-forwarded-proto": "https", "x-forwarded-host": "lb.example.net"}
    expect_diagnosis(gw, caplog, redis_sync, "plivo", ("host",), target, headers, body, token)
    assert "host=hooks.example.com (Host header)" in caplog.text


def test_http_path_prefix_stripped_by_the_proxy(
    gw: RunningGateway, redis_sync: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    phone_id, token = put_plivo(gw)
    target, headers, body = plivo_http(token, phone_id, f"https://hooks.example.com/gw/plivo/status/{phone_id}")
    headers |= {"x-forwarded-proto": "https", "x-forwarded-host": "hooks.example.com", "x-forwarded-prefix": "/gw"}
    expect_diagnosis(gw, caplog, redis_sync, "plivo", ("path_prefix",), target, headers, body, token)


def test_http_trailing_slash(gw: RunningGateway, redis_sync: redis.Redis, caplog: pytest.LogCaptureFixture) -> None:
    phone_id, token = put_plivo(gw)
    target, headers, body = plivo_http(token, phone_id, f"https://hooks.example.com/plivo/status/{phone_id}/")
    headers |= {"x-forwarded-proto": "https", "x-forwarded-host": "hooks.example.com"}
    expect_diagnosis(gw, caplog, redis_sync, "plivo", ("trailing_slash",), target, headers, body, token)


def test_http_scheme_and_host_count_both_labels(
    gw: RunningGateway, redis_sync: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    phone_id, token = put_plivo(gw)
    # The proxy reports its own scheme and host; the Host header still names the public host.
    target, headers, body = plivo_http(token, phone_id, f"https://hooks.example.com/plivo/status/{phone_id}")
    headers |= {"host": "hooks.example.com", "x-forwarded-host": "lb.example.net", "x-forwarded-proto": "http"}
    expect_diagnosis(gw, caplog, redis_sync, "plivo", ("scheme", "host"), target, headers, body, token)


def test_http_vobiz_header(gw: RunningGateway, redis_sync: redis.Redis, caplog: pytest.LogCaptureFixture) -> None:
    phone_id, token = put_plivo(gw, provider="vobiz")
    nonce = str(secrets.randbelow(10**20))
    signature = vobiz_sig.sign_vobiz_v3(token, f"https://hooks.example.com/plivo/status/{phone_id}", nonce)
    headers = {
        "X-Vobiz-Signature-V3": signature,
        "X-Vobiz-Signature-V3-Nonce": nonce,
        "Content-Type": FORM,
        "x-forwarded-proto": "http",
        "x-forwarded-host": "hooks.example.com",
    }
    target = f"/plivo/status/{phone_id}"
    expect_diagnosis(gw, caplog, redis_sync, "vobiz", ("scheme",), target, headers, "CallUUID=1", token)


def _twilio_headers(token: str, signed_url: str, params: list[tuple[str, str]]) -> dict[str, str]:
    return {
        "X-Twilio-Signature": twilio_sig.sign(token, signed_url, params),
        "Content-Type": FORM,
        "x-forwarded-proto": "https",
        "x-forwarded-host": "hooks.example.com",
    }


def test_http_twilio_query_reordered(
    gw: RunningGateway, redis_sync: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    phone_id, token = put_twilio(gw)
    params = [("CallSid", "CA" + secrets.token_hex(16)), ("CallStatus", "ringing")]
    path = f"/twilio/status/{phone_id}"
    headers = _twilio_headers(token, f"https://hooks.example.com{path}?a=1&b=2", params)
    body = urlencode(params)
    expect_diagnosis(gw, caplog, redis_sync, "twilio", ("query_order",), f"{path}?b=2&a=1", headers, body, token)


def test_http_twilio_query_re_encoded(
    gw: RunningGateway, redis_sync: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    phone_id, token = put_twilio(gw)
    params = [("CallSid", "CA" + secrets.token_hex(16)), ("CallStatus", "ringing")]
    path = f"/twilio/status/{phone_id}"
    headers = _twilio_headers(token, f"https://hooks.example.com{path}?q=a%20b", params)
    body = urlencode(params)
    expect_diagnosis(gw, caplog, redis_sync, "twilio", ("query_encoding",), f"{path}?q=a+b", headers, body, token)


def test_http_twilio_raw_body_sent_as_form(
    gw: RunningGateway, redis_sync: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    phone_id, token = put_twilio(gw)
    body = orjson.dumps({"CallSid": "CA" + secrets.token_hex(16), "CallStatus": "ringing"})
    path = f"/twilio/status/{phone_id}?bodySHA256={twilio_sig.body_sha256(body)}"
    headers = {
        "X-Twilio-Signature": twilio_sig.sign(token, f"https://hooks.example.com{path}"),
        "Content-Type": FORM,  # a proxy rewrote application/json
        "x-forwarded-proto": "https",
        "x-forwarded-host": "hooks.example.com",
    }
    expect_diagnosis(gw, caplog, redis_sync, "twilio", ("form_vs_raw",), path, headers, body, token)


def test_http_diagnosis_never_accepts_and_never_spends_the_nonce(gw: RunningGateway, redis_sync: redis.Redis) -> None:
    phone_id, token = put_plivo(gw)
    params = plivo_params()
    nonce = str(secrets.randbelow(10**20))
    public = f"https://hooks.example.com/plivo/status/{phone_id}"
    headers = plivo_signed(public, params=params, token=token, nonce=nonce)
    before = mismatch_count("plivo", "scheme")
    for _ in range(3):  # a variant matches every time; the answer is still 403, nothing forwarded
        wrong = {**headers, "x-forwarded-proto": "http", "x-forwarded-host": "hooks.example.com"}
        response = send(gw, f"/plivo/status/{phone_id}", headers=wrong, body=urlencode(params))
        assert response.status_code == 403
    assert mismatch_count("plivo", "scheme") == before + 3
    assert redis_sync.xlen(STREAM) == 0
    # Diagnosis recorded nothing: the carrier's retry, once the proxy is fixed, is accepted once.
    right = {**headers, "x-forwarded-proto": "https", "x-forwarded-host": "hooks.example.com"}
    assert send(gw, f"/plivo/status/{phone_id}", headers=right, body=urlencode(params)).status_code == 200
    # The same delivery again: its nonce is spent now (a duplicate of what was accepted is answered
    # as before, issue 14 item 1), and nothing is forwarded twice.
    assert send(gw, f"/plivo/status/{phone_id}", headers=right, body=urlencode(params)).status_code == 200
    assert redis_sync.xlen(STREAM) == 1


def test_http_log_is_rate_limited_but_every_mismatch_counted(
    gw: RunningGateway, redis_sync: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    phone_id, token = put_plivo(gw)
    before = mismatch_count("plivo", "scheme")
    with caplog.at_level(logging.WARNING, logger="gateway.explain"):
        for _ in range(5):
            target, headers, body = plivo_http(token, phone_id, f"http://hooks.example.com/plivo/status/{phone_id}")
            headers |= {"x-forwarded-proto": "https", "x-forwarded-host": "hooks.example.com"}
            assert send(gw, target, headers=headers, body=body).status_code == 403
    assert mismatch_count("plivo", "scheme") == before + 5
    assert len([r for r in caplog.records if r.name == "gateway.explain"]) == 1


def test_http_no_diagnosis_on_success_unknown_phone_or_malformed_signature(
    gw: RunningGateway, redis_sync: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    phone_id, token = put_plivo(gw)
    assert gw.app.components is not None
    handler = gw.app.components.webhooks
    calls: list[Any] = []
    real = handler._explain
    assert real is not None

    def spy(*args: Any) -> Any:
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(handler, "_explain", spy)
    proxy = {"x-forwarded-proto": "https", "x-forwarded-host": "hooks.example.com"}
    public = f"https://hooks.example.com/plivo/status/{phone_id}"
    # Accepted: the diagnosis does not run on the success path.
    target, headers, body = plivo_http(token, phone_id, public)
    assert send(gw, target, headers=headers | proxy, body=body).status_code == 200
    # Unknown phone (answered like a bad signature): no diagnosis, phone ids stay unenumerable.
    target, headers, body = plivo_http(token, "ph_nobody", "https://hooks.example.com/plivo/status/ph_nobody")
    assert send(gw, target, headers=headers | proxy, body=body).status_code == 403
    # Malformed signature (not base64 of 32 bytes) and missing signature: no diagnosis.
    target, headers, body = plivo_http(token, phone_id, public)
    garbled = headers | proxy | {"X-Plivo-Signature-V3": "not-a-signature"}
    assert send(gw, target, headers=garbled, body=body).status_code == 403
    unsigned = {k: v for k, v in (headers | proxy).items() if not k.startswith("X-Plivo")}
    assert send(gw, target, headers=unsigned, body=body).status_code == 401
    assert calls == []
    # A well-formed signature for the known phone that fails: diagnosed, once.
    target, headers, body = plivo_http(token, phone_id, public.replace("https:", "http:"))
    assert send(gw, target, headers=headers | proxy, body=body).status_code == 403
    assert len(calls) == 1


def test_http_a_failing_diagnosis_does_not_change_the_answer(
    gw: RunningGateway, redis_sync: redis.Redis, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError("diagnosis bug")

    monkeypatch.setattr(explainer, "search", broken)  # what the request path's explainer calls
    phone_id, token = put_plivo(gw)
    target, headers, body = plivo_http(token, phone_id, f"http://hooks.example.com/plivo/status/{phone_id}")
    headers |= {"x-forwarded-proto": "https", "x-forwarded-host": "hooks.example.com"}
    with caplog.at_level(logging.ERROR, logger="gateway.explain"):
        assert send(gw, target, headers=headers, body=body).status_code == 403
    assert "signature mismatch diagnosis failed (RuntimeError)" in caplog.text  # the broken search did run
    assert "diagnosis bug" not in caplog.text  # its text is not logged
    assert redis_sync.xlen(STREAM) == 0


def test_http_disabled_by_the_setting(redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    with run_gateway(make_settings(redis_url, GATEWAY_EXPLAIN_MISMATCHES="false")) as off:
        assert off.app.components is not None and off.app.components.webhooks._explain is None
        phone_id, token = put_plivo(off)
        total = all_mismatches()
        target, headers, body = plivo_http(token, phone_id, f"http://hooks.example.com/plivo/status/{phone_id}")
        headers |= {"x-forwarded-proto": "https", "x-forwarded-host": "hooks.example.com"}
        with caplog.at_level(logging.WARNING, logger="gateway.explain"):
            assert send(off, target, headers=headers, body=body).status_code == 403
        assert all_mismatches() == total
        assert not [r for r in caplog.records if r.name == "gateway.explain"]

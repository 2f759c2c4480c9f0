"""The live diagnosis of refusals other than a failed signature (gateway/diagnostics/rejection.py),
through the real app and socket: a Telnyx timestamp out of tolerance, an unsigned Vobiz callback,
Exotel's source address and token. Each produces one `gateway.explain` warning, the answer and the
rejection metric are unchanged, nothing reaches the stream, and no secret is logged."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from prometheus_client import REGISTRY

from tests.helpers.builders import (
    exotel_phone,
    exotel_request,
    exotel_token,
    new_token,
    plivo_phone,
    plivo_request,
    telnyx_phone,
    telnyx_request,
    telnyx_seed,
)
from tests.helpers.contract import Gateway, start_gateway, stream_events
from tests.helpers.support import random_id, send_as_carrier


@pytest.fixture(scope="module")
def gateway(redis_server: str) -> Iterator[Gateway]:
    yield from start_gateway(redis_server)


def _rejections(provider: str, reason: str) -> float:
    return REGISTRY.get_sample_value("gateway_rejections_total", {"provider": provider, "reason": reason}) or 0.0


def _mismatches() -> float:
    return sum(
        sample.value
        for metric in REGISTRY.collect()
        if metric.name == "gateway_signature_mismatch"
        for sample in metric.samples
        if sample.name.endswith("_total")
    )


def _refused(
    gw: Gateway,
    redis_sync: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    request: dict[str, Any],
    *,
    provider: str,
    reason: str,
    status: int = 403,
    secrets: tuple[str, ...] = (),
) -> str:
    """Send `request`; check the refusal is unchanged and return its one diagnosis line."""
    before, mismatches = _rejections(provider, reason), _mismatches()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="gateway.explain"):
        response = send_as_carrier(gw.gw, request)
    assert response.status_code == status
    assert _rejections(provider, reason) == before + 1
    assert _mismatches() == mismatches  # this metric's vocabulary is URL/body variants only
    assert stream_events(redis_sync) == []
    lines = [record.getMessage() for record in caplog.records if record.name == "gateway.explain"]
    assert len(lines) == 1, lines
    line = lines[0]
    assert "\n" not in line and f"{provider} request refused ({reason})" in line
    for secret in secrets:
        assert secret not in caplog.text
    return line


def test_telnyx_timestamp_in_the_past_is_a_clock_problem_not_a_forgery(
    gateway: Gateway, redis_sync: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    seed, phone_id = telnyx_seed(), random_id("ph_tx")
    gateway.gw.put_phone(telnyx_phone(phone_id, seed))
    request = telnyx_request(seed, phone_id, now=gateway.now(), ts_offset=-1000)
    signature = request["headers"]["telnyx-signature-ed25519"]
    line = _refused(
        gateway, redis_sync, caplog, request, provider="telnyx", reason="stale_timestamp", secrets=(signature,)
    )
    assert "1000 s in the past" in line or "1001 s in the past" in line
    assert "clock" in line and "verifies at its own timestamp (key fp_" in line


def test_telnyx_timestamp_in_the_future_says_the_gateway_clock_is_behind(
    gateway: Gateway, redis_sync: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    seed, phone_id = telnyx_seed(), random_id("ph_tx")
    gateway.gw.put_phone(telnyx_phone(phone_id, seed))
    request = telnyx_request(seed, phone_id, now=gateway.now(), ts_offset=900)
    line = _refused(gateway, redis_sync, caplog, request, provider="telnyx", reason="stale_timestamp")
    assert "s in the future" in line and "clock is behind" in line


def test_telnyx_stale_and_forged_says_so(
    gateway: Gateway, redis_sync: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    phone_id = random_id("ph_tx")
    gateway.gw.put_phone(telnyx_phone(phone_id, telnyx_seed()))
    request = telnyx_request(telnyx_seed(), phone_id, now=gateway.now(), ts_offset=-1000)  # another key
    line = _refused(gateway, redis_sync, caplog, request, provider="telnyx", reason="stale_timestamp")
    assert "does not verify even at its own timestamp" in line


def test_unsigned_vobiz_callback_names_the_console_setting(
    gateway: Gateway, redis_sync: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    token, phone_id = new_token(), random_id("ph_vb")
    gateway.gw.put_phone(plivo_phone(phone_id, token, provider="vobiz"))
    request = plivo_request(token, phone_id)
    request["headers"] = {"Content-Type": request["headers"]["Content-Type"]}
    line = _refused(
        gateway, redis_sync, caplog, request, provider="vobiz", reason="missing_signature", status=401, secrets=(token,)
    )
    assert "none of its signature headers" in line
    assert "only when the callback URL has credentials configured in the Vobiz console" in line


def test_exotel_address_not_allowlisted(
    gateway: Gateway, redis_sync: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    token, phone_id = exotel_token(), random_id("ph_ex")
    gateway.gw.put_phone(exotel_phone(phone_id, token))
    request = exotel_request(phone_id, token=token, client_ip="198.51.100.7")
    line = _refused(gateway, redis_sync, caplog, request, provider="exotel", reason="ip_not_allowed", secrets=(token,))
    assert "198.51.100.7 is NOT in the allowlist (EXOTEL_ALLOWED_IPS)" in line
    assert "token: MATCHES" in line and "gateway exotel sources" in line


@pytest.mark.parametrize(
    ("query", "reason", "words"),
    [
        (None, "missing_token", "token: missing in ?token="),
        ("wrong", "invalid_token", "token: wrong in ?token="),
        ("twice", "invalid_token", "token: given more than once in ?token="),
        ("elsewhere", "missing_token", "the phone's token is in the query parameter 'tok'"),
        ("form", "missing_token", "the phone's token is in the form body parameter 'exotel_token'"),
    ],
)
def test_exotel_token_missing_wrong_repeated_or_elsewhere(
    gateway: Gateway,
    redis_sync: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    query: str | None,
    reason: str,
    words: str,
) -> None:
    token, phone_id = exotel_token(), random_id("ph_ex")
    gateway.gw.put_phone(exotel_phone(phone_id, token))
    if query == "wrong":
        request = exotel_request(phone_id, token=exotel_token())
    elif query == "twice":
        request = exotel_request(phone_id, token=token, query=f"token={token}")
    elif query == "elsewhere":
        request = exotel_request(phone_id, query=f"tok={token}")
    elif query == "form":
        request = exotel_request(phone_id)
        request["body"] += f"&exotel_token={token}"
    else:
        request = exotel_request(phone_id)
    line = _refused(gateway, redis_sync, caplog, request, provider="exotel", reason=reason, secrets=(token,))
    assert words in line
    assert "203.0.113.10 is in the allowlist" in line


def test_nothing_is_diagnosed_on_the_accepted_path(
    gateway: Gateway, redis_sync: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    token, phone_id = exotel_token(), random_id("ph_ex")
    gateway.gw.put_phone(exotel_phone(phone_id, token))
    with caplog.at_level(logging.DEBUG, logger="gateway.explain"):
        assert send_as_carrier(gateway.gw, exotel_request(phone_id, token=token)).status_code == 200
    assert [record for record in caplog.records if record.name == "gateway.explain"] == []
    assert len(stream_events(redis_sync)) == 1


@pytest.fixture(scope="module")
def untrusted(redis_server: str) -> Iterator[Gateway]:
    """The proxy in front (127.0.0.1) is not in GATEWAY_TRUSTED_PROXIES, and the allowlist is empty."""
    yield from start_gateway(redis_server, GATEWAY_TRUSTED_PROXIES="10.9.9.0/24", EXOTEL_ALLOWED_IPS="")


def test_exotel_behind_a_proxy_that_is_not_trusted_and_an_empty_allowlist(
    untrusted: Gateway, redis_sync: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    token, phone_id = exotel_token(), random_id("ph_ex")
    untrusted.gw.put_phone(exotel_phone(phone_id, token))
    request = exotel_request(phone_id, token=token)  # X-Forwarded-For: 203.0.113.10, from 127.0.0.1
    line = _refused(
        untrusted, redis_sync, caplog, request, provider="exotel", reason="ip_not_allowed", secrets=(token,)
    )
    assert "the peer 127.0.0.1 is not a trusted proxy" in line
    assert "GATEWAY_TRUSTED_PROXIES does not include the proxy, so its own address was checked" in line
    assert "the allowlist is empty" in line


def test_explain_off_diagnoses_nothing(
    redis_server: str, redis_sync: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    for gw in start_gateway(redis_server, GATEWAY_EXPLAIN_MISMATCHES="false"):
        token, phone_id = exotel_token(), random_id("ph_ex")
        gw.gw.put_phone(exotel_phone(phone_id, token))
        with caplog.at_level(logging.DEBUG, logger="gateway.explain"):
            assert send_as_carrier(gw.gw, exotel_request(phone_id, token=exotel_token())).status_code == 403
        assert [record for record in caplog.records if record.name == "gateway.explain"] == []

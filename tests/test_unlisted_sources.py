"""Exotel allowlist discovery through the real app, socket and Redis (docs/operations.md).

A request from an address outside EXOTEL_ALLOWED_IPS is refused (403) whatever it carries;
when it carries the phone's valid `?token=`, its /24 (IPv4) or /48 (IPv6) is recorded for the
operator (GET /admin/exotel/sources, `gateway exotel sources`). Never accepted, never added to
the allowlist; a wrong, missing or repeated token records nothing. Addresses come from a
trusted proxy's X-Forwarded-For (127.0.0.1 is trusted), from documentation ranges.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any, NotRequired, TypedDict

import orjson
import pytest
import redis
from redis.asyncio import Redis as AsyncRedis

from gateway import metrics
from gateway.embedded_redis import free_port
from gateway.inbound import InboundRequest
from gateway.providers import Key, KeyKind, PhoneCredentials, Provider
from gateway.providers.exotel import token_proves_account
from gateway.redis_keys import KeyNames
from gateway.source_log import MAX_NETWORKS, MAX_PHONES, SourceLog, UnlistedSources, network_of
from tests.helpers.builders import exotel_phone, exotel_request, exotel_token, new_token
from tests.helpers.contract import Gateway, start_gateway, stream_events
from tests.helpers.support import ADMIN_TOKEN, REPO, random_id, send_as_carrier

TTL_S = 3600
ALLOWED = "203.0.113.0/24,2001:db8:ffff::/48"  # the rest of the documentation ranges is "unlisted"
UNLISTED_V4 = "198.51.100.7"
UNLISTED_V6 = "2001:db8:1:2::7"
INDEX, NETWORKS = KeyNames().unlisted_sources("exotel")


@pytest.fixture(scope="module")
def gateway(redis_server: str) -> Iterator[Gateway]:
    yield from start_gateway(
        redis_server, EXOTEL_ALLOWED_IPS=ALLOWED, GATEWAY_UNLISTED_SOURCES_TTL_S=str(TTL_S), GATEWAY_ACCESS_LOG="off"
    )


@pytest.fixture
def fresh(gateway: Gateway, redis_sync: redis.Redis) -> Iterator[Gateway]:
    gateway.clock.now = None
    yield gateway
    gateway.clock.now = None


def _phone(gw: Gateway, token: str | None) -> str:
    phone_id = random_id("ph_exo")
    gw.gw.put_phone(exotel_phone(phone_id, token))
    return phone_id


class _Sent(TypedDict):
    """What a test passes on to `_send` besides the phone and the client address."""

    token: str | None
    query: NotRequired[str]


def _send(gw: Gateway, phone_id: str, *, token: str | None, client_ip: str, query: str = "") -> int:
    request = exotel_request(phone_id, token=token, client_ip=client_ip, query=query)
    return send_as_carrier(gw.gw, request).status_code


def _sources(gw: Gateway, token: str | None = ADMIN_TOKEN) -> Any:
    response = gw.gw.admin("GET", "/admin/exotel/sources", token=token)
    assert response.status_code == 200, response.text
    return response.json()["sources"]


def _wait_for(gw: Gateway, predicate: Any, timeout_s: float = 5.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while True:
        sources = _sources(gw)
        if predicate(sources) or time.monotonic() > deadline:
            return list(sources)
        time.sleep(0.02)


def _settle(gw: Gateway) -> None:
    """Fire-and-forget writes: wait until none is in flight in the app."""
    components = gw.gw.app.components
    assert components is not None
    deadline = time.monotonic() + 5
    while components.webhooks._unlisted.in_flight and time.monotonic() < deadline:  # noqa: SLF001
        time.sleep(0.01)


def _counter(gw: Gateway) -> float:
    text = gw.gw.client.get("/metrics").text
    for line in text.splitlines():
        if line.startswith('gateway_unlisted_source_requests_total{provider="exotel"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# ---- through the socket ---------------------------------------------------------------------


def test_valid_token_from_an_unlisted_ipv4_address_is_refused_and_its_24_recorded(
    fresh: Gateway, redis_sync: redis.Redis
) -> None:
    token = exotel_token()
    phone_id = _phone(fresh, token)
    before = _counter(fresh)
    started = time.time()
    for last_octet in (7, 9, 200):  # one /24
        assert _send(fresh, phone_id, token=token, client_ip=f"198.51.100.{last_octet}") == 403
    sources = _wait_for(fresh, lambda s: s and s[0]["requests"] == 3)
    assert stream_events(redis_sync) == []  # never accepted
    assert len(sources) == 1
    source = sources[0]
    assert source["network"] == "198.51.100.0/24"
    assert (source["phones"], source["requests"]) == (1, 3)
    assert started - 1 <= source["first_seen"] <= source["last_seen"] <= time.time() + 1
    assert _counter(fresh) == before + 3
    metrics_text = fresh.gw.client.get("/metrics").text
    assert "198.51.100" not in metrics_text and token not in metrics_text  # no address, no secret in labels


def test_valid_token_from_an_unlisted_ipv6_address_records_its_48(fresh: Gateway, redis_sync: redis.Redis) -> None:
    token = exotel_token()
    phones = [_phone(fresh, token) for _ in range(2)]
    for phone_id in phones:
        assert _send(fresh, phone_id, token=token, client_ip=UNLISTED_V6) == 403
    assert _send(fresh, phones[0], token=token, client_ip="2001:db8:1:ffff::1") == 403  # the same /48
    sources = _wait_for(fresh, lambda s: s and s[0]["requests"] == 3)
    assert [(s["network"], s["phones"], s["requests"]) for s in sources] == [("2001:db8:1::/48", 2, 3)]
    assert stream_events(redis_sync) == []


def test_newest_first_and_the_allowlist_is_never_changed(fresh: Gateway, redis_sync: redis.Redis) -> None:
    token = exotel_token()
    phone_id = _phone(fresh, token)
    assert _send(fresh, phone_id, token=token, client_ip=UNLISTED_V4) == 403
    _settle(fresh)
    assert _send(fresh, phone_id, token=token, client_ip="192.0.2.55") == 403
    sources = _wait_for(fresh, lambda s: len(s) == 2)
    assert [s["network"] for s in sources] == ["192.0.2.0/24", "198.51.100.0/24"]
    # Recorded, not allowed: the same request is still refused, and nothing is forwarded.
    assert _send(fresh, phone_id, token=token, client_ip=UNLISTED_V4) == 403
    assert stream_events(redis_sync) == []
    # From an allowlisted address the same phone and token are accepted, and not recorded.
    assert _send(fresh, phone_id, token=token, client_ip="203.0.113.10") == 200
    _settle(fresh)
    assert [s["network"] for s in _sources(fresh)] == ["198.51.100.0/24", "192.0.2.0/24"]
    assert len(stream_events(redis_sync)) == 1


@pytest.mark.parametrize("how", ["wrong", "missing", "twice", "another_phones", "phone_without_token"])
def test_without_the_phones_valid_token_nothing_is_recorded(fresh: Gateway, redis_sync: redis.Redis, how: str) -> None:
    token = exotel_token()
    phone_id = _phone(fresh, None if how == "phone_without_token" else token)
    other_token = exotel_token()
    _phone(fresh, other_token)
    cases: dict[str, _Sent] = {
        "wrong": {"token": token[:-1] + ("A" if token[-1] != "A" else "B")},
        "missing": {"token": None},
        "twice": {"token": token, "query": f"token={token}"},
        "another_phones": {"token": other_token},
        "phone_without_token": {"token": token},
    }
    sent = cases[how]
    before = _counter(fresh)
    assert _send(fresh, phone_id, client_ip=UNLISTED_V4, **sent) == 403
    _settle(fresh)
    assert _sources(fresh) == []
    assert redis_sync.exists(INDEX, NETWORKS) == 0
    assert stream_events(redis_sync) == []
    assert _counter(fresh) == before


def test_an_unknown_phone_records_nothing(fresh: Gateway, redis_sync: redis.Redis) -> None:
    assert _send(fresh, random_id("ph_nobody"), token=exotel_token(), client_ip=UNLISTED_V4) == 403
    _settle(fresh)
    assert _sources(fresh) == []


def test_the_ttl_is_the_setting_and_old_networks_are_dropped(fresh: Gateway, redis_sync: redis.Redis) -> None:
    token = exotel_token()
    phone_id = _phone(fresh, token)
    now = time.time()
    fresh.clock.now = now - TTL_S - 60  # seen more than a TTL ago
    assert _send(fresh, phone_id, token=token, client_ip="192.0.2.1") == 403
    _settle(fresh)
    assert 0 < redis_sync.ttl(INDEX) <= TTL_S and 0 < redis_sync.ttl(NETWORKS) <= TTL_S
    assert _sources(fresh) == []  # older than the TTL: not listed
    fresh.clock.now = now
    assert _send(fresh, phone_id, token=token, client_ip=UNLISTED_V4) == 403
    _settle(fresh)
    assert [s["network"] for s in _sources(fresh)] == ["198.51.100.0/24"]
    assert redis_sync.zrange(INDEX, 0, -1) == [b"198.51.100.0/24"]  # the old one was dropped, not just hidden
    assert redis_sync.hkeys(NETWORKS) == [b"198.51.100.0/24"]
    assert TTL_S - 60 < redis_sync.ttl(INDEX) <= TTL_S


def test_the_bound_holds_under_a_flood_of_distinct_networks(fresh: Gateway, redis_sync: redis.Redis) -> None:
    token = exotel_token()
    phone_id = _phone(fresh, token)
    flood = MAX_NETWORKS + 44
    base = time.time()
    for i in range(flood):
        fresh.clock.now = base + i  # each seen after the one before
        assert _send(fresh, phone_id, token=token, client_ip=f"2001:db8:{i + 1:x}::1") == 403
    _settle(fresh)
    assert redis_sync.zcard(INDEX) == MAX_NETWORKS
    assert redis_sync.hlen(NETWORKS) == MAX_NETWORKS
    sources = _sources(fresh)
    assert len(sources) == MAX_NETWORKS
    assert sources[0]["network"] == f"2001:db8:{flood:x}::/48"  # the newest kept, the oldest dropped
    assert sources[-1]["network"] == f"2001:db8:{flood - MAX_NETWORKS + 1:x}::/48"
    assert stream_events(redis_sync) == []


def test_the_admin_endpoint_requires_the_bearer_token(fresh: Gateway) -> None:
    for token in (None, "wrong-token-" + "y" * 20):
        response = fresh.gw.admin("GET", "/admin/exotel/sources", token=token)
        assert response.status_code == 401
        assert "sources" not in response.text
    assert fresh.gw.admin("GET", "/admin/plivo/sources").status_code == 404  # signs: nothing to discover
    assert fresh.gw.admin("GET", "/admin/nobody/sources").status_code == 404


def test_the_cli_prints_the_same_list(fresh: Gateway, redis_url: str, tmp_path: Any) -> None:
    token = exotel_token()
    phone_id = _phone(fresh, token)
    assert _send(fresh, phone_id, token=token, client_ip=UNLISTED_V4) == 403
    expected = _wait_for(fresh, lambda s: len(s) == 1)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "EXOTEL_"))}
    env.update({"GATEWAY_REDIS_URL": redis_url, "GATEWAY_UNLISTED_SOURCES_TTL_S": str(TTL_S)})
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "exotel", "sources"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert orjson.loads(done.stdout) == {"sources": expected}
    assert token.encode() not in done.stdout + done.stderr


# ---- the pieces, against a real Redis -------------------------------------------------------


def test_networks() -> None:
    assert network_of("198.51.100.77") == "198.51.100.0/24"
    assert network_of("::ffff:198.51.100.77") == "198.51.100.0/24"
    assert network_of("2001:db8:abcd:12::1") == "2001:db8:abcd::/48"
    assert network_of("not-an-address") is None


def test_phone_ids_per_network_are_bounded(redis_url: str) -> None:
    async def scenario() -> list[dict[str, Any]]:
        client = AsyncRedis.from_url(redis_url)
        try:
            log = SourceLog(client, KeyNames(), ttl_s=TTL_S)
            now = time.time()
            for i in range(MAX_PHONES + 10):
                await log.record(Provider.EXOTEL, "198.51.100.0/24", f"ph_{i}", now)
            await log.record(Provider.EXOTEL, "198.51.100.0/24", "ph_0", now)  # known: not counted twice
            return await log.sources(Provider.EXOTEL, now)
        finally:
            await client.aclose()

    (source,) = asyncio.run(scenario())
    assert source["phones"] == MAX_PHONES
    assert source["requests"] == MAX_PHONES + 11


def _proven(phone_token: str) -> tuple[InboundRequest, PhoneCredentials]:
    key = Key(material=phone_token.encode(), fingerprint="fp_test")
    creds = PhoneCredentials("ph_unit", Provider.EXOTEL, {KeyKind.EXOTEL_WEBHOOK_TOKEN: (key,)})
    inbound = InboundRequest(
        method="POST",
        scheme="https",
        netloc="hooks.example.com",
        raw_path="/exotel/status/ph_unit",
        query_string=f"token={phone_token}",
        headers={},
        body=b"",
        client_ip=UNLISTED_V4,
    )
    return inbound, creds


def _write_errors() -> float:
    return sum(
        sample.value
        for family in metrics.REDIS_ERRORS.collect()
        for sample in family.samples
        if sample.name.endswith("_total") and sample.labels.get("operation") == "unlisted_sources"
    )


def test_writes_are_bounded_in_flight_and_errors_counted_not_raised() -> None:
    token = new_token()
    inbound, creds = _proven(token)
    assert token_proves_account(inbound, creds, time.time())

    async def scenario() -> tuple[list[bool], int]:
        dead = AsyncRedis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.2)  # nothing listens
        try:
            hook = UnlistedSources(SourceLog(dead, KeyNames()), max_in_flight=2)
            results = [hook(inbound, creds, time.time()) for _ in range(5)]
            in_flight = hook.in_flight
            await hook.stop(timeout_s=5)
            return results, in_flight
        finally:
            await dead.aclose()

    skipped_before = metrics.UNLISTED_SOURCE_WRITES_SKIPPED._value.get()  # noqa: SLF001
    errors_before = _write_errors()
    results, in_flight = asyncio.run(scenario())
    assert results == [True, True, False, False, False]  # at most 2 writes in flight
    assert in_flight == 2
    assert metrics.UNLISTED_SOURCE_WRITES_SKIPPED._value.get() == skipped_before + 3  # noqa: SLF001
    assert _write_errors() == errors_before + 2  # counted, never raised

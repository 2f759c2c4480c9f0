"""Redis faults against a private server: refused, hung, wiped, read-only after a failover, out of memory.

Every fault must give the same picture (docs/threat-model.md, "Redis outage"):
  - an authentic webhook is answered 503 + Retry-After within a bounded time (the
    client timeout below is the bound: a hang fails the test), never 2xx;
  - nothing half-written: no nonce burned without its event, so the carrier's retry of
    the very same signed request is accepted once Redis is back, and lands exactly once;
  - /readyz says not ready while webhooks cannot be accepted, ready again afterwards;
  - the gateway recovers by itself (no restart of the gateway).

A cached phone still verifies while Redis is down (a forgery is still refused 403), but
an authentic request gets 503: its event cannot be made durable, so no 2xx.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl

import httpx
import orjson
import pytest
import redis

from gateway.embedded_redis import EmbeddedRedis
from gateway.redis_keys import KeyNames
from tests.helpers.builders import new_token, plivo_phone, plivo_request
from tests.helpers.replies import execute_command, stream_entries
from tests.helpers.support import RunningGateway, make_settings, random_id, run_gateway, send_as_carrier

STREAM = "gateway:events"
# make_settings: 0.5 s socket timeout, 0.3 s connect timeout, one immediate retry. An answer
# needs at most ~2 x (0.3 + 0.5) s; the client gives up (and the test fails) well after that.
ANSWER_BOUND_S = 5.0


@pytest.fixture
def server() -> Iterator[EmbeddedRedis]:
    """A private server the test may pause, stop, wipe or demote; DEBUG allowed from localhost."""
    with EmbeddedRedis(appendonly=True, extra_args=("--enable-debug-command", "local")) as running:
        yield running


@pytest.fixture
def gw(server: EmbeddedRedis) -> Iterator[RunningGateway]:
    with run_gateway(make_settings(server.url)) as running:
        running.client.timeout = httpx.Timeout(ANSWER_BOUND_S)
        yield running


@pytest.fixture
def phone(gw: RunningGateway) -> dict[str, Any]:
    phone = plivo_phone(random_id(), new_token())
    gw.put_phone(phone)
    # One accepted request: the phone is cached and the pool holds live connections.
    assert send_as_carrier(gw, signed(phone)).status_code == 200
    return phone


def signed(phone: dict[str, Any]) -> dict[str, Any]:
    return plivo_request(str(phone["credentials"]["auth_token"]), phone["id"])


def client_for(server: EmbeddedRedis) -> redis.Redis:
    return redis.Redis.from_url(server.url, socket_timeout=5)


def stream_calls(client: redis.Redis) -> list[str]:
    """The CallUUID of every event in the stream (each built request has a fresh one)."""
    return [orjson.loads(fields[b"event"])["params"]["CallUUID"] for _, fields in stream_entries(client.xrange(STREAM))]


def call_of(request: dict[str, Any]) -> str:
    body: str = request["body"]
    return dict(parse_qsl(body))["CallUUID"]


def assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "1"
    assert response.text == "service unavailable\n"  # no exception text, no Redis detail


def readyz(gw: RunningGateway) -> tuple[int, dict[str, Any]]:
    response = gw.client.get("/readyz")
    return response.status_code, response.json()


def not_ready(gw: RunningGateway, timeout_s: float = 10.0) -> tuple[int, dict[str, Any]]:
    """The public /readyz answers from the stream monitor's last probe (about once a second): wait for it."""
    deadline = time.monotonic() + timeout_s
    while (answer := readyz(gw))[0] == 200:
        assert time.monotonic() < deadline, "gateway did not become not ready"
        time.sleep(0.05)
    return answer


def wait_ready(gw: RunningGateway, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while readyz(gw)[0] != 200:
        assert time.monotonic() < deadline, "gateway did not become ready again"
        time.sleep(0.05)


def retry_until_accepted(gw: RunningGateway, request: dict[str, Any], timeout_s: float = 10.0) -> httpx.Response:
    """What a carrier does with a 503: send the same signed request again."""
    deadline = time.monotonic() + timeout_s
    while True:
        response = send_as_carrier(gw, request)
        if response.status_code != 503 or time.monotonic() > deadline:
            return response
        time.sleep(0.1)


# ---- connection refused ------------------------------------------------------------------


def test_connection_refused_gives_503_and_the_retry_lands_once(
    gw: RunningGateway, server: EmbeddedRedis, phone: dict[str, Any]
) -> None:
    cached = signed(phone)
    uncached = signed(plivo_phone(random_id(), new_token()))  # not cached: the lookup itself fails
    server.stop()
    assert_unavailable(send_as_carrier(gw, cached))
    assert_unavailable(send_as_carrier(gw, uncached))
    status, body = not_ready(gw)
    assert status == 503 and body == {"ready": False, "redis": "connection"}
    # A forgery for a cached phone is still refused: verification does not need Redis.
    assert send_as_carrier(gw, plivo_request(new_token(), phone["id"])).status_code == 403

    server.start()
    wait_ready(gw)
    assert retry_until_accepted(gw, cached).status_code == 200
    # Its identical copy is the duplicate of the event now in the stream (issue 14 item 2).
    assert send_as_carrier(gw, cached).status_code == 200
    client = client_for(server)
    try:
        nonces = stream_calls(client)
        assert nonces.count(call_of(cached)) == 1
        assert len(nonces) == 2  # the fixture's request and the retried one: nothing else
    finally:
        client.close()


def test_telnyx_number_lookup_with_redis_down_is_503(gw: RunningGateway, server: EmbeddedRedis) -> None:
    server.stop()
    body = b'{"data":{"id":"ev-1","payload":{"to":"+14155550101","from":"+14155550100"}}}'
    response = gw.client.post("/webhooks/telnyx/voice", content=body, headers={"content-type": "application/json"})
    assert_unavailable(response)


def test_admin_api_with_redis_down_is_503_without_detail(gw: RunningGateway, server: EmbeddedRedis) -> None:
    server.stop()
    for method, path, body in (
        ("GET", "/admin/phones", None),
        ("GET", "/admin/phones/ph_x", None),
        ("PUT", "/admin/phones/ph_x", plivo_phone("ph_x", new_token())),
        ("DELETE", "/admin/phones/ph_x", None),
    ):
        payload = {k: body[k] for k in ("provider", "credentials")} if body else None
        response = gw.admin(method, path, payload)
        assert response.status_code == 503, (method, path, response.status_code)
        assert response.json() == {"error": "redis unavailable"}


# ---- hung Redis (timeouts) -------------------------------------------------------------------


def test_paused_redis_times_out_to_503_and_drops_nothing(
    gw: RunningGateway, server: EmbeddedRedis, phone: dict[str, Any]
) -> None:
    """CLIENT PAUSE: the server holds every command; our timeouts answer 503 in bounded time."""
    request = signed(phone)
    control = client_for(server)
    try:
        control.client_pause(2000, all=True)
        assert_unavailable(send_as_carrier(gw, request))
        status, body = not_ready(gw)
        assert status == 503 and body["redis"] == "timeout"
        control.client_pause(1, all=True)  # replaces the pause: let it expire
        time.sleep(0.05)
        wait_ready(gw)
        # The paused server dropped the commands of the connections we abandoned: nothing
        # was written, so the same signed request is accepted now, exactly once.
        assert retry_until_accepted(gw, request).status_code == 200
        assert stream_calls(control).count(call_of(request)) == 1
        assert len(stream_calls(control)) == 2
    finally:
        control.client_unpause()
        control.close()


def test_write_paused_redis_is_not_ready(gw: RunningGateway, server: EmbeddedRedis, phone: dict[str, Any]) -> None:
    """CLIENT PAUSE WRITE: reads (and PING) still work, but no webhook can be made durable."""
    request = signed(phone)
    control = client_for(server)
    try:
        control.client_pause(3000, all=False)
        assert_unavailable(send_as_carrier(gw, request))
        status, body = not_ready(gw)
        assert status == 503 and body["redis"] == "timeout"
        control.client_unpause()
        wait_ready(gw)
        assert retry_until_accepted(gw, request).status_code == 200
        assert stream_calls(control).count(call_of(request)) == 1
    finally:
        control.client_unpause()
        control.close()


def test_blocked_redis_is_the_ambiguous_case_and_still_no_duplicate(
    gw: RunningGateway, server: EmbeddedRedis, phone: dict[str, Any]
) -> None:
    """DEBUG SLEEP blocks the server; the commands we sent are executed when it wakes up.

    This is the one case where an event can be in the stream without a 2xx: the script ran
    after we gave up. The carrier's retry must not add it twice: the identical retry (same
    nonce) is the duplicate of the event already there, or the event itself if it is not
    (200 either way, issue 14 item 2), and a re-signed delivery of the same call is a
    duplicate (200, not forwarded).
    """
    request = signed(phone)
    sleeper = threading.Thread(target=lambda: execute_command(client_for(server), "DEBUG", "SLEEP", "1.5"), daemon=True)
    sleeper.start()
    time.sleep(0.1)
    assert_unavailable(send_as_carrier(gw, request))
    sleeper.join()
    wait_ready(gw)
    control = client_for(server)
    try:
        written = stream_calls(control).count(call_of(request))
        assert written in (0, 1)  # it may or may not have run: the ambiguity we document
        retry = send_as_carrier(gw, request)
        assert retry.status_code == 200
        assert stream_calls(control).count(call_of(request)) == 1
        # Plivo re-signing the same callback with a fresh nonce: recognised as a duplicate.
        params = request["body"]
        again = plivo_request(str(phone["credentials"]["auth_token"]), phone["id"], params=parse_qsl(params))
        assert send_as_carrier(gw, again).status_code == 200
        assert len(stream_calls(control)) == 2
    finally:
        control.close()


# ---- restarted with its data lost ----------------------------------------------------------


def test_wiped_redis_loses_the_script_cache_and_the_forwarder_reloads_it(
    gw: RunningGateway, server: EmbeddedRedis, phone: dict[str, Any]
) -> None:
    from gateway.forwarder import FORWARD_SHA

    server.restart(wipe=True)
    control = client_for(server)
    try:
        assert control.script_exists(FORWARD_SHA) == [False]
        assert control.dbsize() == 0
        wait_ready(gw)
        # The operator restores the phone (its record was lost with the data); the admin
        # API does not load the forward script, so the first webhook meets NOSCRIPT.
        gw.put_phone(phone)
        assert control.script_exists(FORWARD_SHA) == [False]
        request = signed(phone)
        assert retry_until_accepted(gw, request).status_code == 200
        assert control.script_exists(FORWARD_SHA) == [True]
        assert stream_calls(control) == [call_of(request)]
    finally:
        control.close()


def test_wiped_redis_with_the_phone_still_cached(
    gw: RunningGateway, server: EmbeddedRedis, phone: dict[str, Any]
) -> None:
    """Before the invalidation subscriber reconnects the phone may still be cached: the
    forward then meets NOSCRIPT first. Whatever the timing, no 5xx other than 503, and
    every 2xx is in the stream."""
    server.restart(wipe=True)
    accepted: list[str] = []
    for _ in range(5):
        request = signed(phone)
        response = send_as_carrier(gw, request)
        assert response.status_code in (200, 403, 503), response.status_code
        if response.status_code == 200:
            accepted.append(call_of(request))
    control = client_for(server)
    try:
        assert sorted(stream_calls(control)) == sorted(accepted)
    finally:
        control.close()


# ---- read-only replica after a failover ------------------------------------------------------


def _wait_link_up(client: redis.Redis) -> None:
    deadline = time.monotonic() + 10
    while client.info("replication").get("master_link_status") != "up":
        assert time.monotonic() < deadline, "replication link did not come up"
        time.sleep(0.05)


def test_read_only_replica_after_failover(gw: RunningGateway, server: EmbeddedRedis, phone: dict[str, Any]) -> None:
    """The gateway still points at the old primary, now demoted to a read-only replica."""
    with EmbeddedRedis(appendonly=False) as other:
        old, new = client_for(server), client_for(other)
        try:
            new.replicaof("127.0.0.1", server.port)
            _wait_link_up(new)
            # Failover: promote the replica, demote the old primary under it.
            new.replicaof("NO", "ONE")
            old.replicaof("127.0.0.1", other.port)
            _wait_link_up(old)
            before = new.xlen(STREAM)

            request = signed(phone)
            assert_unavailable(send_as_carrier(gw, request))
            status, body = not_ready(gw)
            assert status == 503 and body["redis"] == "readonly"
            assert new.xlen(STREAM) == before  # nothing written anywhere

            old.replicaof("NO", "ONE")  # the operator points things right again
            wait_ready(gw)
            assert retry_until_accepted(gw, request).status_code == 200
            assert stream_calls(old).count(call_of(request)) == 1
        finally:
            old.close()
            new.close()


# ---- out of memory ------------------------------------------------------------------------------


def test_out_of_memory_gives_503_and_burns_no_nonce(
    gw: RunningGateway, server: EmbeddedRedis, phone: dict[str, Any]
) -> None:
    control = client_for(server)
    try:
        before = control.dbsize()
        control.config_set("maxmemory-policy", "noeviction")
        control.config_set("maxmemory", "1")
        request = signed(phone)
        assert_unavailable(send_as_carrier(gw, request))
        status, body = not_ready(gw)
        assert status == 503 and body["redis"] == "oom"
        assert control.dbsize() == before  # no nonce key, no idempotency key, no event

        control.config_set("maxmemory", "0")
        wait_ready(gw)
        assert retry_until_accepted(gw, request).status_code == 200
        assert stream_calls(control).count(call_of(request)) == 1
    finally:
        control.config_set("maxmemory", "0")
        control.close()


def test_redis_error_metrics_carry_classes_not_messages(
    gw: RunningGateway, server: EmbeddedRedis, phone: dict[str, Any]
) -> None:
    control = client_for(server)
    try:
        control.config_set("maxmemory-policy", "noeviction")
        control.config_set("maxmemory", "1")
        assert_unavailable(send_as_carrier(gw, signed(phone)))
    finally:
        control.config_set("maxmemory", "0")
        control.close()
    text = gw.client.get("/metrics").text
    lines = [line for line in text.splitlines() if line.startswith("gateway_redis_errors_total{")]
    assert any('error="oom"' in line and 'operation="forward"' in line for line in lines), lines
    assert "maxmemory" not in text


def test_missing_replicas_make_readyz_not_ready_and_webhooks_503(server: EmbeddedRedis) -> None:
    """GATEWAY_REDIS_WAIT_REPLICAS=1 against a server with no replica: no 2xx is possible, so not ready."""
    settings = make_settings(server.url, GATEWAY_REDIS_WAIT_REPLICAS="1", GATEWAY_REDIS_TIMEOUT_S="0.2")
    with run_gateway(settings) as waiting:
        assert readyz(waiting) == (503, {"ready": False, "redis": "not_replicated"})
        phone = plivo_phone(random_id(), new_token())
        waiting.put_phone(phone)
        assert_unavailable(send_as_carrier(waiting, signed(phone)))
    with run_gateway(make_settings(server.url)) as plain:  # the same server without the requirement: ready
        assert readyz(plain)[0] == 200


# ---- keys the gateway did not write, and bugs: never a 500 ---------------------------------------


def test_a_phone_key_of_the_wrong_type_is_refused_like_an_unknown_phone(
    gw: RunningGateway, server: EmbeddedRedis, caplog: pytest.LogCaptureFixture
) -> None:
    phone = plivo_phone(random_id(), new_token())
    client = client_for(server)
    try:
        client.hset(KeyNames().phone(phone["id"]), "auth_token", "not written by the admin API")  # WRONGTYPE for GET
        unknown = send_as_carrier(gw, signed(plivo_phone(random_id(), new_token())))
        response = send_as_carrier(gw, signed(phone))
        assert (response.status_code, response.text) == (unknown.status_code, unknown.text)
        assert response.status_code == 403
        assert "phone record is unreadable (WRONGTYPE)" in caplog.text
        assert client.xlen(STREAM) == 0
    finally:
        client.close()


def test_a_number_index_entry_of_the_wrong_type_finds_no_phone(
    gw: RunningGateway, server: EmbeddedRedis, caplog: pytest.LogCaptureFixture
) -> None:
    client = client_for(server)
    try:
        client.rpush(KeyNames().number("+14155550101"), "ph_x")
        body = b'{"data":{"id":"ev-1","payload":{"to":"+14155550101","from":"+14155550100"}}}'
        response = gw.client.post("/webhooks/telnyx/voice", content=body, headers={"content-type": "application/json"})
        assert response.status_code in (400, 401, 403)  # answered like any unknown number
        assert "number index entry is unreadable (WRONGTYPE)" in caplog.text
        assert client.xlen(STREAM) == 0
    finally:
        client.close()


def test_an_unexpected_error_is_a_503_with_no_detail_and_a_traceback_in_the_log(
    gw: RunningGateway, server: EmbeddedRedis, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injection: the phone lookup fails with an error nobody anticipated (a bug, or a
    Redis client error not known as an outage). The carrier must retry: 503, never a 500."""
    components = gw.app.components
    assert components is not None

    async def broken(phone_id: str) -> None:
        raise RuntimeError("an unanticipated failure for " + phone_id)

    monkeypatch.setattr(components.keystore, "credentials", broken)
    request = signed(plivo_phone(random_id(), new_token()))  # not cached: the lookup runs
    assert_unavailable(send_as_carrier(gw, request))
    failures = [r for r in caplog.records if r.getMessage().startswith("unexpected error handling a webhook")]
    assert len(failures) == 1 and failures[0].exc_info is not None
    monkeypatch.undo()
    assert retry_until_accepted(gw, request).status_code == 403  # the real lookup: an unknown phone
    client = client_for(server)
    try:
        assert client.xlen(STREAM) == 0
    finally:
        client.close()


def test_a_read_the_server_refuses_is_a_503_not_an_unknown_phone(
    gw: RunningGateway, server: EmbeddedRedis, caplog: pytest.LogCaptureFixture
) -> None:
    """NOPERM (an ACL that lost GET, say) is the server's problem, not the phone's: answered 503 so the
    carrier retries once it is fixed; an unknown-phone 403 would make carriers give up on a real phone."""
    phone = plivo_phone(random_id(), new_token())
    gw.put_phone(phone)
    client = client_for(server)
    try:
        execute_command(client, "ACL", "SETUSER", "default", "-get")
        request = signed(phone)
        assert_unavailable(send_as_carrier(gw, request))
        assert "Redis refused a key store read (NoPermissionError)" in caplog.text
        execute_command(client, "ACL", "SETUSER", "default", "+get")
        assert retry_until_accepted(gw, request).status_code == 200
        assert stream_calls(client) == [call_of(request)]
    finally:
        execute_command(client, "ACL", "SETUSER", "default", "+get")
        client.close()

"""The HTTP edge through a real uvicorn socket: body limits, proxies, admin auth, metrics, Redis outages."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from gateway.embedded_redis import EmbeddedRedis, free_port
from tests.helpers.builders import new_token, plivo_phone, plivo_request
from tests.helpers.replies import stream_entries
from tests.helpers.support import (
    ADMIN_TOKEN,
    KEK,
    REPO,
    RunningGateway,
    make_settings,
    random_id,
    run_gateway,
    send_as_carrier,
)

STREAM = "gateway:events"


@pytest.fixture(scope="module")
def gw(redis_server: str) -> Iterator[RunningGateway]:
    with run_gateway(make_settings(redis_server, GATEWAY_MAX_BODY_BYTES="2048")) as running:
        yield running


@pytest.fixture
def phone(gw: RunningGateway, redis_url: str) -> dict[str, Any]:
    phone = plivo_phone(random_id(), new_token())
    gw.put_phone(phone)
    return phone


# ---- body size --------------------------------------------------------------------------


@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_declared_oversized_body_is_413_before_reading(redis_url: str, http: str) -> None:
    with run_gateway(make_settings(redis_url, GATEWAY_MAX_BODY_BYTES="2048"), http=http) as gw:
        response = gw.client.post(
            "/plivo/status/ph_x",
            content=b"a=" + b"x" * 5000,
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert response.status_code == 413


def test_chunked_oversized_body_is_413(gw: RunningGateway, redis_sync: redis.Redis) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(10):
            yield b"x" * 1000

    response = gw.client.post("/plivo/status/ph_x", content=chunks())
    assert response.status_code == 413
    assert redis_sync.xlen(STREAM) == 0


def test_invalid_content_length_is_400(gw: RunningGateway) -> None:
    import socket

    with socket.create_connection(("127.0.0.1", gw.port)) as sock:
        sock.sendall(b"POST /plivo/status/ph_x HTTP/1.1\r\nHost: x\r\nContent-Length: 12abc\r\n\r\n")
        answer = sock.recv(1024)
    assert answer.split(b" ")[1] in (b"400",)


def test_unknown_path_is_404(gw: RunningGateway) -> None:
    assert gw.client.get("/plivo/nothing").status_code == 404
    assert gw.client.post("/plivo/status/").status_code == 404


# ---- forwarded headers --------------------------------------------------------------------


def test_forwarded_headers_ignored_from_untrusted_peer(redis_url: str) -> None:
    # The test client (127.0.0.1) is not a trusted proxy here: its X-Forwarded-* must be ignored,
    # so a request signed for https://hooks.example.com does not verify.
    settings = make_settings(redis_url, GATEWAY_TRUSTED_PROXIES="192.0.2.0/24")
    with run_gateway(settings) as gw:
        token = new_token()
        phone = plivo_phone(random_id(), token)
        gw.put_phone(phone)
        assert send_as_carrier(gw, plivo_request(token, phone["id"])).status_code == 403
        # Signed for the URL the gateway really sees: accepted, and the spoofed client IP is not believed.
        local = plivo_request(token, phone["id"], base=gw.base_url)
        response = gw.client.post(
            local["url"].removeprefix(gw.base_url),
            headers={**local["headers"], "x-forwarded-for": "203.0.113.9"},
            content=local["body"],
        )
        assert response.status_code == 200
        client = redis.Redis.from_url(redis_url)
        import orjson

        event = orjson.loads(stream_entries(client.xrange(STREAM))[-1][1][b"event"])
        client.close()
        assert event["source_ip"] == "127.0.0.1"


def test_public_base_url_setting(redis_url: str) -> None:
    settings = make_settings(redis_url, GATEWAY_TRUSTED_PROXIES="", GATEWAY_PUBLIC_BASE_URL="https://hooks.example.com")
    with run_gateway(settings) as gw:
        token = new_token()
        phone = plivo_phone(random_id(), token)
        gw.put_phone(phone)
        request = plivo_request(token, phone["id"])
        path = request["url"].removeprefix("https://hooks.example.com")
        assert gw.client.post(path, headers=request["headers"], content=request["body"]).status_code == 200


# ---- admin ----------------------------------------------------------------------------


def test_admin_requires_bearer_token(gw: RunningGateway) -> None:
    assert gw.admin("GET", "/admin/phones", token=None).status_code == 401
    assert gw.admin("GET", "/admin/phones", token="wrong-token-wrong-token-xx").status_code == 401
    assert gw.client.get("/admin/phones", headers={"authorization": ADMIN_TOKEN}).status_code == 401
    assert gw.admin("GET", "/admin/phones").status_code == 200


def test_admin_disabled_without_token(redis_url: str) -> None:
    settings = make_settings(redis_url, GATEWAY_ADMIN_TOKEN="")
    with run_gateway(settings) as gw:
        assert gw.admin("GET", "/admin/phones").status_code == 404
        assert gw.admin("PUT", "/admin/phones/ph_1", {"provider": "plivo"}).status_code == 404


def test_admin_round_trip_shows_fingerprints_only(gw: RunningGateway, redis_url: str) -> None:
    token = new_token()
    phone = plivo_phone(random_id(), token)
    created = gw.admin(
        "PUT", f"/admin/phones/{phone['id']}", {"provider": "plivo", "credentials": phone["credentials"]}
    )
    assert created.status_code == 201
    for response in (created, gw.admin("GET", f"/admin/phones/{phone['id']}"), gw.admin("GET", "/admin/phones")):
        assert token not in response.text
        assert "fp_" in response.text
    assert gw.admin("DELETE", f"/admin/phones/{phone['id']}").status_code == 204
    assert gw.admin("GET", f"/admin/phones/{phone['id']}").status_code == 404
    assert gw.admin("DELETE", f"/admin/phones/{phone['id']}").status_code == 404


def test_admin_rejects_invalid_body_clearly(gw: RunningGateway) -> None:
    response = gw.admin("PUT", "/admin/phones/ph_bad", {"provider": "plivo", "credentials": {"auth_id": "MA"}})
    assert response.status_code == 422
    assert "auth_token" in response.json()["error"]
    response = gw.client.put(
        "/admin/phones/ph_bad", content=b"{not json", headers={"authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    assert response.status_code == 400


# ---- metrics and health ----------------------------------------------------------------


def test_metrics_count_outcomes_without_phone_ids(gw: RunningGateway, phone: dict[str, Any]) -> None:
    token = str(phone["credentials"]["auth_token"])
    assert send_as_carrier(gw, plivo_request(token, phone["id"])).status_code == 200
    assert send_as_carrier(gw, plivo_request(new_token(), phone["id"])).status_code == 403
    text = gw.client.get("/metrics").text
    assert phone["id"] not in text
    assert token not in text

    def value(prefix: str) -> float:
        line = next(line for line in text.splitlines() if line.startswith(prefix))
        return float(line.rsplit(" ", 1)[1])

    assert value('gateway_requests_total{kind="status",outcome="accepted",provider="plivo"}') >= 1
    assert value('gateway_rejections_total{provider="plivo",reason="invalid_signature"}') >= 1
    assert value('gateway_forwarded_total{provider="plivo"}') >= 1


def test_health_endpoints(gw: RunningGateway) -> None:
    assert gw.client.get("/healthz").status_code == 200
    ready = gw.client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["redis"] == "ok"


# ---- Redis outage ------------------------------------------------------------------------


def readyz_until(gw: RunningGateway, status: int, timeout_s: float = 10.0) -> None:
    """The public /readyz answers from the stream monitor's last probe (about once a second): wait for it."""
    deadline = time.monotonic() + timeout_s
    while gw.client.get("/readyz").status_code != status:
        assert time.monotonic() < deadline, f"/readyz did not answer {status}"
        time.sleep(0.05)


def test_redis_down_gives_503_and_nothing_is_written(private_redis: EmbeddedRedis) -> None:
    with run_gateway(make_settings(private_redis.url)) as gw:
        token = new_token()
        phone = plivo_phone(random_id(), token)
        gw.put_phone(phone)
        assert send_as_carrier(gw, plivo_request(token, phone["id"])).status_code == 200

        private_redis.stop()
        started = time.monotonic()
        pending = plivo_request(token, phone["id"])
        response = send_as_carrier(gw, pending)
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        assert time.monotonic() - started < 3  # bounded: explicit timeouts, no long retry loop
        # The public /readyz answers from the stream monitor's last probe (about once a second).
        readyz_until(gw, 503)

        private_redis.start()
        client = redis.Redis.from_url(private_redis.url)
        try:
            assert client.xlen(STREAM) == 1  # the 503'd request left nothing behind
            # The carrier retries the same signed request: now accepted, exactly once.
            assert send_as_carrier(gw, pending).status_code == 200
            assert client.xlen(STREAM) == 2
            readyz_until(gw, 200)
        finally:
            client.close()


# ---- two processes -----------------------------------------------------------------------


def _spawn(redis_url: str, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "GATEWAY_REDIS_URL": redis_url,
        "GATEWAY_KEK": KEK,
        "GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN,
        "GATEWAY_TRUSTED_PROXIES": "127.0.0.1/32",
        "GATEWAY_PORT": str(port),
        "GATEWAY_LOG_LEVEL": "warning",
        "EXOTEL_ALLOWED_IPS": "",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve"], env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def _wait_ready(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(process.stderr.read().decode() if process.stderr else "exited")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError("gateway process not ready")


def test_deleted_phone_rejected_within_a_second_across_processes(redis_url: str) -> None:
    ports = [free_port(), free_port()]
    processes = [_spawn(redis_url, port) for port in ports]
    try:
        for port, process in zip(ports, processes, strict=True):
            _wait_ready(port, process)
        a = httpx.Client(base_url=f"http://127.0.0.1:{ports[0]}")
        b = httpx.Client(base_url=f"http://127.0.0.1:{ports[1]}")
        token = new_token()
        phone = plivo_phone(random_id(), token)
        body = {"provider": "plivo", "credentials": phone["credentials"]}
        auth = {"authorization": f"Bearer {ADMIN_TOKEN}"}
        assert a.put(f"/admin/phones/{phone['id']}", json=body, headers=auth).status_code == 201

        def send_b() -> int:
            request = plivo_request(token, phone["id"])
            headers = {**request["headers"], "x-forwarded-proto": "https", "x-forwarded-host": "hooks.example.com"}
            path = request["url"].removeprefix("https://hooks.example.com")
            return b.post(path, headers=headers, content=request["body"]).status_code

        assert send_b() == 200  # B has the phone cached now
        assert a.delete(f"/admin/phones/{phone['id']}", headers=auth).status_code == 204
        deleted_at = time.monotonic()
        while send_b() != 403:
            assert time.monotonic() - deleted_at < 1.0, "B still accepts a deleted phone after 1 s"
            time.sleep(0.02)
        a.close()
        b.close()
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            process.wait(timeout=15)
            if process.stderr is not None:
                process.stderr.close()

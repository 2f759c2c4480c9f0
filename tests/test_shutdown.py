"""Graceful shutdown of a real `gateway serve` process: SIGTERM drains what is in flight.

uvicorn (timeout_graceful_shutdown=30 in `gateway serve`) stops accepting, closes idle
connections, lets every request whose head has arrived finish, and only then runs the
lifespan shutdown, which flushes the forwarder. So a request in flight at SIGTERM is
answered 2xx once its event is in the stream, exactly like any other; a request that
had not reached the gateway meets a refused connection, and the carrier retries it.
The slow variant under load is tests/test_no_loss.py.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx
import orjson
import pytest
import redis

from gateway.embedded_redis import EmbeddedRedis
from tests.helpers.builders import new_token, plivo_phone, plivo_request
from tests.helpers.replies import stream_entries
from tests.helpers.support import ADMIN_TOKEN, GatewayProcess, as_carrier, random_id, spawn_gateway

STREAM = "gateway:events"
TERMINATED = 128 + signal.SIGTERM  # `gateway serve` after a graceful SIGTERM shutdown


@pytest.fixture
def server() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis(appendonly=True) as running:
        yield running


@pytest.fixture
def gateway(server: EmbeddedRedis, tmp_path: Path) -> Iterator[GatewayProcess]:
    # Generous Redis timeouts: the test holds writes for a moment to keep requests in flight.
    with spawn_gateway(server.url, tmp_path, GATEWAY_REDIS_TIMEOUT_S="5") as running:
        yield running


def register(gateway: GatewayProcess) -> dict[str, Any]:
    phone = plivo_phone(random_id(), new_token())
    body = {k: phone[k] for k in ("provider", "credentials")}
    response = httpx.put(
        f"{gateway.base_url}/admin/phones/{phone['id']}",
        json=body,
        headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    assert response.status_code == 201, response.text
    return phone


def calls_in_stream(server: EmbeddedRedis) -> list[str]:
    client = redis.Redis.from_url(server.url)
    try:
        return [orjson.loads(f[b"event"])["params"]["CallUUID"] for _, f in stream_entries(client.xrange(STREAM))]
    finally:
        client.close()


def call_of(request: dict[str, Any]) -> str:
    body: str = request["body"]
    return dict(parse_qsl(body))["CallUUID"]


def test_sigterm_drains_requests_in_flight(server: EmbeddedRedis, gateway: GatewayProcess) -> None:
    phone = register(gateway)
    token = str(phone["credentials"]["auth_token"])
    requests = [plivo_request(token, phone["id"]) for _ in range(6)]
    control = redis.Redis.from_url(server.url)
    statuses: dict[int, int | str] = {}

    def send(index: int) -> None:
        method, target, headers, content = as_carrier(requests[index])
        try:
            response = httpx.request(method, gateway.base_url + target, headers=headers, content=content, timeout=30)
            statuses[index] = response.status_code
        except httpx.HTTPError as exc:
            statuses[index] = type(exc).__name__

    try:
        control.client_pause(1500, all=False)  # writes wait: the requests stay in flight
        threads = [threading.Thread(target=send, args=(i,)) for i in range(len(requests))]
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        gateway.process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        with pytest.raises(OSError):  # no longer accepting
            socket.create_connection(("127.0.0.1", gateway.port), timeout=1).close()
        for thread in threads:
            thread.join(timeout=30)
        assert gateway.process.wait(timeout=40) == TERMINATED
    finally:
        control.client_unpause()
        control.close()

    assert statuses == dict.fromkeys(range(len(requests)), 200), statuses
    stream = calls_in_stream(server)
    assert sorted(stream) == sorted(call_of(r) for r in requests)  # each exactly once
    log = gateway.log()
    assert "Traceback" not in log
    assert "Waiting for" in log or "Shutting down" in log


def test_sigterm_waits_for_a_body_still_arriving(server: EmbeddedRedis, gateway: GatewayProcess) -> None:
    """A request whose head arrived before SIGTERM is served even if its body comes after."""
    phone = register(gateway)
    request = plivo_request(str(phone["credentials"]["auth_token"]), phone["id"])
    method, target, headers, content = as_carrier(request)
    head = f"{method} {target} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: {len(content)}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers.items()) + "\r\n"
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(head.encode() + content[:10])
        time.sleep(0.3)
        gateway.process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        sock.sendall(content[10:])
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    assert gateway.process.wait(timeout=40) == TERMINATED
    assert calls_in_stream(server) == [call_of(request)]


def test_sigterm_with_idle_connections_exits_promptly(gateway: GatewayProcess) -> None:
    idle = [socket.create_connection(("127.0.0.1", gateway.port)) for _ in range(3)]
    kept = httpx.Client(base_url=gateway.base_url)
    try:
        assert kept.get("/healthz").status_code == 200  # a kept-alive connection, now idle
        started = time.monotonic()
        assert gateway.terminate() == TERMINATED
        # Idle connections do not hold the shutdown for timeout_graceful_shutdown (30 s).
        assert time.monotonic() - started < 20
    finally:
        kept.close()
        for sock in idle:
            sock.close()


def test_sigterm_in_development_mode_stops_the_embedded_redis(tmp_path: Path) -> None:
    """Regression: uvicorn re-raised SIGTERM after draining and the process died before
    stopping the embedded Redis it had started, which was left running (orphaned)."""
    with spawn_gateway("", tmp_path) as gateway:  # no GATEWAY_REDIS_URL: embedded server
        socket_path = tmp_path / ".gateway" / "redis" / "redis.sock"
        client = redis.Redis(unix_socket_path=str(socket_path))
        try:
            pid = int(client.info("server")["process_id"])
        finally:
            client.close()
        assert gateway.terminate() == TERMINATED
    deadline = time.monotonic() + 10
    while _alive(pid):
        assert time.monotonic() < deadline, "embedded Redis still running after the gateway exited"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]

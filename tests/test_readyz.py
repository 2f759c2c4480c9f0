"""The public /readyz never writes to Redis; it answers from the stream monitor's last probe (issue 14, item 11).

The probe is a write (and a WAIT with replicas): run per unauthenticated request, anyone could
make the gateway write to Redis as fast as they can send GETs. The stream monitor probes about
once a second; the public port serves that verdict, the admin port (GATEWAY_ADMIN_PORT) probes live.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
import redis

from gateway.embedded_redis import EmbeddedRedis, free_port
from gateway.stream_monitor import StreamMonitor
from tests.helpers.support import RunningGateway, make_settings, run_gateway

CALLS = 100


def set_calls(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return int(stats.get("cmdstat_set", {}).get("calls", 0))


def monitor_of(gw: RunningGateway) -> StreamMonitor:
    monitor: StreamMonitor | None = gw.app.monitor
    assert monitor is not None
    return monitor


def wait_for_status(gw: RunningGateway, status: int, timeout_s: float = 10.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout_s
    while True:
        response = gw.client.get("/readyz")
        if response.status_code == status:
            return dict(response.json())
        assert time.monotonic() < deadline, f"/readyz stayed {response.status_code}: {response.text}"
        time.sleep(0.05)


@pytest.fixture
def private(private_redis: EmbeddedRedis) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(private_redis.url, socket_timeout=5)
    try:
        yield client
    finally:
        client.close()


def test_public_readyz_calls_write_nothing(private_redis: EmbeddedRedis, private: redis.Redis) -> None:
    with run_gateway(make_settings(private_redis.url)) as gw:
        monitor = monitor_of(gw)
        samples_before, sets_before = monitor.samples, set_calls(private)
        for _ in range(CALLS):
            response = gw.client.get("/readyz")
            assert response.status_code == 200 and response.json()["redis"] == "ok"
        samples_after, sets_after = monitor.samples, set_calls(private)
    # Every SET in between is the monitor's own probe, one per sample (+1: a sample may have
    # written before `samples_before` was read and counted itself after).
    assert sets_after - sets_before <= samples_after - samples_before + 1
    assert samples_after - samples_before < CALLS


def test_public_readyz_flips_when_redis_goes_away_and_back(private_redis: EmbeddedRedis) -> None:
    with run_gateway(make_settings(private_redis.url)) as gw:
        assert gw.client.get("/readyz").status_code == 200
        private_redis.stop()
        assert wait_for_status(gw, 503) == {"ready": False, "redis": "connection"}
        private_redis.start()
        assert wait_for_status(gw, 200)["redis"] == "ok"


def test_public_readyz_is_not_ready_when_the_verdict_is_stale(private_redis: EmbeddedRedis) -> None:
    """A sampler that stopped (crashed, stuck) must not leave the last 'ready' standing."""
    with run_gateway(make_settings(private_redis.url)) as gw:
        monitor = monitor_of(gw)
        monitor._clock = lambda: time.monotonic() + 3600  # every verdict is now an hour old
        response = gw.client.get("/readyz")
        assert response.status_code == 503 and response.json() == {"ready": False, "redis": "stale"}


def test_the_admin_port_probes_live(private_redis: EmbeddedRedis, private: redis.Redis) -> None:
    """On GATEWAY_ADMIN_PORT the probe runs per request: it sees an outage at once."""
    port = free_port()
    settings = make_settings(private_redis.url, GATEWAY_ADMIN_PORT=str(port))
    with run_gateway(settings, port=port), httpx.Client(base_url=f"http://127.0.0.1:{port}") as admin:
        before = set_calls(private)  # (run_gateway's own client points elsewhere: the port is overridden)
        for _ in range(5):
            assert admin.get("/readyz").status_code == 200
        assert set_calls(private) - before >= 5
        private_redis.stop()
        response = admin.get("/readyz")
        assert response.status_code == 503 and response.json() == {"ready": False, "redis": "connection"}

"""The stream monitor feeds the alerting gauges from a real Redis, and marks Redis down when it is."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from gateway.embedded_redis import EmbeddedRedis
from gateway.stream_monitor import StreamMonitor

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def gauge(name: str) -> float | None:
    return REGISTRY.get_sample_value(name)


async def test_samples_length_lag_and_pending(redis_url: str) -> None:
    client = Redis.from_url(redis_url)
    try:
        for n in range(5):
            await client.xadd("gateway:events", {"event": f"{n}"})
        await client.xgroup_create("gateway:events", "dispatch", id="0")
        await client.xreadgroup("dispatch", "c1", {"gateway:events": ">"}, count=2)  # 2 pending, 3 undelivered
        await StreamMonitor(client, "gateway:events", "gateway:probe").sample()
        assert gauge("gateway_redis_up") == 1
        assert gauge("gateway_stream_length") == 5
        assert gauge("gateway_stream_pending") == 2
        assert gauge("gateway_stream_consumer_lag") == 3
    finally:
        await client.aclose()


async def test_marks_redis_down(private_redis: EmbeddedRedis) -> None:
    client = Redis.from_url(private_redis.url, socket_timeout=0.3, socket_connect_timeout=0.3)
    try:
        monitor = StreamMonitor(client, "gateway:events", "gateway:probe", timeout_s=0.3)
        await monitor.sample()
        assert gauge("gateway_redis_up") == 1
        private_redis.stop()
        await monitor.sample()
        assert gauge("gateway_redis_up") == 0
    finally:
        await client.aclose()

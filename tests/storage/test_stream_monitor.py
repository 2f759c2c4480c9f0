"""The stream monitor feeds the alerting gauges from a real Redis, and marks Redis down when it is."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from gateway.embedded_redis import EmbeddedRedis
from gateway.forwarder import Forwarder
from gateway.redis_keys import KeyNames
from gateway.stream_monitor import StreamMonitor

pytestmark = pytest.mark.anyio


def probe_of(client: Redis, wait_replicas: int = 0) -> Callable[[], Awaitable[None]]:
    forwarder = Forwarder(client, KeyNames(), nonce_ttl_s=60, idempotency_ttl_s=60, wait_replicas=wait_replicas)
    return lambda: forwarder.probe_write("gateway:probe")


def gauge(name: str) -> float | None:
    return REGISTRY.get_sample_value(name)


async def test_samples_length_lag_and_pending(redis_url: str) -> None:
    client = Redis.from_url(redis_url)
    try:
        for n in range(5):
            await client.xadd("gateway:events", {"event": f"{n}"})
        await client.xgroup_create("gateway:events", "dispatch", id="0")
        await client.xreadgroup("dispatch", "c1", {"gateway:events": ">"}, count=2)  # 2 pending, 3 undelivered
        await StreamMonitor(client, "gateway:events", probe_of(client)).sample()
        assert gauge("gateway_redis_up") == 1
        assert gauge("gateway_stream_length") == 5
        assert gauge("gateway_stream_pending") == 2
        assert gauge("gateway_stream_consumer_lag") == 3
    finally:
        await client.aclose()


async def test_marks_redis_down(private_redis: EmbeddedRedis) -> None:
    client = Redis.from_url(private_redis.url, socket_timeout=0.3, socket_connect_timeout=0.3)
    try:
        monitor = StreamMonitor(client, "gateway:events", probe_of(client), timeout_s=0.3)
        await monitor.sample()
        assert gauge("gateway_redis_up") == 1
        private_redis.stop()
        await monitor.sample()
        assert gauge("gateway_redis_up") == 0
    finally:
        await client.aclose()


async def test_marks_redis_down_while_replicas_cannot_confirm(redis_url: str) -> None:
    """GATEWAY_REDIS_WAIT_REPLICAS=1 on a server without replicas: every webhook would get 503, so down."""
    client = Redis.from_url(redis_url, socket_timeout=2)
    try:
        await StreamMonitor(client, "gateway:events", probe_of(client)).sample()
        assert gauge("gateway_redis_up") == 1
        await StreamMonitor(client, "gateway:events", probe_of(client, wait_replicas=1)).sample()
        assert gauge("gateway_redis_up") == 0
    finally:
        await client.aclose()

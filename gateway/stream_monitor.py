"""Samples Redis health and the dispatch stream's backlog into gauges, every few seconds.

Prometheus alerts on these (Redis unavailable, dispatch falling behind), so they must
move even when nobody calls /readyz and no webhook arrives.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis

from gateway import metrics
from gateway.tasks import stop_task

log = logging.getLogger("gateway.stream_monitor")


class StreamMonitor:
    def __init__(
        self,
        redis: Redis,
        stream: str,
        probe: Callable[[], Awaitable[None]],
        interval_s: float = 10.0,
        timeout_s: float = 1.0,
    ):
        self._redis = redis
        self._stream = stream
        self._probe = probe  # the write /readyz makes (Forwarder.probe_write): raises when webhooks cannot be taken
        self._interval = interval_s
        self._timeout = timeout_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="stream-monitor")

    async def stop(self) -> None:
        await stop_task(self._task)
        self._task = None

    async def sample(self) -> None:
        """One sample; never raises (a failed sample marks Redis down)."""
        try:
            # The same check as /readyz: a read-only or OOM server, or missing replicas, cannot take webhooks.
            await asyncio.wait_for(self._probe(), self._timeout)
            length = await asyncio.wait_for(self._redis.xlen(self._stream), self._timeout)
            groups: list[dict[Any, Any]] = []
            if length:
                groups = await asyncio.wait_for(self._redis.xinfo_groups(self._stream), self._timeout)
        except Exception as exc:
            metrics.REDIS_UP.set(0)
            metrics.REDIS_ERRORS.labels("monitor", metrics.redis_error_class(exc)).inc()
            return
        metrics.REDIS_UP.set(1)
        metrics.STREAM_LENGTH.set(length)
        lags = [_int(group.get("lag", group.get(b"lag"))) for group in groups]
        pending = [_int(group.get("pending", group.get(b"pending"))) for group in groups]
        metrics.STREAM_LAG.set(max((lag for lag in lags if lag is not None), default=0))
        metrics.STREAM_PENDING.set(sum(p for p in pending if p is not None))

    async def _run(self) -> None:
        while True:
            await self.sample()
            await asyncio.sleep(self._interval)


def _int(value: Any) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None

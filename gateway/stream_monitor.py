"""Samples Redis health and the dispatch stream's backlog into gauges, about once a second.

Prometheus alerts on these (Redis unavailable, dispatch falling behind), so they must
move even when nobody calls /readyz and no webhook arrives. The readiness probe's result
is kept (`readiness()`): the public /readyz answers from it, so an unauthenticated
caller never makes the gateway write to Redis (issue 14, item 11).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from gateway import metrics
from gateway.tasks import stop_task

log = logging.getLogger("gateway.stream_monitor")


@dataclass(frozen=True, slots=True)
class Readiness:
    """The last probe's verdict: `redis` is "ok" or the error class (a fixed vocabulary)."""

    ready: bool
    redis: str


NOT_SAMPLED = Readiness(False, "starting")
STALE = Readiness(False, "stale")


class StreamMonitor:
    def __init__(
        self,
        redis: Redis,
        stream: str,
        probe: Callable[[], Awaitable[None]],
        interval_s: float = 1.0,
        timeout_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._redis = redis
        self._stream = stream
        self._probe = probe  # the write readiness needs (Forwarder.probe_write): raises when webhooks cannot be taken
        self._interval = interval_s
        self._timeout = timeout_s
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._readiness = NOT_SAMPLED
        self._probed_at: float | None = None
        # One sample waits at most 3 timeouts (probe, XLEN, XINFO) and then sleeps one interval;
        # a verdict older than that (and a margin) means the sampler is stuck or gone: not ready.
        self._max_age = interval_s + 3 * timeout_s + 1.0
        self.samples = 0  # completed samples: each probes (writes) exactly once

    def readiness(self) -> Readiness:
        """The last probe's verdict, without touching Redis; not ready when there is none or it is stale."""
        if self._probed_at is None:
            return NOT_SAMPLED
        if self._clock() - self._probed_at > self._max_age:
            return STALE
        return self._readiness

    def start(self) -> None:
        """Sample every interval from now on (the first one an interval from now: sample() once before)."""
        self._task = asyncio.create_task(self._run(), name="stream-monitor")

    async def stop(self) -> None:
        await stop_task(self._task)
        self._task = None

    async def sample(self) -> None:
        """One sample; never raises (a failed sample marks Redis down)."""
        try:
            # A write, not PING: a read-only or OOM server, or missing replicas, cannot take webhooks.
            try:
                await asyncio.wait_for(self._probe(), self._timeout)
            except Exception as exc:
                self._record(Readiness(False, metrics.redis_error_class(exc)))
                raise
            self._record(Readiness(True, "ok"))
            length = await asyncio.wait_for(self._redis.xlen(self._stream), self._timeout)
            groups: list[dict[Any, Any]] = []
            if length:
                groups = await asyncio.wait_for(self._redis.xinfo_groups(self._stream), self._timeout)
        except Exception as exc:
            metrics.REDIS_UP.set(0)
            metrics.REDIS_ERRORS.labels("monitor", metrics.redis_error_class(exc)).inc()
            return
        finally:
            self.samples += 1
        metrics.REDIS_UP.set(1)
        metrics.STREAM_LENGTH.set(length)
        lags = [_int(group.get("lag", group.get(b"lag"))) for group in groups]
        pending = [_int(group.get("pending", group.get(b"pending"))) for group in groups]
        metrics.STREAM_LAG.set(max((lag for lag in lags if lag is not None), default=0))
        metrics.STREAM_PENDING.set(sum(p for p in pending if p is not None))

    def _record(self, readiness: Readiness) -> None:
        self._readiness = readiness
        self._probed_at = self._clock()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)  # start() follows a first sample (the app's start-up)
            await self.sample()


def _int(value: Any) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None

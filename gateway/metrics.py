"""Every metric the gateway exports, declared once.

Labels are limited to small fixed vocabularies (provider, route kind, outcome,
reason, operation): never a phone id, number, key or anything a caller controls.
With several uvicorn workers, set PROMETHEUS_MULTIPROC_DIR (`gateway serve` does)
and /metrics aggregates every worker's values.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
from bisect import bisect_left
from typing import Any

import redis.exceptions as rx
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from gateway.errors import NotReplicated, Reason
from gateway.providers import Provider
from gateway.providers.registry import CARRIERS, ROUTES

PROVIDERS = tuple(provider.value for provider in CARRIERS)
KINDS = tuple(dict.fromkeys(route.kind for _family, route in ROUTES.values()))
OUTCOMES = ("accepted", "duplicate", "held", "rejected", "unavailable", "too_large", "bad_request", "error")
ANSWER_RESULTS = ("template", "proxied", "timeout", "error", "bad_status", "too_large", "not_configured")
CALL_EVENT_RESULTS = ("held", "released")
MISMATCHES = (
    *("scheme", "port", "host", "query_order", "query_encoding", "form_vs_raw", "trailing_slash", "path_prefix"),
    *("body_newline", "body_json", "body_encoding"),
)

REQUESTS = Counter(
    "requests",
    "Webhook requests by provider, route kind and outcome.",
    ["provider", "kind", "outcome"],
    namespace="gateway",
)
REJECTIONS = Counter(
    "rejections", "Rejected webhook requests by provider and reason.", ["provider", "reason"], namespace="gateway"
)
LATENCY = Histogram(
    "request_duration_seconds",
    "Time from the first byte of the request to the answer, by provider and route kind.",
    ["provider", "kind"],
    namespace="gateway",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
CACHE = Counter("keystore_cache", "Phone credential cache lookups by result.", ["result"], namespace="gateway")
REDIS_ERRORS = Counter(
    "redis_errors", "Redis failures by operation and error class.", ["operation", "error"], namespace="gateway"
)
FORWARDED = Counter("forwarded", "Events appended to the dispatch stream.", ["provider"], namespace="gateway")
DUPLICATES = Counter(
    "duplicates",
    "Authentic deliveries of an already-forwarded event (answered 2xx, not forwarded).",
    ["provider"],
    namespace="gateway",
)
BATCH_SIZE = Histogram(
    "forward_batch_size",
    "Events written per Redis round trip (group commit).",
    namespace="gateway",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
MISMATCH = Counter(
    "signature_mismatch",
    "Failed signatures that would have matched had the URL/body been changed this way (diagnostic only).",
    ["provider", "mismatch"],
    namespace="gateway",
)
ANSWERS = Counter(
    "answers",
    "Answers to `incoming` routes: from a template, proxied from dispatch, or the fallback and why.",
    ["provider", "result"],
    namespace="gateway",
)
DISPATCH_LATENCY = Histogram(
    "dispatch_answer_duration_seconds",
    "Time dispatch took to answer a proxied `incoming` event (capped by GATEWAY_DISPATCH_TIMEOUT_S).",
    namespace="gateway",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0),
)
CALL_EVENTS = Counter(
    "call_aware_events",
    "Call-aware: events held until their call's answer arrived, and held events released into the stream.",
    ["provider", "result"],
    namespace="gateway",
)
UNLISTED_SOURCES = Counter(
    "unlisted_source_requests",
    "Requests refused for their source address that proved their phone's account otherwise (allowlist "
    "discovery: GET /admin/{provider}/sources lists their networks).",
    ["provider"],
    namespace="gateway",
)
UNLISTED_SOURCE_WRITES_SKIPPED = Counter(
    "unlisted_source_writes_skipped",
    "Allowlist discovery records not written because too many writes were already in flight.",
    namespace="gateway",
)
REDIS_UP = Gauge(
    "redis_up", "1 when the last Redis health check succeeded.", namespace="gateway", multiprocess_mode="livemin"
)
PUBSUB_CONNECTED = Gauge(
    "keystore_invalidation_connected",
    "1 while this process is subscribed to key change notifications.",
    namespace="gateway",
    multiprocess_mode="livemin",
)
STREAM_LENGTH = Gauge(
    "stream_length", "Entries in the dispatch stream (sampled).", namespace="gateway", multiprocess_mode="livemax"
)
STREAM_LAG = Gauge(
    "stream_consumer_lag",
    "Entries not yet delivered to the slowest consumer group (sampled; needs Redis >= 7).",
    namespace="gateway",
    multiprocess_mode="livemax",
)
STREAM_PENDING = Gauge(
    "stream_pending",
    "Entries delivered to a consumer group but not yet acknowledged (sampled).",
    namespace="gateway",
    multiprocess_mode="livemax",
)


@functools.lru_cache(maxsize=256)
def request_counter(provider: str, kind: str, outcome: str) -> Any:
    """The labelled child, cached: .labels() costs a lock and a dict build per call."""
    return REQUESTS.labels(provider, kind, outcome)


@functools.lru_cache(maxsize=16)
def forwarded(provider: str) -> Any:
    return FORWARDED.labels(provider)


@functools.lru_cache(maxsize=16)
def duplicates(provider: str) -> Any:
    return DUPLICATES.labels(provider)


@functools.lru_cache(maxsize=128)
def answer_counter(provider: str, result: str) -> Any:
    return ANSWERS.labels(provider, result)


@functools.lru_cache(maxsize=32)
def call_event_counter(provider: str, result: str) -> Any:
    return CALL_EVENTS.labels(provider, result)


@functools.lru_cache(maxsize=64)
def latency(provider: str, kind: str) -> Any:
    return LATENCY.labels(provider, kind)


def preinitialise() -> None:
    """Create every label combination up front so rates start from 0, not from absent."""
    for provider in PROVIDERS:
        for kind in KINDS:
            LATENCY.labels(provider, kind)
            for outcome in OUTCOMES:
                REQUESTS.labels(provider, kind, outcome)
        for reason in Reason:
            REJECTIONS.labels(provider, reason.value)
        FORWARDED.labels(provider)
        DUPLICATES.labels(provider)
        for mismatch in MISMATCHES:
            MISMATCH.labels(provider, mismatch)
        for result in ANSWER_RESULTS:
            ANSWERS.labels(provider, result)
        for result in CALL_EVENT_RESULTS:
            CALL_EVENTS.labels(provider, result)
        if CARRIERS[Provider(provider)].proof_without_source is not None:
            UNLISTED_SOURCES.labels(provider)
    for result in ("hit", "miss", "negative_hit"):
        CACHE.labels(result)


class Tally:
    """Per-request counts and latencies as plain numbers, folded into the Prometheus metrics by `flush()`.

    Each prometheus_client `inc()`/`observe()` takes a lock, and in multiprocess mode also makes a
    getpid() system call and writes an mmap; an accepted request made five of them (measured:
    loadtests/README.md). Here a request adds to a dict; `flush()` runs before every /metrics
    render of this process and every FLUSH_INTERVAL_S in the background (`run_flusher`), so a
    scrape lags the truth by at most that interval, and only for other workers' requests.
    Used from the event loop's thread only, like everything on the request path.
    """

    def __init__(self) -> None:
        self._counts: dict[Any, int] = {}
        # histogram child -> [sum of observations, count in bucket 0, bucket 1, ..., +Inf bucket]
        self._observations: dict[Any, list[float]] = {}

    def count(self, child: Any) -> None:
        counts = self._counts
        counts[child] = counts.get(child, 0) + 1

    def observe(self, child: Any, value: float) -> None:
        entry = self._observations.get(child)
        bounds = child._upper_bounds  # noqa: SLF001 - the same buckets Histogram.observe() walks
        if entry is None:
            entry = self._observations[child] = [0.0] * (len(bounds) + 1)
        entry[0] += value
        entry[1 + bisect_left(bounds, value)] += 1  # observe(): the first bucket whose bound >= value

    def flush(self) -> None:
        counts, self._counts = self._counts, {}
        for child, amount in counts.items():
            child.inc(amount)
        observations, self._observations = self._observations, {}
        for child, entry in observations.items():
            child._sum.inc(entry[0])  # noqa: SLF001 - what Histogram.observe() updates, per bucket
            for bucket, observed in zip(child._buckets, entry[1:], strict=True):  # noqa: SLF001
                if observed:
                    bucket.inc(observed)


TALLY = Tally()
FLUSH_INTERVAL_S = 1.0


async def run_flusher(interval_s: float = FLUSH_INTERVAL_S) -> None:
    """Fold the tally into the metrics every interval until cancelled, then once more."""
    try:
        while True:
            await asyncio.sleep(interval_s)
            TALLY.flush()
    finally:
        with contextlib.suppress(Exception):
            TALLY.flush()


def render() -> tuple[bytes, str]:
    """The /metrics payload; aggregates all workers in multiprocess mode."""
    TALLY.flush()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def retire_process() -> None:
    """A stopping worker drops its live gauges, so a replaced worker's last values do not linger.

    (Counters and histograms stay: their totals remain true after the worker is gone.)
    """
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


def redis_error_class(exc: BaseException) -> str:
    """A fixed label for a Redis exception (never its message, which may echo data)."""
    if isinstance(exc, NotReplicated):
        return "not_replicated"
    if isinstance(exc, rx.ReadOnlyError):
        return "readonly"
    if isinstance(exc, rx.ClusterError | rx.TryAgainError | rx.RedisClusterException):
        return "cluster_down"
    if isinstance(exc, rx.OutOfMemoryError):
        return "oom"
    if isinstance(exc, rx.BusyLoadingError):
        return "loading"
    if isinstance(exc, rx.TimeoutError | TimeoutError):
        return "timeout"
    if isinstance(exc, rx.ConnectionError | ConnectionError | OSError):
        return "connection"
    return "other"

"""The request-path tally folds into exactly what prometheus_client's own inc()/observe() would record."""

from __future__ import annotations

import asyncio
import math

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from gateway import metrics

BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# Every bound exactly (observe() counts a value equal to a bound in that bucket), just either side, and beyond.
BELOW = [math.nextafter(b, 0) for b in BUCKETS]
ABOVE = [math.nextafter(b, 9) for b in BUCKETS]
VALUES = [0.0, 1e-9, *BUCKETS, *BELOW, *ABOVE, 7.5, 1e9]


def pair() -> tuple[tuple[Counter, Histogram], tuple[Counter, Histogram], CollectorRegistry, CollectorRegistry]:
    direct_registry, tallied_registry = CollectorRegistry(), CollectorRegistry()

    def make(registry: CollectorRegistry) -> tuple[Counter, Histogram]:
        counter = Counter("requests", "r", ["provider"], registry=registry)
        histogram = Histogram("latency", "l", ["provider"], buckets=BUCKETS, registry=registry)
        return counter, histogram

    return make(direct_registry), make(tallied_registry), direct_registry, tallied_registry


def exposition(registry: CollectorRegistry) -> list[str]:
    return [line for line in generate_latest(registry).decode().splitlines() if "_created" not in line]


def test_tally_matches_direct_observations() -> None:
    (d_counter, d_hist), (t_counter, t_hist), d_registry, t_registry = pair()
    tally = metrics.Tally()
    for index, value in enumerate(VALUES):
        provider = ("plivo", "telnyx")[index % 2]
        d_counter.labels(provider).inc()
        d_hist.labels(provider).observe(value)
        tally.count(t_counter.labels(provider))
        tally.observe(t_hist.labels(provider), value)
    assert exposition(t_registry) != exposition(d_registry)  # nothing reaches the metrics before a flush
    tally.flush()
    assert exposition(t_registry) == exposition(d_registry)
    tally.flush()  # a second flush adds nothing
    assert exposition(t_registry) == exposition(d_registry)


def test_render_flushes_the_process_tally() -> None:
    child = metrics.FORWARDED.labels("exotel")
    before = child._value.get()
    metrics.TALLY.count(child)
    metrics.TALLY.count(child)
    text = metrics.render()[0].decode()
    assert f'gateway_forwarded_total{{provider="exotel"}} {before + 2}' in text


def test_flusher_folds_periodically_and_when_stopped() -> None:
    child = metrics.DUPLICATES.labels("twilio")

    async def scenario() -> tuple[float, float, float]:
        start = child._value.get()
        task = asyncio.get_running_loop().create_task(metrics.run_flusher(0.05))
        metrics.TALLY.count(child)
        await asyncio.sleep(0.2)
        periodic = child._value.get()
        metrics.TALLY.count(child)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return start, periodic, child._value.get()

    start, periodic, stopped = asyncio.run(scenario())
    assert periodic == start + 1
    assert stopped == start + 2

"""One list of Redis outage errors (gateway/redis_errors.py), and what each caller catches."""

from __future__ import annotations

import asyncio

import redis.exceptions as rx

from gateway import consumer, forwarder, keystore
from gateway.errors import NotReplicated
from gateway.redis_client import ClusterUnavailable
from gateway.redis_errors import OUTAGES, OUTAGES_EXCEPT_OOM


def test_the_outages() -> None:
    assert set(OUTAGES) == {
        rx.ConnectionError,
        rx.TimeoutError,
        rx.ReadOnlyError,
        rx.OutOfMemoryError,
        OSError,
        asyncio.TimeoutError,
        rx.ClusterDownError,
        rx.TryAgainError,
        rx.SlotNotCoveredError,
    }
    assert issubclass(ClusterUnavailable, OUTAGES)  # an unreachable cluster is an outage, not a 500


def test_the_consumer_waits_out_every_outage_but_oom() -> None:
    assert set(consumer.TRANSIENT) == set(OUTAGES_EXCEPT_OOM) == set(OUTAGES) - {rx.OutOfMemoryError}
    assert not issubclass(rx.OutOfMemoryError, consumer.TRANSIENT)


def test_the_forwarder_also_answers_503_when_replicas_do_not_confirm() -> None:
    assert set(forwarder.OUTAGE_OR_NOT_REPLICATED) == {*OUTAGES, NotReplicated}
    assert keystore.OUTAGES is OUTAGES

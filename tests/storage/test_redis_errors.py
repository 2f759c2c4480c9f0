"""One list of Redis outage errors (gateway/redis_errors.py), and what each caller catches."""

from __future__ import annotations

import asyncio

import pytest
import redis.exceptions as rx

from gateway import admin, consumer, forwarder, keystore, metrics
from gateway.errors import NotReplicated
from gateway.redis_client import ClusterUnavailable
from gateway.redis_errors import OUTAGES, OUTAGES_EXCEPT_OOM, REDIS_FAILURES


def test_the_outages() -> None:
    assert set(OUTAGES) == {
        rx.ConnectionError,
        rx.TimeoutError,
        rx.ReadOnlyError,
        rx.OutOfMemoryError,
        OSError,
        asyncio.TimeoutError,
        rx.ClusterError,
        rx.TryAgainError,
        rx.RedisClusterException,
    }
    assert issubclass(ClusterUnavailable, OUTAGES)  # an unreachable cluster is an outage, not a 500


@pytest.mark.parametrize(
    "error",
    [
        rx.ClusterDownError("CLUSTERDOWN The cluster is down"),
        rx.MasterDownError("MASTERDOWN Link with MASTER is down"),
        rx.ClusterError("TTL exhausted."),  # redis-py after too many MOVED/ASK/TRYAGAIN in a failover
        rx.TryAgainError("TRYAGAIN"),
        rx.SlotNotCoveredError('Slot "5" is not covered by the cluster.'),
        rx.RedisClusterException("startup_nodes could not agree on a valid slots cache"),
    ],
    ids=lambda error: type(error).__name__,
)
def test_a_cluster_re_forming_is_an_outage_with_a_fixed_label(error: Exception) -> None:
    assert isinstance(error, OUTAGES)
    assert metrics.redis_error_class(error) == "cluster_down"


def test_a_script_error_is_not_an_outage() -> None:
    assert not isinstance(rx.ResponseError("ERR Error running script"), OUTAGES)
    assert not isinstance(rx.ClusterCrossSlotError("CROSSSLOT"), OUTAGES)


def test_the_consumer_waits_out_every_outage_but_oom() -> None:
    assert set(consumer.TRANSIENT) == set(OUTAGES_EXCEPT_OOM) == set(OUTAGES) - {rx.OutOfMemoryError}
    assert not issubclass(rx.OutOfMemoryError, consumer.TRANSIENT)


def test_the_forwarder_also_answers_503_when_replicas_do_not_confirm() -> None:
    assert set(forwarder.OUTAGE_OR_NOT_REPLICATED) == {*OUTAGES, NotReplicated}
    assert vars(keystore)["OUTAGES"] is OUTAGES  # keystore imports it, and does not re-export it


def test_the_admin_api_answers_503_to_every_redis_failure() -> None:
    assert vars(admin)["REDIS_FAILURES"] is REDIS_FAILURES  # what it catches
    for error in (
        rx.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
        rx.RedisClusterException("Redis Cluster cannot be connected"),
        ConnectionRefusedError(),
        TimeoutError(),
    ):
        assert isinstance(error, REDIS_FAILURES), error

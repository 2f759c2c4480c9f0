"""The Redis errors that mean an outage (answer 503 so the carrier retries, or wait and retry),
as opposed to bugs such as a script error: one list for every caller.

Imports only redis.exceptions: the key store, the forwarder and the stream consumer use it
without opening a client.
"""

from __future__ import annotations

import redis.exceptions as rx

# Cannot confirm a write now.
OUTAGES: tuple[type[BaseException], ...] = (
    rx.ConnectionError,
    rx.TimeoutError,
    rx.ReadOnlyError,
    rx.OutOfMemoryError,
    OSError,
    TimeoutError,  # asyncio.TimeoutError is this class since Python 3.11
    # Redis Cluster re-forming (not connection errors in redis-py): CLUSTERDOWN and MASTERDOWN
    # (ClusterDownError), a redirection loop ("TTL exhausted.": ClusterError), TRYAGAIN, and
    # RedisClusterException, not even a RedisError: a slot no node serves (SlotNotCoveredError),
    # seeds that disagree on the slot map or cannot be reached while it is refreshed.
    rx.ClusterError,
    rx.TryAgainError,
    rx.RedisClusterException,
)

# Every outage but a full server (OOM): what the reference stream consumer waits out
# (gateway/consumer.py). An OOM reply is not among them and stops `gateway consume`,
# as it always has.
OUTAGES_EXCEPT_OOM: tuple[type[BaseException], ...] = tuple(e for e in OUTAGES if e is not rx.OutOfMemoryError)

# Any failure of a Redis call, outage or error reply (WRONGTYPE on a hand-written key...): what
# the admin API answers 503 "redis unavailable" to, never a 500.
REDIS_FAILURES: tuple[type[BaseException], ...] = (rx.RedisError, *OUTAGES)

"""A key-change subscription that drops and comes back must clear the caches (notifications may
have been missed), including when redis-py re-establishes it by itself without telling anyone."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis

from gateway.keystore import KeyStore
from gateway.redis_client import connect
from gateway.redis_keys import KeyNames
from gateway.sealing import Sealer
from tests.helpers.support import make_settings

pytestmark = pytest.mark.anyio
NAMES = KeyNames()
BODY = {"provider": "plivo", "credentials": {"auth_id": "MAEXAMPLE000000000", "auth_token": "T" * 32}}


async def test_a_dropped_subscription_clears_the_cache(redis_url: str, redis_sync: redis.Redis) -> None:
    client = connect(make_settings(redis_url))  # the gateway's own client: one transparent retry
    store = KeyStore(client, Sealer(b"k" * 32), NAMES, cache_ttl_s=60, negative_ttl_s=60)
    store.start_invalidation()
    try:
        await asyncio.wait_for(store.subscribed.wait(), 5)
        await store.put("ph_1", BODY)
        await asyncio.sleep(0.3)  # its own change notification comes back and drops the entry: let it
        assert await store.credentials("ph_1") is not None  # cached for 60 s
        redis_sync.delete(NAMES.phone("ph_1"))  # behind its back: no notification
        assert await store.credentials("ph_1") is not None  # still cached
        redis_sync.client_kill_filter(_type="pubsub")  # the subscription drops (a restart, a failover)
        deadline = time.monotonic() + 5
        while await store.credentials("ph_1") is not None:
            assert time.monotonic() < deadline, "the cache survived a dropped subscription"
            await asyncio.sleep(0.05)
    finally:
        await store.stop_invalidation()
        await client.aclose()

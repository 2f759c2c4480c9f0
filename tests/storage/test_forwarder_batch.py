"""The forwarder writes a whole batch with one script call; each event still gets its own outcome."""

from __future__ import annotations

import asyncio
from typing import cast

import redis
from redis.asyncio import Redis

from gateway.embedded_redis import EmbeddedRedis
from gateway.errors import Unavailable
from gateway.forwarder import Forwarder, Outcome, _Pending
from gateway.redis_keys import KeyNames
from tests.helpers.replies import stream_entries

NAMES = KeyNames(prefix="gwtest", stream="gwtest:events")

Items = list[tuple[str, bytes, str | None, str | None]]  # (phone id, event, nonce, idempotency key) each
Reply = tuple[Outcome, str]  # (outcome, entry id): what a forwarded event's future holds


async def _flush_one_batch(url: str, items: Items) -> list[Reply | Unavailable]:
    client = Redis.from_url(url)
    try:
        forwarder = Forwarder(client, NAMES, nonce_ttl_s=60, idempotency_ttl_s=60)
        loop = asyncio.get_running_loop()
        batch = [_Pending(phone, event, nonce, key, loop.create_future()) for phone, event, nonce, key in items]
        await forwarder._flush(batch)  # exactly one batch, in this order
        results: list[Reply | Unavailable] = []
        for item in batch:
            try:
                results.append(item.future.result())
            except Unavailable as exc:
                results.append(exc)
        return results
    finally:
        await client.aclose()


async def _flush_one_batch_replies(url: str, items: Items) -> list[Reply]:
    """`_flush_one_batch` of a batch Redis takes: every item has its reply, none is Unavailable."""
    return cast("list[Reply]", await _flush_one_batch(url, items))


def test_each_event_of_a_batch_gets_its_own_outcome(redis_url: str, redis_sync: redis.Redis) -> None:
    results = asyncio.run(
        _flush_one_batch_replies(
            redis_url,
            [
                ("ph_a", b"first", "n1", "k1"),
                ("ph_a", b"replayed nonce", "n1", "k9"),  # same phone, same nonce: replay
                ("ph_a", b"same event again", "n2", "k1"),  # new nonce, same idempotency key: duplicate
                ("ph_b", b"other phone, same nonce", "n1", "k1"),  # keys are per phone
                ("ph_a", b"no nonce, no key", None, None),
                ("ph_a", b"key only", None, "k2"),
            ],
        )
    )
    outcomes = [r[0] for r in results]
    assert outcomes == [
        Outcome.FORWARDED,
        Outcome.REPLAY,
        Outcome.DUPLICATE,
        Outcome.FORWARDED,
        Outcome.FORWARDED,
        Outcome.FORWARDED,
    ]
    first_id = results[0][1]
    assert results[2][1] == first_id  # a duplicate names the entry already forwarded
    entries = stream_entries(redis_sync.xrange(NAMES.stream))
    assert [fields[b"event"] for _id, fields in entries] == [
        b"first",
        b"other phone, same nonce",
        b"no nonce, no key",
        b"key only",
    ]
    assert entries[0][0].decode() == first_id
    # The replayed event left nothing behind: its idempotency key was never recorded.
    assert redis_sync.get(NAMES.idempotency("ph_a", "k9")) is None


def test_an_event_that_cannot_be_written_is_unavailable_and_leaves_nothing(private_redis: EmbeddedRedis) -> None:
    control = redis.Redis.from_url(private_redis.url)
    try:
        control.config_set("maxmemory", "1")
        control.config_set("maxmemory-policy", "noeviction")
        results = asyncio.run(
            _flush_one_batch(private_redis.url, [("ph_a", b"e1", "n1", "k1"), ("ph_a", b"e2", "n2", "k2")])
        )
        assert all(isinstance(r, Unavailable) for r in results)
        control.config_set("maxmemory", "0")
        assert control.xlen(NAMES.stream) == 0
        assert control.exists(NAMES.nonce("ph_a", "n1"), NAMES.idempotency("ph_a", "k1")) == 0
        # Nothing was recorded, so the carrier's retry goes through.
        again = asyncio.run(_flush_one_batch_replies(private_redis.url, [("ph_a", b"e1", "n1", "k1")]))
        assert again[0][0] is Outcome.FORWARDED
    finally:
        control.close()

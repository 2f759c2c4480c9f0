"""Per-phone credentials in Redis, read through a bounded in-process cache.

Writers (admin API, CLI) publish the phone id on a channel after each change;
every process subscribed drops its cached entry, so a deleted or rotated key
stops verifying within a second. When the subscription drops, the whole cache
is cleared on reconnect (a notification may have been missed) and the short TTL
bounds staleness meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Callable
from typing import Any

import orjson
from redis.asyncio import Redis

from gateway import metrics
from gateway.cache import TTLCache
from gateway.errors import GatewayError, Unavailable
from gateway.phone_records import (
    InvalidRecord,
    build_record,
    public_view,
    reseal_record,
    to_credentials,
    validate_phone_id,
)
from gateway.providers import PhoneCredentials
from gateway.redis_errors import OUTAGES
from gateway.redis_keys import KeyNames
from gateway.sealing import Sealer, SealError
from gateway.tasks import stop_task

log = logging.getLogger("gateway.keystore")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


_COMPARE_AND_SET = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('SET', KEYS[1], ARGV[2]) return 1 end
return 0
"""

_HIT = metrics.CACHE.labels("hit")
_NEGATIVE_HIT = metrics.CACHE.labels("negative_hit")
_MISS = metrics.CACHE.labels("miss")


class NotCached(enum.Enum):
    NOT_CACHED = "not cached"


NOT_CACHED = NotCached.NOT_CACHED


class Conflict(GatewayError):
    """A config.number is already registered to another phone."""


class KeyStore:
    def __init__(
        self,
        redis: Redis,
        sealer: Sealer,
        names: KeyNames,
        *,
        cache_ttl_s: float = 5.0,
        negative_ttl_s: float = 1.0,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = redis
        self._sealer = sealer
        self._names = names
        self._clock = clock
        self._cache: TTLCache[PhoneCredentials] = TTLCache(max_entries, cache_ttl_s, negative_ttl_s)
        # Unknown ids live apart, so a flood of random ids cannot evict real phones.
        self._absent: TTLCache[PhoneCredentials] = TTLCache(max_entries, cache_ttl_s, negative_ttl_s)
        self._numbers: TTLCache[str] = TTLCache(max_entries, cache_ttl_s, negative_ttl_s)
        self._inflight: dict[str, asyncio.Future[PhoneCredentials | None]] = {}
        # Bumped by every invalidation: a load that raced with one must not cache its (stale) result.
        self._epoch = 0
        self._subscriber: asyncio.Task[None] | None = None
        self.subscribed = asyncio.Event()

    # ---- request path -------------------------------------------------

    def cached(self, phone_id: str) -> PhoneCredentials | None | NotCached:
        """The cached answer of `credentials()` without awaiting (the request path's usual case), or NOT_CACHED."""
        found, creds = self._cache.get(phone_id)
        if found:
            metrics.TALLY.count(_HIT)
            return creds
        return NOT_CACHED

    async def credentials(self, phone_id: str) -> PhoneCredentials | None:
        """The phone's unsealed credentials, or None when it does not exist."""
        cached = self.cached(phone_id)
        if cached is not NOT_CACHED:
            return cached
        found, _ = self._absent.get(phone_id)
        if found:
            metrics.TALLY.count(_NEGATIVE_HIT)
            return None
        _MISS.inc()
        pending = self._inflight.get(phone_id)
        if pending is not None:  # single flight: one Redis read per phone however many requests wait
            return await asyncio.shield(pending)
        future: asyncio.Future[PhoneCredentials | None] = asyncio.get_running_loop().create_future()
        self._inflight[phone_id] = future
        epoch = self._epoch
        try:
            creds = await self._load(phone_id)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters re-raise it themselves
            raise
        else:
            future.set_result(creds)
            if epoch == self._epoch:
                (self._cache if creds is not None else self._absent).put(phone_id, creds)
            return creds
        finally:
            self._inflight.pop(phone_id, None)

    async def _load(self, phone_id: str) -> PhoneCredentials | None:
        try:
            validate_phone_id(phone_id)
        except InvalidRecord:
            return None
        try:
            raw = await self._redis.get(self._names.phone(phone_id))
        except OUTAGES as exc:
            metrics.REDIS_ERRORS.labels("keystore", metrics.redis_error_class(exc)).inc()
            raise Unavailable("redis") from None
        if raw is None:
            return None
        try:
            return to_credentials(orjson.loads(raw), self._sealer, self._clock())
        except SealError as exc:
            # Misconfiguration (wrong KEK), not an attack: fail closed and tell the operator.
            log.error("phone record cannot be unsealed: %s", exc, extra={"phone_id": phone_id})
            return None

    async def phone_for_number(self, number: str) -> str | None:
        found, phone_id = self._numbers.get(number)
        if found:
            return phone_id
        try:
            raw = await self._redis.get(self._names.number(number))
        except OUTAGES as exc:
            metrics.REDIS_ERRORS.labels("keystore", metrics.redis_error_class(exc)).inc()
            raise Unavailable("redis") from None
        phone_id = _text(raw) if raw is not None else None
        self._numbers.put(number, phone_id)
        return phone_id

    def forget(self, phone_id: str) -> None:
        self._epoch += 1
        self._cache.discard(phone_id)
        self._absent.discard(phone_id)

    # ---- admin --------------------------------------------------------

    async def get_record(self, phone_id: str) -> dict[str, Any] | None:
        raw = await self._redis.get(self._names.phone(phone_id))
        return orjson.loads(raw) if raw is not None else None

    async def put(self, phone_id: str, body: Any) -> dict[str, Any]:
        """Create or replace a phone; returns its public view. Raises InvalidRecord or Conflict."""
        validate_phone_id(phone_id)
        previous = await self.get_record(phone_id)
        record = build_record(phone_id, body, self._sealer, previous, self._clock())
        number = record["config"].get("number")
        old_number = (previous or {}).get("config", {}).get("number")
        if number is not None:
            # Claim the number atomically (SET NX): two concurrent PUTs cannot both own it.
            key = self._names.number(number)
            if not await self._redis.set(key, phone_id, nx=True):
                owner = await self._redis.get(key)
                if owner is not None and _text(owner) != phone_id:
                    raise Conflict(f"config.number is already registered to phone {_text(owner)!r}")
                await self._redis.set(key, phone_id)  # the owner vanished meanwhile, or it is ours
        pipe = self._redis.pipeline(transaction=False)
        pipe.set(self._names.phone(phone_id), orjson.dumps(record))
        pipe.sadd(self._names.phone_index, phone_id)
        await pipe.execute()
        if old_number and old_number != number:
            await self._delete_number_if_owned(old_number, phone_id)
        await self._announce(phone_id, number, old_number)
        return public_view(record)

    async def get(self, phone_id: str) -> dict[str, Any] | None:
        record = await self.get_record(phone_id)
        return public_view(record) if record is not None else None

    async def list(self) -> list[dict[str, Any]]:
        ids = sorted(_text(m) for m in await self._redis.smembers(self._names.phone_index))
        views: list[dict[str, Any]] = []
        for chunk_start in range(0, len(ids), 500):
            chunk = ids[chunk_start : chunk_start + 500]
            # Per-key GETs in one pipeline, not MGET: phone records live in every slot of a Redis
            # Cluster (a cluster pipeline sends each node its own keys); one round trip elsewhere.
            pipe = self._redis.pipeline(transaction=False)
            for phone_id in chunk:
                pipe.get(self._names.phone(phone_id))
            raws = await pipe.execute()
            views.extend(public_view(orjson.loads(raw)) for raw in raws if raw is not None)
        return views

    async def reseal(self) -> dict[str, Any]:
        """Re-seal every phone's secrets under the current GATEWAY_KEK (after a KEK rotation).

        Each record is replaced only if it did not change meanwhile (compare-and-set), so a
        concurrent admin PUT is never overwritten with older data; run it again to pick those up.
        """
        ids = sorted(_text(m) for m in await self._redis.smembers(self._names.phone_index))
        report: dict[str, Any] = {"resealed": 0, "unchanged": 0, "failed": [], "raced": []}
        for phone_id in ids:
            key = self._names.phone(phone_id)
            raw = await self._redis.get(key)
            if raw is None:
                continue
            try:
                updated = reseal_record(orjson.loads(raw), self._sealer)
            except SealError:
                report["failed"].append(phone_id)  # opens under no configured KEK: left as it is
                continue
            if updated is None:
                report["unchanged"] += 1
                continue
            swapped = await self._redis.eval(_COMPARE_AND_SET, 1, key, raw, orjson.dumps(updated))
            if swapped:
                report["resealed"] += 1
                await self._announce(phone_id)
            else:
                report["raced"].append(phone_id)
        return report

    async def delete(self, phone_id: str) -> bool:
        previous = await self.get_record(phone_id)
        if previous is None:
            return False
        pipe = self._redis.pipeline(transaction=False)
        pipe.delete(self._names.phone(phone_id))
        pipe.srem(self._names.phone_index, phone_id)
        await pipe.execute()
        number = previous.get("config", {}).get("number")
        if number:
            await self._delete_number_if_owned(number, phone_id)
        await self._announce(phone_id, None, number)
        return True

    async def _delete_number_if_owned(self, number: str, phone_id: str) -> None:
        key = self._names.number(number)
        owner = await self._redis.get(key)
        if owner is not None and _text(owner) == phone_id:
            await self._redis.delete(key)

    async def _announce(self, phone_id: str, *numbers: str | None) -> None:
        self.forget(phone_id)
        for number in numbers:
            if number:
                self._numbers.discard(number)
        message = orjson.dumps({"phone_id": phone_id, "numbers": [n for n in numbers if n]})
        await self._redis.publish(self._names.changes_channel, message)

    # ---- invalidation subscriber -------------------------------------------

    def start_invalidation(self) -> None:
        self._subscriber = asyncio.create_task(self._subscribe_forever(), name="keystore-invalidation")

    async def stop_invalidation(self) -> None:
        await stop_task(self._subscriber)
        self._subscriber = None

    def _on_message(self, data: bytes) -> None:
        try:
            message = orjson.loads(data)
            self.forget(str(message["phone_id"]))
            for number in message.get("numbers", []):
                self._numbers.discard(str(number))
        except (orjson.JSONDecodeError, KeyError, TypeError):
            self._epoch += 1
            self._cache.clear()
            self._absent.clear()
            self._numbers.clear()

    def _on_resubscribed(self, _connection: Any) -> None:
        """redis-py re-established the subscription by itself (its one retry, or a Sentinel
        failover moving every connection): notifications may have been missed meanwhile."""
        self._epoch += 1
        self._cache.clear()
        self._absent.clear()
        self._numbers.clear()
        log.info("key change subscription re-established; caches cleared")

    async def _subscribe_forever(self) -> None:
        backoff = 0.1
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            connection: Any = None
            try:
                await pubsub.subscribe(self._names.changes_channel)
                connection = getattr(pubsub, "connection", None)
                if connection is not None:  # a transparent reconnect must clear the caches too
                    connection.register_connect_callback(self._on_resubscribed)
                # Anything cached may have changed while we were not listening.
                self._epoch += 1
                self._cache.clear()
                self._absent.clear()
                self._numbers.clear()
                self.subscribed.set()
                metrics.PUBSUB_CONNECTED.set(1)
                backoff = 0.1
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        self._on_message(message["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any Redis failure: reconnect with backoff
                metrics.REDIS_ERRORS.labels("pubsub", metrics.redis_error_class(exc)).inc()
                log.warning("key change subscription lost (%s); retrying", type(exc).__name__)
            finally:
                self.subscribed.clear()
                metrics.PUBSUB_CONNECTED.set(0)
                if connection is not None:  # it goes back to the pool: plain commands from now on
                    connection.deregister_connect_callback(self._on_resubscribed)
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

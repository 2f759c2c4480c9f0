"""Per-phone credentials in Redis, read through a bounded in-process cache.

Writers (admin API, CLI) publish the phone id on a channel after each change;
every process subscribed drops its cached entry, so a deleted or rotated key
stops verifying within a second. When the subscription drops, the whole cache
is cleared on reconnect (a notification may have been missed) and the short TTL
bounds staleness meanwhile.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import enum
import logging
import time
from collections.abc import Callable
from typing import Any, cast

import orjson
import redis.exceptions as rx
from redis.asyncio import Redis

from gateway import metrics
from gateway.cache import TTLCache
from gateway.errors import GatewayError, Unavailable
from gateway.phone_records import (
    E164_RE,
    CorruptRecord,
    InvalidRecord,
    build_record,
    public_view,
    reseal_record,
    stored_record,
    to_credentials,
    validate_phone_id,
)
from gateway.providers import PhoneCredentials
from gateway.random_ids import new_key
from gateway.redis_errors import OUTAGES
from gateway.redis_keys import KeyNames
from gateway.sealing import Sealer, SealError
from gateway.secrets import FINGERPRINT_KEY_BYTES
from gateway.tasks import stop_task

log = logging.getLogger("gateway.keystore")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class _WrongType:
    """A request-path key holding another type than the admin API writes (a hand-written hash, a list)."""


_WRONG_TYPE = _WrongType()


def _number_of(raw: bytes | str) -> str | None:
    """config.number of a stored record that is otherwise invalid, if it has a readable one."""
    try:
        record = orjson.loads(raw)
        number = record["config"]["number"]
    except (orjson.JSONDecodeError, KeyError, TypeError, IndexError):
        return None
    return number if isinstance(number, str) and E164_RE.fullmatch(number) else None


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


class FingerprintKeyError(GatewayError, ValueError):
    """The stored fingerprint key does not open under any configured KEK (a ValueError: the CLI reports it)."""


# The fingerprint key is sealed like a phone's secret, bound to this name: it can never be a phone
# id (ids start with a letter or digit), so no phone's sealed value opens as the key, or vice versa.
FINGERPRINT_KEY_OWNER = "#fingerprint-key"

# Bounds in bytes as well as entries (items 6 of issue 14): a phone's answer templates can be
# 32 KiB, and unknown ids are unauthenticated input.
CACHE_MAX_BYTES = 64 * 1024 * 1024
NEGATIVE_CACHE_MAX_BYTES = 4 * 1024 * 1024


def _credentials_size(phone_id: str, creds: PhoneCredentials | None) -> int:
    """About what a cached phone holds in memory (key material, fingerprints, config)."""
    size = len(phone_id) + 300
    if creds is not None:
        size += len(orjson.dumps(creds.config, default=str))
        size += sum(len(k.material) + len(k.fingerprint) + 300 for keys in creds.keys.values() for k in keys)
    return size


def _text_size(key: str, value: str | None) -> int:
    return len(key) + len(value or "") + 200


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
        max_bytes: int = CACHE_MAX_BYTES,
        negative_max_bytes: int = NEGATIVE_CACHE_MAX_BYTES,
    ) -> None:
        self._redis = redis
        self._sealer = sealer
        self._names = names
        self._clock = clock
        self._cache: TTLCache[PhoneCredentials] = TTLCache(
            max_entries, cache_ttl_s, negative_ttl_s, max_bytes=max_bytes, weigh=_credentials_size
        )
        # Unknown ids live apart, so a flood of random ids cannot evict real phones. Only ids that
        # pass validate_phone_id are ever cached (at most 128 characters).
        self._absent: TTLCache[PhoneCredentials] = TTLCache(
            max_entries, cache_ttl_s, negative_ttl_s, max_bytes=negative_max_bytes, weigh=_credentials_size
        )
        # Only E.164 numbers (at most 16 characters) are looked up or cached.
        self._numbers: TTLCache[str] = TTLCache(
            max_entries, cache_ttl_s, negative_ttl_s, max_bytes=negative_max_bytes, weigh=_text_size
        )
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
        try:
            validate_phone_id(phone_id)
        except InvalidRecord:
            # No phone can have this id: nothing to look up, and nothing of it is kept (not even
            # as "absent": an unauthenticated id of any length would otherwise pin memory).
            return None
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
        raw = await self._read(self._names.phone(phone_id))
        if isinstance(raw, _WrongType):  # fail closed like any invalid record, answered exactly as an unknown phone
            log.error("phone record is unreadable (WRONGTYPE); refusing its webhooks", extra={"phone_id": phone_id})
            return None
        if raw is None:
            return None
        try:
            return to_credentials(stored_record(phone_id, raw), self._sealer, self._clock())
        except CorruptRecord as exc:
            # Not a record the admin API wrote for this id (hand-edited, truncated, copied from another
            # phone's key): fail closed, answered exactly as an unknown phone, and tell the operator.
            log.error("phone record is invalid (%s); refusing its webhooks", exc, extra={"phone_id": phone_id})
            return None
        except SealError as exc:
            # Misconfiguration (wrong KEK), not an attack: fail closed and tell the operator.
            log.error("phone record cannot be unsealed: %s", exc, extra={"phone_id": phone_id})
            return None

    async def phone_for_number(self, number: str) -> str | None:
        if not E164_RE.fullmatch(number):
            return None  # no phone can have it (config.number is E.164): not looked up, not cached
        found, phone_id = self._numbers.get(number)
        if found:
            return phone_id
        raw = await self._read(self._names.number(number))
        if isinstance(raw, _WrongType):
            log.error("number index entry is unreadable (WRONGTYPE); no phone answers for it")
            return None
        phone_id = _text(raw) if raw is not None else None
        self._numbers.put(number, phone_id)
        return phone_id

    async def _read(self, key: str) -> bytes | str | None | _WrongType:
        """GET for the request path. Unavailable (503, the carrier retries) on an outage or on any
        other error reply (NOPERM from an ACL...: the server's problem, not the phone's); _WRONG_TYPE
        for a key of another type. Logged and counted with the error's class only, never its text."""
        try:
            raw: bytes | str | None = await self._redis.get(key)
            return raw
        except OUTAGES as exc:
            metrics.REDIS_ERRORS.labels("keystore", metrics.redis_error_class(exc)).inc()
            raise Unavailable("redis") from None
        except rx.ResponseError as exc:
            if str(exc).startswith("WRONGTYPE"):
                return _WRONG_TYPE
            log.error("Redis refused a key store read (%s)", type(exc).__name__)
            metrics.REDIS_ERRORS.labels("keystore", metrics.redis_error_class(exc)).inc()
            raise Unavailable("redis") from None

    def cache_usage(self) -> dict[str, tuple[int, int]]:
        """(entries, bytes) of each in-process cache: phones, absent (unknown ids), numbers."""
        return {
            "phones": (len(self._cache), self._cache.size_bytes),
            "absent": (len(self._absent), self._absent.size_bytes),
            "numbers": (len(self._numbers), self._numbers.size_bytes),
        }

    def forget(self, phone_id: str) -> None:
        self._epoch += 1
        self._cache.discard(phone_id)
        self._absent.discard(phone_id)

    # ---- admin --------------------------------------------------------

    async def get_record(self, phone_id: str) -> dict[str, Any] | None:
        """The stored record, or None. Raises CorruptRecord for a record that is not valid for this id."""
        raw = await self._redis.get(self._names.phone(phone_id))
        return stored_record(phone_id, raw) if raw is not None else None

    async def _previous(self, phone_id: str) -> tuple[bool, dict[str, Any] | None, str | None]:
        """(exists, the valid record or None, its config.number) — an invalid record is replaced or
        deleted like any other (that is how an operator repairs it), its number read if it can be."""
        raw = await self._redis.get(self._names.phone(phone_id))
        if raw is None:
            return False, None, None
        try:
            record = stored_record(phone_id, raw)
        except CorruptRecord:
            return True, None, _number_of(raw)
        number = record.get("config", {}).get("number")
        return True, record, number if isinstance(number, str) else None

    async def exists(self, phone_id: str) -> bool:
        return bool(await self._redis.exists(self._names.phone(phone_id)))

    async def fingerprint_key(self) -> bytes:
        """The deployment's fingerprint key: created once (SET NX, sealed under GATEWAY_KEK), then read.

        Read on each admin write rather than kept: every process and the CLI use the stored one.
        """
        name = self._names.fingerprint_key
        raw = await self._redis.get(name)
        if raw is None:
            fresh = self._sealer.seal(FINGERPRINT_KEY_OWNER, new_key(FINGERPRINT_KEY_BYTES))
            await self._redis.set(name, fresh, nx=True)
            raw = await self._redis.get(name)
            if raw is None:  # deleted between the two commands: use ours, the next write stores it again
                raw = fresh
        return self._open_fingerprint_key(_text(raw))

    def _open_fingerprint_key(self, sealed: str) -> bytes:
        try:
            key = base64.b64decode(self._sealer.open(FINGERPRINT_KEY_OWNER, sealed), validate=True)
        except SealError as exc:
            raise FingerprintKeyError(
                f"the fingerprint key ({self._names.fingerprint_key}) cannot be opened: {exc}"
            ) from None
        except (binascii.Error, ValueError):
            raise FingerprintKeyError("the fingerprint key is not base64") from None
        if len(key) != FINGERPRINT_KEY_BYTES:
            raise FingerprintKeyError("the fingerprint key is not 32 bytes")
        return key

    async def put(self, phone_id: str, body: Any) -> dict[str, Any]:
        """Create or replace a phone; returns its public view. Raises InvalidRecord or Conflict."""
        validate_phone_id(phone_id)
        _, previous, old_number = await self._previous(phone_id)
        record = build_record(phone_id, body, self._sealer, previous, self._clock(), await self.fingerprint_key())
        number = record["config"].get("number")
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
        """The public view, or None. Raises CorruptRecord for an invalid stored record."""
        record = await self.get_record(phone_id)
        return public_view(record) if record is not None else None

    async def list(self) -> list[dict[str, Any]]:
        """Every valid phone's public view (invalid records skipped: `listing` reports them)."""
        return list((await self.listing())["phones"])

    async def listing(self) -> dict[str, Any]:
        """{"phones": [public views], "invalid": [ids whose stored record is invalid]}."""
        ids = sorted(_text(m) for m in await self._redis.smembers(self._names.phone_index))
        views: list[dict[str, Any]] = []
        invalid: list[str] = []
        for chunk_start in range(0, len(ids), 500):
            chunk = ids[chunk_start : chunk_start + 500]
            # Per-key GETs in one pipeline, not MGET: phone records live in every slot of a Redis
            # Cluster (a cluster pipeline sends each node its own keys); one round trip elsewhere.
            pipe = self._redis.pipeline(transaction=False)
            for phone_id in chunk:
                pipe.get(self._names.phone(phone_id))
            raws = await pipe.execute()
            for phone_id, raw in zip(chunk, raws, strict=True):
                if raw is None:
                    continue
                try:
                    views.append(public_view(stored_record(phone_id, raw)))
                except CorruptRecord:
                    invalid.append(phone_id)
        return {"phones": views, "invalid": invalid}

    async def reseal(self) -> dict[str, Any]:
        """Re-seal every phone's secrets under the current GATEWAY_KEK (after a KEK rotation), and
        recompute every fingerprint under the current fingerprint key.

        Each record is replaced only if it did not change meanwhile (compare-and-set), so a
        concurrent admin PUT is never overwritten with older data; run it again to pick those up.
        Invalid stored records are left as they are and listed under "invalid" (only when any).
        """
        report: dict[str, Any] = {"resealed": 0, "unchanged": 0, "failed": [], "raced": []}
        try:
            fingerprint_key: bytes | None = await self._reseal_fingerprint_key()
        except FingerprintKeyError:
            # Opens under no configured KEK: reported like a phone that cannot be opened; the phones'
            # secrets are still re-sealed, their fingerprints left as they are.
            fingerprint_key = None
            report["failed"].append(FINGERPRINT_KEY_OWNER)
        ids = sorted(_text(m) for m in await self._redis.smembers(self._names.phone_index))
        invalid: list[str] = []
        for phone_id in ids:
            key = self._names.phone(phone_id)
            raw = await self._redis.get(key)
            if raw is None:
                continue
            try:
                updated = reseal_record(stored_record(phone_id, raw), self._sealer, fingerprint_key)
            except CorruptRecord:
                invalid.append(phone_id)
                continue
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
        if invalid:
            report["invalid"] = invalid
        return report

    async def _reseal_fingerprint_key(self) -> bytes:
        """The fingerprint key, re-sealed under the current KEK first if an older one sealed it."""
        key = await self.fingerprint_key()
        name = self._names.fingerprint_key
        raw = await self._redis.get(name)
        if raw is not None and self._sealer.needs_reseal(_text(raw)):
            resealed = self._sealer.seal(FINGERPRINT_KEY_OWNER, base64.b64encode(key).decode())
            await self._redis.eval(_COMPARE_AND_SET, 1, name, raw, resealed)
        return key

    async def delete(self, phone_id: str) -> bool:
        existed, _, number = await self._previous(phone_id)
        if not existed:
            return False
        pipe = self._redis.pipeline(transaction=False)
        pipe.delete(self._names.phone(phone_id))
        pipe.srem(self._names.phone_index, phone_id)
        await pipe.execute()
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
                    await cast(Any, pubsub).aclose()  # typed in some redis-py releases only
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

"""Reference dispatch consumer: reads the event stream with a consumer group, at least once.

    consumer = Consumer(redis, "gateway:events", "dispatch", "worker-1", handler, max_deliveries=5)
    await consumer.run()          # until stop(); or `await consumer.run_once()` for one round

One round (`run_once`):
  1. the first round only: this consumer's own pending entries (delivered to it before
     a restart and never acknowledged) — XREADGROUP with id 0;
  2. XAUTOCLAIM: entries pending for longer than `claim_idle_ms` with ANY consumer of the
     group — a dead consumer's, or this one's own failures — move to this consumer;
  3. XREADGROUP `>`: new entries, blocking up to `block_ms` when there is nothing else.
Each entry goes to the handler. Success → XACK. Failure (the handler raises) → left
pending, delivered again by step 2 once idle for `claim_idle_ms`; after `max_deliveries`
deliveries it is copied to the dead-letter stream `<stream>:dead` and then acknowledged.
An entry that cannot be decoded goes to the dead-letter stream at once. An entry already
delivered more than `max_deliveries` times when claimed (it crashed consumers before the
handler could fail cleanly) is dead-lettered without running the handler again.

Delivery is at least once: an entry handled just before a crash, and not yet
acknowledged, is handled again. Receivers de-duplicate on the event's idempotency key
(the POST handler's `webhook-id`). The group is created at the start of the stream
(MKSTREAM, id 0) when missing, so events accepted before the first consumer ran are
not skipped.

Handlers are `async (Delivery) -> None`: `PrintHandler` writes each event as one JSON
line on stdout (exactly the envelope in the stream: docs/event.schema.json), `PostHandler`
POSTs it with Standard Webhooks headers (non-2xx, redirect or timeout = failure).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import httpx
import orjson
import redis.exceptions as rx
from redis.asyncio import Redis

from gateway.envelope_signing import signed_headers, webhook_id
from gateway.errors import GatewayError
from gateway.redis_errors import OUTAGES_EXCEPT_OOM
from gateway.redis_keys import KeyNames

log = logging.getLogger("gateway.consumer")

# Outages a consumer waits out (a demoted master, a re-forming cluster) rather than dying of:
# every Redis outage but OOM (gateway/redis_errors.py).
TRANSIENT = OUTAGES_EXCEPT_OOM

DEFAULT_MAX_DELIVERIES = 5
DEFAULT_CLAIM_IDLE_MS = 60_000
DEFAULT_BATCH = 32
DEFAULT_BLOCK_MS = 1_000


@dataclass(frozen=True, slots=True)
class Delivery:
    """One stream entry handed to a handler."""

    entry_id: str  # the stream entry id, e.g. "1700000000000-0"
    raw: bytes  # the envelope exactly as the gateway wrote it (field `event`)
    event: dict[str, Any] = field(repr=False)  # the same, decoded
    deliveries: int  # how many times the group has delivered it, this time included


Handler = Callable[[Delivery], Awaitable[None]]


class HandlerError(GatewayError):
    """A handler's failure with a short, fixed description (recorded in the dead-letter entry)."""


@dataclass
class Stats:
    acked: int = 0
    failed: int = 0
    dead_lettered: int = 0
    claimed: int = 0


class Consumer:
    def __init__(
        self,
        redis: Redis,
        stream: str,
        group: str,
        consumer_name: str,
        handler: Handler,
        *,
        max_deliveries: int = DEFAULT_MAX_DELIVERIES,
        claim_idle_ms: int = DEFAULT_CLAIM_IDLE_MS,
        batch: int = DEFAULT_BATCH,
        block_ms: int = DEFAULT_BLOCK_MS,
        dead_letter_stream: str | None = None,
        start_id: str = "0",
    ) -> None:
        """`block_ms` must stay below the Redis client's socket timeout (gateway consume sees to it)."""
        if max_deliveries < 1 or claim_idle_ms < 0 or batch < 1 or block_ms < 0:
            raise ValueError("max_deliveries and batch must be >= 1, claim_idle_ms and block_ms >= 0")
        self.redis = redis
        self.stream = stream
        self.group = group
        self.name = consumer_name
        self.handler = handler
        self.max_deliveries = max_deliveries
        self.claim_idle_ms = claim_idle_ms
        self.batch = batch
        self.block_ms = block_ms
        self.dead_letter_stream = dead_letter_stream or KeyNames.dead_letter_of(stream)
        self.start_id = start_id
        self.stats = Stats()
        self._group_ready = False
        self._history_cursor: str | None = "0"  # own pending entries left from a previous run
        self._claim_cursor = "0-0"
        self._stopping = asyncio.Event()

    # ---- lifecycle ----------------------------------------------------------------

    def stop(self) -> None:
        """Finish the entry in hand, then return from run()."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def run(self, *, error_backoff_s: float = 1.0) -> None:
        """Rounds until stop(); Redis outages are logged and waited out."""
        while not self._stopping.is_set():
            try:
                await self.run_once()
            except TRANSIENT as exc:
                log.warning("redis unavailable (%s); retrying", type(exc).__name__)
                self._group_ready = False
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), error_backoff_s)

    async def ensure_group(self) -> None:
        try:
            await self.redis.xgroup_create(self.stream, self.group, id=self.start_id, mkstream=True)
            log.info("created consumer group %r on %r", self.group, self.stream)
        except rx.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    # ---- one round -------------------------------------------------------------------

    async def run_once(self) -> int:
        """Handle what is there (own history, claimable, then new entries); returns how many were handled."""
        if not self._group_ready:
            await self.ensure_group()
        try:
            return await self._round()
        except rx.ResponseError as exc:
            if "NOGROUP" in str(exc):  # stream or group deleted under us: recreate next round
                self._group_ready = False
                return 0
            raise

    async def _round(self) -> int:
        handled = 0
        if self._history_cursor is not None:
            entries = await self._read(self._history_cursor)
            if entries:
                self._history_cursor = _text(entries[-1][0])  # onwards: a failure waits for the claim
                return await self._handle_all(entries, None)
            self._history_cursor = None
        claimed = await self._claim()
        handled += await self._handle_all(claimed, None)
        if self._stopping.is_set():
            return handled
        room = self.batch - len(claimed)
        if room > 0:
            fresh = await self._read(">", count=room, block=not claimed)
            handled += await self._handle_all(fresh, 1)
        return handled

    async def _read(self, after: str, *, count: int | None = None, block: bool = False) -> list[tuple[Any, Any]]:
        reply = await self.redis.xreadgroup(
            self.group,
            self.name,
            {self.stream: after},
            count=count or self.batch,
            block=self.block_ms if block and self.block_ms > 0 else None,
        )
        if not reply:
            return []
        streams: Any = reply
        if isinstance(streams, dict):  # RESP3: {stream: [entries]}
            return list(next(iter(streams.values()))[0])
        return list(streams[0][1])

    async def _claim(self) -> list[tuple[Any, Any]]:
        reply = await self.redis.xautoclaim(
            self.stream, self.group, self.name, self.claim_idle_ms, start_id=self._claim_cursor, count=self.batch
        )
        cursor, entries = reply[0], reply[1]
        self._claim_cursor = _text(cursor)
        live = [(entry_id, fields) for entry_id, fields in entries if fields is not None]
        if live:
            self.stats.claimed += len(live)
            log.info("claimed %d idle entries", len(live))
        return live

    async def _delivery_counts(self, ids: Sequence[str]) -> dict[str, int]:
        pipe = self.redis.pipeline(transaction=False)
        for entry_id in ids:
            pipe.xpending_range(self.stream, self.group, min=entry_id, max=entry_id, count=1)
        counts: dict[str, int] = {}
        for entry_id, rows in zip(ids, await pipe.execute(), strict=True):
            counts[entry_id] = int(rows[0]["times_delivered"]) if rows else 1
        return counts

    async def _handle_all(self, entries: list[tuple[Any, Any]], known_count: int | None) -> int:
        if not entries:
            return 0
        ids = [_text(entry_id) for entry_id, _ in entries]
        counts = {i: known_count for i in ids} if known_count is not None else await self._delivery_counts(ids)
        handled = 0
        for entry_id, (_, fields) in zip(ids, entries, strict=True):
            if self._stopping.is_set():
                break  # not handled: stays pending, claimed again later
            await self._handle_one(entry_id, fields, counts[entry_id] or 1)
            handled += 1
        return handled

    async def _handle_one(self, entry_id: str, fields: dict[Any, Any], deliveries: int) -> None:
        raw = fields.get(b"event", fields.get("event"))
        if isinstance(raw, str):
            raw = raw.encode()
        try:
            if not isinstance(raw, bytes):
                raise ValueError("no event field")
            event = orjson.loads(raw)
            if not isinstance(event, dict):
                raise ValueError("event is not a JSON object")
        except (ValueError, orjson.JSONDecodeError):
            await self._dead_letter(entry_id, raw if isinstance(raw, bytes) else b"", deliveries, "malformed", "")
            return
        if deliveries > self.max_deliveries:
            await self._dead_letter(entry_id, raw, deliveries, "too_many_deliveries", "")
            return
        try:
            await self.handler(Delivery(entry_id, raw, event, deliveries))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.stats.failed += 1
            error = str(exc) if isinstance(exc, HandlerError) else type(exc).__name__
            if deliveries >= self.max_deliveries:
                await self._dead_letter(entry_id, raw, deliveries, "handler_failed", error)
            else:
                log.warning("entry %s failed (delivery %d of %d): %s", entry_id, deliveries, self.max_deliveries, error)
            return
        await self.redis.xack(self.stream, self.group, entry_id)
        self.stats.acked += 1

    async def _dead_letter(self, entry_id: str, raw: bytes, deliveries: int, reason: str, error: str) -> None:
        """Copy to the dead-letter stream first, then acknowledge: a crash in between dead-letters twice, never 0."""
        await self.redis.xadd(
            self.dead_letter_stream,
            {
                "event": raw,
                "stream": self.stream,
                "entry_id": entry_id,
                "group": self.group,
                "consumer": self.name,
                "deliveries": str(deliveries),
                "reason": reason,
                "error": error,
                "dead_at": f"{time.time():.3f}",
            },
        )
        await self.redis.xack(self.stream, self.group, entry_id)
        self.stats.dead_lettered += 1
        log.error(
            "entry %s dead-lettered to %s after %d deliveries (%s)",
            entry_id,
            self.dead_letter_stream,
            deliveries,
            reason,
        )


# ---- handlers ---------------------------------------------------------------------------


class PrintHandler:
    """Each event as one JSON line on stdout, byte for byte the envelope in the stream."""

    def __init__(self, out: TextIO | None = None) -> None:
        self._out = out

    async def __call__(self, delivery: Delivery) -> None:
        out = self._out or sys.stdout
        out.write(delivery.raw.decode("utf-8") + "\n")
        out.flush()


class PostHandler:
    """POST each event to `url` with Standard Webhooks headers; any non-2xx, redirect or timeout fails it.

    Body: the envelope exactly as in the stream, `content-type: application/json`.
    Headers: `webhook-id` (the event's idempotency_key, else its id — receivers de-duplicate
    on it), `webhook-timestamp`, `webhook-signature` (one v1 signature per key, newest first:
    GATEWAY_FORWARD_SIGNING_KEY), the same as the gateway's own dispatch requests.
    """

    def __init__(
        self,
        url: str,
        keys: Sequence[bytes],
        *,
        timeout_s: float = 5.0,
        client: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not keys:
            raise ValueError("the POST handler needs at least one signing key (GATEWAY_FORWARD_SIGNING_KEY)")
        self.url = url
        self._keys = tuple(keys)
        self._clock = clock
        self._own_client = client is None
        # The same outbound policy as the dispatch client (gateway/dispatch.py): no redirect followed,
        # and trust_env=False — no HTTP(S)_PROXY/ALL_PROXY, .netrc or SSL_CERT_* from the environment
        # decide where a signed event goes or what credentials ride along (docs/operations.md).
        self._client = client or httpx.AsyncClient(timeout=timeout_s, follow_redirects=False, trust_env=False)

    async def __call__(self, delivery: Delivery) -> None:
        headers = signed_headers(self._keys, delivery.raw, webhook_id(delivery.event), int(self._clock()))
        try:
            response = await self._client.post(self.url, content=delivery.raw, headers=headers)
        except httpx.TimeoutException:
            raise HandlerError("timeout") from None
        except httpx.HTTPError as exc:
            raise HandlerError(type(exc).__name__) from None
        if not 200 <= response.status_code < 300:
            raise HandlerError(f"status {response.status_code}")

    async def aclose(self) -> None:
        if self._own_client:
            await self._client.aclose()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)

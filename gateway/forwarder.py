"""Durable forwarding to the dispatch stream, with replay and duplicate checks, by group commit.

The requests in flight are written by one call of a Lua script (one round trip) that,
for each event in turn, atomically:
  1. answers "duplicate" for signed content already accepted (a carrier's identical retry,
     same nonce and all, after an answer it never received),
  2. rejects a nonce already used with any other content (replay),
  3. answers "duplicate" for an idempotency key already forwarded,
  4. XADDs the event, then records the nonce, the idempotency key and the signed content
     with TTLs.
The signed content is the verifier's `Verified.signed_digest`: a digest of the exact bytes
the signature covered. Its key (`KeyNames.signed_content`: `<stream tag>:signed:<phone>:<hex digest>`, kept for the
idempotency TTL) catches a copy whose parameters were regrouped so that the signed string
is unchanged (a new idempotency key, the same signature), and is the only identity of an
event that has no idempotency key (Twilio without CallSid, Telnyx without data.id).
Each event's XADD is its first write, so a failure (OOM, read-only replica) leaves
nothing half-written, and is that event's own error: every request learns its own
outcome and is answered only after it, so the per-request Redis cost is amortised
without weakening the "2xx only once durably in the stream" rule. (One call for the
batch rather than one per event: redis-py spends more CPU per command than Redis
spends running the script.)

Call-aware replay defence runs in the same script call: an event with a `CallCheck`
(built by gateway/calls.py) brings three more keys (its call's state hash, timeline and
held events, all in the stream's slot) and a spec; a batch without any check is sent
exactly as before, and the call section of the script (`call_event`) is never entered.
The rules that section applies are in gateway/calls.py's docstring and
docs/answers-and-forwards.md ("Call-aware replay defence").

With GATEWAY_REDIS_WAIT_REPLICAS=N the pipeline ends with WAIT N: a batch is
answered 2xx only once N replicas hold it (too few confirmations answer 503), so a
Sentinel failover, which promotes a replica and throws away what only the old
master had, cannot lose an accepted event when N is the master's replica count
(docs/operations.md, "Redis Sentinel", for smaller N).
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any

import redis.exceptions as rx
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster

from gateway import metrics
from gateway.errors import NotReplicated, Unavailable
from gateway.redis_errors import OUTAGES
from gateway.redis_keys import KeyNames
from gateway.tasks import stop_task

log = logging.getLogger("gateway.forwarder")

# KEYS: the stream, then for event i its nonce key (KEYS[4i-2]), its other nonce key (KEYS[4i-1]:
# a Vobiz request carrying both header families), idempotency key (KEYS[4i]) and signed-content
# key (KEYS[4i+1]), the placeholder key when it has none. ARGV: nonce TTL,
# idempotency TTL, MAXLEN ('0': none), the placeholder key's name, the number of events n, then
# event i as ARGV[5+i].
# Returns one {outcome, id} per event (a duplicate: the first acceptance's id); outcome 'error'
# carries the Redis error of that event's first write (redis.pcall).
# Call-aware batches (any event with a CallCheck) append, for event i, KEYS[1+4n+3(i-1)+1..3]
# (call state hash, timeline, held list; placeholders without a check) and ARGV[5+n+i], its
# spec: phase, status, now, window, late, TTL, max held (tab separated; '' without a check).
# So #ARGV == 5 + n and #KEYS == 1 + 4n without checks, #ARGV == 5 + 2n and #KEYS == 1 + 7n with.
# Phases (gateway/providers/spec.py): 'a' answers the call, 'e' ends it, 's' is any other status.
FORWARD_SCRIPT = """
local stream, nonce_ttl, idem_ttl, maxlen, unused = KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local n = tonumber(ARGV[5])
local calls = #ARGV ~= 5 + n
local function xadd(event)
  if maxlen ~= '0' then
    return redis.pcall('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'event', event)
  end
  return redis.pcall('XADD', stream, '*', 'event', event)
end
local function remember(nonce_key, other_key, idem_key, signed_key, id)
  if nonce_key ~= unused then redis.call('SET', nonce_key, '1', 'EX', nonce_ttl) end
  if other_key ~= unused then redis.call('SET', other_key, '1', 'EX', nonce_ttl) end
  if idem_key ~= unused then redis.call('SET', idem_key, id, 'EX', idem_ttl) end
  if signed_key ~= unused then redis.call('SET', signed_key, id, 'EX', idem_ttl) end
end
-- The call-aware section: event i's CallCheck (gateway/calls.py states the rules,
-- docs/answers-and-forwards.md explains them).
local function call_event(i, spec, event, nonce_key, other_key, idem_key, signed_key)
  local f = {}
  for field in string.gmatch(spec, '[^\t]+') do f[#f + 1] = field end
  local phase, status, at = f[1], f[2], f[3]
  local now, window, late, ttl, max_held = tonumber(f[3]), tonumber(f[4]), tonumber(f[5]), f[6], tonumber(f[7])
  local base = 1 + 4 * n + 3 * (i - 1)
  local state_key, timeline_key, held_key = KEYS[base + 1], KEYS[base + 2], KEYS[base + 3]
  local state = redis.call('HMGET', state_key, 'answered', 'ended', 'held_since')
  local function note(result)  -- the call's timeline is forensic: never fails the event
    redis.pcall('RPUSH', timeline_key, at .. ' ' .. phase .. ' ' .. status .. ' ' .. result)
    redis.pcall('LTRIM', timeline_key, -64, -1)
    redis.pcall('EXPIRE', timeline_key, ttl)
  end
  if state[2] then
    local limit = late
    if phase == 'a' then limit = window end
    if now - tonumber(state[2]) > limit then
      note('call_ended')
      return {'call_ended', ''}
    end
  elseif not state[1] and phase ~= 'a' then
    if window <= 0 or (state[3] and now - tonumber(state[3]) > window)
        or redis.call('LLEN', held_key) >= max_held then
      note('unknown_call')
      return {'unknown_call', ''}
    end
    local pushed = redis.pcall('RPUSH', held_key, event)
    if type(pushed) == 'table' then return {'error', pushed.err} end
    redis.call('EXPIRE', held_key, math.ceil(window) + 60)
    if not state[3] then redis.call('HSET', state_key, 'held_since', at) end
    if phase == 'e' then redis.call('HSET', state_key, 'held_end', at, 'held_end_status', status) end
    redis.call('EXPIRE', state_key, ttl)
    remember(nonce_key, other_key, idem_key, signed_key, 'held')
    note('held')
    return {'held', ''}
  end
  local id = xadd(event)
  if type(id) == 'table' then return {'error', id.err} end
  remember(nonce_key, other_key, idem_key, signed_key, id)
  local released = 0
  if phase == 'a' and not state[1] then
    redis.call('HSET', state_key, 'answered', at)
    if state[3] then
      if now - tonumber(state[3]) <= window then
        for _, held in ipairs(redis.call('LRANGE', held_key, 0, -1)) do
          if type(xadd(held)) ~= 'table' then released = released + 1 end
        end
        local held_end = redis.call('HMGET', state_key, 'held_end', 'held_end_status')
        if held_end[1] and not state[2] then
          redis.call('HSET', state_key, 'ended', held_end[1], 'end_status', held_end[2])
        end
      end
      redis.call('DEL', held_key)
      redis.call('HDEL', state_key, 'held_since', 'held_end', 'held_end_status')
    end
  elseif phase == 'e' and not state[2] then
    redis.call('HSET', state_key, 'ended', at, 'end_status', status)
  end
  redis.call('EXPIRE', state_key, ttl)
  note('forwarded+' .. released)
  return {'forwarded', id, released}
end
local out = {}
for i = 1, n do
  local nonce_key, other_key, idem_key, signed_key = KEYS[4 * i - 2], KEYS[4 * i - 1], KEYS[4 * i], KEYS[4 * i + 1]
  -- Signed content already accepted first: a carrier's identical retry of an event whose
  -- answer was lost (same nonce) is that duplicate, not a replay; other content with a seen
  -- nonce has another digest and is refused below.
  local seen = signed_key ~= unused and redis.call('GET', signed_key)
  if seen then
    out[i] = {'duplicate', seen}
  elseif (nonce_key ~= unused and redis.call('EXISTS', nonce_key) == 1)
      or (other_key ~= unused and redis.call('EXISTS', other_key) == 1) then
    out[i] = {'replay', ''}
  else
    local previous = idem_key ~= unused and redis.call('GET', idem_key)
    if previous then
      -- this content too is now that event's: its own identical retry is a duplicate as well
      remember(nonce_key, other_key, unused, signed_key, previous)
      out[i] = {'duplicate', previous}
    elseif calls and ARGV[5 + n + i] ~= '' then
      out[i] = call_event(i, ARGV[5 + n + i], ARGV[5 + i], nonce_key, other_key, idem_key, signed_key)
    else
      local id = xadd(ARGV[5 + i])
      if type(id) == 'table' then
        out[i] = {'error', id.err}
      else
        remember(nonce_key, other_key, idem_key, signed_key, id)
        out[i] = {'forwarded', id}
      end
    end
  end
end
return out
"""
FORWARD_SHA = hashlib.sha1(FORWARD_SCRIPT.encode()).hexdigest()  # noqa: S324 - Redis names scripts by SHA-1

# What answers a batch 503: a Redis outage, or too few replicas confirming it (GATEWAY_REDIS_WAIT_REPLICAS).
OUTAGE_OR_NOT_REPLICATED: tuple[type[BaseException], ...] = (*OUTAGES, NotReplicated)


@dataclass(frozen=True, slots=True)
class CallCheck:
    """The call-aware input of one event of the script (gateway/calls.py builds it): for event i
    of n, KEYS[1+4n+3(i-1)+1..3] and ARGV[5+n+i] (the layout above FORWARD_SCRIPT)."""

    provider: str  # metric label (call-aware events released into the stream)
    keys: tuple[str, str, str]  # state hash, timeline list, held list: KeyNames.call_keys (the stream's slot)
    args: tuple[str, ...]  # phase, status label, now, window s, late s, TTL s, max held (sent tab-separated)


class Outcome(enum.StrEnum):
    FORWARDED = "forwarded"
    DUPLICATE = "duplicate"
    REPLAY = "replay"
    HELD = "held"  # call-aware: kept until its call's answer arrives (answered 2xx, not yet in the stream)
    UNKNOWN_CALL = "unknown_call"  # call-aware: its call was never answered within the window
    CALL_ENDED = "call_ended"  # call-aware: its call ended longer ago than the window allows


@dataclass(slots=True)
class _Pending:
    phone_id: str
    event: bytes
    nonce: str | None
    idempotency_key: str | None
    future: asyncio.Future[tuple[Outcome, str]] = field(repr=False)
    call: CallCheck | None = None
    signed: bytes | None = None  # Verified.signed_digest: the event's identity by signed content
    other_nonce: str | None = None  # Verified.other_nonce: a second nonce header, single-use as well


class Forwarder:
    """Group-commit writer. `forward()` resolves once the event's script has run on Redis."""

    def __init__(
        self,
        redis: Redis,
        names: KeyNames,
        *,
        nonce_ttl_s: int,
        idempotency_ttl_s: int,
        stream_maxlen: int = 0,
        # A script blocks every other Redis client while it runs (~10 us per event measured), so a
        # batch is capped at 32 events (~0.3 ms); up to 4 batches in flight let the gateway answer
        # one batch while Redis runs the next (+7% throughput over 256 x 2: loadtests/README.md).
        max_batch: int = 32,
        max_inflight_batches: int = 4,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 500,
    ) -> None:
        self._redis = redis
        self._names = names
        self._nonce_ttl = str(nonce_ttl_s)
        self._idem_ttl = str(idempotency_ttl_s)
        self._maxlen = str(stream_maxlen)
        self._max_batch = max_batch
        self._wait_replicas = wait_replicas
        self._wait_timeout_ms = wait_timeout_ms
        self._queue: list[_Pending] = []
        self._waiter: asyncio.Future[None] | None = None  # the idle writer task waits on it for the next event
        self._slots = asyncio.Semaphore(max_inflight_batches)
        self._task: asyncio.Task[None] | None = None
        # Python 3.11's asyncio.get_running_loop() makes a getpid() system call each time; once per request added up.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._batches: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._run(), name="forwarder")

    async def stop(self) -> None:
        """Flush what is queued, wait for batches in flight, then stop."""
        if self._task is not None:
            await stop_task(self._task)
            self._task = None
            self._loop = None
        while self._queue:
            await self._flush(self._take())
        if self._batches:
            await asyncio.gather(*self._batches, return_exceptions=True)

    async def forward(
        self,
        phone_id: str,
        event: bytes,
        *,
        nonce: str | None,
        idempotency_key: str | None,
        call: CallCheck | None = None,
        signed: bytes | None = None,
        other_nonce: str | None = None,
    ) -> tuple[Outcome, str]:
        """(outcome, stream entry id). Raises Unavailable when Redis cannot confirm the write.

        `signed`: the digest of the signed content (Verified.signed_digest), or None when
        nothing is signed. `other_nonce`: a second nonce the request carried (Vobiz with both
        header families), refused when seen and recorded like `nonce`. For a duplicate, the
        entry id is that of the first acceptance."""
        future: asyncio.Future[tuple[Outcome, str]] = (self._loop or asyncio.get_running_loop()).create_future()
        self._queue.append(_Pending(phone_id, event, nonce, idempotency_key, future, call, signed, other_nonce))
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self._task is None:  # not started (e.g. a one-shot CLI use): flush inline
            await self._flush(self._take())
        return await future

    def _take(self) -> list[_Pending]:
        batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch :]
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._waiter = loop.create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None
            await self._slots.acquire()
            batch = self._take()
            if not batch:
                self._slots.release()
                continue
            task = loop.create_task(self._flush_and_release(batch))
            self._batches.add(task)
            task.add_done_callback(self._batches.discard)

    async def _flush_and_release(self, batch: list[_Pending]) -> None:
        try:
            await self._flush(batch)
        finally:
            self._slots.release()

    def _command(self, batch: list[_Pending]) -> list[Any]:
        """EVALSHA of FORWARD_SCRIPT for the whole batch."""
        names = self._names
        unused = names.unused
        keys: list[Any] = [names.stream]
        events: list[bytes] = []
        for item in batch:
            keys.append(names.nonce(item.phone_id, item.nonce) if item.nonce else unused)
            keys.append(names.nonce(item.phone_id, item.other_nonce) if item.other_nonce else unused)
            keys.append(names.idempotency(item.phone_id, item.idempotency_key) if item.idempotency_key else unused)
            keys.append(names.signed_content(item.phone_id, item.signed) if item.signed is not None else unused)
            events.append(item.event)
        settings = [self._nonce_ttl, self._idem_ttl, self._maxlen, unused, len(batch)]
        if any(item.call is not None for item in batch):
            specs: list[str] = []
            for item in batch:
                keys.extend(item.call.keys if item.call is not None else (unused, unused, unused))
                specs.append("\t".join(item.call.args) if item.call is not None else "")
            return ["EVALSHA", FORWARD_SHA, len(keys), *keys, *settings, *events, *specs]
        return ["EVALSHA", FORWARD_SHA, len(keys), *keys, *settings, *events]

    async def _flush(self, batch: list[_Pending]) -> None:
        if not batch:
            return
        metrics.BATCH_SIZE.observe(len(batch))
        try:
            results = await self._execute(batch)
        except OUTAGE_OR_NOT_REPLICATED as exc:
            metrics.REDIS_ERRORS.labels("forward", metrics.redis_error_class(exc)).inc()
            log.warning("forwarding batch of %d failed: %s", len(batch), type(exc).__name__)
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(Unavailable("redis"))
            return
        except Exception:
            log.exception("unexpected error forwarding a batch of %d", len(batch))
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(Unavailable("redis"))
            return
        for item, result in zip(batch, results, strict=True):
            if item.future.done():
                continue
            if isinstance(result, BaseException):
                metrics.REDIS_ERRORS.labels("forward", metrics.redis_error_class(result)).inc()
                item.future.set_exception(Unavailable("redis"))
                continue
            if item.call is not None and len(result) > 2 and int(result[2]):
                metrics.call_event_counter(item.call.provider, "released").inc(int(result[2]))
            item.future.set_result((_OUTCOMES[result[0]], _text(result[1])))

    async def _execute(self, batch: list[_Pending]) -> list[Any]:
        results = await self._run_scripts(batch)
        retry = [i for i, r in enumerate(results) if isinstance(r, rx.NoScriptError)]
        if retry:
            # Redis restarted (or failed over) and lost its script cache. NOSCRIPT means
            # that script did not run, so running those items again is safe.
            await self._redis.script_load(FORWARD_SCRIPT)
            again = await self._run_scripts([batch[i] for i in retry])
            for index, result in zip(retry, again, strict=True):
                results[index] = result
        for result in results:
            if isinstance(result, rx.ResponseError) and not isinstance(result, OUTAGE_OR_NOT_REPLICATED):
                raise result  # a bug (e.g. CROSSSLOT), not an outage: logged with its traceback
        return results

    async def probe_write(self, key: str) -> None:
        """/readyz: the write every webhook needs, under the same replica rule as every batch.
        Raises the Redis error, or NotReplicated when fewer than GATEWAY_REDIS_WAIT_REPLICAS confirm."""
        if not self._wait_replicas:
            await self._redis.set(key, b"1", ex=60)
            return
        pipe = self._redis.pipeline(transaction=False)  # one connection: WAIT counts that connection's writes
        pipe.set(key, b"1", ex=60)
        node = self._wait_node(key)
        pipe.execute_command("WAIT", self._wait_replicas, self._wait_timeout_ms, **_targeting(node))
        _, acked = await pipe.execute()
        self._check_replicated(acked, key, node)

    def _wait_node(self, key: str) -> ClusterNode | None:
        """Redis Cluster: the node that owns `key`'s slot, where WAIT must run (a cluster pipeline
        sends an unkeyed command to a default node, whose WAIT would count none of the writes)."""
        redis = self._redis
        return redis.get_node_from_key(key) if isinstance(redis, RedisCluster) else None

    def _check_replicated(self, acked: Any, key: str, node: ClusterNode | None) -> None:
        if isinstance(acked, rx.ResponseError) and "replica" in str(acked).lower():
            # "WAIT cannot be used with replica instances": the node was demoted (a failover) while
            # the batch ran; the writes went to the new master, unconfirmed. Not durable: 503.
            raise NotReplicated("the node demoted to a replica during the batch")
        if isinstance(acked, BaseException):
            raise acked
        if node is not None and self._wait_node(key) is not node:
            # The slot moved during the call (a failover or resharding): the script followed the
            # redirect, the WAIT did not, so its count says nothing about these writes.
            raise NotReplicated("the stream's slot moved during the batch")
        if int(acked) < self._wait_replicas:
            raise NotReplicated(f"{acked} of {self._wait_replicas} replicas confirmed")

    async def _run_scripts(self, batch: list[_Pending]) -> list[Any]:
        pipe = self._redis.pipeline(transaction=False)
        # execute_command, not pipe.evalsha(): redis-py's cluster pipeline blocks its evalsha()
        # method, yet routes the raw command by its keys (all in the stream's slot).
        pipe.execute_command(*self._command(batch))
        stream = self._names.stream
        node = None
        if self._wait_replicas:
            # Same connection, after the scripts: returns how many replicas have everything this
            # connection wrote. Fewer than asked = not durable across a failover = 503, never 2xx
            # (an event that did reach the master is recognised as a duplicate on the carrier's retry).
            node = self._wait_node(stream)
            pipe.execute_command("WAIT", self._wait_replicas, self._wait_timeout_ms, **_targeting(node))
        results = list(await pipe.execute(raise_on_error=False))
        if self._wait_replicas:
            self._check_replicated(results.pop(), stream, node)
        (replies,) = results
        if isinstance(replies, BaseException):  # the whole call failed (NOSCRIPT, READONLY, ...)
            return [replies] * len(batch)
        return [_event_error(reply[1]) if reply[0] in (b"error", "error") else reply for reply in replies]


def _targeting(node: ClusterNode | None) -> dict[str, Any]:
    return {"target_nodes": node} if node is not None else {}


_OUTCOMES = {outcome.value.encode(): outcome for outcome in Outcome} | {outcome.value: outcome for outcome in Outcome}


def _event_error(message: Any) -> rx.RedisError:
    """One event's XADD error, as the exception redis-py raises for that reply (OOM, READONLY...)."""
    text = _text(message)
    if text.startswith("OOM"):
        return rx.OutOfMemoryError(text)
    if text.startswith("READONLY"):
        return rx.ReadOnlyError(text)
    return rx.ResponseError(text)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)

"""Allowlist discovery: where requests come from that proved their phone but not their address.

A carrier checked by source address (`CarrierSpec.proof_without_source`: Exotel, which
publishes no callback addresses) is refused (403) from any address outside the allowlist.
When such a refused request still proves its phone's account otherwise (the phone's
`?token=`), its network is recorded here so an operator can confirm it with the carrier
and add it to the allowlist. Never accepted, never added automatically.

Kept in Redis, so every worker and instance sees one list, per carrier: a sorted set of
networks scored by when they were last seen, and a hash of each network's counts
(`{"r": requests, "f": first seen, "l": last seen, "p": [phone ids]}`), both under one hash
tag (gateway/redis_keys.py). Networks are /24 (IPv4) and /48 (IPv6). Bounded: at most
`max_networks` networks (the least recently seen are dropped), `max_phones` phone ids per
network, and entries older than the TTL are dropped (and both keys expire when nothing is
recorded for a TTL).

On the request path (`UnlistedSources.observe`, called only for `ip_not_allowed`
rejections) the write is fire-and-forget: at most `max_in_flight` writes at once (more
are counted and skipped), errors counted, never raised: the request is refused either way.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Callable
from typing import Any

import orjson
import redis.exceptions as rx
from redis.asyncio import Redis

from gateway import metrics
from gateway.inbound import InboundRequest
from gateway.providers import PhoneCredentials, Provider
from gateway.providers.registry import CARRIERS
from gateway.redis_keys import KeyNames

log = logging.getLogger("gateway.source_log")

DEFAULT_TTL_S = 7 * 86400
MAX_NETWORKS = 256
MAX_PHONES = 64  # phone ids kept per network: `phones` counts up to this many
MAX_IN_FLIGHT = 32
IPV4_PREFIX = 24
IPV6_PREFIX = 48
# The carriers whose refused-for-their-address requests may prove their phone otherwise.
DISCOVERABLE: frozenset[Provider] = frozenset(p for p, spec in CARRIERS.items() if spec.proof_without_source)

# KEYS: index (zset network -> last seen), networks (hash network -> JSON counts).
# ARGV: network, phone id, now, ttl, max networks, max phones.
_RECORD = """
local index, data = KEYS[1], KEYS[2]
local network, phone = ARGV[1], ARGV[2]
local now, ttl = tonumber(ARGV[3]), tonumber(ARGV[4])
local max_networks, max_phones = tonumber(ARGV[5]), tonumber(ARGV[6])
local raw = redis.call('HGET', data, network)
local entry
if raw then entry = cjson.decode(raw) else entry = {r = 0, f = now, l = now, p = {}} end
if type(entry.p) ~= 'table' then entry.p = {} end
entry.r = entry.r + 1
if now > entry.l then entry.l = now end
local known = false
for _, id in ipairs(entry.p) do
  if id == phone then known = true; break end
end
if not known and #entry.p < max_phones then table.insert(entry.p, phone) end
redis.call('HSET', data, network, cjson.encode(entry))
redis.call('ZADD', index, entry.l, network)
local function drop(networks)
  for i = 1, #networks, 100 do
    redis.call('HDEL', data, unpack(networks, i, math.min(i + 99, #networks)))
    redis.call('ZREM', index, unpack(networks, i, math.min(i + 99, #networks)))
  end
end
drop(redis.call('ZRANGEBYSCORE', index, '-inf', '(' .. tostring(now - ttl)))
local excess = redis.call('ZCARD', index) - max_networks
if excess > 0 then drop(redis.call('ZRANGE', index, 0, excess - 1)) end
redis.call('EXPIRE', index, ttl)
redis.call('EXPIRE', data, ttl)
return 1
"""


def network_of(address: str) -> str | None:
    """The /24 (IPv4) or /48 (IPv6) network of an address, as CIDR text; None if it is not one.

    An IPv4-mapped IPv6 address (::ffff:198.51.100.7) counts as its IPv4 address.
    """
    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    prefix = IPV4_PREFIX if ip.version == 4 else IPV6_PREFIX
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


class SourceLog:
    """The recorded networks in Redis (storage: no request logic)."""

    def __init__(
        self,
        redis: Redis,
        names: KeyNames,
        *,
        ttl_s: int = DEFAULT_TTL_S,
        max_networks: int = MAX_NETWORKS,
        max_phones: int = MAX_PHONES,
    ) -> None:
        self._redis = redis
        self._names = names
        self.ttl_s = ttl_s
        self._max_networks = max_networks
        self._max_phones = max_phones

    async def record(self, provider: Provider, network: str, phone_id: str, now: float) -> None:
        """One refused request from `network` that proved `phone_id` (one round trip)."""
        index, data = self._names.unlisted_sources(provider.value)
        args = (network, phone_id, repr(float(now)), self.ttl_s, self._max_networks, self._max_phones)
        await self._redis.eval(_RECORD, 2, index, data, *args)

    async def sources(self, provider: Provider, now: float | None = None) -> list[dict[str, Any]]:
        """The recorded networks, most recently seen first (older than the TTL left out)."""
        now = time.time() if now is None else now
        index, data = self._names.unlisted_sources(provider.value)
        networks = await self._redis.zrevrangebyscore(index, "+inf", now - self.ttl_s)
        if not networks:
            return []
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in networks]
        raws = await self._redis.hmget(data, names)
        out: list[dict[str, Any]] = []
        for network, raw in zip(names, raws, strict=True):
            if raw is None:  # trimmed between the two reads
                continue
            entry = _decode(raw)
            if entry is None:
                continue
            out.append({"network": network, **entry})
        out.sort(key=lambda source: source["last_seen"], reverse=True)
        return out


def _decode(raw: bytes | str) -> dict[str, Any] | None:
    """A network's counts as the API shows them; None for an entry that is not what `_RECORD` writes."""
    try:
        entry = orjson.loads(raw)
        phones = entry.get("p")
        return {
            "phones": len(phones) if isinstance(phones, list) else 0,
            "requests": int(entry["r"]),
            "first_seen": float(entry["f"]),
            "last_seen": float(entry["l"]),
        }
    except (orjson.JSONDecodeError, ValueError, TypeError, KeyError, AttributeError):
        return None


class UnlistedSources:
    """The request path's hook for `ip_not_allowed` rejections: count and record proven sources."""

    def __init__(
        self,
        log_: SourceLog,
        *,
        max_in_flight: int = MAX_IN_FLIGHT,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._log = log_
        self._max_in_flight = max_in_flight
        self._in_flight: set[asyncio.Task[None]] = set()
        self._clock = clock

    def __call__(self, inbound: InboundRequest, creds: PhoneCredentials, now: float) -> bool:
        """Record the request's network if it proves `creds`'s account; never raises. True if it did."""
        try:
            check = CARRIERS[creds.provider].proof_without_source
            if check is None or not check(inbound, creds, now):
                return False
            metrics.UNLISTED_SOURCES.labels(creds.provider.value).inc()
            network = network_of(inbound.client_ip)
            if network is None:
                return False
            if len(self._in_flight) >= self._max_in_flight:
                metrics.UNLISTED_SOURCE_WRITES_SKIPPED.inc()
                return False
            task = asyncio.get_running_loop().create_task(self._write(creds.provider, network, creds.phone_id, now))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)
            return True
        except Exception as exc:  # a bug here must never turn a 403 into a 500
            log.error("recording an unlisted source failed (%s); the request was refused as usual", type(exc).__name__)
            return False

    async def _write(self, provider: Provider, network: str, phone_id: str, now: float) -> None:
        try:
            await self._log.record(provider, network, phone_id, now)
        except Exception as exc:  # an outage or a bug: counted, never raised (the request is refused anyway)
            metrics.REDIS_ERRORS.labels("unlisted_sources", metrics.redis_error_class(exc)).inc()
            if not isinstance(exc, rx.RedisError | OSError | TimeoutError):
                log.error("recording an unlisted source failed (%s)", type(exc).__name__)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    async def stop(self, timeout_s: float = 1.0) -> None:
        """Let the writes in flight finish (at most `timeout_s`), then cancel the rest."""
        pending = set(self._in_flight)
        if not pending:
            return
        _done, still = await asyncio.wait(pending, timeout=timeout_s)
        for task in still:
            task.cancel()
        if still:
            await asyncio.gather(*still, return_exceptions=True)

"""Open the Redis client the gateway uses, with edge-service timeouts.

GATEWAY_REDIS_URL's forms (standalone, TLS, unix socket, Sentinel, Cluster) are parsed
and validated in gateway/redis_url.py.

redis-py's defaults (5 s socket timeouts, and up to 10 retries with backoff in
recent versions) are too patient for an edge that must answer 503 quickly so
the carrier retries: we set explicit timeouts and at most one immediate retry,
on connection errors only (it transparently replaces a pooled connection that
died with a restart). A timeout is not retried: the command may have run, and
running a forward script twice would turn an accepted event into a "replay".

Sentinel: redis-py discovers the master only when it opens a connection, and
its asyncio pool keeps connections that were in use during a failover, so a
gateway would go on writing to the demoted master — which still answers OK
until Sentinel reconfigures it (up to ~20 s), and whose writes are then thrown
away. Here every pool asks all sentinels for the master every
SENTINEL_CHECK_INTERVAL_S (newest config epoch wins) and drops every
connection, in use or idle, as soon as the master moves. Writes accepted by the
old master in the last moments before the switch are only safe with
GATEWAY_REDIS_WAIT_REPLICAS (see gateway/forwarder.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import parse_qs, urlsplit

import redis.exceptions as rx
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import AbstractConnection, Connection, SSLConnection, UnixDomainSocketConnection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel, SentinelConnectionPool, SentinelManagedConnection
from redis.backoff import NoBackoff
from redis.connection import HiredisRespSerializer
from redis.exceptions import RedisClusterException
from redis.utils import HIREDIS_AVAILABLE

from gateway.redis_url import cluster_seeds, is_sentinel, parse_sentinel_url, validate_url
from gateway.tasks import stop_task

if TYPE_CHECKING:
    from gateway.settings import Settings

log = logging.getLogger("gateway.redis")

SENTINEL_CHECK_INTERVAL_S = 0.5


def _retry() -> Retry:
    return Retry(NoBackoff(), retries=1, supported_errors=(rx.ConnectionError,))


def _common(settings: Settings) -> dict[str, Any]:
    return {
        "socket_timeout": settings.redis_timeout_s,
        "socket_connect_timeout": settings.redis_connect_timeout_s,
        "retry": _retry(),
        "health_check_interval": 15,
    }


# ---- Sentinel -------------------------------------------------------------------------


class GatewaySentinel(Sentinel):
    """Asks every sentinel at once and believes the newest configuration epoch.

    redis-py asks sentinels one by one and takes the first answer, which can be
    a sentinel that has not yet heard of a failover.
    """

    async def discover_master(self, service_name: str) -> tuple[str, int]:
        answers = await asyncio.gather(
            *(sentinel.sentinel_master(service_name) for sentinel in self.sentinels), return_exceptions=True
        )
        best: tuple[int, str, int] | None = None
        for state in answers:
            if isinstance(state, BaseException) or not isinstance(state, dict):
                continue
            if not self.check_master_state(state, service_name):
                continue
            try:
                epoch = int(state.get("config-epoch", 0))
            except (TypeError, ValueError):
                epoch = 0
            if best is None or epoch > best[0]:
                best = (epoch, str(state["ip"]), int(state["port"]))
        if best is None:
            raise MasterNotFoundError(f"No master found for {service_name!r}")
        return best[1], best[2]


class HiredisPacking:
    """Encode commands with hiredis' C packer, as redis-py's synchronous client already does.

    redis-py's asyncio connections encode every argument in Python; for the forwarder's one
    EVALSHA per batch (a hundred arguments or more) that was a fifth of the request path's
    Redis cost (loadtests/README.md). The wire bytes are the same (tests/storage/test_redis_packing.py).
    """

    if HIREDIS_AVAILABLE:  # a dependency (redis[hiredis]); without it, redis-py's own encoder
        # Through Any: redis-py types this class in some releases and not in others.
        _packer: Any = cast(Any, HiredisRespSerializer)()

        def pack_command(self, *args: Any) -> list[bytes]:
            return cast(list[bytes], self._packer.pack(*args))


class ClosedTransportIsConnectionError(AbstractConnection):
    """A write on a connection the server closed is a ConnectionError, whatever the event loop.

    uvloop (uvicorn's loop) raises RuntimeError("unable to perform operation on <TCPTransport
    closed=True ...>; the handler is closed") there, where asyncio's own transports raise OSError,
    which redis-py turns into ConnectionError: an outage, retried once on a fresh connection, the
    cluster map refreshed, else answered 503. redis-py lets the RuntimeError through, and a webhook
    whose phone lookup hit a killed Redis Cluster node got an unexpected error (seen in CI).
    """

    async def send_packed_command(self, command: bytes | str | Iterable[bytes], check_health: bool = True) -> None:
        try:
            await super().send_packed_command(command, check_health)
        except RuntimeError as exc:
            if "the handler is closed" not in str(exc):  # uvloop's words for exactly this; anything else is a bug
                raise
            await self.disconnect(nowait=True)
            raise rx.ConnectionError("Error while writing to socket: the connection is closed.") from exc


class PackedConnection(HiredisPacking, ClosedTransportIsConnectionError, Connection):
    pass


class PackedSSLConnection(HiredisPacking, ClosedTransportIsConnectionError, SSLConnection):
    pass


class PackedUnixConnection(HiredisPacking, ClosedTransportIsConnectionError, UnixDomainSocketConnection):
    pass


_PACKED: dict[type, type] = {
    Connection: PackedConnection,
    SSLConnection: PackedSSLConnection,
    UnixDomainSocketConnection: PackedUnixConnection,
}


def _packed_connections(client: Redis) -> Redis:
    """Swap a standalone client's connection class for its hiredis-packing twin."""
    pool = client.connection_pool
    pool.connection_class = _PACKED.get(pool.connection_class, pool.connection_class)
    return client


class GatewaySentinelConnection(HiredisPacking, ClosedTransportIsConnectionError, SentinelManagedConnection):
    """Looks the master up again on every reconnect, however the reconnect is reached.

    redis-py 8.1's asyncio Connection.send_packed_command() reconnects a dropped
    connection through connect_check_health(), bypassing SentinelManagedConnection.connect()
    — so a connection dropped by a failover silently reconnected to the OLD master's
    address (still accepting writes that the failover then discards).
    """

    _address_fresh = False

    async def connect_to(self, address: tuple[str, int]) -> None:
        self._address_fresh = True
        try:
            await super().connect_to(address)  # type: ignore[no-untyped-call]
        finally:
            self._address_fresh = False

    async def connect_check_health(self, check_health: bool = True, retry_socket_connect: bool = True) -> None:
        if not self.is_connected and not self._address_fresh and self.connection_pool.is_master:
            self.host, self.port = await self.connection_pool.get_master_address()
        await super().connect_check_health(check_health=check_health, retry_socket_connect=retry_socket_connect)


class GatewaySentinelSSLConnection(GatewaySentinelConnection, SSLConnection):
    pass


class WatchedSentinelPool(SentinelConnectionPool):
    """A master pool that re-checks the master's address in the background and drops every connection when it moves."""

    def __init__(self, service_name: str, sentinel_manager: Sentinel, **kwargs: Any) -> None:
        self.check_interval_s = float(kwargs.pop("master_check_interval_s", SENTINEL_CHECK_INTERVAL_S))
        tls = kwargs.pop("ssl", False)
        kwargs["connection_class"] = GatewaySentinelSSLConnection if tls else GatewaySentinelConnection
        super().__init__(service_name, sentinel_manager, **kwargs)  # type: ignore[no-untyped-call]
        self._watcher: asyncio.Task[None] | None = None
        self.failovers_seen = 0

    async def get_connection(self, *args: Any, **options: Any) -> Any:
        if self.is_master and (self._watcher is None or self._watcher.done()):
            self._watcher = asyncio.get_running_loop().create_task(self._watch(), name="redis-sentinel-watch")
        return await super().get_connection(*args, **options)  # type: ignore[no-untyped-call]

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.check_interval_s)
            try:
                address = await self.sentinel_manager.discover_master(self.service_name)
            except Exception as exc:  # sentinels unreachable: keep what we have, connections fail on their own
                log.debug("sentinel check failed: %s", type(exc).__name__)
                continue
            if self.master_address is not None and address != self.master_address:
                self.failovers_seen += 1
                log.warning(
                    "Redis master for %r moved from %s:%s to %s:%s; dropping every connection to the old one",
                    self.service_name,
                    *self.master_address,
                    *address,
                )
                self.master_address = address
                await self.disconnect(inuse_connections=True)

    async def stop_watching(self) -> None:
        await stop_task(self._watcher)
        self._watcher = None


class SentinelRedis(Redis):
    """The master client; closing it also closes the sentinel connections and the watcher."""

    sentinel_manager: Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        pool = self.connection_pool
        try:
            if isinstance(pool, WatchedSentinelPool):
                await pool.stop_watching()
            await super().aclose(close_connection_pool)
        finally:
            if self.sentinel_manager is not None:
                with contextlib.suppress(Exception):
                    await self.sentinel_manager.aclose()


def _sentinel(settings: Settings, target: str) -> Redis:
    scheme = urlsplit(target).scheme
    hosts, service, db, username, password = parse_sentinel_url(target)
    query = parse_qs(urlsplit(target).query)
    tls = scheme.startswith("rediss")
    sentinel_kwargs: dict[str, Any] = {
        "socket_timeout": settings.redis_timeout_s,
        "socket_connect_timeout": settings.redis_connect_timeout_s,
        "retry": Retry(NoBackoff(), retries=0),
        "ssl": tls,
    }
    if "sentinel_password" in query:
        sentinel_kwargs["password"] = query["sentinel_password"][0]
    if "sentinel_username" in query:
        sentinel_kwargs["username"] = query["sentinel_username"][0]
    manager: GatewaySentinel = cast(Any, GatewaySentinel)(  # typed in some redis-py releases only
        hosts,
        sentinel_kwargs=sentinel_kwargs,
        username=username,
        password=password,
        db=db,
        ssl=tls,
        max_connections=settings.redis_max_connections,
        **_common(settings),
    )
    client: SentinelRedis = manager.master_for(
        service, redis_class=SentinelRedis, connection_pool_class=WatchedSentinelPool
    )
    client.sentinel_manager = manager
    return client


# ---- Cluster ---------------------------------------------------------------------------


class ClusterUnavailable(rx.ConnectionError):
    """No node of the Redis Cluster could be reached or mapped.

    redis-py raises RedisClusterException there, which is not a RedisError: the
    gateway's outage handling (503 + Retry-After) did not recognise it and answered 500.
    """


class GatewayRedisCluster(RedisCluster):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # RedisCluster picks its nodes' connection class itself (Connection, or SSLConnection with TLS);
        # the one dict it keeps is shared with its NodesManager, which makes every later node from it.
        chosen = self.connection_kwargs["connection_class"]
        ours = _PACKED.get(chosen, chosen)
        self.connection_kwargs["connection_class"] = ours
        for node in self.nodes_manager.startup_nodes.values():  # made in super().__init__, not connected yet
            node.connection_class = ours

    async def initialize(self, *args: Any, **kwargs: Any) -> GatewayRedisCluster:
        try:
            await super().initialize(*args, **kwargs)
        except RedisClusterException as exc:
            raise ClusterUnavailable("Redis Cluster unreachable") from exc
        return self


# ---- entry point ----------------------------------------------------------------------


def connect(settings: Settings, url: str | None = None) -> Redis:
    """A client for GATEWAY_REDIS_URL (standalone, TLS, unix socket, Sentinel or Cluster)."""
    target = url or settings.redis_url
    if target is None:
        raise ValueError("GATEWAY_REDIS_URL is not set")
    validate_url(target, settings.redis_cluster)
    if is_sentinel(target):
        return _sentinel(settings, target)
    if settings.redis_cluster:
        first, seeds = cluster_seeds(target)
        cluster: Any = GatewayRedisCluster.from_url(
            first,
            startup_nodes=[ClusterNode(host, port) for host, port in seeds[1:]],
            socket_timeout=settings.redis_timeout_s,
            socket_connect_timeout=settings.redis_connect_timeout_s,
            retry=_retry(),
            max_connections=settings.redis_max_connections,
        )
        return cast(Redis, cluster)  # RedisCluster offers the subset of the Redis API the gateway uses
    plain: Redis = Redis.from_url(target, max_connections=settings.redis_max_connections, **_common(settings))
    return _packed_connections(plain)

"""Open the Redis client the gateway uses, with edge-service timeouts.

redis-py's defaults (5 s socket timeouts, and up to 10 retries with backoff in
recent versions) are too patient for an edge that must answer 503 quickly so
the carrier retries: we set explicit timeouts and at most one immediate retry
(which transparently replaces a pooled connection that died with a restart).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

from gateway.settings import Settings


def _common(settings: Settings) -> dict[str, Any]:
    return {
        "socket_timeout": settings.redis_timeout_s,
        "socket_connect_timeout": settings.redis_connect_timeout_s,
        "retry": Retry(NoBackoff(), retries=1),
        "health_check_interval": 15,
    }


def parse_sentinel_url(url: str) -> tuple[list[tuple[str, int]], str, int, str | None, str | None]:
    """redis+sentinel://[[user]:password@]host:port[,host:port...]/service_name[/db]."""
    parts = urlsplit(url)
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    username = password = None
    if userinfo:
        user, _, pw = userinfo.partition(":")
        username, password = (unquote(user) or None), (unquote(pw) or None)
    hosts: list[tuple[str, int]] = []
    for item in hostlist.split(","):
        host, _, port = item.strip().rpartition(":")
        if not host:
            host, port = item.strip(), "26379"
        hosts.append((host.strip("[]"), int(port or 26379)))
    segments = [s for s in parts.path.split("/") if s]
    if not segments:
        raise ValueError("GATEWAY_REDIS_URL: a sentinel URL needs the service name as its path")
    service = unquote(segments[0])
    db = int(segments[1]) if len(segments) > 1 else int(parse_qs(parts.query).get("db", ["0"])[0])
    return hosts, service, db, username, password


def connect(settings: Settings, url: str | None = None) -> Redis:
    """A client for GATEWAY_REDIS_URL (standalone, TLS, unix socket, Sentinel or Cluster)."""
    target = url or settings.redis_url
    if target is None:
        raise ValueError("GATEWAY_REDIS_URL is not set")
    common = _common(settings)
    scheme = urlsplit(target).scheme
    if scheme in {"redis+sentinel", "rediss+sentinel"}:
        hosts, service, db, username, password = parse_sentinel_url(target)
        sentinel = Sentinel(
            hosts,
            sentinel_kwargs={
                "socket_timeout": settings.redis_timeout_s,
                "socket_connect_timeout": settings.redis_connect_timeout_s,
            },
            username=username,
            password=password,
            db=db,
            ssl=scheme.startswith("rediss"),
            max_connections=settings.redis_max_connections,
            **common,
        )
        return sentinel.master_for(service)
    if settings.redis_cluster:
        cluster: Any = RedisCluster.from_url(
            target,
            socket_timeout=settings.redis_timeout_s,
            socket_connect_timeout=settings.redis_connect_timeout_s,
            retry=Retry(NoBackoff(), retries=1),
            max_connections=settings.redis_max_connections,
        )
        return cluster  # RedisCluster offers the subset of the Redis API the gateway uses
    return Redis.from_url(target, max_connections=settings.redis_max_connections, **common)

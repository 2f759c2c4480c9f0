"""GATEWAY_REDIS_URL: its forms, parsed and validated without the redis library.

Forms:
  redis://[[user]:password@]host:port/db          plain TCP
  rediss://...                                     TLS
  unix:///path/to/redis.sock[?db=N]                unix socket
  redis+sentinel://[[user]:password@]h1:p1,h2:p2/service[/db][?sentinel_password=...]
  rediss+sentinel://...                            the same over TLS (to sentinels and master)
  with GATEWAY_REDIS_CLUSTER=true: redis[s]://[[user]:password@]seed1:p1[,seed2:p2...][/0]

settings.py validates the URL at start-up with `validate_url`; redis_client.py parses it
again to connect. Errors name GATEWAY_REDIS_URL and never echo a password.
"""

from __future__ import annotations

from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

SENTINEL_SCHEMES = frozenset({"redis+sentinel", "rediss+sentinel"})
PLAIN_SCHEMES = frozenset({"redis", "rediss", "unix"})
DEFAULT_SENTINEL_PORT = 26379
DEFAULT_REDIS_PORT = 6379


def split_hosts(hostlist: str, default_port: int, what: str) -> list[tuple[str, int]]:
    """'h1:p1,[2001:db8::1]:p2,h3' → [(h1, p1), (2001:db8::1, p2), (h3, default)]."""
    hosts: list[tuple[str, int]] = []
    for raw in hostlist.split(","):
        item = raw.strip()
        if not item:
            raise ValueError(f"GATEWAY_REDIS_URL: empty {what} address in {hostlist!r}")
        if item.startswith("["):  # [IPv6]:port
            host, _, rest = item[1:].partition("]")
            port_text = rest.removeprefix(":") if rest.startswith(":") else rest
            if rest and not rest.startswith(":"):
                raise ValueError(f"GATEWAY_REDIS_URL: bad {what} address {item!r}")
        elif item.count(":") == 1:
            host, _, port_text = item.partition(":")
        elif ":" in item:
            raise ValueError(f"GATEWAY_REDIS_URL: write IPv6 {what} addresses as [address]:port, not {item!r}")
        else:
            host, port_text = item, ""
        try:
            port = int(port_text) if port_text else default_port
        except ValueError:
            raise ValueError(f"GATEWAY_REDIS_URL: bad port in {what} address {item!r}") from None
        if not host or not 0 < port < 65536:
            raise ValueError(f"GATEWAY_REDIS_URL: bad {what} address {item!r}")
        hosts.append((host, port))
    return hosts


def _userinfo(netloc: str) -> tuple[str, str | None, str | None]:
    userinfo, _, hostlist = netloc.rpartition("@")
    username = password = None
    if userinfo:
        user, _, pw = userinfo.partition(":")
        username, password = (unquote(user) or None), (unquote(pw) or None)
    return hostlist, username, password


def is_sentinel(url: str) -> bool:
    """A redis+sentinel:// or rediss+sentinel:// URL."""
    return urlsplit(url).scheme in SENTINEL_SCHEMES


def parse_sentinel_url(url: str) -> tuple[list[tuple[str, int]], str, int, str | None, str | None]:
    """redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db] → (hosts, service, db, user, pw)."""
    parts = urlsplit(url)
    hostlist, username, password = _userinfo(parts.netloc)
    hosts = split_hosts(hostlist, DEFAULT_SENTINEL_PORT, "sentinel")
    segments = [s for s in parts.path.split("/") if s]
    if not segments:
        raise ValueError("GATEWAY_REDIS_URL: a sentinel URL needs the service name as its path")
    if len(segments) > 2:
        raise ValueError("GATEWAY_REDIS_URL: a sentinel URL's path is /service_name[/db]")
    service = unquote(segments[0])
    db_text = segments[1] if len(segments) > 1 else parse_qs(parts.query).get("db", ["0"])[0]
    try:
        db = int(db_text)
    except ValueError:
        raise ValueError(f"GATEWAY_REDIS_URL: database {db_text!r} is not a number") from None
    return hosts, service, db, username, password


def cluster_seeds(url: str) -> tuple[str, list[tuple[str, int]]]:
    """(URL of the first seed node, every seed) for a cluster URL with one or more comma-separated hosts."""
    parts = urlsplit(url)
    hostlist, _, _ = _userinfo(parts.netloc)
    seeds = split_hosts(hostlist, DEFAULT_REDIS_PORT, "cluster node")
    if parts.path.strip("/") not in ("", "0"):
        raise ValueError("GATEWAY_REDIS_URL: Redis Cluster has only database 0 (path / or /0)")
    userinfo = parts.netloc.rpartition("@")[0]
    host, port = seeds[0]
    first = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    netloc = f"{userinfo}@{first}" if userinfo else first
    return urlunsplit((parts.scheme, netloc, "/0", parts.query, "")), seeds


def validate_url(url: str, cluster: bool) -> None:
    """Raise ValueError (naming GATEWAY_REDIS_URL, never echoing a password) unless connect() can use it."""
    scheme = urlsplit(url).scheme
    if scheme not in PLAIN_SCHEMES | SENTINEL_SCHEMES:
        raise ValueError("GATEWAY_REDIS_URL must start with redis://, rediss://, unix:// or redis+sentinel://")
    if scheme in SENTINEL_SCHEMES:
        if cluster:
            raise ValueError("GATEWAY_REDIS_CLUSTER=true cannot be combined with a redis+sentinel:// URL")
        parse_sentinel_url(url)
    elif cluster:
        if scheme == "unix":
            raise ValueError("GATEWAY_REDIS_CLUSTER=true needs redis:// or rediss:// node addresses, not unix://")
        cluster_seeds(url)
    elif scheme != "unix" and "," in urlsplit(url).netloc:
        raise ValueError("GATEWAY_REDIS_URL: several hosts need redis+sentinel:// or GATEWAY_REDIS_CLUSTER=true")

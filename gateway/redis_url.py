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

from urllib.parse import SplitResult, parse_qs, unquote, urlsplit, urlunsplit

SENTINEL_SCHEMES = frozenset({"redis+sentinel", "rediss+sentinel"})
PLAIN_SCHEMES = frozenset({"redis", "rediss", "unix"})
DEFAULT_SENTINEL_PORT = 26379
DEFAULT_REDIS_PORT = 6379
# What a host name or address may hold (letters, digits, '.', '-', '_', and ':' and '%' of IPv6 zone ids).
_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_:%")
_ENCODE_HINT = " (percent-encode '/', '#', '@', '?' and ':' in a user name or password: %2F %23 %40 %3F %3A)"


def split_hosts(hostlist: str, default_port: int, what: str) -> list[tuple[str, int]]:
    """'h1:p1,[2001:db8::1]:p2,h3' → [(h1, p1), (2001:db8::1, p2), (h3, default)].

    Errors say which address is wrong (its position) and never its text: a password with an
    unencoded '/', '#' or '@' spills into the host part, so the host may hold a piece of it.
    """
    hosts: list[tuple[str, int]] = []
    items = hostlist.split(",")
    for index, raw in enumerate(items, start=1):
        item = raw.strip()
        where = f"{what} address" if len(items) == 1 else f"{what} address #{index}"
        if not item:
            raise ValueError(f"GATEWAY_REDIS_URL: empty {where}")
        if item.startswith("["):  # [IPv6]:port
            host, _, rest = item[1:].partition("]")
            port_text = rest.removeprefix(":") if rest.startswith(":") else rest
            if rest and not rest.startswith(":"):
                raise ValueError(f"GATEWAY_REDIS_URL: bad {where}")
        elif item.count(":") == 1:
            host, _, port_text = item.partition(":")
        elif ":" in item:
            raise ValueError(f"GATEWAY_REDIS_URL: write IPv6 addresses as [address]:port ({where})")
        else:
            host, port_text = item, ""
        if port_text and not (port_text.isascii() and port_text.isdigit()):
            raise ValueError(f"GATEWAY_REDIS_URL: the port of the {where} is not a number{_ENCODE_HINT}")
        port = int(port_text) if port_text else default_port
        if not host or not 0 < port < 65536 or not _HOST_CHARS.issuperset(host):
            raise ValueError(f"GATEWAY_REDIS_URL: bad {where}{_ENCODE_HINT}")
        hosts.append((host, port))
    return hosts


def _database(text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise ValueError(f"GATEWAY_REDIS_URL: the database is not a number{_ENCODE_HINT}")
    return int(text)


def _split(url: str) -> SplitResult:
    """urlsplit, refusing a fragment: an unencoded '#' in a password cuts the URL there."""
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unbalanced '[': urllib's message is ours to replace
        raise ValueError(f"GATEWAY_REDIS_URL is not a valid URL{_ENCODE_HINT}") from None
    if "#" in url:
        raise ValueError(f"GATEWAY_REDIS_URL holds a '#'{_ENCODE_HINT}")
    return parts


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
    parts = _split(url)
    hostlist, username, password = _userinfo(parts.netloc)
    hosts = split_hosts(hostlist, DEFAULT_SENTINEL_PORT, "sentinel")
    segments = [s for s in parts.path.split("/") if s]
    if not segments:
        raise ValueError("GATEWAY_REDIS_URL: a sentinel URL needs the service name as its path")
    if len(segments) > 2:
        raise ValueError("GATEWAY_REDIS_URL: a sentinel URL's path is /service_name[/db]")
    service = unquote(segments[0])
    db_text = segments[1] if len(segments) > 1 else parse_qs(parts.query).get("db", ["0"])[0]
    db = _database(db_text)
    return hosts, service, db, username, password


def cluster_seeds(url: str) -> tuple[str, list[tuple[str, int]]]:
    """(URL of the first seed node, every seed) for a cluster URL with one or more comma-separated hosts."""
    parts = _split(url)
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
    """Raise ValueError unless connect() can use `url`.

    The message names GATEWAY_REDIS_URL and the part that is wrong (scheme, address, port,
    database, path) but never echoes any text of the URL: a password with an unencoded
    '/', '#' or '@' spills into the other parts, so any of them may hold a piece of it.
    """
    parts = _split(url)
    scheme = parts.scheme
    if scheme not in PLAIN_SCHEMES | SENTINEL_SCHEMES:
        raise ValueError("GATEWAY_REDIS_URL must start with redis://, rediss://, unix:// or redis+sentinel://")
    if "db" in (query := parse_qs(parts.query)):
        _database(query["db"][0])
    if scheme in SENTINEL_SCHEMES:
        if cluster:
            raise ValueError("GATEWAY_REDIS_CLUSTER=true cannot be combined with a redis+sentinel:// URL")
        parse_sentinel_url(url)
    elif cluster:
        if scheme == "unix":
            raise ValueError("GATEWAY_REDIS_CLUSTER=true needs redis:// or rediss:// node addresses, not unix://")
        cluster_seeds(url)
    elif scheme == "unix":
        hostlist, _, _ = _userinfo(parts.netloc)
        if hostlist or not parts.path.startswith("/"):
            raise ValueError("GATEWAY_REDIS_URL: unix:// takes an absolute socket path (unix:///path/to/redis.sock)")
    else:
        hostlist, _, _ = _userinfo(parts.netloc)
        if "," in hostlist:
            raise ValueError("GATEWAY_REDIS_URL: several hosts need redis+sentinel:// or GATEWAY_REDIS_CLUSTER=true")
        split_hosts(hostlist, DEFAULT_REDIS_PORT, "server")
        if parts.path.strip("/"):
            _database(parts.path.strip("/"))

"""Who called, and which public URL they called: believed from X-Forwarded-* only via trusted proxies.

uvicorn runs with proxy_headers=False; this module is the one place that reads
X-Forwarded-For/-Proto/-Host, and only when the socket peer is in
GATEWAY_TRUSTED_PROXIES. Everyone else's forwarded headers are ignored.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

from gateway.settings import IPNetwork, PublicBase


@dataclass(slots=True)  # not frozen: built on every request, read-only by convention (see InboundRequest)
class Origin:
    client_ip: str
    scheme: str
    netloc: str
    path_prefix: str


@lru_cache(maxsize=4096)
def _parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class OriginResolver:
    def __init__(self, trusted_proxies: tuple[IPNetwork, ...], public_base: PublicBase | None) -> None:
        self._trusted = trusted_proxies
        self._public_base = public_base
        self._trust_cache: dict[str, bool] = {}

    def is_trusted(self, ip: str) -> bool:
        cached = self._trust_cache.get(ip)
        if cached is None:
            address = _parse_ip(ip)
            cached = address is not None and any(address in net for net in self._trusted)
            if len(self._trust_cache) < 4096:
                self._trust_cache[ip] = cached
        return cached

    def resolve(self, peer: str | None, scope_scheme: str, headers: Mapping[str, str]) -> Origin:
        peer_ip = peer or ""
        trusted = bool(self._trusted) and self.is_trusted(peer_ip)
        client_ip = peer_ip
        if trusted:
            forwarded_for = headers.get("x-forwarded-for")
            if forwarded_for is not None:
                client_ip = self._client_from_chain(forwarded_for, peer_ip)
        base = self._public_base
        if base is not None:
            return Origin(client_ip, base.scheme, base.netloc, base.path_prefix)
        scheme = scope_scheme
        netloc = headers.get("host", "")
        if trusted:
            proto = headers.get("x-forwarded-proto")
            if proto:
                # The outermost proxy's value (left-most) is the scheme the carrier used.
                scheme = proto.split(",", 1)[0].strip().lower()
            forwarded_host = headers.get("x-forwarded-host")
            if forwarded_host:
                netloc = forwarded_host.split(",", 1)[0].strip()
        return Origin(client_ip, scheme, netloc, "")

    def _client_from_chain(self, chain: str, peer_ip: str) -> str:
        """The right-most address that is not a trusted proxy (the first hop we cannot vouch for)."""
        hops = [hop.strip() for hop in chain.split(",")]
        for hop in reversed(hops):
            if not hop:
                continue
            if _parse_ip(hop) is None:
                return hop  # garbage: keep it, so it can match no allowlist
            if not self.is_trusted(hop):
                return hop
        first = next((hop for hop in hops if hop), None)
        return first if first is not None else peer_ip

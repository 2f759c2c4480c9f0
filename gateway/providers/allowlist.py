"""An IP allowlist: a fixed set of IPv4/IPv6 networks, where empty means "allow nobody".

Used by carriers that do not sign their callbacks (Exotel): the data file format
(`CIDR, region, source, YYYY-MM-DD` a line) makes every entry traceable to its source.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Iterable
from pathlib import Path

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_FILE_FIELDS = 4  # CIDR, region, source, date


def parse_network(entry: str) -> Network:
    """One allowlist entry (address or CIDR, host bits must be zero); ValueError names it."""
    try:
        network = ipaddress.ip_network(entry, strict=True)
    except ValueError as exc:
        raise ValueError(f"invalid allowlist entry {entry!r}: {exc}") from None
    if network.prefixlen == 0:  # "0.0.0.0/0" or "::/0" would switch the check off
        raise ValueError(f"invalid allowlist entry {entry!r}: matches every address")
    return network


class Allowlist:
    """A fixed set of IPv4/IPv6 networks. Empty means: allow nobody."""

    __slots__ = ("_networks", "_v4", "_v6")

    def __init__(self, networks: Iterable[Network] = ()) -> None:
        self._networks = tuple(dict.fromkeys(networks))
        # (network, mask) as integers: membership is one AND and one compare per entry.
        self._v4 = tuple((int(n.network_address), int(n.netmask)) for n in self._networks if n.version == 4)
        self._v6 = tuple((int(n.network_address), int(n.netmask)) for n in self._networks if n.version == 6)

    @classmethod
    def parse(cls, text: str) -> Allowlist:
        """From a comma-separated list (EXOTEL_ALLOWED_IPS); blank items are ignored."""
        return cls(parse_network(item.strip()) for item in text.split(",") if item.strip())

    @classmethod
    def load_file(cls, path: str | os.PathLike[str]) -> Allowlist:
        """From the data file: one `CIDR, region, source, YYYY-MM-DD` entry a line.

        Whole-line `#` comments and blank lines are skipped (a `#` inside a line is part
        of it: sources are URLs). An entry without its region, source and date cannot be
        traced, so it is an error, naming the file and line.
        """
        networks: list[Network] = []
        text = Path(path).read_text(encoding="utf-8")
        for number, line in enumerate(text.splitlines(), start=1):
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            fields = [field.strip() for field in stripped.split(",")]
            try:
                if len(fields) != _FILE_FIELDS or not all(fields):
                    raise ValueError("expected 'CIDR, region, source, YYYY-MM-DD'")
                datetime.date.fromisoformat(fields[3])
                networks.append(parse_network(fields[0]))
            except ValueError as exc:
                raise ValueError(f"{path}:{number}: {exc}") from None
        return cls(networks)

    @property
    def networks(self) -> tuple[Network, ...]:
        return self._networks

    def __len__(self) -> int:
        return len(self._networks)

    def __repr__(self) -> str:
        return f"Allowlist({[str(n) for n in self._networks]})"

    def contains(self, ip: str) -> bool:
        """Whether `ip` is in the list; anything that is not an IP address is not."""
        try:
            address = ipaddress.ip_address(ip)
        except (ValueError, TypeError):
            return False
        if isinstance(address, ipaddress.IPv4Address):
            return _member(int(address), self._v4)
        if _member(int(address), self._v6):
            return True
        # A dual-stack socket reports an IPv4 peer as ::ffff:a.b.c.d: judge it as IPv4.
        mapped = address.ipv4_mapped
        return mapped is not None and _member(int(mapped), self._v4)


def _member(value: int, table: tuple[tuple[int, int], ...]) -> bool:
    for network, mask in table:
        if value & mask == network:
            return True
    return False

"""A small TTL cache with negative entries, bounded by entry count and by bytes.

Entries are kept in insertion order: with one lifetime per kind of entry (found /
known absent) that is also their expiry order, so every `put` drops what has expired
from the front before adding, and eviction (count or bytes over the bound) drops the
oldest entry, the one closest to expiring anyway. A `get` never extends an entry.
"""

from __future__ import annotations

import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

V = TypeVar("V")

ENTRY_OVERHEAD_BYTES = 200  # the OrderedDict slot, the (expires, value) tuple and the float: order of magnitude


def key_size(key: str, _value: object) -> int:
    """The default weight of an entry: its key's size in memory plus a fixed overhead."""
    return sys.getsizeof(key) + ENTRY_OVERHEAD_BYTES


class TTLCache(Generic[V]):
    """Maps key → value-or-None with per-entry expiry; None records "known absent"."""

    def __init__(
        self,
        max_entries: int,
        ttl_s: float,
        negative_ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        max_bytes: int = 16 * 1024 * 1024,
        weigh: Callable[[str, V | None], int] = key_size,
    ) -> None:
        self._data: OrderedDict[str, tuple[float, V | None, int]] = OrderedDict()
        self._max = max_entries
        self._max_bytes = max_bytes
        self._bytes = 0
        self._ttl = ttl_s
        self._negative_ttl = negative_ttl_s
        self._clock = clock
        self._weigh = weigh

    def get(self, key: str) -> tuple[bool, V | None]:
        """(found, value). found is False on a miss or an expired entry."""
        entry = self._data.get(key)
        if entry is None:
            return False, None
        expires, value, _ = entry
        if expires <= self._clock():
            self.discard(key)
            return False, None
        return True, value

    def put(self, key: str, value: V | None) -> None:
        ttl = self._ttl if value is not None else self._negative_ttl
        if ttl <= 0:
            return
        now = self._clock()
        self.discard(key)  # a replaced entry moves to the back, with its new expiry
        self._drop_expired(now)
        size = self._weigh(key, value)
        if size > self._max_bytes:
            return  # never worth evicting everything else for
        self._data[key] = (now + ttl, value, size)
        self._bytes += size
        while len(self._data) > self._max or self._bytes > self._max_bytes:
            _, (_, _, dropped) = self._data.popitem(last=False)
            self._bytes -= dropped

    def _drop_expired(self, now: float) -> None:
        # The front is the oldest entry; an entry of the other kind (another lifetime) may hide
        # an expired one behind it until it expires itself: bounded by the longer lifetime.
        while self._data:
            key, (expires, _, size) = next(iter(self._data.items()))
            if expires > now:
                return
            del self._data[key]
            self._bytes -= size

    def discard(self, key: str) -> None:
        entry = self._data.pop(key, None)
        if entry is not None:
            self._bytes -= entry[2]

    def clear(self) -> None:
        self._data.clear()
        self._bytes = 0

    @property
    def size_bytes(self) -> int:
        """The weight of what is cached (as `weigh` counts it)."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._data)

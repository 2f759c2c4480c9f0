"""A small bounded TTL cache with negative entries (LRU eviction)."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

V = TypeVar("V")
_MISSING = object()


class TTLCache(Generic[V]):
    """Maps key → value-or-None with per-entry expiry; None records "known absent"."""

    def __init__(
        self,
        max_entries: int,
        ttl_s: float,
        negative_ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._data: OrderedDict[str, tuple[float, V | None]] = OrderedDict()
        self._max = max_entries
        self._ttl = ttl_s
        self._negative_ttl = negative_ttl_s
        self._clock = clock

    def get(self, key: str) -> tuple[bool, V | None]:
        """(found, value). found is False on a miss or an expired entry."""
        entry = self._data.get(key)
        if entry is None:
            return False, None
        expires, value = entry
        if expires <= self._clock():
            del self._data[key]
            return False, None
        self._data.move_to_end(key)
        return True, value

    def put(self, key: str, value: V | None) -> None:
        ttl = self._ttl if value is not None else self._negative_ttl
        if ttl <= 0:
            return
        self._data[key] = (self._clock() + ttl, value)
        self._data.move_to_end(key)
        while len(self._data) > self._max:
            self._data.popitem(last=False)

    def discard(self, key: str) -> None:
        self._data.pop(key, None)

    def clear(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)

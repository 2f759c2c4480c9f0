"""TTLCache: bounded by entries and by bytes, and what has expired is dropped (issue 14, item 6)."""

from __future__ import annotations

from gateway.cache import TTLCache, key_size
from tests.helpers.support import Clock


def weigh_by_length(key: str, value: str | None) -> int:
    return len(key) + len(value or "")


def test_the_byte_bound_evicts_the_oldest_entries() -> None:
    cache: TTLCache[str] = TTLCache(1000, 60, 60, Clock(0.0), max_bytes=100, weigh=weigh_by_length)
    for index in range(10):
        cache.put(f"k{index}", "v" * 18)  # 20 bytes each: 5 fit
    assert cache.size_bytes <= 100
    assert len(cache) == 5
    assert cache.get("k0") == (False, None)  # the oldest went first
    assert cache.get("k9") == (True, "v" * 18)


def test_an_entry_larger_than_the_byte_bound_is_not_kept_and_evicts_nothing() -> None:
    cache: TTLCache[str] = TTLCache(1000, 60, 60, Clock(0.0), max_bytes=100, weigh=weigh_by_length)
    cache.put("small", "v")
    cache.put("huge", "v" * 1000)
    assert cache.get("huge") == (False, None)
    assert cache.get("small") == (True, "v")


def test_the_entry_count_bound_still_holds() -> None:
    cache: TTLCache[str] = TTLCache(3, 60, 60, Clock(0.0))
    for index in range(10):
        cache.put(f"k{index}", "v")
    assert len(cache) == 3


def test_expired_entries_are_dropped_without_being_read_again() -> None:
    """Nobody reads the flood's keys again: they must still go once expired."""
    clock = Clock(1000.0)
    cache: TTLCache[str] = TTLCache(10_000, 5, 1, clock)
    for index in range(500):
        cache.put(f"absent-{index}", None)
    clock.now = 1002.0  # past the negative lifetime
    cache.put("fresh", None)
    assert len(cache) == 1
    assert cache.size_bytes == key_size("fresh", None)


def test_replacing_and_discarding_keep_the_byte_count_exact() -> None:
    cache: TTLCache[str] = TTLCache(100, 60, 60, Clock(0.0), max_bytes=1000, weigh=weigh_by_length)
    cache.put("a", "x" * 10)
    cache.put("a", "x" * 20)
    assert cache.size_bytes == 21
    cache.discard("a")
    assert cache.size_bytes == 0 and len(cache) == 0
    cache.put("b", "y")
    cache.clear()
    assert cache.size_bytes == 0


def test_a_read_does_not_extend_an_entry() -> None:
    clock = Clock(0.0)
    cache: TTLCache[str] = TTLCache(100, 5, 1, clock)
    cache.put("a", "x")
    clock.now = 4.0
    assert cache.get("a") == (True, "x")
    clock.now = 5.0
    assert cache.get("a") == (False, None)

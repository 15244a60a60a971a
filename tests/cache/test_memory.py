"""The memory tier: budget, pins, reservations, eviction order."""

from __future__ import annotations

import pytest

from modelfleet.cache.memory import MemoryCache, VictimInUseError
from modelfleet.cache.policy import LRUPolicy
from modelfleet.errors import ModelTooLargeError, OutOfMemoryError


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def make(budget: int = 100) -> MemoryCache[str]:
    return MemoryCache(budget, LRUPolicy(), clock=Clock())


def load(cache: MemoryCache[str], key: str, size: int) -> list[str]:
    victims = [e.key for e in cache.reserve(key, size)]
    victims += [e.key for e in cache.admit(key, key.upper(), size, cost_s=0.1)]
    return victims


def test_admits_within_budget_and_evicts_lru() -> None:
    cache = make(100)
    assert load(cache, "a", 40) == []
    assert load(cache, "b", 40) == []
    cache.get("a")
    assert load(cache, "c", 40) == ["b"]
    assert sorted(cache) == ["a", "c"]
    assert cache.used_bytes == 80


def test_pinned_entries_are_never_evicted() -> None:
    cache = make(100)
    load(cache, "a", 50)
    load(cache, "b", 50)
    cache.pin("a")
    assert load(cache, "c", 50) == ["b"]
    cache.pin("c")
    with pytest.raises(OutOfMemoryError, match="held by models in use"):
        cache.reserve("d", 10)
    cache.unpin("c")
    assert [e.key for e in cache.reserve("d", 10)] == ["c"]


def test_reservations_count_against_the_budget() -> None:
    cache = make(100)
    cache.reserve("a", 60)
    with pytest.raises(OutOfMemoryError):
        cache.reserve("b", 60)
    cache.release("a")
    assert cache.reserve("b", 60) == []


def test_model_larger_than_budget_is_refused() -> None:
    with pytest.raises(ModelTooLargeError, match="whole memory budget"):
        make(100).reserve("huge", 101)


def test_measured_size_above_reservation_evicts_others_not_the_newcomer() -> None:
    cache = make(100)
    load(cache, "a", 50)
    cache.reserve("b", 10)
    victims = cache.admit("b", "B", 80, cost_s=0.1)
    assert [v.key for v in victims] == ["a"]
    assert "b" in cache
    assert cache.used_bytes == 80


def test_pop_and_evict_one() -> None:
    cache = make(100)
    load(cache, "a", 10)
    load(cache, "b", 10)
    cache.pin("a")
    victim = cache.evict_one()
    assert victim is not None
    assert victim.key == "b"
    assert cache.evict_one() is None
    popped = cache.pop("a")
    assert popped is not None
    assert popped.value == "A"
    assert cache.used_bytes == 0


def test_get_counts_hits() -> None:
    cache = make(100)
    load(cache, "a", 10)
    cache.get("a")
    cache.get("a")
    entry = cache.entry("a")
    assert entry is not None
    assert entry.hits == 2


def test_a_reservation_evicts_nothing_while_a_victim_it_waits_for_is_in_use() -> None:
    cache = make(100)
    load(cache, "a", 40)
    load(cache, "b", 40)
    cache.pin("a")  # the least recently used, in use
    with pytest.raises(VictimInUseError):
        cache.reserve("c", 40, wait_for=lambda entry: entry.key == "a")
    assert sorted(cache) == ["a", "b"]
    assert cache.reserved_bytes == 0
    cache.unpin("a")
    assert [e.key for e in cache.reserve("c", 40, wait_for=lambda entry: True)] == ["a"]
    assert cache.reserved_bytes == 40


def test_a_reservation_passes_over_a_victim_in_use() -> None:
    cache = make(100)
    load(cache, "a", 40)
    load(cache, "b", 40)
    cache.pin("a")
    assert [e.key for e in cache.reserve("c", 40, wait_for=lambda entry: False)] == ["b"]

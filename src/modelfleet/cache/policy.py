"""Eviction policies for the memory tier.

A policy keeps only ordering bookkeeping and proposes victims; the cache owns sizes, pins and
the entries themselves (the split cachetools makes). Policies are pure Python with an injected
clock so the benchmark simulator drives the very classes the server runs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Iterator


class EvictionPolicy(ABC):
    """Order bookkeeping for a byte-budgeted cache.

    The cache calls :meth:`on_insert` when an entry is admitted, :meth:`on_access` on every hit,
    :meth:`on_remove` when an entry leaves for any reason, and iterates :meth:`victims` to pick
    entries to evict (it skips pinned ones itself).
    """

    name: str = ""

    @abstractmethod
    def on_insert(self, key: str, size_bytes: int, cost_s: float) -> None:
        """An entry was admitted; ``cost_s`` is what it took to load it."""

    @abstractmethod
    def on_access(self, key: str) -> None:
        """An entry was used."""

    @abstractmethod
    def on_remove(self, key: str) -> None:
        """An entry left the cache."""

    @abstractmethod
    def victims(self) -> Iterator[str]:
        """Entries in the order they should be evicted, first victim first."""


class LRUPolicy(EvictionPolicy):
    """Least recently used first: the SageMaker and ModelMesh baseline."""

    name = "lru"

    def __init__(self) -> None:
        self._order: OrderedDict[str, None] = OrderedDict()

    def on_insert(self, key: str, size_bytes: int, cost_s: float) -> None:
        self._order[key] = None
        self._order.move_to_end(key)

    def on_access(self, key: str) -> None:
        if key in self._order:
            self._order.move_to_end(key)

    def on_remove(self, key: str) -> None:
        self._order.pop(key, None)

    def victims(self) -> Iterator[str]:
        return iter(list(self._order))


POLICIES: dict[str, type[EvictionPolicy]] = {"lru": LRUPolicy}


def make_policy(name: str) -> EvictionPolicy:
    """Build the policy registered under ``name``."""
    try:
        return POLICIES[name.lower()]()
    except KeyError:
        known = ", ".join(sorted(POLICIES))
        raise ValueError(f"unknown eviction policy {name!r}; known: {known}") from None

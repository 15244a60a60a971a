"""The interface every eviction policy implements, and the bookkeeping they share.

How the memory tier drives a policy (:class:`~modelfleet.cache.memory.MemoryCache`):

* :meth:`EvictionPolicy.on_insert` when a loaded model is admitted. The instance manager then
  gets the entry for the request that caused the load, so the first :meth:`on_access` after an
  insert is that same request, not a second use; policies that count uses absorb it
  (:class:`UseCounter`).
* :meth:`EvictionPolicy.on_access` on every hit, :meth:`EvictionPolicy.on_remove` when an entry
  leaves for any reason (eviction or an explicit unload).
* :meth:`EvictionPolicy.victims` when room is needed. The cache walks the iterator, skips pinned
  entries, stops once it has chosen enough bytes and only then removes the chosen keys. So a
  policy must yield lazily (only the first few victims are ever looked at) and must stay valid
  while keys it yielded are removed, or are left in place because they were pinned.

The policies here share one way of meeting that contract: the iterator takes each victim out of
the policy's order as it yields it and parks it as *offered*. ``on_remove`` of an offered key is
an eviction; an offered key still present when :meth:`victims` is next called was skipped (it
was pinned) and goes back to the front of the order (:meth:`_restore`). An access to an offered
key rescues it. Only one walk is expected at a time; a new call starts afresh.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
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


class UseCounter:
    """Aged use counts per key, kept across evictions (TinyLFU's frequency filter).

    TinyLFU keeps these in a 4-bit count-min sketch to bound memory; a model server knows at
    most some hundred thousand models, so exact counts in a dict cost less than the 1 KB per
    model budget and make the simulation independent of hash seeds. Every ``period`` recorded
    uses all counts are halved (counts that reach zero are dropped), which is TinyLFU's reset:
    popularity that is no longer refreshed fades. Counts saturate at ``cap``. The period
    follows the cache: ten times the most entries it has held, as TinyLFU sizes its sample.
    """

    __slots__ = ("_counts", "_events", "cap", "min_period", "period")

    def __init__(self, *, cap: int = 15, min_period: int = 256) -> None:
        self._counts: dict[str, int] = {}
        self._events = 0
        self.cap = cap
        self.min_period = min_period
        self.period = min_period

    def record(self, key: str) -> None:
        count = self._counts.get(key, 0)
        if count < self.cap:
            self._counts[key] = count + 1
        self._events += 1
        if self._events >= self.period:
            self._halve()

    def estimate(self, key: str) -> int:
        return self._counts.get(key, 0)

    def fit(self, resident_entries: int) -> None:
        """Grow the sample period with the number of entries the cache holds."""
        self.period = max(self.period, self.min_period, 10 * resident_entries)

    def __len__(self) -> int:
        return len(self._counts)

    def _halve(self) -> None:
        self._events = 0
        self._counts = {k: c >> 1 for k, c in self._counts.items() if c > 1}


class Residency:
    """Live bytes and entries, and their high-water marks: the budget as a policy sees it.

    Policies with segments sized as fractions of the cache (S3-FIFO, W-TinyLFU) are never told
    the budget; once the cache is full its contents are the budget, so the high-water mark of
    the bytes held is a faithful estimate whenever eviction happens at all.
    """

    __slots__ = ("bytes", "entries", "peak_bytes", "peak_entries")

    def __init__(self) -> None:
        self.bytes = 0
        self.entries = 0
        self.peak_bytes = 0
        self.peak_entries = 0

    def add(self, size_bytes: int) -> None:
        self.bytes += size_bytes
        self.entries += 1
        self.peak_bytes = max(self.peak_bytes, self.bytes)
        self.peak_entries = max(self.peak_entries, self.entries)

    def discard(self, size_bytes: int) -> None:
        self.bytes -= size_bytes
        self.entries -= 1

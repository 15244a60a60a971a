"""The shared machinery of priority policies: lowest priority first, kept in a lazy heap.

A subclass says what an entry's priority is (:meth:`HeapPolicy._priority`) and may note each
use (:meth:`HeapPolicy._record_use`) and each eviction (:meth:`HeapPolicy._evicted`). A use
that only raises a priority is O(1): the entry is updated and its heap item, now too low, is
corrected when it reaches the top. A priority that falls pushes a new item. Items of removed
entries are dropped lazily and the heap is rebuilt when more than half of it is stale, so each
eviction is O(log n) amortised.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator

from modelfleet.cache.policies.base import EvictionPolicy, Residency

_MIN_COST_S = 1e-6  # a zero cost (unknown) would erase size and frequency from a priority


class HeapEntry:
    """What a priority policy knows of one resident entry."""

    __slots__ = ("fresh", "hits", "priority", "pushed", "seq", "size", "value")

    def __init__(self, size_bytes: int, cost_s: float) -> None:
        self.size = max(size_bytes, 1)
        self.value = max(cost_s, _MIN_COST_S) / self.size  # cost of a miss per byte held
        self.hits = 1  # the request that caused the load
        self.fresh = True  # the loading request's own get is still to come
        self.priority = 0.0
        self.pushed = 0.0  # the priority of its live heap item
        self.seq = 0  # identifies its live heap item


class HeapPolicy(EvictionPolicy):
    """Evicts the entry of lowest :meth:`_priority` first."""

    def __init__(self) -> None:
        self._entries: dict[str, HeapEntry] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._offered: dict[str, None] = {}
        self._seq = 0
        self._residency = Residency()

    # -- what subclasses define -----------------------------------------------------------------
    def _priority(self, key: str, entry: HeapEntry) -> float:
        raise NotImplementedError

    def _record_use(self, key: str, entry: HeapEntry, *, miss: bool) -> None:
        """A request for ``key``: a hit, or (``miss``) the request that loaded it."""

    def _evicted(self, key: str, entry: HeapEntry) -> None:
        """``key`` left the cache as a victim (not by an explicit unload)."""

    # -- the interface ------------------------------------------------------------------------
    def on_insert(self, key: str, size_bytes: int, cost_s: float) -> None:
        if key in self._entries:  # admitted again without leaving: start over
            self._forget(key)
            self._offered.pop(key, None)
        entry = HeapEntry(size_bytes, cost_s)
        self._entries[key] = entry
        self._residency.add(entry.size)
        self._record_use(key, entry, miss=True)
        entry.priority = self._priority(key, entry)
        self._push(key, entry)

    def on_access(self, key: str) -> None:
        entry = self._entries.get(key)
        if entry is None:
            return
        if entry.fresh:
            entry.fresh = False
            return
        entry.hits += 1
        self._record_use(key, entry, miss=False)
        entry.priority = self._priority(key, entry)
        if key in self._offered:
            del self._offered[key]  # rescued: it was offered as a victim but kept
            self._push(key, entry)
        elif entry.priority < entry.pushed:
            self._push(key, entry)  # the old item goes stale

    def on_remove(self, key: str) -> None:
        entry = self._forget(key)
        if entry is not None and key in self._offered:
            del self._offered[key]
            self._evicted(key, entry)

    def victims(self) -> Iterator[str]:
        for key in self._offered:  # skipped (pinned) last time: back in its place
            held = self._entries[key]
            held.pushed = held.priority
            heapq.heappush(self._heap, (held.priority, held.seq, key))
        self._offered.clear()
        while self._heap:
            heap = self._heap  # a removal while suspended may have rebuilt it
            priority, seq, key = heap[0]
            entry = self._entries.get(key)
            if entry is None or entry.seq != seq:
                heapq.heappop(heap)
            elif entry.priority > priority:
                entry.pushed = entry.priority
                heapq.heapreplace(heap, (entry.priority, seq, key))
            else:
                heapq.heappop(heap)
                self._offered[key] = None
                yield key

    # -- bookkeeping --------------------------------------------------------------------------
    def _push(self, key: str, entry: HeapEntry) -> None:
        self._seq += 1
        entry.seq = self._seq
        entry.pushed = entry.priority
        heapq.heappush(self._heap, (entry.priority, entry.seq, key))

    def _forget(self, key: str) -> HeapEntry | None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return None
        self._residency.discard(entry.size)
        if len(self._heap) > 2 * len(self._entries) + 32:
            self._heap = [
                (e.priority, e.seq, k) for k, e in self._entries.items() if k not in self._offered
            ]
            heapq.heapify(self._heap)
            for e in self._entries.values():
                e.pushed = e.priority
        return entry

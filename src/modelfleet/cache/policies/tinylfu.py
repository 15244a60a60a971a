"""W-TinyLFU (Einziger, Friedman and Manes, 2017) with segments measured in bytes.

Newcomers enter a small LRU *window* (``window_fraction`` of the bytes). The rest is the main
cache, a segmented LRU: *probation* for entries that came from the window and *protected* (80%
of the main bytes) for entries used again while on probation. When the window holds more than
its share, its oldest entry is the *candidate* for the main cache; if the main cache has no room
for it, the candidate and the main cache's first victim (oldest on probation, else oldest
protected) are compared by their aged use counts (:class:`UseCounter`, TinyLFU's frequency
filter): the less used one is evicted and, if it was the main cache's victim, the candidate
meets the next one, as Caffeine does for weighted entries. A candidate that loses is evicted
itself: a model server cannot refuse a load (the request needs the model), so "not admitted"
means "the first to go". Hits are O(1) reorderings; each step of an eviction is O(1).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator

from modelfleet.cache.policies.base import EvictionPolicy, Residency, UseCounter

_WINDOW = 0
_PROBATION = 1
_PROTECTED = 2


class _Entry:
    __slots__ = ("fresh", "segment", "size")

    def __init__(self, size_bytes: int) -> None:
        self.size = size_bytes
        self.segment = _WINDOW
        self.fresh = True  # the loading request's own get is still to come


class WTinyLFUPolicy(EvictionPolicy):
    """A recency window in front of a frequency-filtered segmented LRU, sized in bytes."""

    name = "wtinylfu"

    def __init__(self, *, window_fraction: float = 0.01, protected_fraction: float = 0.8) -> None:
        self.window_fraction = window_fraction
        self.protected_fraction = protected_fraction
        self._entries: dict[str, _Entry] = {}
        self._segments: tuple[OrderedDict[str, None], ...] = tuple(
            OrderedDict() for _ in range(3)
        )  # oldest first
        self._bytes = [0, 0, 0]
        self._offered: OrderedDict[str, None] = OrderedDict()
        self._uses = UseCounter()
        self._residency = Residency()

    def on_insert(self, key: str, size_bytes: int, cost_s: float) -> None:
        if key in self._entries:  # admitted again without leaving: start over
            self.on_remove(key)
        self._uses.record(key)
        entry = _Entry(size_bytes)
        self._entries[key] = entry
        self._residency.add(size_bytes)
        self._uses.fit(self._residency.peak_entries)
        self._place(key, entry, _WINDOW)

    def on_access(self, key: str) -> None:
        entry = self._entries.get(key)
        if entry is None:
            return
        if entry.fresh:
            entry.fresh = False
            return
        self._uses.record(key)
        if key in self._offered:  # rescued: offered as a victim but kept and used
            del self._offered[key]
            self._place(key, entry, entry.segment)
        elif entry.segment == _PROBATION:
            self._unplace(key, entry)
            self._place(key, entry, _PROTECTED)
            self._balance_protected()
        else:
            self._segments[entry.segment].move_to_end(key)

    def on_remove(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._unplace(key, entry)
            self._offered.pop(key, None)
            self._residency.discard(entry.size)

    def victims(self) -> Iterator[str]:
        for key in reversed(self._offered):  # skipped (pinned) last time: oldest again
            entry = self._entries[key]
            self._place(key, entry, entry.segment, oldest=True)
        self._offered.clear()
        window, probation, protected = self._segments
        while window or probation or protected:
            capacity = self._residency.peak_bytes
            window_share = self.window_fraction * capacity
            if window and self._bytes[_WINDOW] > window_share:
                key = next(iter(window))
                entry = self._entries[key]
                main_bytes = self._bytes[_PROBATION] + self._bytes[_PROTECTED]
                if main_bytes + entry.size <= capacity - window_share:
                    self._unplace(key, entry)
                    self._place(key, entry, _PROBATION)
                    continue
                if probation or protected:
                    rival = next(iter(probation or protected))
                    if self._uses.estimate(key) > self._uses.estimate(rival):
                        key, entry = rival, self._entries[rival]
            else:
                key = next(iter(probation or protected or window))
                entry = self._entries[key]
            self._unplace(key, entry)
            self._offered[key] = None
            yield key

    # -- bookkeeping --------------------------------------------------------------------------
    def _place(self, key: str, entry: _Entry, segment: int, *, oldest: bool = False) -> None:
        entry.segment = segment
        self._segments[segment][key] = None
        if oldest:
            self._segments[segment].move_to_end(key, last=False)
        self._bytes[segment] += entry.size

    def _unplace(self, key: str, entry: _Entry) -> None:
        segment = self._segments[entry.segment]
        if key in segment:
            del segment[key]
            self._bytes[entry.segment] -= entry.size

    def _balance_protected(self) -> None:
        """Demote the oldest protected entries to probation while protected is over its share."""
        share = self.protected_fraction * (1.0 - self.window_fraction) * self._residency.peak_bytes
        protected = self._segments[_PROTECTED]
        while self._bytes[_PROTECTED] > share and len(protected) > 1:
            key = next(iter(protected))
            entry = self._entries[key]
            self._unplace(key, entry)
            self._place(key, entry, _PROBATION)

"""Greedy-Dual-Size-Frequency, and GDSF fed by TinyLFU's aged frequencies.

GDSF (Cherkasova, 1998) gives each entry the priority ``H = L + F * C / S``: ``F`` its use
count, ``C`` the cost to load it again, ``S`` its size. The entry with the lowest ``H`` goes
first and ``L`` (the aging value) rises to the ``H`` of each evicted entry, so entries that are
not used again sink below newcomers over time. ``C / S`` is the cost of a miss per byte of room
the entry holds: large models that load quickly are cheap to keep out.

Plain GDSF forgets ``F`` when an entry leaves, so a popular model that was once pushed out comes
back with ``F = 1``. :class:`GDSFSketchPolicy` takes ``F`` from a :class:`UseCounter` instead,
the aged frequency TinyLFU keeps for admission, so popularity survives eviction and fades with
time rather than with residency.
"""

from __future__ import annotations

from modelfleet.cache.policies.base import UseCounter
from modelfleet.cache.policies.heap import HeapEntry, HeapPolicy


class GDSFPolicy(HeapPolicy):
    """Lowest ``L + F * cost / size`` first; ``F`` counts uses while resident."""

    name = "gdsf"

    def __init__(self) -> None:
        super().__init__()
        self._aging = 0.0

    def _frequency(self, key: str, entry: HeapEntry) -> float:
        return entry.hits

    def _priority(self, key: str, entry: HeapEntry) -> float:
        return self._aging + self._frequency(key, entry) * entry.value

    def _evicted(self, key: str, entry: HeapEntry) -> None:
        self._aging = max(self._aging, entry.priority)


class GDSFSketchPolicy(GDSFPolicy):
    """GDSF whose ``F`` is the aged use count of :class:`UseCounter`, kept across evictions."""

    name = "gdsf-lfu"

    def __init__(self, *, cap: int = 15) -> None:
        super().__init__()
        self._uses = UseCounter(cap=cap)

    def _frequency(self, key: str, entry: HeapEntry) -> float:
        return max(self._uses.estimate(key), 1)

    def _record_use(self, key: str, entry: HeapEntry, *, miss: bool) -> None:
        self._uses.record(key)
        self._uses.fit(self._residency.peak_entries)

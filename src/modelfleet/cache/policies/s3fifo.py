"""S3-FIFO (Yang et al., SOSP 2023) with its queues measured in bytes.

Three FIFO queues: a small one ``S`` for newcomers (10% of the bytes), a main one ``M`` for the
rest and a ghost ``G`` of keys recently evicted from ``S``. Each entry has a use counter capped at
3; a use only bumps it (no reordering: a hit is O(1)). When room is needed:

* if ``S`` holds at least its share (or ``M`` is empty), look at the oldest entry of ``S``: used
  again since it was loaded, it moves to ``M``; otherwise it is the victim and its key goes to
  ``G`` (quick demotion of one-hit wonders);
* otherwise look at the oldest entry of ``M``: with uses left, it goes back to the head of ``M``
  with one use fewer (lazy promotion, like CLOCK); with none, it is the victim.

An entry whose key is in ``G`` is admitted straight into ``M``. ``G`` remembers as many bytes of
keys as ``M`` holds. The cache is never told its budget: the high-water mark of the bytes held
stands for it (:class:`~modelfleet.cache.policies.base.Residency`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator

from modelfleet.cache.policies.base import EvictionPolicy, Residency

_SMALL = 0
_MAIN = 1
_MAX_USES = 3


class _Entry:
    __slots__ = ("fresh", "queue", "size", "uses")

    def __init__(self, size_bytes: int, queue: int) -> None:
        self.size = size_bytes
        self.queue = queue
        self.uses = 0  # uses after the load
        self.fresh = True  # the loading request's own get is still to come


class S3FIFOPolicy(EvictionPolicy):
    """Small, main and ghost FIFO queues; newcomers must be used again to reach ``main``."""

    name = "s3fifo"

    def __init__(self, *, small_fraction: float = 0.1) -> None:
        self.small_fraction = small_fraction
        self._entries: dict[str, _Entry] = {}
        self._queues: tuple[OrderedDict[str, None], OrderedDict[str, None]] = (
            OrderedDict(),
            OrderedDict(),
        )  # oldest first
        self._bytes = [0, 0]
        self._ghost: OrderedDict[str, int] = OrderedDict()
        self._ghost_bytes = 0
        self._offered: OrderedDict[str, None] = OrderedDict()
        self._residency = Residency()

    def on_insert(self, key: str, size_bytes: int, cost_s: float) -> None:
        if key in self._entries:  # admitted again without leaving: start over
            self._drop(key)
        queue = _MAIN if self._ghost_pop(key) else _SMALL
        entry = _Entry(size_bytes, queue)
        self._entries[key] = entry
        self._enqueue(key, entry)
        self._residency.add(size_bytes)

    def on_access(self, key: str) -> None:
        entry = self._entries.get(key)
        if entry is None:
            return
        if entry.fresh:
            entry.fresh = False
            return
        entry.uses = min(entry.uses + 1, _MAX_USES)
        if key in self._offered:  # rescued: offered as a victim but kept and used
            del self._offered[key]
            self._enqueue(key, entry)

    def on_remove(self, key: str) -> None:
        entry = self._entries.get(key)
        if entry is None:
            return
        evicted = key in self._offered
        self._drop(key)
        if evicted and entry.queue == _SMALL:
            self._ghost_add(key, entry.size)

    def victims(self) -> Iterator[str]:
        for key in reversed(self._offered):  # skipped (pinned) last time: oldest again
            self._enqueue(key, self._entries[key], oldest=True)
        self._offered.clear()
        small, main = self._queues
        while small or main:
            small_share = self.small_fraction * self._residency.peak_bytes
            if small and (self._bytes[_SMALL] >= small_share or not main):
                key = next(iter(small))
                entry = self._entries[key]
                if entry.uses > 0:
                    self._dequeue(key, entry)
                    entry.queue = _MAIN
                    self._enqueue(key, entry)
                    continue
            else:
                key = next(iter(main))
                entry = self._entries[key]
                if entry.uses > 0:
                    entry.uses -= 1
                    main.move_to_end(key)
                    continue
            self._dequeue(key, entry)
            self._offered[key] = None
            yield key

    # -- bookkeeping --------------------------------------------------------------------------
    def _enqueue(self, key: str, entry: _Entry, *, oldest: bool = False) -> None:
        queue = self._queues[entry.queue]
        queue[key] = None
        if oldest:
            queue.move_to_end(key, last=False)
        self._bytes[entry.queue] += entry.size

    def _dequeue(self, key: str, entry: _Entry) -> None:
        queue = self._queues[entry.queue]
        if key in queue:
            del queue[key]
            self._bytes[entry.queue] -= entry.size

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key)
        self._dequeue(key, entry)
        self._offered.pop(key, None)
        self._residency.discard(entry.size)

    def _ghost_add(self, key: str, size_bytes: int) -> None:
        self._ghost[key] = size_bytes
        self._ghost_bytes += size_bytes
        limit = (1.0 - self.small_fraction) * self._residency.peak_bytes
        while self._ghost_bytes > limit and self._ghost:
            _, size = self._ghost.popitem(last=False)
            self._ghost_bytes -= size

    def _ghost_pop(self, key: str) -> bool:
        size = self._ghost.pop(key, None)
        if size is None:
            return False
        self._ghost_bytes -= size
        return True

"""Byte-LRU: least recently used first, whatever its size (SageMaker and ModelMesh)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator

from modelfleet.cache.policies.base import EvictionPolicy


class LRUPolicy(EvictionPolicy):
    """Least recently used first: the SageMaker and ModelMesh baseline."""

    name = "lru"

    def __init__(self) -> None:
        self._order: OrderedDict[str, None] = OrderedDict()  # oldest first
        self._offered: OrderedDict[str, None] = OrderedDict()  # yielded, not yet removed

    def on_insert(self, key: str, size_bytes: int, cost_s: float) -> None:
        self._offered.pop(key, None)
        self._order[key] = None
        self._order.move_to_end(key)

    def on_access(self, key: str) -> None:
        if key in self._order:
            self._order.move_to_end(key)
        elif key in self._offered:
            del self._offered[key]
            self._order[key] = None

    def on_remove(self, key: str) -> None:
        self._order.pop(key, None)
        self._offered.pop(key, None)

    def victims(self) -> Iterator[str]:
        # Skipped (pinned) victims of the last walk go back to the front, in their order.
        for key in reversed(self._offered):
            self._order[key] = None
            self._order.move_to_end(key, last=False)
        self._offered.clear()
        while self._order:
            key, _ = self._order.popitem(last=False)
            self._offered[key] = None
            yield key

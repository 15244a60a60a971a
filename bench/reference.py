"""The policies the benchmark compares against that are not for serving.

* :class:`OfflinePolicy`: a size- and cost-weighted Belady heuristic; it reads the future.
* :class:`PopularityOracle`: knows the distribution the trace is drawn from (not the draws) and
  keeps the models of highest ``probability * cost / size``: about the best any online policy
  can do on a stationary trace, which tells how much of the gap to the offline heuristic an
  online policy can close at all.
* :func:`count_limit`: Ray Serve's ``max_num_models_per_replica`` for a byte budget.

Both policies sort the cache on each walk (O(n log n)); fine for a benchmark.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator, Sequence

from modelfleet.cache.policy import EvictionPolicy
from modelfleet.plan.sim import Catalogue, Clocked, Trace


class OfflinePolicy(Clocked, EvictionPolicy):
    """Evict the entry with the largest ``next-use distance * size / cost`` first.

    Keeping an entry until its next use holds ``size`` bytes for ``distance`` requests and
    saves one load of ``cost`` seconds; this evicts the entry whose saving per byte-request is
    lowest (entries never used again first, the largest ``size / cost`` of them first). With
    equal sizes and costs it is Belady's MIN, which is optimal; with variable sizes and costs
    the optimum is NP-hard and this is a heuristic (in the family of Belady-Size), a strong
    reference rather than a bound. It cannot refuse a load either: like every policy here it
    goes through the same MemoryCache, which always admits the requested model.
    """

    name = "offline"

    def __init__(self, trace: Sequence[int], catalogue: Catalogue) -> None:
        self._catalogue = catalogue
        self._next: dict[str, int] = {}
        self._next_use = _next_uses(trace)

    def on_insert(self, key: str, size_bytes: int, cost_s: float) -> None:
        self._next[key] = self._next_use[self.now]

    def on_access(self, key: str) -> None:
        if key in self._next:
            self._next[key] = self._next_use[self.now]

    def on_remove(self, key: str) -> None:
        self._next.pop(key, None)

    def victims(self) -> Iterator[str]:
        sizes, costs = self._catalogue.sizes, self._catalogue.costs
        ranked = []
        for key, following in self._next.items():
            weight = sizes[int(key)] / costs[int(key)]
            distance = math.inf if following < 0 else following - self.now
            ranked.append((-distance * weight, -weight, key))
        heapq.heapify(ranked)
        while ranked:
            yield heapq.heappop(ranked)[2]


class PopularityOracle(Clocked, EvictionPolicy):
    """Evict the lowest ``probability * cost / size`` first, with the true probabilities."""

    name = "popularity-oracle"

    def __init__(self, trace: Trace, catalogue: Catalogue) -> None:
        self._trace = trace
        self._catalogue = catalogue
        self._keys: dict[str, None] = {}

    def on_insert(self, key: str, size_bytes: int, cost_s: float) -> None:
        self._keys[key] = None

    def on_access(self, key: str) -> None:
        """Uses change nothing: the oracle already knows the popularity."""

    def on_remove(self, key: str) -> None:
        self._keys.pop(key, None)

    def victims(self) -> Iterator[str]:
        popularity = self._trace.popularity(self.now)
        sizes, costs = self._catalogue.sizes, self._catalogue.costs
        ranked = [
            (popularity[int(key)] * costs[int(key)] / sizes[int(key)], key) for key in self._keys
        ]
        heapq.heapify(ranked)
        while ranked:
            yield heapq.heappop(ranked)[1]


def _next_uses(trace: Sequence[int]) -> list[int]:
    """For each position, the position of the next request for the same model (-1: none)."""
    following: dict[int, int] = {}
    out = [-1] * len(trace)
    for i in range(len(trace) - 1, -1, -1):
        out[i] = following.get(trace[i], -1)
        following[trace[i]] = i
    return out


def count_limit(catalogue: Catalogue, budget_bytes: int, *, per: str) -> int:
    """Ray Serve's model count for a byte budget: ``budget // largest`` or ``budget // mean``."""
    sizes = catalogue.sizes
    per_model = max(sizes) if per == "largest" else sum(sizes) / len(sizes)
    return max(1, int(budget_bytes // per_model))

"""Cost-aware LRFU whose decay time tunes itself by shadow simulation.

LRFU (Lee et al., 1999) scores each key by its *decayed use count*: every use adds 1 and the
count decays by ``e`` every ``tau`` requests. A short ``tau`` makes it LRU, a long one LFU with
aging. Here the priority is that count times ``cost / size``: the expected load seconds a byte
of room saves, the quantity a byte budget should be spent on (GDSF's ``F * C / S``, with aging
that is multiplicative and continuous instead of GDSF's additive ``L``).

Counts are kept on a virtual clock that advances ``1 / tau`` per request, so a count is stored
as ``log(sum of e^(clock at each use))``: the common decay factor cancels out of comparisons, a
stored priority never changes until the key is used again (and then only rises), and the lazy
heap of :class:`~modelfleet.cache.policies.heap.HeapPolicy` applies. Counts outlive residency,
so popularity survives eviction; history too faded to matter (below ``e^-12``) is dropped.

No single ``tau`` suits every workload: stable popularity wants it long, a shifting hot set
short. :class:`LRFUPolicy` therefore runs two shadows, metadata-only replicas of itself with
``tau / 2`` and ``tau * 2`` fed the same requests under the same budget, and every adaptation
period moves ``tau`` to whichever of the three has spent the fewest load seconds lately. The
three see the very same requests, so the comparison is paired and needs no long averaging
(the idea of ARC's ghosts and of miniature simulations, Waldspurger et al., 2017).
``tau`` is kept as a multiple of the entries the cache holds (its turnover scale).
"""

from __future__ import annotations

import heapq
import math

from modelfleet.cache.policies.heap import HeapEntry, HeapPolicy

_FORGET_BELOW = 12.0  # drop history whose weight fell under e^-12 of a fresh use


class DecayedUses:
    """Exponentially decayed use counts per key, as logs on a virtual clock."""

    __slots__ = ("_log", "_records", "now", "tau")

    def __init__(self, tau: float) -> None:
        self.tau = tau
        self.now = 0.0
        self._log: dict[str, float] = {}
        self._records = 0

    def record(self, key: str) -> float:
        """Count a use of ``key`` now; return its new log-count."""
        self.now += 1.0 / self.tau
        old = self._log.get(key)
        if old is None:
            new = self.now
        else:
            high, low = (old, self.now) if old > self.now else (self.now, old)
            new = high + math.log1p(math.exp(low - high))
        self._log[key] = new
        self._records += 1
        if self._records >= max(4096, 2 * len(self._log)):
            self._prune()
        return new

    def log_count(self, key: str) -> float:
        return self._log.get(key, -math.inf)

    def __len__(self) -> int:
        return len(self._log)

    def _prune(self) -> None:
        self._records = 0
        floor = self.now - _FORGET_BELOW
        self._log = {k: v for k, v in self._log.items() if v >= floor}


class _Shadow:
    """A metadata-only replica of the policy at another ``tau``, counting its load seconds."""

    __slots__ = ("_bytes", "_heap", "_resident", "cost_s", "uses")

    def __init__(self, tau: float) -> None:
        self.uses = DecayedUses(tau)
        self.cost_s = 0.0
        self._resident: dict[str, tuple[float, int]] = {}  # key -> (priority, size)
        self._heap: list[tuple[float, str]] = []
        self._bytes = 0

    def request(self, key: str, size: int, log_value: float, capacity: int) -> None:
        priority = self.uses.record(key) + log_value
        if key in self._resident:
            self._resident[key] = (priority, size)  # only rose: fixed when it reaches the top
            return
        self.cost_s += math.exp(log_value) * size
        heap, resident = self._heap, self._resident
        while heap and self._bytes + size > capacity:
            low, victim = heapq.heappop(heap)
            current, victim_size = resident[victim]
            if current > low:
                heapq.heappush(heap, (current, victim))
            else:
                del resident[victim]
                self._bytes -= victim_size
        resident[key] = (priority, size)
        heapq.heappush(heap, (priority, key))
        self._bytes += size


class LRFUPolicy(HeapPolicy):
    """Lowest decayed use count times ``cost / size`` first; the decay adapts to the workload."""

    name = "lrfu"

    def __init__(
        self,
        *,
        decay: float = 8.0,
        adaptive: bool = True,
        min_decay: float = 0.5,
        max_decay: float = 128.0,
        step: float = 2.0,
    ) -> None:
        super().__init__()
        self.decay = decay  # tau, in multiples of the entries held
        self.adaptive = adaptive
        self.min_decay, self.max_decay, self.step = min_decay, max_decay, step
        self._uses = DecayedUses(self._tau(decay))
        self._shadows = (_Shadow(1.0), _Shadow(1.0))  # fed only when adaptive
        self._cost_s = 0.0
        self._recent = [0.0, 0.0, 0.0]  # load seconds lately: lower shadow, self, upper shadow
        self._requests = 0

    def _tau(self, decay: float) -> float:
        return decay * max(self._residency.peak_entries, 8)

    def _priority(self, key: str, entry: HeapEntry) -> float:
        return self._uses.log_count(key) + math.log(entry.value)

    def _record_use(self, key: str, entry: HeapEntry, *, miss: bool) -> None:
        self._uses.tau = self._tau(self.decay)
        self._uses.record(key)
        if not self.adaptive:
            return
        if miss:
            self._cost_s += entry.value * entry.size
        log_value = math.log(entry.value)
        capacity = self._residency.peak_bytes
        for shadow, decay in zip(self._shadows, self._shadow_decays(), strict=True):
            shadow.uses.tau = self._tau(decay)
            shadow.request(key, entry.size, log_value, capacity)
        self._requests += 1
        if self._requests >= 5 * max(self._residency.peak_entries, 100):
            self._adapt()

    def _shadow_decays(self) -> tuple[float, float]:
        return self.decay / self.step, self.decay * self.step

    def _adapt(self) -> None:
        """Move ``tau`` to the replica that spent the fewest load seconds lately."""
        lower, upper = self._shadows
        spent = (lower.cost_s, self._cost_s, upper.cost_s)
        self._recent = [0.5 * r + s for r, s in zip(self._recent, spent, strict=True)]
        lower.cost_s = upper.cost_s = self._cost_s = 0.0
        self._requests = 0
        best = min(range(3), key=self._recent.__getitem__)
        if best != 1 and self._recent[best] < 0.99 * self._recent[1]:
            factor = self.step if best == 2 else 1.0 / self.step
            self.decay = min(self.max_decay, max(self.min_decay, self.decay * factor))
            self._recent = [0.0, 0.0, 0.0]


class FixedLRFUPolicy(LRFUPolicy):
    """Cost-aware LRFU with a fixed decay time (``tau`` = 8 x the entries held)."""

    name = "lrfu-fixed"

    def __init__(self) -> None:
        super().__init__(adaptive=False)

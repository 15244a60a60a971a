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
from array import array

from modelfleet.cache.policies.heap import HeapEntry, HeapPolicy

_FORGET_BELOW = 12.0  # drop history whose weight fell under e^-12 of a fresh use


class DecayedUses:
    """Exponentially decayed use counts per key on several virtual clocks at once.

    Clock ``c`` advances ``1 / tau[c]`` per recorded use, and a key's count on it is stored as
    ``log(sum of e^(clock c at each use))``. The clocks share one slot per key (a dict from key
    to an index into one float array per clock): about 100 bytes a key for three clocks, where a
    dict of floats per clock took about 190. A key is dropped once its history has faded below
    ``e^-12`` of a fresh use on every clock.
    """

    __slots__ = ("_free", "_logs", "_records", "_slots", "now", "tau")

    def __init__(self, taus: list[float]) -> None:
        self.tau = list(taus)
        self.now = [0.0] * len(taus)
        self._logs = [array("d") for _ in taus]
        self._slots: dict[str, int] = {}
        self._free: list[int] = []
        self._records = 0

    def record(self, key: str) -> None:
        """Count a use of ``key`` now, on every clock."""
        slot = self._slots.get(key)
        if slot is None:
            slot = self._free.pop() if self._free else len(self._logs[0])
            if slot == len(self._logs[0]):
                for logs in self._logs:
                    logs.append(-math.inf)
            else:
                for logs in self._logs:
                    logs[slot] = -math.inf
            self._slots[key] = slot
        for clock, logs in enumerate(self._logs):
            now = self.now[clock] = self.now[clock] + 1.0 / self.tau[clock]
            old = logs[slot]
            high, low = (old, now) if old > now else (now, old)
            logs[slot] = high + math.log1p(math.exp(low - high)) if low > -math.inf else high
        self._records += 1
        if self._records >= max(4096, 2 * len(self._slots)):
            self._prune()

    def log_count(self, key: str, clock: int = 0) -> float:
        slot = self._slots.get(key)
        return -math.inf if slot is None else self._logs[clock][slot]

    def __len__(self) -> int:
        return len(self._slots)

    def _prune(self) -> None:
        self._records = 0
        floors = [now - _FORGET_BELOW for now in self.now]
        pairs = list(zip(self._logs, floors, strict=True))
        faded = [
            key
            for key, slot in self._slots.items()
            if all(logs[slot] < floor for logs, floor in pairs)
        ]
        for key in faded:
            self._free.append(self._slots.pop(key))
        if len(self._free) > len(self._slots):  # mostly holes: pack the live slots
            self._pack()

    def _pack(self) -> None:
        logs = [array("d") for _ in self._logs]
        for index, (key, slot) in enumerate(list(self._slots.items())):
            for new, old in zip(logs, self._logs, strict=True):
                new.append(old[slot])
            self._slots[key] = index
        self._logs, self._free = logs, []


class _Shadow:
    """A metadata-only replica of the policy at another ``tau``, counting its load seconds.

    Its use counts live on their own clock of the policy's :class:`DecayedUses`.
    """

    __slots__ = ("_bytes", "_heap", "_resident", "cost_s")

    def __init__(self) -> None:
        self.cost_s = 0.0
        self._resident: dict[str, tuple[float, int]] = {}  # key -> (priority, size)
        self._heap: list[tuple[float, str]] = []
        self._bytes = 0

    def request(
        self, key: str, size: int, priority: float, log_value: float, capacity: int
    ) -> None:
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
        clocks = 3 if adaptive else 1  # self, then the lower and the upper shadow
        self._uses = DecayedUses([self._tau(decay)] * clocks)
        self._shadows = (_Shadow(), _Shadow())  # fed only when adaptive
        self._cost_s = 0.0
        self._recent = [0.0, 0.0, 0.0]  # load seconds lately: lower shadow, self, upper shadow
        self._requests = 0

    def _tau(self, decay: float) -> float:
        return decay * max(self._residency.peak_entries, 8)

    def _priority(self, key: str, entry: HeapEntry) -> float:
        return self._uses.log_count(key) + math.log(entry.value)

    def _record_use(self, key: str, entry: HeapEntry, *, miss: bool) -> None:
        uses = self._uses
        uses.tau[0] = self._tau(self.decay)
        if self.adaptive:
            lower, upper = self._shadow_decays()
            uses.tau[1], uses.tau[2] = self._tau(lower), self._tau(upper)
        uses.record(key)
        if not self.adaptive:
            return
        if miss:
            self._cost_s += entry.value * entry.size
        log_value = math.log(entry.value)
        capacity = self._residency.peak_bytes
        for clock, shadow in enumerate(self._shadows, start=1):
            priority = uses.log_count(key, clock) + log_value
            shadow.request(key, entry.size, priority, log_value, capacity)
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

"""Trace-driven simulation of the memory tier: the real MemoryCache and the real policies
(``modelfleet plan`` and the eviction benchmarks, one implementation for both).

Each request does what the instance manager does (``instance/manager.py``): ``get``; on a miss,
``reserve`` room (evicting), ``admit`` the model with its load cost, then ``get`` it for the
request that loaded it. The clock is the request number: nothing here reads time, so every
figure is a deterministic function of the trace, the catalogue and the cost curve.

Also here: the catalogue (sizes log-uniform in 1-100 MB, load cost ``a + b * MB``) and the
traces: Zipf over a random permutation of the models (popularity independent of size), and a
shifting one whose permutation is re-drawn every ``shift_every`` requests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from modelfleet.cache.memory import MemoryCache
from modelfleet.cache.policy import EvictionPolicy

MB = 1_000_000


@dataclass(frozen=True, slots=True)
class Catalogue:
    """The models: ``sizes[i]`` bytes, ``costs[i]`` seconds to load."""

    sizes: tuple[int, ...]
    costs: tuple[float, ...]

    @classmethod
    def build(cls, n_models: int, *, cost_a: float, cost_b: float, seed: int = 7) -> Catalogue:
        """Sizes log-uniform in 1-100 MB; a load costs ``cost_a + cost_b * MB`` seconds."""
        rng = np.random.default_rng(seed)
        mb = np.exp(rng.uniform(np.log(1.0), np.log(100.0), n_models))
        sizes = tuple(int(m * MB) for m in mb)
        return cls(sizes, tuple(cost_a + cost_b * s / MB for s in sizes))

    @property
    def total_bytes(self) -> int:
        return sum(self.sizes)


@dataclass(frozen=True, slots=True)
class Trace:
    """Requests (model numbers) and the popularity they were drawn from.

    ``phases[i] = (start, probabilities)``: from request ``start`` on, model ``m`` is requested
    with probability ``probabilities[m]`` (only the popularity oracle looks at these).
    """

    name: str
    requests: tuple[int, ...]
    phases: tuple[tuple[int, tuple[float, ...]], ...]

    def popularity(self, position: int) -> tuple[float, ...]:
        current = self.phases[0][1]
        for start, probabilities in self.phases:
            if start > position:
                break
            current = probabilities
        return current


def zipf_trace(
    n_models: int,
    n_requests: int,
    exponent: float,
    seed: int,
    *,
    shift_every: int | None = None,
    name: str | None = None,
) -> Trace:
    """Requests with probability ``∝ 1 / rank ** exponent`` over a random ranking of models.

    With ``shift_every`` the ranking is re-drawn every ``shift_every`` requests: a new hot set.
    """
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, n_models + 1) ** exponent
    weights /= weights.sum()
    period = shift_every or n_requests
    requests: list[int] = []
    phases: list[tuple[int, tuple[float, ...]]] = []
    while len(requests) < n_requests:
        ranking = rng.permutation(n_models)  # rank r is model ranking[r]
        probabilities = np.empty(n_models)
        probabilities[ranking] = weights
        phases.append((len(requests), tuple(float(p) for p in probabilities)))
        draws = rng.choice(n_models, size=min(period, n_requests - len(requests)), p=weights)
        requests.extend(int(m) for m in ranking[draws])
    label = name or (f"shift-{exponent:g}" if shift_every else f"zipf-{exponent:g}")
    return Trace(label, tuple(requests), tuple(phases))


@dataclass(slots=True)
class Outcome:
    """What one policy did on one trace."""

    requests: int = 0
    hits: int = 0
    bytes_requested: int = 0
    bytes_hit: int = 0
    load_s: float = 0.0
    overruns: int = 0  # admissions after which the models held more bytes than the budget
    peak_over_budget: float = 0.0  # the largest such excess, as a fraction of the budget

    @property
    def hit_ratio(self) -> float:
        return self.hits / self.requests if self.requests else 0.0

    @property
    def byte_hit_ratio(self) -> float:
        return self.bytes_hit / self.bytes_requested if self.bytes_requested else 0.0


class Clocked:
    """Mixin for reference policies that must know the request number (they see the trace)."""

    now: int = 0


def simulate(
    trace: Sequence[int],
    catalogue: Catalogue,
    budget_bytes: int,
    policy: EvictionPolicy,
    *,
    max_models: int | None = None,
) -> Outcome:
    """Replay ``trace`` through a MemoryCache driven by ``policy``.

    With ``max_models`` the cache counts models instead of bytes (every model weighs 1, the
    budget is ``max_models``), as Ray Serve's ``max_num_models_per_replica`` does; the bytes
    those models really hold are tracked to count overruns of ``budget_bytes``.
    """
    clock = [0.0]
    cache: MemoryCache[None] = MemoryCache(
        budget_bytes if max_models is None else max_models, policy, clock=lambda: clock[0]
    )
    clocked = policy if isinstance(policy, Clocked) else None
    sizes, costs = catalogue.sizes, catalogue.costs
    keys = [str(m) for m in range(len(sizes))]
    out = Outcome(requests=len(trace))
    held = 0  # real bytes of the models in the cache
    for position, model in enumerate(trace):
        clock[0] = float(position)
        if clocked is not None:
            clocked.now = position
        key, size = keys[model], sizes[model]
        out.bytes_requested += size
        if cache.get(key) is not None:
            out.hits += 1
            out.bytes_hit += size
            continue
        out.load_s += costs[model]
        weight = size if max_models is None else 1
        evicted = cache.reserve(key, weight)
        evicted += cache.admit(key, None, weight, cost_s=costs[model])
        held += size - sum(sizes[int(victim.key)] for victim in evicted)
        cache.get(key)  # the loading request's own use, as the manager does
        if held > budget_bytes:
            out.overruns += 1
            out.peak_over_budget = max(out.peak_over_budget, held / budget_bytes - 1.0)
    return out

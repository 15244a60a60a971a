"""Per-model metrics of one endpoint, with bounded cardinality.

The router sees every invocation of its endpoint: its target model, variant, status, model
latency, whether it was a cache hit, and the load it started (the instance says). Counted per
model, they answer ``GET /models/{name}/stats`` for any model, and go to ``/metrics`` for the
``top`` models by recent traffic only, every other model summed under ``model="__other__"``,
so a source of 100,000 models gives Prometheus at most ``top + 1`` model label values per
endpoint.

Counters stay monotonic as the top set changes: a model's exported series counts only the
requests it had while in the top set (so it resumes, never restarts, when the model comes
back), and ``__other__`` counts the requests of models outside it at the time. Recent traffic
is a count decayed with a half-life of 5 minutes; the top set is ranked again at most every
10 s, at a scrape. At most ``MAX_MODELS`` models are tracked: past that, the least recently
active tenth is dropped (their stats start again if they come back).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client.metrics_core import CounterMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.registry import Collector

OTHER = "__other__"
MAX_MODELS = 100_000
_HALF_LIFE_S = 300.0
_RERANK_S = 10.0


@dataclass(slots=True)
class Counts:
    """One model's (or ``__other__``'s) counts on one variant."""

    invocations: int = 0
    errors_4xx: int = 0
    errors_5xx: int = 0
    hits: int = 0
    misses: int = 0
    latency_s: float = 0.0  # summed over the invocations that reached a model
    answered: int = 0
    loads: int = 0
    load_s: float = 0.0

    def add(
        self,
        status: int,
        hit: bool | None,
        latency_s: float | None,
        load_s: float | None,
    ) -> None:
        self.invocations += 1
        if 400 <= status < 500:
            self.errors_4xx += 1
        elif status >= 500:
            self.errors_5xx += 1
        if hit is not None:
            if hit:
                self.hits += 1
            else:
                self.misses += 1
        if latency_s is not None:
            self.latency_s += latency_s
            self.answered += 1
        if load_s is not None:
            self.loads += 1
            self.load_s += load_s


@dataclass(slots=True)
class _Model:
    lifetime: dict[str, Counts] = field(default_factory=dict)  # by variant
    exported: dict[str, Counts] = field(default_factory=dict)  # while in the top set
    recent: float = 0.0  # decayed request count at ``at``
    at: float = 0.0
    last_used: float = 0.0  # epoch seconds


class ModelStats(Collector):
    """Per-model counts of one endpoint (see the module doc); a Prometheus collector."""

    def __init__(
        self,
        endpoint: str,
        top: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_models: int = MAX_MODELS,
    ) -> None:
        self.endpoint = endpoint
        self.top = top
        self._clock = clock
        self._max = max_models
        self._models: dict[str, _Model] = {}
        self._top: frozenset[str] = frozenset()
        self._ranked_at = -math.inf
        self._other: dict[str, Counts] = {}
        self.total = Counts()  # every invocation counted, all models and variants

    def record(
        self,
        variant: str,
        model: str,
        status: int,
        *,
        hit: bool | None = None,
        latency_s: float | None = None,
        load_s: float | None = None,
    ) -> None:
        """One invocation of ``model`` on ``variant``, answered ``status``."""
        now = self._clock()
        stats = self._models.get(model)
        if stats is None:
            if len(self._models) >= self._max:
                self._forget_some(now)
            stats = self._models[model] = _Model(at=now)
        stats.recent = stats.recent * _decay(now - stats.at) + 1.0
        stats.at = now
        stats.last_used = time.time()
        _counts(stats.lifetime, variant).add(status, hit, latency_s, load_s)
        self.total.add(status, hit, latency_s, load_s)
        exported = stats.exported if model in self._top else self._other
        _counts(exported, variant).add(status, hit, latency_s, load_s)

    def stats(self, model: str) -> dict[str, object] | None:
        """Everything counted for ``model`` (None if nothing): totals, then per variant."""
        stats = self._models.get(model)
        if stats is None:
            return None
        total = Counts()
        for counts in stats.lifetime.values():
            for name in Counts.__slots__:
                setattr(total, name, getattr(total, name) + getattr(counts, name))
        return {
            "model": model,
            "endpoint": self.endpoint,
            **_view(total),
            "requests_per_s_recent": round(
                stats.recent * _decay(self._clock() - stats.at) / (_HALF_LIFE_S / math.log(2)), 6
            ),
            "last_used": stats.last_used,
            "in_metrics": model in self._top,
            "variants": {v: _view(c) for v, c in stats.lifetime.items()},
        }

    def top_models(self) -> list[str]:
        """The models with the most recent traffic, most first (at most ``top``)."""
        now = self._clock()
        ranked = sorted(
            self._models.items(),
            key=lambda item: item[1].recent * _decay(now - item[1].at),
            reverse=True,
        )
        return [name for name, _ in ranked[: self.top]]

    def _rank(self) -> None:
        now = self._clock()
        if now - self._ranked_at >= _RERANK_S:
            self._ranked_at = now
            self._top = frozenset(self.top_models())

    def _forget_some(self, now: float) -> None:
        """Drop the least recently active tenth of the tracked models (never a top one)."""
        ranked = sorted(
            (m for m in self._models.items() if m[0] not in self._top),
            key=lambda item: item[1].recent * _decay(now - item[1].at),
        )
        for name, _ in ranked[: max(1, len(self._models) // 10)]:
            del self._models[name]

    def collect(self) -> Iterator[Metric]:
        self._rank()
        rows: list[tuple[str, str, Counts]] = []
        for name in sorted(self._top):
            stats = self._models.get(name)
            if stats is not None:  # a model new to the top set shows at 0 until its next use
                rows += [
                    (variant, name, stats.exported.get(variant) or Counts())
                    for variant in stats.lifetime
                ]
        rows += [(variant, OTHER, counts) for variant, counts in self._other.items()]
        yield from families(self.endpoint, rows)


def families(endpoint: str, rows: Iterable[tuple[str, str, Counts]]) -> Iterator[Metric]:
    """The per-model metric families of ``rows`` (variant, model, counts)."""
    labels = ["endpoint", "variant", "model"]
    prefix = "modelfleet_target_model_"

    def counter(name: str, doc: str) -> CounterMetricFamily:
        return CounterMetricFamily(prefix + name, doc, labels=labels)

    invocations = counter(
        "invocations", "Invocations of the model (top models; the rest: __other__)."
    )
    errors_4xx = counter("invocation_4xx_errors", "Invocations of the model answered 4xx.")
    errors_5xx = counter("invocation_5xx_errors", "Invocations of the model answered 5xx.")
    hits = counter("cache_hits", "Invocations that found the model loaded.")
    misses = counter("cache_misses", "Invocations that waited for the model to be loaded.")
    latency = SummaryMetricFamily(
        prefix + "latency_seconds", "Time the model took to answer.", labels=labels
    )
    loading = SummaryMetricFamily(
        prefix + "loading_seconds", "Loads of the model into memory, and their time.", labels=labels
    )
    rows = list(rows)
    for variant, model, c in rows:
        values = [endpoint, variant, model]
        invocations.add_metric(values, c.invocations)
        errors_4xx.add_metric(values, c.errors_4xx)
        errors_5xx.add_metric(values, c.errors_5xx)
        hits.add_metric(values, c.hits)
        misses.add_metric(values, c.misses)
        latency.add_metric(values, c.answered, c.latency_s)
        loading.add_metric(values, c.loads, c.load_s)
    yield from (invocations, errors_4xx, errors_5xx, hits, misses, latency, loading)


def _decay(elapsed_s: float) -> float:
    return math.exp(-max(elapsed_s, 0.0) * math.log(2) / _HALF_LIFE_S)


def _counts(table: dict[str, Counts], variant: str) -> Counts:
    counts = table.get(variant)
    if counts is None:
        counts = table[variant] = Counts()
    return counts


def _view(c: Counts) -> dict[str, object]:
    looked_up = c.hits + c.misses
    return {
        "invocations": c.invocations,
        "invocation_4xx_errors": c.errors_4xx,
        "invocation_5xx_errors": c.errors_5xx,
        "cache_hits": c.hits,
        "cache_misses": c.misses,
        "hit_ratio": round(c.hits / looked_up, 6) if looked_up else None,
        "model_latency_mean_s": round(c.latency_s / c.answered, 6) if c.answered else None,
        "loads": c.loads,
        "load_mean_s": round(c.load_s / c.loads, 6) if c.loads else None,
    }

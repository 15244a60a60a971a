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
is the request count of the last 5 minutes (estimated from two fixed 5-minute windows, a few
additions a request); the top set is ranked again at most every 10 s, at a scrape. At most
``MAX_MODELS`` models are tracked: past that, the least recently active tenth is dropped
(their stats start again if they come back).
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
_WINDOW_S = 300.0
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

    def merge(self, other: Counts, *, sign: int = 1) -> None:
        """Add (``sign`` -1: take away) ``other``'s counts."""
        for name in Counts.__slots__:
            setattr(self, name, getattr(self, name) + sign * getattr(other, name))

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
    # what its exported series leaves out: the counts it had while outside the top set, and
    # its lifetime counts when it last left it (empty: never in it)
    outside: dict[str, Counts] = field(default_factory=dict)
    left: dict[str, Counts] = field(default_factory=dict)
    window: int = 0  # recent traffic: requests in this window of _WINDOW_S, and the one before
    current: int = 0
    previous: int = 0
    at: float = 0.0  # the clock at its last request


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
        """One invocation of ``model`` on ``variant``, answered ``status`` (the router calls
        it for every request: kept to a few dictionary lookups and additions)."""
        now = self._clock()
        stats = self._models.get(model)
        if stats is None:
            if len(self._models) >= self._max:
                self._forget_some(now)
            stats = self._models[model] = _Model()
        window = int(now // _WINDOW_S)
        if window == stats.window:
            stats.current += 1
        else:
            stats.previous = stats.current if window == stats.window + 1 else 0
            stats.current, stats.window = 1, window
        stats.at = now
        counts = stats.lifetime.get(variant)
        if counts is None:
            counts = stats.lifetime[variant] = Counts()
        counts.add(status, hit, latency_s, load_s)
        self.total.add(status, hit, latency_s, load_s)
        if model not in self._top:
            _counts(self._other, variant).add(status, hit, latency_s, load_s)

    def _recent(self, stats: _Model, now: float) -> float:
        """Requests in the last ``_WINDOW_S`` seconds, estimated from two fixed windows."""
        window = int(now // _WINDOW_S)
        through = (now % _WINDOW_S) / _WINDOW_S  # how far into this window
        if window == stats.window:
            return stats.current + stats.previous * (1.0 - through)
        if window == stats.window + 1:
            return stats.current * (1.0 - through)
        return 0.0

    def stats(self, model: str) -> dict[str, object] | None:
        """Everything counted for ``model`` (None if nothing): totals, then per variant."""
        stats = self._models.get(model)
        if stats is None:
            return None
        total = Counts()
        for counts in stats.lifetime.values():
            total.merge(counts)
        now = self._clock()
        return {
            "model": model,
            "endpoint": self.endpoint,
            **_view(total),
            "requests_per_s_recent": round(self._recent(stats, now) / _WINDOW_S, 6),
            "last_used": round(time.time() - (now - stats.at), 3),
            "in_metrics": model in self._top,
            "variants": {v: _view(c) for v, c in stats.lifetime.items()},
        }

    def top_models(self) -> list[str]:
        """The models with the most recent traffic, most first (at most ``top``)."""
        now = self._clock()
        ranked = sorted(
            self._models.items(),
            key=lambda item: (self._recent(item[1], now), item[1].at),
            reverse=True,
        )
        return [name for name, _ in ranked[: self.top]]

    def _rank(self) -> None:
        now = self._clock()
        if now - self._ranked_at < _RERANK_S:
            return
        self._ranked_at = now
        top = frozenset(self.top_models())
        for name in self._top - top:  # leaving: what it has now is its series' last value
            stats = self._models.get(name)
            if stats is not None:
                stats.left = _copy(stats.lifetime)
        for name in top - self._top:  # entering: what it had outside stays out of its series
            stats = self._models[name]
            for variant, counts in stats.lifetime.items():
                accrued = _counts(stats.outside, variant)
                accrued.merge(counts)
                before = stats.left.get(variant)
                if before is not None:
                    accrued.merge(before, sign=-1)
            stats.left = {}
        self._top = top

    def _forget_some(self, now: float) -> None:
        """Drop the least recently active tenth of the tracked models (never a top one)."""
        ranked = sorted(
            (m for m in self._models.items() if m[0] not in self._top),
            key=lambda item: (self._recent(item[1], now), item[1].at),
        )
        for name, _ in ranked[: max(1, len(self._models) // 10)]:
            del self._models[name]

    def collect(self) -> Iterator[Metric]:
        self._rank()
        rows: list[tuple[str, str, Counts]] = []
        for name in sorted(self._top):
            stats = self._models.get(name)
            if stats is None:
                continue
            for variant, counts in stats.lifetime.items():
                exported = Counts()
                exported.merge(counts)
                outside = stats.outside.get(variant)
                if outside is not None:
                    exported.merge(outside, sign=-1)
                rows.append((variant, name, exported))
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


def _copy(table: dict[str, Counts]) -> dict[str, Counts]:
    copied = {}
    for variant, counts in table.items():
        copied[variant] = Counts()
        copied[variant].merge(counts)
    return copied


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

"""Prometheus metrics with SageMaker's names and meanings.

One :class:`Metrics` object is created at start and passed down explicitly. Each SageMaker
metric becomes ``modelfleet_`` + its snake_case name with Prometheus units, for example
ModelLoadingTime -> ``modelfleet_model_loading_time_seconds``. Every series carries the
``endpoint``, ``variant`` and ``instance`` labels; the per-model series, for a bounded number
of models, are the router's (:mod:`modelfleet.endpoint.modelstats`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
_LOAD_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_LABELS = ("endpoint", "variant", "instance")


class Metrics:
    """The registry and the bound series of one endpoint/variant/instance."""

    def __init__(self, *, endpoint: str, variant: str = "AllTraffic", instance: str = "0") -> None:
        self.registry = CollectorRegistry()
        labels = {"endpoint": endpoint, "variant": variant, "instance": instance}

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, _LABELS, registry=self.registry).labels(**labels)

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, _LABELS, registry=self.registry).labels(**labels)

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, _LABELS, registry=self.registry, buckets=buckets).labels(
                **labels
            )

        self.invocations = counter("modelfleet_invocations", "Invocations (SageMaker Invocations).")
        self.invocations_per_instance = counter(
            "modelfleet_invocations_per_instance",
            "Invocations counted on the instance that served them (InvocationsPerInstance).",
        )
        self.invocation_4xx_errors = counter(
            "modelfleet_invocation_4xx_errors", "Invocations answered 4xx (Invocation4XXErrors)."
        )
        self.invocation_5xx_errors = counter(
            "modelfleet_invocation_5xx_errors", "Invocations answered 5xx (Invocation5XXErrors)."
        )
        self.client_disconnects = counter(
            "modelfleet_client_disconnects",
            "Requests whose client went away, or was cut off by the body timeout, before its "
            "body was read; counted apart from Invocations and the 4XX/5XX errors.",
        )
        self.model_cache_hit = counter(
            "modelfleet_model_cache_hit",
            "Invocations whose model was already loaded (ModelCacheHit = 1).",
        )
        self.model_cache_miss = counter(
            "modelfleet_model_cache_miss",
            "Invocations whose model was not loaded (ModelCacheHit = 0).",
        )
        self.model_downloads = counter(
            "modelfleet_model_downloads", "Artifacts downloaded from the model source."
        )
        self.model_revalidations = counter(
            "modelfleet_model_revalidations",
            "Cached artifacts checked against the model source (one HEAD) before a load from "
            "disk or by --revalidate-interval.",
        )
        self.model_changed = counter(
            "modelfleet_model_changed",
            "Revalidations that found a new version in the source (downloaded again).",
        )
        self.model_stale_serves = counter(
            "modelfleet_model_stale_serves",
            "Loads from the disk cache whose revalidation failed because the source could not "
            "be reached: the cached copy was served (stale-if-error).",
        )
        self.snapshot_loads = counter(
            "modelfleet_model_snapshot_loads",
            "Loads read from a load snapshot in the disk cache instead of the artifact.",
        )
        self.model_loading_wait_time = histogram(
            "modelfleet_model_loading_wait_time_seconds",
            "Time an invocation waited for its model to be downloaded and loaded "
            "(ModelLoadingWaitTime).",
            _LOAD_BUCKETS,
        )
        self.model_downloading_time = histogram(
            "modelfleet_model_downloading_time_seconds",
            "Time to download (and unpack) an artifact (ModelDownloadingTime).",
            _LOAD_BUCKETS,
        )
        self.model_loading_time = histogram(
            "modelfleet_model_loading_time_seconds",
            "Time to load a model into memory (ModelLoadingTime).",
            _LOAD_BUCKETS,
        )
        self.model_unloading_time = histogram(
            "modelfleet_model_unloading_time_seconds",
            "Time to unload a model; the count is the number of unloads (ModelUnloadingTime).",
            _LOAD_BUCKETS,
        )
        self.model_latency = histogram(
            "modelfleet_model_latency_seconds",
            "Time the model took to answer (ModelLatency).",
            _LATENCY_BUCKETS,
        )
        self.overhead_latency = histogram(
            "modelfleet_overhead_latency_seconds",
            "Time spent outside the model: routing, waiting, codecs at the edge (OverheadLatency).",
            _LATENCY_BUCKETS,
        )
        self.loaded_model_count = gauge(
            "modelfleet_loaded_model_count", "Models loaded in memory (LoadedModelCount)."
        )
        self.memory_utilization = gauge(
            "modelfleet_memory_utilization_percent",
            "Memory used by loaded models, percent of the memory budget (MemoryUtilization).",
        )
        self.disk_utilization = gauge(
            "modelfleet_disk_utilization_percent",
            "Disk cache used, percent of the disk budget (DiskUtilization).",
        )
        self.memory_used_bytes = gauge(
            "modelfleet_memory_used_bytes", "Bytes of the memory budget held by loaded models."
        )
        self.disk_used_bytes = gauge("modelfleet_disk_used_bytes", "Bytes held by the disk cache.")
        self.thrashing = gauge(
            "modelfleet_thrashing",
            "1 while the instance reloads models it evicted within a minute and at least 10% of "
            "its requests wait on a load (see the log's warning for the cause), else 0.",
        )
        self.load_wait_share = gauge(
            "modelfleet_load_wait_share",
            "Share of the last minute's requests that waited on a model load.",
        )
        self.working_set_bytes = gauge(
            "modelfleet_working_set_bytes",
            "Memory bytes of the models asked for in the last minute.",
        )
        self.model_reloads = counter(
            "modelfleet_model_reloads",
            "Loads of a model within a minute of its eviction.",
        )
        self.process_rss_bytes = gauge(
            "modelfleet_process_rss_bytes", "Resident memory of the instance process."
        )

    def totals(self, histogram: str) -> dict[str, float]:
        """A histogram's ``count`` and ``sum`` (seconds) over this registry's series."""
        count = total = 0.0
        for family in self.registry.collect():
            for sample in family.samples:
                if sample.name == f"{histogram}_count":
                    count += sample.value
                elif sample.name == f"{histogram}_sum":
                    total += sample.value
        return {"count": count, "sum": total}

    def render(self) -> bytes:
        """The registry in Prometheus text format."""
        return generate_latest(self.registry)

    def render_with(
        self,
        texts: list[str],
        others: Sequence[Metrics] = (),
        collectors: Sequence[Collector] = (),
    ) -> bytes:
        """This registry merged with ``others``, with ``collectors``' families and with other
        servers' Prometheus texts (the instances of a ``local`` backend, whose series carry
        their own ``instance`` label): one family per metric name, as the text format
        requires. ``_created`` series are left out."""
        families: dict[str, Metric] = {}

        def add(family: Metric) -> None:
            if family.name.endswith("_created"):
                return
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(
                    family.name, family.documentation, family.type
                )
            merged.samples.extend(s for s in family.samples if not s.name.endswith("_created"))

        for metrics in (self, *others):
            for family in metrics.registry.collect():
                add(family)
        for collector in collectors:
            for family in collector.collect():
                add(family)
        for text in texts:
            for family in text_string_to_metric_families(text):
                add(family)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Families(list(families.values())))
        return generate_latest(registry)


class _Families(Collector):
    """A collector that yields metric families built elsewhere."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return iter(self._families)


__all__ = ["CONTENT_TYPE", "MetricWrapperBase", "Metrics"]

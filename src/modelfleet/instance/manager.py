"""The model manager: one instance's models, from the source to the disk to memory to inference.

The manager is transport-neutral (the HTTP apps are thin layers over it) and runs on one event
loop. Per target model at most one download and one load run at a time (single flight: callers
share one task); different models load in parallel up to the pools' limits. Memory and disk are
byte-budgeted caches (:mod:`modelfleet.cache`); a model in use is pinned in memory and its
artifact pinned on disk.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from modelfleet.cache.disk import DiskCache, DiskEntry, tree_size
from modelfleet.cache.memory import MemoryCache, MemoryEntry
from modelfleet.cache.policy import make_policy
from modelfleet.config import ModelCacheSetting, Settings
from modelfleet.errors import (
    ModelAlreadyLoadedError,
    ModelError,
    ModelLoadError,
    ModelNotLoadedError,
    ModelNotReadyError,
    ValidationError,
)
from modelfleet.handlers import load_model
from modelfleet.handlers.base import LoadedModel, Prediction
from modelfleet.instance.downloader import Downloader
from modelfleet.instance.pools import (
    Pools,
    configure_allocator,
    current_rss,
    release_memory,
    run_blocking,
)
from modelfleet.metrics import Metrics
from modelfleet.source import ModelSource, validate_target_model

logger = logging.getLogger(__name__)

_RSS_CHECK_INTERVAL_S = 1.0
_MAX_EVICTED_RETRIES = 3


class ModelState(StrEnum):
    DOWNLOADING = "downloading"
    LOADING = "loading"
    LOADED = "loaded"


@dataclass(slots=True)
class Resident:
    """What the memory tier holds for one model."""

    model: LoadedModel
    url: Path
    from_source: bool


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """A model as the instance contract describes it."""

    name: str
    url: str
    state: ModelState
    size_bytes: int = 0
    hits: int = 0
    handler: str = ""


@dataclass(frozen=True, slots=True)
class InvokeResult:
    prediction: Prediction
    cache_hit: bool
    model_latency_s: float


class ModelManager:
    """Serves target models of one model source under one instance's budgets."""

    def __init__(
        self,
        settings: Settings,
        *,
        source: ModelSource,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.source = source
        self.metrics = metrics
        self._clock = clock
        self.disk = DiskCache(settings.cache_dir, settings.disk_limit)
        self.downloader = Downloader(settings, source=source, disk=self.disk, metrics=metrics)
        self.memory: MemoryCache[Resident] = MemoryCache(
            settings.memory_limit, make_policy(settings.eviction_policy), clock=clock
        )
        self._cache_enabled = settings.model_cache is ModelCacheSetting.ENABLED
        self._pending: dict[str, asyncio.Task[MemoryEntry[Resident]]] = {}
        self._states: dict[str, ModelState] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._pools: Pools | None = None
        self._rss_high_water = settings.rss_high_water or 0
        self._watcher: asyncio.Task[None] | None = None
        self._drained: dict[str, asyncio.Event] = {}

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        """Create pools, re-index the disk cache, and start the RSS watcher."""
        s = self.settings
        self._pools = Pools(
            downloads=s.effective_download_concurrency,
            loads=s.effective_load_concurrency,
            inference=s.effective_inference_concurrency,
        )
        configure_allocator()
        await run_blocking(self.pools.load, self.disk.start)
        if not s.rss_high_water:
            self._rss_high_water = current_rss() + s.memory_limit
        self._watcher = asyncio.create_task(self._watch_rss(), name="modelfleet-rss-watcher")
        self._update_gauges()

    async def stop(self) -> None:
        """Cancel loads in progress, unload every model, and stop the pools."""
        if self._watcher is not None:
            self._watcher.cancel()
        for task in [*self._pending.values(), *self._background]:
            task.cancel()
        await asyncio.gather(*self._pending.values(), *self._background, return_exceptions=True)
        for key in list(self.memory):
            entry = self.memory.pop(key)
            if entry is not None:
                await self._unload(entry, delete_files=not self._cache_enabled)
        if self._pools is not None:
            self._pools.shutdown()

    @property
    def pools(self) -> Pools:
        if self._pools is None:
            raise RuntimeError("ModelManager.start() was not called")
        return self._pools

    # -- the whole path: source -> disk -> memory -> inference ---------------------------------
    async def invoke(
        self,
        target_model: str,
        body: bytes,
        *,
        content_type: str | None,
        accept: str | None,
        custom_attributes: str | None = None,
    ) -> InvokeResult:
        """Invoke ``target_model``, downloading and loading it first if needed."""
        entry = self.memory.get(target_model)
        hit = entry is not None
        if entry is None:
            validate_target_model(target_model)
            self.metrics.model_cache_miss.inc()
            started = time.perf_counter()
            entry = await self._wait_loaded(target_model)
            self.metrics.model_loading_wait_time.observe(time.perf_counter() - started)
        else:
            self.metrics.model_cache_hit.inc()
        return await self._run(entry, body, content_type, accept, custom_attributes, hit)

    async def _wait_loaded(self, target_model: str) -> MemoryEntry[Resident]:
        deadline = time.monotonic() + self.settings.invoke_timeout
        for _ in range(_MAX_EVICTED_RETRIES):
            task = self._pending.get(target_model)
            if task is None:
                task = asyncio.create_task(self._load_from_source(target_model))
                self._pending[target_model] = task
                task.add_done_callback(functools.partial(self._load_done, target_model))
            remaining = deadline - time.monotonic()
            try:
                await asyncio.wait_for(asyncio.shield(task), max(remaining, 0.0))
            except TimeoutError:
                raise ModelNotReadyError(
                    f"Model '{target_model}' is still loading after "
                    f"{self.settings.invoke_timeout:g} s; the load continues, retry shortly."
                ) from None
            entry = self.memory.get(target_model)
            if entry is not None:
                return entry
            # Evicted between the load finishing and this caller waking: load again.
        raise ModelNotReadyError(f"Model '{target_model}' was evicted repeatedly while loading.")

    def _load_done(self, target_model: str, task: asyncio.Task[MemoryEntry[Resident]]) -> None:
        if self._pending.get(target_model) is task:
            del self._pending[target_model]
        if not task.cancelled() and (exc := task.exception()) is not None:
            # Retrieved here so a load that fails after its callers timed out is still logged.
            logger.warning("loading %s failed: %s", target_model, exc)

    async def _run(
        self,
        entry: MemoryEntry[Resident],
        body: bytes,
        content_type: str | None,
        accept: str | None,
        custom_attributes: str | None,
        hit: bool,
    ) -> InvokeResult:
        entry.pins += 1
        try:
            started = time.perf_counter()
            prediction = await run_blocking(
                self.pools.inference,
                entry.value.model.invoke,
                body,
                content_type,
                accept,
                custom_attributes,
            )
            latency = time.perf_counter() - started
        finally:
            entry.pins -= 1
            if entry.pins == 0:
                drained = self._drained.pop(entry.key, None)
                if drained is not None:
                    drained.set()
                if not self._cache_enabled:
                    self._discard(entry.key)
        self.metrics.model_latency.observe(latency)
        return InvokeResult(prediction=prediction, cache_hit=hit, model_latency_s=latency)

    async def _load_from_source(self, target_model: str) -> MemoryEntry[Resident]:
        disk_entry = self.disk.pin(target_model)
        if disk_entry is None:
            disk_entry = await self._download(target_model)
        try:
            return await self._load(
                target_model, disk_entry.model_dir, disk_entry.size_bytes, from_source=True
            )
        except BaseException as exc:
            self.disk.unpin(target_model)
            # An unloadable artifact is deleted so a fixed upload is fetched afresh; one that
            # only lacked memory room stays on disk for the next try.
            if isinstance(exc, ModelError) or not self._cache_enabled:
                await run_blocking(self.pools.load, self.disk.remove, target_model)
            raise

    async def _download(self, target_model: str) -> DiskEntry:
        self._states[target_model] = ModelState.DOWNLOADING
        try:
            return await self.downloader.download(
                target_model, self.pools.download, make_room=self._unload_one_for_disk
            )
        finally:
            self._states.pop(target_model, None)

    async def _unload_one_for_disk(self) -> bool:
        """Unload one idle source model so its artifact can leave the disk; False if none."""
        victim = self.memory.evict_one(lambda entry: entry.value.from_source)
        if victim is None:
            return False
        await self._unload(victim)
        return True

    async def _load(
        self, name: str, url: Path, disk_bytes: int, *, from_source: bool
    ) -> MemoryEntry[Resident]:
        self._states[name] = ModelState.LOADING
        try:
            victims = self.memory.reserve(name, max(disk_bytes, 1))
            await self._unload_all(victims)
            try:
                model, size, load_s = await run_blocking(
                    self.pools.load, self._load_blocking, name, url, disk_bytes
                )
            except BaseException:
                self.memory.release(name)
                raise
            victims = self.memory.admit(
                name, Resident(model, url, from_source), size, cost_s=load_s
            )
            self.metrics.model_loading_time.observe(load_s)
            logger.info("loaded %s (%d bytes) in %.3f s", name, size, load_s)
            await self._unload_all(victims)
            self._update_gauges()
            entry = self.memory.entry(name)
            if entry is None:  # pragma: no cover - admit never evicts the newcomer
                raise ModelLoadError(f"Model '{name}' was evicted as soon as it loaded.")
            return entry
        finally:
            self._states.pop(name, None)

    def _load_blocking(
        self, name: str, url: Path, disk_bytes: int
    ) -> tuple[LoadedModel, int, float]:
        rss_before = current_rss()
        started = time.perf_counter()
        try:
            model = load_model(url, model_id=name, handler=self.settings.handler)
        except ModelError:
            raise
        except Exception as exc:
            raise ModelLoadError(f"Model '{name}' failed to load: {exc}") from exc
        load_s = time.perf_counter() - started
        grown = current_rss() - rss_before
        size = max(grown, model.size_bytes() or 0, disk_bytes, 1)
        return model, size, load_s

    # -- unloading -----------------------------------------------------------------------------
    def _discard(self, name: str) -> None:
        """ModelCacheSetting=Disabled: unload and delete ``name`` in the background."""
        entry = self.memory.pop(name)
        if entry is None:
            return
        task = asyncio.create_task(self._unload(entry, delete_files=True))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _unload_all(self, entries: list[MemoryEntry[Resident]]) -> None:
        for entry in entries:
            await self._unload(entry)

    async def _unload(self, entry: MemoryEntry[Resident], *, delete_files: bool = False) -> None:
        """Unload an entry already removed from the memory tier."""
        started = time.perf_counter()
        from_source = entry.value.from_source
        await run_blocking(self.pools.load, _close_model, entry.value.model)
        entry.value = None  # type: ignore[assignment]  # drop the last reference before trimming
        await run_blocking(self.pools.load, release_memory)
        if from_source:
            self.disk.unpin(entry.key)
            if delete_files:
                await run_blocking(self.pools.load, self.disk.remove, entry.key)
        self.metrics.model_unloading_time.observe(time.perf_counter() - started)
        logger.info("unloaded %s", entry.key)
        self._update_gauges()

    async def _watch_rss(self) -> None:
        while True:
            await asyncio.sleep(_RSS_CHECK_INTERVAL_S)
            try:
                await self.enforce_rss()
            except Exception:  # pragma: no cover - the watcher must survive anything
                logger.exception("RSS watcher failed")

    async def enforce_rss(self) -> int:
        """Evict idle models while the process RSS is above the high-water mark."""
        evicted = 0
        rss = current_rss()
        while rss > self._rss_high_water:
            victim = self.memory.evict_one()
            if victim is None:
                break
            logger.warning(
                "RSS %d above high-water %d: evicting %s", rss, self._rss_high_water, victim.key
            )
            await self._unload(victim)
            evicted += 1
            rss = current_rss()
        self.metrics.process_rss_bytes.set(rss)
        return evicted

    def _update_gauges(self) -> None:
        m, s = self.metrics, self.settings
        m.loaded_model_count.set(len(self.memory))
        m.memory_used_bytes.set(self.memory.used_bytes)
        m.memory_utilization.set(100.0 * self.memory.used_bytes / s.memory_limit)
        m.disk_used_bytes.set(self.disk.used_bytes)
        m.disk_utilization.set(100.0 * self.disk.used_bytes / s.disk_limit)

    # -- the MME container contract --------------------------------------------------------------
    async def load_from_url(self, name: str, url: str) -> ModelInfo:
        """LoadModel: load the model in local folder ``url`` under ``name``."""
        if name in self.memory or name in self._pending or name in self._states:
            raise ModelAlreadyLoadedError(name)
        path = Path(url)
        disk_bytes = await run_blocking(self.pools.load, _folder_size, path)
        entry = await self._load(name, path, disk_bytes, from_source=False)
        return self._info(entry)

    async def unload(self, name: str) -> None:
        """UnloadModel: free the memory of ``name``; its artifact stays in the disk cache."""
        entry = self.memory.entry(name)
        if entry is None:
            raise ModelNotLoadedError(name)
        # Wait for calls in flight: a pinned model cannot be unloaded under them.
        if entry.pins > 0:
            drained = self._drained.setdefault(name, asyncio.Event())
            await drained.wait()
        if self.memory.entry(name) is not entry:
            return  # unloaded by someone else meanwhile
        popped = self.memory.pop(name)
        if popped is not None:
            await self._unload(popped, delete_files=not self._cache_enabled)

    async def invoke_loaded(
        self,
        name: str,
        body: bytes,
        *,
        content_type: str | None,
        accept: str | None,
        custom_attributes: str | None = None,
    ) -> InvokeResult:
        """InvokeModel: invoke a model only if it is already loaded."""
        entry = self.memory.get(name)
        if entry is None:
            raise ModelNotLoadedError(name)
        self.metrics.model_cache_hit.inc()
        return await self._run(entry, body, content_type, accept, custom_attributes, True)

    def describe(self, name: str) -> ModelInfo:
        """GetModel: the loaded model ``name``."""
        entry = self.memory.entry(name)
        if entry is None:
            raise ModelNotLoadedError(name)
        return self._info(entry)

    def list_models(self) -> list[ModelInfo]:
        """ListModels: loaded models in name order."""
        infos = []
        for name in sorted(self.memory):
            entry = self.memory.entry(name)
            if entry is not None:
                infos.append(self._info(entry))
        return infos

    def states(self) -> dict[str, ModelState]:
        """Models downloading or loading now."""
        return dict(self._states)

    @staticmethod
    def _info(entry: MemoryEntry[Resident]) -> ModelInfo:
        return ModelInfo(
            name=entry.key,
            url=str(entry.value.url),
            state=ModelState.LOADED,
            size_bytes=entry.size_bytes,
            hits=entry.hits,
            handler=entry.value.model.handler_name,
        )


def _close_model(model: LoadedModel) -> None:
    try:
        model.close()
    except Exception:
        logger.exception("closing a model failed")


def _folder_size(path: Path) -> int:
    if not path.is_dir():
        raise ValidationError(f"Model url '{path}' is not a folder on this instance.")
    return tree_size(path)

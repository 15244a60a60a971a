"""The model manager: one instance's models, from the source to the disk to memory to inference.

The manager is transport-neutral (the HTTP apps are thin layers over it) and runs on one event
loop. Per model at most one download and one load run at a time: callers share one
:class:`Flight` (single flight); different models load in parallel up to the pools' limits.
Memory and disk are byte-budgeted caches (:mod:`modelfleet.cache`).

Pins are the one safety rule (:mod:`modelfleet.instance.pins` keeps it): a model is pinned in
memory (and its artifact on disk) while any call uses it, from before its first await until its
inference thread has returned, and a fresh model arrives pinned once for every caller that
waited for it. Nothing pinned is ever evicted, unloaded or deleted.

Room for a load is taken so that the models hits want stay (:mod:`modelfleet.instance.room`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import shlex
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from modelfleet.cache.disk import DiskCache, DiskEntry
from modelfleet.cache.memory import MemoryCache
from modelfleet.cache.policy import make_policy
from modelfleet.config import ModelCacheSetting, Settings
from modelfleet.edge import PathRedactor
from modelfleet.errors import (
    ModelAlreadyLoadedError,
    ModelError,
    ModelNotFoundError,
    ModelNotLoadedError,
    ModelNotReadyError,
    ValidationError,
)
from modelfleet.handlers.detect import INFERENCE_PY
from modelfleet.handlers.environments import Environments
from modelfleet.instance.downloader import Downloader
from modelfleet.instance.loader import Loaded, Loader, folder_size, loadable, private_folders
from modelfleet.instance.pins import Pins
from modelfleet.instance.pools import Pools, run_blocking
from modelfleet.instance.pressure import MemoryPressure
from modelfleet.instance.revalidator import Revalidator, Verdict
from modelfleet.instance.room import Room
from modelfleet.instance.runner import Runner
from modelfleet.instance.snapshots import Snapshotter
from modelfleet.instance.state import (
    Entry,
    Flight,
    History,
    InvokeResult,
    Known,
    MissCosts,
    ModelInfo,
    ModelState,
    Resident,
)
from modelfleet.instance.thrashing import CHECK_S as THRASH_CHECK_S
from modelfleet.instance.thrashing import Thrashing
from modelfleet.instance.unloader import DISK, EVICTIONS, IDLE, REPLACED, Unloader, close_model
from modelfleet.metrics import Metrics
from modelfleet.source import ModelSource, validate_target_model
from modelfleet.source.select import matches

logger = logging.getLogger(__name__)

_ON_DISK_SHOWN = 50  # the artifacts on disk an instance's summary lists, most recent first
_MAX_LOAD_ROUNDS = 3


class _Refused(Exception):
    """A load's gate (the check of a cached copy against the source) did not allow it."""


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
        # what answers may not show: these folders' absolute paths (docs/security.md)
        self.redact = PathRedactor(private_folders(settings))
        self.disk = DiskCache(settings.cache_dir, settings.disk_limit, source=source.identity)
        self.revalidator = Revalidator(source=source, disk=self.disk, metrics=metrics)
        self.downloader = Downloader(settings, source=source, disk=self.disk, metrics=metrics)
        self._clock = clock
        self.memory: MemoryCache[Resident] = MemoryCache(
            settings.memory_limit, make_policy(settings.eviction_policy), clock=clock
        )
        self._cache_enabled = settings.model_cache is ModelCacheSetting.ENABLED
        self._pending: dict[str, Flight] = {}
        self.hits = 0  # invocations that found their model loaded (ModelCacheHit = 1)
        self.misses = 0
        self._states: dict[str, ModelState] = {}
        self._drained: dict[str, asyncio.Event] = {}
        self._pools: Pools | None = None
        self.pressure = MemoryPressure(
            memory_limit=settings.memory_limit, high_water=settings.rss_high_water
        )
        environments = None
        if settings.model_requirements == "install":
            environments = Environments(
                Path(settings.cache_dir) / "envs",
                timeout_s=settings.model_requirements_timeout,
                pip_args=tuple(shlex.split(settings.pip_args)),
            )
        self.loader = Loader(
            handler=settings.handler, walk_trees=settings.walk_trees, environments=environments
        )
        self.unloader = Unloader(
            memory=self.memory,
            disk=self.disk,
            metrics=metrics,
            pressure=self.pressure,
            pools=lambda: self.pools,
            changed=self._update_gauges,
            unloading=lambda entry: self.runner.remember(entry),
            evicted=self._evicted,
            overlaps=self.loader.overlaps,
        )
        self._watcher: asyncio.Task[None] | None = None
        self._revalidating: asyncio.Task[None] | None = None
        self._expiring: asyncio.Task[None] | None = None
        self._watching: asyncio.Task[None] | None = None
        self.thrashing = Thrashing(settings.memory_limit, clock=clock)
        self._reloads_counted = 0
        self._background: set[asyncio.Task[None]] = set()
        # swapped out (by id), unloaded once their calls are done
        self._retired: dict[int, Entry] = {}
        self.history = History()  # per artifact: its calls' speed and load time, past unloads
        self.miss_costs = MissCosts()  # what the eviction policy weighs a model's uses by
        self.runner = Runner(
            inline_max_s=settings.inline_inference_ms / 1000.0,
            pools=lambda: self.pools,
            release=self._release,
            metrics=metrics,
            history=self.history,
        )
        self._inline_load_s = settings.inline_load_ms / 1000.0
        self._pool_loads = 0  # loads running on the load pool now
        self._load_turns = asyncio.Semaphore(settings.effective_load_concurrency)
        self.room = Room(
            self.memory, timeout_s=settings.invoke_timeout, spare_cached=self._cache_enabled
        )
        self.pins = Pins(on_idle=self._idle)
        self.snapshots = Snapshotter(
            disk=self.disk,
            pools=lambda: self.pools,
            enabled=self._cache_enabled and settings.snapshots,
            overlaps=self.loader.overlaps,
        )

    # -- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        """Create pools, re-index the disk cache, and start the RSS watcher."""
        s = self.settings
        self._pools = Pools(
            downloads=s.effective_download_concurrency,
            loads=s.effective_load_concurrency,
            inference=s.effective_inference_concurrency,
        )
        start_disk = functools.partial(self.disk.start, keep_snapshots=self.snapshots.enabled)
        await run_blocking(self.pools.load, start_disk)
        self.pressure.start()
        self._watcher = asyncio.create_task(
            self.unloader.watch_rss(), name="modelfleet-rss-watcher"
        )
        self._watching = asyncio.create_task(self._watch_thrashing(), name="modelfleet-thrashing")
        if s.revalidate_interval > 0:
            self._revalidating = asyncio.create_task(
                self._revalidate_loaded(s.revalidate_interval), name="modelfleet-revalidate"
            )
        if s.idle_ttl > 0:
            self._expiring = asyncio.create_task(
                self._expire_idle(s.idle_ttl), name="modelfleet-idle-ttl"
            )
        self._update_gauges()

    async def stop(self) -> None:
        """Cancel loads in progress, finish background unloads, unload every model."""
        watchers = (self._watcher, self._watching, self._revalidating, self._expiring)
        for watcher in (*watchers, *self._background):
            if watcher is not None:
                watcher.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        flights = [f.task for f in self._pending.values() if f.task is not None]
        for task in flights:
            task.cancel()
        await asyncio.gather(*flights, return_exceptions=True)
        await self.snapshots.stop()
        await self.unloader.drain()
        for key in list(self.memory):
            entry = self.memory.pop(key)
            if entry is not None:
                await self.unloader.unload(entry, delete_files=not self._cache_enabled)
        for entry in list(self._retired.values()):  # swapped out while calls still used them
            del self._retired[id(entry)]
            await self.unloader.unload(entry)
        if self._pools is not None:
            await run_blocking(self.pools.load, self.disk.close)
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
        if entry is not None:
            self.pins.take(entry)
            self.hits += 1
            self.metrics.model_cache_hit.inc()
        else:
            validate_target_model(target_model)
            self.misses += 1
            self.metrics.model_cache_miss.inc()
            started = time.perf_counter()
            loads = target_model not in self._pending  # this request's miss starts the load
            flights: list[Flight] = []
            entry = await self._wait_loaded(target_model, flights)
            self.metrics.model_loading_wait_time.observe(time.perf_counter() - started)
            known = self.history.get(entry.value.url) if loads else None
            result = await self.runner.run(
                entry, body, content_type, accept, custom_attributes, hit
            )
            download_s = flights[-1].download_s if flights else None
            return dataclasses.replace(
                result,
                load_s=known.load_s if known is not None else None,
                tier="source" if download_s is not None else "disk",
                download_s=download_s,
            )
        return await self.runner.run(entry, body, content_type, accept, custom_attributes, hit)

    async def _wait_loaded(self, target_model: str, flights: list[Flight] | None = None) -> Entry:
        """The model, loaded and pinned once for the caller; each load it waited for is
        appended to ``flights``."""
        deadline = time.monotonic() + self.settings.invoke_timeout
        for _ in range(_MAX_LOAD_ROUNDS):
            flight = self._pending.get(target_model)
            if flight is None:
                entry = self.memory.get(target_model)
                if entry is not None:
                    return self.pins.take(entry)
                flight = self._launch(target_model, self._load_from_source(target_model))
            assert flight.task is not None
            if flights is not None:
                flights.append(flight)
            flight.waiters += 1
            try:
                await asyncio.wait_for(
                    asyncio.shield(flight.task), max(deadline - time.monotonic(), 0.0)
                )
            except TimeoutError:
                if (entry := flight.claim()) is not None:
                    return entry  # admitted just as the time ran out
                raise ModelNotReadyError(
                    f"Model '{target_model}' is still loading after "
                    f"{self.settings.invoke_timeout:g} s; the load continues, retry shortly."
                ) from None
            except asyncio.CancelledError:
                if (entry := flight.claim()) is not None:
                    self._release(entry)
                raise
            finally:
                flight.waiters -= 1
            if (entry := flight.claim()) is not None:
                return entry
            # Joined after admission: pin it ourselves if it is still there, else load again.
            entry = self.memory.get(target_model)
            if entry is not None:
                return self.pins.take(entry)
        raise ModelNotReadyError(f"Model '{target_model}' was evicted repeatedly while loading.")

    def _launch(self, name: str, load: Coroutine[Any, Any, Entry]) -> Flight:
        """Start the single flight of ``name``; ``load`` is the coroutine that loads it."""
        flight = Flight()
        self._pending[name] = flight
        flight.task = asyncio.create_task(load)
        flight.task.add_done_callback(functools.partial(self._load_done, name, flight))
        return flight

    def _load_done(self, name: str, flight: Flight, task: asyncio.Task[Entry]) -> None:
        if self._pending.get(name) is flight:
            del self._pending[name]
        if task.cancelled():
            return
        if (exc := task.exception()) is not None:
            # Retrieved here so a load that fails after its callers timed out is still logged.
            logger.warning("loading %s failed: %s", name, exc)
        elif not self._cache_enabled and flight.prepins == 0 and flight.entry is not None:
            self.unloader.discard(flight.entry)  # every caller gave up: nobody will use it

    def _release(self, entry: Entry) -> None:
        self.pins.release(entry)

    def _idle(self, entry: Entry) -> None:
        """``entry``'s last pin was released."""
        self.room.changed()
        self.snapshots.released(entry.key)
        drained = self._drained.pop(entry.key, None)
        if drained is not None:
            drained.set()
        if not self._cache_enabled:
            self.unloader.discard(entry)

    async def _load_from_source(self, target_model: str) -> Entry:
        disk_entry = self.disk.pin(target_model)
        if disk_entry is None:
            return await self._load_artifact(target_model, await self._download(target_model))
        # The cached copy is checked against the source while it loads, not before: the check
        # (a hop to the check pool and a metadata request) took 4.4 ms on average in front of
        # every reload on the end-to-end Zipf benchmark. The load is admitted only once the
        # check allows it (the gate of :meth:`_load`).
        check = asyncio.ensure_future(
            run_blocking(self.pools.check, self.revalidator.loadable, target_model, disk_entry)
        )
        try:
            return await self._load_artifact(target_model, disk_entry, check)
        except asyncio.CancelledError:
            check.cancel()
            raise
        except BaseException:
            if not check.done() or check.cancelled() or check.exception() is not None:
                raise  # the load's own failure, or the check's (already handled)
            if check.result():
                raise
        # Torn, or outdated: downloaded again, whatever its load did.
        await run_blocking(self.pools.load, self.disk.empty_trash)
        return await self._load_artifact(target_model, await self._download(target_model))

    async def _load_artifact(
        self, target_model: str, disk_entry: DiskEntry, check: asyncio.Future[bool] | None = None
    ) -> Entry:
        """Load the pinned ``disk_entry``, admitted only if ``check`` (when given) allows it."""
        try:
            return await self._load(
                target_model,
                disk_entry.model_dir,
                disk_entry.artifact_bytes,
                from_source=True,
                disk_entry=disk_entry,
                gate=check,
            )
        except BaseException as exc:
            self._unpin_unless_admitted(target_model, disk_entry)
            if check is not None and not isinstance(exc, asyncio.CancelledError):
                # What the check finds decides what the failure means: a model gone from the
                # source leaves the disk too; a torn or outdated copy is the caller's to
                # download again.
                try:
                    fresh = await check
                except ModelNotFoundError:
                    await run_blocking(self.pools.load, self.disk.remove, target_model)
                    raise
                if not fresh:
                    raise
            # An unloadable artifact is deleted so a fixed upload is fetched afresh; one that
            # only lacked memory room stays on disk for the next try.
            if isinstance(exc, ModelError) or not self._cache_enabled:
                await run_blocking(self.pools.load, self.disk.remove, target_model)
            raise

    async def _revalidate_loaded(self, interval_s: float) -> None:
        """Every ``interval_s``, check each loaded model against the source (one at a time, on
        the check pool). A changed one is swapped for its new version: the new version is
        downloaded and loaded while the old one keeps answering, then takes its place, and the
        old one is unloaded once its calls are done. A deleted one leaves memory at once. A
        source that cannot be asked changes nothing."""
        while True:
            await asyncio.sleep(interval_s)
            for name in list(self.memory):
                entry = self.memory.entry(name)
                disk_entry = entry.value.disk if entry is not None else None
                if entry is None or disk_entry is None or name in self._pending:
                    continue
                try:
                    verdict = await run_blocking(
                        self.pools.check, self.revalidator.check, name, disk_entry
                    )
                except ModelNotFoundError:
                    self._in_background(self._retire(name, entry))
                    continue
                except Exception:  # pragma: no cover - the check must survive anything
                    logger.exception("revalidating %s failed", name)
                    continue
                if verdict is Verdict.CHANGED and name not in self._pending:
                    self._launch(name, self._load_new_version(name, entry))

    async def _load_new_version(self, name: str, old: Entry) -> Entry:
        """The single flight of a swap: download and load ``name``'s new version, which takes
        ``old``'s place in memory as it is admitted (requests that miss meanwhile wait for it,
        requests that hit are served by ``old``); ``old`` is unloaded once its calls are done.
        If the new version fails, ``old`` stays."""
        disk_entry = await self._download(name)
        try:
            entry = await self._load(
                name,
                disk_entry.model_dir,
                disk_entry.artifact_bytes,
                from_source=True,
                disk_entry=disk_entry,
                replacing=old,
            )
        except BaseException:
            self._unpin_unless_admitted(name, disk_entry)
            raise
        self._in_background(self._retire(name, old))
        return entry

    def _unpin_unless_admitted(self, name: str, disk_entry: DiskEntry) -> None:
        """Drop a failed load's pin of ``disk_entry``, unless the load got as far as admitting
        the model (cancelled afterwards): then the loaded model holds that pin."""
        admitted = self.memory.entry(name)
        if admitted is None or admitted.value.disk is not disk_entry:
            self.disk.unpin(disk_entry)

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _retire(self, name: str, entry: Entry) -> None:
        """Take ``entry`` out of memory (if a swap has not already) and unload it once its
        calls are done; its bytes stay counted until then."""
        if self.memory.entry(name) is entry:
            self._hold_retired(name, entry)
        if id(entry) not in self._retired:
            return
        try:
            while entry.pins > 0:
                await self._drained.setdefault(name, asyncio.Event()).wait()
            del self._retired[id(entry)]  # (cancelled before this, stop() unloads it)
            await self.unloader.unload(entry, reason=REPLACED)
        finally:
            self.memory.release(f"{name}\0retired")
            self.room.changed()

    def _hold_retired(self, name: str, entry: Entry) -> None:
        """Take ``entry`` out of the memory tier, its bytes held under another key until
        :meth:`_retire` has unloaded it."""
        self.memory.pop(name)
        # The room it just left: reserving it evicts nothing.
        self.memory.reserve(f"{name}\0retired", entry.size_bytes)
        self._retired[id(entry)] = entry

    async def _download(self, target_model: str) -> DiskEntry:
        self._states[target_model] = ModelState.DOWNLOADING
        started = time.perf_counter()
        try:
            entry = await self.downloader.download(
                target_model, self.pools.download, make_room=self._unload_one_for_disk
            )
        finally:
            self._states.pop(target_model, None)
        flight = self._pending.get(target_model)
        if flight is not None:  # what the requests waiting on this load waited for
            flight.download_s = time.perf_counter() - started
        return entry

    async def _unload_one_for_disk(self) -> bool:
        """Unload one idle source model so its artifact can leave the disk; False if none."""
        victim = self.memory.evict_one(lambda entry: entry.value.from_source)
        if victim is None:
            return False
        await self.unloader.unload(victim, reason=DISK)
        return True

    async def _load(
        self,
        name: str,
        url: Path,
        disk_bytes: int,
        *,
        from_source: bool,
        disk_entry: DiskEntry | None = None,
        replacing: Entry | None = None,
        gate: asyncio.Future[bool] | None = None,
    ) -> Entry:
        """Load ``url`` as ``name`` into memory; the entry comes pinned for every waiter.

        ``disk_entry``: the disk-cache entry ``url`` belongs to, whose load snapshot is read
        instead of the artifact if it has one, and gets one after this load if not.
        ``replacing``: the loaded entry of ``name`` this load replaces; it leaves the memory
        tier (its bytes held, see :meth:`_retire`) in the same step as the new one is admitted.
        ``gate``: a check that must allow the model before it is admitted; when it does not,
        the loaded model is closed and :class:`_Refused` raised.
        """
        self._states[name] = ModelState.LOADING
        snapshot = self.snapshots.path_for(disk_entry)
        try:
            # A turn first, then room: a load waiting for its turn holds no reservation, so
            # queued misses do not evict models that hits still want.
            async with self._load_turns:
                room = max(disk_bytes, 1)
                victims = await self.room.for_load(name, room)
                try:
                    self.unloader.unload_later(victims)
                    if self._loads_inline(url, snapshot):
                        loaded = self.loader.load(name, url, disk_bytes, snapshot)
                    else:
                        self._pool_loads += 1
                        try:
                            loaded = await run_blocking(
                                self.pools.load, self.loader.load, name, url, disk_bytes, snapshot
                            )
                        finally:
                            self._pool_loads -= 1
                    known = self.history.note(url)
                    known.load_s = loaded.load_s
                    # A framework import's growth belongs to the process: raise the mark by it.
                    self.pressure.imported(loaded.imported)
                except BaseException:
                    self.memory.release(name)
                    self.room.changed()
                    raise
            model = loaded.model
            cost_s = self._miss_cost(known, loaded, disk_entry)
            try:
                if gate is not None and not await gate:
                    raise _Refused(name)
                resident = Resident(model, url, from_source, disk=disk_entry)
                self.runner.resume(resident)

                def admit() -> list[Entry]:
                    if replacing is not None and self.memory.entry(name) is replacing:
                        self._hold_retired(name, replacing)
                    return self.memory.admit(name, resident, loaded.size, cost_s=cost_s)

                victims = await self.room.wait_for(admit)
            except BaseException:  # no room for its measured size, or cancelled meanwhile
                self.memory.release(name)
                self.room.changed()
                await asyncio.shield(run_blocking(self.pools.load, close_model, model))
                raise
            self.room.changed()  # its reservation is an entry now: the next load may start
            entry = self.memory.entry(name)
            assert entry is not None
            flight = self._pending.get(name)
            if flight is not None:
                self.pins.take_for_waiters(entry, flight)
                # Each caller that waited is a use, as a hit is: the eviction policy counts the
                # loading request's own (see cache/policies/base.py) and every request that
                # joined the load. Uncounted, a popular model evicted under load came back
                # with the use count of a cold one.
                for _ in range(flight.waiters):
                    self.memory.get(name)
            self._keep_if_pinned(entry)
            if from_source:
                self.thrashing.loaded(name, entry.size_bytes)
            self._loaded(entry, loaded, disk_entry, dropped=snapshot is not None)
            self.unloader.unload_later(victims)
            self._update_gauges()
            return entry
        finally:
            self._states.pop(name, None)

    def _keep_if_pinned(self, entry: Entry) -> None:
        """Keep ``entry`` in memory for good if ``--pin`` names it (a pinned model that does
        not fit beside the others fails its load: :meth:`MemoryCache.reserve`)."""
        if self.settings.pin and matches(entry.key, self.settings.pin):
            self.memory.keep(entry.key)

    def _evicted(self, model: str, reason: str) -> None:
        if reason in EVICTIONS:  # taken out for room, not asked for: it may be wanted again
            self.thrashing.unloaded(model)

    async def _watch_thrashing(self) -> None:
        """Check for thrashing every few seconds (see :mod:`modelfleet.instance.thrashing`)."""
        while True:
            await asyncio.sleep(THRASH_CHECK_S)
            in_memory = [
                (key, entry.size_bytes, entry.last_used)
                for key in self.memory
                if (entry := self.memory.entry(key)) is not None
            ]
            verdict = self.thrashing.check(self.hits, self.misses, in_memory)
            self.metrics.thrashing.set(1.0 if verdict.thrashing else 0.0)
            self.metrics.load_wait_share.set(verdict.wait_share)
            self.metrics.working_set_bytes.set(verdict.working_set_bytes)
            reloads = self.thrashing.reloads_total - self._reloads_counted
            if reloads:
                self.metrics.model_reloads.inc(reloads)
                self._reloads_counted += reloads

    async def _expire_idle(self, ttl_s: float) -> None:
        """Unload the models unused for ``ttl_s`` (not in use, not pinned), checking a few
        times per ``ttl_s``."""
        while True:
            await asyncio.sleep(min(max(ttl_s / 4, 0.05), 5.0))
            now = self._clock()
            idle = []
            for key in self.memory:
                entry = self.memory.entry(key)
                if entry is None or entry.pins or key in self.memory.kept:
                    continue
                if now - entry.last_used >= ttl_s:
                    idle.append(self.memory.pop(key))
            if idle:
                logger.info("unloading %d models idle for %g s", len(idle), ttl_s)
                await self.unloader.unload_all([e for e in idle if e is not None], reason=IDLE)
                self.room.changed()

    def _miss_cost(self, known: Known, loaded: Loaded, disk_entry: DiskEntry | None) -> float:
        """The CPU seconds the next miss of the model just loaded will cost (see MissCosts)."""
        if loaded.model.restored:
            return self.miss_costs.reloaded(known, loaded.cpu_s, loaded.size)
        follows = self.snapshots.will_save(disk_entry, loaded.model, loaded.size)
        return self.miss_costs.first_loaded(
            known, loaded.cpu_s, loaded.size, snapshot_follows=follows
        )

    def _loads_inline(self, url: Path, snapshot: Path | None) -> bool:
        """Whether a load of ``url`` runs on the event loop rather than the load pool: a load
        from a snapshot, of an artifact whose last load took at most ``inline_load_ms``,
        while no other load (or snapshot write) runs on the pool, so it never waits there.

        A hop to the load pool and back costs more than such a load: with loads holding the
        GIL in other threads, each side of the hop waits for it (up to the 5 ms switch
        interval), and so does every turn of the event loop meanwhile. A bare server that
        loads on its event loop had a third of modelfleet's 99th percentile latency on the
        end-to-end Zipf benchmark.
        """
        if snapshot is None or self._pool_loads or self.snapshots.writing:
            return False
        known = self.history.get(url)
        load_s = known.load_s if known is not None else None
        return load_s is not None and load_s <= self._inline_load_s

    def _loaded(
        self, entry: Entry, loaded: Loaded, disk_entry: DiskEntry | None, *, dropped: bool
    ) -> None:
        """Metrics, log, GC freeze and load snapshot after ``entry`` was admitted.

        ``dropped``: a snapshot was offered to the load but not used (it was deleted).
        """
        model, name = loaded.model, entry.key
        self.metrics.model_loading_time.observe(loaded.load_s)
        self.pressure.freeze_if_safe(self._nothing_cyclic)
        how = " from its snapshot" if model.restored else ""
        logger.info("loaded %s (%d bytes) in %.3f s%s", name, loaded.size, loaded.load_s, how)
        if model.restored:
            self.metrics.snapshot_loads.inc()
        elif disk_entry is not None:
            try:
                self.snapshots.loaded(entry, disk_entry, model, dropped=dropped)
            except Exception:  # a snapshot is an optimisation: never fail the load for it
                logger.warning("load snapshot of %s skipped", name, exc_info=True)

    def _nothing_cyclic(self) -> bool:
        """Whether no object alive can be in a reference cycle that will become garbage: no
        ``inference.py`` model is loaded (its code namespace is a cycle) and no other load is
        in flight (it may be building one). Models of the framework handlers hold no cycles."""
        if len(self._pending) > 1:
            return False
        entries = (self.memory.entry(key) for key in list(self.memory))
        return not any(e and e.value.model.handler_name == INFERENCE_PY for e in entries)

    async def enforce_rss(self) -> int:
        """Evict idle models worth the RSS excess over the high-water mark (see Unloader)."""
        return await self.unloader.enforce_rss()

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
        if name in self.memory or name in self._pending:
            raise ModelAlreadyLoadedError(name)
        flight = self._launch(name, self._load_url(name, url))
        assert flight.task is not None
        entry = await asyncio.shield(flight.task)
        return ModelInfo.of(entry)

    async def _load_url(self, name: str, url: str) -> Entry:
        if not url:
            raise ValidationError("LoadModel needs a non-empty url.")
        path = loadable(url, self.settings)
        disk_bytes = await run_blocking(self.pools.load, folder_size, path)
        return await self._load(name, path, disk_bytes, from_source=False)

    async def unload(self, name: str) -> None:
        """UnloadModel: free the memory of ``name`` once the calls using it are done."""
        entry = self.memory.entry(name)
        if entry is None:
            raise ModelNotLoadedError(name)
        while entry.pins > 0:
            await self._drained.setdefault(name, asyncio.Event()).wait()
        if self.memory.entry(name) is entry:
            self.memory.pop(name)
            await self.unloader.unload(entry, delete_files=not self._cache_enabled)

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
        self.pins.take(entry)
        self.metrics.model_cache_hit.inc()
        return await self.runner.run(entry, body, content_type, accept, custom_attributes, True)

    def describe(self, name: str) -> ModelInfo:
        """GetModel: the loaded model ``name``."""
        entry = self.memory.entry(name)
        if entry is None:
            raise ModelNotLoadedError(name)
        return ModelInfo.of(entry)

    def list_models(self) -> list[ModelInfo]:
        """ListModels: loaded models in name order."""
        entries = (self.memory.entry(name) for name in sorted(self.memory))
        return [ModelInfo.of(entry) for entry in entries if entry is not None]

    async def prewarm(self, target_models: list[str]) -> int:
        """Fetch and load ``target_models`` without invoking them; how many are now loaded."""
        loaded = 0
        for name in target_models:
            try:
                validate_target_model(name)
                entry = await self._wait_loaded(name)
            except Exception as exc:  # one model failing must not stop the others
                logger.warning("prewarm of %s failed: %s", name, exc)
                continue
            self._release(entry)
            loaded += 1
        return loaded

    def summary(self) -> dict[str, Any]:
        """For the admin view: loaded models with their bytes, memory, hits and misses."""
        looked_up = self.hits + self.misses
        kept = self.memory.kept
        now = self._clock()
        loaded = []
        for name in sorted(self.memory):
            entry = self.memory.entry(name)
            if entry is None:
                continue
            known = self.history.get(entry.value.url)
            loaded.append(
                {
                    "name": name,
                    "bytes": entry.size_bytes,
                    "hits": entry.hits,
                    "pinned": name in kept,
                    "idle_s": round(max(now - entry.last_used, 0.0), 3),
                    "load_s": known.load_s if known is not None else None,
                }
            )
        return {
            "loaded": loaded,
            "on_disk": [{"name": n, "bytes": b} for n, b in self.disk.recent(_ON_DISK_SHOWN)],
            "on_disk_count": len(self.disk),
            "disk_used_bytes": self.disk.used_bytes,
            "disk_limit_bytes": self.settings.disk_limit,
            "load_seconds": self.metrics.totals("modelfleet_model_loading_time_seconds"),
            "download_seconds": self.metrics.totals("modelfleet_model_downloading_time_seconds"),
            "pinned_bytes": sum(kept.values()),
            "thrashing": self.thrashing.last.as_dict(),
            "evictions": list(self.unloader.evictions)[-20:],
            "memory_used_bytes": self.memory.used_bytes,
            "memory_limit_bytes": self.memory.budget_bytes,
            "hits": self.hits,
            "misses": self.misses,
            "hit_ratio": self.hits / looked_up if looked_up else None,
        }

    def states(self) -> dict[str, ModelState]:
        """Models downloading or loading now."""
        return dict(self._states)

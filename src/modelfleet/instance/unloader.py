"""Taking models out of memory: unloads, background discards, and the RSS watcher.

An unload closes the model on the load pool, unpins its artifact and, when asked, deletes it;
the RSS watcher returns freed memory to the OS when it is due (see
:mod:`modelfleet.instance.pressure`). Every
entry handed here has already left the memory tier; pinned models never reach this module.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

from modelfleet.cache.disk import DiskCache
from modelfleet.cache.memory import MemoryCache
from modelfleet.handlers.base import LoadedModel
from modelfleet.instance.pools import OverlapTracker, Pools, release_memory, run_blocking
from modelfleet.instance.pressure import CHECK_INTERVAL_S, MemoryPressure
from modelfleet.instance.state import Entry, Resident
from modelfleet.metrics import Metrics

logger = logging.getLogger(__name__)

# Why a model left memory, as the eviction log (``Unloader.evictions``) says it
ROOM = "room"  # the eviction policy's victim, for a load
PRESSURE = "memory pressure"  # the process RSS above its high-water mark
DISK = "disk room"  # its artifact had to leave the disk for a download
IDLE = "idle ttl"  # unused for idle_ttl
UNLOAD = "unload"  # asked (UnloadModel, an idle copy, shutdown)
REPLACED = "new version"  # a new version in the source replaced it
DISABLED = "cache disabled"  # ModelCacheSetting=Disabled
EVICTIONS = frozenset({ROOM, PRESSURE, DISK, IDLE})  # taken out without being asked to
_LOG_SIZE = 50


class Unloader:
    """Unloads models for one instance and watches its RSS."""

    def __init__(
        self,
        *,
        memory: MemoryCache[Resident],
        disk: DiskCache,
        metrics: Metrics,
        pressure: MemoryPressure,
        pools: Callable[[], Pools],
        changed: Callable[[], None],
        unloading: Callable[[Entry], None] = lambda entry: None,
        overlaps: OverlapTracker | None = None,
        evicted: Callable[[str, str], None] = lambda model, reason: None,
    ) -> None:
        self._memory = memory
        self._disk = disk
        self._metrics = metrics
        self._pressure = pressure
        self._pools = pools
        self._changed = changed
        self._unloading = unloading  # told of each entry before its model is closed
        self._evicted = evicted  # told of each unload's model and reason
        # Loads that overlap an unload do not trust their memory growth (see loader.py): the
        # unload frees memory, and allocates some, meanwhile.
        self._overlaps = overlaps or OverlapTracker()
        self.background: set[asyncio.Task[None]] = set()
        # the last models taken out of memory: {"model", "reason", "bytes", "at" (epoch s)}
        self.evictions: deque[dict[str, object]] = deque(maxlen=_LOG_SIZE)

    async def unload(
        self, entry: Entry, *, delete_files: bool = False, reason: str = UNLOAD
    ) -> None:
        """Unload an entry already removed from the memory tier (``reason``: why, for the
        eviction log)."""
        self.evictions.append(
            {"model": entry.key, "reason": reason, "bytes": entry.size_bytes, "at": time.time()}
        )
        self._evicted(entry.key, reason)
        with self._overlaps.track():
            await self._unload(entry, delete_files=delete_files)

    async def _unload(self, entry: Entry, *, delete_files: bool) -> None:
        started = time.perf_counter()
        pool = self._pools().load
        disk_entry = entry.value.disk
        self._unloading(entry)
        await run_blocking(pool, close_model, entry.value.model)
        entry.value = None  # type: ignore[assignment]  # drop the last reference
        if self._pressure.collect_due():  # models with reference cycles need a collection
            await run_blocking(pool, gc.collect)
        self._pressure.freed()
        if disk_entry is not None:
            self._disk.unpin(disk_entry)
            await run_blocking(pool, self._disk.empty_trash)  # a replaced version's files
            if delete_files:
                await run_blocking(pool, self._disk.remove, entry.key)
        self._metrics.model_unloading_time.observe(time.perf_counter() - started)
        logger.info("unloaded %s", entry.key)
        self._changed()

    async def unload_all(self, entries: list[Entry], *, reason: str = UNLOAD) -> None:
        """Unload each entry; one failing does not keep the others loaded."""
        for entry in entries:
            try:
                await self.unload(entry, reason=reason)
            except Exception:
                logger.exception("unloading %s failed", entry.key)

    def unload_later(self, entries: list[Entry]) -> None:
        """Unload ``entries`` (evicted: already out of the memory tier) in the background.

        The load that evicted them for room goes on at once: closing models, unpinning and
        emptying their files took 5.6 ms on average (35 ms at the 99th percentile) on the
        end-to-end Zipf benchmark, each a hop to the load pool, and that wait sat in front of
        every miss. Their bytes already left the budget; the process RSS holds both for those
        milliseconds, which its high-water mark's slack covers.
        """
        if entries:
            self._spawn(self.unload_all(entries, reason=ROOM))

    def discard(self, entry: Entry) -> None:
        """ModelCacheSetting=Disabled: unload and delete an idle model in the background."""
        if entry.pins > 0 or self._memory.entry(entry.key) is not entry:
            return
        self._memory.pop(entry.key)
        self._spawn(self.unload(entry, delete_files=True, reason=DISABLED))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def drain(self) -> None:
        """Wait for the background unloads and discards (at shutdown)."""
        while self.background:
            await asyncio.gather(*list(self.background), return_exceptions=True)

    async def watch_rss(self) -> None:
        """Check the RSS against the high-water mark every second, forever."""
        while True:
            await asyncio.sleep(CHECK_INTERVAL_S)
            try:
                await self.enforce_rss()
            except Exception:  # pragma: no cover - the watcher must survive anything
                logger.exception("RSS watcher failed")

    async def enforce_rss(self) -> int:
        """Evict idle models while the process RSS is above the high-water mark (after handing
        freed heap pages back to the OS, when that is due).

        Victims are chosen until their charged bytes cover the excess, then unloaded; the next
        check (a second later) sees what that freed. Evicting one at a time until RSS drops
        would empty the cache, since freed memory reaches the OS only after the unloads.
        """
        rss, excess = self._pressure.excess()
        if self._pressure.trim_due(excess):
            self._pressure.trimmed()
            await run_blocking(self._pools().load, release_memory, collect=False)
            rss, excess = self._pressure.excess()
        self._metrics.process_rss_bytes.set(rss)
        victims: list[Entry] = []
        while excess > 0:
            victim = self._memory.evict_one()
            if victim is None:
                break
            victims.append(victim)
            excess -= victim.size_bytes
        if victims:
            logger.warning(
                "RSS %d above the high-water mark %d: evicting %d idle models",
                rss,
                self._pressure.high_water,
                len(victims),
            )
            await self.unload_all(victims, reason=PRESSURE)
        return len(victims)


def close_model(model: LoadedModel) -> None:
    """Close ``model``, logging (not raising) what its ``close`` raises: ``SystemExit`` or
    ``KeyboardInterrupt`` from model code included, which must not fail an unload."""
    try:
        model.close()
    except BaseException:
        logger.exception("closing a model failed")

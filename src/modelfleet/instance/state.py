"""What the model manager keeps per model: residency, single flights, public descriptions."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from modelfleet.cache.disk import DiskEntry
from modelfleet.cache.memory import MemoryEntry
from modelfleet.handlers.base import LoadedModel, Prediction

INLINE_AFTER_CALLS = 8  # calls measured on the pool before a model may run inline
# An inline call that holds the event loop this many times the inline limit (once), or inline
# calls averaging twice the limit, send the model back to the pool: it waits for something
# (a sleep, I/O, other threads) that its own CPU time does not show.
_INLINE_STALL = 10.0
_INLINE_SLOW = 2.0
_CLEAN_INLINE_CALLS = 1000  # inline calls without a stall that halve the probation again
# At most this many pool calls before another inline try: a fast model that stalled by bad luck
# comes back soon; a model that truly waits stalls the loop once per this many calls.
_MAX_PROBATION = 4096

Entry = MemoryEntry["Resident"]


class ModelState(StrEnum):
    DOWNLOADING = "downloading"
    LOADING = "loading"
    LOADED = "loaded"


@dataclass(slots=True)
class Resident:
    """What the memory tier holds for one model, with its inference-latency average."""

    model: LoadedModel
    url: Path
    from_source: bool
    disk: DiskEntry | None = None  # the disk-cache entry it was loaded from, pinned by it
    latency_ewma_s: float = 0.0
    calls: int = 0
    inline: bool = False  # fast enough to run on the event loop (see instance/runner.py)
    on_pool: int = 0  # calls of this model on the inference pool now
    pool_calls: int = 0  # calls on the pool since the model was loaded or last sent back there
    pool_calls_needed: int = INLINE_AFTER_CALLS
    inline_calls: int = 0
    inline_wall_ewma_s: float = 0.0

    def observe(self, cpu_s: float, wall_s: float, inline_max_s: float, *, inline: bool) -> None:
        """Fold one call into the averages; decide where the next call runs.

        CPU time (not wall time) measures the model itself on the pool, without the thread hop,
        queueing or GIL waits a pool call suffers; the first call (lazy imports, warm-up) is
        left out. But CPU time misses a model that waits (sleeps, I/O, native threads): on the
        event loop such a call stalls every request. So an inline call's wall time is watched
        too, and a model that holds the loop too long goes back to the pool, for four times
        as many pool calls as the last time before it may come back.
        """
        self.calls += 1
        if self.calls == 1:
            return
        self.latency_ewma_s = cpu_s if self.calls == 2 else 0.8 * self.latency_ewma_s + 0.2 * cpu_s
        if inline:
            self.inline_calls += 1
            self.inline_wall_ewma_s = (
                wall_s if self.inline_calls == 1 else 0.8 * self.inline_wall_ewma_s + 0.2 * wall_s
            )
            slow = self.inline_calls >= 4 and self.inline_wall_ewma_s > _INLINE_SLOW * inline_max_s
            if wall_s > _INLINE_STALL * inline_max_s or slow:
                self.inline = False
                self.pool_calls, self.inline_calls = 0, 0
                self.pool_calls_needed = min(self.pool_calls_needed * 4, _MAX_PROBATION)
                return
            elif self.inline_calls % _CLEAN_INLINE_CALLS == 0 and self.pool_calls_needed > 1:
                # clean inline calls earn back trust lost to a stall (a GC pause, a throttle)
                self.pool_calls_needed = max(INLINE_AFTER_CALLS, self.pool_calls_needed // 2)
        else:
            self.pool_calls += 1
        self.inline = (
            self.pool_calls >= self.pool_calls_needed and self.latency_ewma_s <= inline_max_s
        )

    def resume(self, known: Known, inline_max_s: float) -> None:
        """Go on from what the last residency of this very artifact measured (``known``):
        its warm-up is behind it, so the first call is measured too; one that runs inline is
        judged like any inline call (sent back to the pool if slow)."""
        self.calls = 1
        self.latency_ewma_s = known.latency_s
        self.pool_calls = known.pool_calls
        self.inline = known.inline or (
            known.pool_calls >= self.pool_calls_needed and known.latency_s <= inline_max_s
        )

    def timed_invoke(
        self, body: bytes, content_type: str | None, accept: str | None, attributes: str | None
    ) -> tuple[Prediction, float, float]:
        """Invoke the model; return its answer, the CPU seconds this thread spent on it and
        the wall seconds the call took in this thread."""
        started, wall = time.thread_time(), time.perf_counter()
        prediction = self.model.invoke(body, content_type, accept, attributes)
        return prediction, time.thread_time() - started, time.perf_counter() - wall


@dataclass(slots=True)
class Known:
    """What the last residency of one artifact showed: its calls' speed, and its load time."""

    latency_s: float = 0.0  # CPU seconds a call, averaged (0 until a call was measured)
    pool_calls: int = 0
    inline: bool = False
    measured: bool = False  # calls were measured (the first, warm-up, is not)
    load_s: float | None = None  # seconds its last load took
    reload_s: float | None = None  # CPU seconds its last load from a load snapshot took


class History:
    """What earlier loads of each artifact (by folder: a version of a model) showed, kept
    past their unload for the next load of the same artifact, at most ``limit`` of them
    (least recently noted dropped first; about 200 bytes each)."""

    def __init__(self, limit: int = 4096) -> None:
        self._known: OrderedDict[Path, Known] = OrderedDict()
        self._limit = limit

    def get(self, url: Path) -> Known | None:
        return self._known.get(url)

    def note(self, url: Path) -> Known:
        """The record of ``url`` (a new one if there is none), to be updated."""
        known = self._known.get(url)
        if known is None:
            known = self._known[url] = Known()
            if len(self._known) > self._limit:
                self._known.popitem(last=False)
        else:
            self._known.move_to_end(url)
        return known


class MissCosts:
    """What a model's next miss will cost, in CPU seconds: the figure the eviction policy
    weighs a model's uses by (``cost_s`` of :meth:`~modelfleet.cache.memory.MemoryCache.admit`).

    Not the load just measured. Its wall time is mostly waiting when loads overlap (for the
    GIL and the cores: one model's reloads varied 5-28x on the end-to-end Zipf benchmark), and
    a model's first load, from its artifact (with a framework import, for the first model of
    a framework), costs many times what its next one will, from the load snapshot that load
    leaves. Priced by that first load, a model loaded once held its room long after its
    popularity was gone; a 2-instance fleet, whose instances each pay more first loads for the
    same room, lost a tenth of its hit ratio to it (a sequential replay of each instance's
    requests). So a load's CPU seconds count, and a load from the artifact that will leave a
    snapshot is priced as a reload: the model's own last one, or at this instance's CPU
    seconds per byte of reloads lately.
    """

    __slots__ = ("_per_byte",)

    def __init__(self) -> None:
        self._per_byte: float | None = None  # CPU seconds per byte of reloads, averaged

    def reloaded(self, known: Known, cpu_s: float, size_bytes: int) -> float:
        """A load from its snapshot took ``cpu_s``; what the next will cost."""
        known.reload_s = cpu_s
        rate = cpu_s / max(size_bytes, 1)
        self._per_byte = rate if self._per_byte is None else 0.9 * self._per_byte + 0.1 * rate
        return cpu_s

    def first_loaded(
        self, known: Known, cpu_s: float, size_bytes: int, *, snapshot_follows: bool
    ) -> float:
        """A load from the artifact took ``cpu_s``; what the next will cost (a reload, when
        ``snapshot_follows``)."""
        if not snapshot_follows:
            return cpu_s
        if known.reload_s is not None:
            return min(known.reload_s, cpu_s)
        if self._per_byte is not None:
            return min(self._per_byte * size_bytes, cpu_s)
        return cpu_s


@dataclass(eq=False, slots=True)
class Flight:
    """One load in progress and the callers waiting for it."""

    task: asyncio.Task[Entry] | None = None
    waiters: int = 0  # callers waiting now; each gets a pin when the model is admitted
    prepins: int = 0  # pins taken on the waiters' behalf and not yet claimed
    entry: Entry | None = None  # set at admission
    download_s: float | None = None  # the load downloaded its artifact first, in this long

    def claim(self) -> Entry | None:
        """The admitted entry with one of the pins taken for a waiter, if one is left."""
        if self.entry is not None and self.prepins > 0:
            self.prepins -= 1
            return self.entry
        return None


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """A model as the instance contract describes it."""

    name: str
    url: str
    state: ModelState
    size_bytes: int = 0
    hits: int = 0
    handler: str = ""

    @classmethod
    def of(cls, entry: Entry) -> ModelInfo:
        """The description of a loaded model."""
        return cls(
            name=entry.key,
            url=str(entry.value.url),
            state=ModelState.LOADED,
            size_bytes=entry.size_bytes,
            hits=entry.hits,
            handler=entry.value.model.handler_name,
        )


@dataclass(frozen=True, slots=True)
class InvokeResult:
    prediction: Prediction
    cache_hit: bool
    model_latency_s: float
    queued: bool = False  # it had to wait for an inference slot (pool full, or the model busy)
    load_s: float | None = None  # its miss started a load into memory, which took this long
    memory_bytes: int = 0  # the model's footprint in the memory budget
    artifact_bytes: int = 0  # its artifact's bytes on disk (0: not from the disk cache)
    tier: str = "memory"  # where the model was: memory (a hit), disk, or source (downloaded)
    download_s: float | None = None  # the download its miss waited for took this long

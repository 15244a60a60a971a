"""Bounded worker pools and process-memory helpers for an instance.

Everything that blocks runs through :func:`run_blocking` on one of three pools, so downloads and
loads (slow, few) never take the threads that warm inference (fast, many) needs, and the event
loop stays free for ``/ping`` and ``/metrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import functools
import gc
import logging
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

import psutil

logger = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")


class Pools:
    """The instance's executors: downloads, loads (and unloads), inference, and checks of
    cached models against the source (one metadata request or a manifest check each: they
    must not queue behind large downloads)."""

    def __init__(self, *, downloads: int, loads: int, inference: int, checks: int = 2) -> None:
        self.download = ThreadPoolExecutor(downloads, thread_name_prefix="mf-download")
        self.check = ThreadPoolExecutor(checks, thread_name_prefix="mf-check")
        self.load = ThreadPoolExecutor(loads, thread_name_prefix="mf-load")
        self.inference = ThreadPoolExecutor(inference, thread_name_prefix="mf-infer")
        self.inference_workers = inference

    def shutdown(self) -> None:
        for pool in (self.download, self.check, self.load, self.inference):
            pool.shutdown(wait=False, cancel_futures=True)


async def run_blocking(
    pool: ThreadPoolExecutor, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs
) -> T:
    """Run ``fn`` on ``pool`` and await its result without blocking the event loop.

    What ``fn`` raises that is not an :class:`Exception` (``SystemExit``, ``KeyboardInterrupt``)
    comes back as a :class:`WorkerExitError`: awaited, the exception itself would leave the
    awaiting task and stop the event loop, and every model with it. Model code is caught
    earlier, as the model's failure (:mod:`modelfleet.instance.loader`,
    :mod:`modelfleet.instance.runner`); this is the net for everything else.
    """
    loop = asyncio.get_running_loop()
    if kwargs:
        return await loop.run_in_executor(pool, _contained, functools.partial(fn, *args, **kwargs))
    return await loop.run_in_executor(pool, _contained, fn, *args)


class WorkerExitError(RuntimeError):
    """A call on a worker pool raised ``SystemExit``, ``KeyboardInterrupt`` or another
    ``BaseException`` that is not an ``Exception`` (a bug: an InternalFailure)."""


def _contained(fn: Callable[..., T], *args: Any) -> T:
    try:
        return fn(*args)
    except Exception:
        raise
    except BaseException as exc:
        name = getattr(fn, "__qualname__", type(fn).__name__)
        raise WorkerExitError(f"{name} raised {type(exc).__name__}: {exc}") from exc


class Overlap:
    """Whether another tracked section ran at the same time as this one."""

    __slots__ = ("happened",)

    def __init__(self) -> None:
        self.happened = False


class OverlapTracker:
    """Tells each section (a model load) whether any other overlapped it in time.

    A process-wide RSS reading taken around a load is that load's footprint only if no other
    load ran meanwhile.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active: set[Overlap] = set()

    @contextlib.contextmanager
    def track(self) -> Iterator[Overlap]:
        mine = Overlap()
        with self._lock:
            if self._active:
                mine.happened = True
                for other in self._active:
                    other.happened = True
            self._active.add(mine)
        try:
            yield mine
        finally:
            with self._lock:
                self._active.discard(mine)


_PROCESS = psutil.Process()


def current_rss() -> int:
    """Resident set size of this process in bytes."""
    return int(_PROCESS.memory_info().rss)


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.malloc_trim  # noqa: B018 - glibc only: probe for it
        libc.mallopt  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _libc()


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _mallinfo2() -> Any:
    function = getattr(_LIBC, "mallinfo2", None)  # glibc 2.33 and later
    if function is not None:
        function.restype = _MallInfo2
        function.argtypes = []
    return function


_MALLINFO2 = _mallinfo2()


def allocated_bytes() -> int:
    """Bytes malloc has handed out and not taken back: its heaps' chunks in use plus its own
    mappings (glibc ``mallinfo2``), 0 where that is not available.

    Unlike the RSS, it grows when a load reuses heap pages freed by an earlier unload.
    """
    if _MALLINFO2 is None:
        return 0
    info = _MALLINFO2()
    return int(info.uordblks + info.hblkhd)


_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_BYTES = 1024 * 1024
_M_ARENA_MAX = -8
_ARENA_MAX = 2


def configure_allocator() -> None:
    """Pin glibc's mmap threshold at 1 MiB and its arenas at 2.

    glibc raises the threshold (up to 32 MiB) as large blocks are freed, after which model-sized
    arrays come from the heap and linger there after an unload. With a fixed threshold every
    block of 1 MiB or more is its own mapping, returned to the OS the moment the model that held
    it is gone. Lower thresholds were measured to slow loads (fresh pages fault in); 1 MiB kept
    load times equal to glibc's default while RSS tracked the memory budget
    (tests/instance/test_budgets.py).

    Also cap glibc at 2 malloc arenas. By default each worker thread gets its own arena, and a
    load on a thread whose arena is new or trimmed grows it page by page: a 100 MB XGBoost load
    took 1.8 s on a fresh thread against 0.17 s on the main thread; with 2 arenas, 0.17 s on any
    thread. The GIL already serialises most allocation, so arena contention costs little.
    """
    if _LIBC is not None:
        _LIBC.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)
        _LIBC.mallopt(_M_ARENA_MAX, _ARENA_MAX)


def configure_openmp() -> None:
    """Have idle OpenMP workers sleep rather than spin (``OMP_WAIT_POLICY=PASSIVE``), unless
    the environment says otherwise.

    XGBoost parses models with an OpenMP team (predictions, XGBoost's and LightGBM's, run on one
    thread here, so no team waits between requests); after a parallel region libgomp's workers
    spin for a while by default, taking a core from the threads that answer requests. Read by
    the OpenMP runtime when it is loaded, which is when the first model of such a framework is:
    the entry point sets it at start, before any (instance/bootstrap.py). Measured on 2 cores,
    41 cold 1 MB XGBoost requests per side in one alternating run, twice: 16.98 and 16.88 ms
    median against 17.85 and 18.04 ms spinning (inference 0.82 against 1.18-1.37 ms mean).
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def release_memory(*, collect: bool) -> None:
    """Hand freed heap pages back to the OS (glibc ``malloc_trim``), after a full garbage
    collection when ``collect`` (models with reference cycles are freed only by one)."""
    if collect:
        gc.collect()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)

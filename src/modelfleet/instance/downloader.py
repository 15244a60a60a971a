"""Brings artifacts from the model source into the disk cache.

One call of :meth:`Downloader.download` is one download: the manager's single flight makes sure
no two run for the same target model. The whole step runs on a download thread and asks the
source once: its answer's size reserves room on disk before the first byte is written (no
separate metadata request), and an archive's reservation grows before each member is written.
A device that is really full (ENOSPC: a small file system under a generous budget) makes it
delete every unpinned artifact and try once more, then fail with a DiskFullError naming the
folder and its free space. When artifacts of loaded models hold the disk budget, the manager's
``make_room`` coroutine unloads an idle model (which unpins its artifact) and the reservation
is tried again.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import shutil
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from modelfleet.cache.disk import DiskCache, DiskEntry, is_disk_full
from modelfleet.config import Settings
from modelfleet.errors import DiskFullError
from modelfleet.instance.pools import run_blocking
from modelfleet.metrics import Metrics
from modelfleet.source import ArtifactInfo, ModelSource

logger = logging.getLogger(__name__)

MakeRoom = Callable[[], Coroutine[Any, Any, bool]]


class Downloader:
    """Downloads (and unpacks) target models into a :class:`DiskCache`."""

    def __init__(
        self, settings: Settings, *, source: ModelSource, disk: DiskCache, metrics: Metrics
    ) -> None:
        self.source = source
        self.disk = disk
        self.metrics = metrics
        self._disk_limit = settings.disk_limit
        self._max_bytes = min(settings.max_artifact_size, settings.disk_limit)
        self._max_files = settings.max_artifact_files
        self._room_wait_s = settings.invoke_timeout

    async def download(
        self, target_model: str, pool: ThreadPoolExecutor, *, make_room: MakeRoom
    ) -> DiskEntry:
        """Fetch ``target_model`` into the disk cache; return its entry, pinned once."""
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            entry = await run_blocking(pool, self._fetch_and_commit, target_model, loop, make_room)
        finally:
            self.disk.release(target_model)
        self.metrics.model_downloads.inc()
        self.metrics.model_downloading_time.observe(time.perf_counter() - started)
        return entry

    def _fetch_and_commit(
        self, target_model: str, loop: asyncio.AbstractEventLoop, make_room: MakeRoom
    ) -> DiskEntry:
        """One download, tried again once if the device was full (after deleting unpinned
        artifacts, and unloading idle models for theirs, worth what the download had reserved);
        a second full device is a DiskFullError naming the folder and its free space."""
        try:
            return self._fetch_once(target_model, loop, make_room)
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            needed = self.disk.reserved(target_model)
            self.disk.release(target_model)
            freed = self.disk.free_unpinned(needed)
            while freed < needed and self._room_made(loop, make_room):
                freed += self.disk.free_unpinned(needed - freed)
            logger.warning(
                "no space left on the device of %s while downloading %s: deleted %d bytes of "
                "artifacts not in use, trying once more",
                self.disk.root,
                target_model,
                freed,
            )
        try:
            return self._fetch_once(target_model, loop, make_room)
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            free = shutil.disk_usage(self.disk.root).free
            raise DiskFullError(
                f"No space left on the device of the disk cache {self.disk.root} "
                f"({free} bytes free) for '{target_model}', even after deleting the artifacts "
                "not in use; free space there or lower --disk-limit."
            ) from exc

    def _fetch_once(
        self, target_model: str, loop: asyncio.AbstractEventLoop, make_room: MakeRoom
    ) -> DiskEntry:
        def reserve(info: ArtifactInfo) -> None:
            self._reserve(target_model, info, loop, make_room)

        def grow(total: int) -> None:
            self._hold(target_model, total, loop, make_room)

        staging = self.disk.staging_dir()
        try:
            fetched = self.source.fetch(
                target_model,
                staging / "artifact",
                max_bytes=self._max_bytes,
                max_files=self._max_files,
                before_write=reserve,
                reserve=grow,
            )
            while True:
                try:
                    return self.disk.commit(
                        target_model, staging, etag=fetched.etag, source_size=fetched.size
                    )
                except DiskFullError:  # the metadata did not fit: as for the files
                    if not self._room_made(loop, make_room):
                        raise
        except BaseException:
            with contextlib.suppress(OSError):
                shutil.rmtree(staging)
            raise

    def _room_made(self, loop: asyncio.AbstractEventLoop, make_room: MakeRoom) -> bool:
        """Run ``make_room`` on the event loop and wait for its verdict (from the download
        thread), at most the invoke timeout: a loop that stopped (the server shutting down)
        must not leave this thread waiting forever, which would hang the process's exit."""
        future = asyncio.run_coroutine_threadsafe(make_room(), loop)
        try:
            return future.result(timeout=self._room_wait_s)
        except (concurrent.futures.TimeoutError, concurrent.futures.CancelledError):
            future.cancel()
            return False

    def _reserve(
        self,
        target_model: str,
        info: ArtifactInfo,
        loop: asyncio.AbstractEventLoop,
        make_room: MakeRoom,
    ) -> None:
        """Reserve disk room for ``info`` (on the download thread, before any byte is written).

        A file or folder is reserved at its size. An archive is reserved at its compressed
        size, and the reservation grows while it is unpacked, before each member is written
        (``grow``): a gzip bomb can never write past the budget.
        """
        if info.size > self._disk_limit:  # can never fit: fail before evicting anything
            raise DiskFullError(
                f"Artifact '{target_model}' is {info.size} bytes but the disk cache budget is "
                f"{self._disk_limit} bytes."
            )
        self._hold(target_model, info.size, loop, make_room)

    def _hold(
        self,
        target_model: str,
        total: int,
        loop: asyncio.AbstractEventLoop,
        make_room: MakeRoom,
    ) -> None:
        """Grow the download's reservation to ``total`` bytes, unloading idle models whose
        artifacts hold the room if need be (on the download thread). What can never fit
        unloads nothing."""
        if total > self.disk.capacity_bytes:
            raise DiskFullError(
                f"Artifact '{target_model}' needs {total} bytes but the disk cache budget is "
                f"{self.disk.budget_bytes} bytes."
            )
        while True:
            try:
                self.disk.reserve(target_model, total)
                return
            except DiskFullError:
                # Unloading runs on the event loop; this thread waits for its verdict.
                if not self._room_made(loop, make_room):
                    raise

"""Brings artifacts from the model source into the disk cache.

One call of :meth:`Downloader.download` is one download: the manager's single flight makes sure
no two run for the same target model. The whole step runs on a download thread and asks the
source once: its answer's size reserves room on disk before the first byte is written (no
separate metadata request). When artifacts of loaded models hold the disk budget, the manager's
``make_room`` coroutine unloads an idle model (which unpins its artifact) and the reservation
is tried again.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from modelfleet.cache.disk import DiskCache, DiskEntry
from modelfleet.config import Settings
from modelfleet.errors import DiskFullError
from modelfleet.instance.pools import run_blocking
from modelfleet.metrics import Metrics
from modelfleet.source import ArtifactInfo, ModelSource

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
        def reserve(info: ArtifactInfo) -> None:
            self._reserve(target_model, info, loop, make_room)

        staging = self.disk.staging_dir()
        try:
            fetched = self.source.fetch(
                target_model,
                staging / "artifact",
                max_bytes=self._max_bytes,
                max_files=self._max_files,
                before_write=reserve,
            )
            return self.disk.commit(target_model, staging, etag=fetched.etag)
        except BaseException:
            with contextlib.suppress(OSError):
                shutil.rmtree(staging)
            raise

    def _reserve(
        self,
        target_model: str,
        info: ArtifactInfo,
        loop: asyncio.AbstractEventLoop,
        make_room: MakeRoom,
    ) -> None:
        """Reserve disk room for ``info`` (on the download thread, before any byte is written)."""
        if info.size > self._disk_limit:  # can never fit: fail before evicting anything
            raise DiskFullError(
                f"Artifact '{target_model}' is {info.size} bytes but the disk cache budget is "
                f"{self._disk_limit} bytes."
            )
        estimate = info.size
        if self.source.is_archive(target_model):
            # Archives unpack to more than they weigh: reserve up to twice the object's size,
            # as far as unpinned room allows; the true size is charged at commit.
            room = self._disk_limit - self.disk.pinned_bytes
            estimate = max(info.size, min(2 * info.size, room))
        while True:
            try:
                self.disk.reserve(target_model, estimate)
                return
            except DiskFullError:
                # Unloading runs on the event loop; this thread waits for its verdict.
                if not asyncio.run_coroutine_threadsafe(make_room(), loop).result():
                    raise

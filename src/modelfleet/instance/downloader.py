"""Brings artifacts from the model source into the disk cache.

One call of :meth:`Downloader.download` is one download: the manager's single flight makes sure
no two run for the same target model. Room on disk is reserved before the first byte arrives;
when artifacts of loaded models hold the budget, the manager's ``make_room`` callback unloads an
idle model (which unpins its artifact) and the reservation is tried again.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

from modelfleet.cache.disk import DiskCache, DiskEntry
from modelfleet.config import Settings
from modelfleet.errors import DiskFullError
from modelfleet.instance.pools import run_blocking
from modelfleet.metrics import Metrics
from modelfleet.source import ModelSource


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
        self,
        target_model: str,
        pool: ThreadPoolExecutor,
        *,
        make_room: Callable[[], Awaitable[bool]],
    ) -> DiskEntry:
        """Fetch ``target_model`` into the disk cache; return its entry, pinned once."""
        info = await run_blocking(pool, self.source.stat, target_model)
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
        try:
            while True:
                try:
                    await run_blocking(pool, self.disk.reserve, target_model, estimate)
                    break
                except DiskFullError:
                    if not await make_room():
                        raise
            started = time.perf_counter()
            entry = await run_blocking(pool, self._fetch_and_commit, target_model)
        finally:
            self.disk.release(target_model)
        self.metrics.model_downloads.inc()
        self.metrics.model_downloading_time.observe(time.perf_counter() - started)
        return entry

    def _fetch_and_commit(self, target_model: str) -> DiskEntry:
        staging = self.disk.staging_dir()
        try:
            fetched = self.source.fetch(
                target_model,
                staging / "artifact",
                max_bytes=self._max_bytes,
                max_files=self._max_files,
            )
            return self.disk.commit(target_model, staging, etag=fetched.etag)
        except BaseException:
            with contextlib.suppress(OSError):
                shutil.rmtree(staging)
            raise

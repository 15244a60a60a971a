"""When an instance saves load snapshots (see :mod:`modelfleet.handlers.snapshot`).

A model loaded from its artifact (not from a snapshot) by a handler that has a faster form gets
one snapshot, written on the load pool once the calls that waited for its load are answered (the
pickling holds the GIL) and only where the disk budget has free room. Models larger than
:data:`~modelfleet.handlers.snapshot.MAX_BYTES` in memory or on disk get none, nor does a model
whose snapshot failed twice (it could not be pickled, came out too large, or could not be read
back), so it is not pickled again at every load.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path

from modelfleet.cache.disk import DiskCache, DiskEntry
from modelfleet.handlers import LoadedModel, take_snapshot
from modelfleet.handlers import snapshot as snapshots
from modelfleet.instance.pools import OverlapTracker, Pools, run_blocking
from modelfleet.instance.state import Entry

logger = logging.getLogger(__name__)

_MAX_FAILURES = 2


class Snapshotter:
    """Saves the load snapshots of one instance's models in the background."""

    def __init__(
        self,
        *,
        disk: DiskCache,
        pools: Callable[[], Pools],
        enabled: bool,
        overlaps: OverlapTracker | None = None,
    ) -> None:
        self._disk = disk
        self._pools = pools
        self.enabled = enabled
        # A load beside a write does not trust its memory growth (see loader.py): pickling
        # allocates about the model's size. A 3.3 MB model loaded during writes measured 13.9
        # MB, over its instance's whole budget, and its request failed as "too large".
        self._overlaps = overlaps or OverlapTracker()
        self._background: set[asyncio.Task[None]] = set()
        # models loaded from their artifact whose snapshot waits for their first callers
        self._unsaved: dict[str, tuple[DiskEntry, LoadedModel]] = {}
        self._failures: dict[str, int] = {}  # only models whose snapshot failed
        self._stopping = False

    @property
    def writing(self) -> bool:
        """Whether a snapshot is being written now."""
        return bool(self._background)

    def path_for(self, disk_entry: DiskEntry | None) -> Path | None:
        """The snapshot a load of ``disk_entry`` should read, if it has one and they are on."""
        if self.enabled and disk_entry is not None and disk_entry.snapshot_bytes:
            return disk_entry.snapshot_path
        return None

    def will_save(self, disk_entry: DiskEntry | None, model: LoadedModel, size_bytes: int) -> bool:
        """Whether ``model``, loaded from the artifact of ``disk_entry`` and ``size_bytes`` in
        memory, gets a snapshot (if the disk has room for it when it is written)."""
        if not self.enabled or disk_entry is None or self._stopping:
            return False
        too_big = max(disk_entry.artifact_bytes, size_bytes) > snapshots.MAX_BYTES
        failed = self._failures.get(disk_entry.target_model, 0) >= _MAX_FAILURES
        return model.snapshot_capable and not too_big and not failed

    def loaded(
        self, entry: Entry, disk_entry: DiskEntry, model: LoadedModel, *, dropped: bool
    ) -> None:
        """``model`` was just loaded from the artifact of ``disk_entry`` and admitted as
        ``entry``. ``dropped``: the entry had a snapshot that could not be used (deleted)."""
        if not self.enabled:
            return
        name = disk_entry.target_model
        if dropped:
            self._disk.drop_snapshot(disk_entry)
            self._failed(name)
        if not self.will_save(disk_entry, model, entry.size_bytes):
            return
        if entry.pins > 0:
            self._unsaved[entry.key] = (disk_entry, model)
        else:
            self._save(disk_entry, model)

    def released(self, key: str) -> None:
        """The model ``key`` has no call in flight any more."""
        unsaved = self._unsaved.pop(key, None)
        if unsaved is not None and not self._stopping:
            self._save(*unsaved)

    async def stop(self) -> None:
        """Start no more snapshots; wait for those being written."""
        self._stopping = True
        self._unsaved.clear()
        await asyncio.gather(*self._background, return_exceptions=True)

    def _save(self, disk_entry: DiskEntry, model: LoadedModel) -> None:
        task = asyncio.create_task(self._write(disk_entry, model))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _write(self, disk_entry: DiskEntry, model: LoadedModel) -> None:
        name = disk_entry.target_model
        try:
            with self._overlaps.track():
                await run_blocking(self._pools().load, self._write_blocking, disk_entry, model)
        except Exception:
            self._failed(name)
            logger.warning("no load snapshot for %s", name, exc_info=True)

    def _write_blocking(self, disk_entry: DiskEntry, model: LoadedModel) -> None:
        # No room now (a busy disk cache is usually full): don't pickle for nothing. The
        # snapshot is at least about the artifact's size.
        if not self._disk.has_snapshot_room(disk_entry, disk_entry.artifact_bytes):
            return
        data = take_snapshot(model)
        if data is None:
            return
        size = sum(len(part) for part in data)
        if size > snapshots.MAX_BYTES:
            self._failures[disk_entry.target_model] = _MAX_FAILURES  # it will not shrink
            return
        self._disk.add_snapshot(disk_entry, data)

    def _failed(self, name: str) -> None:
        with contextlib.suppress(KeyError):
            self._unsaved.pop(name)
        self._failures[name] = self._failures.get(name, 0) + 1

"""The disk tier: a byte-budgeted folder of unpacked artifacts that survives restarts.

Layout under the cache folder::

    models/<digest>/meta.json     what the entry is (target model, ETag, bytes)
    models/<digest>/artifact/     the unpacked artifact, handed to the handler
    models/<digest>/snapshot      the loaded model saved by its handler, if it has a faster
                                  form to read back (modelfleet.handlers.snapshot)
    tmp/<unique>/                 downloads in progress and entries being deleted

Writes follow diskcache's order: an entry is built under ``tmp/`` and published by one rename;
an evicted entry leaves the index first, is renamed back into ``tmp/`` and only then deleted,
so a crash at any point leaves either a whole entry or an orphan that :meth:`DiskCache.start`
sweeps away. Pinned entries (models loaded or loading) are never deleted. A snapshot is added
to an entry only where the budget has free room for it (it never evicts), and goes with its
entry.

The methods block (file I/O) and are thread-safe; the instance calls them from worker threads.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from modelfleet.errors import DiskFullError

logger = logging.getLogger(__name__)

_META = "meta.json"
_ARTIFACT = "artifact"
_SNAPSHOT = "snapshot"


@dataclass(slots=True)
class DiskEntry:
    """One artifact on disk (about 100 bytes of index: the index may hold many)."""

    target_model: str
    root: Path  # the cache's ``models/`` folder, one object shared by every entry
    size_bytes: int  # everything in the folder, snapshot included
    pins: int = 0
    snapshot_bytes: int = 0

    @property
    def artifact_bytes(self) -> int:
        """The entry's size without its snapshot (the artifact and its metadata)."""
        return self.size_bytes - self.snapshot_bytes

    @property
    def etag(self) -> str | None:
        """The source object's ETag when it was fetched (read from ``meta.json``, not kept in
        memory: nothing on the request path needs it)."""
        try:
            value = json.loads((self.path / _META).read_text()).get("etag")
        except (OSError, ValueError, AttributeError):
            return None
        return value if isinstance(value, str) else None

    @property
    def path(self) -> Path:
        """The entry's folder: ``models/<digest of the target model>``."""
        return self.root / _digest(self.target_model)

    @property
    def model_dir(self) -> Path:
        """The unpacked artifact, as handed to a handler."""
        return self.path / _ARTIFACT

    @property
    def snapshot_path(self) -> Path:
        """Where the entry's load snapshot is (if :meth:`DiskCache.add_snapshot` added one)."""
        return self.path / _SNAPSHOT


def tree_size(path: Path) -> int:
    """Bytes of all regular files under ``path`` (apparent size, links not followed)."""
    total = 0
    stack = [path]
    while stack:
        with os.scandir(stack.pop()) as it:
            for item in it:
                if item.is_dir(follow_symlinks=False):
                    stack.append(Path(item.path))
                elif item.is_file(follow_symlinks=False):
                    total += item.stat(follow_symlinks=False).st_size
    return total


def _digest(target_model: str) -> str:
    return hashlib.sha256(target_model.encode()).hexdigest()[:40]


class DiskCache:
    """Unpacked artifacts under a byte budget, least recently used unpinned ones deleted first."""

    def __init__(
        self, root: Path, budget_bytes: int, *, on_evict: Callable[[str], None] | None = None
    ) -> None:
        self.root = root
        self.budget_bytes = budget_bytes
        self._models = root / "models"
        self._tmp = root / "tmp"
        self._lock = threading.Lock()
        # Least recently used first: a plain dict keeps insertion order, and a use re-inserts
        # the key at the end (about 50 bytes an entry less than an OrderedDict).
        self._entries: dict[str, DiskEntry] = {}
        self._reserved: dict[str, int] = {}
        self._used = 0
        self._on_evict = on_evict

    # -- start ---------------------------------------------------------------------------------
    def start(self, *, keep_snapshots: bool = True) -> None:
        """Create the folders, sweep orphans, and re-index what a previous run left (deleting
        its load snapshots unless ``keep_snapshots``: an instance that does not use them does
        not keep them in its budget)."""
        self._models.mkdir(parents=True, exist_ok=True)
        self._tmp.mkdir(parents=True, exist_ok=True)
        for orphan in self._tmp.iterdir():
            _remove_tree(orphan)
        found: list[tuple[float, DiskEntry]] = []
        for path in self._models.iterdir():
            entry = self._read_entry(path, keep_snapshot=keep_snapshots)
            if entry is None:
                logger.warning("removing unreadable disk-cache entry %s", path)
                _remove_tree(path)
                continue
            found.append(((path / _META).stat().st_mtime, entry))
        with self._lock:
            for _, entry in sorted(found, key=lambda item: item[0]):
                self._entries[entry.target_model] = entry
                self._used += entry.size_bytes
        if found:
            logger.info("disk cache re-indexed %d artifacts, %d bytes", len(found), self._used)

    def _read_entry(self, path: Path, *, keep_snapshot: bool) -> DiskEntry | None:
        try:
            meta = json.loads((path / _META).read_text())
            if not (path / _ARTIFACT).is_dir() or path.name != _digest(meta["target_model"]):
                return None
            try:
                snapshot = (path / _SNAPSHOT).stat().st_size
            except FileNotFoundError:
                snapshot = 0
            if snapshot and not keep_snapshot:
                with contextlib.suppress(OSError):  # undeletable: it stays counted
                    (path / _SNAPSHOT).unlink()
                    snapshot = 0
            return DiskEntry(
                target_model=str(meta["target_model"]),
                root=self._models,
                size_bytes=int(meta["size_bytes"]) + snapshot,
                snapshot_bytes=snapshot,
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None

    # -- reading -------------------------------------------------------------------------------
    @property
    def used_bytes(self) -> int:
        with self._lock:
            return self._used + sum(self._reserved.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __contains__(self, target_model: object) -> bool:
        with self._lock:  # a use re-inserts its key: not atomic
            return target_model in self._entries

    def get(self, target_model: str) -> DiskEntry | None:
        """The entry for ``target_model``, marked as recently used."""
        with self._lock:
            entry = self._entries.get(target_model)
            if entry is not None:
                self._entries[target_model] = self._entries.pop(target_model)
            return entry

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._entries)

    # -- pins ----------------------------------------------------------------------------------
    def pin(self, target_model: str) -> DiskEntry | None:
        with self._lock:
            entry = self._entries.get(target_model)
            if entry is not None:
                entry.pins += 1
                self._entries[target_model] = self._entries.pop(target_model)
            return entry

    def unpin(self, target_model: str) -> None:
        with self._lock:
            entry = self._entries.get(target_model)
            if entry is not None and entry.pins > 0:
                entry.pins -= 1

    # -- writing -------------------------------------------------------------------------------
    def staging_dir(self) -> Path:
        """A fresh empty folder under ``tmp/`` for one download."""
        path = self._tmp / uuid.uuid4().hex
        (path / _ARTIFACT).mkdir(parents=True)
        return path

    def reserve(self, token: str, size_bytes: int) -> None:
        """Hold ``size_bytes`` for a download in progress, deleting unpinned entries if needed."""
        self._make_room(size_bytes, what=token, token=token)

    def release(self, token: str) -> None:
        """Drop a download's reservation (after commit or failure)."""
        with self._lock:
            self._reserved.pop(token, None)

    @property
    def pinned_bytes(self) -> int:
        """Bytes of entries pinned by models in use or loading."""
        with self._lock:
            return sum(e.size_bytes for e in self._entries.values() if e.pins > 0)

    def commit(self, target_model: str, staging: Path, *, etag: str | None) -> DiskEntry:
        """Publish a finished download as the entry of ``target_model``, pinned once.

        ``staging`` is a folder from :meth:`staging_dir` whose ``artifact/`` holds the files.
        The download's reservation (token ``target_model``) is replaced by the true size.
        """
        artifact_bytes = tree_size(staging / _ARTIFACT)
        meta = {"target_model": target_model, "etag": etag, "size_bytes": artifact_bytes}
        # The entry's size counts its metadata file too, so the folder itself stays in budget.
        size = artifact_bytes + len(json.dumps(meta)) + 32
        meta["size_bytes"] = size
        token = f"{target_model}\0commit"
        self.release(target_model)
        try:
            self._make_room(size, what=target_model, token=token)
        except DiskFullError:
            _remove_tree(staging)
            raise
        try:
            (staging / _META).write_text(json.dumps(meta))
            final = self._models / _digest(target_model)
            with self._lock:
                old = self._entries.pop(target_model, None)
                if old is not None:
                    self._used -= old.size_bytes
            if old is not None or final.exists():
                _remove_tree(_move_aside(final, self._tmp))
            os.replace(staging, final)
        except BaseException:
            self.release(token)
            raise
        entry = DiskEntry(target_model, self._models, size, pins=1)
        with self._lock:
            self._reserved.pop(token, None)
            self._entries[target_model] = entry
            self._used += size
        return entry

    def add_snapshot(self, entry: DiskEntry, data: Sequence[bytes]) -> bool:
        """Add the load snapshot ``data`` (its parts, in order) to ``entry`` if the budget has
        free room for it; True if added.

        The room is reserved before the file is written, so the folder never exceeds the budget
        even while it is. The snapshot is published (renamed into the entry) only if ``entry``
        is still the current entry of its model, so a snapshot never lands beside a newer
        artifact.
        """
        size = sum(len(part) for part in data)
        token = f"{entry.target_model}\0snapshot"
        with self._lock:
            free = self.budget_bytes - self._used - sum(self._reserved.values())
            if not (0 < size <= free and self._current(entry) and token not in self._reserved):
                return False
            self._reserved[token] = size
        staging = self._tmp / f"snapshot-{uuid.uuid4().hex}"
        try:
            with open(staging, "xb") as file:
                file.writelines(data)
            with self._lock:
                if not self._current(entry):
                    return False
                os.replace(staging, entry.snapshot_path)
                del self._reserved[token]
                entry.snapshot_bytes = size
                entry.size_bytes += size
                self._used += size
                return True
        finally:
            with self._lock:
                self._reserved.pop(token, None)
            with contextlib.suppress(FileNotFoundError):
                staging.unlink()

    def has_snapshot_room(self, entry: DiskEntry, size_bytes: int) -> bool:
        """Whether a snapshot of ``size_bytes`` would fit in ``entry`` now (free room, and the
        entry still current and without one)."""
        with self._lock:
            free = self.budget_bytes - self._used - sum(self._reserved.values())
            return size_bytes <= free and self._current(entry)

    def _current(self, entry: DiskEntry) -> bool:
        """Whether ``entry`` is still its model's entry and has no snapshot (lock held)."""
        return self._entries.get(entry.target_model) is entry and not entry.snapshot_bytes

    def drop_snapshot(self, entry: DiskEntry) -> None:
        """Delete the snapshot of ``entry`` (one that could not be read back) and its bytes."""
        with self._lock:
            size, entry.snapshot_bytes = entry.snapshot_bytes, 0
            entry.size_bytes -= size
            if self._entries.get(entry.target_model) is entry:
                self._used -= size
            with contextlib.suppress(OSError):  # gone already, or the folder is read-only
                entry.snapshot_path.unlink()

    def remove(self, target_model: str, *, force: bool = False) -> bool:
        """Delete the entry of ``target_model`` unless pinned (or ``force``); True if deleted."""
        with self._lock:
            entry = self._entries.get(target_model)
            if entry is None or (entry.pins > 0 and not force):
                return False
            del self._entries[target_model]
            self._used -= entry.size_bytes
        _remove_tree(_move_aside(entry.path, self._tmp))
        return True

    def _make_room(self, size_bytes: int, *, what: str, token: str) -> None:
        """Delete unpinned entries until ``size_bytes`` fit, then charge them to ``token``.

        Choosing the victims and charging the room happen under one lock, so two downloads
        can never both take the last free bytes.
        """
        if size_bytes > self.budget_bytes:
            raise DiskFullError(
                f"Artifact '{what}' needs {size_bytes} bytes but the disk cache budget is "
                f"{self.budget_bytes} bytes."
            )
        doomed: list[DiskEntry] = []
        error: DiskFullError | None = None
        with self._lock:
            need = self._used + sum(self._reserved.values()) + size_bytes - self.budget_bytes
            for entry in self._entries.values():
                if need <= 0:
                    break
                if entry.pins == 0:
                    need -= entry.size_bytes
                    doomed.append(entry)
            for entry in doomed:
                del self._entries[entry.target_model]
                self._used -= entry.size_bytes
            if need > 0:
                # The entries chosen so far stay deleted: they are unpinned and their room
                # helps the next attempt. Report what blocks this one.
                pinned = sum(e.size_bytes for e in self._entries.values() if e.pins > 0)
                error = DiskFullError(
                    f"Disk cache full: artifact '{what}' needs {size_bytes} bytes, "
                    f"{pinned} of {self.budget_bytes} bytes are held by models in use."
                )
            else:
                self._reserved[token] = self._reserved.get(token, 0) + size_bytes
        for entry in doomed:
            logger.info("disk cache evicting %s (%d bytes)", entry.target_model, entry.size_bytes)
            _remove_tree(_move_aside(entry.path, self._tmp))
            if self._on_evict is not None:
                self._on_evict(entry.target_model)
        if error is not None:
            raise error


def _move_aside(path: Path, tmp: Path) -> Path:
    """Rename ``path`` into ``tmp`` so the delete that follows can't leave a half entry."""
    aside = tmp / f"deleted-{uuid.uuid4().hex}"
    try:
        os.replace(path, aside)
    except FileNotFoundError:
        return aside
    return aside


def _remove_tree(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

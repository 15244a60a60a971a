"""The disk tier: a byte-budgeted folder of unpacked artifacts that survives restarts.

Layout under the cache folder::

    lock                           held (flock) by the one live server using the folder
    models/<digest>-<n>/meta.json  what the entry is: source, target model, version, manifest
    models/<digest>-<n>/artifact/  the unpacked artifact, handed to the handler
    models/<digest>-<n>/snapshot   the loaded model saved by its handler, if it has a faster
                                   form to read back (modelfleet.handlers.snapshot)
    tmp/<unique>/                  downloads in progress and entries being deleted

**Identity.** An entry's digest names the model source's identity (scheme, endpoint, bucket and
prefix, or the folder), the target model and the object's version (ETag and size), and each
publish gets a folder of its own (``<n>``): two servers with different sources never read each
other's entries, and a new version of an artifact is a new folder, so calls still running on the
old one finish on its files. Entries of another
source found at start are counted in the budget and deleted first, never served.

**One server per folder.** :meth:`DiskCache.start` takes an exclusive ``flock`` on ``lock`` for
the server's life (the kernel drops it when the process dies, even by SIGKILL); a second server
gets :class:`~modelfleet.errors.CacheInUseError` naming the folder and the other PID.

**Torn publishes.** A download is not fsynced (fsync of a 1 MB file and its folders took 5-12 ms
here, most of a 17 ms cold request). Instead ``meta.json`` records each file's size and CRC-32,
computed from the page cache at commit, and ``lock`` records whether the last server stopped
cleanly (it syncs the file system before saying so). After an unclean stop every entry is
suspect until :meth:`DiskCache.verify` has checked it against its manifest, at its first load:
a torn entry is deleted and downloaded again. Suspect entries' snapshots are deleted at start.

**Budget.** Writes follow diskcache's order: an entry is built under ``tmp/`` and published by
one rename; an evicted entry leaves the index first, is renamed back into ``tmp/`` and only then
deleted, its bytes counted until they are gone. Room is reserved before a byte is written and a
reservation grows only by taking room that exists (evicting unpinned entries): reserving either
holds the room or changes nothing. So the folder, temporary files, metadata and ``lock``
included, never holds more than the budget. Pinned entries (models loaded or loading) are never
deleted. A snapshot is added to an entry only where the budget has free room for it (it never
evicts), and goes with its entry.

The methods block (file I/O) and are thread-safe; the instance calls them from worker threads,
except :meth:`DiskCache.pin`, :meth:`DiskCache.unpin` and the reads, which do no file I/O (but
the one rename that moves a replaced version's folder aside at its last unpin).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelfleet.cache.lock import LOCK_BYTES as _LOCK_BYTES
from modelfleet.cache.lock import FolderLock
from modelfleet.errors import DiskFullError

try:  # ~4x zlib's speed where python-isal has a wheel (see cache/unpack.py)
    from isal.isal_zlib import crc32
except ImportError:  # pragma: no cover - platforms without isal
    from zlib import crc32

logger = logging.getLogger(__name__)

_META = "meta.json"
_ARTIFACT = "artifact"
_SNAPSHOT = "snapshot"
_CLEAN = "clean\n"
_META_SLACK = 32  # the entry's size counts its meta.json plus this
_CRC_CHUNK = 1 << 20
_DELETE_WAIT_S = 1.0
_MAX_ROOM_ROUNDS = 100  # rounds of evicting when other downloads keep taking the room


@dataclass(frozen=True, slots=True)
class Version:
    """An artifact's version in the model source: its ETag and size (None when unknown)."""

    etag: str | None
    size: int | None

    def matches(self, etag: str | None, size: int) -> bool:
        """Whether the source's ``etag`` and ``size`` are this version (an unknown ETag on
        either side compares the sizes only)."""
        if self.size is not None and self.size != size:
            return False
        return self.etag is None or etag is None or self.etag == etag


@dataclass(slots=True)
class DiskEntry:
    """One artifact on disk (about 150 bytes of index: the index may hold many)."""

    target_model: str
    root: Path  # the cache's ``models/`` folder, one object shared by every entry
    folder: str  # the entry's folder name under ``root``: ``<digest>-<n>``
    size_bytes: int  # everything in the folder, snapshot included
    pins: int = 0
    snapshot_bytes: int = 0
    retired: bool = False  # replaced by a newer version while pinned: deleted at the last unpin

    @property
    def artifact_bytes(self) -> int:
        """The entry's size without its snapshot (the artifact and its metadata)."""
        return self.size_bytes - self.snapshot_bytes

    @property
    def version(self) -> Version:
        """The source object's version when it was fetched (read from ``meta.json``, not kept
        in memory: only a load from disk needs it)."""
        try:
            meta = json.loads((self.path / _META).read_text())
        except (OSError, ValueError):
            return Version(None, None)
        etag, size = meta.get("etag"), meta.get("source_size")
        return Version(
            etag if isinstance(etag, str) else None, size if isinstance(size, int) else None
        )

    @property
    def etag(self) -> str | None:
        """The source object's ETag when it was fetched."""
        return self.version.etag

    @property
    def path(self) -> Path:
        """The entry's folder: ``models/<digest>-<n>``."""
        return self.root / self.folder

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
    return sum(file.stat(follow_symlinks=False).st_size for file in _files(path))


def _digest(source: str, target_model: str, version: Version) -> str:
    text = f"{source}\0{target_model}\0{version.etag or ''}\0{version.size}"
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _foreign_key(folder: str) -> str:
    """The index key of another source's entry: never a valid target model (it has a NUL)."""
    return "\0" + folder


class DiskCache:
    """Unpacked artifacts of one model source under a byte budget, least recently used
    unpinned ones deleted first.

    ``source`` is the model source's identity (:attr:`ModelSource.identity`); ``root`` may be
    shared with other sources' runs, one at a time.
    """

    def __init__(
        self,
        root: Path,
        budget_bytes: int,
        *,
        source: str = "",
        on_evict: Callable[[str], None] | None = None,
    ) -> None:
        self.root = root
        self.budget_bytes = budget_bytes
        self.source = source
        self._models = root / "models"
        self._tmp = root / "tmp"
        self._lock = threading.Lock()
        self._gone = threading.Condition(self._lock)  # notified when deleted bytes are gone
        # Least recently used first: a plain dict keeps insertion order, and a use re-inserts
        # the key at the end (about 50 bytes an entry less than an OrderedDict).
        self._entries: dict[str, DiskEntry] = {}
        self._reserved: dict[str, int] = {}
        self._used = _LOCK_BYTES
        self._deleting = 0  # bytes of entries left the index whose files are still there
        self._trash: list[tuple[Path, int]] = []  # retired entries' folders, moved aside
        self._suspect: set[str] = set()  # folders not verified since an unclean stop
        self._on_evict = on_evict
        self._folder_lock = FolderLock(root)
        self._started = False

    # -- start and stop ------------------------------------------------------------------------
    def start(self, *, keep_snapshots: bool = True) -> None:
        """Take the folder's lock, create the folders, sweep orphans, and re-index what a
        previous run left (deleting its load snapshots unless ``keep_snapshots``: an instance
        that does not use them does not keep them in its budget).

        Raises:
            CacheInUseError: another live server holds the folder.
        """
        previous = self._folder_lock.acquire()
        has_entries = self._models.is_dir() and any(self._models.iterdir())
        clean = previous == _CLEAN or (not previous and not has_entries)
        self._models.mkdir(exist_ok=True)
        self._tmp.mkdir(exist_ok=True)
        for orphan in self._tmp.iterdir():
            _remove_tree(orphan)
        found: dict[str, tuple[float, DiskEntry]] = {}
        foreign: list[tuple[float, DiskEntry]] = []
        for path in self._models.iterdir():
            read = self._read_entry(path, keep_snapshot=keep_snapshots and clean)
            if read is None:
                logger.warning("removing unreadable disk-cache entry %s", path)
                _remove_tree(path)
                continue
            entry, source, mtime = read
            if source != self.source:
                foreign.append((mtime, entry))
                continue
            older = found.get(entry.target_model)
            if older is not None:  # two versions of one model: a crash between publishes
                keep, drop = sorted((older, (mtime, entry)), key=lambda item: item[0])[::-1]
                _remove_tree(drop[1].path)
                found[entry.target_model] = keep
            else:
                found[entry.target_model] = (mtime, entry)
        with self._lock:
            # Other sources' entries first: they are the first to go when room is needed.
            for _, entry in sorted(foreign, key=lambda item: item[0]):
                self._entries[_foreign_key(entry.folder)] = entry
                self._used += entry.size_bytes
            for _, entry in sorted(found.values(), key=lambda item: item[0]):
                self._entries[entry.target_model] = entry
                self._used += entry.size_bytes
                if not clean:
                    self._suspect.add(entry.folder)
        # A lower budget than the last run's, or other sources' entries: back within it now.
        self._make_room(0, what="(start)", token="\0start")
        self.release("\0start")
        with self._lock:
            self._started = True
        if found or foreign:
            logger.info(
                "disk cache %s re-indexed %d artifacts (%d of other model sources), %d bytes%s",
                self.root,
                len(found) + len(foreign),
                len(foreign),
                self._used,
                ""
                if clean
                else "; the last server did not stop cleanly: each is verified "
                "against its manifest at its first load",
            )

    def close(self) -> None:
        """Release the folder's lock, marking it cleanly stopped (after syncing what this run
        wrote) if the start completed and every entry left from an unclean stop was verified;
        otherwise the next start verifies them again."""
        with self._lock:
            clean = self._started and not self._suspect
            self._started = False
        try:
            if clean:
                os.sync()  # "clean" must not reach the disk before the artifacts do
        finally:
            self._folder_lock.release(_CLEAN if clean else None)

    def _read_entry(
        self, path: Path, *, keep_snapshot: bool
    ) -> tuple[DiskEntry, str, float] | None:
        """The entry in ``path``, its source and the time it was published; None if it is
        not a whole entry of any source (or was written by a modelfleet without sources)."""
        try:
            meta_path = path / _META
            meta = json.loads(meta_path.read_text())
            source, target = meta["source"], meta["target_model"]
            version = Version(meta["etag"], meta["source_size"])
            digest = path.name.partition("-")[0]
            if not (path / _ARTIFACT).is_dir() or digest != _digest(source, target, version):
                return None
            try:
                snapshot = (path / _SNAPSHOT).stat().st_size
            except FileNotFoundError:
                snapshot = 0
            if snapshot and not keep_snapshot:
                with contextlib.suppress(OSError):  # undeletable: it stays counted
                    (path / _SNAPSHOT).unlink()
                    snapshot = 0
            entry = DiskEntry(
                target_model=str(target),
                root=self._models,
                folder=path.name,
                size_bytes=int(meta["size_bytes"]) + snapshot,
                snapshot_bytes=snapshot,
            )
            return entry, str(source), meta_path.stat().st_mtime
        except (OSError, ValueError, KeyError, TypeError):
            return None

    # -- reading -------------------------------------------------------------------------------
    @property
    def used_bytes(self) -> int:
        """Bytes the folder holds or may hold now: entries, reservations, files being
        deleted, and the lock file."""
        with self._lock:
            return self._total()

    def _total(self) -> int:
        return self._used + self._deleting + sum(self._reserved.values())

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

    def recent(self, limit: int) -> list[tuple[str, int]]:
        """Up to ``limit`` of this source's entries, most recently used first: (target model,
        bytes)."""
        with self._lock:
            found: list[tuple[str, int]] = []
            for key in reversed(self._entries):
                if not key.startswith("\0"):
                    found.append((key, self._entries[key].size_bytes))
                    if len(found) == limit:
                        break
            return found

    def keys(self) -> list[str]:
        """This source's target models on disk (other sources' entries are not listed)."""
        with self._lock:
            return [key for key in self._entries if not key.startswith("\0")]

    # -- pins ----------------------------------------------------------------------------------
    def pin(self, target_model: str) -> DiskEntry | None:
        """The current entry of ``target_model``, pinned once (never deleted while pinned)."""
        with self._lock:
            entry = self._entries.get(target_model)
            if entry is not None:
                entry.pins += 1
                self._entries[target_model] = self._entries.pop(target_model)
            return entry

    def unpin(self, entry: DiskEntry) -> None:
        """Drop one pin of ``entry``. A retired entry (a newer version replaced it) goes to the
        trash at its last unpin: call :meth:`empty_trash` off the event loop."""
        with self._lock:
            if entry.pins <= 0:
                raise RuntimeError(f"disk entry of {entry.target_model!r} unpinned too often")
            entry.pins -= 1
            if not (entry.retired and entry.pins == 0):
                return
            self._used -= entry.size_bytes
            self._deleting += entry.size_bytes
            aside = _move_aside(entry.path, self._tmp)
            self._trash.append((aside, entry.size_bytes))

    def empty_trash(self) -> None:
        """Delete the folders of retired entries that lost their last pin (blocking)."""
        while True:
            with self._lock:
                if not self._trash:
                    return
                path, size = self._trash.pop()
            _remove_tree(path)
            self._forget_deleted(size)

    # -- verification after an unclean stop ------------------------------------------------------
    def verify(self, entry: DiskEntry) -> bool:
        """Whether ``entry``'s files match its manifest (always True unless the last server
        stopped uncleanly and ``entry`` was not checked since). Blocking: reads the files."""
        with self._lock:
            if entry.folder not in self._suspect:
                return True
        try:
            meta = json.loads((entry.path / _META).read_text())
            whole = _manifest(entry.model_dir) == [list(item) for item in meta["files"]]
        except (OSError, ValueError, KeyError, TypeError):
            whole = False
        with self._lock:
            self._suspect.discard(entry.folder)
            if not whole and self._entries.get(entry.target_model) is entry:
                # Out of the index now, so a failed download cannot leave it to be trusted
                # later; its files go to the trash at its last unpin.
                del self._entries[entry.target_model]
                entry.retired = True
        if not whole:
            logger.warning(
                "disk-cache entry of %s does not match its manifest (torn by a crash): "
                "downloading it again",
                entry.target_model,
            )
        return whole

    # -- writing -------------------------------------------------------------------------------
    def staging_dir(self) -> Path:
        """A fresh empty folder under ``tmp/`` for one download."""
        path = self._tmp / uuid.uuid4().hex
        (path / _ARTIFACT).mkdir(parents=True)
        return path

    def reserve(self, token: str, size_bytes: int) -> None:
        """Hold ``size_bytes`` in all for ``token`` (a download in progress): grow its
        reservation to that size, deleting unpinned entries if needed.

        Either the room is held or nothing changed (no entry deleted): raises DiskFullError.
        """
        self._make_room(size_bytes, what=token, token=token)

    def release(self, token: str) -> None:
        """Drop a download's reservation (after commit or failure)."""
        with self._lock:
            self._reserved.pop(token, None)

    @property
    def capacity_bytes(self) -> int:
        """The most one entry or download can ever hold: the budget less the lock file."""
        return self.budget_bytes - _LOCK_BYTES

    def reserved(self, token: str) -> int:
        """Bytes held now for ``token``."""
        with self._lock:
            return self._reserved.get(token, 0)

    @property
    def pinned_bytes(self) -> int:
        """Bytes of entries pinned by models in use or loading."""
        with self._lock:
            return sum(e.size_bytes for e in self._entries.values() if e.pins > 0)

    def free_unpinned(self, needed_bytes: int) -> int:
        """Delete unpinned entries, least recently used first (other sources' first of all),
        until ``needed_bytes`` are freed or none is left (the device is full); the bytes
        freed."""
        doomed: list[DiskEntry] = []
        freed = 0
        with self._lock:
            for entry in self._entries.values():
                if freed >= needed_bytes:
                    break
                if entry.pins == 0:
                    doomed.append(entry)
                    freed += entry.size_bytes
            self._doom(doomed)
        self._delete(doomed)
        return freed

    def commit(
        self,
        target_model: str,
        staging: Path,
        *,
        etag: str | None,
        source_size: int | None = None,
        token: str | None = None,
    ) -> DiskEntry:
        """Publish a finished download as the entry of ``target_model``, pinned once.

        ``staging`` is a folder from :meth:`staging_dir` whose ``artifact/`` holds the files;
        ``etag`` and ``source_size`` are the object's version in the source. The reservation
        ``token`` (default ``target_model``) becomes the entry's true size in one step: if the
        files and metadata outgrow it, the difference is reserved first (DiskFullError if it
        cannot be: nothing changed, and the caller may make room and commit again). On any
        failure ``staging`` is left for the caller to delete.
        """
        token = target_model if token is None else token
        files = _manifest(staging / _ARTIFACT)
        version = Version(etag, source_size)
        meta: dict[str, Any] = {
            "source": self.source,
            "target_model": target_model,
            "etag": etag,
            "source_size": source_size,
            "size_bytes": 0,
            "files": files,
        }
        artifact_bytes = sum(size for _, size, _ in files)
        # The entry's size counts its metadata file too, so the folder stays in budget
        # (twice: the size's own digits are part of the file).
        size = 0
        for _ in range(2):
            size = meta["size_bytes"] = artifact_bytes + len(json.dumps(meta)) + _META_SLACK
        self._make_room(size, what=target_model, token=token)
        (staging / _META).write_text(json.dumps(meta))
        # A new folder for every publish: a download of the version already on disk (one
        # that failed verification) never lands on the files of the entry it replaces.
        folder = f"{_digest(self.source, target_model, version)}-{uuid.uuid4().hex[:8]}"
        entry = DiskEntry(target_model, self._models, folder, size, pins=1)
        with self._lock:
            if not self._started:  # a download that outlived close(): it must not land now
                raise RuntimeError(f"the disk cache {self.root} is closed")
            os.replace(staging, self._models / folder)
            self._reserved.pop(token, None)
            old = self._entries.pop(target_model, None)
            self._entries[target_model] = entry
            self._used += size
            if old is not None:
                if old.pins > 0:
                    old.retired = True  # its calls finish on its files; gone at its last unpin
                    old = None
                else:
                    self._doom([old])
        if old is not None:
            self._delete([old])
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
            free = self.budget_bytes - self._total()
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
            free = self.budget_bytes - self._total()
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
            self._doom([entry])
        self._delete([entry])
        return True

    # -- room ----------------------------------------------------------------------------------
    def _make_room(self, size_bytes: int, *, what: str, token: str) -> None:
        """Grow ``token``'s reservation to ``size_bytes``, deleting unpinned entries if needed.

        Victims are chosen and taken out of the index under one lock, and only if together
        they make the room: otherwise nothing is deleted and DiskFullError says what holds the
        budget. Their bytes stay counted until their files are gone; then the room is charged
        (again under the lock, so two downloads can never both take the last free bytes); if
        other downloads took the room meanwhile, it tries again, and may then fail with the
        first round's victims deleted (they were unpinned and least recently used). The
        count of the folder, and so the folder, never exceeds the budget.
        """
        if size_bytes > self.budget_bytes - _LOCK_BYTES:
            raise DiskFullError(
                f"Artifact '{what}' needs {size_bytes} bytes but the disk cache budget is "
                f"{self.budget_bytes} bytes."
            )
        for _ in range(_MAX_ROOM_ROUNDS):
            with self._lock:
                held = self._reserved.get(token, 0)
                need = self._total() - held + size_bytes - self.budget_bytes
                if need <= 0:
                    self._reserved[token] = max(held, size_bytes)
                    return
                doomed: list[DiskEntry] = []
                for entry in self._entries.values():
                    if need <= 0:
                        break
                    if entry.pins == 0:
                        need -= entry.size_bytes
                        doomed.append(entry)
                if need > 0:
                    if self._deleting == 0:
                        pinned = sum(e.size_bytes for e in self._entries.values() if e.pins > 0)
                        raise DiskFullError(
                            f"Disk cache full: artifact '{what}' needs {size_bytes} bytes, "
                            f"{pinned} of {self.budget_bytes} bytes are held by models in use."
                        )
                    self._gone.wait(_DELETE_WAIT_S)  # other deletions will free room
                    continue
                self._doom(doomed)
            self._delete(doomed)
        raise DiskFullError(
            f"Disk cache busy: artifact '{what}' could not get {size_bytes} bytes while other "
            "downloads took the room; retry."
        )

    def _doom(self, doomed: list[DiskEntry]) -> None:
        """Take ``doomed`` out of the index; their bytes stay counted until deleted (lock held)."""
        for entry in doomed:
            key = entry.target_model
            if self._entries.get(key) is not entry:
                key = _foreign_key(entry.folder)
            if self._entries.get(key) is entry:  # a replaced version has left it already
                del self._entries[key]
            self._used -= entry.size_bytes
            self._deleting += entry.size_bytes

    def _delete(self, doomed: list[DiskEntry]) -> None:
        """Delete the files of entries :meth:`_doom` took out of the index."""
        for entry in doomed:
            logger.info("disk cache evicting %s (%d bytes)", entry.target_model, entry.size_bytes)
            try:
                _remove_tree(_move_aside(entry.path, self._tmp))
            except OSError:  # left for the sweep at the next start; its room is given back
                logger.warning("could not delete %s", entry.path, exc_info=True)
            finally:
                self._forget_deleted(entry.size_bytes)
            if self._on_evict is not None and self._entries.get(entry.target_model) is None:
                self._on_evict(entry.target_model)

    def _forget_deleted(self, size: int) -> None:
        with self._lock:
            self._deleting -= size
            self._gone.notify_all()


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is the device running out of space or quota."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        current = current.__cause__ or current.__context__
    return False


def _manifest(folder: Path) -> list[list[Any]]:
    """``[relative path, size, CRC-32]`` of every regular file under ``folder``, sorted."""
    files: list[list[Any]] = []
    for path in sorted(_files(folder)):
        crc = 0
        size = 0
        with open(path, "rb") as file:
            while chunk := file.read(_CRC_CHUNK):
                crc = crc32(chunk, crc)
                size += len(chunk)
        files.append([path.relative_to(folder).as_posix(), size, crc])
    return files


def _files(folder: Path) -> Iterator[Path]:
    stack = [folder]
    while stack:
        with os.scandir(stack.pop()) as it:
            for item in it:
                if item.is_dir(follow_symlinks=False):
                    stack.append(Path(item.path))
                elif item.is_file(follow_symlinks=False):
                    yield Path(item.path)


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

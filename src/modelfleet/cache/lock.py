"""One live process per folder: an exclusive ``flock`` on ``<folder>/lock``.

The disk cache holds its folder with it for the server's life, and the ``local`` backend holds
the folder of its instances' folders. The kernel drops the lock when the process dies, even by
SIGKILL, so a crash never leaves a stale lock; the file holds the owner's PID while it runs, and
what the owner left at release (the disk cache writes ``clean`` after a clean stop).
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path

from modelfleet.errors import CacheInUseError

logger = logging.getLogger(__name__)

LOCK_FILE = "lock"
LOCK_BYTES = 32
"""What the lock file may hold (a PID and a newline, or a mark such as ``clean``): the disk
cache counts this much of its budget for it."""


class FolderLock:
    """An exclusive ``flock`` on ``<folder>/lock`` for one live process (a server's disk cache,
    or the root of a fleet's instance folders). The kernel drops it when the process dies,
    even by SIGKILL, so a crash never leaves a stale lock. The file holds the owner's PID, and
    what :meth:`release` was given when the last owner stopped."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._fd: int | None = None

    def acquire(self) -> str:
        """Take the lock (creating the folder); return what the previous owner left in it.

        Raises:
            CacheInUseError: another live process holds it.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, LOCK_BYTES, 0).decode(errors="replace").strip()
            os.close(fd)
            raise CacheInUseError(
                f"The disk cache folder {self.folder} is in use by another modelfleet server "
                f"(PID {holder or 'unknown'}); give each server its own --cache-dir."
            ) from None
        previous = os.pread(fd, LOCK_BYTES, 0).decode(errors="replace")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return previous

    def release(self, mark: str | None = None) -> None:
        """Release the lock, leaving ``mark`` in the file if given (synced before release)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if mark is not None:
                os.ftruncate(fd, 0)
                os.pwrite(fd, mark.encode(), 0)
                os.fsync(fd)
        except OSError:
            logger.warning("could not write to the lock of %s", self.folder, exc_info=True)
        finally:
            os.close(fd)  # releases the flock

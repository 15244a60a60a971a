"""Safe, streaming extraction of tar archives (SageMaker's ``model.tar.gz``).

Archives come from the model source; modelfleet trusts the source's *models* enough to load them,
but never trusts an archive's *layout*. :func:`safe_extract` reads the archive once, front to
back, from any readable byte stream (a file, or an object-store download that is never written
to disk as an archive), and writes each member itself; it never calls ``TarFile.extract``.

Rules, each enforced before the member touches the disk:

- Member paths are relative and stay inside ``dest``: no leading ``/``, no drive letter, no
  ``..`` segment, no backslash, NUL or control character, at most 4096 characters and 255 bytes
  per segment. ``./`` prefixes and repeated ``/`` are normalized away.
- Nothing is written through a symbolic link: a member whose parent is a link is refused.
- Symbolic links must be relative, may only climb with leading ``..`` segments and no higher
  than their own folder's depth, and may not use ``..`` after a folder name (so a link cannot
  escape by climbing out of another link). Together with the previous rule, every link resolves
  inside ``dest``.
- Hard links may only point at a regular file extracted earlier from the same archive; they are
  created as hard links to that file (so they cost no bytes).
- Devices, FIFOs, sparse files and unknown member types are refused; two members with one path
  are refused (repeated folders are fine).
- Files get mode 0o755 when the archive marks them executable and 0o644 otherwise, folders 0o755:
  no setuid, setgid, sticky or world-writable bits. Owners and times are not restored.
- Limits, checked while streaming: at most ``max_files`` created files, folders and links, at
  most ``max_bytes`` of file data; extended (pax) and long-name headers are capped at 1 MiB.
- gzip is decompressed here in bounded steps (a small archive cannot expand in memory), its
  checksum is verified, and a stream that ends early (no end-of-archive marker, a cut gzip
  member) is an error rather than a silently shorter model. Inflating uses python-isal (Intel's
  ISA-L) where it is installed (a dependency on x86-64 and ARM64): 4.4 ms instead of 6.7 ms
  for a 1 MB forest archive, 30 instead of 47 ms at 10 MB; elsewhere the standard ``zlib``.

Every refusal raises :class:`~modelfleet.errors.ArtifactError` naming the member; the caller
removes ``dest``. Errors of the byte stream itself (for example a source failing mid-download)
propagate unchanged, and so do local disk errors (``OSError``).
"""

from __future__ import annotations

import io
import logging
import os
import tarfile
import zlib
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, BinaryIO, Self

from modelfleet.errors import ArtifactError

_inflate: ModuleType
try:  # the same API as zlib's decompressobj, about 1.5x as fast
    from isal import isal_zlib as _inflate
except ImportError:  # pragma: no cover - platforms without python-isal wheels
    _inflate = zlib
#: what a corrupt archive raises (the two inflate libraries have their own error classes)
_ARCHIVE_ERRORS: tuple[type[Exception], ...] = (
    tarfile.TarError,
    EOFError,
    *{zlib.error, _inflate.error},
)

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = ["CHUNK_BYTES", "safe_extract"]

logger = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 18
"""Read and write size while unpacking."""

MAX_HEADER_BYTES = 1 << 20
"""Largest pax or GNU long-name header accepted (real ones are a few hundred bytes)."""

MAX_NAME_LENGTH = 4096
MAX_SEGMENT_BYTES = 255
MAX_TRAILING_BYTES = 16 << 20
"""Decompressed bytes tolerated after the end-of-archive marker (tar's record padding)."""

_MODES = ("r|gz", "r|")
_LONG_HEADER_TYPES = frozenset(
    {
        tarfile.XHDTYPE,
        tarfile.XGLTYPE,
        tarfile.SOLARIS_XHDTYPE,
        tarfile.GNUTYPE_LONGNAME,
        tarfile.GNUTYPE_LONGLINK,
    }
)
_GZIP_WBITS = 16 + zlib.MAX_WBITS
_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def safe_extract(
    fileobj: BinaryIO,
    dest: Path,
    *,
    max_bytes: int,
    max_files: int,
    mode: str = "r|gz",
    reserve: Callable[[int], None] | None = None,
) -> int:
    """Unpack the tar stream ``fileobj`` into the empty folder ``dest``; return bytes written.

    ``mode`` is ``"r|gz"`` (gzip-compressed, the default) or ``"r|"`` (plain tar). The stream is
    read sequentially and never seeked, so it may be a network download.

    ``reserve`` is called before each file (or hard link) is created with the bytes the
    folder's files will then count in all (a hard link counts its target's size again, as a
    folder walk does): the disk cache grows its reservation there, and whatever it raises
    stops the extraction before the file is written.

    Raises:
        ArtifactError: the archive is corrupt, truncated, unsafe, or over a limit.
        ValueError: bad arguments (unknown mode, negative limit, ``dest`` not an empty folder).
    """
    if mode not in _MODES:
        raise ValueError(f"unsupported archive mode {mode!r}: use one of {', '.join(_MODES)}")
    if max_bytes < 0 or max_files < 0:
        raise ValueError("max_bytes and max_files cannot be negative")
    root = Path(dest)
    if not root.is_dir() or root.is_symlink():
        raise ValueError(f"extraction folder {root} must be an existing folder")
    with os.scandir(root) as entries:
        if next(entries, None) is not None:
            raise ValueError(f"extraction folder {root} must be empty")

    gunzip = _GzipReader(fileobj) if mode == "r|gz" else None
    extractor = _Extractor(root, max_bytes=max_bytes, max_files=max_files, reserve=reserve)
    try:
        with tarfile.open(
            fileobj=gunzip if gunzip is not None else fileobj,
            mode="r|",
            bufsize=CHUNK_BYTES,
            tarinfo=_CheckedTarInfo,
        ) as archive:
            for member in archive:
                extractor.add(member, archive)
        if gunzip is not None:
            gunzip.drain(MAX_TRAILING_BYTES)
    except _ARCHIVE_ERRORS as exc:
        raise ArtifactError(f"Corrupt or truncated archive: {exc}") from exc
    logger.debug(
        "unpacked %d entries, %d bytes into %s",
        extractor.entries,
        extractor.bytes_written,
        root,
    )
    return extractor.bytes_written


class _CheckedTarInfo(tarfile.TarInfo):
    """Header parsing that refuses truncated, corrupt or oversized headers.

    Plain ``tarfile`` treats a truncated or corrupt header after the first one as the end of the
    archive, and reads a pax or long-name header of any declared size into memory.
    """

    @classmethod
    def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> Self:
        if len(buf) == 0:
            raise ArtifactError(
                "Corrupt or truncated archive: it ends without an end-of-archive marker."
            )
        if len(buf) != tarfile.BLOCKSIZE:
            raise ArtifactError("Corrupt or truncated archive: it ends inside a member header.")
        if buf.count(0) == tarfile.BLOCKSIZE:
            return super().frombuf(buf, encoding, errors)  # raises: the normal end of archive
        try:
            info = super().frombuf(buf, encoding, errors)
        except tarfile.HeaderError as exc:
            raise ArtifactError(f"Corrupt archive: invalid member header ({exc}).") from exc
        if info.type in _LONG_HEADER_TYPES and info.size > MAX_HEADER_BYTES:
            raise ArtifactError(
                f"Unsafe archive: an extended header of {info.size} bytes exceeds the "
                f"{MAX_HEADER_BYTES}-byte limit."
            )
        return info


class _GzipReader(io.RawIOBase):
    """Decompress a gzip stream in bounded steps, checking every member's CRC and length."""

    def __init__(self, raw: BinaryIO) -> None:
        super().__init__()
        self._raw = raw
        self._inflater = _inflate.decompressobj(_GZIP_WBITS)
        self._pending = b""
        self._in_member = False
        self._raw_done = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        with memoryview(buffer) as view, view.cast("B") as out:
            if len(out) == 0:
                return 0
            while True:
                if self._pending and self._inflater.eof:
                    # Another gzip member follows (concatenated members form one stream); zero
                    # padding between or after members is skipped, as gzip(1) does.
                    self._pending = self._pending.lstrip(b"\0")
                    if self._pending:
                        self._inflater = _inflate.decompressobj(_GZIP_WBITS)
                if self._pending:
                    data = self._inflater.decompress(self._pending, len(out))
                    self._in_member = not self._inflater.eof
                    self._pending = (
                        self._inflater.unused_data
                        if self._inflater.eof
                        else self._inflater.unconsumed_tail
                    )
                    if data:
                        out[: len(data)] = data
                        return len(data)
                    continue
                if self._raw_done:
                    return 0
                chunk = self._raw.read(CHUNK_BYTES)
                if not chunk:
                    self._raw_done = True
                    if self._in_member:
                        raise ArtifactError("Corrupt or truncated archive: the gzip data is cut.")
                    return 0
                self._pending = chunk

    def drain(self, limit: int) -> None:
        """Read to the end (verifying the gzip trailer); refuse more than ``limit`` bytes."""
        seen = 0
        while chunk := self.read(CHUNK_BYTES):
            seen += len(chunk)
            if seen > limit:
                raise ArtifactError(
                    f"Unsafe archive: more than {limit} bytes follow the end-of-archive marker."
                )


class _Extractor:
    """Creates one archive member at a time under ``root``, enforcing the module's rules."""

    def __init__(
        self,
        root: Path,
        *,
        max_bytes: int,
        max_files: int,
        reserve: Callable[[int], None] | None = None,
    ) -> None:
        self._root = root
        self._max_bytes = max_bytes
        self._max_files = max_files
        self._reserve = reserve
        self._accounted = 0  # bytes announced to ``reserve`` so far
        self._kinds: dict[str, str] = {}  # relative path -> "folder" | "file" | "symbolic link"
        self.entries = 0
        self.bytes_written = 0

    def add(self, member: tarfile.TarInfo, archive: tarfile.TarFile) -> None:
        parts = _member_parts(member.name, member.name, "path")
        _check_type(member)
        if not parts:
            if member.isdir():
                return  # "." or "./": the destination folder itself
            raise _unsafe(member.name, "its path is the destination folder itself")
        key = "/".join(parts)
        self._make_parents(member.name, parts)
        existing = self._kinds.get(key)
        if existing is not None:
            if existing == "folder" and member.isdir():
                return
            raise _unsafe(member.name, "another member already has this path")
        path = self._root.joinpath(*parts)
        if member.isdir():
            self._count(member.name)
            os.mkdir(path, 0o755)
            self._kinds[key] = "folder"
        elif member.issym():
            problem = _symlink_problem(parts, member.linkname)
            if problem is not None:
                raise _unsafe(member.name, problem)
            self._count(member.name)
            os.symlink(member.linkname, path)
            self._kinds[key] = "symbolic link"
        elif member.islnk():
            self._link(member, path)
            self._kinds[key] = "file"
        else:
            self._write_file(member, archive, path)
            self._kinds[key] = "file"

    def _count(self, name: str) -> None:
        self.entries += 1
        if self.entries > self._max_files:
            raise ArtifactError(
                f"Archive has more than {self._max_files} files and folders (the limit); "
                f"stopped at member {name!r}."
            )

    def _make_parents(self, name: str, parts: tuple[str, ...]) -> None:
        for depth in range(1, len(parts)):
            prefix = "/".join(parts[:depth])
            kind = self._kinds.get(prefix)
            if kind is None:
                self._count(name)
                os.mkdir(self._root.joinpath(*parts[:depth]), 0o755)
                self._kinds[prefix] = "folder"
            elif kind != "folder":
                raise _unsafe(name, f"its parent {prefix!r} is a {kind}, not a folder")

    def _write_file(self, member: tarfile.TarInfo, archive: tarfile.TarFile, path: Path) -> None:
        if self.bytes_written + member.size > self._max_bytes:
            raise ArtifactError(
                f"Archive unpacks to more than {self._max_bytes} bytes (the limit); stopped at "
                f"member {member.name!r} of {member.size} bytes."
            )
        self._count(member.name)
        self._announce(member.size)
        source = archive.extractfile(member)
        if source is None:  # pragma: no cover - extractfile returns a reader for regular files
            raise _unsafe(member.name, "its data cannot be read")
        perm = 0o755 if member.mode & 0o111 else 0o644
        fd = os.open(path, _OPEN_FLAGS, perm)
        with source, open(fd, "wb", buffering=0, closefd=True) as out:
            os.fchmod(out.fileno(), perm)
            while chunk := source.read(CHUNK_BYTES):
                view = memoryview(chunk)
                while view:
                    view = view[out.write(view) or 0 :]
                self.bytes_written += len(chunk)

    def _link(self, member: tarfile.TarInfo, path: Path) -> None:
        target = _member_parts(member.name, member.linkname, "hard link target")
        target_key = "/".join(target)
        if self._kinds.get(target_key) != "file":
            raise _unsafe(
                member.name,
                f"hard link target {member.linkname!r} is not a regular file extracted "
                "earlier from this archive",
            )
        self._count(member.name)
        self._announce(os.stat(self._root.joinpath(*target), follow_symlinks=False).st_size)
        os.link(self._root.joinpath(*target), path, follow_symlinks=False)

    def _announce(self, size: int) -> None:
        """Tell ``reserve`` that ``size`` more bytes are about to be counted on disk (hard links
        count again, so they are held to ``max_bytes`` here too)."""
        self._accounted += size
        if self._accounted > self._max_bytes:
            raise ArtifactError(
                f"Archive unpacks to more than {self._max_bytes} bytes (the limit), counting "
                "each hard link as a copy of its file."
            )
        if self._reserve is not None:
            self._reserve(self._accounted)


def _check_type(member: tarfile.TarInfo) -> None:
    """Refuse member types that are never extracted."""
    if member.issparse():
        raise _unsafe(member.name, "sparse files are not supported")
    if member.ischr() or member.isblk():
        raise _unsafe(member.name, "device files are not allowed")
    if member.isfifo():
        raise _unsafe(member.name, "FIFOs are not allowed")
    if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
        raise _unsafe(member.name, f"member type {member.type!r} is not supported")


def _unsafe(name: str, reason: str) -> ArtifactError:
    return ArtifactError(f"Unsafe archive member {name!r}: {reason}.")


def _is_drive(text: str) -> bool:
    return len(text) >= 2 and text[1] == ":" and text[0].isascii() and text[0].isalpha()


def _bad_characters(text: str) -> str | None:
    if "\\" in text:
        return "a backslash"
    if any(ord(char) < 32 or ord(char) == 127 for char in text):
        return "a NUL or control character"
    return None


def _member_parts(name: str, text: str, what: str) -> tuple[str, ...]:
    """Split an archive path into safe segments, dropping ``.`` and empty ones."""
    if len(text) > MAX_NAME_LENGTH:
        raise _unsafe(name, f"its {what} is longer than {MAX_NAME_LENGTH} characters")
    bad = _bad_characters(text)
    if bad is not None:
        raise _unsafe(name, f"its {what} contains {bad}")
    if text.startswith("/") or _is_drive(text):
        raise _unsafe(name, f"its {what} is absolute")
    parts = tuple(part for part in text.split("/") if part not in ("", "."))
    for part in parts:
        if part == "..":
            raise _unsafe(name, f"its {what} contains '..'")
        if len(part.encode("utf-8", "surrogateescape")) > MAX_SEGMENT_BYTES:
            raise _unsafe(name, f"its {what} has a segment longer than {MAX_SEGMENT_BYTES} bytes")
    return parts


def _symlink_problem(parts: tuple[str, ...], target: str) -> str | None:
    """Why a symbolic link at ``parts`` pointing at ``target`` is unsafe, or None if it is safe."""
    if not target:
        return "its link target is empty"
    bad = _bad_characters(target)
    if bad is not None:
        return f"its link target contains {bad}"
    if target.startswith("/") or _is_drive(target):
        return f"its link target {target!r} is absolute"
    segments = [segment for segment in target.split("/") if segment not in ("", ".")]
    climbs = 0
    while climbs < len(segments) and segments[climbs] == "..":
        climbs += 1
    if ".." in segments[climbs:]:
        return f"its link target {target!r} uses '..' after a folder name"
    if climbs > len(parts) - 1:
        return f"its link target {target!r} points outside the destination"
    return None

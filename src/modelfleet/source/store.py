"""ModelSource: the model source seen through obstore (stat, list, fetch).

A thin, blocking adapter: the instance's manager calls it from worker threads. Target models are
validated before any I/O (:func:`~modelfleet.source.target.validate_target_model`), and obstore's
errors are translated here, at the boundary, with ``raise ... from exc``:

- not found -> :class:`~modelfleet.errors.ModelNotFoundError`;
- permission denied or unauthenticated (also a 401/403 on a listing) -> ``SourceError("Access
  denied ...")``;
- an object that changed while a folder was downloading -> ``SourceError`` (retry);
- anything else (timeouts, connection errors, 5xx after obstore's bounded retries) ->
  :class:`~modelfleet.errors.SourceError` naming the source, the model and obstore's reason.

What a target model is: an object (``kind="file"``); otherwise, if objects exist under
``<target model>/``, a folder (``kind="folder"``, size = sum of its objects, etag = a digest of
their paths, etags and sizes, so it changes when any member changes). Fetching streams the bytes
in 1 MiB chunks: a ``.tar.gz``/``.tgz``/``.tar`` object is unpacked on the fly by
:func:`~modelfleet.cache.unpack.safe_extract` (no archive is written to disk), any other object is
written as ``dest/<basename>``, a folder's objects keep their relative paths.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import obstore
from obstore.exceptions import (
    BaseError as ObstoreBaseError,
)
from obstore.exceptions import (
    NotFoundError,
    PermissionDeniedError,
    PreconditionError,
    UnauthenticatedError,
)

from modelfleet.cache.unpack import CHUNK_BYTES, safe_extract
from modelfleet.errors import ArtifactError, ModelfleetError, ModelNotFoundError, SourceError
from modelfleet.source.target import archive_mode, validate_target_model
from modelfleet.source.uri import SourceStores, error_detail, open_stores

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer
    from obstore import GetOptions, GetResult, ObjectMeta

__all__ = ["ArtifactInfo", "ModelSource"]

logger = logging.getLogger(__name__)

_LIST_PAGE = 1000
_PUT_CHUNK_BYTES = 8 * 1024 * 1024
PROBE_TIMEOUT_S = 5.0
"""Bound of :meth:`ModelSource.stat` with ``probe=True`` (one try, no retries)."""
_NOT_FOUND = (NotFoundError, FileNotFoundError)
_DENIED = (PermissionDeniedError, UnauthenticatedError, PermissionError)
_DENIED_STATUS = re.compile(r"\b(401 Unauthorized|403 Forbidden)\b")
# A folder store asked for "file.bin/x" fails with ENOTDIR: nothing of that name exists.
_NOT_A_DIRECTORY = re.compile(r"\(os error 20\)")


@dataclass(frozen=True, slots=True)
class ArtifactInfo:
    """One artifact in the model source."""

    target_model: str
    """The key relative to the source (for :meth:`ModelSource.list`, each object's key)."""
    size: int
    """Bytes in the source: the object's size, or the sum over a folder's objects."""
    etag: str | None
    """The object's ETag, or a digest over a folder's members; None if the store has none."""
    kind: Literal["file", "folder"]


class ModelSource:
    """Read models from a folder, ``file://`` URI or ``s3://bucket/prefix/``.

    Construction parses the URI and reads the environment once; it sends no request.
    ``timeout_s`` bounds each metadata request, and connecting and each read of a download;
    failed requests are retried up to ``retries`` times with exponential backoff.
    """

    def __init__(
        self,
        uri: str,
        *,
        timeout_s: float = 30.0,
        retries: int = 3,
        allow_http: bool = False,
    ) -> None:
        self._uri = uri
        self._timeout_s = timeout_s
        self._retries = retries
        self._stores = open_stores(uri, timeout_s=timeout_s, retries=retries, allow_http=allow_http)
        # For checks that have a fallback (a cached copy): a short timeout and no retries.
        probe_s = min(timeout_s, PROBE_TIMEOUT_S)
        self._probe = open_stores(uri, timeout_s=probe_s, retries=0, allow_http=allow_http)

    @property
    def uri(self) -> str:
        """The source URI as given."""
        return self._uri

    @property
    def identity(self) -> str:
        """What names this source's objects (scheme, endpoint, bucket and prefix, or the
        resolved folder): two sources with the same identity hold the same objects."""
        return self._stores.identity

    def __repr__(self) -> str:
        return f"ModelSource({self._uri!r}, timeout_s={self._timeout_s}, retries={self._retries})"

    @staticmethod
    def is_archive(target_model: str) -> bool:
        """Whether :meth:`fetch` unpacks ``target_model`` (``.tar.gz``, ``.tgz``, ``.tar``)."""
        return archive_mode(target_model) is not None

    def stat(self, target_model: str, *, probe: bool = False) -> ArtifactInfo:
        """Describe ``target_model`` without downloading it.

        ``probe``: one try within ``PROBE_TIMEOUT_S`` (or the source's timeout if shorter), for
        a caller that has a fallback when the source is slow or down (revalidating a cached
        copy): it must not wait through the retries of a download.

        Raises:
            InvalidTargetModelError: malformed name (nothing is sent).
            ModelNotFoundError: no object and no folder of that name.
            SourceError: the source failed or denied access.
        """
        key = validate_target_model(target_model)
        stores = self._probe if probe else self._stores
        with self._errors(key):
            try:
                meta = obstore.head(stores.metadata, key)
            except _NOT_FOUND:
                return _folder_info(key, self._folder_members(key, stores))
        return ArtifactInfo(key, meta["size"], meta["e_tag"], "file")

    def list(self, prefix: str = "") -> Iterator[ArtifactInfo]:
        """Yield every object (``kind="file"``) under the folder ``prefix``, page by page.

        ``prefix`` is a folder of the source (``"customer-17"`` or ``"customer-17/"``), not a
        partial name; keys are relative to the source.
        """
        folder = prefix.rstrip("/")
        if folder:
            validate_target_model(folder)
        return self._iter_objects(folder)

    def put(
        self,
        target_model: str,
        file: Path,
        *,
        progress: Callable[[int], None] | None = None,
    ) -> ArtifactInfo:
        """Upload ``file`` as ``target_model`` (a multipart upload past 8 MiB, all or
        nothing), calling ``progress`` with each chunk's bytes as it is handed over.

        Raises:
            InvalidTargetModelError: malformed name (nothing is sent).
            SourceError: the source failed or denied access.
        """
        key = validate_target_model(target_model)

        def chunks() -> Iterator[bytes]:
            with Path(file).open("rb") as stream:
                while block := stream.read(_PUT_CHUNK_BYTES):
                    yield block
                    if progress is not None:
                        progress(len(block))

        with self._errors(key):
            result = obstore.put(self._stores.data, key, chunks(), chunk_size=_PUT_CHUNK_BYTES)
        return ArtifactInfo(key, Path(file).stat().st_size, result["e_tag"], "file")

    def fetch(
        self,
        target_model: str,
        dest: Path,
        *,
        max_bytes: int,
        max_files: int,
        before_write: Callable[[ArtifactInfo], None] | None = None,
        reserve: Callable[[int], None] | None = None,
    ) -> ArtifactInfo:
        """Download ``target_model`` into the empty existing folder ``dest``.

        Archives are unpacked into ``dest``, a single object becomes ``dest/<basename>``, a
        folder's objects keep their relative paths. ``max_bytes`` and ``max_files`` bound what
        is written. On error ``dest`` may hold partial files: the caller deletes it.

        ``before_write`` is called once with the artifact's size and ETag as soon as the
        source has answered and before any byte is written (to reserve disk room, say): one
        round trip instead of a :meth:`stat` followed by the download. If it raises, nothing
        is written and the error propagates. ``reserve`` is called while an archive is
        unpacked, before each file is written, with the bytes its files will then count in
        all (see :func:`~modelfleet.cache.unpack.safe_extract`).

        Raises:
            InvalidTargetModelError, ModelNotFoundError, SourceError: as :meth:`stat`.
            ArtifactError: corrupt or unsafe archive, or over a limit.
        """
        key = validate_target_model(target_model)
        started = time.perf_counter()
        with self._errors(key):
            try:
                result = obstore.get(self._stores.data, key)
            except _NOT_FOUND:
                result = None
        if result is None:
            info, written = self._fetch_folder(key, Path(dest), max_bytes, max_files, before_write)
        else:
            info = ArtifactInfo(key, result.meta["size"], result.meta["e_tag"], "file")
            if before_write is not None:
                before_write(info)
            written = self._fetch_object(key, result, Path(dest), max_bytes, max_files, reserve)
        logger.debug(
            "fetched %r (%s, %d bytes written) from %s in %.3f s",
            key,
            info.kind,
            written,
            self._uri,
            time.perf_counter() - started,
        )
        return info

    def _fetch_object(
        self,
        key: str,
        result: GetResult,
        dest: Path,
        max_bytes: int,
        max_files: int,
        reserve: Callable[[int], None] | None,
    ) -> int:
        mode = archive_mode(key)
        if mode is not None:
            reader = io.BufferedReader(_ChunkReader(self._chunks(key, result)), CHUNK_BYTES)
            return safe_extract(
                reader, dest, max_bytes=max_bytes, max_files=max_files, mode=mode, reserve=reserve
            )
        _check_limits(
            key, files=1, size=result.meta["size"], max_files=max_files, max_bytes=max_bytes
        )
        return _write(self._chunks(key, result), dest / key.rsplit("/", 1)[-1], key, max_bytes)

    def _fetch_folder(
        self,
        key: str,
        dest: Path,
        max_bytes: int,
        max_files: int,
        before_write: Callable[[ArtifactInfo], None] | None,
    ) -> tuple[ArtifactInfo, int]:
        members = self._folder_members(key)
        info = _folder_info(key, members)
        _check_limits(
            key, files=len(members), size=info.size, max_files=max_files, max_bytes=max_bytes
        )
        if before_write is not None:
            before_write(info)
        written = 0
        for meta in members:
            relative = meta["path"][len(key) + 1 :]
            path = dest.joinpath(*relative.split("/"))
            options: GetOptions = {"if_match": meta["e_tag"]} if meta["e_tag"] else {}
            with self._errors(key):
                try:
                    result = obstore.get(self._stores.data, meta["path"], options=options)
                except _NOT_FOUND:
                    if meta["size"] == 0:
                        continue  # an empty folder marker ("sub/"), listed without its "/"
                    raise
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                written += _write(self._chunks(key, result), path, key, max_bytes - written)
            except (FileExistsError, NotADirectoryError) as exc:
                raise ArtifactError(
                    f"Model folder {key!r} has both a file and a folder named {relative!r}."
                ) from exc
        return info, written

    def _folder_members(
        self, key: str, stores: SourceStores | None = None
    ) -> tuple[ObjectMeta, ...]:
        """The objects under ``key/``, sorted by path; ModelNotFoundError when there are none."""
        metadata = (stores or self._stores).metadata
        with self._errors(key):
            members = [
                meta
                for page in obstore.list(metadata, key, chunk_size=_LIST_PAGE)
                for meta in page
                if meta["path"].startswith(key + "/")
            ]
        # Folder markers (zero-byte "sub/" objects made by consoles) are listed as "sub":
        # drop those that are the parent of another member.
        parents = {
            path[:index]
            for path in (meta["path"] for meta in members)
            for index, char in enumerate(path)
            if char == "/"
        }
        members = [meta for meta in members if not (meta["size"] == 0 and meta["path"] in parents)]
        if not members:
            raise ModelNotFoundError(key, self._uri)
        members.sort(key=lambda meta: meta["path"])
        return tuple(members)

    def _iter_objects(self, folder: str) -> Iterator[ArtifactInfo]:
        with self._errors(folder or "(listing)"):
            pages = obstore.list(self._stores.metadata, folder or None, chunk_size=_LIST_PAGE)
            for page in pages:
                for meta in page:
                    yield ArtifactInfo(meta["path"], meta["size"], meta["e_tag"], "file")

    def _chunks(self, key: str, result: GetResult) -> Iterator[bytes]:
        """The object's bytes in chunks of at least ``CHUNK_BYTES``, errors translated."""
        if self._stores.kind == "local":
            local = self._open_local(result)
            if local is not None:
                left = int(result.meta["size"])
                with local:
                    while left > 0:
                        with self._errors(key):
                            data = local.read(min(CHUNK_BYTES, left))
                        if not data:
                            return
                        left -= len(data)
                        yield data
                return
        stream = result.stream(min_chunk_size=CHUNK_BYTES)
        while True:
            with self._errors(key):
                chunk = next(stream, None)
            if chunk is None:
                return
            yield chunk

    def _open_local(self, result: GetResult) -> io.BufferedReader | None:
        """The folder source's file behind ``result``, opened for plain reads, or None.

        obstore streams a local file in small blocks, about 3 ms a MB (``bytes()`` and a plain
        read take 0.1): for 1 MB models that was a fifth of a cold request. None (stream it
        through obstore) when the file is gone or is no longer the version obstore saw: its
        ETag, computed from ``fstat`` as obstore computes a local file's (inode, modification
        time in microseconds, size, in hex), must equal the one ``result`` reported.
        """
        root = getattr(self._stores.data, "prefix", None)
        if root is None:
            return None
        try:
            file = open(Path(root, result.meta["path"]), "rb")  # noqa: SIM115
        except OSError:
            return None
        stat = os.fstat(file.fileno())
        etag = f'"{stat.st_ino:x}-{stat.st_mtime_ns // 1000:x}-{stat.st_size:x}"'
        if stat.st_size != result.meta["size"] or etag != result.meta["e_tag"]:
            file.close()
            return None
        return file

    @contextmanager
    def _errors(self, key: str) -> Iterator[None]:
        """Translate errors of the obstore calls inside the block into modelfleet errors."""
        try:
            yield
        except (ObstoreBaseError, OSError, ValueError) as exc:
            raise self._translate(exc, key) from exc

    def _translate(self, exc: Exception, key: str) -> ModelfleetError:
        detail = error_detail(exc)
        if isinstance(exc, _NOT_FOUND) or _NOT_A_DIRECTORY.search(detail):
            return ModelNotFoundError(key, self._uri)
        if isinstance(exc, _DENIED) or _DENIED_STATUS.search(str(exc)):
            return SourceError(f"Access denied to {key!r} in model source {self._uri}: {detail}")
        if isinstance(exc, PreconditionError):
            return SourceError(
                f"Model {key!r} changed in model source {self._uri} while it was being "
                "downloaded; retry."
            )
        return SourceError(
            f"Model source {self._uri} failed for {key!r} (timeout_s={self._timeout_s}, "
            f"retries={self._retries}): {detail}"
        )


class _ChunkReader(io.RawIOBase):
    """A readable raw stream over an iterator of byte chunks."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        super().__init__()
        self._chunks = chunks
        self._current = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        while not self._current:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._current = memoryview(chunk)
        with memoryview(buffer) as view, view.cast("B") as out:
            count = min(len(out), len(self._current))
            out[:count] = self._current[:count]
        self._current = self._current[count:]
        return count


def _folder_info(key: str, members: tuple[ObjectMeta, ...]) -> ArtifactInfo:
    digest = hashlib.sha256()
    for meta in members:
        digest.update(f"{meta['path']}\0{meta['e_tag'] or ''}\0{meta['size']}\n".encode())
    size = sum(meta["size"] for meta in members)
    return ArtifactInfo(key, size, f"folder-{digest.hexdigest()[:32]}", "folder")


def _check_limits(key: str, *, files: int, size: int, max_files: int, max_bytes: int) -> None:
    if files > max_files:
        raise ArtifactError(f"Model {key!r} has {files} files, more than the limit of {max_files}.")
    if size > max_bytes:
        raise ArtifactError(
            f"Model {key!r} is {size} bytes, more than the limit of {max_bytes} bytes."
        )


def _write(chunks: Iterator[bytes], path: Path, key: str, max_bytes: int) -> int:
    """Write ``chunks`` to the new file ``path``; refuse more than ``max_bytes``."""
    written = 0
    with open(path, "xb") as out:
        for chunk in chunks:
            written += len(chunk)
            if written > max_bytes:
                raise ArtifactError(f"Model {key!r} is larger than the limit of {max_bytes} bytes.")
            out.write(chunk)
    return written

"""``modelfleet push``: a model folder packaged as SageMaker packages one (``model.tar.gz``,
the folder's contents at the archive's root) and uploaded to a model source."""

from __future__ import annotations

import gzip
import os
import tarfile
from collections.abc import Callable
from pathlib import Path

from modelfleet.errors import ValidationError

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


def archive_name(target: str, folder: bool) -> str:
    """The target model a push of a folder (``folder``) or a file names: a folder pushed to a
    name that is not an archive's goes to ``<name>/model.tar.gz``, as SageMaker lays out."""
    target = target.strip("/")
    if folder and not target.endswith(ARCHIVE_SUFFIXES):
        return f"{target}/model.tar.gz"
    return target


def folder_bytes(folder: Path) -> int:
    """Bytes of the regular files under ``folder`` (what packaging reads)."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def package(folder: Path, archive: Path, progress: Callable[[int], None] | None = None) -> int:
    """Write ``folder``'s contents into the gzip-compressed tar ``archive`` (paths relative to
    the folder, no absolute paths, no symbolic links followed out of it); return the archive's
    bytes. ``progress`` gets each file's bytes once it is in.

    Raises:
        ValidationError: a symbolic link in the folder (SageMaker's archives hold none that
            modelfleet would unpack) or an empty folder.
    """
    files: list[Path] = []
    for root, dirs, names in os.walk(folder):
        for name in sorted(dirs) + sorted(names):
            path = Path(root) / name
            if path.is_symlink():
                raise ValidationError(
                    f"{path} is a symbolic link: copy what it points to into the folder."
                )
        dirs.sort()
        files += [Path(root) / n for n in sorted(names)]
    if not files:
        raise ValidationError(f"{folder} holds no file to package.")
    # Level 1: model weights hardly compress, and it is several times faster than the default.
    with (
        archive.open("wb") as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for path in files:
            info = tar.gettarinfo(str(path), arcname=path.relative_to(folder).as_posix())
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with path.open("rb") as stream:
                tar.addfile(info, stream)
            if progress is not None:
                progress(info.size)
    return archive.stat().st_size

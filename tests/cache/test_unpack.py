"""safe_extract: every rule, the limits while streaming, broken streams, and a valid tree."""

from __future__ import annotations

import gzip
import io
import os
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from modelfleet.cache.unpack import CHUNK_BYTES, safe_extract
from modelfleet.errors import ArtifactError

Member = tuple[tarfile.TarInfo, bytes]


def reg(name: str, data: bytes = b"", *, mode: int = 0o644) -> Member:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    return info, data


def special(name: str, kind: bytes, *, linkname: str = "", mode: int = 0o755) -> Member:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.mode = mode
    return info, b""


def directory(name: str) -> Member:
    return special(name, tarfile.DIRTYPE)


def symlink(name: str, target: str) -> Member:
    return special(name, tarfile.SYMTYPE, linkname=target)


def hardlink(name: str, target: str) -> Member:
    return special(name, tarfile.LNKTYPE, linkname=target)


def tar_bytes(*members: Member, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as archive:
        for info, data in members:
            archive.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buffer.getvalue()


def targz(*members: Member) -> bytes:
    return gzip.compress(tar_bytes(*members), compresslevel=1)


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    path = tmp_path / "dest"
    path.mkdir()
    return path


def extract(
    data: bytes, dest: Path, *, max_bytes: int = 1 << 20, max_files: int = 100, mode: str = "r|gz"
) -> int:
    return safe_extract(io.BytesIO(data), dest, max_bytes=max_bytes, max_files=max_files, mode=mode)


def listing(root: Path) -> list[str]:
    return sorted(path.relative_to(root).as_posix() for path in root.rglob("*"))


def test_valid_nested_tree(dest: Path) -> None:
    data = targz(
        directory("."),
        reg("./model.joblib", b"weights"),
        directory("./code/"),
        reg("./code/inference.py", b"def model_fn(d): ...", mode=0o775),
        reg("deep/er/still/file.txt", b"implicit parents"),
        directory("./code"),  # repeated folders are fine
        symlink("code/model-link", "../model.joblib"),
        symlink("deep/er/here", "."),
        symlink("deep/er/up", "../../model.joblib"),
        hardlink("code/model-copy", "./model.joblib"),
    )
    written = extract(data, dest)
    assert written == len(b"weights") + len(b"def model_fn(d): ...") + len(b"implicit parents")
    assert listing(dest) == [
        "code",
        "code/inference.py",
        "code/model-copy",
        "code/model-link",
        "deep",
        "deep/er",
        "deep/er/here",
        "deep/er/still",
        "deep/er/still/file.txt",
        "deep/er/up",
        "model.joblib",
    ]
    assert (dest / "code" / "model-link").read_bytes() == b"weights"
    assert (dest / "deep" / "er" / "up").read_bytes() == b"weights"
    assert os.stat(dest / "code" / "model-copy").st_ino == os.stat(dest / "model.joblib").st_ino
    assert stat.S_IMODE(os.stat(dest / "code" / "inference.py").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(dest / "model.joblib").st_mode) == 0o644
    assert stat.S_IMODE(os.stat(dest / "deep").st_mode) == 0o755


def test_plain_tar_and_large_members(dest: Path) -> None:
    big = os.urandom(2 * CHUNK_BYTES + 17)
    data = tar_bytes(reg("big.bin", big), reg("small.txt", b"s"))
    assert extract(data, dest, max_bytes=len(big) + 1, mode="r|") == len(big) + 1
    assert (dest / "big.bin").read_bytes() == big


def test_concatenated_and_zero_padded_gzip_members(dest: Path) -> None:
    raw = tar_bytes(reg("a.txt", b"a" * 5000), reg("b.txt", b"b"))
    data = gzip.compress(raw[:1024]) + b"\0" * 7 + gzip.compress(raw[1024:]) + b"\0" * 512
    extract(data, dest)
    assert listing(dest) == ["a.txt", "b.txt"]


@pytest.mark.parametrize("mode", [0o4755, 0o2755, 0o1777, 0o777, 0o666])
def test_modes_are_restricted(dest: Path, mode: int) -> None:
    extract(targz(reg("f", b"x", mode=mode), special("d", tarfile.DIRTYPE, mode=mode)), dest)
    expected = 0o755 if mode & 0o111 else 0o644
    assert stat.S_IMODE(os.stat(dest / "f").st_mode) == expected
    assert stat.S_IMODE(os.stat(dest / "d").st_mode) == 0o755


UNSAFE: list[tuple[str, list[Member], str]] = [
    ("absolute", [reg("/etc/evil", b"x")], "absolute"),
    ("drive", [reg("C:evil", b"x")], "absolute"),
    ("dotdot", [reg("../evil", b"x")], "'..'"),
    ("inner dotdot", [reg("a/../../evil", b"x")], "'..'"),
    ("trailing dotdot", [directory("a/..")], "'..'"),
    ("backslash", [reg("a\\..\\evil", b"x")], "backslash"),
    ("control", [reg("a\nb", b"x")], "control character"),
    ("long segment", [reg("x" * 256, b"x")], "longer than 255 bytes"),
    ("root as file", [reg("./", b"x")], "destination folder itself"),
    ("symlink absolute", [symlink("l", "/etc/passwd")], "absolute"),
    ("symlink climbs out", [symlink("a/l", "../../outside")], "outside the destination"),
    ("symlink top climbs", [symlink("l", "..")], "outside the destination"),
    ("symlink dotdot after name", [symlink("l", "a/../../x")], "after a folder name"),
    ("symlink empty", [symlink("l", "")], "empty"),
    ("symlink backslash", [symlink("l", "..\\x")], "backslash"),
    (
        "write through symlink",
        [directory("real"), symlink("alias", "real"), reg("alias/f", b"x")],
        "'alias' is a symbolic link",
    ),
    (
        "escape through a chain of links",
        [symlink("s", "."), symlink("s/s/up", "../../x")],
        "symbolic link",
    ),
    ("hardlink outside", [hardlink("h", "../outside")], "'..'"),
    ("hardlink absolute", [hardlink("h", "/etc/passwd")], "absolute"),
    ("hardlink to later member", [hardlink("h", "later"), reg("later", b"x")], "earlier"),
    ("hardlink to symlink", [symlink("l", "f"), hardlink("h", "l")], "not a regular file"),
    ("hardlink to folder", [directory("d"), hardlink("h", "d")], "not a regular file"),
    ("char device", [special("dev", tarfile.CHRTYPE)], "device"),
    ("block device", [special("dev", tarfile.BLKTYPE)], "device"),
    ("fifo", [special("pipe", tarfile.FIFOTYPE)], "FIFO"),
    ("unknown type", [special("odd", b"Z")], "not supported"),
    ("duplicate file", [reg("f", b"1"), reg("f", b"2")], "already has this path"),
    ("folder over file", [reg("f", b"1"), directory("f")], "already has this path"),
    ("file under file", [reg("f", b"1"), reg("f/g", b"2")], "is a file, not a folder"),
]


@pytest.mark.parametrize(
    ("members", "message"), [(m, msg) for _, m, msg in UNSAFE], ids=[case for case, _, _ in UNSAFE]
)
def test_unsafe_members_are_refused(
    tmp_path: Path, dest: Path, members: list[Member], message: str
) -> None:
    with pytest.raises(ArtifactError, match="Unsafe archive member") as caught:
        extract(targz(*members), dest)
    assert message in caught.value.message
    outside = [path for path in tmp_path.rglob("*") if dest not in (path, *path.parents)]
    assert outside == []


def test_sparse_members_are_refused(dest: Path) -> None:
    info, _ = reg("sparse.bin", b"")
    info.type = tarfile.GNUTYPE_SPARSE
    with pytest.raises(ArtifactError, match="sparse"):
        extract(gzip.compress(tar_bytes((info, b""), fmt=tarfile.GNU_FORMAT)), dest)


def test_file_limit_stops_early(dest: Path) -> None:
    data = targz(*(reg(f"f{index:03}", b"x") for index in range(500)))
    with pytest.raises(ArtifactError, match="more than 10 files and folders"):
        extract(data, dest, max_files=10)
    assert len(listing(dest)) == 10


def test_implicit_folders_count_toward_the_file_limit(dest: Path) -> None:
    with pytest.raises(ArtifactError, match="more than 5 files"):
        extract(targz(reg("a/b/c/d/e/f/g.txt", b"x")), dest, max_files=5)


def test_byte_limit_stops_before_the_member_that_crosses_it(dest: Path) -> None:
    data = targz(*(reg(f"f{index}", b"x" * 100) for index in range(10)))
    with pytest.raises(ArtifactError, match="more than 250 bytes") as caught:
        extract(data, dest, max_bytes=250)
    assert "'f2'" in caught.value.message
    assert listing(dest) == ["f0", "f1"]


def test_compression_bomb_is_bounded(dest: Path) -> None:
    zeros = b"\0" * (32 << 20)
    data = targz(reg("bomb", zeros))
    assert len(data) < len(zeros) // 100
    with pytest.raises(ArtifactError, match="more than 1048576 bytes"):
        extract(data, dest, max_bytes=1 << 20)
    assert listing(dest) == []


def test_huge_extended_header_is_refused(dest: Path) -> None:
    info, data = reg("f", b"x")
    info.pax_headers = {"comment": "c" * (2 << 20)}
    with pytest.raises(ArtifactError, match="extended header"):
        extract(targz((info, data)), dest)


def _cut_at(fraction: float) -> Callable[[bytes], bytes]:
    return lambda data: data[: int(len(data) * fraction)]


@pytest.mark.parametrize(
    "damage",
    [
        _cut_at(0.0),
        _cut_at(0.05),
        _cut_at(0.5),
        lambda data: data[:-1],
        lambda data: data[:-8],  # the gzip trailer (CRC and length) is missing
        lambda data: data[:20] + bytes(b ^ 0xFF for b in data[20:40]) + data[40:],
        lambda data: data[:-8] + b"\0\0\0\0" + data[-4:],  # wrong CRC
        lambda data: data + b"garbage after the gzip member",
        lambda data: b"this is not a gzip file at all" * 10,
    ],
    ids=["empty", "5%", "50%", "last byte", "trailer", "flipped", "bad crc", "trailing", "text"],
)
def test_damaged_gzip_is_an_artifact_error(dest: Path, damage: Callable[[bytes], bytes]) -> None:
    data = targz(reg("model.bin", os.urandom(200_000)), reg("code/x.py", b"print()"))
    with pytest.raises(ArtifactError, match=r"Corrupt|truncated"):
        extract(damage(data), dest)


@pytest.mark.parametrize("blocks", [0, 1, 2, 3])
def test_plain_tar_without_end_marker_is_truncated(dest: Path, blocks: int) -> None:
    # Each member is a header block plus one data block; cut on a block boundary.
    data = tar_bytes(reg("a", b"1"), reg("b", b"2"), fmt=tarfile.USTAR_FORMAT)
    with pytest.raises(ArtifactError, match="truncated"):
        extract(data[: blocks * tarfile.BLOCKSIZE], dest, mode="r|")


def test_corrupt_header_mid_archive(dest: Path) -> None:
    data = bytearray(tar_bytes(reg("a", b"1"), reg("b", b"2"), fmt=tarfile.USTAR_FORMAT))
    data[2 * tarfile.BLOCKSIZE + 10] ^= 0xFF  # second header: checksum no longer matches
    with pytest.raises(ArtifactError, match="invalid member header"):
        extract(bytes(data), dest, mode="r|")


def test_stream_errors_propagate_unchanged(dest: Path) -> None:
    class Broken(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, buffer: object) -> int:
            raise ConnectionResetError("source went away")

    with pytest.raises(ConnectionResetError, match="source went away"):
        safe_extract(io.BufferedReader(Broken()), dest, max_bytes=10, max_files=10, mode="r|gz")


def test_bad_arguments(dest: Path, tmp_path: Path) -> None:
    data = targz(reg("a", b"1"))
    with pytest.raises(ValueError, match="mode"):
        extract(data, dest, mode="r:gz")
    with pytest.raises(ValueError, match="negative"):
        extract(data, dest, max_bytes=-1)
    with pytest.raises(ValueError, match="existing folder"):
        extract(data, tmp_path / "missing")
    (dest / "already-here").write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        extract(data, dest)

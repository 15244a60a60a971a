"""One contract for every model source: the same tests against a folder and a real S3 server."""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest

from modelfleet.errors import (
    ArtifactError,
    InvalidTargetModelError,
    ModelNotFoundError,
)
from modelfleet.source import ArtifactInfo, ModelSource
from modelfleet.source import store as store_module


class Bench(Protocol):
    source: ModelSource

    def put(self, key: str, data: bytes) -> None: ...


class LocalBench:
    def __init__(self, root: Path) -> None:
        self._root = root
        self.source = ModelSource(str(root))

    def put(self, key: str, data: bytes) -> None:
        path = self._root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


class S3Bench:
    def __init__(self, client: Any, bucket: str) -> None:
        self._client = client
        self._bucket = bucket
        self.source = ModelSource(f"s3://{bucket}/models/", timeout_s=5.0, retries=1)

    def put(self, key: str, data: bytes) -> None:
        self._client.put_object(Bucket=self._bucket, Key=f"models/{key}", Body=data)


@pytest.fixture(params=["local", "s3"])
def bench(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Bench]:
    if request.param == "local":
        root = tmp_path / "source"
        root.mkdir()
        yield LocalBench(root)
    else:
        request.getfixturevalue("aws_env")
        client, bucket = request.getfixturevalue("s3_bucket")
        yield S3Bench(client, bucket)


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    path = tmp_path / "dest"
    path.mkdir()
    return path


def tarball(files: dict[str, bytes], *, gz: bool = True) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if gz else "w") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755 if name.endswith(".py") else 0o644
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def tree(root: Path) -> dict[str, bytes]:
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


MODEL_FILES = {
    "model.joblib": b"weights" * 1000,
    "code/inference.py": b"def model_fn(model_dir):\n    return None\n",
    "code/lib/helpers/util.txt": b"nested",
}


def test_stat_file(bench: Bench) -> None:
    bench.put("a/model.onnx", b"12345")
    info = bench.source.stat("a/model.onnx")
    assert (info.target_model, info.size, info.kind) == ("a/model.onnx", 5, "file")
    assert info.etag
    assert bench.source.stat("a/model.onnx") == info


def test_stat_folder(bench: Bench) -> None:
    bench.put("m/one.txt", b"1")
    bench.put("m/sub/two.txt", b"22")
    bench.put("m-other/three.txt", b"333")
    info = bench.source.stat("m")
    assert (info.size, info.kind) == (3, "folder")
    assert info.etag is not None
    assert info.etag.startswith("folder-")
    assert bench.source.stat("m").etag == info.etag
    bench.put("m/sub/two.txt", b"changed")
    assert bench.source.stat("m").etag != info.etag


def test_missing_model(bench: Bench, dest: Path) -> None:
    bench.put("m/present.txt", b"1")
    for name in ("absent.tar.gz", "absent", "m/absent", "m/present.txt/x"):
        with pytest.raises(ModelNotFoundError, match="Could not find model") as caught:
            bench.source.stat(name)
        assert caught.value.target_model == name
        assert bench.source.uri in caught.value.message
        with pytest.raises(ModelNotFoundError):
            bench.source.fetch(name, dest, max_bytes=100, max_files=10)
    assert not any(dest.iterdir())


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a//b", "a\x00b", ""])
def test_invalid_names_touch_nothing(bench: Bench, dest: Path, name: str) -> None:
    with pytest.raises(InvalidTargetModelError):
        bench.source.stat(name)
    with pytest.raises(InvalidTargetModelError):
        bench.source.fetch(name, dest, max_bytes=100, max_files=10)
    with pytest.raises(InvalidTargetModelError):
        list(bench.source.list(name + "/x/.."))


def test_list(bench: Bench, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "_LIST_PAGE", 2)  # several pages from a few objects
    for key in ("a.tar.gz", "c/one.bin", "c/two.bin", "c/deep/three.bin", "cc/four.bin"):
        bench.put(key, key.encode())
    everything = list(bench.source.list())
    assert sorted(info.target_model for info in everything) == [
        "a.tar.gz",
        "c/deep/three.bin",
        "c/one.bin",
        "c/two.bin",
        "cc/four.bin",
    ]
    assert all(info.kind == "file" and info.size == len(info.target_model) for info in everything)
    under_c = sorted(info.target_model for info in bench.source.list("c/"))
    assert under_c == ["c/deep/three.bin", "c/one.bin", "c/two.bin"]
    assert sorted(info.target_model for info in bench.source.list("c")) == under_c
    assert list(bench.source.list("nothing-here")) == []


@pytest.mark.parametrize(
    ("name", "gz"), [("m/model.tar.gz", True), ("m.tgz", True), ("m.tar", False)]
)
def test_fetch_archive_unpacks(bench: Bench, dest: Path, name: str, gz: bool) -> None:
    data = tarball(MODEL_FILES, gz=gz)
    bench.put(name, data)
    info = bench.source.fetch(name, dest, max_bytes=1 << 20, max_files=100)
    assert info == bench.source.stat(name)
    assert (info.size, info.kind) == (len(data), "file")
    assert tree(dest) == MODEL_FILES
    assert os.stat(dest / "code" / "inference.py").st_mode & 0o777 == 0o755


def test_fetch_single_file(bench: Bench, dest: Path) -> None:
    data = os.urandom(3 * (1 << 20) + 123)  # several chunks
    bench.put("team/model.joblib", data)
    info = bench.source.fetch("team/model.joblib", dest, max_bytes=len(data), max_files=1)
    assert info == ArtifactInfo("team/model.joblib", len(data), info.etag, "file")
    assert tree(dest) == {"model.joblib": data}


def test_fetch_folder(bench: Bench, dest: Path) -> None:
    for name, data in MODEL_FILES.items():
        bench.put(f"folder-model/{name}", data)
    info = bench.source.fetch("folder-model", dest, max_bytes=1 << 20, max_files=3)
    assert info == bench.source.stat("folder-model")
    assert info.kind == "folder"
    assert tree(dest) == MODEL_FILES


def test_fetch_limits(bench: Bench, dest: Path) -> None:
    bench.put("big.bin", b"x" * 1000)
    with pytest.raises(ArtifactError, match="1000 bytes"):
        bench.source.fetch("big.bin", dest, max_bytes=999, max_files=1)
    for index in range(3):
        bench.put(f"many/{index}.bin", b"x")
    with pytest.raises(ArtifactError, match="3 files"):
        bench.source.fetch("many", dest, max_bytes=1000, max_files=2)
    with pytest.raises(ArtifactError, match="3 bytes"):
        bench.source.fetch("many", dest, max_bytes=2, max_files=10)
    assert not any(dest.iterdir())
    bench.put("big.tar.gz", tarball({"a": b"x" * 600, "b": b"y" * 600}))
    with pytest.raises(ArtifactError, match="more than 1000 bytes"):
        bench.source.fetch("big.tar.gz", dest, max_bytes=1000, max_files=10)


def test_fetch_unsafe_archive(bench: Bench, dest: Path) -> None:
    bench.put("evil.tar.gz", tarball({"../escape.txt": b"x"}))
    with pytest.raises(ArtifactError, match=r"escape\.txt"):
        bench.source.fetch("evil.tar.gz", dest, max_bytes=1000, max_files=10)
    assert not (dest.parent / "escape.txt").exists()


def test_fetch_corrupt_archive(bench: Bench, dest: Path) -> None:
    bench.put("cut.tar.gz", tarball(MODEL_FILES)[:-20])
    with pytest.raises(ArtifactError, match="truncated"):
        bench.source.fetch("cut.tar.gz", dest, max_bytes=1 << 20, max_files=100)


def test_is_archive(bench: Bench) -> None:
    assert bench.source.is_archive("x/model.tar.gz")
    assert not bench.source.is_archive("x/model.joblib")


# ------------------------------------------------------------------ folder sources: plain reads


def test_folder_files_are_read_directly(tmp_path: Path, dest: Path) -> None:
    (tmp_path / "source").mkdir()
    bench = LocalBench(tmp_path / "source")
    data = os.urandom(3 * (1 << 20) + 5)
    bench.put("m/model.bin", data)
    opened: list[object] = []
    original = ModelSource._open_local

    def spy(self: ModelSource, result: Any) -> Any:
        opened.append(original(self, result))
        return opened[-1]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ModelSource, "_open_local", spy)
        bench.source.fetch("m/model.bin", dest, max_bytes=len(data), max_files=1)
    assert len(opened) == 1
    assert opened[0] is not None  # not obstore's slow local stream
    assert tree(dest) == {"model.bin": data}


@pytest.mark.parametrize("change", ["replaced", "appended"])
def test_folder_file_changed_mid_fetch_keeps_the_version_obstore_saw(
    tmp_path: Path, dest: Path, change: str
) -> None:
    root = tmp_path / "source"
    root.mkdir()
    bench = LocalBench(root)
    old = b"A" * 4096
    bench.put("model.bin", old)
    seen: list[ArtifactInfo] = []

    def swap(info: ArtifactInfo) -> None:
        seen.append(info)
        if change == "replaced":  # same size, new inode: what an atomic upload does
            (root / "new.bin").write_bytes(b"B" * len(old))
            os.replace(root / "new.bin", root / "model.bin")
        else:
            with open(root / "model.bin", "ab") as file:
                file.write(b"C" * 100)

    info = bench.source.fetch("model.bin", dest, max_bytes=1 << 20, max_files=1, before_write=swap)
    assert info.etag == seen[0].etag
    assert tree(dest) == {"model.bin": old}  # the bytes of the ETag it reports

"""S3-only behaviour against real loopback servers: moto, a refusing server, a silent one."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from modelfleet.errors import SourceError
from modelfleet.source import ModelSource
from modelfleet.source.store import ArtifactInfo
from tests.s3server import SilentServer, StatusServer
from tests.servers import wait_until


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    path = tmp_path / "dest"
    path.mkdir()
    return path


def _calls(source: ModelSource, dest: Path) -> dict[str, Any]:
    return {
        "stat": lambda: source.stat("m/model.tar.gz"),
        "fetch": lambda: source.fetch("m/model.tar.gz", dest, max_bytes=10, max_files=1),
        "list": lambda: list(source.list("m")),
    }


@pytest.mark.parametrize(("status", "code"), [(403, "AccessDenied"), (401, "Unauthorized")])
def test_access_denied(
    status: int, code: str, aws_env: str, monkeypatch: pytest.MonkeyPatch, dest: Path
) -> None:
    with StatusServer(status, code) as server:
        monkeypatch.setenv("AWS_ENDPOINT_URL", server.url)
        source = ModelSource("s3://bucket/prefix", timeout_s=5.0, retries=2)
        for name, call in _calls(source, dest).items():
            with pytest.raises(SourceError, match="Access denied") as caught:
                call()
            assert "s3://bucket/prefix" in caught.value.message, name
        # Access errors are not retried: one request per call.
        assert server.requests == 3


def test_server_errors_are_retried_then_reported(
    aws_env: str, monkeypatch: pytest.MonkeyPatch, dest: Path
) -> None:
    with StatusServer(503, "SlowDown") as server:
        monkeypatch.setenv("AWS_ENDPOINT_URL", server.url)
        source = ModelSource("s3://bucket/prefix", timeout_s=5.0, retries=2)
        with pytest.raises(SourceError, match="retries=2"):
            source.stat("m/model.tar.gz")
        assert server.requests == 3  # the first try and two retries


@pytest.mark.timeout(120)  # bounds a hang: without its timeout a try waits forever
def test_silent_server_times_out_each_try_then_gives_up(
    aws_env: str, monkeypatch: pytest.MonkeyPatch, dest: Path
) -> None:
    timeout_s, retries = 0.25, 1
    with SilentServer() as server:
        monkeypatch.setenv("AWS_ENDPOINT_URL", server.url)
        source = ModelSource("s3://bucket/prefix", timeout_s=timeout_s, retries=retries)
        for name, call in _calls(source, dest).items():
            before = server.connections
            started = time.monotonic()
            with pytest.raises(SourceError, match="failed for"):
                call()
            waited = time.monotonic() - started
            # Each try gave up after timeout_s (a lower bound: a loaded machine is only slower),
            # and a retry is a new connection: retries + 1 of them, then the error.
            assert waited >= (retries + 1) * timeout_s * 0.9, (name, waited)
            tries = retries + 1 + before
            wait_until(lambda n=tries: server.connections >= n, f"the tries of {name}")
            assert server.connections == tries, name


def test_missing_bucket(aws_env: str, dest: Path) -> None:
    source = ModelSource("s3://no-such-bucket-modelfleet/prefix", timeout_s=5.0, retries=0)
    # The object is missing, but so is the bucket: a broken source, not a missing model.
    with pytest.raises(SourceError, match="NoSuchBucket"):
        source.stat("model.tar.gz")
    with pytest.raises(SourceError, match="NoSuchBucket"):
        list(source.list())


def test_environment_is_read_once(
    aws_env: str, monkeypatch: pytest.MonkeyPatch, s3_bucket: tuple[Any, str]
) -> None:
    client, bucket = s3_bucket
    client.put_object(Bucket=bucket, Key="m.bin", Body=b"abc")
    source = ModelSource(f"s3://{bucket}", timeout_s=5.0, retries=0)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    assert source.stat("m.bin").size == 3


def test_object_wins_over_folder_of_the_same_name(
    aws_env: str, s3_bucket: tuple[Any, str], dest: Path
) -> None:
    client, bucket = s3_bucket
    client.put_object(Bucket=bucket, Key="m", Body=b"object")
    client.put_object(Bucket=bucket, Key="m/inside.txt", Body=b"folder member")
    source = ModelSource(f"s3://{bucket}", timeout_s=5.0, retries=0)
    assert source.stat("m").kind == "file"
    source.fetch("m", dest, max_bytes=100, max_files=1)
    assert (dest / "m").read_bytes() == b"object"


def test_folder_markers_are_not_files(aws_env: str, s3_bucket: tuple[Any, str], dest: Path) -> None:
    client, bucket = s3_bucket
    for key in ("p/m/", "p/m/sub/", "p/m/empty/"):
        client.put_object(Bucket=bucket, Key=key, Body=b"")
    client.put_object(Bucket=bucket, Key="p/m/sub/model.onnx", Body=b"onnx")
    client.put_object(Bucket=bucket, Key="p/m/zero.txt", Body=b"")
    source = ModelSource(f"s3://{bucket}/p", timeout_s=5.0, retries=0)
    assert source.stat("m").size == 4
    source.fetch("m", dest, max_bytes=100, max_files=10)
    files = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert files == ["sub/model.onnx", "zero.txt"]


class _ChangingSource(ModelSource):
    """Rewrites one member between the folder listing and its download."""

    def __init__(self, uri: str, client: Any, bucket: str) -> None:
        super().__init__(uri, timeout_s=5.0, retries=0)
        self._client = client
        self._bucket = bucket

    def _folder_members(self, key: str) -> Any:
        members = super()._folder_members(key)
        self._client.put_object(Bucket=self._bucket, Key=f"{key}/a.txt", Body=b"new")
        return members


def test_folder_changing_during_download(
    aws_env: str, s3_bucket: tuple[Any, str], dest: Path
) -> None:
    client, bucket = s3_bucket
    client.put_object(Bucket=bucket, Key="m/a.txt", Body=b"old")
    source = _ChangingSource(f"s3://{bucket}", client, bucket)
    with pytest.raises(SourceError, match="changed"):
        source.fetch("m", dest, max_bytes=100, max_files=10)


def test_artifact_info_is_frozen() -> None:
    info = ArtifactInfo("m", 1, None, "file")
    with pytest.raises(AttributeError):
        info.size = 2  # type: ignore[misc]

"""Source URIs and the environment: everything decided at construction, with no traffic."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelfleet.errors import SourceError
from modelfleet.source import ModelSource, is_loopback_host
from tests.conftest import FAKE_KEY_ID, FAKE_SECRET

# Never contacted: only construction-time checks use it.
UNROUTABLE_HTTP = "http://10.255.255.1:9000"


@pytest.fixture
def s3_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for variable in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", FAKE_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET)
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    return monkeypatch


def test_folder_path_and_file_uri(tmp_path: Path) -> None:
    (tmp_path / "m.joblib").write_bytes(b"1")
    for uri in (str(tmp_path), tmp_path.as_uri(), f"file://localhost{tmp_path}"):
        source = ModelSource(uri)
        assert source.uri == uri
        assert source.stat("m.joblib").size == 1
        assert repr(source) == f"ModelSource({uri!r}, timeout_s=30.0, retries=3)"


def test_relative_folder_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "m.onnx").write_bytes(b"12")
    monkeypatch.chdir(tmp_path)
    assert ModelSource("./models").stat("m.onnx").size == 2


def test_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        ModelSource(str(tmp_path / "nope"))
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(SourceError, match="is not a folder"):
        ModelSource((tmp_path / "file").as_uri())


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("hdfs://bucket/prefix", "scheme 'hdfs' is not supported"),
        ("ftp://host/x", "file://, s3://, az://, gs://"),
        ("az:///x", "expected az://container/prefix/"),
        ("gs://bucket/a/../b", "bad prefix"),
        ("file://somehost/srv/models", "absolute path"),
        ("s3:///prefix", "expected s3://bucket/prefix/"),
        ("s3://user@bucket/p", "expected s3://bucket/prefix/"),
        ("s3://bucket/a/../b", "bad prefix"),
        ("s3://bucket/a//b", "bad prefix"),
        ("", "empty"),
    ],
)
def test_bad_uris(uri: str, message: str, s3_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(SourceError, match=message):
        ModelSource(uri)


def test_bad_options(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="timeout"):
        ModelSource(str(tmp_path), timeout_s=0)
    with pytest.raises(SourceError, match="retries"):
        ModelSource(str(tmp_path), retries=-1)


def test_s3_without_endpoint_uses_aws(s3_env: pytest.MonkeyPatch) -> None:
    source = ModelSource("s3://bucket/prefix/")
    assert source.uri == "s3://bucket/prefix/"


def test_plain_http_to_a_remote_host_is_refused(s3_env: pytest.MonkeyPatch) -> None:
    s3_env.setenv("AWS_ENDPOINT_URL", UNROUTABLE_HTTP)
    with pytest.raises(SourceError, match="plain-http") as caught:
        ModelSource("s3://bucket/prefix/")
    assert "allow_http" in caught.value.message
    # Asked for explicitly, it is allowed (construction sends nothing).
    ModelSource("s3://bucket/prefix/", allow_http=True)


def test_service_specific_endpoint_wins(s3_env: pytest.MonkeyPatch) -> None:
    s3_env.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    s3_env.setenv("AWS_ENDPOINT_URL_S3", UNROUTABLE_HTTP)
    with pytest.raises(SourceError, match="plain-http"):
        ModelSource("s3://bucket")


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://127.0.0.1:9000",
        "http://127.8.9.10:9000/",
        "http://localhost:9000",
        "http://[::1]:9000",
        "https://s3.example.com",
        "https://10.255.255.1:9000",
    ],
)
def test_allowed_endpoints(endpoint: str, s3_env: pytest.MonkeyPatch) -> None:
    s3_env.setenv("AWS_ENDPOINT_URL", endpoint)
    ModelSource("s3://bucket/prefix")


@pytest.mark.parametrize("endpoint", ["ftp://127.0.0.1", "127.0.0.1:9000", "http://"])
def test_malformed_endpoints(endpoint: str, s3_env: pytest.MonkeyPatch) -> None:
    s3_env.setenv("AWS_ENDPOINT_URL", endpoint)
    with pytest.raises(SourceError, match="Invalid endpoint"):
        ModelSource("s3://bucket/prefix")


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.255.0.3", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("10.255.255.1", False),
        ("128.0.0.1", False),
        ("::2", False),
        ("example.com", False),
        ("localhost.example.com", False),
    ],
)
def test_is_loopback_host(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback

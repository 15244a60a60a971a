"""DESIGN section 9: each kind of bad input gets its exact error; the server goes on serving."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from modelfleet.config import Settings
from tests.artifacts import make_tar_gz, sklearn_artifact
from tests.servers import ThreadServer, free_port, thread_server

ROW = b"0,1,2,3,4,5,6,7,8,9"
GOOD = "good/model.tar.gz"


@pytest.fixture
def source(tmp_path: Path) -> Path:
    root = tmp_path / "source"
    for name, data in {
        "good": sklearn_artifact(seed=0),
        "corrupt": b"\x1f\x8b\x08\x00 this is not a gzip stream",
        "garbage-model": make_tar_gz({"model.joblib": b"not a pickle at all"}),
        "escape": make_tar_gz({"../../outside.txt": b"x"}),
    }.items():
        (root / name).mkdir(parents=True)
        (root / name / "model.tar.gz").write_bytes(data)
    return root


@pytest.fixture
def server(source: Path, tmp_path: Path) -> Iterator[ThreadServer]:
    settings = Settings(
        model_source=str(source), cache_dir=tmp_path / "cache", max_body_size=1024, snapshots=False
    )
    with thread_server(settings) as srv:
        yield srv


def invoke(url: str, target: str | None, body: bytes = ROW, **headers: str) -> httpx.Response:
    sent = {"Content-Type": "text/csv", **headers}
    if target is not None:
        sent["X-Amzn-SageMaker-Target-Model"] = target
    return httpx.post(
        f"{url}/endpoints/default/invocations", content=body, headers=sent, timeout=60
    )


def assert_error(response: httpx.Response, status: int, code: str, text: str = "") -> None:
    assert response.status_code == status, response.text
    assert response.headers["x-amzn-errortype"] == code
    body = response.json()
    assert body["__type"] == code
    assert text in body["message"]
    assert response.headers["x-amzn-requestid"]


def still_serving(url: str) -> None:
    assert invoke(url, GOOD).status_code == 200


def cache_files(tmp_path: Path) -> list[Path]:
    """The cache's files but its lock (the server holds it while it runs). The fixture's
    server writes no load snapshots, which land in the background after a first answer."""
    root = tmp_path / "cache"
    return [p for p in root.rglob("*") if p.is_file() and p != root / "lock"]


def test_body_over_the_limit(server: ThreadServer) -> None:
    assert_error(invoke(server.url, GOOD, b"1," * 1000), 400, "ValidationError", "limit")
    still_serving(server.url)


@pytest.mark.parametrize(
    "target",
    [
        "../good/model.tar.gz",
        "/etc/passwd",
        "good/../../x",
        "a//b",
        "./good/model.tar.gz",
        "x" * 1025,
        "a\\b",
        "good/",
    ],
)
def test_bad_target_models_touch_nothing(server: ThreadServer, tmp_path: Path, target: str) -> None:
    assert_error(invoke(server.url, target), 400, "ValidationError")
    assert cache_files(tmp_path) == []
    still_serving(server.url)


def test_missing_target_model_header(server: ThreadServer) -> None:
    assert_error(invoke(server.url, None), 400, "ValidationError", "TargetModel")


def test_missing_object_names_the_model(server: ThreadServer) -> None:
    assert_error(
        invoke(server.url, "nobody/model.tar.gz"), 400, "ValidationError", "nobody/model.tar.gz"
    )
    still_serving(server.url)


@pytest.mark.parametrize(
    "target", ["corrupt/model.tar.gz", "garbage-model/model.tar.gz", "escape/model.tar.gz"]
)
def test_broken_artifacts_are_model_errors_and_leave_no_files(
    server: ThreadServer, tmp_path: Path, target: str
) -> None:
    still_serving(server.url)
    before = set(cache_files(tmp_path))
    response = invoke(server.url, target)
    assert_error(response, 424, "ModelError")
    assert response.json()["OriginalStatusCode"] == 500
    assert set(cache_files(tmp_path)) == before
    assert not (tmp_path / "outside.txt").exists()
    still_serving(server.url)


def test_unknown_content_type_is_a_model_error_415(server: ThreadServer) -> None:
    response = invoke(server.url, GOOD, b"\x00\x01", **{"Content-Type": "application/x-nope"})
    assert_error(response, 424, "ModelError")
    assert response.json()["OriginalStatusCode"] == 415
    still_serving(server.url)


def test_unknown_endpoint_and_variant(server: ThreadServer) -> None:
    response = httpx.post(
        f"{server.url}/endpoints/other/invocations",
        content=ROW,
        headers={"X-Amzn-SageMaker-Target-Model": GOOD},
    )
    assert_error(response, 400, "ValidationError", "other")
    assert_error(
        invoke(server.url, GOOD, **{"X-Amzn-SageMaker-Target-Variant": "B"}),
        400,
        "ValidationError",
        "variant",
    )


def test_model_larger_than_the_memory_budget(source: Path, tmp_path: Path) -> None:
    settings = Settings(model_source=str(source), cache_dir=tmp_path / "c", memory_limit=1000)
    with thread_server(settings) as srv:
        assert_error(invoke(srv.url, GOOD), 400, "ValidationError", "memory budget")


def test_model_larger_than_the_disk_budget(source: Path, tmp_path: Path) -> None:
    settings = Settings(model_source=str(source), cache_dir=tmp_path / "c", disk_limit=1000)
    with thread_server(settings) as srv:
        assert_error(invoke(srv.url, GOOD), 503, "ServiceUnavailable", "disk cache")
        files = [p for p in (tmp_path / "c").rglob("*") if p.is_file()]
        assert files == [tmp_path / "c" / "lock"]  # the server's, held while it runs


def test_unreachable_object_store_is_a_clear_bounded_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Nothing listens on this loopback port: every connection is refused.
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    settings = Settings(
        model_source="s3://bucket/models/",
        cache_dir=tmp_path / "c",
        source_timeout=1,
        source_retries=1,
    )
    with thread_server(settings) as srv:
        response = invoke(srv.url, GOOD)
        assert_error(response, 503, "ServiceUnavailable")
        assert response.headers["retry-after"]
        assert srv.endpoint.settings.source_retries == 1

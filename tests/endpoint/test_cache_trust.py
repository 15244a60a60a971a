"""Never the wrong or a stale model: cache identity, overwritten artifacts, torn publishes.

Each test runs a real endpoint (uvicorn on a free loopback port, or ``modelfleet serve`` as a
process) on a folder source and on an S3 source (moto's server over HTTP), with models whose
answer names their version.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelfleet.config import Settings
from tests.artifacts import inference_py_artifact
from tests.s3server import MotoS3
from tests.servers import ProcessServer, metric, process_server, thread_server, wait_until

TARGET = "m.tar.gz"
CONSTANT_MODEL = """
def model_fn(model_dir):
    with open(model_dir + "/value.txt") as f:
        return f.read()

def transform_fn(model, data, content_type, accept):
    return model, "text/plain"
"""


def constant(value: str) -> bytes:
    """A model.tar.gz whose every answer is ``value``."""
    return inference_py_artifact(
        {"inference.py": CONSTANT_MODEL}, extra_files={"value.txt": value.encode()}
    )


def invoke(url: str, target: str = TARGET) -> httpx.Response:
    return httpx.post(
        f"{url}/endpoints/default/invocations",
        content=b"1",
        headers={"Content-Type": "text/csv", "X-Amzn-SageMaker-Target-Model": target},
        timeout=60,
    )


def answer(url: str, target: str = TARGET) -> str:
    response = invoke(url, target)
    assert response.status_code == 200, response.text
    return response.text


class Source:
    """A model source the test can write to: a folder, or a prefix of a moto bucket."""

    def __init__(self, uri: str, put: Any) -> None:
        self.uri = uri
        self.put = put  # put(key, bytes)


@pytest.fixture(params=["folder", "s3"])
def sources(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Source, Source]]:
    """Two distinct model sources of one kind."""
    if request.param == "folder":

        def folder(name: str) -> Source:
            root = tmp_path / name
            root.mkdir()

            def put(key: str, data: bytes) -> None:
                path = root / key
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)

            return Source(str(root), put)

        yield folder("a"), folder("b")
        return
    request.getfixturevalue("aws_env")
    client, bucket = request.getfixturevalue("s3_bucket")

    def prefix(name: str) -> Source:
        def put(key: str, data: bytes) -> None:
            client.put_object(Bucket=bucket, Key=f"{name}/{key}", Body=data)

        return Source(f"s3://{bucket}/{name}/", put)

    yield prefix("a"), prefix("b")


def test_two_sources_sharing_a_cache_folder_never_answer_for_each_other(
    sources: tuple[Source, Source], tmp_path: Path
) -> None:
    a, b = sources
    a.put(TARGET, constant("from-a"))
    b.put(TARGET, constant("from-b"))
    cache = tmp_path / "cache"
    with thread_server(Settings(model_source=a.uri, cache_dir=cache)) as server:
        assert answer(server.url) == "from-a"
    with thread_server(Settings(model_source=b.uri, cache_dir=cache)) as server:
        assert answer(server.url) == "from-b"
        text = httpx.get(f"{server.admin_url}/metrics").text
        assert metric(text, "modelfleet_model_downloads_total") == 1
    # And back: A's entry was kept apart, and is still A's.
    with thread_server(Settings(model_source=a.uri, cache_dir=cache)) as server:
        assert answer(server.url) == "from-a"


def test_an_overwritten_artifact_is_served_after_unload_and_after_restart(
    sources: tuple[Source, Source], tmp_path: Path
) -> None:
    source, _ = sources
    source.put(TARGET, constant("v1"))
    settings = Settings(model_source=source.uri, cache_dir=tmp_path / "cache")
    with thread_server(settings) as server:
        assert answer(server.url) == "v1"
        source.put(TARGET, constant("v2"))
        assert answer(server.url) == "v1"  # loaded: not checked per request
        assert httpx.delete(f"{server.admin_url}/models/{TARGET}").status_code == 200
        assert answer(server.url) == "v2"
        text = httpx.get(f"{server.admin_url}/metrics").text
        assert metric(text, "modelfleet_model_changed_total") == 1
        assert metric(text, "modelfleet_model_downloads_total") == 2
    source.put(TARGET, constant("v3"))
    with thread_server(settings) as server:
        assert answer(server.url) == "v3"


def test_a_restart_loads_unchanged_models_from_disk_with_one_check_each(
    sources: tuple[Source, Source], tmp_path: Path
) -> None:
    source, _ = sources
    for i in range(3):
        source.put(f"m{i}/model.tar.gz", constant(f"model-{i}"))
    settings = Settings(model_source=source.uri, cache_dir=tmp_path / "cache")
    with thread_server(settings) as server:
        for i in range(3):
            assert answer(server.url, f"m{i}/model.tar.gz") == f"model-{i}"
    with thread_server(settings) as server:
        for i in range(3):
            assert answer(server.url, f"m{i}/model.tar.gz") == f"model-{i}"
        text = httpx.get(f"{server.admin_url}/metrics").text
        assert metric(text, "modelfleet_model_downloads_total") == 0
        assert metric(text, "modelfleet_model_revalidations_total") == 3
        assert metric(text, "modelfleet_model_stale_serves_total") == 0


def test_a_model_deleted_from_the_source_is_gone_after_its_unload(tmp_path: Path) -> None:
    root = tmp_path / "source"
    (root / "m").mkdir(parents=True)
    (root / "m" / "model.tar.gz").write_bytes(constant("v1"))
    cache = tmp_path / "cache"
    with thread_server(Settings(model_source=str(root), cache_dir=cache)) as server:
        assert answer(server.url, "m/model.tar.gz") == "v1"
        (root / "m" / "model.tar.gz").unlink()
        assert httpx.delete(f"{server.admin_url}/models/m/model.tar.gz").status_code == 200
        response = invoke(server.url, "m/model.tar.gz")
        assert response.status_code == 400
        assert response.headers["x-amzn-ErrorType"] == "ValidationError"
        assert "Could not find model 'm/model.tar.gz'" in response.json()["message"]
        assert server.manager.disk.keys() == []


def test_an_unreachable_source_serves_the_cached_copy_and_counts_it(tmp_path: Path) -> None:
    moto = MotoS3().start()
    try:
        import boto3

        client = boto3.client(
            "s3",
            endpoint_url=moto.url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )
        client.create_bucket(Bucket="models")
        client.put_object(Bucket="models", Key=TARGET, Body=constant("cached"))
        env = {
            "AWS_ENDPOINT_URL": moto.url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1",
        }
        args = [
            "--model-source",
            "s3://models/",
            "--cache-dir",
            str(tmp_path / "cache"),
        ]
        env["MODELFLEET_SOURCE_RETRIES"] = "0"
        env["MODELFLEET_SOURCE_TIMEOUT"] = "2"
        with process_server(args, env=env, log=tmp_path / "server.log") as server:
            assert answer(server.url) == "cached"
            assert httpx.delete(f"{server.admin_url}/models/{TARGET}").status_code == 200
            moto.stop()  # the source is gone: connection refused
            assert answer(server.url) == "cached"
            text = httpx.get(f"{server.admin_url}/metrics").text
            assert metric(text, "modelfleet_model_stale_serves_total") == 1
            assert metric(text, "modelfleet_model_downloads_total") == 1
    finally:
        moto.stop()


def test_revalidate_interval_swaps_a_loaded_model_without_a_failed_request(
    tmp_path: Path,
) -> None:
    root = tmp_path / "source"
    root.mkdir()
    (root / TARGET).write_bytes(constant("v1"))
    settings = Settings(
        model_source=str(root), cache_dir=tmp_path / "cache", revalidate_interval=0.2
    )
    with thread_server(settings) as server:
        assert answer(server.url) == "v1"
        answers: list[tuple[int, str]] = []
        stop = threading.Event()

        def client() -> None:
            with httpx.Client(base_url=server.url, timeout=60) as http:
                while not stop.is_set() and len(answers) < 20_000:
                    response = http.post(
                        "/endpoints/default/invocations",
                        content=b"1",
                        headers={
                            "Content-Type": "text/csv",
                            "X-Amzn-SageMaker-Target-Model": TARGET,
                        },
                    )
                    answers.append((response.status_code, response.text))

        thread = threading.Thread(target=client)
        thread.start()
        try:
            wait_until(lambda: len(answers) > 20, "requests answered by v1")
            (root / TARGET).write_bytes(constant("v2"))
            wait_until(lambda: answers[-1][1] == "v2", "the new version answering")
        finally:
            stop.set()
            thread.join(timeout=60)
        assert {status for status, _ in answers} == {200}
        seen = [text for _, text in answers]
        first_v2 = seen.index("v2")
        assert set(seen[:first_v2]) == {"v1"}
        assert set(seen[first_v2:]) == {"v2"}


@pytest.mark.parametrize("fleet", [[], ["--instances", "2"]], ids=["one-process", "a-fleet-of-2"])
def test_a_second_live_server_on_one_cache_folder_refuses_to_start(
    tmp_path: Path, fleet: list[str]
) -> None:
    """A single server holds its cache folder; with --instances N the router holds the folder
    of its instances' folders."""
    root = tmp_path / "source"
    root.mkdir()
    cache = tmp_path / "cache"
    args = ["--model-source", str(root), "--cache-dir", str(cache), *fleet]
    with process_server(args, log=tmp_path / "first.log") as first:
        second = ProcessServer(args, log=tmp_path / "second.log")
        try:
            with pytest.raises(RuntimeError, match="server exited early") as failed:
                second.start()
        finally:
            second.stop()  # (started only if the lock failed to refuse it)
        message = str(failed.value)
        assert (
            f"cannot start: The disk cache folder {cache} is in use by another modelfleet "
            f"server (PID {first.pid}); give each server its own --cache-dir." in message
        )


def test_an_entry_torn_by_a_crash_is_downloaded_again(tmp_path: Path) -> None:
    root = tmp_path / "source"
    root.mkdir()
    (root / TARGET).write_bytes(constant("whole"))
    cache = tmp_path / "cache"
    args = ["--model-source", str(root), "--cache-dir", str(cache)]
    server = ProcessServer(args, log=tmp_path / "first.log").start()
    try:
        assert answer(server.url) == "whole"
    finally:
        assert server.proc is not None
        os.kill(server.pid, signal.SIGKILL)  # no clean stop
        server.proc.wait(timeout=30)
    # As a power cut may leave it: the published file cut short.
    (value,) = (cache / "models").glob("*/artifact/value.txt")
    value.write_bytes(b"wh")
    with process_server(args, log=tmp_path / "second.log") as again:
        assert answer(again.url) == "whole"
        text = httpx.get(f"{again.admin_url}/metrics").text
        assert metric(text, "modelfleet_model_downloads_total") == 1
    # A clean stop means no verification: the next start trusts its files.
    assert (cache / "lock").read_text() == "clean\n"

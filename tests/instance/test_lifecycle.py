"""Restart on the same cache folder, and ModelCacheSetting=Disabled."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from modelfleet.config import Settings
from tests.artifacts import sklearn_artifact
from tests.servers import metric, thread_server

ROW = b"0,1,2,3,4,5,6,7,8,9"


def make_source(root: Path, count: int) -> Path:
    for i in range(count):
        folder = root / f"model-{i}"
        folder.mkdir(parents=True)
        (folder / "model.tar.gz").write_bytes(sklearn_artifact(seed=i))
    return root


def invoke(url: str, target: str) -> httpx.Response:
    return httpx.post(
        f"{url}/endpoints/default/invocations",
        content=ROW,
        headers={"Content-Type": "text/csv", "X-Amzn-SageMaker-Target-Model": target},
        timeout=60,
    )


def test_a_restart_does_not_serve_models_deleted_from_the_source(tmp_path: Path) -> None:
    """(Unchanged models are served from disk after a restart: tests/endpoint/test_cache_trust.)"""
    source = make_source(tmp_path / "source", 3)
    settings = Settings(model_source=str(source), cache_dir=tmp_path / "cache")
    with thread_server(settings) as first:
        for i in range(3):
            assert invoke(first.url, f"model-{i}/model.tar.gz").status_code == 200
        assert (
            metric(httpx.get(f"{first.admin_url}/metrics").text, "modelfleet_model_downloads_total")
            == 3
        )
    # Take the artifacts out of the source: a restart must not serve what the source deleted.
    for i in range(3):
        (source / f"model-{i}" / "model.tar.gz").unlink()
    with thread_server(settings) as second:
        for i in range(3):
            response = invoke(second.url, f"model-{i}/model.tar.gz")
            assert response.status_code == 400, response.text
            assert "Could not find model" in response.json()["message"]
        text = httpx.get(f"{second.admin_url}/metrics").text
        assert metric(text, "modelfleet_model_downloads_total") == 0
        assert metric(text, "modelfleet_model_loading_time_seconds_count") == 0
        assert second.manager.disk.keys() == []


def test_model_cache_disabled_unloads_and_deletes_after_each_call(tmp_path: Path) -> None:
    source = make_source(tmp_path / "source", 2)
    cache = tmp_path / "cache"
    settings = Settings(model_source=str(source), cache_dir=cache, model_cache="disabled")
    with thread_server(settings) as server:
        for i in (0, 1, 0):
            assert invoke(server.url, f"model-{i}/model.tar.gz").status_code == 200
            # Unloading is asynchronous: poll, bounded in count and time.
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                text = httpx.get(f"{server.admin_url}/metrics").text
                files = [p for p in (cache / "models").rglob("*") if p.is_file()]
                if metric(text, "modelfleet_loaded_model_count") == 0 and not files:
                    break
                time.sleep(0.02)
            assert metric(text, "modelfleet_loaded_model_count") == 0
            assert files == []
        text = httpx.get(f"{server.admin_url}/metrics").text
        assert metric(text, "modelfleet_model_downloads_total") == 3
        assert metric(text, "modelfleet_model_unloading_time_seconds_count") == 3

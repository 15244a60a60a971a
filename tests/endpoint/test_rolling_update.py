"""A rolling update under load: change a variant in the config file, send SIGHUP."""

from __future__ import annotations

import os
import signal
import textwrap
import threading
import time
from pathlib import Path

import httpx

from tests.artifacts import features, sklearn_artifact
from tests.servers import keep_invoking, process_server

ROW = ",".join(f"{v:.4f}" for v in features(1, 1, 4)[0]).encode()
MODELS = [f"m{i}/model.tar.gz" for i in range(4)]


def config_text(source: Path, cache: Path, memory: str, instances: int) -> str:
    return textwrap.dedent(
        f"""
        model_source = "{source}"
        cache_dir = "{cache}"

        [[endpoints]]
        name = "default"
        [[endpoints.variants]]
        name = "main"
        instances = {instances}
        memory_limit = "{memory}"
        """
    )


def test_a_rolling_update_under_load_fails_no_request(tmp_path: Path) -> None:
    source = tmp_path / "source"
    for index, name in enumerate(MODELS):
        (source / name).parent.mkdir(parents=True)
        (source / name).write_bytes(sklearn_artifact(seed=index, n_features=4, n_trees=2))
    config = tmp_path / "fleet.toml"
    config.write_text(config_text(source, tmp_path / "cache", "256MiB", 2))
    statuses: list[int] = []
    stop = threading.Event()
    with process_server(["--config", str(config)], log=tmp_path / "server.log") as server:

        def drive() -> None:
            keep_invoking(server.url, MODELS, ROW, statuses, stop)

        def view() -> list[dict[str, object]]:
            listed: list[dict[str, object]] = httpx.get(f"{server.url}/admin/instances").json()[
                "instances"
            ]
            return listed

        before = {i["pid"] for i in view()}
        clients = [threading.Thread(target=drive) for _ in range(4)]
        for client in clients:
            client.start()
        time.sleep(1.0)
        config.write_text(config_text(source, tmp_path / "cache", "128MiB", 3))
        os.kill(server.pid, signal.SIGHUP)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            now = view()
            if len(now) == 3 and all(
                i["state"] == "up" and i.get("memory_limit_bytes") == 128 * 1024**2 for i in now
            ):
                break
            time.sleep(0.2)
        time.sleep(0.5)  # some traffic on the new instances
        stop.set()
        for client in clients:
            client.join(30)
        after = view()
    assert len(after) == 3
    assert all(i["memory_limit_bytes"] == 128 * 1024**2 for i in after)
    assert not before & {i["pid"] for i in after}  # every instance was replaced
    assert len(statuses) > 100
    assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}


def test_a_rollout_whose_instances_do_not_come_up_stops_and_keeps_serving(
    tmp_path: Path,
) -> None:
    source = tmp_path / "source"
    (source / "m0").mkdir(parents=True)
    (source / MODELS[0]).write_bytes(sklearn_artifact(seed=0, n_features=4, n_trees=2))
    config = tmp_path / "fleet.toml"
    config.write_text(config_text(source, tmp_path / "cache", "256MiB", 2))
    with process_server(["--config", str(config)], log=tmp_path / "server.log") as server:
        before = {i["pid"] for i in httpx.get(f"{server.url}/admin/instances").json()["instances"]}
        # a model source that does not exist: new instances cannot start
        config.write_text(config_text(tmp_path / "missing", tmp_path / "cache", "256MiB", 2))
        answer = httpx.post(f"{server.url}/admin/reload", timeout=120)
        assert answer.status_code == 503
        assert "did not come up" in answer.json()["message"]
        listed = httpx.get(f"{server.url}/admin/instances").json()["instances"]
        assert {i["pid"] for i in listed} == before  # the old instances still serve
        assert all(i["state"] == "up" for i in listed)
        response = httpx.post(
            f"{server.url}/endpoints/default/invocations",
            content=ROW,
            headers={"X-Amzn-SageMaker-Target-Model": MODELS[0], "Content-Type": "text/csv"},
        )
        assert response.status_code == 200

"""Autoscaling a variant on invocations per instance per minute, with real instance processes."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx

from tests.artifacts import features, sklearn_artifact
from tests.servers import keep_invoking, process_server

ROW = ",".join(f"{v:.4f}" for v in features(1, 1, 4)[0]).encode()
MODELS = [f"m{i}/model.tar.gz" for i in range(6)]


def count(server_url: str) -> tuple[int, int]:
    """(instances up, all instances) of the endpoint."""
    listed = httpx.get(f"{server_url}/admin/instances").json()["instances"]
    return sum(1 for i in listed if i["state"] == "up"), len(listed)


def test_a_load_step_scales_out_and_back_in_without_failures(tmp_path: Path) -> None:
    source = tmp_path / "source"
    for index, name in enumerate(MODELS):
        (source / name).parent.mkdir(parents=True)
        (source / name).write_bytes(sklearn_artifact(seed=index, n_features=4, n_trees=2))
    args = ["--model-source", str(source), "--cache-dir", str(tmp_path / "cache")]
    args += ["--instances", "1", "--min-instances", "1", "--max-instances", "3"]
    args += ["--autoscale-target", "300", "--scale-out-cooldown", "1"]
    args += ["--scale-in-cooldown", "1", "--log-level", "info"]
    env = {"MODELFLEET_AUTOSCALE_INTERVAL": "0.5", "MODELFLEET_AUTOSCALE_WINDOW": "2"}
    statuses: list[int] = []
    with process_server(args, env=env, log=tmp_path / "server.log") as server:
        assert count(server.url) == (1, 1)

        def drive(stop: threading.Event, pause_s: float) -> None:
            keep_invoking(server.url, MODELS, ROW, statuses, stop, pause_s=pause_s, limit=20_000)

        # A load step: 4 clients without pause, far above 300 per instance per minute.
        stop = threading.Event()
        clients = [threading.Thread(target=drive, args=(stop, 0.0)) for _ in range(4)]
        for client in clients:
            client.start()
        deadline = time.monotonic() + 60
        while count(server.url) != (3, 3) and time.monotonic() < deadline:
            time.sleep(0.2)
        scaled_out = count(server.url)
        stop.set()
        for client in clients:
            client.join(30)
        assert scaled_out == (3, 3)

        # A trickle (about 3 a second, 180 a minute): one instance is enough again.
        stop = threading.Event()
        trickle = threading.Thread(target=drive, args=(stop, 0.3))
        trickle.start()
        deadline = time.monotonic() + 60
        while count(server.url) != (1, 1) and time.monotonic() < deadline:
            time.sleep(0.2)
        scaled_in = count(server.url)
        stop.set()
        trickle.join(30)
        assert scaled_in == (1, 1)
    assert len(statuses) > 100
    assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}


def test_autoscaling_bounds_leave_the_instances_alone(tmp_path: Path) -> None:
    source = tmp_path / "source"
    (source / "m0").mkdir(parents=True)
    (source / MODELS[0]).write_bytes(sklearn_artifact(seed=0, n_features=4, n_trees=2))
    args = ["--model-source", str(source), "--cache-dir", str(tmp_path / "cache")]
    args += ["--instances", "2", "--min-instances", "2", "--max-instances", "3"]
    with process_server(args, log=tmp_path / "server.log") as server:
        assert count(server.url) == (2, 2)  # each instance runs with min = max = 1 of its own
        response = httpx.post(
            f"{server.url}/endpoints/default/invocations",
            content=ROW,
            headers={"X-Amzn-SageMaker-Target-Model": MODELS[0], "Content-Type": "text/csv"},
        )
        assert response.status_code == 200

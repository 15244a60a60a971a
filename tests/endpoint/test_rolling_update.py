"""A rolling update under load: change a variant in the config file, send SIGHUP."""

from __future__ import annotations

import os
import signal
import textwrap
from pathlib import Path

import httpx
import pytest

from tests.artifacts import features, sklearn_artifact
from tests.servers import invoking, process_server, wait_until

pytestmark = pytest.mark.slow  # real `modelfleet serve` processes

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
    with process_server(["--config", str(config)], log=tmp_path / "server.log") as server:

        def view() -> list[dict[str, object]]:
            listed: list[dict[str, object]] = httpx.get(
                f"{server.admin_url}/admin/instances"
            ).json()["instances"]
            return listed

        def rolled_out() -> bool:
            now = view()
            return len(now) == 3 and all(
                i["state"] == "up" and i.get("memory_limit_bytes") == 128 * 1024**2 for i in now
            )

        before = {i["pid"] for i in view()}
        with invoking(server.url, MODELS, ROW, statuses, clients=4):
            wait_until(lambda: len(statuses) >= 100, "traffic before the update")
            config.write_text(config_text(source, tmp_path / "cache", "128MiB", 3))
            os.kill(server.pid, signal.SIGHUP)
            wait_until(rolled_out, "the rolling update")
            served_before = len(statuses)
            wait_until(lambda: len(statuses) >= served_before + 100, "traffic after the update")
        after = view()
    assert len(after) == 3
    assert all(i["memory_limit_bytes"] == 128 * 1024**2 for i in after)
    assert not before & {i["pid"] for i in after}  # every instance was replaced
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
        before = {
            i["pid"] for i in httpx.get(f"{server.admin_url}/admin/instances").json()["instances"]
        }
        # a model source that does not exist: new instances cannot start
        config.write_text(config_text(tmp_path / "missing", tmp_path / "cache", "256MiB", 2))
        answer = httpx.post(f"{server.admin_url}/admin/reload", timeout=120)
        assert answer.status_code == 503
        assert "did not come up" in answer.json()["message"]
        listed = httpx.get(f"{server.admin_url}/admin/instances").json()["instances"]
        assert {i["pid"] for i in listed} == before  # the old instances still serve
        assert all(i["state"] == "up" for i in listed)
        response = httpx.post(
            f"{server.url}/endpoints/default/invocations",
            content=ROW,
            headers={"X-Amzn-SageMaker-Target-Model": MODELS[0], "Content-Type": "text/csv"},
        )
        assert response.status_code == 200

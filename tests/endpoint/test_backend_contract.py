"""One contract for every backend that runs instances in processes of their own.

Each test runs a real ``modelfleet serve`` process twice: with the ``local`` backend (instance
subprocesses) and with the ``ray`` backend (instance actors on the test's multi-node Ray
cluster, see :mod:`tests.raycluster`). Same requests, same expectations: routing to holders,
boto3's ``invoke_endpoint`` unchanged, hot-model copies and their removal, failover when an
instance process is killed, production variants, a rolling update with no failed request. When
the server stops, every instance process it started must be gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import numpy as np
import pytest

from tests.artifacts import features, inference_py_artifact, sklearn_source, train_sklearn
from tests.servers import (
    PATIENCE_S,
    ProcessServer,
    invoking,
    process_gone,
    process_server,
    wait_until,
)
from tests.servers import fleet_instances as instances

pytestmark = pytest.mark.slow

N_FEATURES = 4
MODELS = [f"m{i}/model.tar.gz" for i in range(6)]
ROWS = features(3, 2, N_FEATURES)
BODY = "\n".join(",".join(f"{v:.6f}" for v in row) for row in ROWS).encode()
SLOW_MODEL = """
import time

def model_fn(model_dir):
    return None

def input_fn(data, content_type):
    return data

def predict_fn(data, model):
    time.sleep(0.02)  # 20 ms with the GIL released: the shape of a native kernel
    return [1]

def output_fn(prediction, accept):
    return "[1]"
"""


@pytest.fixture(params=["local", "ray"])
def backend(request: pytest.FixtureRequest) -> list[str]:
    """``serve`` flags for the backend under test (ray: a fleet in its own namespace)."""
    if request.param == "local":
        return []
    from tests.raycluster import serve_args

    cluster = request.getfixturevalue("ray_cluster")
    return serve_args(cluster, f"contract-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return sklearn_source(tmp_path / "source", MODELS, N_FEATURES)


def expected(model: str) -> list[float]:
    """The prediction of ``model`` (sklearn_source seeds each forest by its index)."""
    estimator = train_sklearn(seed=MODELS.index(model), n_features=N_FEATURES, n_trees=2)
    return [float(v) for v in estimator.predict(np.asarray(ROWS))]


@contextlib.contextmanager
def fleet(args: list[str], tmp_path: Path) -> Iterator[ProcessServer]:
    """A serve process; afterwards, every instance process it ran must be gone."""
    seen: set[int] = set()
    log = tmp_path / "server.log"
    with process_server([*args, "--log-level", "warning"], log=log) as server:
        wait_until(lambda: all(i["state"] == "up" for i in instances(server)), "instances up")
        seen.update(i["pid"] for i in instances(server))
        try:
            yield server
        finally:
            seen.update(i["pid"] for i in instances(server) if i["pid"])
    wait_until(lambda: all(process_gone(pid) for pid in seen), "instance processes to end")


def serve_args(source: Path, tmp_path: Path, count: int = 3) -> list[str]:
    args = ["--model-source", str(source), "--cache-dir", str(tmp_path / "cache")]
    return [*args, "--instances", str(count), "--memory-limit", "256MiB"]


def ray_small(backend: list[str]) -> list[str]:
    """Ray actors reserve memory_limit plus this overhead: small, for a small machine."""
    return [*backend, "--ray-memory-overhead", "64MiB"] if backend else backend


def invoke(http: httpx.Client, model: str, **headers: str) -> httpx.Response:
    return http.post(
        "/endpoints/default/invocations",
        content=BODY,
        headers={"X-Amzn-SageMaker-Target-Model": model, "Content-Type": "text/csv", **headers},
    )


def holders(server: ProcessServer, model: str) -> list[str]:
    """Instances that list ``model`` as loaded (ListModels on each)."""
    found = []
    for instance in instances(server):
        listed = httpx.get(f"{instance['url']}/models").json()["models"]
        if any(entry["modelName"] == model for entry in listed):
            found.append(instance["id"])
    return found


def test_boto3_invoke_and_each_model_on_one_instance(
    backend: list[str], source: Path, tmp_path: Path
) -> None:
    with fleet([*serve_args(source, tmp_path), *ray_small(backend)], tmp_path) as server:
        runtime = boto3.client(
            "sagemaker-runtime",
            endpoint_url=server.url,
            region_name="us-east-1",
            aws_access_key_id="k",
            aws_secret_access_key="s",
        )
        for _ in range(3):
            for model in MODELS:
                answer = runtime.invoke_endpoint(
                    EndpointName="default",
                    Body=BODY,
                    ContentType="text/csv",
                    TargetModel=model,
                )
                assert answer["InvokedProductionVariant"] == "AllTraffic"
                assert json.loads(answer["Body"].read()) == pytest.approx(expected(model))
        loaded = [m["name"] for i in instances(server) for m in i["loaded"]]
        assert sorted(loaded) == sorted(MODELS)  # each model on exactly one instance
        assert len({i["id"] for i in instances(server) if i["loaded"]}) >= 2  # spread


def test_a_hot_model_is_copied_and_the_copies_go_away(backend: list[str], tmp_path: Path) -> None:
    source = tmp_path / "source"
    (source / "hot").mkdir(parents=True)
    model = "hot/model.tar.gz"
    (source / model).write_bytes(inference_py_artifact({"inference.py": SLOW_MODEL}))
    args = [*serve_args(source, tmp_path), "--copy-idle-timeout", "1", *ray_small(backend)]
    with fleet(args, tmp_path) as server:
        statuses: list[int] = []

        async def drive(count: int, concurrency: int) -> None:
            async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
                left = [count]

                async def worker() -> None:
                    while left[0] > 0:
                        left[0] -= 1
                        response = await http.post(
                            "/endpoints/default/invocations",
                            content=b"x",
                            headers={"X-Amzn-SageMaker-Target-Model": model},
                        )
                        statuses.append(response.status_code)

                await asyncio.gather(*(worker() for _ in range(concurrency)))

        for _ in range(10):  # more rounds until it has spread, if the machine is slow
            asyncio.run(drive(300, 24))
            if len(holders(server, model)) >= 2:
                break
        assert set(statuses) == {200}
        assert len(holders(server, model)) >= 2

        with httpx.Client(base_url=server.url) as http:  # a trickle: one instance is enough

            def one_holder_left() -> bool:
                response = http.post(
                    "/endpoints/default/invocations",
                    content=b"x",
                    headers={"X-Amzn-SageMaker-Target-Model": model},
                )
                assert response.status_code == 200
                return len(holders(server, model)) == 1

            wait_until(one_holder_left, "the idle copies to be unloaded", poll_s=0.2)


def test_an_instance_killed_under_load_fails_no_request(
    backend: list[str], source: Path, tmp_path: Path
) -> None:
    with fleet([*serve_args(source, tmp_path), *ray_small(backend)], tmp_path) as server:
        statuses: list[int] = []
        with invoking(server.url, MODELS, BODY, statuses, clients=4):

            def holding() -> list[dict[str, Any]]:  # the supervisor knows what they hold
                return [i for i in instances(server) if i["prewarm_on_restart"] > 0]

            # An instance that holds models (each model has one home: not every instance
            # need hold one of these six)
            wait_until(lambda: bool(holding()), "the models of an instance to be noted")
            victim = holding()[0]
            os.kill(victim["pid"], signal.SIGKILL)
            wait_until(lambda: process_gone(victim["pid"]), "the killed instance to end")
            count = len(statuses)
            wait_until(lambda: len(statuses) >= count + 100, "requests after the kill")

            def replaced() -> bool:  # started again, and prewarmed with what it held
                again = {i["id"]: i for i in instances(server)}.get(victim["id"])
                return (
                    again is not None
                    and again["state"] == "up"
                    and again["pid"] != victim["pid"]
                    and len(again["loaded"]) >= victim["prewarm_on_restart"]
                )

            wait_until(replaced, "the killed instance to be started again and prewarmed")
        assert statuses
        assert set(statuses) == {200}


VARIANTS = """
memory_limit = "256MiB"
{ray}

[[endpoints]]
name = "default"

[[endpoints.variants]]
name = "blue"
weight = 1
instances = 2
model_source = "{source}"
{extra}

[[endpoints.variants]]
name = "green"
weight = 1
instances = 1
model_source = "{source}"
"""


def config_file(tmp_path: Path, source: Path, backend: list[str], extra: str = "") -> Path:
    ray = ""
    if backend:
        flags = dict(zip(backend[::2], backend[1::2], strict=True))
        ray = (
            f'backend = "ray"\nray_address = "{flags["--ray-address"]}"\n'
            f'ray_namespace = "{flags["--ray-namespace"]}"\nray_memory_overhead = "64MiB"\n'
            # a rolling update starts each new instance before it stops an old one: room
            # for one more than the 3 the fleet has on the 3 one-CPU nodes
            "ray_cpus_per_instance = 0.5"
        )
    path = tmp_path / "fleet.toml"
    path.write_text(VARIANTS.format(source=source, ray=ray, extra=extra))
    return path


def test_variants_share_traffic_and_honour_the_target_variant(
    backend: list[str], source: Path, tmp_path: Path
) -> None:
    path = config_file(tmp_path, source, backend)
    args = ["--config", str(path), "--cache-dir", str(tmp_path / "cache")]
    with fleet(args, tmp_path) as server, httpx.Client(base_url=server.url, timeout=60) as http:
        assert {(i["variant"], i["state"]) for i in instances(server)} == {
            ("blue", "up"),
            ("green", "up"),
        }
        seen = {
            invoke(http, MODELS[k % 6]).headers["x-amzn-invoked-production-variant"]
            for k in range(40)
        }
        assert seen == {"blue", "green"}
        for variant in ("blue", "green"):
            response = invoke(http, MODELS[0], **{"X-Amzn-SageMaker-Target-Variant": variant})
            assert response.status_code == 200
            assert response.headers["x-amzn-invoked-production-variant"] == variant
            assert response.json() == pytest.approx(expected(MODELS[0]))


def test_a_rolling_update_fails_no_request(
    backend: list[str], source: Path, tmp_path: Path
) -> None:
    path = config_file(tmp_path, source, backend)
    args = ["--config", str(path), "--cache-dir", str(tmp_path / "cache")]
    with fleet(args, tmp_path) as server:
        before = {i["id"]: i["pid"] for i in instances(server) if i["variant"] == "blue"}
        statuses: list[int] = []
        with invoking(server.url, MODELS, BODY, statuses, clients=4):
            wait_until(lambda: len(statuses) >= 30, "requests before the update")
            config_file(tmp_path, source, backend, extra='memory_limit = "200MiB"')
            response = httpx.post(f"{server.admin_url}/admin/reload", timeout=PATIENCE_S)
            assert response.status_code == 200, response.text
            assert response.json()["changes"] == ["default/blue: instances replaced"]
            count = len(statuses)
            wait_until(lambda: len(statuses) >= count + 30, "requests after the update")
        blue = [i for i in instances(server) if i["variant"] == "blue"]
        assert len(blue) == 2
        assert all(i["state"] == "up" for i in blue)
        assert not set(before.values()) & {i["pid"] for i in blue}  # every one replaced
        assert {i["memory_limit_bytes"] for i in blue} == {200 * 1024 * 1024}
        assert statuses
        assert set(statuses) == {200}

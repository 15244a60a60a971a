"""The ``ray`` backend on a real multi-node Ray cluster (:mod:`tests.raycluster`: a head with
no CPUs and 3 one-CPU worker nodes, all on 127.0.0.1).

Each test runs ``modelfleet serve --backend ray`` as a process of its own that joins the
cluster, in a Ray namespace of its own: instances spread over nodes; a node removed without
grace under load fails no request and its instance comes back, prewarmed, on a surviving node;
the controller killed under load fails no request and finds the same instance processes again;
two routers place 1,000 models alike; autoscaling follows load and reports instances that wait
for room. The figures the issue asks for are printed (``pytest -s``).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.artifacts import features, sklearn_artifact, sklearn_source
from tests.raycluster import RayCluster, serve_args
from tests.servers import (
    ProcessServer,
    free_port,
    invoking,
    metric,
    process_gone,
    process_server,
    wait_until,
)
from tests.servers import fleet_instances as instances

pytestmark = [pytest.mark.slow, pytest.mark.ray]

N_FEATURES = 4
ROW = ",".join(f"{v:.4f}" for v in features(1, 1, N_FEATURES)[0]).encode()


def namespace() -> str:
    return f"ray-{uuid.uuid4().hex[:8]}"


@contextlib.contextmanager
def ray_fleet(
    cluster: RayCluster, args: list[str], tmp_path: Path, *, env: dict[str, str] | None = None
) -> Iterator[tuple[ProcessServer, str]]:
    """``serve --backend ray`` with ``args``; yields it and its namespace. Afterwards every
    instance process it ran must be gone."""
    ns = namespace()
    seen: set[int] = set()
    flags = [*serve_args(cluster, ns), "--memory-limit", "256MiB", "--ray-memory-overhead", "64MiB"]
    flags += ["--cache-dir", str(tmp_path / "cache"), "--log-level", "warning", *args]
    with process_server(flags, log=tmp_path / "server.log", env=env) as server:
        wait_until(lambda: all(i["state"] == "up" for i in instances(server)), "every instance up")
        seen.update(i["pid"] for i in instances(server))
        try:
            yield server, ns
        finally:
            seen.update(i["pid"] for i in instances(server) if i["pid"])
    wait_until(lambda: all(process_gone(pid) for pid in seen), "instance processes to end")


def invoke(http: httpx.Client, model: str) -> int:
    response = http.post(
        "/endpoints/default/invocations",
        content=ROW,
        headers={"X-Amzn-SageMaker-Target-Model": model, "Content-Type": "text/csv"},
    )
    return response.status_code


def lookups(server: ProcessServer) -> dict[tuple[str, int], tuple[int, int]]:
    """Per (instance, pid): its (hits, misses) so far."""
    return {(i["id"], i["pid"]): (i.get("hits", 0), i.get("misses", 0)) for i in instances(server)}


def hit_ratio(before: dict[Any, tuple[int, int]], after: dict[Any, tuple[int, int]]) -> float:
    """Hits over lookups between two :func:`lookups`, over the processes seen in both."""
    hits = misses = 0
    for key, (h, m) in after.items():
        h0, m0 = before.get(key, (0, 0))
        hits, misses = hits + h - h0, misses + m - m0
    return hits / max(hits + misses, 1)


def test_three_instances_land_on_three_nodes(ray_cluster: RayCluster, tmp_path: Path) -> None:
    source = sklearn_source(tmp_path / "source", ["m0/model.tar.gz"], N_FEATURES)
    args = ["--model-source", str(source), "--instances", "3"]
    with ray_fleet(ray_cluster, args, tmp_path) as (server, ns):
        nodes = [i["node"] for i in instances(server)]
        assert len(set(nodes)) == 3
        assert set(nodes) == {ray_cluster.node_id(n) for n in ray_cluster.workers}
        # the controller lives on the head node, which outlives the workers
        import ray

        from modelfleet.backends.ray import CONTROLLER_NAME

        controller = ray.get_actor(CONTROLLER_NAME, namespace=ns)
        placed = ray._private.state.actors(actor_id=controller._actor_id.hex())
        assert placed["Address"]["NodeID"] == ray_cluster.head_node_id()
        with httpx.Client(base_url=server.url, timeout=60) as http:
            assert invoke(http, "m0/model.tar.gz") == 200


def test_a_node_removed_under_load_fails_no_request(
    ray_cluster: RayCluster, tmp_path: Path
) -> None:
    models = [f"m{i}/model.tar.gz" for i in range(30)]
    source = sklearn_source(tmp_path / "source", models, N_FEATURES)
    # half a CPU each: the survivors have room for the lost instance
    args = ["--model-source", str(source), "--instances", "3", "--ray-cpus-per-instance", "0.5"]
    env = {"MODELFLEET_HANG_TIMEOUT": "3"}  # silent for 3 s: replaced (default 30 s)
    draw = random.Random(7)
    trace = [draw.choice(models) for _ in range(200)]
    with ray_fleet(ray_cluster, args, tmp_path, env=env) as (server, _):
        with httpx.Client(base_url=server.url, timeout=60) as http:
            for model in models:  # every model loaded at its home
                assert invoke(http, model) == 200
            wait_until(  # the controller notes what each instance holds (its restart's prewarm)
                lambda: all(
                    i["prewarm_on_restart"] == len(i["loaded"]) > 0 for i in instances(server)
                ),
                "the controller to note the models each instance holds",
            )
            start = lookups(server)
            assert {invoke(http, m) for m in trace} == {200}
            ratio_before = hit_ratio(start, lookups(server))
        victim = max(instances(server), key=lambda i: len(i["loaded"]))
        node = next(n for n in ray_cluster.workers if ray_cluster.node_id(n) == victim["node"])
        statuses: list[int] = []
        done = threading.Event()

        def load() -> None:  # 1,000 requests at concurrency 8
            left = [1000]
            lock = threading.Lock()

            def client() -> None:
                with httpx.Client(base_url=server.url, timeout=120) as http:
                    while True:
                        with lock:
                            if left[0] == 0:
                                return
                            left[0] -= 1
                        statuses.append(invoke(http, draw.choice(models)))

            threads = [threading.Thread(target=client) for _ in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(300)
            done.set()

        loader = threading.Thread(target=load)
        loader.start()
        try:
            wait_until(lambda: len(statuses) >= 150, "requests before the fault")
            removed_at = time.monotonic()
            ray_cluster.remove_worker(node)

            def replaced() -> bool:
                again = {i["id"]: i for i in instances(server)}.get(victim["id"])
                return (
                    again is not None
                    and again["state"] == "up"
                    and again["pid"] != victim["pid"]
                    and again["node"] != victim["node"]
                )

            wait_until(replaced, "the lost instance replaced on a surviving node")
            replaced_s = time.monotonic() - removed_at
            loader.join(300)
        finally:
            done.wait(300)
            ray_cluster.add_worker()  # the next tests get 3 workers again
        assert len(statuses) == 1000
        assert set(statuses) == {200}  # zero failed requests
        wait_until(  # prewarmed with what its predecessor held
            lambda: {i["id"]: i for i in instances(server)}[victim["id"]]["loaded"] != [],
            "the replacement to be prewarmed",
        )
        with httpx.Client(base_url=server.url, timeout=60) as http:
            start = lookups(server)
            assert {invoke(http, m) for m in trace} == {200}
            ratio_after = hit_ratio(start, lookups(server))
        print(
            f"\nnode removed: replaced in {replaced_s:.1f} s (hang_timeout 3 s); hit ratio of"
            f" 200 requests {ratio_before:.2f} before the fault, {ratio_after:.2f} after"
        )
        assert ratio_after >= 0.9


def controller_pid(ns: str) -> int:
    from modelfleet.backends.rayfleet import controller_pid as pid_of

    return pid_of(ns)


def test_the_controller_killed_under_load_fails_no_request(
    ray_cluster: RayCluster, tmp_path: Path
) -> None:
    models = [f"m{i}/model.tar.gz" for i in range(6)]
    source = sklearn_source(tmp_path / "source", models, N_FEATURES)
    args = ["--model-source", str(source), "--instances", "3"]
    with ray_fleet(ray_cluster, args, tmp_path) as (server, ns):
        before = {i["id"]: i["pid"] for i in instances(server)}
        first = controller_pid(ns)
        statuses: list[int] = []
        with invoking(server.url, models, ROW, statuses, clients=4):
            wait_until(lambda: len(statuses) >= 50, "requests before the kill")
            os.kill(first, signal.SIGKILL)
            wait_until(lambda: process_gone(first), "the controller to end")
            count = len(statuses)
            wait_until(lambda: len(statuses) >= count + 100, "requests while it restarts")

            def restarted() -> bool:
                with contextlib.suppress(Exception):
                    return controller_pid(ns) != first
                return False

            wait_until(restarted, "the controller to be restarted")
            count = len(statuses)
            wait_until(lambda: len(statuses) >= count + 50, "requests after the restart")
        assert statuses
        assert set(statuses) == {200}
        after = {i["id"]: i["pid"] for i in instances(server)}
        assert after == before  # the same instance processes, found again by name
        assert all(i["state"] == "up" and i["restarts"] == 0 for i in instances(server))


def test_two_routers_place_a_thousand_models_alike(ray_cluster: RayCluster, tmp_path: Path) -> None:
    source = tmp_path / "source"
    artifact = sklearn_artifact(seed=0, n_features=N_FEATURES, n_trees=1)
    models = [f"c{i:04d}/model.tar.gz" for i in range(1000)]
    for model in models:
        (source / model).parent.mkdir(parents=True)
        (source / model).write_bytes(artifact)
    args = ["--model-source", str(source), "--instances", "3"]
    with ray_fleet(ray_cluster, args, tmp_path) as (server, ns):
        port = free_port()
        argv = [sys.executable, "-m", "modelfleet", "router", "--ray-address"]
        argv += [ray_cluster.address, "--ray-namespace", ns, "--port", str(port)]
        log = (tmp_path / "router.log").open("ab")
        router = subprocess.Popen([*argv, "--log-level", "warning"], stdout=log, stderr=log)
        log.close()
        try:
            other = f"http://127.0.0.1:{port}"

            def answers() -> bool:
                with contextlib.suppress(httpx.HTTPError):
                    return httpx.get(f"{other}/ping", timeout=1).status_code == 200
                assert router.poll() is None, (tmp_path / "router.log").read_text()
                return False

            wait_until(answers, "the second router")
            with httpx.Client(base_url=server.url, timeout=60) as first:
                assert {invoke(first, m) for m in models} == {200}
            loaded = lookups(server)
            with httpx.Client(base_url=other, timeout=60) as second:
                assert {invoke(second, m) for m in models} == {200}
            placed = instances(server)
        finally:
            router.send_signal(signal.SIGTERM)
            try:
                router.wait(30)
            except subprocess.TimeoutExpired:
                router.kill()
                router.wait(10)
    # Each model was loaded once, by the instance the first router chose; the second router
    # sent every one of them to that same instance: 1,000 hits, no load anywhere else.
    assert sum(len(i["loaded"]) for i in placed) == 1000
    assert sum(m for _, m in loaded.values()) == 1000
    assert sum(i["misses"] for i in placed) == 1000
    assert sum(i["hits"] for i in placed) == 1000


def test_autoscaling_follows_load_and_reports_instances_waiting_for_room(
    ray_cluster: RayCluster, tmp_path: Path
) -> None:
    models = [f"m{i}/model.tar.gz" for i in range(6)]
    source = sklearn_source(tmp_path / "source", models, N_FEATURES)
    # one CPU an instance on 3 one-CPU nodes: a 4th instance has no room
    args = ["--model-source", str(source), "--instances", "1", "--min-instances", "1"]
    args += ["--max-instances", "4", "--autoscale-target", "60", "--scale-out-cooldown", "0"]
    args += ["--scale-in-cooldown", "1"]
    env = {"MODELFLEET_AUTOSCALE_INTERVAL": "1", "MODELFLEET_AUTOSCALE_WINDOW": "3"}
    with ray_fleet(ray_cluster, args, tmp_path, env=env) as (server, _):
        statuses: list[int] = []
        states: list[str] = []
        with invoking(server.url, models, ROW, statuses, clients=4):

            def grown() -> bool:
                now = [i["state"] for i in instances(server)]
                states.extend(now)
                return now.count("up") == 3 and "pending" in now

            wait_until(grown, "3 instances up and a 4th waiting for room")
            status = subprocess.run(
                [sys.executable, "-m", "modelfleet", "status", "--url", server.admin_url],
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            )
            assert "pending" in status.stdout
        wait_until(lambda: len(instances(server)) == 1, "the fleet back to 1 instance")
        assert statuses
        assert set(statuses) == {200}


def test_an_instance_replaced_on_its_node_reuses_that_node_disk_cache(
    ray_cluster: RayCluster, tmp_path: Path
) -> None:
    models = [f"m{i}/model.tar.gz" for i in range(9)]
    source = sklearn_source(tmp_path / "source", models, N_FEATURES)
    args = ["--model-source", str(source), "--instances", "3"]  # one CPU each: nodes full
    with ray_fleet(ray_cluster, args, tmp_path) as (server, _):
        with httpx.Client(base_url=server.url, timeout=60) as http:
            assert {invoke(http, m) for m in models} == {200}
        wait_until(
            lambda: all(i["prewarm_on_restart"] == len(i["loaded"]) for i in instances(server)),
            "the controller to note the models each instance holds",
        )
        victim = max(instances(server), key=lambda i: len(i["loaded"]))
        assert victim["loaded"]
        os.kill(victim["pid"], signal.SIGKILL)

        def back() -> dict[str, Any] | None:
            again = {i["id"]: i for i in instances(server)}.get(victim["id"])
            if again is None or again["state"] != "up" or again["pid"] == victim["pid"]:
                return None
            return again if len(again["loaded"]) == len(victim["loaded"]) else None

        wait_until(lambda: back() is not None, "the replacement up and prewarmed")
        again = back()
        assert again is not None
        assert again["node"] == victim["node"]  # the only node with a free CPU
        text = httpx.get(f"{again['url']}/metrics", timeout=30).text
        assert metric(text, "modelfleet_model_downloads_total") == 0  # read from the disk
        assert sorted(m["name"] for m in again["loaded"]) == sorted(
            m["name"] for m in victim["loaded"]
        )


def test_a_per_node_cap_spreads_instances_and_leaves_the_rest_waiting(
    ray_cluster: RayCluster, tmp_path: Path
) -> None:
    source = sklearn_source(tmp_path / "source", ["m0/model.tar.gz"], N_FEATURES)
    ns = namespace()
    # room for 2 instances a node by CPU, but at most 1 a node: the 4th waits for a node
    args = [*serve_args(ray_cluster, ns), "--model-source", str(source), "--instances", "4"]
    args += ["--ray-cpus-per-instance", "0.5", "--ray-max-instances-per-node", "1"]
    args += ["--memory-limit", "256MiB", "--ray-memory-overhead", "64MiB"]
    args += ["--cache-dir", str(tmp_path / "cache"), "--log-level", "warning"]
    seen: set[int] = set()
    with process_server(args, log=tmp_path / "server.log") as server:

        def placed() -> bool:
            now = instances(server)
            seen.update(i["pid"] for i in now if i["pid"])
            return sorted(i["state"] for i in now) == ["pending", "up", "up", "up"]

        wait_until(placed, "3 instances up, one a node, and a 4th pending")
        up = [i for i in instances(server) if i["state"] == "up"]
        assert len({i["node"] for i in up}) == 3
        with httpx.Client(base_url=server.url, timeout=60) as http:
            assert invoke(http, "m0/model.tar.gz") == 200
    wait_until(lambda: all(process_gone(pid) for pid in seen), "instance processes to end")


def test_an_endpoint_of_the_control_plane_runs_updates_and_goes_on_the_fleet(
    ray_cluster: RayCluster, tmp_path: Path
) -> None:
    """CreateEndpoint on a ``--backend ray`` server: its instances are actors of the fleet,
    and a restarted controller keeps them; UpdateEndpoint under load starts the new config's
    instances beside the old ones, moves traffic with no failed request and stops the old;
    DeleteEndpoint stops its instances and the declared endpoint serves on."""
    import boto3

    models = [f"m{i}/model.tar.gz" for i in range(4)]
    source = sklearn_source(tmp_path / "source", models, N_FEATURES)
    # the declared endpoint takes one node's CPU; an ml.t2.medium here is half a CPU
    size = {"memory_limit": "256MiB", "disk_limit": "1GiB", "cpus": 0.5}
    env = {"MODELFLEET_INSTANCE_TYPES": json.dumps({"ml.t2.medium": size})}
    args = ["--model-source", str(source), "--state-dir", str(tmp_path / "state")]
    with ray_fleet(ray_cluster, args, tmp_path, env=env) as (server, ns):
        keys = {"aws_access_key_id": "AKIDRAY", "aws_secret_access_key": "unchecked"}
        sm = boto3.client(
            "sagemaker", endpoint_url=server.admin_url, region_name="us-east-1", **keys
        )
        wait = {"Delay": 0.5, "MaxAttempts": 240}
        sm.create_model(
            ModelName="mme",
            ExecutionRoleArn="arn:aws:iam::000000000000:role/any",
            PrimaryContainer={"Mode": "MultiModel", "ModelDataUrl": str(source)},
        )
        for config, count in (("two", 2), ("one", 1)):
            variant = {"VariantName": "AllTraffic", "ModelName": "mme"}
            variant |= {"InstanceType": "ml.t2.medium", "InitialInstanceCount": count}
            sm.create_endpoint_config(EndpointConfigName=config, ProductionVariants=[variant])
        sm.create_endpoint(EndpointName="api", EndpointConfigName="two")
        sm.get_waiter("endpoint_in_service").wait(EndpointName="api", WaiterConfig=wait)

        def of_api() -> list[dict[str, Any]]:
            return [i for i in instances(server) if i["endpoint"] == "api"]

        first = of_api()
        assert len(first) == 2
        assert all(i["state"] == "up" and i["node"] for i in first)  # actors on Ray nodes
        statuses: list[int] = []
        with invoking(server.url, models, ROW, statuses, clients=3, endpoint="api"):
            # a restarted controller is told the endpoint again and keeps its instances
            killed = controller_pid(ns)
            os.kill(killed, signal.SIGKILL)

            def restarted() -> bool:
                with contextlib.suppress(Exception):
                    return controller_pid(ns) != killed
                return False

            wait_until(restarted, "the controller to be restarted")
            wait_until(
                lambda: (
                    {(i["id"], i["pid"], i["state"]) for i in of_api()}
                    == {(i["id"], i["pid"], "up") for i in first}
                ),
                "the restarted controller to supervise the endpoint's instances",
            )
            count = len(statuses)
            wait_until(lambda: len(statuses) >= count + 30, "requests before the update")
            sm.update_endpoint(EndpointName="api", EndpointConfigName="one")
            sm.get_waiter("endpoint_in_service").wait(EndpointName="api", WaiterConfig=wait)
            count = len(statuses)
            wait_until(lambda: len(statuses) >= count + 30, "requests after the update")
        assert statuses
        assert set(statuses) == {200}
        described = sm.describe_endpoint(EndpointName="api")
        assert described["EndpointConfigName"] == "one"
        assert [v["CurrentInstanceCount"] for v in described["ProductionVariants"]] == [1]
        wait_until(lambda: all(process_gone(i["pid"]) for i in first), "old instances to end")
        second = of_api()
        assert len(second) == 1
        assert second[0]["pid"] not in {i["pid"] for i in first}

        sm.delete_endpoint(EndpointName="api")
        sm.get_waiter("endpoint_deleted").wait(EndpointName="api", WaiterConfig=wait)
        wait_until(lambda: process_gone(second[0]["pid"]), "the endpoint's instance to end")
        with httpx.Client(base_url=server.url, timeout=60) as http:
            assert invoke(http, models[0]) == 200  # the declared endpoint
        # one left running: the server's stop stops it too (ray_fleet checks its process)
        sm.create_endpoint(EndpointName="kept", EndpointConfigName="one")
        sm.get_waiter("endpoint_in_service").wait(EndpointName="kept", WaiterConfig=wait)

"""The ``local`` backend: ``modelfleet serve --instances N`` with real instance subprocesses."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelfleet.backends.local import ended_by_itself
from tests.artifacts import features, sklearn_artifact, sklearn_source, train_sklearn
from tests.servers import ProcessServer, metric, process_fleet, process_server, wait_until
from tests.servers import fleet_instances as instances
from tests.servers import process_gone as gone

N_FEATURES = 4
MODELS = [f"m{i}/model.tar.gz" for i in range(9)]
ROW = ",".join(f"{v:.4f}" for v in features(1, 1, N_FEATURES)[0]).encode()


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return sklearn_source(tmp_path / "source", MODELS, N_FEATURES)


@contextlib.contextmanager
def fleet(source: Path, tmp_path: Path, count: int) -> Iterator[ProcessServer]:
    with process_fleet(source, tmp_path, count) as (server, _):
        yield server


def invoke(http: httpx.Client, model: str) -> httpx.Response:
    return http.post(
        "/endpoints/default/invocations",
        content=ROW,
        headers={"X-Amzn-SageMaker-Target-Model": model, "Content-Type": "text/csv"},
    )


def instance_metric(instance: dict[str, Any], name: str) -> float:
    return metric(httpx.get(f"{instance['url']}/metrics").text, name)


def served(instance: dict[str, Any]) -> float:
    """Requests the instance answered (hits and misses in its own metrics)."""
    text = httpx.get(f"{instance['url']}/metrics").text
    return metric(text, "modelfleet_model_cache_hit_total") + metric(
        text, "modelfleet_model_cache_miss_total"
    )


@pytest.mark.slow
def test_each_model_is_loaded_by_one_instance(source: Path, tmp_path: Path) -> None:
    with fleet(source, tmp_path, 3) as server, httpx.Client(base_url=server.url) as http:
        listed = instances(server)
        assert [i["state"] for i in listed] == ["up"] * 3
        assert len({i["pid"] for i in listed}) == 3
        answers: dict[str, set[bytes]] = {}
        for _ in range(4):
            for model in MODELS:
                response = invoke(http, model)
                assert response.status_code == 200, response.text
                assert response.headers["x-amzn-invoked-production-variant"] == "AllTraffic"
                answers.setdefault(model, set()).add(response.content)
        assert all(len(bodies) == 1 for bodies in answers.values())
        loads = [instance_metric(i, "modelfleet_model_loading_time_seconds_count") for i in listed]
        assert sum(loads) == len(MODELS)  # affinity: every model on one instance only
        assert sum(1 for n in loads if n > 0) >= 2  # and the models spread over instances

        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(
            f"{server.admin_url}/metrics"
        ).text  # the router's series and every instance's, merged
        per_instance: dict[str, float] = {}
        invocations: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "modelfleet_invocations_per_instance_total":
                    per_instance[sample.labels["instance"]] = sample.value
                if sample.name == "modelfleet_invocations_total":
                    invocations[sample.labels["instance"]] = sample.value
        assert invocations["router"] == 4 * len(MODELS)  # the endpoint's, at the router
        assert sum(per_instance.values()) == 4 * len(MODELS)  # InvocationsPerInstance
        assert {"0", "1", "2"} <= set(per_instance)

        view = instances(server)  # the admin view: what each instance holds
        loaded = [model for i in view for model in i["loaded"]]
        assert sorted(m["name"] for m in loaded) == sorted(MODELS)
        assert all(m["bytes"] > 0 for m in loaded)
        for instance in view:
            if instance["loaded"]:  # each model: one miss, then three hits
                assert instance["hit_ratio"] == pytest.approx(0.75)
                assert 0 < instance["memory_used_bytes"] <= instance["memory_limit_bytes"]

        from click.testing import CliRunner

        from modelfleet.cli import main

        printed = CliRunner().invoke(main, ["status", "--url", server.admin_url])
        assert printed.exit_code == 0, printed.output
        lines = printed.output.splitlines()
        assert lines[0].split()[:4] == ["endpoint", "variant", "instance", "state"]
        assert [line.split()[:4] for line in lines[1:]] == [
            ["default", "AllTraffic", str(i), "up"] for i in range(3)
        ]
    # serve --log-level warning: the instances' INFO lines (a load, each) are not written
    log = (tmp_path / "server.log").read_text()
    assert " INFO modelfleet.instance" not in log


@pytest.mark.slow
def test_errors_from_an_instance_keep_their_shape(source: Path, tmp_path: Path) -> None:
    with fleet(source, tmp_path, 2) as server, httpx.Client(base_url=server.url) as http:
        missing = invoke(http, "nope/model.tar.gz")
        assert missing.status_code == 400
        assert missing.headers["x-amzn-errortype"] == "ValidationError"
        assert "nope/model.tar.gz" in missing.json()["message"]
        wrong = http.post(
            "/endpoints/default/invocations",
            content=b"1,2",  # two features for a four-feature model
            headers={"X-Amzn-SageMaker-Target-Model": MODELS[0], "Content-Type": "text/csv"},
        )
        assert wrong.status_code == 424
        assert wrong.json()["__type"] == "ModelError"
        assert wrong.json()["OriginalStatusCode"] == 400
        bare = http.post(  # no Content-Type: CSV, as in process (the router adds none)
            "/endpoints/default/invocations",
            content=ROW,
            headers={"X-Amzn-SageMaker-Target-Model": MODELS[0]},
        )
        assert bare.status_code == 200, bare.text


@pytest.mark.slow
def test_a_killed_instance_fails_no_request_and_comes_back(source: Path, tmp_path: Path) -> None:
    with fleet(source, tmp_path, 3) as server:
        with httpx.Client(base_url=server.url) as http:
            for model in MODELS:
                assert invoke(http, model).status_code == 200
        before = instances(server)
        victim = max(before, key=lambda i: served(i))  # an instance that is home to models
        statuses: list[int] = []

        async def drive() -> None:
            async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
                queue = [MODELS[i % len(MODELS)] for i in range(1000)]

                async def worker() -> None:
                    while queue:
                        model = queue.pop()
                        response = await http.post(
                            "/endpoints/default/invocations",
                            content=ROW,
                            headers={
                                "X-Amzn-SageMaker-Target-Model": model,
                                "Content-Type": "text/csv",
                            },
                        )
                        statuses.append(response.status_code)
                        if len(statuses) == 150:
                            os.kill(victim["pid"], signal.SIGKILL)

                await asyncio.gather(*(worker() for _ in range(8)))

        asyncio.run(drive())
        assert len(statuses) == 1000
        assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}

        def restarted() -> bool:
            now = instances(server)[int(victim["id"])]
            return bool(now["state"] == "up" and now["pid"] != victim["pid"])

        wait_until(restarted, "the killed instance to be restarted")
        now = instances(server)[int(victim["id"])]
        assert now["restarts"] == 1
        assert now["state"] == "up"
        assert now["pid"] != victim["pid"]
        with httpx.Client(base_url=server.url) as http:
            for model in MODELS * 2:
                assert invoke(http, model).status_code == 200
        assert served(now) > 0  # the restarted instance takes its models back


@pytest.mark.slow
def test_boto3_against_a_fleet_with_models_in_s3(
    s3_bucket: tuple[Any, str], aws_env: str, tmp_path: Path
) -> None:
    import json

    import boto3
    from botocore.config import Config

    s3, bucket = s3_bucket
    estimators = {}
    for index in range(4):
        key = f"models/forest-{index}/model.tar.gz"
        s3.put_object(Bucket=bucket, Key=key, Body=sklearn_artifact(seed=index, n_features=4))
        estimators[f"forest-{index}/model.tar.gz"] = train_sklearn(seed=index, n_features=4)
    args = ["--model-source", f"s3://{bucket}/models/", "--cache-dir", str(tmp_path / "cache")]
    args += ["--instances", "2", "--log-level", "warning"]
    with process_server(args, log=tmp_path / "server.log") as server:
        runtime = boto3.client(
            "sagemaker-runtime",
            endpoint_url=server.url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            config=Config(retries={"total_max_attempts": 1, "mode": "standard"}),
        )
        row = features(3, 1, 4)
        for target, estimator in estimators.items():
            answer = runtime.invoke_endpoint(
                EndpointName="default",
                TargetModel=target,
                ContentType="text/csv",
                Accept="application/json",
                Body=",".join(repr(float(v)) for v in row[0]),
            )
            assert answer["InvokedProductionVariant"] == "AllTraffic"
            got = json.loads(answer["Body"].read())
            assert got == pytest.approx(estimator.predict(row).tolist(), rel=1e-9)
        with pytest.raises(runtime.exceptions.ModelError) as failure:
            runtime.invoke_endpoint(
                EndpointName="default",
                TargetModel="forest-0/model.tar.gz",
                ContentType="text/csv",
                Body="1,2",  # two features for a four-feature model
            )
        assert failure.value.response["OriginalStatusCode"] == 400


def test_admin_view_of_the_in_process_instance(source: Path, tmp_path: Path) -> None:
    from modelfleet.config import Settings
    from tests.servers import thread_server

    settings = Settings(model_source=str(source), cache_dir=tmp_path / "cache")
    with thread_server(settings) as server, httpx.Client(base_url=server.url) as http:
        for model in (MODELS[0], MODELS[0], MODELS[1]):
            assert invoke(http, model).status_code == 200
        view = httpx.get(f"{server.admin_url}/admin/instances").json()
    (only,) = view["instances"]
    assert only["state"] == "up"
    assert only["pid"] == os.getpid()
    assert sorted(m["name"] for m in only["loaded"]) == sorted(MODELS[:2])
    assert only["hit_ratio"] == pytest.approx(1 / 3)


KILLER_MODEL = """
import os
import signal

def model_fn(model_dir):
    return None

def input_fn(data, content_type):
    return data

def predict_fn(data, model):
    if data == b"exit":
        os._exit(1)  # ends whoever serves it, by its own hand
    if data == b"segv":
        os.kill(os.getpid(), signal.SIGSEGV)  # as a crash in native code
    if data == b"oom":
        os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer would: from outside
    return b"ok"

def output_fn(prediction, accept):
    return prediction, "text/plain"
"""


@pytest.mark.parametrize(
    ("returncode", "how"),
    [
        (7, "exit status 7"),  # os._exit(7), sys.exit(7) at process level
        (1, "exit status 1"),
        (-signal.SIGSEGV, "signal SIGSEGV"),
        (-signal.SIGABRT, "signal SIGABRT"),
        (-signal.SIGBUS, "signal SIGBUS"),
        (-signal.SIGILL, "signal SIGILL"),
        (-signal.SIGFPE, "signal SIGFPE"),
        (-signal.SIGKILL, None),  # kill -9, the OOM killer, the hang watcher
        (-signal.SIGTERM, None),
        (0, None),  # stopped gracefully
    ],
)
def test_how_an_instance_ended(returncode: int, how: str | None) -> None:
    assert ended_by_itself(returncode) == how


@pytest.mark.slow
@pytest.mark.parametrize(
    ("body", "status", "error", "ended"),
    [
        # by its own hand: the request is the cause; one instance lost, a 424 at once
        (b"exit", 424, "exit status 1", 1),
        (b"segv", 424, "signal SIGSEGV", 1),
        # killed from outside as far as the router can tell: tried once more, not everywhere
        (b"oom", 503, "dropped the request", 2),
    ],
)
def test_a_request_that_kills_its_instance_is_retried_only_when_killed_from_outside(
    tmp_path: Path, body: bytes, status: int, error: str, ended: int
) -> None:
    from tests.artifacts import inference_py_artifact

    source = tmp_path / "source"
    (source / "killer").mkdir(parents=True)
    (source / "killer" / "model.tar.gz").write_bytes(
        inference_py_artifact({"inference.py": KILLER_MODEL})
    )
    with fleet(source, tmp_path, 3) as server, httpx.Client(base_url=server.url) as http:
        headers = {"X-Amzn-SageMaker-Target-Model": "killer/model.tar.gz"}
        url = "/endpoints/default/invocations"
        assert http.post(url, content=b"fine", headers=headers).status_code == 200
        first_pids = [i["pid"] for i in instances(server)]
        deadly = http.post(url, content=body, headers=headers)
        assert deadly.status_code == status, deadly.text
        answer = deadly.json()
        assert error in answer["message"]
        if status == 424:
            assert answer["__type"] == "ModelError"
            assert answer["OriginalStatusCode"] == 500
        else:
            assert answer["__type"] == "ServiceUnavailable"

        def restarted() -> bool:
            listed = instances(server)
            return sum(i["restarts"] for i in listed) >= ended and all(
                i["state"] == "up" for i in listed
            )

        # The router may answer before its supervisor restarted them: wait for the restarts.
        wait_until(restarted, "the killed instances to be restarted")
        assert sum(i["restarts"] for i in instances(server)) == ended
        assert sum(1 for pid in first_pids if not gone(pid)) == 3 - ended  # never sent it
        assert http.post(url, content=b"fine", headers=headers).status_code == 200


@pytest.mark.slow
def test_a_hung_instance_is_killed_and_restarted(source: Path, tmp_path: Path) -> None:
    args = ["--model-source", str(source), "--cache-dir", str(tmp_path / "cache")]
    args += ["--instances", "2", "--log-level", "warning"]
    env = {"MODELFLEET_HANG_TIMEOUT": "2"}
    log = tmp_path / "server.log"
    with (
        process_server(args, env=env, log=log) as server,
        httpx.Client(base_url=server.url, timeout=60) as http,
    ):
        for model in MODELS:
            assert invoke(http, model).status_code == 200
        victim = instances(server)[0]
        os.kill(victim["pid"], signal.SIGSTOP)  # alive, answering nothing
        try:
            # requests that reach it wait until it is killed, then go elsewhere
            statuses = [invoke(http, model).status_code for model in MODELS]

            def restarted() -> bool:
                now = instances(server)[0]
                return bool(now["state"] == "up" and now["pid"] != victim["pid"])

            wait_until(restarted, "the hung instance to be killed and restarted")
            now = instances(server)[0]
        finally:
            if not gone(victim["pid"]):
                os.kill(victim["pid"], signal.SIGKILL)
        assert set(statuses) == {200}
        assert now["restarts"] == 1
        assert now["pid"] != victim["pid"]
        assert gone(victim["pid"])

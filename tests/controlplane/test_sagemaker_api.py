"""SageMaker's control plane with boto3's ``sagemaker`` client against a real server.

The MME flow of SageMaker's examples (create_model in MultiModel mode, an endpoint config of
two weighted variants, create_endpoint and its waiter, invocations, new weights, deletion and
its waiter) runs against real instance processes; every raw answer is checked against
botocore's model of the operation; bad calls get the service's errors and change nothing.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from botocore.model import Shape

from modelfleet.config import Settings
from modelfleet.endpoint.variants import load_config
from tests.artifacts import features, sklearn_artifact
from tests.servers import ThreadServer

ROW = ",".join(f"{v:.4f}" for v in features(1, 1, 4)[0]).encode()
WAIT = {"Delay": 0.2, "MaxAttempts": 300}  # a bounded poll of about a minute at most
KEYS = {"aws_access_key_id": "AKIDCONTROLPLANE", "aws_secret_access_key": "not-checked"}


def shape_errors(shape: Shape | None, value: Any, path: str = "") -> list[str]:
    """What in a raw JSON answer is not in ``shape`` (botocore's parser would drop it)."""
    if shape is None:
        return [] if value in (None, {}) else [f"{path}: an answer where none is modelled"]
    kind = shape.type_name
    if kind == "structure":
        if not isinstance(value, dict):
            return [f"{path}: not an object"]
        problems = [f"{path}.{k}: not a member" for k in value if k not in shape.members]
        problems += [f"{path}.{k}: required" for k in shape.required_members if k not in value]
        for key, item in value.items():
            if key in shape.members:
                problems += shape_errors(shape.members[key], item, f"{path}.{key}")
        return problems
    if kind == "list":
        if not isinstance(value, list):
            return [f"{path}: not a list"]
        return [
            p
            for i, item in enumerate(value)
            for p in shape_errors(shape.member, item, f"{path}[{i}]")
        ]
    if kind == "map":
        if not isinstance(value, dict):
            return [f"{path}: not a map"]
        return [
            p for k, item in value.items() for p in shape_errors(shape.value, item, f"{path}.{k}")
        ]
    expected = {
        "string": str,
        "integer": int,
        "long": int,
        "boolean": bool,
        "float": (int, float),
        "double": (int, float),
        "timestamp": (int, float),
    }.get(kind)
    if expected is not None and not isinstance(value, expected):  # type: ignore[arg-type]
        return [f"{path}: {value!r} is not a {kind}"]
    if kind == "string" and shape.enum and value not in shape.enum:
        return [f"{path}: {value!r} is not one of its enum"]
    return []


class Checked:
    """A boto3 client (``sagemaker`` unless said) whose every raw answer is checked against
    its shape in botocore's model."""

    def __init__(self, url: str, service: str = "sagemaker") -> None:
        self.client = boto3.client(
            service,
            endpoint_url=url,
            region_name="us-east-1",
            config=Config(retries={"max_attempts": 1}),
            **KEYS,
        )
        self.problems: list[str] = []
        events = f"after-call.{self.client.meta.service_model.service_id.hyphenize()}"
        self.client.meta.events.register(events, self._check)

    def _check(self, http_response: Any, model: Any, **_: Any) -> None:
        if http_response.status_code != 200:
            return
        raw = json.loads(http_response.content or b"{}")
        self.problems += [f"{model.name}{p}" for p in shape_errors(model.output_shape, raw)]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


@pytest.fixture
def models(tmp_path: Path) -> Path:
    source = tmp_path / "models"
    for name, seed in (("a", 1), ("b", 2)):
        (source / name).mkdir(parents=True)
        (source / name / "model.tar.gz").write_bytes(sklearn_artifact(seed=seed, n_features=4))
    return source


@pytest.fixture
def server(tmp_path: Path, models: Path) -> Iterator[ThreadServer]:
    settings = Settings(
        model_source=str(models),
        cache_dir=tmp_path / "cache",
        state_dir=tmp_path / "state",
        port=0,
        admin_port=0,
    )
    served = ThreadServer(settings).start()
    try:
        yield served
    finally:
        served.stop()


def runtime(url: str) -> Any:
    return boto3.client("sagemaker-runtime", endpoint_url=url, region_name="us-east-1", **KEYS)


def create_mme(sm: Any, models: Path | str, *, weights: tuple[float, float] = (3, 1)) -> None:
    sm.create_model(
        ModelName="mme",
        ExecutionRoleArn="arn:aws:iam::000000000000:role/any",
        PrimaryContainer={
            "Image": "modelfleet",
            "Mode": "MultiModel",
            "ModelDataUrl": str(models),
            "MultiModelConfig": {"ModelCacheSetting": "Enabled"},
        },
    )
    variants = [
        {
            "VariantName": name,
            "ModelName": "mme",
            "InstanceType": "ml.t2.medium",
            "InitialInstanceCount": 1,
            "InitialVariantWeight": weight,
        }
        for name, weight in zip(("Current", "Candidate"), weights, strict=True)
    ]
    sm.create_endpoint_config(EndpointConfigName="mme-config", ProductionVariants=variants)


def split(url: str, endpoint: str, requests: int) -> Counter[str]:
    served: Counter[str] = Counter()
    headers = {"X-Amzn-SageMaker-Target-Model": "a/model.tar.gz", "Content-Type": "text/csv"}
    with httpx.Client(base_url=url) as http:
        for _ in range(requests):
            answer = http.post(f"/endpoints/{endpoint}/invocations", content=ROW, headers=headers)
            assert answer.status_code == 200, answer.text
            served[answer.headers["x-amzn-invoked-production-variant"]] += 1
    return served


@pytest.mark.slow
def test_the_mme_flow_end_to_end(
    server: ThreadServer, models: Path, aws_env: str, s3_bucket: tuple[Any, str]
) -> None:
    """SageMaker's multi-model example, its models under an S3 prefix (the local
    S3-compatible server)."""
    s3, bucket = s3_bucket
    for path in models.rglob("*.tar.gz"):
        s3.put_object(Bucket=bucket, Key=f"mme/{path.relative_to(models)}", Body=path.read_bytes())
    sm = Checked(server.admin_url)
    create_mme(sm, f"s3://{bucket}/mme/")
    arn = sm.create_endpoint(EndpointName="mme-endpoint", EndpointConfigName="mme-config")
    assert arn["EndpointArn"] == "arn:aws:sagemaker:us-east-1:000000000000:endpoint/mme-endpoint"
    assert sm.describe_endpoint(EndpointName="mme-endpoint")["EndpointStatus"] in (
        "Creating",
        "InService",
    )
    sm.get_waiter("endpoint_in_service").wait(EndpointName="mme-endpoint", WaiterConfig=WAIT)
    described = sm.describe_endpoint(EndpointName="mme-endpoint")
    variants = {v["VariantName"]: v for v in described["ProductionVariants"]}
    assert {n: (v["CurrentWeight"], v["CurrentInstanceCount"]) for n, v in variants.items()} == {
        "Current": (3.0, 1),
        "Candidate": (1.0, 1),
    }

    answer = runtime(server.url).invoke_endpoint(
        EndpointName="mme-endpoint",
        TargetModel="b/model.tar.gz",
        ContentType="text/csv",
        Body=ROW,
    )
    assert answer["InvokedProductionVariant"] in ("Current", "Candidate")
    assert json.loads(answer["Body"].read())  # a prediction

    served = split(server.url, "mme-endpoint", 2000)
    assert abs(served["Current"] / 2000 - 0.75) <= 0.05, served
    sm.update_endpoint_weights_and_capacities(
        EndpointName="mme-endpoint",
        DesiredWeightsAndCapacities=[
            {"VariantName": "Current", "DesiredWeight": 1},
            {"VariantName": "Candidate", "DesiredWeight": 1},
        ],
    )
    served = split(server.url, "mme-endpoint", 2000)
    assert abs(served["Current"] / 2000 - 0.5) <= 0.05, served

    listed = sm.list_endpoints(NameContains="MME")["Endpoints"]
    assert [e["EndpointName"] for e in listed] == ["mme-endpoint"]
    assert sm.describe_model(ModelName="mme")["PrimaryContainer"]["Mode"] == "MultiModel"
    config = sm.describe_endpoint_config(EndpointConfigName="mme-config")
    assert [v["VariantName"] for v in config["ProductionVariants"]] == ["Current", "Candidate"]

    sm.delete_endpoint(EndpointName="mme-endpoint")
    sm.get_waiter("endpoint_deleted").wait(EndpointName="mme-endpoint", WaiterConfig=WAIT)
    gone = httpx.post(
        f"{server.url}/endpoints/mme-endpoint/invocations",
        content=ROW,
        headers={"X-Amzn-SageMaker-Target-Model": "a/model.tar.gz"},
    )
    assert gone.status_code == 400
    assert sm.problems == []


@pytest.mark.slow
def test_more_instances_and_a_restart_keep_the_endpoint(
    tmp_path: Path, server: ThreadServer, models: Path
) -> None:
    sm = Checked(server.admin_url)
    create_mme(sm, models)
    sm.create_endpoint(EndpointName="kept", EndpointConfigName="mme-config")
    sm.get_waiter("endpoint_in_service").wait(EndpointName="kept", WaiterConfig=WAIT)
    sm.update_endpoint_weights_and_capacities(
        EndpointName="kept",
        DesiredWeightsAndCapacities=[{"VariantName": "Candidate", "DesiredInstanceCount": 2}],
    )
    assert sm.describe_endpoint(EndpointName="kept")["EndpointStatus"] in ("Updating", "InService")
    sm.get_waiter("endpoint_in_service").wait(EndpointName="kept", WaiterConfig=WAIT)
    counts = {
        v["VariantName"]: (v["CurrentInstanceCount"], v["DesiredInstanceCount"])
        for v in sm.describe_endpoint(EndpointName="kept")["ProductionVariants"]
    }
    assert counts == {"Current": (1, 1), "Candidate": (2, 2)}
    # the model and config may go; the endpoint keeps what it runs
    with pytest.raises(ClientError) as in_use:
        sm.delete_model(ModelName="mme")
    assert in_use.value.response["Error"]["Code"] == "ResourceInUse"
    sm.delete_endpoint_config(EndpointConfigName="mme-config")
    server.stop()

    again = ThreadServer(server.endpoint.settings).start()
    try:
        sm = Checked(again.admin_url)
        sm.get_waiter("endpoint_in_service").wait(EndpointName="kept", WaiterConfig=WAIT)
        counts = {
            v["VariantName"]: v["CurrentInstanceCount"]
            for v in sm.describe_endpoint(EndpointName="kept")["ProductionVariants"]
        }
        assert counts == {"Current": 1, "Candidate": 2}
        assert sum(split(again.url, "kept", 20).values()) == 20
        sm.delete_endpoint(EndpointName="kept")
        sm.get_waiter("endpoint_deleted").wait(EndpointName="kept", WaiterConfig=WAIT)
        sm.delete_model(ModelName="mme")  # no endpoint runs it now
        assert sm.list_models()["Models"] == []
        assert sm.problems == []
    finally:
        again.stop()


def error(call: Any, **params: Any) -> tuple[str, str]:
    with pytest.raises(ClientError) as caught:
        call(**params)
    return caught.value.response["Error"]["Code"], caught.value.response["Error"]["Message"]


def test_bad_calls_get_the_services_errors_and_change_nothing(
    server: ThreadServer, models: Path
) -> None:
    sm = Checked(server.admin_url)
    arn = "arn:aws:sagemaker:us-east-1:000000000000"
    assert error(sm.describe_endpoint, EndpointName="nope") == (
        "ValidationException",
        f'Could not find endpoint "{arn}:endpoint/nope".',
    )
    assert (
        error(sm.describe_model, ModelName="Nope")[1] == f'Could not find model "{arn}:model/nope".'
    )
    code, message = error(sm.create_endpoint, EndpointName="x" * 64, EndpointConfigName="c")
    assert code == "ValidationException"
    assert (
        "at 'endpointName' failed to satisfy constraint: Member must have length less than"
        in message
    )
    code, message = error(sm.create_endpoint, EndpointName="bad_name", EndpointConfigName="c")
    assert "Member must satisfy regular expression pattern" in message
    assert error(sm.create_endpoint, EndpointName="ok", EndpointConfigName="missing") == (
        "ValidationException",
        f'Could not find endpoint configuration "{arn}:endpoint-config/missing".',
    )
    create_mme(sm, models)
    assert error(
        sm.create_model,
        ModelName="MME",
        PrimaryContainer={"Image": "x", "ModelDataUrl": str(models)},
    ) == ("ValidationException", f'Cannot create already existing model "{arn}:model/mme".')
    code, message = error(
        sm.create_endpoint_config,
        EndpointConfigName="bad-type",
        ProductionVariants=[
            {
                "VariantName": "v",
                "ModelName": "mme",
                "InstanceType": "ml.p6-b200.48xlarge",
                "InitialInstanceCount": 1,
            }
        ],
    )
    assert "has no size on this server" in message
    code, message = error(
        sm.create_endpoint_config,
        EndpointConfigName="serverless",
        ProductionVariants=[
            {
                "VariantName": "v",
                "ModelName": "mme",
                "ServerlessConfig": {"MemorySizeInMB": 1024, "MaxConcurrency": 1},
            }
        ],
    )
    assert "serverless inference) is not supported" in message
    assert [c["EndpointConfigName"] for c in sm.list_endpoint_configs()["EndpointConfigs"]] == [
        "mme-config"
    ]
    assert [e["EndpointName"] for e in sm.list_endpoints()["Endpoints"]] == ["default"]

    raw = httpx.Client(base_url=server.admin_url)
    headers = {"Content-Type": "application/x-amz-json-1.1"}
    unknown = raw.post(
        "/", content=b"{}", headers={**headers, "X-Amz-Target": "SageMaker.CreateTrainingJob"}
    )
    assert (unknown.status_code, unknown.json()["__type"]) == (400, "UnknownOperationException")
    nothing = raw.post("/", content=b"{}", headers=headers)
    assert nothing.json()["__type"] == "UnknownOperationException"
    malformed = raw.post(
        "/", content=b"{not json", headers={**headers, "X-Amz-Target": "SageMaker.ListModels"}
    )
    assert (malformed.status_code, malformed.json()["__type"]) == (400, "SerializationException")
    missing = raw.post(
        "/", content=b"{}", headers={**headers, "X-Amz-Target": "SageMaker.CreateEndpoint"}
    )
    assert missing.json() == {
        "__type": "ValidationException",
        "message": "2 validation errors detected: Value null at 'endpointName' failed to satisfy"
        " constraint: Member must not be null; Value null at 'endpointConfigName' failed to"
        " satisfy constraint: Member must not be null",
    }
    assert missing.headers["x-amzn-errortype"] == "ValidationException"
    raw.close()
    assert sm.problems == []


def test_the_servers_own_endpoint_is_shown_and_left_to_its_configuration(
    server: ThreadServer, models: Path
) -> None:
    """The endpoint of the flags (or a config file) is one view of the state, the API's
    endpoints the other: both are listed and described; the configuration decides its own."""
    sm = Checked(server.admin_url)
    described = sm.describe_endpoint(EndpointName="default")
    assert described["EndpointStatus"] == "InService"
    assert described["EndpointConfigName"] == "modelfleet-configuration"
    variant = described["ProductionVariants"][0]
    assert (variant["VariantName"], variant["CurrentInstanceCount"]) == ("AllTraffic", 1)
    for call, params in (
        (sm.delete_endpoint, {}),
        (sm.update_endpoint, {"EndpointConfigName": "any"}),
        (
            sm.update_endpoint_weights_and_capacities,
            {"DesiredWeightsAndCapacities": [{"VariantName": "AllTraffic", "DesiredWeight": 2}]},
        ),
    ):
        code, message = error(call, EndpointName="default", **params)
        assert code == "ValidationException"
        assert "declared in the server's configuration" in message
    create_mme(sm, models)
    assert error(sm.create_endpoint, EndpointName="Default", EndpointConfigName="mme-config")[
        1
    ].startswith("Cannot create already existing endpoint")
    assert sm.describe_endpoint(EndpointName="default")["EndpointStatus"] == "InService"
    assert sm.problems == []


@pytest.mark.slow
def test_a_config_file_wins_for_the_endpoints_it_declares(tmp_path: Path, models: Path) -> None:
    """An endpoint made through the API, then declared in the config file too: at the next
    start the file's endpoint serves and the API shows it as the file's."""

    def start(declared: list[str]) -> ThreadServer:
        text = f'model_source = "{models}"\ncache_dir = "{tmp_path / "cache"}"\n'
        text += f'state_dir = "{tmp_path / "state"}"\nport = 0\nadmin_port = 0\n'
        for name in declared:
            text += f'[[endpoints]]\nname = "{name}"\n[[endpoints.variants]]\nname = "File"\n'
        path = tmp_path / "fleet.toml"
        path.write_text(text)
        settings, endpoints = load_config(path, {})
        return ThreadServer(settings, endpoints).start()

    server = start(["from-file"])
    try:
        sm = Checked(server.admin_url)
        create_mme(sm, models)
        sm.create_endpoint(EndpointName="shared", EndpointConfigName="mme-config")
        sm.get_waiter("endpoint_in_service").wait(EndpointName="shared", WaiterConfig=WAIT)
        names = {e["EndpointName"]: e["EndpointStatus"] for e in sm.list_endpoints()["Endpoints"]}
        assert names == {"from-file": "InService", "shared": "InService"}
        assert split(server.url, "from-file", 5) == Counter({"File": 5})
    finally:
        server.stop()
    server = start(["from-file", "shared"])
    try:
        sm = Checked(server.admin_url)
        described = sm.describe_endpoint(EndpointName="shared")
        assert described["EndpointConfigName"] == "modelfleet-configuration"
        assert split(server.url, "shared", 5) == Counter({"File": 5})
        assert sm.problems == []
    finally:
        server.stop()


def test_the_public_listener_has_no_control_plane(server: ThreadServer) -> None:
    answer = httpx.post(
        f"{server.url}/",
        content=b"{}",
        headers={"X-Amz-Target": "SageMaker.ListEndpoints"},
    )
    assert answer.status_code == 404


def test_pages_of_models(server: ThreadServer, models: Path) -> None:
    sm = Checked(server.admin_url)
    for index in range(7):
        sm.create_model(
            ModelName=f"m{index}",
            PrimaryContainer={"Mode": "MultiModel", "ModelDataUrl": str(models)},
        )
    pages = sm.get_paginator("list_models").paginate(
        SortBy="Name", SortOrder="Ascending", PaginationConfig={"PageSize": 3}
    )
    names = [m["ModelName"] for page in pages for m in page["Models"]]
    assert names == [f"m{i}" for i in range(7)]
    assert error(sm.list_models, NextToken="%%%")[0] == "ValidationException"
    assert sm.problems == []


class Load:
    """Requests to an endpoint on a thread until stopped (at most ``limit`` of them): the
    status and variant of each."""

    def __init__(self, url: str, endpoint: str, limit: int = 50_000) -> None:
        self.answers: list[tuple[int, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(url, endpoint, limit))
        self._thread.start()

    def _run(self, url: str, endpoint: str, limit: int) -> None:
        headers = {"X-Amzn-SageMaker-Target-Model": "a/model.tar.gz", "Content-Type": "text/csv"}
        with httpx.Client(base_url=url, timeout=30) as http:
            while not self._stop.is_set() and len(self.answers) < limit:
                answer = http.post(
                    f"/endpoints/{endpoint}/invocations", content=ROW, headers=headers
                )
                variant = answer.headers.get("x-amzn-invoked-production-variant", "")
                self.answers.append((answer.status_code, variant or answer.text[:200]))

    def stop(self) -> list[tuple[int, str]]:
        self._stop.set()
        self._thread.join(timeout=60)
        return self.answers


def second_config(sm: Any, tmp_path: Path, source: Path | None = None) -> None:
    if source is None:
        source = tmp_path / "models-v2"
        (source / "a").mkdir(parents=True)
        (source / "a" / "model.tar.gz").write_bytes(sklearn_artifact(seed=7, n_features=4))
    sm.create_model(
        ModelName="mme-v2",
        PrimaryContainer={"Mode": "MultiModel", "ModelDataUrl": str(source)},
    )
    sm.create_endpoint_config(
        EndpointConfigName="mme-config-v2",
        ProductionVariants=[
            {
                "VariantName": "Next",
                "ModelName": "mme-v2",
                "InstanceType": "ml.m5.large",
                "InitialInstanceCount": 1,
            }
        ],
    )


@pytest.mark.slow
def test_update_endpoint_under_load_fails_no_request(
    tmp_path: Path, server: ThreadServer, models: Path
) -> None:
    sm = Checked(server.admin_url)
    create_mme(sm, models)
    second_config(sm, tmp_path)
    sm.create_endpoint(EndpointName="rolling", EndpointConfigName="mme-config")
    sm.get_waiter("endpoint_in_service").wait(EndpointName="rolling", WaiterConfig=WAIT)
    load = Load(server.url, "rolling")
    try:
        sm.update_endpoint(EndpointName="rolling", EndpointConfigName="mme-config-v2")
        assert sm.describe_endpoint(EndpointName="rolling")["EndpointStatus"] == "Updating"
        code, message = error(
            sm.update_endpoint_weights_and_capacities,
            EndpointName="rolling",
            DesiredWeightsAndCapacities=[{"VariantName": "Current", "DesiredWeight": 2}],
        )
        assert code == "ValidationException"
        assert message.startswith("Cannot update in-progress endpoint")
        sm.get_waiter("endpoint_in_service").wait(EndpointName="rolling", WaiterConfig=WAIT)
        for _ in range(600):  # the switch is done when the new variant answers
            if load.answers and load.answers[-1][1] == "Next":
                break
            time.sleep(0.05)
    finally:
        answers = load.stop()
    assert [a for a in answers if a[0] != 200] == []
    served = Counter(variant for _, variant in answers)
    assert served["Next"] > 0, served
    assert served["Current"] + served["Candidate"] > 0, served
    described = sm.describe_endpoint(EndpointName="rolling")
    assert described["EndpointConfigName"] == "mme-config-v2"
    assert "FailureReason" not in described
    assert [v["VariantName"] for v in described["ProductionVariants"]] == ["Next"]
    assert sm.problems == []


@pytest.mark.slow
def test_a_failed_update_rolls_back(tmp_path: Path, server: ThreadServer, models: Path) -> None:
    sm = Checked(server.admin_url)
    create_mme(sm, models)
    second_config(sm, tmp_path, source=tmp_path / "no-such-folder")
    sm.create_endpoint(EndpointName="stays", EndpointConfigName="mme-config")
    sm.get_waiter("endpoint_in_service").wait(EndpointName="stays", WaiterConfig=WAIT)
    sm.update_endpoint(EndpointName="stays", EndpointConfigName="mme-config-v2")
    sm.get_waiter("endpoint_in_service").wait(EndpointName="stays", WaiterConfig=WAIT)
    described = sm.describe_endpoint(EndpointName="stays")
    assert described["EndpointConfigName"] == "mme-config"
    assert "rolled back" in described["FailureReason"]
    assert "does not exist" in described["FailureReason"]
    assert sum(split(server.url, "stays", 10).values()) == 10
    # and an endpoint created from it fails, saying why
    sm.create_endpoint(EndpointName="never", EndpointConfigName="mme-config-v2")
    with pytest.raises(Exception, match="Failed"):
        sm.get_waiter("endpoint_in_service").wait(EndpointName="never", WaiterConfig=WAIT)
    failed = sm.describe_endpoint(EndpointName="never")
    assert failed["EndpointStatus"] == "Failed"
    assert "cannot be read" in failed["FailureReason"]
    sm.delete_endpoint(EndpointName="never")
    sm.get_waiter("endpoint_deleted").wait(EndpointName="never", WaiterConfig=WAIT)
    assert sm.problems == []


def autoscaling(url: str) -> Checked:
    return Checked(url, "application-autoscaling")


def counts(sm: Any, endpoint: str) -> dict[str, int]:
    described = sm.describe_endpoint(EndpointName=endpoint)["ProductionVariants"]
    return {v["VariantName"]: v["CurrentInstanceCount"] for v in described}


def wait_for(check: Any, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "not reached in time"
        time.sleep(0.1)


@pytest.mark.slow
def test_a_target_tracking_policy_scales_a_variant_and_survives_a_restart(
    tmp_path: Path, models: Path
) -> None:
    settings = Settings(
        model_source=str(models),
        cache_dir=tmp_path / "cache",
        state_dir=tmp_path / "state",
        port=0,
        admin_port=0,
        autoscale_interval=0.5,
        autoscale_window=3.0,
    )
    server = ThreadServer(settings).start()
    resource = "endpoint/scaled/variant/Current"
    dimension = "sagemaker:variant:DesiredInstanceCount"
    try:
        sm = Checked(server.admin_url)
        create_mme(sm, models, weights=(1, 0))
        sm.create_endpoint(EndpointName="scaled", EndpointConfigName="mme-config")
        sm.get_waiter("endpoint_in_service").wait(EndpointName="scaled", WaiterConfig=WAIT)
        aas = autoscaling(server.admin_url)
        aas.register_scalable_target(
            ServiceNamespace="sagemaker",
            ResourceId=resource,
            ScalableDimension=dimension,
            MinCapacity=1,
            MaxCapacity=2,
        )
        policy = aas.put_scaling_policy(
            PolicyName="invocations",
            ServiceNamespace="sagemaker",
            ResourceId=resource,
            ScalableDimension=dimension,
            PolicyType="TargetTrackingScaling",
            TargetTrackingScalingPolicyConfiguration={
                "TargetValue": 600.0,  # 10 a second per instance: the load below is far more
                "PredefinedMetricSpecification": {
                    "PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"
                },
                "ScaleOutCooldown": 0,
                "ScaleInCooldown": 1,
            },
        )
        assert policy["PolicyARN"].endswith(f"resource/sagemaker/{resource}:policyName/invocations")
        load = Load(server.url, "scaled")
        try:
            wait_for(lambda: counts(sm, "scaled")["Current"] == 2)
        finally:
            answers = load.stop()
        assert [a for a in answers if a[0] != 200] == []
        wait_for(lambda: counts(sm, "scaled")["Current"] == 1)  # no load: back in
        targets = aas.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"]
        assert [(t["ResourceId"], t["MinCapacity"], t["MaxCapacity"]) for t in targets] == [
            (resource, 1, 2)
        ]
        code, _ = error(
            aas.delete_scaling_policy,
            PolicyName="other",
            ServiceNamespace="sagemaker",
            ResourceId=resource,
            ScalableDimension=dimension,
        )
        assert code == "ObjectNotFoundException"
        code, message = error(
            aas.put_scaling_policy,
            PolicyName="steps",
            ServiceNamespace="sagemaker",
            ResourceId=resource,
            ScalableDimension=dimension,
            PolicyType="StepScaling",
        )
        assert (code, "StepScaling is not supported" in message) == ("ValidationException", True)
        code, _ = error(
            aas.register_scalable_target,
            ServiceNamespace="sagemaker",
            ResourceId="endpoint/scaled/variant/Nope",
            ScalableDimension=dimension,
            MinCapacity=1,
            MaxCapacity=2,
        )
        assert code == "ValidationException"
        assert aas.problems == []
    finally:
        server.stop()

    again = ThreadServer(settings).start()
    try:
        sm = Checked(again.admin_url)
        aas = autoscaling(again.admin_url)
        sm.get_waiter("endpoint_in_service").wait(EndpointName="scaled", WaiterConfig=WAIT)
        policies = aas.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"]
        assert [p["PolicyName"] for p in policies] == ["invocations"]
        load = Load(again.url, "scaled")
        try:  # the policy still scales the variant
            wait_for(lambda: counts(sm, "scaled")["Current"] == 2)
        finally:
            answers = load.stop()
        assert [a for a in answers if a[0] != 200] == []
        aas.delete_scaling_policy(
            PolicyName="invocations",
            ServiceNamespace="sagemaker",
            ResourceId=resource,
            ScalableDimension=dimension,
        )
        aas.deregister_scalable_target(
            ServiceNamespace="sagemaker", ResourceId=resource, ScalableDimension=dimension
        )
        assert aas.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"] == []
        assert sm.problems == []
        assert aas.problems == []
    finally:
        again.stop()


def test_with_sigv4_the_control_plane_needs_an_admin_key(tmp_path: Path, models: Path) -> None:
    credentials = tmp_path / "credentials.toml"
    credentials.write_text(
        '[[keys]]\naccess_key_id = "AKIDADMIN0000001"\nsecret_access_key = "admin-secret"\n'
        "admin = true\n"
        '[[keys]]\naccess_key_id = "AKIDINVOKE000001"\nsecret_access_key = "invoke-secret"\n'
    )
    settings = Settings(
        model_source=str(models),
        cache_dir=tmp_path / "cache",
        state_dir=tmp_path / "state",
        port=0,
        admin_port=0,
        auth="sigv4",
        credentials_file=credentials,
    )
    server = ThreadServer(settings).start()
    try:

        def clients(key: str, secret: str) -> tuple[Any, Any]:
            keys = {"aws_access_key_id": key, "aws_secret_access_key": secret}
            made = [
                boto3.client(
                    service,
                    endpoint_url=server.admin_url,
                    region_name="us-east-1",
                    config=Config(retries={"max_attempts": 1}),
                    **keys,
                )
                for service in ("sagemaker", "application-autoscaling")
            ]
            return made[0], made[1]

        sm, aas = clients("AKIDADMIN0000001", "admin-secret")
        assert sm.list_models()["Models"] == []
        assert aas.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"] == []
        sm, aas = clients("AKIDINVOKE000001", "invoke-secret")
        for call in (
            lambda: sm.list_models(),
            lambda: aas.describe_scalable_targets(ServiceNamespace="sagemaker"),
        ):
            with pytest.raises(ClientError) as caught:
                call()
            assert caught.value.response["Error"]["Code"] == "AccessDeniedException"
        sm, _ = clients("AKIDADMIN0000001", "wrong-secret")
        with pytest.raises(ClientError) as caught:
            sm.list_models()
        assert caught.value.response["Error"]["Code"] == "InvalidSignatureException"
        s3 = boto3.client(
            "s3",
            endpoint_url=server.admin_url,
            region_name="us-east-1",
            aws_access_key_id="AKIDADMIN0000001",
            aws_secret_access_key="admin-secret",
            config=Config(retries={"max_attempts": 1}),
        )
        with pytest.raises(ClientError) as caught:  # a signature for another service
            s3.list_buckets()
        assert (
            "scoped to correct service" in str(caught.value)
            or caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
        )
    finally:
        server.stop()

"""modelfleet's control-plane answers against moto's SageMaker mock, field by field.

moto implements the model, endpoint-config and endpoint calls as an in-memory mock; the same
calls go to both (moto's server on a loopback port, modelfleet's admin listener), and each
answer is compared: the same fields, and the same values where both can know them (names,
ARNs, variants, statuses, error codes). Where they differ on purpose it is listed below, with
the reason.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from modelfleet.config import Settings
from tests.artifacts import sklearn_artifact
from tests.servers import ThreadServer

ACCOUNT = "123456789012"  # moto's account; modelfleet is given the same
KEYS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
# fields moto answers with empty defaults that the service leaves out when nothing was given
MOTO_ONLY = {
    "DescribeModel": {"Containers", "VpcConfig"},
    "DescribeEndpointConfig": {"DataCaptureConfig"},
    "DescribeEndpoint": {"DataCaptureConfig"},
}
# moto's messages quote ARNs with '...'; the service (and modelfleet) with "..."


def client(url: str) -> Any:
    config = Config(retries={"max_attempts": 1})
    return boto3.client(
        "sagemaker", endpoint_url=url, region_name="us-east-1", config=config, **KEYS
    )


@pytest.fixture
def modelfleet(tmp_path: Path) -> Iterator[str]:
    source = tmp_path / "models"
    (source / "a").mkdir(parents=True)
    (source / "a" / "model.tar.gz").write_bytes(sklearn_artifact(seed=1, n_features=4))
    settings = Settings(
        model_source=str(source),
        cache_dir=tmp_path / "cache",
        state_dir=tmp_path / "state",
        account_id=ACCOUNT,
        port=0,
        admin_port=0,
    )
    server = ThreadServer(settings).start()
    try:
        yield server.admin_url
    finally:
        server.stop()


def answer(call: Any, **params: Any) -> dict[str, Any]:
    try:
        got = dict(call(**params))
    except ClientError as exc:
        return {"Error": exc.response["Error"]["Code"]}
    got.pop("ResponseMetadata", None)
    return got


def comparable(value: Any) -> Any:
    """Times as a kind (both answer them; the instants differ)."""
    if isinstance(value, dt.datetime):
        return "a time"
    if isinstance(value, dict):
        return {k: comparable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [comparable(v) for v in value]
    return value


def wait_in_service(sm: Any, name: str) -> None:
    waiter = sm.get_waiter("endpoint_in_service")
    waiter.wait(EndpointName=name, WaiterConfig={"Delay": 0.2, "MaxAttempts": 300})


@pytest.mark.slow
def test_answers_match_motos(s3_server: str, modelfleet: str, tmp_path: Path) -> None:
    moto, ours = client(s3_server), client(modelfleet)
    source = str(tmp_path / "models")
    calls: list[tuple[str, dict[str, Any]]] = [
        (
            "CreateModel",
            {
                "ModelName": "oracle-model",
                "ExecutionRoleArn": f"arn:aws:iam::{ACCOUNT}:role/any",
                "PrimaryContainer": {
                    "Image": "modelfleet",
                    "Mode": "MultiModel",
                    "ModelDataUrl": source,
                },
            },
        ),
        ("DescribeModel", {"ModelName": "oracle-model"}),
        ("ListModels", {"NameContains": "oracle"}),
        (
            "CreateEndpointConfig",
            {
                "EndpointConfigName": "oracle-config",
                "ProductionVariants": [
                    {
                        "VariantName": "A",
                        "ModelName": "oracle-model",
                        "InstanceType": "ml.t2.medium",
                        "InitialInstanceCount": 1,
                        "InitialVariantWeight": 3.0,
                    }
                ],
            },
        ),
        ("DescribeEndpointConfig", {"EndpointConfigName": "oracle-config"}),
        ("ListEndpointConfigs", {"NameContains": "oracle"}),
        ("CreateEndpoint", {"EndpointName": "oracle", "EndpointConfigName": "oracle-config"}),
        ("wait", {"EndpointName": "oracle"}),
        ("DescribeEndpoint", {"EndpointName": "oracle"}),
        ("ListEndpoints", {"NameContains": "oracle"}),
        (
            "UpdateEndpointWeightsAndCapacities",
            {
                "EndpointName": "oracle",
                "DesiredWeightsAndCapacities": [{"VariantName": "A", "DesiredWeight": 1.0}],
            },
        ),
        ("DescribeEndpoint", {"EndpointName": "oracle"}),
        ("DescribeEndpoint", {"EndpointName": "missing"}),
        ("DescribeModel", {"ModelName": "missing"}),
        ("DescribeEndpointConfig", {"EndpointConfigName": "missing"}),
        ("DeleteEndpoint", {"EndpointName": "oracle"}),
        ("DeleteEndpointConfig", {"EndpointConfigName": "oracle-config"}),
        ("DeleteModel", {"ModelName": "oracle-model"}),
        ("ListModels", {"NameContains": "oracle"}),
    ]
    differences = []
    for operation, params in calls:
        if operation == "wait":
            wait_in_service(ours, params["EndpointName"])
            continue
        method = "".join(f"_{c.lower()}" if c.isupper() else c for c in operation).lstrip("_")
        theirs = comparable(answer(getattr(moto, method), **params))
        mine = comparable(answer(getattr(ours, method), **params))
        for field in MOTO_ONLY.get(operation, ()):
            theirs.pop(field, None)
        if operation == "DescribeEndpoint" and "ProductionVariants" in theirs:
            # moto drops the instance counts from its answer after a weights-only update;
            # the service (and modelfleet) keeps answering them
            for variant in mine["ProductionVariants"]:
                for count in ("CurrentInstanceCount", "DesiredInstanceCount"):
                    if count not in theirs["ProductionVariants"][0]:
                        variant.pop(count, None)
        if theirs != mine:
            differences.append((operation, params, theirs, mine))
    assert differences == []

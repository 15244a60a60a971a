"""Serial inference pipelines made through the control plane: several containers in one
model, one of them multi-model, a request running through each in order."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import boto3
import joblib
import numpy as np
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from modelfleet.config import Settings
from tests.artifacts import features, inference_py_artifact, sklearn_artifact, unpack
from tests.servers import ThreadServer

KEYS = {"aws_access_key_id": "AKIDPIPELINE", "aws_secret_access_key": "not-checked"}
WAIT = {"Delay": 0.2, "MaxAttempts": 300}
ROW = features(3, 1, 4)[0]

SCALE = """
import numpy as np

def model_fn(model_dir):
    return 10.0

def input_fn(data, content_type):
    assert content_type == "text/csv", content_type
    text = data if isinstance(data, str) else data.decode()
    return np.array([[float(v) for v in text.split(",")]])

def predict_fn(data, factor):
    return data * factor

def output_fn(prediction, accept):
    return ",".join(repr(float(v)) for v in prediction[0]) + "\\n", accept
"""

LABEL = """
import json

def model_fn(model_dir):
    return "labelled"

def input_fn(data, content_type):
    text = data if isinstance(data, str) else data.decode()
    return [float(v) for v in text.strip().split(",")], content_type

def predict_fn(data, label):
    values, content_type = data
    return {"label": label, "value": values[0], "received": content_type}

def output_fn(prediction, accept):
    return json.dumps(prediction), "application/json"
"""


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ThreadServer]:
    settings = Settings(
        model_source=str(tmp_path / "unused"),
        cache_dir=tmp_path / "cache",
        state_dir=tmp_path / "state",
        port=0,
        admin_port=0,
    )
    (tmp_path / "unused").mkdir()
    served = ThreadServer(settings).start()
    try:
        yield served
    finally:
        served.stop()


@pytest.mark.slow
def test_a_request_runs_through_every_step_in_order(tmp_path: Path, server: ThreadServer) -> None:
    steps = tmp_path / "steps"
    steps.mkdir()
    (steps / "scale.tar.gz").write_bytes(inference_py_artifact({"inference.py": SCALE}))
    (steps / "label.tar.gz").write_bytes(inference_py_artifact({"inference.py": LABEL}))
    models = tmp_path / "models"
    expected = {}
    for name, seed in (("a", 1), ("b", 2)):
        (models / name).mkdir(parents=True)
        artifact = sklearn_artifact(seed=seed, n_features=4)
        (models / name / "model.tar.gz").write_bytes(artifact)
        forest = joblib.load(unpack(artifact, tmp_path / f"unpacked-{name}") / "model.joblib")
        expected[name] = float(forest.predict(np.array([ROW]) * 10.0)[0])

    sm = boto3.client(
        "sagemaker",
        endpoint_url=server.admin_url,
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 1}),
        **KEYS,
    )
    sm.create_model(
        ModelName="pipeline",
        Containers=[
            {"Image": "scale", "ModelDataUrl": str(steps / "scale.tar.gz")},
            {"Image": "forest", "Mode": "MultiModel", "ModelDataUrl": str(models)},
            {"Image": "label", "ModelDataUrl": str(steps / "label.tar.gz")},
        ],
        InferenceExecutionConfig={"Mode": "Serial"},
    )
    sm.create_endpoint_config(
        EndpointConfigName="pipeline",
        ProductionVariants=[
            {
                "VariantName": "Steps",
                "ModelName": "pipeline",
                "InstanceType": "ml.t2.medium",
                "InitialInstanceCount": 1,
            }
        ],
    )
    sm.create_endpoint(EndpointName="pipeline", EndpointConfigName="pipeline")
    sm.get_waiter("endpoint_in_service").wait(EndpointName="pipeline", WaiterConfig=WAIT)
    runtime = boto3.client(
        "sagemaker-runtime", endpoint_url=server.url, region_name="us-east-1", **KEYS
    )
    body = ",".join(repr(float(v)) for v in ROW).encode()
    for name in ("a", "b", "a"):
        answer = runtime.invoke_endpoint(
            EndpointName="pipeline",
            TargetModel=f"{name}/model.tar.gz",
            ContentType="text/csv",
            Accept="application/json",
            Body=body,
        )
        assert answer["InvokedProductionVariant"] == "Steps"
        result = json.loads(answer["Body"].read())
        assert result["label"] == "labelled"
        assert result["received"].startswith(
            "text/csv"
        )  # the forest answered in the request's type
        assert result["value"] == pytest.approx(expected[name], rel=1e-6)
    with pytest.raises(ClientError) as caught:
        runtime.invoke_endpoint(EndpointName="pipeline", ContentType="text/csv", Body=body)
    assert "TargetModel" in caught.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as caught:
        runtime.invoke_endpoint(
            EndpointName="pipeline",
            TargetModel="a/model.tar.gz",
            TargetVariant="Steps/1",
            ContentType="text/csv",
            Body=body,
        )
    assert "does not exist" in caught.value.response["Error"]["Message"]
    counts = sm.describe_endpoint(EndpointName="pipeline")["ProductionVariants"]
    assert [(v["VariantName"], v["CurrentInstanceCount"]) for v in counts] == [("Steps", 1)]


def test_pipelines_the_server_cannot_run_are_refused(tmp_path: Path, server: ThreadServer) -> None:
    sm = boto3.client(
        "sagemaker",
        endpoint_url=server.admin_url,
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 1}),
        **KEYS,
    )
    two_multi = [
        {"Mode": "MultiModel", "ModelDataUrl": str(tmp_path)},
        {"Mode": "MultiModel", "ModelDataUrl": str(tmp_path)},
    ]
    direct = [
        {"ModelDataUrl": f"{tmp_path}/x.tar.gz", "ContainerHostname": "one"},
        {"ModelDataUrl": f"{tmp_path}/y.tar.gz", "ContainerHostname": "two"},
    ]
    for containers, execution, words in (
        (two_multi, "Serial", "one multi-model container at most"),
        (direct, "Direct", "Mode Direct"),
        ([{"ModelDataUrl": "s3://a-bucket/"}], "Serial", "names no artifact"),
    ):
        with pytest.raises(ClientError) as caught:
            sm.create_model(
                ModelName="refused",
                Containers=containers,
                InferenceExecutionConfig={"Mode": execution},
            )
        assert words in caught.value.response["Error"]["Message"]
    assert sm.list_models()["Models"] == []


GREET = """
import os

def model_fn(model_dir):
    return os.environ["GREETING"]

def input_fn(data, content_type):
    return data

def predict_fn(data, greeting):
    return greeting

def output_fn(prediction, accept):
    return prediction, "text/plain"
"""


@pytest.mark.slow
def test_a_containers_environment_reaches_its_model(tmp_path: Path, server: ThreadServer) -> None:
    (tmp_path / "greet.tar.gz").write_bytes(inference_py_artifact({"inference.py": GREET}))
    sm = boto3.client(
        "sagemaker",
        endpoint_url=server.admin_url,
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 1}),
        **KEYS,
    )
    with pytest.raises(ClientError) as caught:
        sm.create_model(
            ModelName="preloaded",
            PrimaryContainer={
                "ModelDataUrl": str(tmp_path / "greet.tar.gz"),
                "Environment": {"LD_PRELOAD": "/tmp/x.so", "GREETING": "hi"},
            },
        )
    assert "LD_PRELOAD would change how the instance process runs" in str(caught.value)
    sm.create_model(
        ModelName="greet",
        PrimaryContainer={
            "ModelDataUrl": str(tmp_path / "greet.tar.gz"),
            "Environment": {"GREETING": "hello from the container's Environment"},
        },
    )
    sm.create_endpoint_config(
        EndpointConfigName="greet",
        ProductionVariants=[
            {
                "VariantName": "Only",
                "ModelName": "greet",
                "InstanceType": "ml.t2.medium",
                "InitialInstanceCount": 1,
            }
        ],
    )
    sm.create_endpoint(EndpointName="greet", EndpointConfigName="greet")
    sm.get_waiter("endpoint_in_service").wait(EndpointName="greet", WaiterConfig=WAIT)
    runtime = boto3.client(
        "sagemaker-runtime", endpoint_url=server.url, region_name="us-east-1", **KEYS
    )
    answer = runtime.invoke_endpoint(EndpointName="greet", ContentType="text/plain", Body=b"x")
    assert answer["Body"].read() == b"hello from the container's Environment"

"""Acceptance: boto3's sagemaker-runtime client against a server whose models live in S3.

The S3-compatible server is moto's ThreadedMotoServer reached over HTTP on 127.0.0.1, through
the same ModelSource code users run; the endpoint is a real uvicorn server on a free port.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import httpx
import numpy as np
import pytest
from botocore.config import Config

from modelfleet.config import Settings
from tests.artifacts import inference_py_artifact, sklearn_artifact
from tests.servers import ThreadServer, metric, thread_server, wait_until

CSV_ROW = ",".join(str(float(i)) for i in range(10))


def runtime_client(url: str) -> Any:
    return boto3.client(
        "sagemaker-runtime",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(retries={"total_max_attempts": 1, "mode": "standard"}, read_timeout=120),
    )


@pytest.fixture
def s3_models(s3_bucket: tuple[Any, str], aws_env: None) -> tuple[Any, str]:
    s3, bucket = s3_bucket
    s3.put_object(Bucket=bucket, Key="models/forest-a/model.tar.gz", Body=sklearn_artifact(seed=1))
    s3.put_object(Bucket=bucket, Key="models/forest-b/model.tar.gz", Body=sklearn_artifact(seed=2))
    return s3, bucket


@pytest.fixture
def server(s3_models: tuple[Any, str], tmp_path: Path) -> Iterator[ThreadServer]:
    _, bucket = s3_models
    settings = Settings(
        model_source=f"s3://{bucket}/models/",
        cache_dir=tmp_path / "cache",
        memory_limit="1GiB",
        invoke_timeout=30,
    )
    with thread_server(settings) as srv:
        yield srv


def invoke(client: Any, target: str, body: str = CSV_ROW, **kwargs: Any) -> Any:
    return client.invoke_endpoint(
        EndpointName="default", TargetModel=target, ContentType="text/csv", Body=body, **kwargs
    )


def test_invoke_models_from_s3_and_models_uploaded_later(
    server: ThreadServer, s3_models: tuple[Any, str]
) -> None:
    client = runtime_client(server.url)
    first = invoke(client, "forest-a/model.tar.gz", Accept="application/json")
    assert first["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert first["InvokedProductionVariant"] == "AllTraffic"
    assert first["ContentType"] == "application/json"
    value_a = json.loads(first["Body"].read())
    value_b = json.loads(invoke(client, "forest-b/model.tar.gz")["Body"].read())
    assert np.asarray(value_a).shape == (1,)
    assert value_a != value_b

    s3, bucket = s3_models
    s3.put_object(Bucket=bucket, Key="models/later/model.tar.gz", Body=sklearn_artifact(seed=3))
    later = json.loads(invoke(client, "later/model.tar.gz")["Body"].read())
    assert np.asarray(later).shape == (1,)


def test_boto3_raises_validation_error_for_a_missing_model(server: ThreadServer) -> None:
    client = runtime_client(server.url)
    with pytest.raises(client.exceptions.ValidationError, match=re.escape("nope/model.tar.gz")):
        invoke(client, "nope/model.tar.gz")
    with pytest.raises(client.exceptions.ValidationError):
        invoke(client, "../escape/model.tar.gz")
    with pytest.raises(client.exceptions.ValidationError, match="not found"):
        client.invoke_endpoint(
            EndpointName="other", TargetModel="forest-a/model.tar.gz", Body=CSV_ROW
        )


def test_boto3_raises_model_error_when_the_model_code_fails(
    server: ThreadServer, s3_models: tuple[Any, str]
) -> None:
    s3, bucket = s3_models
    code = {
        "inference.py": (
            "def model_fn(model_dir):\n    return object()\n\n"
            "def predict_fn(data, model):\n    raise RuntimeError('the model broke')\n"
        )
    }
    s3.put_object(Bucket=bucket, Key="models/broken/model.tar.gz", Body=inference_py_artifact(code))
    client = runtime_client(server.url)
    with pytest.raises(client.exceptions.ModelError) as info:
        invoke(client, "broken/model.tar.gz")
    error = info.value.response
    assert error["Error"]["Code"] == "ModelError"
    assert "the model broke" in error["Error"]["Message"]
    assert error["OriginalStatusCode"] == 500
    # The endpoint keeps serving the other models.
    assert invoke(client, "forest-a/model.tar.gz")["ResponseMetadata"]["HTTPStatusCode"] == 200


def test_boto3_raises_model_not_ready_while_a_slow_load_continues(
    s3_models: tuple[Any, str], tmp_path: Path
) -> None:
    s3, bucket = s3_models
    release = tmp_path / "release-the-load"
    code = {  # the load goes on until the test creates ``release`` (a bound only on a hang)
        "inference.py": (
            "import os, time\n\n"
            "def model_fn(model_dir):\n"
            "    deadline = time.monotonic() + 120\n"
            f"    while not os.path.exists({str(release)!r}):\n"
            "        assert time.monotonic() < deadline, 'never released'\n"
            "        time.sleep(0.01)\n"
            "    return 7\n\n"
            "def predict_fn(data, model):\n    return [model]\n"
        )
    }
    s3.put_object(Bucket=bucket, Key="models/slow/model.tar.gz", Body=inference_py_artifact(code))
    settings = Settings(
        model_source=f"s3://{bucket}/models/", cache_dir=tmp_path / "cache", invoke_timeout=0.2
    )
    with thread_server(settings) as srv:
        client = runtime_client(srv.url)
        with pytest.raises(client.exceptions.ModelNotReadyException):
            invoke(client, "slow/model.tar.gz")
        release.touch()
        # The load went on without the caller: it answers once the load is done.
        answers: list[Any] = []

        def answered() -> bool:
            try:
                answers.append(invoke(client, "slow/model.tar.gz"))
            except client.exceptions.ModelNotReadyException:
                return False
            return True

        wait_until(answered, "the slow model to become ready", poll_s=0)
        assert json.loads(answers[0]["Body"].read()) == [7]
        text = httpx.get(f"{srv.admin_url}/metrics").text
        assert metric(text, "modelfleet_model_loading_time_seconds_count") == 1


def test_thirty_two_concurrent_requests_for_a_cold_model_share_one_download_and_load(
    server: ThreadServer,
) -> None:
    client = runtime_client(server.url)

    def call(_: int) -> bytes:
        body: bytes = invoke(client, "forest-b/model.tar.gz")["Body"].read()
        return body

    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(call, range(32)))
    assert len(set(answers)) == 1
    text = httpx.get(f"{server.admin_url}/metrics").text
    assert metric(text, "modelfleet_model_downloads_total") == 1
    assert metric(text, "modelfleet_model_loading_time_seconds_count") == 1
    assert (
        metric(text, "modelfleet_model_cache_miss_total")
        + metric(text, "modelfleet_model_cache_hit_total")
        == 32
    )

"""Acceptance: a replay of SageMaker's multi-model XGBoost "home value" example.

Four XGBoost models, one per city, packaged as the built-in XGBoost container's training output
(``<city>.tar.gz`` holding ``xgboost-model``), uploaded to an S3-compatible server and invoked
through boto3 exactly as the example notebook does. Predictions must equal the local booster's.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xgboost

from modelfleet.config import Settings
from tests.artifacts import HomeValueModel, home_value_models
from tests.endpoint.test_boto3_s3 import runtime_client
from tests.servers import ThreadServer, thread_server


@pytest.fixture(scope="module")
def cities() -> dict[str, HomeValueModel]:
    return home_value_models()


@pytest.fixture
def server(
    cities: dict[str, HomeValueModel], s3_bucket: tuple[Any, str], aws_env: None, tmp_path: Path
) -> Iterator[ThreadServer]:
    s3, bucket = s3_bucket
    for model in cities.values():
        s3.put_object(Bucket=bucket, Key=f"home-value/{model.target_model}", Body=model.artifact)
    settings = Settings(model_source=f"s3://{bucket}/home-value/", cache_dir=tmp_path / "cache")
    with thread_server(settings) as srv:
        yield srv


def csv_rows(rows: np.ndarray[Any, Any]) -> str:
    return "\n".join(",".join(repr(float(v)) for v in row) for row in rows)


def test_home_value_predictions_match_the_local_boosters(
    server: ThreadServer, cities: dict[str, HomeValueModel]
) -> None:
    client = runtime_client(server.url)
    for model in cities.values():
        expected = model.booster.predict(xgboost.DMatrix(model.sample))
        for accept in ("application/json", "text/csv"):
            answer = client.invoke_endpoint(
                EndpointName="default",
                TargetModel=model.target_model,
                ContentType="text/csv",
                Accept=accept,
                Body=csv_rows(model.sample),
            )
            assert answer["ContentType"].startswith(accept)
            text = answer["Body"].read().decode()
            if accept == "application/json":
                got = np.asarray(json.loads(text), dtype=np.float32)
            else:
                got = np.asarray([float(v) for v in text.split(",")], dtype=np.float32)
            np.testing.assert_allclose(got, expected, rtol=1e-6)
    # Each city's model is its own: the same house is priced differently per city.
    house = next(iter(cities.values())).sample[:1]
    prices = {
        float(
            json.loads(
                client.invoke_endpoint(
                    EndpointName="default",
                    TargetModel=model.target_model,
                    ContentType="text/csv",
                    Body=csv_rows(house),
                )["Body"].read()
            )[0]
        )
        for model in cities.values()
    }
    assert len(prices) == 4

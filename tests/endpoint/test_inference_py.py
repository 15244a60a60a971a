"""Acceptance: SageMaker-toolkit ``code/inference.py`` artifacts behind the endpoint.

Two models ship a helper module of the same name with different contents; each must get its own.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from modelfleet.config import Settings
from tests.artifacts import inference_py_artifact
from tests.servers import thread_server

INFERENCE = """
import json
import helper

def model_fn(model_dir):
    return helper.NAME

def input_fn(data, content_type):
    return json.loads(data)

def predict_fn(data, model, context):
    attrs = context.custom_attributes or ""
    context.set_response_header(0, "X-Amzn-SageMaker-Custom-Attributes", "seen=" + attrs)
    return {"model": model, "sum": sum(data)}

def output_fn(prediction, accept):
    return json.dumps(prediction), "application/json"
"""


def test_two_models_with_same_named_helpers_each_get_their_own(tmp_path: Path) -> None:
    source = tmp_path / "source"
    for name in ("alpha", "beta"):
        (source / name).mkdir(parents=True)
        artifact = inference_py_artifact(
            {"inference.py": INFERENCE, "helper.py": f"NAME = {name!r}\n"}
        )
        (source / name / "model.tar.gz").write_bytes(artifact)
    settings = Settings(model_source=str(source), cache_dir=tmp_path / "cache")
    with thread_server(settings) as server:
        for _ in range(2):  # interleaved, twice: neither model's import leaks into the other
            for name in ("alpha", "beta"):
                response = httpx.post(
                    f"{server.url}/endpoints/default/invocations",
                    content=b"[1, 2, 3]",
                    headers={
                        "Content-Type": "application/json",
                        "X-Amzn-SageMaker-Target-Model": f"{name}/model.tar.gz",
                        "X-Amzn-SageMaker-Custom-Attributes": f"caller={name}",
                    },
                )
                assert response.status_code == 200, response.text
                assert json.loads(response.content) == {"model": name, "sum": 6}
                assert response.headers["x-amzn-sagemaker-custom-attributes"] == (
                    f"seen=caller={name}"
                )

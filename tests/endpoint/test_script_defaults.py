"""``inference.py`` models with only some functions: the framework containers' defaults, through
boto3's ``invoke_endpoint``.

Each reference answer is computed here the way the named container computes it, with the
inference toolkit's own ``decoder`` and ``encoder`` (the ``sagemaker-inference`` package) and
the container's default functions restated from its source:

* scikit-learn: ``DefaultSKLearnUserModuleInferenceHandler`` in
  ``sagemaker_sklearn_container/handler_service.py``
  (github.com/aws/sagemaker-scikit-learn-container);
* PyTorch: ``DefaultPytorchInferenceHandler`` in
  ``sagemaker_pytorch_serving_container/default_pytorch_inference_handler.py``
  (github.com/aws/sagemaker-pytorch-inference-toolkit), on the CPU;
* XGBoost: ``DefaultXGBoostUserModuleInferenceHandler`` in
  ``sagemaker_xgboost_container/handler_service.py`` (github.com/aws/sagemaker-xgboost-container).
"""

from __future__ import annotations

import io
import json
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
import torch
import xgboost
from botocore.exceptions import ClientError
from sagemaker_inference import content_types, decoder, encoder
from sklearn.linear_model import LinearRegression

from modelfleet.config import Settings
from tests.artifacts import make_tar_gz
from tests.endpoint.test_boto3_s3 import runtime_client
from tests.servers import ThreadServer, thread_server

ROWS = np.array([[0.5, -1.25, 2.0], [1.0, 0.0, -3.5]])


def _csv(rows: np.ndarray[Any, Any]) -> str:
    return "\n".join(",".join(repr(float(v)) for v in row) for row in rows)


def _npy(array: np.ndarray[Any, Any]) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


#: (content type, body) pairs sent to every model
BODIES = [
    ("text/csv", _csv(ROWS[:1])),  # one row: the defaults make it (1, n)
    ("text/csv", _csv(ROWS)),
    ("application/json", json.dumps(ROWS[0].tolist())),
    ("application/json", json.dumps(ROWS.tolist())),
    ("application/x-npy", _npy(ROWS)),
]
ACCEPTS = ["application/json", "text/csv", "application/x-npy"]

SKLEARN_CODE = """
import os
import joblib

def model_fn(model_dir):
    return joblib.load(os.path.join(model_dir, "model.joblib"))
"""

TORCH_NET = """
import os
import torch

class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(3, 2)
        self.dropout = torch.nn.Dropout(p=0.5)  # random unless the model is in eval mode

    def forward(self, x):
        return self.dropout(self.linear(x))

def model_fn(model_dir):
    net = Net()  # in training mode, as a new module is
    net.load_state_dict(torch.load(os.path.join(model_dir, "model.pth")))
    return net
"""

TORCH_PREDICT = """
def predict_fn(data, model):
    if not isinstance(data, torch.Tensor):
        raise TypeError(f"expected a tensor, got {type(data).__name__}")
    with torch.no_grad():
        model.eval()
        return model(data) * 2
"""

XGBOOST_CODE = """
import os
import xgboost

def model_fn(model_dir):
    booster = xgboost.Booster()
    booster.load_model(os.path.join(model_dir, "model.ubj"))
    return booster
"""

OVERRIDE_CODE = """
import os
import joblib

MODELFLEET_FRAMEWORK = "toolkit"

def model_fn(model_dir):
    return joblib.load(os.path.join(model_dir, "model.joblib"))

def predict_fn(data, model):
    return [data.ndim]  # the toolkit's decoder leaves one CSV row 1-D
"""


def _net() -> torch.nn.Module:
    namespace: dict[str, Any] = {}
    exec(textwrap.dedent(TORCH_NET), namespace)  # the same class inference.py defines
    torch.manual_seed(0)
    return namespace["Net"]()  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def models() -> dict[str, Any]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 3))
    regression = LinearRegression().fit(x, x @ [1.5, -2.0, 0.5] + 0.25)
    booster = xgboost.train(
        {"max_depth": 2, "nthread": 1}, xgboost.DMatrix(x, label=x[:, 0] * 2), num_boost_round=5
    )
    return {"sklearn": regression, "torch": _net(), "xgboost": booster}


def _state_dict_bytes(net: torch.nn.Module) -> bytes:
    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    return buffer.getvalue()


def _joblib_bytes(estimator: Any) -> bytes:
    buffer = io.BytesIO()
    joblib.dump(estimator, buffer)
    return buffer.getvalue()


@pytest.fixture
def server(models: dict[str, Any], tmp_path: Path) -> Iterator[ThreadServer]:
    source = tmp_path / "source"
    source.mkdir()
    booster_bytes = bytes(models["xgboost"].save_raw(raw_format="ubj"))
    artifacts = {
        "sklearn-model-fn-only": {
            "code/inference.py": SKLEARN_CODE.encode(),
            "model.joblib": _joblib_bytes(models["sklearn"]),
        },
        "torch-model-fn-only": {
            "code/inference.py": TORCH_NET.encode(),
            "model.pth": _state_dict_bytes(models["torch"]),
        },
        "torch-state-dict": {
            "code/inference.py": (TORCH_NET + TORCH_PREDICT).encode(),
            "model.pth": _state_dict_bytes(models["torch"]),
        },
        "xgboost-model-fn-only": {
            "code/inference.py": XGBOOST_CODE.encode(),
            "model.ubj": booster_bytes,
        },
        "override": {
            "code/inference.py": OVERRIDE_CODE.encode(),
            "model.joblib": _joblib_bytes(models["sklearn"]),
        },
        "bad-override": {
            "code/inference.py": OVERRIDE_CODE.replace('"toolkit"', '"tensorflow"').encode(),
            "model.joblib": _joblib_bytes(models["sklearn"]),
        },
        "no-default": {
            "code/inference.py": b"def model_fn(model_dir):\n    return {'not': 'a model'}\n",
        },
    }
    for name, files in artifacts.items():
        (source / f"{name}.tar.gz").write_bytes(make_tar_gz(files))
    with thread_server(Settings(model_source=str(source), cache_dir=tmp_path / "cache")) as srv:
        yield srv


def _text_if_utf8(body: str | bytes, content_type: str) -> str | bytes:
    """What the toolkit hands input_fn: str for CSV and JSON, bytes otherwise."""
    if content_type in content_types.UTF8_TYPES:
        return body if isinstance(body, str) else body.decode()
    return body if isinstance(body, bytes) else body.encode()


def sklearn_container(model: Any, body: str | bytes, content_type: str, accept: str) -> Any:
    np_array = decoder.decode(_text_if_utf8(body, content_type), content_type)
    if len(np_array.shape) == 1:
        np_array = np_array.reshape(1, -1)
    if content_type in content_types.UTF8_TYPES:
        np_array = np_array.astype(np.float32)
    return encoder.encode(model.predict(np_array), accept)


def torch_container(
    model: torch.nn.Module, body: str | bytes, content_type: str, accept: str, scale: float = 1
) -> Any:
    np_array = decoder.decode(_text_if_utf8(body, content_type), content_type)
    if content_type in content_types.UTF8_TYPES:
        tensor = torch.FloatTensor(np_array)
    else:
        tensor = torch.from_numpy(np_array)
    with torch.no_grad():
        model.eval()
        output = model(tensor) * scale
    return encoder.encode(output.detach().cpu().numpy().tolist(), accept)


def xgboost_container(booster: Any, body: str | bytes, content_type: str, accept: str) -> Any:
    text = _text_if_utf8(body, content_type)
    assert isinstance(text, str)
    rows = np.array(
        [["nan" if v == "" else v for v in line.split(",")] for line in text.split("\n")]
    )
    prediction = booster.predict(xgboost.DMatrix(rows.astype(float)), validate_features=False)
    return encoder.encode(prediction, accept)


def _same_answer(got: bytes, expected: str | bytes, accept: str) -> None:
    if accept == "application/x-npy":
        mine, theirs = np.load(io.BytesIO(got)), np.load(io.BytesIO(expected))  # type: ignore[arg-type]
        assert mine.dtype == theirs.dtype
        np.testing.assert_array_equal(mine, theirs)
    else:
        assert got == (expected.encode() if isinstance(expected, str) else expected)


def _invoke(client: Any, target: str, body: str | bytes, content_type: str, accept: str) -> Any:
    return client.invoke_endpoint(
        EndpointName="default",
        TargetModel=f"{target}.tar.gz",
        ContentType=content_type,
        Accept=accept,
        Body=body,
    )


@pytest.mark.parametrize(
    ("target", "reference"),
    [
        ("sklearn-model-fn-only", "sklearn"),
        ("torch-model-fn-only", "torch"),
        ("torch-state-dict", "torch-doubled"),
    ],
)
def test_inference_py_with_model_fn_only_answers_as_its_container(
    server: ThreadServer, models: dict[str, Any], target: str, reference: str
) -> None:
    client = runtime_client(server.url)
    bodies = BODIES
    if reference != "sklearn":  # from_numpy keeps the dtype, and the weights are float32
        bodies = [*BODIES[:-1], ("application/x-npy", _npy(ROWS.astype(np.float32)))]
    for content_type, body in bodies:
        for accept in ACCEPTS:
            if reference == "sklearn":
                expected = sklearn_container(models["sklearn"], body, content_type, accept)
            else:
                scale = 2.0 if reference == "torch-doubled" else 1.0
                expected = torch_container(models["torch"], body, content_type, accept, scale)
            answer = _invoke(client, target, body, content_type, accept)
            assert answer["ContentType"].startswith(accept), (content_type, accept)
            _same_answer(answer["Body"].read(), expected, accept)
    if reference != "sklearn":  # float64 .npy fails in the container's forward pass, and here
        with pytest.raises(RuntimeError, match="same dtype"):
            torch_container(models["torch"], _npy(ROWS), "application/x-npy", "text/csv")
        with pytest.raises(ClientError) as caught:
            _invoke(client, target, _npy(ROWS), "application/x-npy", "text/csv")
        assert caught.value.response["Error"]["Code"] == "ModelError"
        assert "same dtype" in caught.value.response["Error"]["Message"]


def test_an_xgboost_booster_gets_the_xgboost_containers_defaults(
    server: ThreadServer, models: dict[str, Any]
) -> None:
    client = runtime_client(server.url)
    for rows in (ROWS[:1], ROWS):
        for accept in ("application/json", "text/csv"):
            expected = xgboost_container(models["xgboost"], _csv(rows), "text/csv", accept)
            answer = _invoke(client, "xgboost-model-fn-only", _csv(rows), "text/csv", accept)
            assert answer["ContentType"].startswith(accept)
            _same_answer(answer["Body"].read(), expected, accept)
    # The XGBoost container's decoder reads CSV and LibSVM, not JSON: a 415 inside.
    with pytest.raises(ClientError) as caught:
        _invoke(client, "xgboost-model-fn-only", "[[1, 2, 3]]", "application/json", "text/csv")
    assert caught.value.response["OriginalStatusCode"] == 415
    assert "the XGBoost defaults read" in caught.value.response["Error"]["Message"]


def test_modelfleet_framework_chooses_the_defaults(server: ThreadServer) -> None:
    client = runtime_client(server.url)
    answer = _invoke(client, "override", _csv(ROWS[:1]), "text/csv", "application/json")
    assert json.loads(answer["Body"].read()) == [1]  # the sklearn defaults would give 2 dims
    with pytest.raises(ClientError) as caught:
        _invoke(client, "bad-override", _csv(ROWS[:1]), "text/csv", "application/json")
    assert caught.value.response["Error"]["Code"] == "ModelError"
    message = caught.value.response["Error"]["Message"]
    assert "MODELFLEET_FRAMEWORK = 'tensorflow'" in message
    assert "sklearn, pytorch, xgboost, toolkit" in message


def test_a_model_with_no_default_predict_fn_says_what_is_missing(server: ThreadServer) -> None:
    client = runtime_client(server.url)
    with pytest.raises(ClientError) as caught:
        _invoke(client, "no-default", "1,2", "text/csv", "application/json")
    message = caught.value.response["Error"]["Message"]
    assert "must define predict_fn" in message
    assert "model_fn returned a dict, which has no default predict_fn" in message

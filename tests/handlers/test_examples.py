"""The example artifacts load with the detected handler and answer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import modelfleet.handlers
from modelfleet.examples import create_examples
from modelfleet.handlers import load_model, normalize_handler
from tests.artifacts import unpack

REQUESTS = {
    "numpy-linear": (b"1,2,3,4", "inference.py"),
    "sklearn-iris": (b"5.1,3.5,1.4,0.2\n6.7,3.0,5.2,2.3", "sklearn"),
    "xgboost-housing": (b"1990,2500,3,2,1.0,2", "xgboost"),
    "lightgbm-housing": (b"1990,2500,3,2,1.0,2", "lightgbm"),
    "onnx-linear": (b"1,2,3,4", "onnx"),
    "torch-mlp": (b"1,2,3,4", "torch"),
}


@pytest.mark.slow  # trains and loads every example, torch included
@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_examples_are_deterministic_and_serve(tmp_path: Path) -> None:
    targets = create_examples(tmp_path / "source")
    assert targets == [f"{name}/model.tar.gz" for name in REQUESTS]
    again = create_examples(tmp_path / "again")
    for target in targets:
        if target.startswith("torch-"):
            continue  # TorchScript mangles class names when tracing twice in one process
        first, second = tmp_path / "source" / target, tmp_path / "again" / target
        assert first.read_bytes() == second.read_bytes()
    assert again == targets
    for name, (body, handler) in REQUESTS.items():
        artifact = (tmp_path / "source" / name / "model.tar.gz").read_bytes()
        model = load_model(unpack(artifact, tmp_path / "unpacked" / name), model_id=name)
        assert model.handler_name == handler
        answer = model.invoke(body, "text/csv", None, "trace=1")
        assert answer.content_type == "application/json"
        assert json.loads(answer.body)
        if name == "numpy-linear":
            assert json.loads(answer.body) == [7.0]  # 0.5 - 2 + 6 + 1 + 1.5
            assert answer.custom_attributes == "trace=1"
        model.close()


def test_public_names() -> None:
    assert sorted(modelfleet.handlers.__all__) == sorted(
        [
            "HANDLER_NAMES",
            "LoadedModel",
            "Prediction",
            "detect_handler",
            "load_model",
            "normalize_handler",
            "take_snapshot",
        ]
    )
    assert normalize_handler(" PyTorch ") == "torch"
    assert normalize_handler("scikit-learn") == "sklearn"
    assert normalize_handler("inference.py") == "inference.py"

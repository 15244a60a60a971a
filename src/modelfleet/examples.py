"""Small example artifacts to try modelfleet with, written into a model-source folder.

:func:`create_examples` writes a ``model.tar.gz`` per example, in the SageMaker layout, and
returns their target-model names:

* ``numpy-linear/model.tar.gz``: ``code/inference.py`` (numpy only) with a helper module and
  ``weights.json``; it echoes the request's custom attributes back;
* ``sklearn-iris/model.tar.gz``: a random forest on the iris data set (``model.joblib``);
* ``xgboost-housing/model.tar.gz``: the built-in XGBoost layout (one ``xgboost-model`` file),
  trained on synthetic home values like SageMaker's multi-model XGBoost example;
* ``lightgbm-housing/model.tar.gz``: the same data, a LightGBM text model;
* ``onnx-linear/model.tar.gz``: a linear model built with the ``onnx`` package;
* ``torch-mlp/model.tar.gz``: a small TorchScript network (``model.pt``).

Frameworks that are not installed are skipped. Everything is seeded, so two runs write the same
models.
"""

from __future__ import annotations

import gzip
import importlib
import importlib.util
import io
import json
import logging
import tarfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

logger = logging.getLogger(__name__)

#: the columns of the synthetic home-value data, in request order
HOME_VALUE_FEATURES = (
    "YEAR_BUILT",
    "SQUARE_FEET",
    "NUM_BEDROOMS",
    "NUM_BATHROOMS",
    "LOT_ACRES",
    "GARAGE_SPACES",
)
_MAX_YEAR = 2024

_INFERENCE_PY = '''\
"""A numpy-only model for modelfleet's examples: a linear score per row."""

import json
import os

import numpy as np

from linear_helper import score


def model_fn(model_dir):
    with open(os.path.join(model_dir, "weights.json")) as stream:
        weights = json.load(stream)
    return np.array(weights["coef"]), float(weights["intercept"])


def predict_fn(data, model, context):
    attributes = context.get_request_header(0, "X-Amzn-SageMaker-Custom-Attributes")
    if attributes:
        context.set_response_header(0, "X-Amzn-SageMaker-Custom-Attributes", attributes)
    coef, intercept = model
    return score(np.atleast_2d(np.asarray(data, dtype=float)), coef, intercept)
'''

_HELPER_PY = """\
def score(rows, coef, intercept):
    return rows @ coef + intercept
"""


def home_value_data(
    n_rows: int, *, seed: int, price_scale: float = 1.0
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Synthetic houses (columns :data:`HOME_VALUE_FEATURES`) and their prices.

    In the spirit of SageMaker's ``multi_model_xgboost_home_value`` example: the price grows
    with the surface, rooms, land and garage, falls with age, and ``price_scale`` sets the
    city's level.
    """
    rng = np.random.default_rng(seed)
    year = np.minimum(_MAX_YEAR, rng.normal(1995, 10, n_rows).round())
    square_feet = rng.normal(3000, 750, n_rows).round().clip(500)
    bedrooms = rng.integers(2, 7, n_rows).astype(np.float64)
    bathrooms = rng.integers(2, 7, n_rows) / 2
    lot_acres = rng.normal(1.0, 0.25, n_rows).round(2).clip(0.05)
    garage = rng.integers(0, 4, n_rows).astype(np.float64)
    features = np.column_stack([year, square_feet, bedrooms, bathrooms, lot_acres, garage])
    price = (
        150 * square_feet
        + 10_000 * bedrooms
        + 15_000 * bathrooms
        + 15_000 * lot_acres
        + 15_000 * garage
        - 5_000 * (_MAX_YEAR - year)
    ) * price_scale + rng.normal(0, 10_000, n_rows)
    return features, price


def tar_gz(files: dict[str, bytes]) -> bytes:
    """A deterministic ``.tar.gz`` of ``files`` (name -> content, ``/`` for folders)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size = len(files[name])
            info.mode = 0o644
            archive.addfile(info, io.BytesIO(files[name]))
    return gzip.compress(buffer.getvalue(), mtime=0)


def _installed(*modules: str) -> bool:
    return all(importlib.util.find_spec(module) is not None for module in modules)


def _numpy_linear() -> dict[str, bytes]:
    weights = {"coef": [0.5, -1.0, 2.0, 0.25], "intercept": 1.5}
    return {
        "weights.json": json.dumps(weights).encode(),
        "code/inference.py": _INFERENCE_PY.encode(),
        "code/linear_helper.py": _HELPER_PY.encode(),
    }


def _sklearn_iris() -> dict[str, bytes]:
    import joblib
    from sklearn.datasets import load_iris
    from sklearn.ensemble import RandomForestClassifier

    data = load_iris()
    forest = RandomForestClassifier(n_estimators=10, max_depth=4, random_state=0)
    forest.fit(data.data, data.target)
    buffer = io.BytesIO()
    joblib.dump(forest, buffer)
    return {"model.joblib": buffer.getvalue()}


def _xgboost_housing() -> dict[str, bytes]:
    import xgboost

    features, price = home_value_data(400, seed=7)
    params = {"objective": "reg:squarederror", "max_depth": 4, "eta": 0.3, "nthread": 1}
    booster = xgboost.train(params, xgboost.DMatrix(features, label=price), num_boost_round=20)
    return {"xgboost-model": bytes(booster.save_raw("ubj"))}


def _lightgbm_housing() -> dict[str, bytes]:
    import lightgbm

    features, price = home_value_data(400, seed=8)
    params = {"objective": "regression", "num_leaves": 15, "verbose": -1, "num_threads": 1}
    booster = lightgbm.train(params, lightgbm.Dataset(features, label=price), num_boost_round=20)
    return {"model.txt": booster.model_to_string().encode()}


def _onnx_linear() -> dict[str, bytes]:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = np.array([[0.5], [-1.0], [2.0], [0.25]], dtype=np.float32)
    bias = np.array([1.5], dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["input", "W", "B"], ["output"])],
        "linear",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [None, 1])],
        initializer=[numpy_helper.from_array(weights, "W"), numpy_helper.from_array(bias, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return {"model.onnx": model.SerializeToString()}


def _torch_mlp() -> dict[str, bytes]:
    torch: Any = importlib.import_module("torch")  # untyped on purpose: torch.jit is deprecated

    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # TorchScript is deprecated from PyTorch 2.13 but is what SageMaker artifacts hold;
        # torch.export (model.pt2, also served) takes ~1.5 s, too slow for these examples.
        warnings.filterwarnings("ignore", message="`torch.jit", category=DeprecationWarning)
        traced = torch.jit.trace(network.eval(), torch.zeros(1, 4))
        torch.jit.save(traced, buffer)
    return {"model.pt": buffer.getvalue()}


_EXAMPLES: tuple[tuple[str, tuple[str, ...], Callable[[], dict[str, bytes]]], ...] = (
    ("numpy-linear", (), _numpy_linear),
    ("sklearn-iris", ("sklearn", "joblib"), _sklearn_iris),
    ("xgboost-housing", ("xgboost",), _xgboost_housing),
    ("lightgbm-housing", ("lightgbm",), _lightgbm_housing),
    ("onnx-linear", ("onnx", "onnxruntime"), _onnx_linear),
    ("torch-mlp", ("torch",), _torch_mlp),
)


def create_examples(dest: Path) -> list[str]:
    """Write the example artifacts under ``dest``; return their target-model names."""
    written: list[str] = []
    for name, modules, build in _EXAMPLES:
        if not _installed(*modules):
            logger.info("Skipping example %s: %s not installed", name, ", ".join(modules))
            continue
        files = build()
        target = f"{name}/model.tar.gz"
        path = dest / target
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(tar_gz(files))
        written.append(target)
    logger.info("Wrote %d example models to %s", len(written), dest)
    return written

"""Builders of model artifacts for tests: tar.gz files in the SageMaker layouts, and the models.

Each builder is seeded and small (well under a second). Framework imports happen inside the
builders, so importing this module needs only numpy.
"""

from __future__ import annotations

import importlib
import io
import pickle
import tarfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelfleet.examples import home_value_data, tar_gz

#: the ``make_folder`` fixture's type: files (relative name -> bytes) in, a new folder out
FolderFactory = Callable[[dict[str, bytes]], Path]

#: the cities of SageMaker's multi_model_xgboost_home_value example (its first four) and the
#: price level used for each here
HOME_VALUE_CITIES = {
    "NewYork_NY": 1.6,
    "LosAngeles_CA": 1.4,
    "Chicago_IL": 1.0,
    "Houston_TX": 0.8,
}


def make_tar_gz(files: dict[str, bytes]) -> bytes:
    """A deterministic ``.tar.gz`` holding ``files`` (archive name -> content)."""
    return tar_gz(files)


def unpack(artifact: bytes, dest: Path) -> Path:
    """Extract a ``.tar.gz`` into ``dest`` (created) and return ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(artifact), mode="r:gz") as archive:
        archive.extractall(dest, filter="data")
    return dest


def features(seed: int, n_rows: int, n_features: int) -> np.ndarray[Any, Any]:
    """Standard normal features."""
    return np.random.default_rng(seed).normal(size=(n_rows, n_features))


# ------------------------------------------------------------------ scikit-learn


def train_sklearn(seed: int = 0, n_features: int = 10, n_trees: int = 10) -> Any:
    """A small ``RandomForestRegressor`` on synthetic data."""
    from sklearn.ensemble import RandomForestRegressor

    x = features(seed, 200, n_features)
    y = x @ np.linspace(-1.0, 1.0, n_features) + np.random.default_rng(seed + 1).normal(size=200)
    forest = RandomForestRegressor(n_estimators=n_trees, max_depth=5, random_state=seed, n_jobs=1)
    return forest.fit(x, y)


def joblib_bytes(estimator: Any) -> bytes:
    """``joblib.dump`` of ``estimator``."""
    import joblib

    buffer = io.BytesIO()
    joblib.dump(estimator, buffer)
    return buffer.getvalue()


def sklearn_artifact(seed: int = 0, n_features: int = 10, n_trees: int = 10) -> bytes:
    """A tar.gz holding ``model.joblib`` (a random forest, see :func:`train_sklearn`)."""
    return make_tar_gz({"model.joblib": joblib_bytes(train_sklearn(seed, n_features, n_trees))})


# ------------------------------------------------------------------ XGBoost


def train_xgboost(
    seed: int = 0, n_features: int = 6, rounds: int = 10, objective: str = "reg:squarederror"
) -> Any:
    """A small XGBoost ``Booster`` (regression, or binary with ``binary:logistic``)."""
    import xgboost

    x = features(seed, 200, n_features)
    y = x @ np.arange(1.0, n_features + 1)
    if objective.startswith("binary:"):
        y = (y > 0).astype(np.float64)
    params = {"objective": objective, "max_depth": 3, "nthread": 1, "seed": seed}
    return xgboost.train(params, xgboost.DMatrix(x, label=y), num_boost_round=rounds)


def xgboost_model_bytes(booster: Any, *, fmt: str = "ubj", pickled: bool = False) -> bytes:
    """A booster as the bytes of a model file: native ``ubj``/``json``, or a pickle."""
    if pickled:
        return pickle.dumps(booster, protocol=pickle.HIGHEST_PROTOCOL)
    return bytes(booster.save_raw(fmt))


def xgboost_builtin_artifact(booster: Any, *, pickled: bool = False) -> bytes:
    """The SageMaker built-in XGBoost layout: a tar.gz with one ``xgboost-model`` file."""
    return make_tar_gz({"xgboost-model": xgboost_model_bytes(booster, pickled=pickled)})


@dataclass(frozen=True)
class HomeValueModel:
    """One city's model of the multi-model home-value example."""

    city: str
    booster: Any
    artifact: bytes
    sample: np.ndarray[Any, Any]

    @property
    def target_model(self) -> str:
        """The artifact's name in the example (``NewYork_NY.tar.gz``)."""
        return f"{self.city}.tar.gz"


def home_value_models(n_rows: int = 300, rounds: int = 10) -> dict[str, HomeValueModel]:
    """Train the four city models of SageMaker's ``multi_model_xgboost_home_value`` example.

    Features are :data:`modelfleet.examples.HOME_VALUE_FEATURES`; each city has its own seed
    and price level. Artifacts use the built-in XGBoost layout.
    """
    import xgboost

    models = {}
    for index, (city, scale) in enumerate(HOME_VALUE_CITIES.items()):
        x, price = home_value_data(n_rows, seed=100 + index, price_scale=scale)
        params = {"objective": "reg:squarederror", "max_depth": 4, "eta": 0.3, "nthread": 1}
        booster = xgboost.train(params, xgboost.DMatrix(x, label=price), num_boost_round=rounds)
        models[city] = HomeValueModel(city, booster, xgboost_builtin_artifact(booster), x[:5])
    return models


# ------------------------------------------------------------------ inference.py


def inference_py_artifact(
    code: dict[str, str], extra_files: dict[str, bytes] | None = None
) -> bytes:
    """A tar.gz with ``code/<name>`` for each entry of ``code`` plus ``extra_files`` at the root."""
    files = {f"code/{name}": text.encode() for name, text in code.items()}
    files.update(extra_files or {})
    return make_tar_gz(files)


# ------------------------------------------------------------------ LightGBM, ONNX, PyTorch


def train_lightgbm(seed: int = 0, n_features: int = 6, rounds: int = 10) -> Any:
    """A small LightGBM regression ``Booster``."""
    import lightgbm

    x = features(seed, 200, n_features)
    y = x @ np.arange(1.0, n_features + 1)
    params = {"objective": "regression", "num_leaves": 7, "verbose": -1, "num_threads": 1}
    return lightgbm.train(params, lightgbm.Dataset(x, label=y), num_boost_round=rounds)


def onnx_linear_bytes(weights: np.ndarray[Any, Any], bias: float) -> bytes:
    """An ONNX model computing ``input @ weights + bias`` (``weights`` of shape (n, 1))."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    n_features = weights.shape[0]
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["input", "W", "B"], ["output"])],
        "linear",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, n_features])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [None, 1])],
        initializer=[
            numpy_helper.from_array(weights.astype(np.float32), "W"),
            numpy_helper.from_array(np.array([bias], dtype=np.float32), "B"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def torchscript_model(seed: int = 0, n_features: int = 4) -> tuple[Any, bytes]:
    """A small traced MLP and the bytes of its TorchScript file."""
    torch: Any = importlib.import_module("torch")  # torch.jit.trace is untyped

    torch.manual_seed(seed)
    network = torch.nn.Sequential(
        torch.nn.Linear(n_features, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)
    ).eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`torch.jit", category=DeprecationWarning)
        traced = torch.jit.trace(network, torch.zeros(1, n_features))
        torch.jit.save(traced, buffer)
    return network, buffer.getvalue()


def sklearn_source(root: Path, models: list[str], n_features: int) -> Path:
    """A folder source holding one small forest per target model (seeded by its index)."""
    for index, name in enumerate(models):
        path = root / name
        path.parent.mkdir(parents=True)
        path.write_bytes(sklearn_artifact(seed=index, n_features=n_features, n_trees=2))
    return root

"""XGBoost boosters, including the SageMaker built-in XGBoost container's layout.

Files: ``xgboost-model`` (what the built-in algorithm writes; a native model or a pickled
``Booster``), ``*.json``, ``*.ubj``, ``*.bst``, ``*.model``, or a folder holding one regular file.
The container's ``get_loaded_booster`` tries ``pickle.load`` and then ``Booster.load_model``; here
the file's first byte decides (``0x80`` starts every pickle of protocol 2 or later), which loads the
same files without unpickling native ones. Native files are read from bytes, so XGBoost detects
JSON or UBJSON from the content whatever the file name.

Requests and responses follow the container's MME handler (``handler_service.py``):

* input: rows of floats; ``text/csv`` without a header (as the container), also JSON and ``.npy``;
* ``text/csv`` answer: the predictions joined by commas, ``str()`` of each, no trailing newline
  (``",".join(map(str, prediction.tolist()))``, kept by the container for compatibility, even
  for multi-class rows);
* ``application/json`` answer: the inference toolkit's encoder, a JSON list of predictions;
* ``application/x-npy`` answer: ``np.save`` of the predictions (a modelfleet extra).

As in the container, the booster predicts with ``nthread=1`` (parallelism comes from serving many
requests at once; it is parsed with up to 4 threads) and, when it was trained with
early stopping, predicts with the trees up to its best iteration. ``inplace_predict`` serves
tree boosters, which XGBoost documents as thread-safe; ``gblinear`` goes through ``DMatrix``
under a lock.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import threading
from pathlib import Path
from typing import Any

import numpy as np

from modelfleet.errors import ModelLoadError
from modelfleet.handlers import codecs
from modelfleet.handlers.arraymodel import ArrayModel, import_framework, load_error
from modelfleet.handlers.detect import XGBOOST, model_file

logger = logging.getLogger(__name__)

_PICKLE_PROTOCOL_2_PLUS = 0x80
_INPLACE_BOOSTERS = frozenset({"gbtree", "dart"})
_PARSE_THREADS = max(1, min(4, os.cpu_count() or 1))


class XGBoostModel(ArrayModel):
    """A ``Booster`` answering like the SageMaker XGBoost container."""

    handler_name = XGBOOST

    def __init__(self, model_id: str, path: Path, booster: Any, xgb: Any) -> None:
        super().__init__(model_id, path)
        self.booster: Any = booster
        self._xgb = xgb
        config = json.loads(booster.save_config())
        self.booster_type = str(config["learner"]["gradient_booster"]["name"])
        best = booster.attr("best_iteration")
        self.iteration_range = (0, int(best) + 1) if best is not None else (0, 0)
        self._lock = threading.Lock()

    def predict(self, features: codecs.Array) -> Any:
        if self.booster_type in _INPLACE_BOOSTERS:
            return self.booster.inplace_predict(
                features, iteration_range=self.iteration_range, validate_features=False
            )
        matrix = self._xgb.DMatrix(features)
        with self._lock:
            return self.booster.predict(
                matrix, iteration_range=self.iteration_range, validate_features=False
            )

    def encode(self, prediction: Any, accept: str | None) -> tuple[bytes, str]:
        kind = codecs.choose_accept(accept)
        if kind == codecs.CSV:
            text = ",".join(map(str, np.asarray(prediction).tolist()))
            return text.encode(), codecs.CSV
        return codecs.encode(prediction, kind)

    def close(self) -> None:
        self.booster = None


def _unpickle(path: Path, raw: bytes, xgb: Any) -> Any:
    try:
        loaded = pickle.loads(raw)  # the model source is trusted (docs/handlers.md)
    except Exception as exc:
        raise load_error(XGBOOST, path, exc) from exc
    if not isinstance(loaded, xgb.Booster) and callable(getattr(loaded, "get_booster", None)):
        loaded = loaded.get_booster()  # an XGBRegressor/XGBClassifier pickled whole
    if not isinstance(loaded, xgb.Booster):
        raise ModelLoadError(
            f"{path.name} is a pickle of {type(loaded).__name__}, not an XGBoost Booster."
        )
    return loaded


def load_booster(path: Path, xgb: Any) -> Any:
    """Read a native (JSON, UBJSON) or pickled booster from ``path``."""
    # Read straight into the bytearray XGBoost parses: one copy of a large model, not two.
    raw = bytearray(path.stat().st_size)
    with path.open("rb") as file:
        file.readinto(raw)
    if not raw:
        raise ModelLoadError(f"The xgboost handler could not load {path.name}: the file is empty")
    if raw[0] == _PICKLE_PROTOCOL_2_PLUS:
        return _unpickle(path, bytes(raw), xgb)
    # Parse with an OpenMP team: on 2 cores a 100 MB model loaded in 0.34-0.35 s against 0.48-0.49
    # s on one thread, a 1 MB model in 3-4 ms against 5-6 ms. At most 4 threads: libgomp keeps
    # an idle team per calling thread, and loads run on up to 2 x cores threads. Predictions
    # then run on one thread (set by the caller).
    booster = xgb.Booster(params={"nthread": _PARSE_THREADS})
    try:
        booster.load_model(raw)
    except Exception as exc:
        raise load_error(XGBOOST, path, exc) from exc
    return booster


def load(model_dir: Path, *, model_id: str) -> XGBoostModel:
    """Load the booster file in ``model_dir``."""
    path = model_file(model_dir, XGBOOST)
    xgb = import_framework("xgboost", framework="XGBoost", extra="xgboost")
    booster = load_booster(path, xgb)
    booster.set_param("nthread", 1)
    model = XGBoostModel(model_id, path, booster, xgb)
    logger.debug("Loaded %s booster from %s", model.booster_type, path)
    return model

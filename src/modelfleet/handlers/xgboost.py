"""XGBoost boosters, including the SageMaker built-in XGBoost container's layout.

Files: ``xgboost-model`` (what the built-in algorithm writes; a native model or a pickled
``Booster``), ``*.json``, ``*.ubj``, ``*.bst``, ``*.model``, or a folder holding one regular file.
The container's ``get_loaded_booster`` tries ``pickle.load`` and then ``Booster.load_model``; here
the file's first byte decides (``0x80`` starts every pickle of protocol 2 or later), which loads the
same files without unpickling native ones. Native files are read from bytes, so XGBoost detects
JSON or UBJSON from the content whatever the file name.

XGBoost 1.x's binary format (``binf``: what the built-in containers 1.2-2 to 1.7-1 save), which
XGBoost 3 no longer reads, is converted to the JSON model XGBoost 1.7.6 writes for it
(:mod:`modelfleet.handlers.xgboost_legacy`) and loaded from that. The conversion is kept: the
converted booster is the model's load snapshot (UBJSON, next to the artifact in the disk cache),
which later loads of the same artifact read instead (models up to the snapshot size limit).

Requests and responses follow the container's MME handler (``handler_service.py``):

* input: rows of floats; ``text/csv`` without a header (as the container), also JSON and ``.npy``;
  ``text/libsvm`` (or ``text/x-libsvm``) as the container reads it: lines of
  space-separated ``index:value`` pairs (a leading label or any token without ``:`` ignored,
  indexes from 0, absent features missing), a sparse matrix as wide as the highest index + 1;
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
import time
from pathlib import Path
from typing import Any

import numpy as np

from modelfleet.errors import ModelLoadError
from modelfleet.handlers import codecs, xgboost_legacy
from modelfleet.handlers.arraymodel import ArrayModel, import_framework, load_error
from modelfleet.handlers.detect import XGBOOST, model_file

logger = logging.getLogger(__name__)

_PICKLE_PROTOCOL_2_PLUS = 0x80
_INPLACE_BOOSTERS = frozenset({"gbtree", "dart"})
_PARSE_THREADS = max(1, min(4, os.cpu_count() or 1))
LIBSVM = "text/libsvm"
_LIBSVM_TYPES = frozenset({LIBSVM, "text/x-libsvm"})
#: packages whose versions a load snapshot must match (:mod:`modelfleet.handlers.snapshot`)
SNAPSHOT_PACKAGES = ("xgboost",)


class XGBoostModel(ArrayModel):
    """A ``Booster`` answering like the SageMaker XGBoost container."""

    handler_name = XGBOOST

    def __init__(
        self, model_id: str, path: Path, booster: Any, xgb: Any, *, converted: bool = False
    ) -> None:
        super().__init__(model_id, path)
        self.booster: Any = booster
        # a booster converted from the binary format keeps its conversion as its load snapshot
        self.snapshot_capable = converted
        self._xgb = xgb
        config = json.loads(booster.save_config())
        self.booster_type = str(config["learner"]["gradient_booster"]["name"])
        self.features = int(booster.num_features())
        best = booster.attr("best_iteration")
        self.iteration_range = (0, int(best) + 1) if best is not None else (0, 0)
        self._lock = threading.Lock()

    def decode(self, body: bytes, content_type: str | None) -> Any:
        if content_type and codecs.media_type(content_type) in _LIBSVM_TYPES:
            matrix = libsvm_matrix(body)
            if matrix.shape[1] < self.features:  # the features past its last index are missing
                matrix.resize((matrix.shape[0], self.features))
            return matrix
        return super().decode(body, content_type)

    def predict(self, features: Any) -> Any:
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

    def snapshot(self) -> bytes | None:
        booster = self.booster
        if booster is None or not self.snapshot_capable:
            return None
        return bytes(booster.save_raw(raw_format="ubj"))

    def close(self) -> None:
        self.booster = None


def libsvm_matrix(body: bytes) -> Any:
    """A ``text/libsvm`` body as the SageMaker XGBoost container reads it
    (``_get_sparse_matrix_from_libsvm``): one row per line, counting empty lines, the
    ``index:value`` tokens of each (split on single spaces) as its features, and the matrix's
    shape left to ``scipy.sparse.csr_matrix``: rows up to the last one with a value, columns up
    to the highest index."""
    from scipy.sparse import csr_matrix  # XGBoost depends on SciPy

    try:
        text = body.strip().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise codecs.bad_payload(LIBSVM, exc) from exc
    rows: list[int] = []
    columns: list[int] = []
    values: list[float] = []
    for number, line in enumerate(text.split("\n")):
        for token in line.split(" "):
            if ":" not in token:
                continue  # the label, or an empty token between two spaces
            index, value = token.split(":")[:2]
            try:
                columns.append(int(index))
                values.append(float(value))
            except ValueError as exc:
                raise codecs.bad_payload(LIBSVM, f"line {number + 1}: {exc}") from exc
            rows.append(number)
    if not values:
        raise codecs.bad_payload(LIBSVM, "no index:value pairs")
    if min(columns) < 0:
        raise codecs.bad_payload(LIBSVM, f"negative feature index {min(columns)}")
    return csr_matrix((np.array(values), (np.array(rows), np.array(columns))))


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


def load_booster(path: Path, xgb: Any) -> tuple[Any, bool]:
    """Read a native (JSON, UBJSON, XGBoost 1.x binary) or pickled booster from ``path``, and
    whether it was converted from the binary format."""
    # Read straight into the bytearray XGBoost parses: one copy of a large model, not two.
    raw = bytearray(path.stat().st_size)
    with path.open("rb") as file:
        file.readinto(raw)
    if not raw:
        raise ModelLoadError(f"The xgboost handler could not load {path.name}: the file is empty")
    if raw[0] == _PICKLE_PROTOCOL_2_PLUS:
        return _unpickle(path, bytes(raw), xgb), False
    converted_from = None
    if xgboost_legacy.is_legacy_binary(raw):
        started = time.perf_counter()
        document, converted_from = xgboost_legacy.convert(raw, path.name)
        raw = bytearray(document)
        logger.info(
            "Converted %s from the binary format of XGBoost %s in %.3f s",
            path.name,
            converted_from,
            time.perf_counter() - started,
        )
    return _parse(raw, path, xgb), converted_from is not None


def _parse(raw: bytearray, path: Path, xgb: Any) -> Any:
    """A booster from JSON or UBJSON bytes, set to predict on one thread."""
    # Parse with an OpenMP team: on 2 cores a 100 MB model loaded in 0.34-0.35 s against 0.48-0.49
    # s on one thread, a 1 MB model in 3-4 ms against 5-6 ms. At most 4 threads: libgomp keeps
    # an idle team per calling thread, and loads run on up to 2 x cores threads. Predictions
    # then run on one thread.
    booster = xgb.Booster(params={"nthread": _PARSE_THREADS})
    try:
        booster.load_model(raw)
    except Exception as exc:
        raise load_error(XGBOOST, path, exc) from exc
    booster.set_param("nthread", 1)
    return booster


def load(model_dir: Path, *, model_id: str) -> XGBoostModel:
    """Load the booster file in ``model_dir``."""
    path = model_file(model_dir, XGBOOST)
    xgb = import_framework("xgboost", framework="XGBoost", extra="xgboost")
    booster, converted = load_booster(path, xgb)
    if not converted:
        booster.set_param("nthread", 1)  # a pickled one (_parse set the others)
    model = XGBoostModel(model_id, path, booster, xgb, converted=converted)
    logger.debug("Loaded %s booster from %s", model.booster_type, path)
    return model


def load_snapshot(
    payload: memoryview, model_dir: Path, *, model_id: str, walk_trees: bool = True
) -> XGBoostModel:
    """The booster :meth:`XGBoostModel.snapshot` saved (a conversion from the binary format)."""
    del walk_trees  # a scikit-learn option
    path = model_file(model_dir, XGBOOST)
    xgb = import_framework("xgboost", framework="XGBoost", extra="xgboost")
    booster = _parse(bytearray(payload), path, xgb)
    return XGBoostModel(model_id, path, booster, xgb, converted=True)

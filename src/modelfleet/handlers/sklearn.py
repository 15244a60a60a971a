"""scikit-learn models saved with joblib or pickle (``*.joblib``, ``*.pkl``, ``*.pickle``).

The estimator's ``predict`` answers, as in the SageMaker scikit-learn container's default
``predict_fn``; ``predict_proba`` is not called (serve probabilities with ``code/inference.py``).
Loading unpickles the file, which runs code from it: the model source must be trusted.
scikit-learn's ``predict`` only reads the fitted estimator, so one instance serves several
threads.

Random forests and extra-trees (regressors and classifiers, one output) are predicted by walking
their trees directly: scikit-learn's ``predict`` wraps every tree in a joblib task that enters a
config context and a warnings filter, which costs ~80 us per tree and makes a 10-tree forest take
~430 us for one row instead of ~25 us. The direct walk does the same float arithmetic in the same
order (sum of the trees' leaf values, then one division), and :func:`tree_walker` proves it on
sample rows at load: any difference and the model keeps scikit-learn's own ``predict``. Inputs the
walk does not handle (not a finite numeric 2-D array of the right width) go to ``predict`` too, so
errors and missing-value handling stay scikit-learn's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from modelfleet.errors import ModelLoadError
from modelfleet.handlers import codecs
from modelfleet.handlers.arraymodel import ArrayModel, import_framework, load_error
from modelfleet.handlers.detect import SKLEARN, model_file

logger = logging.getLogger(__name__)


class SklearnModel(ArrayModel):
    """A fitted estimator (or pipeline) with a ``predict`` method."""

    handler_name = SKLEARN

    def __init__(self, model_id: str, path: Path, estimator: Any) -> None:
        super().__init__(model_id, path)
        self.estimator: Any = estimator
        self._predict: Callable[[Any], Any] = tree_walker(estimator) or estimator.predict

    def predict(self, features: codecs.Array) -> Any:
        return self._predict(features)

    def close(self) -> None:
        self.estimator = None
        self._predict = _closed


def _closed(features: Any) -> Any:
    raise RuntimeError("The model was unloaded")


#: forest classes (exact types: a subclass may change predict) the direct walk reproduces
_FORESTS = {
    "RandomForestRegressor": False,
    "ExtraTreesRegressor": False,
    "RandomForestClassifier": True,
    "ExtraTreesClassifier": True,
}
#: rows checked against scikit-learn's predict before the walk is trusted
_CHECK_ROWS = 64


def tree_walker(estimator: Any) -> Callable[[Any], Any] | None:
    """A ``predict`` for a one-output forest that skips joblib's per-tree wrapper, or None.

    None when ``estimator`` is not exactly one of the forest classes, has several outputs, or
    the walk differs from ``estimator.predict`` on :data:`_CHECK_ROWS` sample rows built from the
    trees' own split thresholds (bit for bit).
    """
    cls = type(estimator)
    if not cls.__module__.startswith("sklearn.ensemble") or cls.__name__ not in _FORESTS:
        return None
    try:
        if int(estimator.n_outputs_) != 1 or not estimator.estimators_:
            return None
        walker = _walker(estimator, classifier=_FORESTS[cls.__name__])
        sample = _sample_rows(estimator)
        if not np.array_equal(walker(sample), estimator.predict(sample)):
            logger.info("%s: the direct tree walk differs from predict(); not used", cls.__name__)
            return None
    except Exception:  # any surprise in the fitted attributes: keep scikit-learn's predict
        logger.debug("No direct tree walk for %s", cls.__name__, exc_info=True)
        return None
    return walker


def _walker(estimator: Any, *, classifier: bool) -> Callable[[Any], Any]:
    trees = tuple(tree.tree_ for tree in estimator.estimators_)
    width = int(estimator.n_features_in_)
    count = float(len(trees))
    fallback = estimator.predict
    n_classes = int(estimator.n_classes_) if classifier else 0
    classes: Any = estimator.classes_ if classifier else None

    def predict(features: Any) -> Any:
        if (
            type(features) is not np.ndarray
            or features.ndim != 2
            or features.shape[1] != width
            or features.dtype.kind not in "fiu"
        ):
            return fallback(features)
        rows = np.ascontiguousarray(features, dtype=np.float32)
        if not np.isfinite(rows).all():
            return fallback(features)  # scikit-learn's NaN support and error messages
        if classifier:
            proba = np.zeros((rows.shape[0], n_classes), dtype=np.float64)
            for tree in trees:
                proba += tree.predict(rows)[:, :n_classes]
            proba /= count
            return classes.take(np.argmax(proba, axis=1), axis=0)
        total = np.zeros(rows.shape[0], dtype=np.float64)
        for tree in trees:
            total += tree.predict(rows)[:, 0]
        total /= count
        return total

    return predict


def _sample_rows(estimator: Any) -> np.ndarray:
    """Rows spread around every feature's split thresholds (fixed seed)."""
    width = int(estimator.n_features_in_)
    low = np.zeros(width)
    high = np.ones(width)
    for tree in estimator.estimators_[:8]:
        inner = tree.tree_.feature >= 0
        for feature, threshold in zip(
            tree.tree_.feature[inner], tree.tree_.threshold[inner], strict=True
        ):
            low[feature] = min(low[feature], threshold)
            high[feature] = max(high[feature], threshold)
    spread = high - low
    rng = np.random.default_rng(0)
    return rng.uniform(low - 0.1 * spread, high + 0.1 * spread, size=(_CHECK_ROWS, width))


def load(model_dir: Path, *, model_id: str) -> SklearnModel:
    """Load the joblib or pickle file in ``model_dir``."""
    path = model_file(model_dir, SKLEARN)
    import_framework("sklearn", framework="scikit-learn", extra="sklearn")
    joblib = import_framework("joblib", framework="scikit-learn", extra="sklearn")
    try:
        estimator = joblib.load(path)
    except Exception as exc:
        raise load_error(SKLEARN, path, exc) from exc
    if not callable(getattr(estimator, "predict", None)):
        raise ModelLoadError(
            f"{path.name} holds a {type(estimator).__name__}, which has no predict(); the "
            "sklearn handler serves fitted estimators and pipelines."
        )
    logger.debug("Loaded %s from %s", type(estimator).__name__, path)
    return SklearnModel(model_id, path, estimator)

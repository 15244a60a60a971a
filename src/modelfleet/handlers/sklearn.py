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
order (sum of the trees' leaf values, then one division), and :func:`tree_walker` proves it bit
for bit on a forest fitted for the check, once per class and process: any difference and forests
of that class keep scikit-learn's ``predict``. Inputs the walk does not handle (not a finite
numeric 2-D array of the right width) go to ``predict`` too, so errors and missing-value handling
stay scikit-learn's. ``--no-walk-trees`` turns the walk off.
"""

from __future__ import annotations

import logging
import pickle
import threading
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
    snapshot_capable = True

    def __init__(
        self, model_id: str, path: Path, estimator: Any, *, walk_trees: bool = True
    ) -> None:
        super().__init__(model_id, path)
        self.estimator: Any = estimator
        walker = tree_walker(estimator) if walk_trees else None
        self._predict: Callable[[Any], Any] = walker or estimator.predict
        self.walks_trees = walker is not None

    def predict(self, features: codecs.Array) -> Any:
        return self._predict(features)

    def snapshot(self) -> bytes | None:
        estimator = self.estimator
        if estimator is None:
            return None
        with _UNPICKLING:
            return pickle.dumps({"file": self.path.name, "estimator": estimator}, protocol=5)

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
#: the trees those forests hold (exact types)
_TREES = {
    "DecisionTreeRegressor",
    "DecisionTreeClassifier",
    "ExtraTreeRegressor",
    "ExtraTreeClassifier",
}
#: rows x trees above which a forest with ``n_jobs`` > 1 keeps scikit-learn's threaded predict
_PARALLEL_WORK = 50_000
#: rows checked against scikit-learn's predict before the walk is trusted for a class
_CHECK_ROWS = 256
_checked: dict[type, bool] = {}
_checked_lock = threading.Lock()


def tree_walker(estimator: Any) -> Callable[[Any], Any] | None:
    """A ``predict`` for a one-output forest that skips joblib's per-tree wrapper, or None.

    None when ``estimator`` is not exactly one of the forest classes, has several outputs, its
    own ``predict`` or ``predict_proba``, or trees that are not exactly scikit-learn's; or when,
    for its class, the walk differed from scikit-learn's ``predict`` on a forest fitted for the
    check (:func:`_walk_matches`, once per class and process: the arithmetic is the class's
    code, not the model's; checking each model would cost a ``predict`` through the very
    wrapper the walk avoids, ~80 us per tree).
    """
    cls = type(estimator)
    if not cls.__module__.startswith("sklearn.ensemble") or cls.__name__ not in _FORESTS:
        return None
    classifier = _FORESTS[cls.__name__]
    try:
        tree_types = {type(tree) for tree in estimator.estimators_}
        if (
            "predict" in vars(estimator)
            or "predict_proba" in vars(estimator)
            or int(estimator.n_outputs_) != 1
            or not estimator.estimators_
            or any(kind.__module__ != "sklearn.tree._classes" for kind in tree_types)
            or any(kind.__name__ not in _TREES for kind in tree_types)
        ):
            return None
        if not _walk_matches(cls, classifier):
            return None
        return _walker(estimator, classifier=classifier)
    except Exception:  # any surprise in the fitted attributes: keep scikit-learn's predict
        logger.debug("No direct tree walk for %s", cls.__name__, exc_info=True)
        return None


def _walk_matches(cls: type, classifier: bool) -> bool:
    """Whether the walk equals ``cls.predict`` bit for bit on a forest fitted for the purpose."""
    with _checked_lock:
        known = _checked.get(cls)
        if known is None:
            rng = np.random.default_rng(0)
            rows = rng.standard_normal((200, 5))
            target = rows @ np.linspace(-1.0, 2.0, 5) + rng.standard_normal(200)
            labels = np.digitize(target, [-1.0, 1.0]) if classifier else target
            forest = cls(n_estimators=5, random_state=0, n_jobs=1).fit(rows, labels)
            probe = rng.standard_normal((_CHECK_ROWS, 5)) * 1.5
            walker = _walker(forest, classifier=classifier)
            known = bool(np.array_equal(walker(probe), forest.predict(probe)))
            if not known:
                logger.warning(
                    "scikit-learn's %s.predict no longer matches the direct tree walk; "
                    "forests of that class use predict()",
                    cls.__name__,
                )
            _checked[cls] = known
        return known


def _walker(estimator: Any, *, classifier: bool) -> Callable[[Any], Any]:
    trees = tuple(tree.tree_ for tree in estimator.estimators_)
    width = int(estimator.n_features_in_)
    count = float(len(trees))
    fallback = estimator.predict
    n_classes = int(estimator.n_classes_) if classifier else 0
    classes: Any = estimator.classes_ if classifier else None
    # A forest saved with n_jobs > 1 (or -1) predicts big batches on several threads: keep that.
    most_rows = _PARALLEL_WORK // len(trees) if estimator.n_jobs not in (None, 1) else None

    def predict(features: Any) -> Any:
        if (
            type(features) is not np.ndarray
            or features.ndim != 2
            or features.shape[1] != width
            or features.dtype.kind not in "fiu"
            or features.shape[0] == 0  # scikit-learn refuses an empty batch: keep its error
            or (most_rows is not None and features.shape[0] > most_rows)
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


#: Loads (and snapshot writes) run one at a time: unpickling holds the GIL nearly throughout,
#: so loads on several threads only interleave, each finishing later, and the switching costs
#: CPU too. End-to-end Zipf (bench.zipf_http, 4 load threads): 600 req/s and p99 64 ms with
#: loads one at a time against 539 req/s and p99 80 ms interleaved; 8 cold models at once
#: (bench.herds) took the same wall time either way. Other handlers' loads are not held back.
_UNPICKLING = threading.Lock()

#: packages whose versions a load snapshot must match (:mod:`modelfleet.handlers.snapshot`)
SNAPSHOT_PACKAGES = ("numpy", "scipy", "sklearn", "joblib")


def load_snapshot(
    payload: memoryview, model_dir: Path, *, model_id: str, walk_trees: bool = True
) -> SklearnModel:
    """The model :meth:`SklearnModel.snapshot` saved (the C unpickler: ~6x joblib.load)."""
    with _UNPICKLING:
        saved = pickle.loads(payload)
    path = model_dir / saved["file"]
    return _model(model_id, path, saved["estimator"], walk_trees=walk_trees)


def load(model_dir: Path, *, model_id: str, walk_trees: bool = True) -> SklearnModel:
    """Load the joblib or pickle file in ``model_dir`` (``walk_trees``: see the module doc)."""
    path = model_file(model_dir, SKLEARN)
    import_framework("sklearn", framework="scikit-learn", extra="sklearn")
    joblib = import_framework("joblib", framework="scikit-learn", extra="sklearn")
    try:
        with _UNPICKLING:
            estimator = joblib.load(path)
    except Exception as exc:
        raise load_error(SKLEARN, path, exc) from exc
    return _model(model_id, path, estimator, walk_trees=walk_trees)


def _model(model_id: str, path: Path, estimator: Any, *, walk_trees: bool) -> SklearnModel:
    if not callable(getattr(estimator, "predict", None)):
        raise ModelLoadError(
            f"{path.name} holds a {type(estimator).__name__}, which has no predict(); the "
            "sklearn handler serves fitted estimators and pipelines."
        )
    model = SklearnModel(model_id, path, estimator, walk_trees=walk_trees)
    how = " (trees walked directly)" if model.walks_trees else ""
    logger.debug("Loaded %s from %s%s", type(estimator).__name__, path, how)
    return model

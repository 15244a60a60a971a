"""scikit-learn models saved with joblib or pickle (``*.joblib``, ``*.pkl``, ``*.pickle``).

The estimator's ``predict`` answers, as in the SageMaker scikit-learn container's default
``predict_fn``; ``predict_proba`` is not called (serve probabilities with ``code/inference.py``).
Loading unpickles the file, which runs code from it: the model source must be trusted.
scikit-learn's ``predict`` only reads the fitted estimator, so one instance serves several
threads.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

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

    def predict(self, features: codecs.Array) -> Any:
        return self.estimator.predict(features)

    def close(self) -> None:
        self.estimator = None


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

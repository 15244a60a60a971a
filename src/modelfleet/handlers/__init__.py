"""Framework handlers: turn an unpacked artifact folder into a :class:`LoadedModel`.

:func:`load_model` picks the handler (an explicit name wins, else :func:`detect_handler`), imports
that handler's module and loads the model. It blocks: the model manager calls it from a worker
thread. Framework packages are optional extras and are imported only when a model needs them; a
missing one raises :class:`~modelfleet.errors.MissingExtraError` naming the extra. See
``docs/handlers.md`` for layouts, codecs and response formats.
"""

from __future__ import annotations

import importlib
import logging
import time
from pathlib import Path

from modelfleet.errors import ModelError, ModelLoadError
from modelfleet.handlers.base import LoadedModel, Prediction
from modelfleet.handlers.detect import HANDLER_NAMES, INFERENCE_PY, detect_handler

__all__ = [
    "HANDLER_NAMES",
    "LoadedModel",
    "Prediction",
    "detect_handler",
    "load_model",
    "normalize_handler",
]

logger = logging.getLogger(__name__)

_MODULES = {
    INFERENCE_PY: "modelfleet.handlers.toolkit",
    "sklearn": "modelfleet.handlers.sklearn",
    "xgboost": "modelfleet.handlers.xgboost",
    "lightgbm": "modelfleet.handlers.lightgbm",
    "onnx": "modelfleet.handlers.onnx",
    "torch": "modelfleet.handlers.torch",
}
_ALIASES = {
    "inference": INFERENCE_PY,
    "toolkit": INFERENCE_PY,
    "scikit-learn": "sklearn",
    "pytorch": "torch",
    "onnxruntime": "onnx",
}


def normalize_handler(name: str) -> str:
    """The canonical handler name for ``name`` (case-insensitive, a few aliases).

    Raises :class:`~modelfleet.errors.ModelLoadError` for an unknown name.
    """
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in _MODULES:
        raise ModelLoadError(f"Unknown handler {name!r}; choose one of: {', '.join(HANDLER_NAMES)}")
    return key


def load_model(
    model_dir: Path, *, model_id: str, handler: str | None = None, walk_trees: bool = True
) -> LoadedModel:
    """Load the model in ``model_dir`` (an unpacked artifact) with ``handler`` or the detected one.

    ``walk_trees=False`` keeps scikit-learn's own ``predict`` for forests (see the sklearn
    handler).

    Raises :class:`~modelfleet.errors.ModelLoadError` (or its subclass
    :class:`~modelfleet.errors.MissingExtraError`) when the folder holds no loadable model.
    """
    model_dir = Path(model_dir)
    name = normalize_handler(handler) if handler else detect_handler(model_dir)
    started = time.perf_counter()
    module = importlib.import_module(_MODULES[name])
    try:
        if name == "sklearn":
            model: LoadedModel = module.load(model_dir, model_id=model_id, walk_trees=walk_trees)
        else:
            model = module.load(model_dir, model_id=model_id)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelLoadError(
            f"The {name} handler could not load model {model_id}: {type(exc).__name__}: {exc}"
        ) from exc
    logger.info(
        "Loaded model %s with the %s handler in %.3f s",
        model_id,
        name,
        time.perf_counter() - started,
    )
    return model

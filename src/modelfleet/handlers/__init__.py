"""Framework handlers: turn an unpacked artifact folder into a :class:`LoadedModel`.

:func:`load_model` picks the handler (an explicit name wins, else :func:`detect_handler`), imports
that handler's module and loads the model. It blocks: the model manager calls it from a worker
thread. Framework packages are optional extras and are imported only when a model needs them; a
missing one raises :class:`~modelfleet.errors.MissingExtraError` naming the extra. See
``docs/handlers.md`` for layouts, codecs and response formats.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import time
from pathlib import Path

from modelfleet.errors import ModelError, ModelLoadError
from modelfleet.handlers import snapshot as snapshots
from modelfleet.handlers.base import LoadedModel, Prediction
from modelfleet.handlers.detect import HANDLER_NAMES, INFERENCE_PY, detect_handler
from modelfleet.handlers.environments import Environments

REQUIREMENTS = "requirements.txt"  # in code/, as the SageMaker framework containers read it

__all__ = [
    "HANDLER_NAMES",
    "LoadedModel",
    "Prediction",
    "detect_handler",
    "load_model",
    "normalize_handler",
    "take_snapshot",
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
    model_dir: Path,
    *,
    model_id: str,
    handler: str | None = None,
    walk_trees: bool = True,
    snapshot: Path | None = None,
    environments: Environments | None = None,
) -> LoadedModel:
    """Load the model in ``model_dir`` (an unpacked artifact) with ``handler`` or the detected one.

    ``walk_trees=False`` keeps scikit-learn's own ``predict`` for forests (see the sklearn
    handler). ``snapshot``: a load snapshot of this artifact, if one was saved
    (:func:`save_snapshot`); it is read instead of the artifact when its handler and versions
    match, and deleted when it can't be used. ``environments``: where an ``inference.py``
    model with ``code/requirements.txt`` gets its own environment and a worker process
    (``--model-requirements install``); None serves every model in this process.

    Raises :class:`~modelfleet.errors.ModelLoadError` (or its subclass
    :class:`~modelfleet.errors.MissingExtraError`) when the folder holds no loadable model, or
    when loading it raised anything, ``SystemExit`` from a pickle included.
    """
    model_dir = Path(model_dir)
    if snapshot is not None:
        restored = _restore(snapshot, model_dir, model_id, handler, walk_trees=walk_trees)
        if restored is not None:
            return restored
    name = normalize_handler(handler) if handler else detect_handler(model_dir)
    started = time.perf_counter()
    module = importlib.import_module(_MODULES[name])
    requirements = model_dir / "code" / REQUIREMENTS
    try:
        if name == "sklearn":
            model: LoadedModel = module.load(model_dir, model_id=model_id, walk_trees=walk_trees)
        elif name == INFERENCE_PY and environments is not None and requirements.is_file():
            from modelfleet.handlers.worker import WorkerModel

            python = environments.python_for(requirements)
            model = WorkerModel(model_id, model_dir, python)
        else:
            model = module.load(model_dir, model_id=model_id)
    except ModelError:
        raise
    except BaseException as exc:  # sys.exit() in a pickle is the model's failure too
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


def _restore(
    path: Path, model_dir: Path, model_id: str, handler: str | None, *, walk_trees: bool
) -> LoadedModel | None:
    """The model in the snapshot at ``path``, or None (no snapshot, or one that can't be used)."""
    try:
        header, payload = snapshots.read(path)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        return _discard(path, model_id, exc)
    name = header.get("handler")
    if name not in _MODULES or (handler and normalize_handler(handler) != name):
        return _discard(path, model_id, f"it was written by handler {name!r}")
    try:
        module = importlib.import_module(_MODULES[name])
        packages = getattr(module, "SNAPSHOT_PACKAGES", ())
        current = hasattr(module, "load_snapshot") and snapshots.matches(header, name, packages)
    except ImportError:  # a framework missing here: the artifact's load says which extra
        return None
    if not current:
        return _discard(path, model_id, "it was written by other versions")
    try:
        model: LoadedModel = module.load_snapshot(
            payload, model_dir, model_id=model_id, walk_trees=walk_trees
        )
    except BaseException as exc:  # as the artifact's load: SystemExit included
        return _discard(path, model_id, exc)
    model.restored = True
    return model


def _discard(path: Path, model_id: str, why: object) -> LoadedModel | None:
    """Delete a snapshot that can't be used, saying why; None (load the artifact instead)."""
    logger.warning("Not using the load snapshot of %s (%s): loading its artifact", model_id, why)
    with contextlib.suppress(OSError):
        path.unlink()
    return None


def take_snapshot(model: LoadedModel) -> list[bytes] | None:
    """The load snapshot of ``model`` (header line, then payload), or None if it has none.

    Blocking (pickling). The disk cache writes it (:meth:`DiskCache.add_snapshot`).
    """
    module_name = _MODULES.get(model.handler_name)
    if module_name is None:
        return None
    module = importlib.import_module(module_name)
    packages: tuple[str, ...] | None = getattr(module, "SNAPSHOT_PACKAGES", None)
    payload = model.snapshot() if packages is not None else None
    if payload is None or packages is None:
        return None
    return [snapshots.header(model.handler_name, packages), payload]

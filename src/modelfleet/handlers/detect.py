"""Which handler serves an artifact folder, and which file in it holds the model.

Order (DESIGN section 6): ``code/inference.py`` wins (the SageMaker inference toolkit contract).
Otherwise the regular files at the top of the folder are classified by name, and by content where
the name is not enough:

==============================  =========  ===============================================
file                            handler    check
==============================  =========  ===============================================
``xgboost-model``               xgboost    the SageMaker built-in XGBoost layout (any format)
``*.json``                      xgboost    a JSON object with a ``"learner"`` key
``*.ubj``, ``*.bst``,           xgboost
``*.model``
``*.joblib``, ``*.pkl``,        sklearn
``*.pickle``
``*.txt``                       lightgbm   first line ``tree`` (LightGBM's text model)
``*.onnx``                      onnx
``*.pt``, ``*.pt2``             torch      TorchScript, ``torch.export`` program
==============================  =========  ===============================================

A file of any other name whose content is an XGBoost model (UBJSON, JSON, the old binary format,
or a pickled ``Booster``) is an XGBoost model file too: the SageMaker XGBoost container loads the
first regular file whatever its name. A ``.json`` or ``.txt`` that fails its check is not a model
file (configs and notes are fine next to a model), unless nothing else is found: then the error
says why it was rejected. Model files of two frameworks, or two model files of one framework, are
ambiguous and raise :class:`~modelfleet.errors.ModelLoadError`; set the handler explicitly in
that case.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from modelfleet.errors import ModelLoadError

logger = logging.getLogger(__name__)

INFERENCE_PY = "inference.py"
SKLEARN = "sklearn"
XGBOOST = "xgboost"
LIGHTGBM = "lightgbm"
ONNX = "onnx"
TORCH = "torch"

#: every handler name ``load_model`` accepts
HANDLER_NAMES = (INFERENCE_PY, SKLEARN, XGBOOST, LIGHTGBM, ONNX, TORCH)
#: the SageMaker built-in XGBoost container's model file name
XGBOOST_BUILTIN_FILE = "xgboost-model"

_SUFFIXES = {
    ".json": XGBOOST,
    ".ubj": XGBOOST,
    ".bst": XGBOOST,
    ".model": XGBOOST,
    ".joblib": SKLEARN,
    ".pkl": SKLEARN,
    ".pickle": SKLEARN,
    ".txt": LIGHTGBM,
    ".onnx": ONNX,
    ".pt": TORCH,
    ".pth": TORCH,
    ".pt2": TORCH,
}
_PREFERRED_STEMS = ("model", XGBOOST_BUILTIN_FILE)
_SNIFF_BYTES = 4096
SUPPORTED_TEXT = (
    "code/inference.py, xgboost-model, *.json/*.ubj/*.bst/*.model (XGBoost), "
    "*.joblib/*.pkl/*.pickle (scikit-learn), *.txt (LightGBM), *.onnx, "
    "*.pt/*.pth (TorchScript), *.pt2 (torch.export)"
)


@dataclass
class Survey:
    """What a folder holds: model files by handler, and files rejected with a reason."""

    files: list[str]
    by_handler: dict[str, list[Path]] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)


def _head(path: Path) -> bytes:
    with path.open("rb") as stream:
        return stream.read(_SNIFF_BYTES)


def _looks_like_xgboost_json(path: Path) -> str | None:
    head = _head(path).lstrip()
    if not head.startswith(b"{"):
        return "not a JSON object"
    if b'"learner"' not in head:
        return 'no "learner" key, so not an XGBoost model'
    return None


def _looks_like_lightgbm(path: Path) -> str | None:
    first = _head(path).split(b"\n", 1)[0].strip()
    return None if first == b"tree" else "first line is not 'tree', so not a LightGBM model"


def _looks_like_booster(path: Path) -> bool:
    """Whether a file of no known name holds an XGBoost model (native or pickled)."""
    head = _head(path)
    if head[:1] == b"{" and b"learner" in head[:64]:
        return True  # UBJSON or JSON
    if head.startswith(b"binf"):
        return True  # XGBoost's old binary format
    return head[:1] == b"\x80" and b"xgboost" in head[:256]  # a pickled Booster


def _regular_files(model_dir: Path) -> list[Path]:
    if not model_dir.is_dir():
        raise ModelLoadError(f"Model folder {model_dir} does not exist or is not a folder.")
    return sorted(
        entry
        for entry in model_dir.iterdir()
        if not entry.name.startswith(".") and entry.is_file() and not entry.is_symlink()
    )


def survey(model_dir: Path) -> Survey:
    """Classify the regular files at the top of ``model_dir``."""
    files = _regular_files(model_dir)
    result = Survey(files=[entry.name for entry in files])
    for entry in files:
        if entry.name == XGBOOST_BUILTIN_FILE:
            handler: str | None = XGBOOST
        else:
            handler = _SUFFIXES.get(entry.suffix.lower())
        if handler is None:
            if _looks_like_booster(entry):
                result.by_handler.setdefault(XGBOOST, []).append(entry)
            continue
        reason = None
        if entry.suffix.lower() == ".json":
            reason = _looks_like_xgboost_json(entry)
        elif handler == LIGHTGBM:
            reason = _looks_like_lightgbm(entry)
        if reason is not None:
            result.rejected[entry.name] = reason
            continue
        result.by_handler.setdefault(handler, []).append(entry)
    return result


def _found_text(model_dir: Path, found: Survey) -> str:
    listed = ", ".join(found.files[:20]) or "no files"
    if len(found.files) > 20:
        listed += f", ... ({len(found.files)} files)"
    folders = sorted(
        entry.name for entry in model_dir.iterdir() if entry.is_dir() and entry.name != "code"
    )
    if folders:
        listed += "; folders " + ", ".join(f"{name}/" for name in folders[:10])
        listed += " (model files must be at the top of the artifact)"
    if (model_dir / "code").is_dir():
        listed += "; a code/ folder without inference.py"
    return listed


def detect_handler(model_dir: Path) -> str:
    """The handler name for an unpacked artifact folder (see the module docstring)."""
    if (model_dir / "code" / INFERENCE_PY).is_file():
        return INFERENCE_PY
    found = survey(model_dir)
    if len(found.by_handler) == 1:
        (handler,) = found.by_handler
        logger.debug("Detected handler %s for %s", handler, model_dir)
        return handler
    if len(found.by_handler) > 1:
        kinds = "; ".join(
            f"{handler}: {', '.join(path.name for path in paths)}"
            for handler, paths in sorted(found.by_handler.items())
        )
        raise ModelLoadError(
            f"Ambiguous model folder {model_dir.name}: files for several handlers ({kinds}). "
            "Keep one model per artifact or set the handler explicitly."
        )
    rejected = "".join(f"; {name}: {why}" for name, why in sorted(found.rejected.items()))
    archives = tuple(sorted(n for n in found.files if n.endswith((".tar.gz", ".tgz", ".tar"))))
    raise ModelLoadError(
        f"No model file recognised in {model_dir.name} (found: "
        f"{_found_text(model_dir, found)}{rejected}). Supported: {SUPPORTED_TEXT}.",
        archives=archives,
    )


def model_file(model_dir: Path, handler: str) -> Path:
    """The one file ``handler`` loads from ``model_dir``.

    With several candidates, one named ``model.*`` (or ``xgboost-model``) wins. For XGBoost a
    folder holding a single regular file of any name is accepted, as the SageMaker XGBoost
    container loads the first regular file it finds.
    """
    found = survey(model_dir)
    candidates = found.by_handler.get(handler, [])
    if not candidates and handler == XGBOOST:
        regular = _regular_files(model_dir)
        if len(regular) == 1:
            candidates = regular
    if len(candidates) == 1:
        return candidates[0]
    if candidates:
        preferred = [path for path in candidates if path.stem in _PREFERRED_STEMS]
        if len(preferred) == 1:
            return preferred[0]
        names = ", ".join(path.name for path in candidates)
        raise ModelLoadError(
            f"Several {handler} model files in {model_dir.name} ({names}); keep one, or name "
            "the one to serve model.<extension>."
        )
    rejected = "".join(f"; {name}: {why}" for name, why in sorted(found.rejected.items()))
    raise ModelLoadError(
        f"No {handler} model file in {model_dir.name} (found: "
        f"{_found_text(model_dir, found)}{rejected}). Supported: {SUPPORTED_TEXT}."
    )

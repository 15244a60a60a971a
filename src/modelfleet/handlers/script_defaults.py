"""What a SageMaker framework container does for the functions ``inference.py`` leaves out.

A SageMaker multi-model container serves one framework, and its handler service fills in
``input_fn``, ``predict_fn`` and ``output_fn`` with that framework's defaults. modelfleet serves
several frameworks from one endpoint, so it picks a model's defaults from what its ``model_fn``
returned, or from ``MODELFLEET_FRAMEWORK`` in ``inference.py`` (``"sklearn"``, ``"pytorch"``,
``"xgboost"`` or ``"toolkit"``), which wins:

* a scikit-learn estimator (``sklearn.base.BaseEstimator``, pipelines and XGBoost's and
  LightGBM's scikit-learn wrappers included): the scikit-learn container's MME handler
  (``sagemaker_sklearn_container/handler_service.py``): ``input_fn`` decodes with the toolkit's
  decoder, makes a 1-D array one row (``reshape(1, -1)``) and, for CSV and JSON, casts to
  ``float32``; ``predict_fn`` is ``model.predict(data)``; ``output_fn`` encodes with the
  toolkit's encoder;
* a ``torch.nn.Module`` (TorchScript included): the PyTorch inference toolkit
  (``default_pytorch_inference_handler.py``): ``input_fn`` decodes, then
  ``torch.FloatTensor(array)`` for CSV and JSON or ``torch.from_numpy(array)`` for NPY;
  ``predict_fn`` calls ``model.eval()`` then ``model(data)`` under ``torch.no_grad()``;
  ``output_fn`` turns a tensor into ``tensor.detach().cpu().numpy().tolist()`` and encodes that
  for the first type of the ``Accept`` list that the encoder has (JSON, CSV, NPY);
* an XGBoost ``Booster``: the XGBoost container's framework handler
  (``sagemaker_xgboost_container/handler_service.py``): ``input_fn`` makes a ``DMatrix`` of CSV
  (empty fields NaN) or LibSVM, other types are refused; ``predict_fn`` is
  ``model.predict(data, validate_features=False)``; ``output_fn`` encodes with the toolkit's
  encoder;
* anything else: the inference toolkit's own defaults (decoder and encoder), and no default
  ``predict_fn``: ``inference.py`` must define one (or ``transform_fn``).

Frameworks are recognised without importing them: a model of a framework that is not imported
is not of that framework. The devices are the CPU's.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelfleet.errors import ModelLoadError, UnsupportedContentTypeError
from modelfleet.handlers import codecs

SKLEARN = "sklearn"
PYTORCH = "pytorch"
XGBOOST = "xgboost"
TOOLKIT = "toolkit"
FRAMEWORKS = (SKLEARN, PYTORCH, XGBOOST, TOOLKIT)
#: the module attribute of ``inference.py`` that chooses its defaults
SETTING = "MODELFLEET_FRAMEWORK"


@dataclass(frozen=True)
class Defaults:
    """One framework's default functions (``predict_fn`` None: there is none)."""

    framework: str
    input_fn: Callable[[bytes | str, str | None], Any]
    predict_fn: Callable[[Any, Any], Any] | None
    output_fn: Callable[[Any, str], Any]


def framework_of(model: object) -> str:
    """The framework whose defaults serve ``model`` (what ``model_fn`` returned)."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(model, torch.nn.Module):
        return PYTORCH
    xgboost = sys.modules.get("xgboost")
    if xgboost is not None and isinstance(model, xgboost.Booster):
        return XGBOOST
    sklearn_base = sys.modules.get("sklearn.base")
    if sklearn_base is not None and isinstance(model, sklearn_base.BaseEstimator):
        return SKLEARN
    return TOOLKIT


def chosen(setting: object) -> str | None:
    """The framework ``MODELFLEET_FRAMEWORK`` names (None if unset); a bad value fails the load."""
    if setting is None:
        return None
    if not isinstance(setting, str) or setting.lower() not in FRAMEWORKS:
        raise ModelLoadError(
            f"inference.py sets {SETTING} = {setting!r}; choose one of: {', '.join(FRAMEWORKS)}"
        )
    return setting.lower()


def defaults(framework: str) -> Defaults:
    return _DEFAULTS[framework]


# ------------------------------------------------------------------ the toolkit


def _toolkit_output(prediction: Any, accept: str) -> tuple[bytes, str]:
    return codecs.encode(prediction, accept)


# ------------------------------------------------------------------ scikit-learn


def _sklearn_input(data: bytes | str, content_type: str | None) -> Any:
    array = codecs.decode(data, content_type)
    if isinstance(array, np.ndarray):
        if array.ndim == 1:
            array = array.reshape(1, -1)
        if codecs.media_type(content_type or "") in codecs.UTF8_TYPES:
            array = array.astype(np.float32)
    return array


def _sklearn_predict(data: Any, model: Any) -> Any:
    return model.predict(data)


# ------------------------------------------------------------------ PyTorch


def _torch_input(data: bytes | str, content_type: str | None) -> Any:
    import torch

    array = codecs.decode(data, content_type)
    if codecs.media_type(content_type or "") in codecs.UTF8_TYPES:
        return torch.FloatTensor(array)
    if isinstance(array, np.ndarray) and not array.flags.writeable:
        array = array.copy()  # from_numpy shares memory and warns on a read-only buffer
    return torch.from_numpy(array)


def _torch_predict(data: Any, model: Any) -> Any:
    import torch

    with torch.no_grad():
        model.eval()
        return model(data)


def _torch_output(prediction: Any, accept: str) -> tuple[bytes, str]:
    torch = sys.modules.get("torch")
    if torch is not None and type(prediction) is torch.Tensor:
        prediction = prediction.detach().cpu().numpy().tolist()
    return codecs.encode(prediction, accept)


# ------------------------------------------------------------------ XGBoost

_XGBOOST_TYPES = (codecs.CSV, "text/libsvm", "text/x-libsvm")


def _xgboost_input(data: bytes | str, content_type: str | None) -> Any:
    import xgboost

    from modelfleet.handlers.xgboost import libsvm_matrix

    kind = codecs.media_type(content_type or "")
    raw = data.encode() if isinstance(data, str) else data
    if kind == codecs.CSV:
        return xgboost.DMatrix(codecs.decode_matrix(raw, codecs.CSV))
    if kind in _XGBOOST_TYPES:
        return xgboost.DMatrix(libsvm_matrix(raw))
    raise UnsupportedContentTypeError(
        f"Unsupported content type {content_type or '(none)'}; the XGBoost defaults read: "
        f"{', '.join(_XGBOOST_TYPES)}"
    )


def _xgboost_predict(data: Any, model: Any) -> Any:
    return model.predict(data, validate_features=False)


_DEFAULTS = {
    SKLEARN: Defaults(SKLEARN, _sklearn_input, _sklearn_predict, _toolkit_output),
    PYTORCH: Defaults(PYTORCH, _torch_input, _torch_predict, _torch_output),
    XGBOOST: Defaults(XGBOOST, _xgboost_input, _xgboost_predict, _toolkit_output),
    TOOLKIT: Defaults(TOOLKIT, codecs.decode, None, _toolkit_output),
}

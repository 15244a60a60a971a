"""The shared shape of the framework handlers: decode an array, predict, encode the answer.

Each framework module (``sklearn``, ``xgboost``, ``lightgbm``, ``onnx``, ``torch``) subclasses
:class:`ArrayModel` with its own ``predict`` and, where its SageMaker container differs from the
toolkit defaults, its own ``encode``. Framework errors raised while predicting become
:class:`~modelfleet.errors.ModelInvocationError` with original status 400, as the SageMaker
XGBoost container answers "Unable to evaluate payload provided" with a 400: with a standard model
file, a failing prediction almost always means a request of the wrong shape. A prediction that
raised ``SystemExit`` or ``KeyboardInterrupt`` (a pickled estimator's own code) is a
``ModelInvocationError`` too, with original status 500.
"""

from __future__ import annotations

import importlib
import logging
from abc import abstractmethod
from pathlib import Path
from types import ModuleType
from typing import Any

from modelfleet.errors import MissingExtraError, ModelError, ModelInvocationError, ModelLoadError
from modelfleet.handlers import codecs
from modelfleet.handlers.base import LoadedModel, Prediction

logger = logging.getLogger(__name__)

#: the content type assumed when a request has none (SageMaker's tabular built-ins use CSV)
DEFAULT_CONTENT_TYPE = codecs.CSV


def import_framework(module: str, *, framework: str, extra: str) -> ModuleType:
    """Import a framework package, or raise :class:`MissingExtraError` naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(framework, extra) from exc


def first_line(exc: BaseException) -> str:
    """An exception's first message line (native libraries append stack traces)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_error(handler: str, path: Path, exc: BaseException) -> ModelLoadError:
    """The error for a model file the framework could not read."""
    return ModelLoadError(f"The {handler} handler could not load {path.name}: {first_line(exc)}")


class ArrayModel(LoadedModel):
    """A model that maps a 2-D array of features to an array of predictions."""

    def __init__(self, model_id: str, path: Path) -> None:
        self.model_id = model_id
        self.path = path

    @abstractmethod
    def predict(self, features: codecs.Array) -> Any:
        """Run the framework on decoded features (2-D, numeric); thread-safe."""

    def decode(self, body: bytes, content_type: str | None) -> codecs.Array:
        """Request body to features; CSV when the request names no content type."""
        return codecs.decode_matrix(body, content_type or DEFAULT_CONTENT_TYPE)

    def encode(self, prediction: Any, accept: str | None) -> tuple[bytes, str]:
        """Prediction to response body and content type (toolkit defaults)."""
        return codecs.encode(prediction, accept)

    def invoke(
        self,
        body: bytes,
        content_type: str | None,
        accept: str | None,
        custom_attributes: str | None = None,
    ) -> Prediction:
        kind = codecs.choose_accept(accept)  # refuse a bad Accept before doing any work
        features = self.decode(body, content_type)
        try:
            prediction = self.predict(features)
        except ModelError:
            raise
        except BaseException as exc:  # a pickled estimator's code may call sys.exit()
            logger.debug("Prediction failed for %s", self.model_id, exc_info=True)
            raise ModelInvocationError(
                f"{self.handler_name} prediction failed for model {self.model_id}: "
                f"{type(exc).__name__}: {first_line(exc)}",
                original_status_code=400 if isinstance(exc, Exception) else 500,
            ) from exc
        payload, answered = self.encode(prediction, kind)
        return Prediction(body=payload, content_type=answered)

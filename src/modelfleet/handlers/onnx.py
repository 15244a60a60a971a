"""ONNX models (``*.onnx``) run by onnxruntime on the CPU.

The request feeds the model's first input and the answer is its first output, encoded with the
toolkit's defaults. The input array is cast to the input's declared element type (``float32``
unless the model declares another numeric type), and a 1-D array gets a batch dimension when the
input expects one more. Each session runs with one intra-op and one inter-op thread: onnxruntime
gives every session its own thread pools, and a host serving hundreds of models must not start
hundreds of pools. ``InferenceSession.run`` is thread-safe.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from modelfleet.handlers import codecs
from modelfleet.handlers.arraymodel import ArrayModel, import_framework, load_error
from modelfleet.handlers.detect import ONNX, model_file

logger = logging.getLogger(__name__)

_ELEMENT_TYPES: dict[str, Any] = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(bool)": np.bool_,
}


class OnnxModel(ArrayModel):
    """An onnxruntime ``InferenceSession`` on ``CPUExecutionProvider``."""

    handler_name = ONNX

    def __init__(self, model_id: str, path: Path, session: Any) -> None:
        super().__init__(model_id, path)
        self.session: Any = session
        first_input = session.get_inputs()[0]
        self.input_name: str = first_input.name
        shape = first_input.shape
        self.input_rank: int | None = len(shape) if isinstance(shape, list | tuple) else None
        self.input_dtype: Any = _ELEMENT_TYPES.get(first_input.type, np.float32)
        self.output_name: str = session.get_outputs()[0].name

    def decode(self, body: bytes, content_type: str | None) -> codecs.Array:
        return codecs.decode_tensor(body, content_type or codecs.CSV)

    def predict(self, features: codecs.Array) -> Any:
        if self.input_rank is not None and features.ndim + 1 == self.input_rank:
            features = features.reshape(1, *features.shape)
        feed = {self.input_name: features.astype(self.input_dtype, copy=False)}
        return self.session.run([self.output_name], feed)[0]

    def close(self) -> None:
        self.session = None


def load(model_dir: Path, *, model_id: str) -> OnnxModel:
    """Open an inference session on the ``.onnx`` file in ``model_dir``."""
    path = model_file(model_dir, ONNX)
    ort = import_framework("onnxruntime", framework="ONNX", extra="onnx")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:
        raise load_error(ONNX, path, exc) from exc
    logger.debug("Loaded ONNX model %s", path)
    return OnnxModel(model_id, path, session)

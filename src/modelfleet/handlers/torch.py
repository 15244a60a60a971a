"""PyTorch models on the CPU: TorchScript (``*.pt``, ``*.pth``) and ``torch.export`` programs
(``*.pt2``). As in the PyTorch inference toolkit's ``default_model_fn``, ``model.pth`` is
TorchScript as ``model.pt`` is.

``torch.jit.load(path, map_location="cpu")`` reads a TorchScript file and the module is put in
``eval()`` mode; ``torch.export.load(path).module()`` reads an exported program (TorchScript is
deprecated from PyTorch 2.13, whose ``torch.jit.load`` warns; ``torch.export`` is its successor).
A request becomes a ``float32`` tensor (CSV rows, or a JSON/``.npy`` array of any rank; send a
batch), the forward pass runs under ``torch.inference_mode()``, and the first tensor of the
output (the output itself, or the first item of a tuple or list) is encoded with the toolkit's
defaults. Neither kind of module mutates itself in its forward pass, so threads share one.
Eager-mode pickles (``torch.save(model)``) and state dicts are not served: script or trace the
model, or use ``code/inference.py`` with a ``model_fn`` (the toolkit refuses them too, "Please
ensure model is saved using torchscript").
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from modelfleet.errors import ModelInvocationError, ModelLoadError
from modelfleet.handlers import codecs
from modelfleet.handlers.arraymodel import ArrayModel, import_framework, load_error
from modelfleet.handlers.detect import TORCH, model_file

logger = logging.getLogger(__name__)


class TorchModel(ArrayModel):
    """A TorchScript module or an exported program's module, on the CPU."""

    handler_name = TORCH

    def __init__(self, model_id: str, path: Path, module: Any, torch: Any) -> None:
        super().__init__(model_id, path)
        self.module: Any = module
        self._torch = torch
        tensors = [*module.parameters(), *module.buffers()]
        self._size_bytes = sum(int(t.numel()) * int(t.element_size()) for t in tensors)

    def decode(self, body: bytes, content_type: str | None) -> codecs.Array:
        return codecs.decode_tensor(body, content_type or codecs.CSV)

    def predict(self, features: codecs.Array) -> Any:
        tensor = self._torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
        with self._torch.inference_mode():
            output = self.module(tensor)
        if isinstance(output, tuple | list) and output:
            output = output[0]
        if not isinstance(output, self._torch.Tensor):
            raise ModelInvocationError(
                f"PyTorch model {self.model_id} returned {type(output).__name__}; the torch "
                "handler encodes tensors (use code/inference.py for other outputs)."
            )
        return output.detach().cpu().numpy()

    def size_bytes(self) -> int | None:
        return self._size_bytes

    def close(self) -> None:
        self.module = None


def load(model_dir: Path, *, model_id: str) -> TorchModel:
    """Load the TorchScript or ``torch.export`` file in ``model_dir``."""
    path = model_file(model_dir, TORCH)
    torch = import_framework("torch", framework="PyTorch", extra="torch")
    try:
        if path.suffix.lower() == ".pt2":
            module = torch.export.load(str(path)).module()
        else:
            module = torch.jit.load(str(path), map_location="cpu")
            module.eval()
    except Exception as exc:
        if path.suffix.lower() != ".pt2" and "constants.pkl" in str(exc):
            raise ModelLoadError(
                f"The torch handler could not load {path.name}: it is not TorchScript (a state "
                "dict or a module saved with torch.save?). Save it with torch.jit.save, or serve "
                "it with code/inference.py whose model_fn builds the module and loads it."
            ) from exc
        raise load_error(TORCH, path, exc) from exc
    logger.debug("Loaded PyTorch module from %s", path)
    return TorchModel(model_id, path, module, torch)

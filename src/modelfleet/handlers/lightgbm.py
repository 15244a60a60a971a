"""LightGBM boosters saved as text (``*.txt`` whose first line is ``tree``).

``Booster.predict`` answers with the toolkit's default encoders (JSON list, CSV a value per line,
``.npy``). LightGBM builds a predictor per call and guards its model with a shared lock, so one
booster serves several threads; each call uses one OpenMP thread (``num_threads=1``) because
parallelism comes from serving many requests and models at once.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from modelfleet.handlers import codecs
from modelfleet.handlers.arraymodel import ArrayModel, import_framework, load_error
from modelfleet.handlers.detect import LIGHTGBM, model_file

logger = logging.getLogger(__name__)


class LightGBMModel(ArrayModel):
    """A LightGBM ``Booster`` read from its text format."""

    handler_name = LIGHTGBM

    def __init__(self, model_id: str, path: Path, booster: Any) -> None:
        super().__init__(model_id, path)
        self.booster: Any = booster

    def predict(self, features: codecs.Array) -> Any:
        return self.booster.predict(features, num_threads=1)

    def close(self) -> None:
        self.booster = None


def load(model_dir: Path, *, model_id: str) -> LightGBMModel:
    """Load the LightGBM text model in ``model_dir``."""
    path = model_file(model_dir, LIGHTGBM)
    lgb = import_framework("lightgbm", framework="LightGBM", extra="lightgbm")
    try:
        booster = lgb.Booster(model_file=str(path))
    except Exception as exc:
        raise load_error(LIGHTGBM, path, exc) from exc
    logger.debug("Loaded LightGBM booster with %d trees from %s", booster.num_trees(), path)
    return LightGBMModel(model_id, path, booster)

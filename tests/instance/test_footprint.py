"""A model's charged footprint and the garbage-collector freeze after framework imports."""

from __future__ import annotations

from pathlib import Path

import pytest

import modelfleet.instance.loader as loader_mod
import modelfleet.instance.manager as manager_mod
from modelfleet.instance.loader import Loader
from tests.artifacts import inference_py_artifact, sklearn_artifact, unpack
from tests.instance.test_lifecycle import ROW
from tests.instance.test_snapshots import manager_for

BIG = """
import numpy as np

def model_fn(model_dir):
    return np.ones(4_000_000)  # 32 MB, from a few-hundred-byte artifact

def predict_fn(data, model):
    return [float(model[0])]
"""


def test_memory_a_load_takes_from_freed_heap_is_still_charged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unloads leave freed pages in the heap, so the next load may not grow the RSS at all:
    the bytes malloc handed out count too."""
    monkeypatch.setattr(loader_mod, "current_rss", lambda: 1_000_000_000)  # flat
    loader = Loader(handler=None)
    for name in ("warm-up", "m"):  # the first load imports the handler's code: not charged
        folder = unpack(inference_py_artifact({"inference.py": BIG}), tmp_path / name)
        loaded = loader.load(name, folder, disk_bytes=300)
        loaded.model.close()
    assert loaded.imported == 0
    assert loaded.size >= 32_000_000


async def test_no_freeze_while_a_model_with_code_is_loaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Frozen objects are never collected: an inference.py model's namespace is a reference
    cycle, so the freeze a framework import asks for waits until no such model is loaded."""
    freezes: list[bool] = []
    monkeypatch.setattr(manager_mod.gc, "freeze", lambda: freezes.append(True))
    source = tmp_path / "source"
    for name, artifact in (
        ("custom", inference_py_artifact({"inference.py": BIG.replace("4_000_000", "10")})),
        ("forest-1", sklearn_artifact(seed=1)),
        ("forest-2", sklearn_artifact(seed=2)),
    ):
        (source / name).mkdir(parents=True)
        (source / name / "model.tar.gz").write_bytes(artifact)
    manager = await manager_for(source, tmp_path / "cache")
    freezes.clear()  # the one at start: the server's own objects, before any model

    async def call(name: str) -> None:
        await manager.invoke(
            f"{name}/model.tar.gz", ROW, content_type="text/csv", accept="application/json"
        )

    try:
        await call("custom")
        manager.pressure.freeze_wanted = True  # as after a load that imported a framework
        await call("forest-1")
        assert freezes == []  # the custom model is loaded: still waiting
        assert manager.pressure.freeze_wanted
        await manager.unload("custom/model.tar.gz")
        await call("forest-2")  # the next load finds it safe
        assert freezes == [True]
        assert not manager.pressure.freeze_wanted
    finally:
        await manager.stop()

"""A model's charged footprint and the garbage-collector freeze after framework imports."""

from __future__ import annotations

import gc
import sys
from pathlib import Path

import pytest

import modelfleet.instance.loader as loader_mod
from modelfleet.instance.loader import Loader, small_object_bytes
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
    monkeypatch.setattr(gc, "freeze", lambda: freezes.append(True))
    source = tmp_path / "source"
    for name, artifact in (
        ("custom", inference_py_artifact({"inference.py": BIG.replace("4_000_000", "10")})),
        ("forest-1", sklearn_artifact(seed=1)),
        ("forest-2", sklearn_artifact(seed=2)),
    ):
        (source / name).mkdir(parents=True)
        (source / name / "model.tar.gz").write_bytes(artifact)
    manager = await manager_for(source, tmp_path / "cache")
    assert freezes == []  # the one at start is the entry point's (instance/bootstrap.py)

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


SMALL_OBJECTS = """
def model_fn(model_dir):
    return {i: float(i) + 0.5 for i in range(2_000)}  # ~2,000 objects, each under 512 bytes

def predict_fn(data, model):
    return [model[0]]
"""


def test_small_python_objects_are_charged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Neither the RSS nor malloc sees objects from Python's own small-object arenas (reused
    after an unload): a small model's object graph is walked and its small objects charged."""
    monkeypatch.setattr(loader_mod, "current_rss", lambda: 1_000_000_000)  # flat
    monkeypatch.setattr(loader_mod, "allocated_bytes", lambda: 5_000_000)  # flat
    loader = Loader(handler=None)
    for name in ("warm-up", "m"):
        folder = unpack(inference_py_artifact({"inference.py": SMALL_OBJECTS}), tmp_path / name)
        loaded = loader.load(name, folder, disk_bytes=300)
    floats = 2_000 * 24  # the dict's keys are not counted: mostly attribute names elsewhere
    assert floats <= loaded.size < 4 * floats


class _Holder:
    def __init__(self, payload: object) -> None:
        self.payload = payload
        self.kind = Loader  # a class: shared, not walked
        self.module = loader_mod  # a module: shared, not walked
        self.function = loader_mod.folder_size  # its globals are the module's: not walked


def test_the_walk_counts_the_model_own_objects_only() -> None:
    bare = small_object_bytes(_Holder(None))
    assert bare < 1_000  # the holder, its dict, a few references: no module, class or globals

    floats = [float(i) for i in range(100)]
    assert small_object_bytes(_Holder(floats)) - bare >= 90 * 24

    def closure() -> int:
        return len(floats)

    assert small_object_bytes(_Holder(closure)) - bare >= 90 * 24  # the closure's cells

    cycle: list[object] = []
    cycle.append(cycle)
    assert small_object_bytes(cycle) == sys.getsizeof(cycle)

    many = [float(i) for i in range(100_000)]  # the walk stops at its bound
    assert small_object_bytes(many) < 5_001 * 24


class _Awkward:
    """What a model's own objects may do: a failing __sizeof__, a computed __class__."""

    def __sizeof__(self) -> int:
        raise RuntimeError("no size")

    @property  # type: ignore[misc]
    def __class__(self) -> type:
        raise AssertionError("the walk must not ask an object for its __class__")


def test_the_walk_survives_awkward_objects() -> None:
    def later() -> object:
        return unset  # an empty cell until ``unset`` is assigned below

    holder = _Holder([_Awkward(), later, 0.5])
    assert small_object_bytes(holder) > 0
    unset = 1.5  # fills the closure's cell


def test_a_wide_graph_is_walked_only_up_to_the_bound() -> None:
    """The bound holds however many children one object has: a million floats in one list are
    not all looked at (nor copied)."""
    wide = {"x": [float(i) for i in range(1_000_000)]}
    assert small_object_bytes(wide) <= 5_001 * 24 + 1_000


def test_shared_builtins_and_loggers_are_not_counted() -> None:
    import logging

    bare = small_object_bytes(_Holder(None))
    assert small_object_bytes(_Holder([len, print, logging.getLogger("modelfleet")])) < bare + 200


def test_a_walk_that_goes_wrong_returns_what_it_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    """Another thread may change a dict while the walk iterates it (RuntimeError): the size is
    an estimate, so the load goes on with what was counted."""

    def changed(*_: object) -> list[object]:
        raise RuntimeError("dictionary changed size during iteration")

    monkeypatch.setattr(loader_mod.gc, "get_referents", changed)
    assert small_object_bytes(_Holder(None)) > 0  # the holder itself, counted before the error


def test_a_library_function_standing_in_for_print_is_shared(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ray's workers replace ``print`` with a function of a Ray module: still not the model's."""
    import builtins

    from tests.instance import footprint_helpers

    monkeypatch.setattr(builtins, "print", footprint_helpers.replacement_print)
    bare = small_object_bytes(_Holder(None))
    assert small_object_bytes(_Holder([print])) < bare + 100
    closure_state = ["x" * 100]
    assert small_object_bytes(_Holder([lambda: closure_state])) > bare + 100  # the model's own

"""Model code that exits, and failed loads, at the manager's seams (fakes, no HTTP).

``SystemExit`` from model code must come back as the model's error, never leave the event loop
(inline inference runs on it, pool calls are awaited on it); a failed load must not keep what it
built reachable from its error. KeyboardInterrupt is checked through real servers only
(tests/instance/test_model_faults.py): raised here by mistake it would end the test session.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from pathlib import Path
from typing import Any

import pytest

from modelfleet.errors import ModelInvocationError, ModelLoadError
from modelfleet.handlers.base import LoadedModel, Prediction
from modelfleet.instance.loader import Loader
from modelfleet.instance.pools import WorkerExitError, run_blocking
from modelfleet.instance.unloader import close_model
from tests.instance.fakes import FakeSource, Harness, invoke, model_folder


class Exits(LoadedModel):
    """Calls ``sys.exit()`` for a body of ``exit``, answers ``ok`` otherwise."""

    handler_name = "exits"

    def __init__(self) -> None:
        self.threads: list[str] = []

    def invoke(
        self,
        body: bytes,
        content_type: str | None,
        accept: str | None,
        custom_attributes: str | None = None,
    ) -> Prediction:
        import sys
        import threading

        self.threads.append(threading.current_thread().name)
        if body == b"exit":
            sys.exit(3)
        return Prediction(b"ok", "text/plain")


def exiting_loads(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    import modelfleet.instance.loader as loader_mod

    monkeypatch.setattr(loader_mod, "load_model", lambda *args, **kwargs: Exits())


@pytest.mark.parametrize("inline_ms", [0, 10_000], ids=["pool", "inline"])
async def test_sys_exit_in_inference_is_the_models_error(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, make_manager: Any, inline_ms: int
) -> None:
    exiting_loads(harness, monkeypatch)
    manager = await make_manager(FakeSource({"m": 10}), inline_inference_ms=inline_ms)
    for _ in range(10):  # past the pool calls a model needs before it may run inline
        await invoke(manager, "m")
    with pytest.raises(ModelInvocationError, match="SystemExit") as caught:
        await manager.invoke("m", b"exit", content_type="text/csv", accept=None)
    assert isinstance(caught.value.__cause__, SystemExit)
    entry = manager.memory.entry("m")
    assert entry is not None
    assert entry.pins == 0  # the failed call gave its pin back
    model = entry.value.model
    assert isinstance(model, Exits)
    on_loop = model.threads[-1] == "MainThread"
    assert on_loop == (inline_ms > 0)  # the case under test really ran where it says
    assert (await invoke(manager, "m")).prediction.body == b"ok"  # the model still serves


async def test_sys_exit_in_a_load_is_a_model_load_error(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, make_manager: Any, tmp_path: Path
) -> None:
    import sys

    import modelfleet.instance.loader as loader_mod

    def load(url: Path, **kwargs: Any) -> LoadedModel:
        if url.name == "bad":
            sys.exit(3)
        return Exits()

    monkeypatch.setattr(loader_mod, "load_model", load)
    manager = await make_manager()
    with pytest.raises(ModelLoadError, match="SystemExit: 3"):
        await manager.load_from_url("bad", model_folder(tmp_path, "bad"))
    assert "bad" not in manager.memory
    info = await manager.load_from_url("good", model_folder(tmp_path, "good"))
    assert info.name == "good"


class Big:
    """Stands for what a load built (weak-referenceable, unlike a bytearray)."""


def test_a_failed_load_keeps_nothing_it_built_reachable(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import modelfleet.instance.loader as loader_mod

    built: list[weakref.ref[Big]] = []

    def model_fn() -> None:
        big = Big()
        built.append(weakref.ref(big))
        raise ValueError("failed after building")

    def load(url: Path, **kwargs: Any) -> LoadedModel:
        try:
            model_fn()
        except ValueError as exc:  # as the handlers wrap the model's error
            raise ModelLoadError(f"model_fn failed: {exc}") from exc
        raise AssertionError("unreachable")

    monkeypatch.setattr(loader_mod, "load_model", load)
    gc.disable()  # the error must not need a collection to let go
    try:
        with pytest.raises(ModelLoadError, match="failed after building") as caught:
            Loader(handler=None).load("m", Path(model_folder(tmp_path, "m")), 1000)
        assert built[0]() is None  # gone while the error is still held
        assert caught.value.__cause__ is None
    finally:
        gc.enable()


def test_a_load_failing_with_a_non_model_error_keeps_nothing_either(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import modelfleet.instance.loader as loader_mod

    built: list[weakref.ref[Big]] = []

    def load(url: Path, **kwargs: Any) -> LoadedModel:
        big = Big()
        built.append(weakref.ref(big))
        raise MemoryError("no room")

    monkeypatch.setattr(loader_mod, "load_model", load)
    gc.disable()
    try:
        with pytest.raises(ModelLoadError, match="MemoryError: no room"):
            Loader(handler=None).load("m", Path(model_folder(tmp_path, "m")), 1000)
        assert built[0]() is None
    finally:
        gc.enable()


async def test_run_blocking_never_lets_an_exit_reach_the_event_loop() -> None:
    import sys
    from concurrent.futures import ThreadPoolExecutor

    def exits() -> None:
        sys.exit(5)

    with ThreadPoolExecutor(1) as pool:
        with pytest.raises(WorkerExitError, match="SystemExit") as caught:
            await run_blocking(pool, exits)
        assert isinstance(caught.value.__cause__, SystemExit)
        assert await run_blocking(pool, lambda: 7) == 7
    await asyncio.sleep(0)  # the loop still runs


class SizeofExits:
    """A model object whose ``__sizeof__`` calls ``sys.exit()`` (the loader's size walk asks)."""

    def __sizeof__(self) -> int:
        import sys

        sys.exit(9)


class HoldsSizeofExits(Exits):
    def __init__(self) -> None:
        super().__init__()
        self.part = SizeofExits()


def test_the_size_walk_survives_model_objects_that_exit(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import modelfleet.instance.loader as loader_mod

    monkeypatch.setattr(loader_mod, "load_model", lambda *args, **kwargs: HoldsSizeofExits())
    loaded = Loader(handler=None).load("m", Path(model_folder(tmp_path, "m")), 10)
    assert isinstance(loaded.model, HoldsSizeofExits)
    assert loaded.size >= 10


def test_a_close_that_exits_does_not_fail_the_unload() -> None:
    class ExitsOnClose(LoadedModel):
        handler_name = "fake"

        def invoke(
            self,
            body: bytes,
            content_type: str | None,
            accept: str | None,
            custom_attributes: str | None = None,
        ) -> Prediction:
            raise AssertionError("not called")

        def close(self) -> None:
            raise SystemExit(5)

    close_model(ExitsOnClose())  # logged, not raised

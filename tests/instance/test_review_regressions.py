"""Regression tests for concurrency and budget bugs found in review of the model manager.

Every test drives the race deterministically: a fake model source (stat/fetch/is_archive), a
fake handler (``load_model`` patched) whose ``invoke`` can block on a threading event, a fixed
RSS reading (so measured sizes are exactly the handler's own figure or the disk bytes), and,
where an exact interleaving is needed, a gated ``run_blocking`` for the inference pool.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest

import modelfleet.instance.manager as manager_mod
import modelfleet.instance.runner as runner_mod
from modelfleet.errors import (
    CapacityError,
    DiskFullError,
    ModelAlreadyLoadedError,
    ModelError,
    ModelNotReadyError,
    ModelTooLargeError,
)
from modelfleet.instance.manager import ModelManager
from tests.instance.fakes import (
    Block,
    FakeSource,
    Harness,
    invoke,
    invoke_loaded,
    model_folder,
    spin,
)

pytestmark = pytest.mark.timeout(60)


# --------------------------------------------------------------------------------------------
# 1. Two concurrent LoadModel calls for one name: both load, the memory budget leaks.
async def test_concurrent_load_model_of_one_name_loads_once(
    harness: Harness, make_manager: Any, tmp_path: Path
) -> None:
    manager = await make_manager()
    url = model_folder(tmp_path, "m")
    results = await asyncio.gather(
        manager.load_from_url("m", url), manager.load_from_url("m", url), return_exceptions=True
    )
    # Exactly one load; the other call answers 409.
    assert len(harness.models["m"]) == 1, "the model was loaded twice"
    assert sum(isinstance(r, ModelAlreadyLoadedError) for r in results) == 1, results
    entry = manager.memory.entry("m")
    assert entry is not None
    assert manager.memory.used_bytes == entry.size_bytes


async def test_concurrent_load_model_leaves_no_bytes_after_unload(
    harness: Harness, make_manager: Any, tmp_path: Path
) -> None:
    manager = await make_manager()
    url = model_folder(tmp_path, "m")
    await asyncio.gather(
        manager.load_from_url("m", url), manager.load_from_url("m", url), return_exceptions=True
    )
    await manager.unload("m")
    assert len(manager.memory) == 0
    assert manager.memory.used_bytes == 0, "bytes of an overwritten entry are never released"
    assert all(model.closed for model in harness.models["m"]), "a loaded model was never closed"


# --------------------------------------------------------------------------------------------
# 2. UnloadModel wakes after the last call drains, but a call that pinned the model in between
#    is not re-checked: the model is unloaded (closed) under a running inference.
async def test_unload_does_not_close_a_model_pinned_after_drain(
    harness: Harness, make_manager: Any, tmp_path: Path
) -> None:
    manager = await make_manager()
    await manager.load_from_url("m", model_folder(tmp_path, "m"))
    model = harness.models["m"][0]
    gates = harness.gate_inference(manager)

    call_a = asyncio.create_task(invoke_loaded(manager, "m"))
    await spin(lambda: len(gates) == 1)
    unload = asyncio.create_task(manager.unload("m"))
    await spin(lambda: "m" in manager._drained)

    gates[0].set()  # call A finishes in its next step and sets the drained event ...
    call_b = asyncio.create_task(invoke_loaded(manager, "m"))  # ... B is ready in the same turn
    await call_a
    await spin(lambda: len(gates) == 2)  # B is in flight
    for _ in range(50):
        await asyncio.sleep(0)
    assert not unload.done(), "UnloadModel must wait for call B"
    assert not model.closed, "UnloadModel closed a model pinned by a call in flight"
    gates[1].set()
    await call_b
    await unload
    assert model.closed
    assert not model.closed_while_invoking
    assert "m" not in manager.memory


# --------------------------------------------------------------------------------------------
# 3. A cancelled call drops its pin while its inference still runs on the worker thread.
async def test_cancelled_call_keeps_pin_until_inference_thread_ends(
    harness: Harness, make_manager: Any, tmp_path: Path
) -> None:
    manager = await make_manager()
    block = harness.invoke_blocks["m"] = Block()
    await manager.load_from_url("m", model_folder(tmp_path, "m"))
    model = harness.models["m"][0]

    call = asyncio.create_task(invoke_loaded(manager, "m"))
    assert await asyncio.to_thread(block.started.wait, 30)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    try:
        assert model.invoking == 1  # the model's code is still running
        entry = manager.memory.entry("m")
        assert entry is not None
        assert entry.pins == 1, "the pin was dropped while the model is still executing"
    finally:
        block.release.set()


# --------------------------------------------------------------------------------------------
# 4. An artifact larger than the whole disk budget unloads every idle model before failing.
async def test_artifact_larger_than_disk_budget_does_not_flush_memory(
    harness: Harness, make_manager: Any
) -> None:
    source = FakeSource({"a": 100, "b": 100, "huge": 50_000})
    manager = await make_manager(source, disk_limit=10_000)
    await invoke(manager, "a")
    await invoke(manager, "b")
    with pytest.raises(DiskFullError):
        await invoke(manager, "huge")
    evicted = "an artifact that can never fit evicted every idle model from memory"
    assert "a" in manager.memory, evicted
    assert "b" in manager.memory, evicted


# --------------------------------------------------------------------------------------------
# 5. A model whose measured footprint is over the whole memory budget is admitted anyway.
async def test_measured_size_over_memory_budget_is_refused(
    harness: Harness, make_manager: Any
) -> None:
    source = FakeSource({"big": 100})
    harness.model_sizes["big"] = 50_000
    manager = await make_manager(source, memory_limit=10_000)
    with contextlib.suppress(CapacityError, ModelTooLargeError):
        await invoke(manager, "big")
    assert manager.memory.used_bytes <= manager.memory.budget_bytes, (
        f"{manager.memory.used_bytes} bytes held under a {manager.memory.budget_bytes} budget"
    )


# --------------------------------------------------------------------------------------------
# 6. An archive over half the disk budget reserves the whole budget, so it fails while any
#    other model is in use, although its true size fits.
async def test_archive_that_fits_is_not_refused_for_its_estimate(
    harness: Harness, make_manager: Any
) -> None:
    source = FakeSource({"a": 1_000, "big.tar.gz": 6_000}, archives={"big.tar.gz"})
    manager = await make_manager(source, disk_limit=10_000)
    await invoke(manager, "a")
    block = harness.invoke_blocks["a"] = Block()
    harness.models["a"][0].block = block  # "a" is now busy in a long call
    busy = asyncio.create_task(invoke(manager, "a"))
    assert await asyncio.to_thread(block.started.wait, 30)
    try:
        # 6,000 bytes + "a" (~1,100 bytes) fit in 10,000.
        await invoke(manager, "big.tar.gz")
    finally:
        block.release.set()
        await busy


# --------------------------------------------------------------------------------------------
# 7. ModelCacheSetting=Disabled: a load that finishes after its callers timed out is never
#    unloaded nor deleted (only an invocation triggers the discard).
async def test_disabled_cache_discards_a_load_whose_callers_timed_out(
    harness: Harness, make_manager: Any
) -> None:
    source = FakeSource({"m": 100})
    manager = await make_manager(source, model_cache="disabled", invoke_timeout=0.05)
    block = harness.load_blocks["m"] = Block()
    with pytest.raises(ModelNotReadyError):
        await invoke(manager, "m")  # the load is held until after the timeout
    task = manager._pending["m"].task
    assert task is not None
    block.release.set()
    await asyncio.shield(task)
    await spin(lambda: "m" not in manager._pending)
    await manager.unloader.drain()
    assert "m" not in manager.memory, "Disabled: a model nobody invoked stays loaded"
    assert "m" not in manager.disk, "Disabled: its files stay on disk"


# --------------------------------------------------------------------------------------------
# 8. A freshly loaded model is admitted unpinned (admit's docstring says it is pinned for the
#    call that loaded it): another load admitted before the waiters wake evicts it, and the
#    waiters load it again (or give up with ModelNotReadyError after three rounds).
async def admission_race(harness: Harness, make_manager: Any) -> tuple[ModelManager, list[Any]]:
    """Loads of "x" then "y" finish in one turn while "w" is busy; returns both calls' results."""
    source = FakeSource({"w": 10, "x": 10, "y": 10})
    harness.model_sizes.update(w=1_000, x=1_000, y=1_900)
    manager = await make_manager(source, memory_limit=3_000)
    # Put all three artifacts on disk, then leave only "w" in memory.
    for name in ("x", "y", "w"):
        await invoke(manager, name)
    for name in ("x", "y"):
        if name in manager.memory:
            await manager.unload(name)
    assert list(manager.memory) == ["w"]
    assert len(manager.disk) == 3
    harness.models.clear()
    real = manager_mod.run_blocking
    inference_gates: list[asyncio.Event] = []
    load_gates: dict[str, asyncio.Event] = {}

    async def gated(pool: Any, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if pool is manager.pools.inference:
            if fn.__self__.model.name == "w":  # only "w"'s call is held; others run at once
                gate = asyncio.Event()
                inference_gates.append(gate)
                await gate.wait()
            return fn(*args, **kwargs)
        if getattr(fn, "__name__", "") == "loadable":  # the revalidation: at once, in turn
            return fn(*args, **kwargs)
        if getattr(fn, "__name__", "") == "load" and args[0] in load_gates:
            await load_gates[args[0]].wait()
            return fn(*args, **kwargs)
        return await real(pool, fn, *args, **kwargs)

    harness.monkeypatch.setattr(manager_mod, "run_blocking", gated)  # loads
    harness.monkeypatch.setattr(runner_mod, "run_blocking", gated)  # inference
    # "w" is loaded and busy (pinned) in a call.
    busy = asyncio.create_task(invoke(manager, "w"))
    await spin(lambda: len(inference_gates) == 1)
    assert manager.memory.entry("w").pins == 1
    load_gates["x"], load_gates["y"] = asyncio.Event(), asyncio.Event()
    call_x = asyncio.create_task(invoke(manager, "x"))
    call_y = asyncio.create_task(invoke(manager, "y"))
    await spin(lambda: "x" in manager._states and "y" in manager._states)
    for _ in range(20):  # both loads are parked on their gates
        await asyncio.sleep(0)
    load_gates["x"].set()  # x is admitted first ...
    load_gates["y"].set()  # ... then y, before x's caller wakes
    try:
        results = await asyncio.wait_for(asyncio.gather(call_x, call_y, return_exceptions=True), 30)
        return manager, list(results)
    finally:
        for gate in inference_gates:
            gate.set()
        await asyncio.gather(busy, call_x, call_y, return_exceptions=True)


async def test_fresh_model_is_not_evicted_before_its_waiters_use_it(
    harness: Harness, make_manager: Any
) -> None:
    await admission_race(harness, make_manager)
    assert len(harness.models["x"]) == 1, "x was evicted before its caller used it"


# --------------------------------------------------------------------------------------------
# 9. Same race, other victim: "y" is evicted while its own load awaits the unloading of the
#    victims of its admission; _load then raises ModelLoadError ("evicted as soon as it
#    loaded", a path marked "pragma: no cover"), the caller gets a ModelError (424) for a
#    healthy model, and _load_from_source deletes its good artifact from disk.
async def test_healthy_model_evicted_during_admission_is_not_a_model_error(
    harness: Harness, make_manager: Any
) -> None:
    manager, results = await admission_race(harness, make_manager)
    assert not any(isinstance(r, ModelError) for r in results), results
    assert "y" in manager.disk, "a healthy artifact was deleted as if unloadable"

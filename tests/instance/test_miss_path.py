"""What a request that misses waits for, and what it no longer waits for: its victims'
unloads, the check of a cached copy against the source (it runs beside the load; the model is
admitted only once the check allows it), and a model proving again, after each reload, that it
is fast enough to run inline."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import modelfleet.instance.unloader as unloader_mod
from modelfleet.errors import ModelNotFoundError
from modelfleet.handlers.base import LoadedModel
from modelfleet.instance.state import ModelState
from modelfleet.source.store import ArtifactInfo
from tests.instance.fakes import Block, FakeSource, Harness, invoke
from tests.instance.test_lifecycle import make_source
from tests.instance.test_snapshots import answer, manager_for, snapshots_written


class CheckedSource(FakeSource):
    """A fake source whose metadata checks (``probe=True``) can wait, fail or see a new
    version."""

    def __init__(self, sizes: dict[str, int]) -> None:
        super().__init__(sizes)
        self.etag = "v1"
        self.check_block: Block | None = None
        self.gone = False
        self.checks = 0

    def stat(self, target_model: str, *, probe: bool = False) -> ArtifactInfo:
        if probe:
            self.checks += 1
            if self.check_block is not None:
                self.check_block.started.set()
                assert self.check_block.release.wait(30)
            if self.gone:
                raise ModelNotFoundError(target_model)
        info = super().stat(target_model, probe=probe)
        return dataclasses.replace(info, etag=self.etag)


async def until(condition: Callable[[], bool]) -> None:
    """Bounded poll (10 s) for what worker threads do."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never held")


async def cached(make_manager: Any, harness: Harness) -> tuple[CheckedSource, Any]:
    """A manager over a checked source whose model "a" was loaded once and unloaded: its
    artifact stays in the disk cache, so the next request loads that copy."""
    source = CheckedSource({"a": 10})
    manager = await make_manager(source)
    await invoke(manager, "a")
    await manager.unload("a")
    assert harness.models["a"][-1].closed
    return source, manager


async def test_a_load_does_not_wait_for_the_models_it_evicts_to_unload(
    harness: Harness, make_manager: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    harness.model_sizes = {"a": 600_000, "b": 600_000}
    manager = await make_manager(FakeSource({"a": 10, "b": 10}))
    closing = Block()
    real_close = unloader_mod.close_model

    def close_model(model: LoadedModel) -> None:
        closing.started.set()
        assert closing.release.wait(30)
        real_close(model)

    monkeypatch.setattr(unloader_mod, "close_model", close_model)
    await invoke(manager, "a")
    result = await invoke(manager, "b")  # evicts a, whose close will be stuck
    assert result.prediction.body == b"ok"
    assert "a" not in manager.memory
    assert await asyncio.to_thread(closing.started.wait, 30)  # a's close began, in the back
    assert not harness.models["a"][0].closed  # and is still stuck: b did not wait for it
    closing.release.set()
    await until(lambda: harness.models["a"][0].closed and not manager.unloader.background)


async def test_a_cached_copy_loads_while_it_is_checked_and_is_served_once_allowed(
    harness: Harness, make_manager: Any
) -> None:
    source, manager = await cached(make_manager, harness)
    source.check_block = Block()
    request = asyncio.create_task(invoke(manager, "a"))
    block = source.check_block
    await until(lambda: len(harness.models["a"]) == 2 and block.started.is_set())
    for _ in range(100):  # loaded while the check is out, and not admitted before it answers
        await asyncio.sleep(0)
    assert not request.done()
    assert "a" not in manager.memory
    source.check_block.release.set()
    assert (await request).prediction.body == b"ok"
    assert harness.models["a"][1].threads  # the copy served
    assert manager.metrics.model_downloads._value.get() == 1


async def test_a_copy_the_check_finds_outdated_is_never_served(
    harness: Harness, make_manager: Any
) -> None:
    source, manager = await cached(make_manager, harness)
    source.etag = "v2"
    assert (await invoke(manager, "a")).prediction.body == b"ok"
    stale, fresh = harness.models["a"][1], harness.models["a"][2]
    assert stale.closed
    assert not stale.threads
    assert fresh.threads
    assert not fresh.closed
    assert manager.metrics.model_downloads._value.get() == 2
    assert source.checks == 1  # the new download is not checked again


async def test_a_copy_of_a_model_gone_from_the_source_is_never_served(
    harness: Harness, make_manager: Any
) -> None:
    source, manager = await cached(make_manager, harness)
    source.gone = True
    with pytest.raises(ModelNotFoundError):
        await invoke(manager, "a")
    first, *later = harness.models["a"]
    assert first.threads
    assert all(not model.threads for model in later)  # the copy loaded beside the check
    assert manager.disk.get("a") is None
    assert "a" not in manager.memory


async def test_a_model_that_ran_inline_runs_inline_from_its_first_call_after_a_reload(
    harness: Harness, make_manager: Any
) -> None:
    manager = await make_manager(FakeSource({"fast": 10}), inline_inference_ms=10_000)
    for _ in range(12):
        await invoke(manager, "fast")
    loop_thread = threading.current_thread().name
    assert harness.models["fast"][0].threads[-1] == loop_thread
    await manager.unload("fast")
    await invoke(manager, "fast")
    assert harness.models["fast"][1].threads == [loop_thread]


async def test_a_model_seen_once_before_still_proves_itself_on_the_pool(
    harness: Harness, make_manager: Any
) -> None:
    manager = await make_manager(FakeSource({"fast": 10}), inline_inference_ms=10_000)
    for _ in range(3):  # 2 measured calls: not enough to run inline
        await invoke(manager, "fast")
    await manager.unload("fast")
    for _ in range(8):
        await invoke(manager, "fast")
    threads = harness.models["fast"][1].threads
    assert all(name.startswith("mf-infer") for name in threads[:6])  # 2 + 6 = 8 pool calls
    assert threads[6:] == [threading.current_thread().name] * 2  # counted across the reload


@pytest.mark.parametrize("inline_load_ms", [10_000.0, 0.0])
async def test_a_fast_reload_from_its_snapshot_runs_on_the_event_loop(
    tmp_path: Path, inline_load_ms: float
) -> None:
    source = make_source(tmp_path / "source", 1)
    name = "model-0/model.tar.gz"
    manager = await manager_for(source, tmp_path / "cache", inline_load_ms=inline_load_ms)
    threads: list[str] = []
    real_load = manager.loader.load

    def load(*args: Any) -> Any:
        threads.append(threading.current_thread().name)
        return real_load(*args)

    manager.loader.load = load  # type: ignore[method-assign,assignment]
    try:
        first = await answer(manager, name)
        assert len(await snapshots_written(manager, 1)) == 1
        await until(lambda: not manager.snapshots.writing)  # (a write in progress: the pool)
        await manager.unload(name)
        assert await answer(manager, name) == first
        assert manager.metrics.snapshot_loads._value.get() == 1
    finally:
        await manager.stop()
    assert threads[0].startswith("mf-load")  # never loaded: its load time is unknown
    on_loop = threads[1] == threading.current_thread().name
    assert on_loop is (inline_load_ms > 0)


async def test_a_load_waiting_for_its_turn_evicts_nothing_yet(
    harness: Harness, make_manager: Any
) -> None:
    manager = await make_manager(
        FakeSource({"a": 400_000, "b": 400_000, "c": 400_000}),
        load_concurrency=1,
        disk_limit=10_000_000,
    )
    await invoke(manager, "c")  # resident; room for one more
    harness.load_blocks["a"] = Block()
    first = asyncio.create_task(invoke(manager, "a"))
    await until(harness.load_blocks["a"].started.is_set)  # a holds the one turn
    second = asyncio.create_task(invoke(manager, "b"))
    await until(lambda: manager.states().get("b") is ModelState.LOADING)  # downloaded
    for _ in range(100):
        await asyncio.sleep(0)
    assert "c" in manager.memory  # b waits for a turn without reserving (which would evict c)
    assert manager.memory.used_bytes < 900_000  # c and a's reservation, none for b
    harness.load_blocks["a"].release.set()
    await asyncio.gather(first, second)
    assert "b" in manager.memory
    assert "c" not in manager.memory  # evicted once b's turn came


async def test_every_caller_that_waited_for_a_load_counts_as_a_use(
    harness: Harness, make_manager: Any
) -> None:
    manager = await make_manager(FakeSource({"a": 10}))
    harness.load_blocks["a"] = Block()
    calls = [asyncio.create_task(invoke(manager, "a")) for _ in range(3)]
    await until(harness.load_blocks["a"].started.is_set)
    for _ in range(100):  # the other two join the load
        await asyncio.sleep(0)
    harness.load_blocks["a"].release.set()
    await asyncio.gather(*calls)
    entry = manager.memory.entry("a")
    assert entry is not None
    assert entry.hits == 3  # the loading request's use and the two that joined it

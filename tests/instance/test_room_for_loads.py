"""Room for a load spares the models that hits want: loads in flight hold at most a quarter of
the budget, a load whose policy-chosen victims are in use waits for them, and the policy
prices a miss at what the model's next load will cost."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import modelfleet.instance.room as room_mod
from modelfleet.config import ModelCacheSetting
from modelfleet.instance.state import Known, MissCosts, ModelState
from tests.instance.fakes import Block, FakeSource, Harness, invoke
from tests.instance.test_miss_path import until


@pytest.fixture
def patient(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loads wait for room as long as a slow test machine needs (the real bound is 0.2 s)."""
    monkeypatch.setattr(room_mod, "VICTIM_WAIT_S", 30.0)


async def x_in_use_then_hot(harness: Harness, make_manager: Any) -> tuple[Any, asyncio.Task[Any]]:
    """An LRU manager with room for two of its three models: "x" in inference (until its
    block is released; the returned task is that call), then "hot" used after it, so x is the
    policy's first victim and a load of "y" needs the room of one of them."""
    sizes = {"x": 400_000, "hot": 400_000, "y": 400_000}
    harness.model_sizes = dict(sizes)
    manager = await make_manager(FakeSource(sizes), eviction_policy="lru", disk_limit=10_000_000)
    harness.invoke_blocks["x"] = Block()
    first = asyncio.create_task(invoke(manager, "x"))
    await until(harness.invoke_blocks["x"].started.is_set)
    await invoke(manager, "hot")
    return manager, first


async def a_loading(
    harness: Harness, make_manager: Any, **overrides: Any
) -> tuple[Any, asyncio.Task[Any]]:
    """A manager whose load of "a" (200,000 bytes of a 1,000,000-byte budget) is stuck until
    its block is released; the returned task is the call waiting for it."""
    sizes = {"a": 200_000, "b": 200_000}
    harness.model_sizes = dict(sizes)
    manager = await make_manager(FakeSource(sizes), load_concurrency=4, **overrides)
    harness.load_blocks["a"] = Block()
    first = asyncio.create_task(invoke(manager, "a"))  # one load always may start
    await until(harness.load_blocks["a"].started.is_set)
    return manager, first


@pytest.mark.usefixtures("patient")
async def test_a_load_waits_for_its_victim_in_use_rather_than_evict_a_model_used_since(
    harness: Harness, make_manager: Any
) -> None:
    manager, first = await x_in_use_then_hot(harness, make_manager)
    third = asyncio.create_task(invoke(manager, "y"))
    await until(lambda: manager.states().get("y") is ModelState.LOADING)
    for _ in range(100):
        await asyncio.sleep(0)
    assert "hot" in manager.memory
    assert "x" in manager.memory
    assert "y" not in manager.memory
    harness.invoke_blocks["x"].release.set()
    await asyncio.gather(first, third)
    assert sorted(manager.memory) == ["hot", "y"]  # x, the least recently used, made room


async def test_a_victim_in_use_for_longer_than_the_wait_is_passed_over(
    harness: Harness, make_manager: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(room_mod, "VICTIM_WAIT_S", 0.05)
    manager, first = await x_in_use_then_hot(harness, make_manager)
    result = await invoke(manager, "y")  # x stays in use: y evicts hot after the wait
    assert result.prediction.body == b"ok"
    assert sorted(manager.memory) == ["x", "y"]
    harness.invoke_blocks["x"].release.set()
    await first


@pytest.mark.usefixtures("patient")
async def test_loads_in_flight_hold_at_most_a_quarter_of_the_budget(
    harness: Harness, make_manager: Any
) -> None:
    manager, first = await a_loading(harness, make_manager)
    second = asyncio.create_task(invoke(manager, "b"))  # 400,000 of 1,000,000 with a's
    await until(lambda: manager.states().get("b") is ModelState.LOADING)
    for _ in range(100):
        await asyncio.sleep(0)
    assert manager.memory.reserved_bytes < 400_000  # a's alone: b waits to reserve
    assert "b" not in harness.models
    harness.load_blocks["a"].release.set()
    await asyncio.gather(first, second)
    assert sorted(manager.memory) == ["a", "b"]


async def test_a_load_waits_for_the_share_no_longer_than_the_bound(
    harness: Harness, make_manager: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(room_mod, "VICTIM_WAIT_S", 0.05)
    manager, first = await a_loading(harness, make_manager)
    result = await invoke(manager, "b")  # a is still loading: b went ahead after the wait
    assert result.prediction.body == b"ok"
    assert not first.done()
    harness.load_blocks["a"].release.set()
    await first


def test_a_miss_is_priced_at_the_next_load_a_reload_from_the_snapshot() -> None:
    costs, known, other = MissCosts(), Known(), Known()
    # the first load of the first model: nothing to go on but itself
    assert costs.first_loaded(known, 0.9, 1_000, snapshot_follows=True) == 0.9
    assert costs.reloaded(known, 0.002, 1_000) == 0.002
    assert known.reload_s == 0.002
    # a model never reloaded yet: priced at the reloads' CPU seconds per byte
    assert costs.first_loaded(other, 0.5, 2_000, snapshot_follows=True) == pytest.approx(0.004)
    # reloaded before (its snapshot was dropped since): its own reload
    known.reload_s = 0.003
    assert costs.first_loaded(known, 0.4, 1_000, snapshot_follows=True) == 0.003
    # never above the load just measured, and without a snapshot to follow, that load
    assert costs.first_loaded(other, 0.001, 2_000, snapshot_follows=True) == 0.001
    assert costs.first_loaded(known, 0.4, 1_000, snapshot_follows=False) == 0.4


@pytest.mark.usefixtures("patient")
async def test_with_the_model_cache_disabled_loads_do_not_wait_for_a_share(
    harness: Harness, make_manager: Any
) -> None:
    manager, first = await a_loading(harness, make_manager, model_cache=ModelCacheSetting.DISABLED)
    result = await invoke(manager, "b")  # nothing cached to spare: b loads beside a at once
    assert result.prediction.body == b"ok"
    assert not first.done()
    harness.load_blocks["a"].release.set()
    await first


@pytest.mark.usefixtures("patient")
async def test_a_load_does_not_wait_for_a_victim_whose_calls_are_slow(
    harness: Harness, make_manager: Any
) -> None:
    manager, first = await x_in_use_then_hot(harness, make_manager)
    slow = manager.memory.entry("x")
    assert slow is not None
    slow.value.latency_ewma_s = 1.0  # its calls take a second of CPU: not worth waiting for
    result = await invoke(manager, "y")  # at once, though the wait's bound is 30 s here
    assert result.prediction.body == b"ok"
    assert sorted(manager.memory) == ["x", "y"]
    harness.invoke_blocks["x"].release.set()
    await first

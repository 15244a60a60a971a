"""Pinned models (``--pin``) and the idle time-to-live (``--idle-ttl``) on one instance's
manager, driven through the fakes of tests/instance/fakes.py (exact footprints)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from modelfleet.errors import ModelTooLargeError
from modelfleet.instance.manager import ModelManager
from tests.instance.fakes import FakeSource, Harness, invoke

FOOTPRINT = 100_000  # far above the malloc noise a load's measure may pick up


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def manager_with(harness: Harness, make_manager: Any) -> Callable[..., Any]:
    async def make(names: list[str], clock: Clock | None = None, **settings: Any) -> ModelManager:
        for name in names:
            harness.model_sizes[name] = FOOTPRINT
        source = FakeSource(dict.fromkeys(names, 100))
        return await make_manager(  # type: ignore[no-any-return]
            source, clock=clock or Clock(), disk_limit=100_000_000, **settings
        )

    return make


async def until(condition: Callable[[], bool], what: str) -> None:
    """A bounded poll of the event loop's progress (the manager's own task runs between)."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"gave up waiting for {what}")


async def test_a_pinned_model_survives_a_sweep_of_a_hundred_others(
    manager_with: Callable[..., Any],
) -> None:
    others = [f"m{i}" for i in range(100)]
    manager = await manager_with(
        ["kept", *others], memory_limit=5 * FOOTPRINT + FOOTPRINT // 2, pin=("kept",)
    )
    await invoke(manager, "kept")
    for name in others:
        await invoke(manager, name)
        assert "kept" in manager.memory, f"evicted by the load of {name}"
    await manager.unloader.drain()
    assert 2 <= len(manager.memory) <= 5  # the budget fits 5: the pinned one and others
    assert manager.memory.used_bytes <= manager.memory.budget_bytes
    hits = manager.hits
    await invoke(manager, "kept")
    assert manager.hits == hits + 1
    evicted = {e["model"] for e in manager.unloader.evictions}
    assert "kept" not in evicted
    assert {e["reason"] for e in manager.unloader.evictions} == {"room"}
    summary = manager.summary()
    assert summary["pinned_bytes"] == FOOTPRINT
    assert [m["name"] for m in summary["loaded"] if m["pinned"]] == ["kept"]


async def test_pins_that_fill_the_budget_fail_other_loads_at_once_with_the_reason(
    manager_with: Callable[..., Any],
) -> None:
    names = ["cust-1/model.tar.gz", "cust-2/model.tar.gz", "cust-3/model.tar.gz", "x"]
    manager = await manager_with(
        names, memory_limit=2 * FOOTPRINT + FOOTPRINT // 2, pin=("cust-*",)
    )
    for name in names[:2]:
        await invoke(manager, name)
    assert set(manager.memory.kept) == {"cust-1/model.tar.gz", "cust-2/model.tar.gz"}
    for name in names[2:]:  # no wait for room that pinned models will never give
        with pytest.raises(ModelTooLargeError) as refused:
            await invoke(manager, name)
        assert "pinned models hold 200000 of the instance's 250000-byte memory budget" in str(
            refused.value
        )
    await manager.unload("cust-1/model.tar.gz")  # an explicit unload ends a pin
    await invoke(manager, "x")
    await manager.unloader.drain()
    assert set(manager.memory) == {"cust-2/model.tar.gz", "x"}


async def test_an_idle_model_is_unloaded_after_its_ttl_and_a_pinned_one_stays(
    manager_with: Callable[..., Any],
) -> None:
    clock = Clock()
    manager = await manager_with(["a", "b", "p"], clock, idle_ttl=0.4, pin=("p",))
    for name in ("a", "b", "p"):
        await invoke(manager, name)
    clock.now += 0.25
    await invoke(manager, "b")  # used since
    clock.now += 0.2  # a: 0.45 s idle, past its 0.4; b: 0.2 s; p: 0.45 s, but pinned
    await until(lambda: "a" not in manager.memory, "the idle model to be unloaded")
    await manager.unloader.drain()
    assert "b" in manager.memory
    assert "p" in manager.memory
    assert [(e["model"], e["reason"]) for e in manager.unloader.evictions] == [("a", "idle ttl")]
    clock.now += 0.25  # b: 0.45 s idle
    await until(lambda: "b" not in manager.memory, "the second idle model to be unloaded")
    assert "p" in manager.memory

"""Pins: one helper keeps the rule that a model in use is never evicted (instance/pins.py).

Fast tests: the helper alone, then the manager driven through fakes with inference held on
gates, counting pins while calls are in flight.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from modelfleet.cache.memory import MemoryEntry
from modelfleet.instance.pins import PinError, Pins
from modelfleet.instance.state import Flight
from tests.instance.fakes import FakeSource, Harness, invoke


def entry(key: str = "m") -> Any:
    return MemoryEntry(key=key, value=None, size_bytes=1, loaded_at=0.0)


async def until(condition: Callable[[], bool], rounds: int = 20_000) -> None:
    """Let the loop and the worker threads run until ``condition()`` holds (bounded)."""
    for _ in range(rounds):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("condition never held")


def test_the_last_release_reports_the_entry_idle_once() -> None:
    idle: list[str] = []
    pins = Pins(on_idle=lambda e: idle.append(e.key))
    model = entry()
    pins.take(model)
    pins.take(model)
    pins.release(model)
    assert (model.pins, idle) == (1, [])
    pins.release(model)
    assert (model.pins, idle) == (0, ["m"])


def test_a_release_without_a_pin_is_an_error_not_a_negative_count() -> None:
    pins = Pins(on_idle=lambda e: None)
    model = entry()
    pins.take(model)
    pins.release(model)
    with pytest.raises(PinError, match="released more often than it was pinned"):
        pins.release(model)
    assert model.pins == 0


def test_a_load_pins_once_for_every_waiter() -> None:
    pins = Pins(on_idle=lambda e: None)
    model = entry()
    flight = Flight(waiters=5)
    pins.take_for_waiters(model, flight)
    assert (model.pins, flight.prepins, flight.entry) == (5, 5, model)
    claimed = [flight.claim() for _ in range(6)]
    assert claimed[:5] == [model] * 5
    assert claimed[5] is None  # no sixth pin to claim


async def test_every_call_in_flight_holds_a_pin_and_gives_it_back(
    harness: Harness, make_manager: Any
) -> None:
    """Eight callers of one cold model: one load, eight pins while their inference runs (a
    pin per caller, not one for all), the model never evictable meanwhile, zero after."""
    manager = await make_manager(FakeSource({"m": 10}))
    gates = harness.gate_inference(manager)
    calls = [asyncio.create_task(invoke(manager, "m")) for _ in range(8)]
    await until(lambda: len(gates) == 8)
    model = manager.memory.entry("m")
    assert model is not None
    assert model.pins == 8
    assert manager.memory.evict_one() is None  # pinned: nothing to evict
    for gate in gates[:7]:
        gate.set()
    await until(lambda: sum(call.done() for call in calls) == 7)
    assert model.pins == 1
    assert manager.memory.evict_one() is None
    gates[7].set()
    await asyncio.gather(*calls)
    assert model.pins == 0
    assert len(harness.models["m"]) == 1  # one load for the eight
    assert manager.memory.evict_one() is model


async def test_a_cancelled_waiter_gives_back_the_pin_taken_for_it(
    harness: Harness, make_manager: Any
) -> None:
    manager = await make_manager(FakeSource({"m": 10}))
    gates = harness.gate_inference(manager)
    first = asyncio.create_task(invoke(manager, "m"))
    second = asyncio.create_task(invoke(manager, "m"))
    await until(lambda: len(gates) >= 1 or second.done())
    second.cancel()
    await asyncio.gather(second, return_exceptions=True)
    for gate in gates:
        gate.set()
    await until(lambda: first.done() or len(gates) == 2)
    for gate in gates:
        gate.set()
    await first
    model = manager.memory.entry("m")
    assert model is not None
    assert model.pins == 0

"""The RSS watcher evicts only as much as the excess over the high-water mark."""

from __future__ import annotations

from typing import Any

import pytest

import modelfleet.instance.pressure as pressure_mod
import modelfleet.instance.unloader as unloader_mod
from tests.instance.fakes import FakeSource, Harness, invoke


async def test_rss_excess_evicts_just_enough_idle_models(
    harness: Harness, make_manager: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = FakeSource({f"m{i}": 10 for i in range(5)})
    for i in range(5):  # (well above the few hundred bytes of an artifact's metadata)
        harness.model_sizes[f"m{i}"] = 1_000
    manager = await make_manager(source, memory_limit=100_000, eviction_policy="lru")
    for i in range(5):
        await invoke(manager, f"m{i}")
    assert len(manager.memory) == 5
    manager.pressure.high_water = 10_000
    monkeypatch.setattr(pressure_mod, "current_rss", lambda: 12_500)  # 2,500 bytes over
    evicted = await manager.enforce_rss()
    assert evicted == 3  # 3 x 1,000 bytes cover the 2,500-byte excess; two models stay
    assert sorted(manager.memory) == ["m3", "m4"]  # the least recently used went first
    monkeypatch.setattr(pressure_mod, "current_rss", lambda: 9_000)  # under the mark
    assert await manager.enforce_rss() == 0
    assert len(manager.memory) == 2


async def test_freed_pages_go_back_before_any_eviction(
    harness: Harness, make_manager: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Unloads keep freed heap pages for the next load; above the mark they are trimmed first,
    and a model is evicted only for the excess that trimming left."""
    source = FakeSource({f"m{i}": 10 for i in range(3)})
    manager = await make_manager(source, memory_limit=10_000, eviction_policy="lru")
    for i in range(3):
        await invoke(manager, f"m{i}")
    trims: list[bool] = []
    rss = {"now": 1_250}

    def trim(*, collect: bool) -> None:
        trims.append(collect)
        rss["now"] = 900  # the freed pages were what the excess was made of

    monkeypatch.setattr(unloader_mod, "release_memory", trim)
    monkeypatch.setattr(pressure_mod, "current_rss", lambda: rss["now"])
    manager.pressure.high_water = 1_000
    await manager.unload("m0")
    assert trims == []  # an unload does not trim by itself
    assert await manager.enforce_rss() == 0  # trimmed, back under the mark: nothing evicted
    assert trims == [False]
    assert len(manager.memory) == 2
    # Trimming is not enough this time: the rest of the excess is evicted.
    rss["now"] = 1_250
    await manager.unload("m1")
    monkeypatch.setattr(unloader_mod, "release_memory", lambda *, collect: trims.append(collect))
    assert await manager.enforce_rss() == 1
    assert trims == [False, False]
    assert len(manager.memory) == 0


def test_trims_wait_for_a_quiet_second_below_the_mark(monkeypatch: pytest.MonkeyPatch) -> None:
    now = {"t": 100.0}
    monkeypatch.setattr(pressure_mod.time, "monotonic", lambda: now["t"])
    pressure = pressure_mod.MemoryPressure(memory_limit=1_000, high_water=None)
    assert not pressure.trim_due(-1)  # nothing freed, under the mark
    assert pressure.trim_due(1)  # above the mark: always, before any eviction
    pressure.freed()
    assert not pressure.trim_due(-1)  # unloads may be in full swing: keep the pages for now
    assert pressure.trim_due(1)
    now["t"] += 1.0
    assert pressure.trim_due(-1)  # a quiet second since the last unload
    pressure.trimmed()
    assert not pressure.trim_due(-1)

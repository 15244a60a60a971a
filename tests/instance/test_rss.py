"""The RSS watcher evicts only as much as the excess over the high-water mark."""

from __future__ import annotations

from typing import Any

import pytest

import modelfleet.instance.pressure as pressure_mod
from tests.instance.fakes import FakeSource, Harness, invoke


async def test_rss_excess_evicts_just_enough_idle_models(
    harness: Harness, make_manager: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = FakeSource({f"m{i}": 10 for i in range(5)})
    for i in range(5):
        harness.model_sizes[f"m{i}"] = 100
    manager = await make_manager(source, memory_limit=10_000, eviction_policy="lru")
    for i in range(5):
        await invoke(manager, f"m{i}")
    assert len(manager.memory) == 5
    manager.pressure.high_water = 1_000
    monkeypatch.setattr(pressure_mod, "current_rss", lambda: 1_250)  # 250 bytes over
    evicted = await manager.enforce_rss()
    assert evicted == 3  # 3 x 100 bytes cover the 250-byte excess; two models stay
    assert sorted(manager.memory) == ["m3", "m4"]  # the least recently used went first
    monkeypatch.setattr(pressure_mod, "current_rss", lambda: 900)  # under the mark
    assert await manager.enforce_rss() == 0
    assert len(manager.memory) == 2

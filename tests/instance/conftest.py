"""Fixtures for manager tests driven through fakes (tests/instance/fakes.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from modelfleet.config import Settings
from modelfleet.instance.manager import ModelManager
from modelfleet.metrics import Metrics
from tests.instance.fakes import FakeSource, Harness


@pytest.fixture
def harness(monkeypatch: pytest.MonkeyPatch) -> Harness:
    return Harness(monkeypatch)


@pytest.fixture
async def make_manager(tmp_path: Path) -> AsyncIterator[Any]:
    managers: list[ModelManager] = []

    async def make(
        source: FakeSource | None = None, clock: Any = None, **overrides: Any
    ) -> ModelManager:
        settings = Settings(
            model_source=str(tmp_path),
            cache_dir=tmp_path / f"cache{len(managers)}",
            **{"memory_limit": 1_000_000, "disk_limit": 1_000_000, **overrides},
        )
        timing = {"clock": clock} if clock is not None else {}
        manager = ModelManager(
            settings, source=source or FakeSource({}), metrics=Metrics(endpoint="t"), **timing
        )  # type: ignore[arg-type]
        await manager.start()
        managers.append(manager)
        return manager

    yield make
    for manager in managers:
        await manager.stop()

"""Load snapshots through the model manager: written once after a load, read back next time."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from modelfleet.config import Settings
from modelfleet.handlers import snapshot as snapshots
from modelfleet.handlers.sklearn import SklearnModel
from modelfleet.instance.manager import ModelManager
from modelfleet.metrics import Metrics
from modelfleet.source import ModelSource
from tests.instance.test_lifecycle import ROW, make_source


async def manager_for(source: Path, cache: Path, **overrides: object) -> ModelManager:
    settings = Settings(model_source=str(source), cache_dir=cache, **overrides)  # type: ignore[arg-type]
    manager = ModelManager(settings, source=ModelSource(str(source)), metrics=Metrics(endpoint="t"))
    await manager.start()
    return manager


async def answer(manager: ModelManager, name: str) -> bytes:
    result = await manager.invoke(name, ROW, content_type="text/csv", accept="application/json")
    return result.prediction.body


async def snapshots_written(manager: ModelManager, count: int) -> list[Path]:
    """The snapshot files once ``count`` exist (they are written in the background)."""
    deadline = time.monotonic() + 10
    while True:
        found = sorted((manager.settings.cache_dir / "models").glob("*/snapshot"))
        if len(found) >= count or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.01)


async def unload(manager: ModelManager, name: str) -> None:
    await manager.unload(name)
    assert name not in manager.memory


async def test_a_model_loaded_again_is_read_from_its_snapshot(tmp_path: Path) -> None:
    source = make_source(tmp_path / "source", 2)
    names = [f"model-{i}/model.tar.gz" for i in range(2)]
    manager = await manager_for(source, tmp_path / "cache")
    try:
        first = [await answer(manager, name) for name in names]
        assert len(await snapshots_written(manager, 2)) == 2
        disk_bytes = manager.disk.used_bytes
        for name in names:
            entry = manager.disk.get(name)
            assert entry is not None
            assert 0 < entry.snapshot_bytes < entry.size_bytes
        for name in names:
            await unload(manager, name)
        again = [await answer(manager, name) for name in names]
        assert again == first
        assert manager.metrics.snapshot_loads._value.get() == 2
        assert manager.disk.used_bytes == disk_bytes  # no second snapshot
        # The memory floor is the artifact's size (the snapshot is a second copy on disk).
        for name in names:
            memory, disk = manager.memory.entry(name), manager.disk.get(name)
            assert memory is not None
            assert disk is not None
            assert memory.size_bytes >= disk.artifact_bytes
    finally:
        await manager.stop()
    # A restart finds the snapshots and reads them on the first load.
    manager = await manager_for(source, tmp_path / "cache")
    try:
        assert [await answer(manager, name) for name in names] == first
        assert manager.metrics.snapshot_loads._value.get() == 2
        assert manager.metrics.model_downloads._value.get() == 0
    finally:
        await manager.stop()


async def test_snapshots_off_or_cache_disabled_write_none(tmp_path: Path) -> None:
    source = make_source(tmp_path / "source", 1)
    name = "model-0/model.tar.gz"
    for overrides in ({"snapshots": False}, {"model_cache": "disabled"}):
        cache = tmp_path / f"cache-{len(overrides)}-{next(iter(overrides))}"
        manager = await manager_for(source, cache, **overrides)
        try:
            await answer(manager, name)
            if name in manager.memory:
                await unload(manager, name)
            await answer(manager, name)
            await manager.snapshots.stop()  # waits for any write in flight
            assert list(cache.glob("models/*/snapshot")) == []
            assert manager.metrics.snapshot_loads._value.get() == 0
        finally:
            await manager.stop()


async def test_a_stale_snapshot_is_replaced(tmp_path: Path) -> None:
    source = make_source(tmp_path / "source", 1)
    name = "model-0/model.tar.gz"
    manager = await manager_for(source, tmp_path / "cache")
    try:
        first = await answer(manager, name)
        [path] = await snapshots_written(manager, 1)
        await unload(manager, name)
        path.write_bytes(b"modelfleet-snapshot 1 {}\n")  # say, written by other versions
        assert await answer(manager, name) == first
        assert manager.metrics.snapshot_loads._value.get() == 0
        # The unusable one was dropped (with its bytes) and a fresh one written.
        deadline = time.monotonic() + 10
        entry = manager.disk.get(name)
        assert entry is not None
        while not entry.snapshot_bytes:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        assert entry.snapshot_bytes == path.stat().st_size > 1000
    finally:
        await manager.stop()


async def test_the_snapshot_waits_for_the_requests_that_waited_for_the_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pickling holds the GIL: the first answers go out before the snapshot is written."""
    source = make_source(tmp_path / "source", 1)
    name = "model-0/model.tar.gz"
    entered, release = threading.Event(), threading.Event()
    real_invoke = SklearnModel.invoke

    def held_invoke(self: SklearnModel, *args: Any, **kwargs: Any) -> Any:
        entered.set()
        assert release.wait(10)
        return real_invoke(self, *args, **kwargs)

    monkeypatch.setattr(SklearnModel, "invoke", held_invoke)
    manager = await manager_for(source, tmp_path / "cache", inline_inference_ms=0)
    try:
        call = asyncio.create_task(answer(manager, name))
        assert await asyncio.to_thread(entered.wait, 10)
        # The load is done and its caller is being served: the snapshot waits, none started.
        assert name in manager.snapshots._unsaved
        assert not manager.snapshots._background
        assert await snapshots_written(manager, 0) == []
        release.set()
        await call
        assert len(await snapshots_written(manager, 1)) == 1
    finally:
        release.set()
        await manager.stop()


async def test_large_artifacts_get_no_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = make_source(tmp_path / "source", 1)
    monkeypatch.setattr(snapshots, "MAX_BYTES", 1_000)
    manager = await manager_for(source, tmp_path / "cache")
    try:
        await answer(manager, "model-0/model.tar.gz")
        await manager.snapshots.stop()  # waits for any write in flight
        assert list((tmp_path / "cache").glob("models/*/snapshot")) == []
    finally:
        await manager.stop()


async def test_a_snapshot_that_keeps_failing_is_given_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model that can't be pickled is tried twice, not at every load."""
    calls: list[str] = []

    def failing(self: SklearnModel) -> bytes:
        calls.append(self.model_id)
        raise TypeError("cannot pickle this estimator")

    monkeypatch.setattr(SklearnModel, "snapshot", failing)
    source = make_source(tmp_path / "source", 1)
    name = "model-0/model.tar.gz"
    manager = await manager_for(source, tmp_path / "cache")
    try:
        for _ in range(4):
            await answer(manager, name)
            await manager.snapshots.stop()  # wait for the write in flight
            manager.snapshots._stopping = False
            await unload(manager, name)
        assert calls == [name, name]
        assert list((tmp_path / "cache").glob("models/*/snapshot")) == []
    finally:
        await manager.stop()


async def test_no_pickling_without_disk_room(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    real = SklearnModel.snapshot

    def counted(self: SklearnModel) -> bytes | None:
        calls.append(self.model_id)
        return real(self)

    monkeypatch.setattr(SklearnModel, "snapshot", counted)
    source = make_source(tmp_path / "source", 1)
    name = "model-0/model.tar.gz"
    artifact = tmp_path / "probe"
    manager = await manager_for(source, artifact)
    try:
        await answer(manager, name)
        entry = manager.disk.get(name)
        assert entry is not None
        artifact_bytes = entry.artifact_bytes
    finally:
        await manager.stop()
    # A disk budget with room for the artifact but not for a snapshot of its size.
    manager = await manager_for(
        source, tmp_path / "cache", disk_limit=artifact_bytes + artifact_bytes // 2
    )
    calls.clear()
    try:
        await answer(manager, name)
        await manager.snapshots.stop()
        assert calls == []
        assert list((tmp_path / "cache").glob("models/*/snapshot")) == []
    finally:
        await manager.stop()


async def test_a_load_beside_a_snapshot_write_does_not_trust_its_memory_growth(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pickling allocates about the model's size: a load that ran meanwhile is charged its own
    files, not the process's growth (a 3.3 MB model once measured 13.9 MB that way)."""
    writing, release = threading.Event(), threading.Event()
    real = SklearnModel.snapshot

    def slow(self: SklearnModel) -> Any:
        writing.set()
        assert release.wait(30)
        return real(self)

    monkeypatch.setattr(SklearnModel, "snapshot", slow)
    source = make_source(tmp_path / "source", 1)
    manager = await manager_for(source, tmp_path / "cache")
    try:
        await answer(manager, "model-0/model.tar.gz")
        assert await asyncio.to_thread(writing.wait, 30)
        with manager.loader.overlaps.track() as load:  # a load, while the write runs
            pass
        assert load.happened
        release.set()
        assert len(await snapshots_written(manager, 1)) == 1
        # the file appears just before the write's tracked section ends: a load soon after it
        # is alone (bounded poll)
        deadline = time.monotonic() + 10
        while True:
            with manager.loader.overlaps.track() as alone:
                pass
            if not alone.happened or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.01)
        assert not alone.happened
    finally:
        release.set()
        await manager.stop()

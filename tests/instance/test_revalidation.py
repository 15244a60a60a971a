"""Revalidation and disk room through the manager, with fakes at its seams (fast).

A source whose version changes under a loaded model; artifacts that can never fit; metadata
that needs an idle model unloaded. See tests/endpoint/test_cache_trust.py for the same through
real servers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from modelfleet.errors import DiskFullError, SourceError
from modelfleet.source.store import ArtifactInfo
from tests.instance.fakes import Block, FakeSource, Harness, invoke


async def until(condition: Callable[[], bool], rounds: int = 20_000) -> None:
    """Let the loop and the worker threads run until ``condition()`` holds (bounded)."""
    for _ in range(rounds):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("condition never held")


class VersionedSource(FakeSource):
    """A fake source whose objects' ETag the test sets (``etags[name]``, default "v1")."""

    def __init__(self, sizes: dict[str, int]) -> None:
        super().__init__(sizes)
        self.etags: dict[str, str] = {}
        self.down = False

    def stat(self, target_model: str, *, probe: bool = False) -> ArtifactInfo:
        if self.down:
            raise SourceError("source down")
        info = super().stat(target_model)
        return ArtifactInfo(target_model, info.size, self.etags.get(target_model, "v1"), "file")

    def fetch(self, target_model: str, dest: Path, **options: Any) -> ArtifactInfo:
        super().fetch(target_model, dest, **options)
        return self.stat(target_model)


async def test_a_changed_model_keeps_answering_while_its_new_version_loads(
    harness: Harness, make_manager: Any
) -> None:
    source = VersionedSource({"m": 10})
    manager = await make_manager(source, revalidate_interval=0.01, invoke_timeout=0.5)
    await invoke(manager, "m")
    old = manager.memory.entry("m")
    slow = harness.load_blocks["m"] = Block()  # the new version's load takes long
    source.etags["m"] = "v2"
    await until(slow.started.is_set)
    for _ in range(5):  # far past the invoke timeout's worth of requests: the old one answers
        result = await invoke(manager, "m")
        assert result.cache_hit
    assert manager.memory.entry("m") is old
    slow.release.set()
    await until(lambda: manager.memory.entry("m") is not old and manager.memory.entry("m"))
    new = manager.memory.entry("m")
    await invoke(manager, "m")
    await until(lambda: harness.models["m"][0].closed)  # the old one is unloaded once idle
    assert new is not None
    assert not harness.models["m"][1].closed
    disk_entry = manager.disk.get("m")
    assert disk_entry is not None
    assert disk_entry.etag == "v2"
    # the old one's bytes stay held until its unload is done, then they are released
    await until(lambda: manager.memory.used_bytes == new.size_bytes)


async def test_a_new_version_that_fails_to_load_leaves_the_old_one_serving(
    harness: Harness, make_manager: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = VersionedSource({"m": 10})
    manager = await make_manager(source, revalidate_interval=0.01)
    await invoke(manager, "m")
    old = manager.memory.entry("m")
    real = harness._load_model
    failed = asyncio.Event()
    loop = asyncio.get_running_loop()

    def broken(url: Path, **kwargs: Any) -> Any:
        loop.call_soon_threadsafe(failed.set)
        raise RuntimeError("the new upload is broken")

    monkeypatch.setattr("modelfleet.instance.loader.load_model", broken)
    source.etags["m"] = "v2"
    await asyncio.wait_for(failed.wait(), 60)
    await until(lambda: "m" not in manager._pending)
    assert manager.memory.entry("m") is old
    assert (await invoke(manager, "m")).cache_hit
    monkeypatch.setattr("modelfleet.instance.loader.load_model", real)


async def test_an_unreachable_source_changes_nothing_and_is_not_asked_again_at_once(
    harness: Harness, make_manager: Any
) -> None:
    source = VersionedSource({"m": 10})
    manager = await make_manager(source)
    await invoke(manager, "m")
    await manager.unload("m")
    source.down = True
    await invoke(manager, "m")  # from disk: the check fails, the cached copy is served
    await manager.unload("m")
    await invoke(manager, "m")  # within SOURCE_DOWN_S: not asked again
    metrics = manager.metrics
    assert metrics.model_revalidations._value.get() == 1
    assert metrics.model_stale_serves._value.get() == 2
    assert metrics.model_downloads._value.get() == 1


class HugeArchiveSource(FakeSource):
    """``big`` announces, while it unpacks, more than the whole disk budget."""

    def fetch(self, target_model: str, dest: Path, **options: Any) -> ArtifactInfo:
        if target_model != "big":
            return super().fetch(target_model, dest, **options)
        info = ArtifactInfo(target_model, 1000, "etag", "file")
        options["before_write"](info)
        options["reserve"](2_000_000)  # past the 1 MB budget
        raise AssertionError("reserve must refuse")


async def test_an_artifact_that_can_never_fit_unloads_nothing(
    harness: Harness, make_manager: Any
) -> None:
    manager = await make_manager(HugeArchiveSource({"a": 10, "b": 10, "c": 10, "big": 1000}))
    for name in ("a", "b", "c"):
        await invoke(manager, name)
    with pytest.raises(DiskFullError, match="budget"):
        await invoke(manager, "big")
    assert sorted(manager.memory) == ["a", "b", "c"]


async def test_metadata_that_does_not_fit_unloads_an_idle_model_instead_of_failing(
    harness: Harness, make_manager: Any
) -> None:
    budget = 20_000
    source = FakeSource({"a": 6000, "c": 6000, "b": 1})
    manager = await make_manager(source, disk_limit=budget)
    await invoke(manager, "a")
    await invoke(manager, "c")
    c_entry = manager.disk.get("c")
    assert c_entry is not None
    c_total = c_entry.size_bytes
    source.sizes["b"] = budget - 32 - c_total  # the files fit once "a" goes, the metadata not
    await invoke(manager, "b")
    assert "b" in manager.memory
    assert manager.disk.used_bytes <= budget

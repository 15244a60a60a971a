"""Fakes at the manager's seams: a model source, a handler, gated pools (see conftest.py)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

import modelfleet.instance.loader as loader_mod
import modelfleet.instance.pressure as pressure_mod
import modelfleet.instance.runner as runner_mod
from modelfleet.errors import ModelNotFoundError
from modelfleet.handlers.base import LoadedModel, Prediction
from modelfleet.instance.manager import ModelManager
from modelfleet.source.store import ArtifactInfo


class Block:
    """Makes a fake model's invoke (or load) wait until released."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()


class FakeModel(LoadedModel):
    handler_name = "fake"

    def __init__(self, name: str, size: int, block: Block | None) -> None:
        self.name = name
        self._size = size
        self.block = block
        self.invoking = 0
        self.closed = False
        self.closed_while_invoking = False
        self.threads: list[str] = []

    def invoke(
        self,
        body: bytes,
        content_type: str | None,
        accept: str | None,
        custom_attributes: str | None = None,
    ) -> Prediction:
        if self.closed:
            raise RuntimeError(f"model {self.name} invoked after close")
        self.threads.append(threading.current_thread().name)
        self.invoking += 1
        try:
            if self.block is not None:
                self.block.started.set()
                assert self.block.release.wait(30)
            return Prediction(b"ok", "text/plain")
        finally:
            self.invoking -= 1

    def size_bytes(self) -> int | None:
        return self._size

    def close(self) -> None:
        self.closed = True
        self.closed_while_invoking = self.invoking > 0


class FakeSource:
    """A model source whose artifacts are ``sizes[name]`` bytes of one file."""

    uri = "fake://"
    identity = "fake://"

    def __init__(self, sizes: dict[str, int], archives: set[str] | None = None) -> None:
        self.sizes = sizes
        self.archives = archives or set()

    def is_archive(self, target_model: str) -> bool:
        return target_model in self.archives

    def stat(self, target_model: str, *, probe: bool = False) -> ArtifactInfo:
        if target_model not in self.sizes:
            raise ModelNotFoundError(target_model)
        return ArtifactInfo(target_model, self.sizes[target_model], "etag", "file")

    def fetch(
        self,
        target_model: str,
        dest: Path,
        *,
        max_bytes: int,
        max_files: int,
        before_write: Any = None,
        reserve: Any = None,
    ) -> ArtifactInfo:
        info = self.stat(target_model)
        if before_write is not None:
            before_write(info)
        (dest / "model.bin").write_bytes(b"x" * self.sizes[target_model])
        return info


class Harness:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.monkeypatch = monkeypatch
        self.model_sizes: dict[str, int] = {}
        self.invoke_blocks: dict[str, Block] = {}
        self.load_blocks: dict[str, Block] = {}
        self.models: dict[str, list[FakeModel]] = {}
        monkeypatch.setattr(pressure_mod, "current_rss", lambda: 0)
        monkeypatch.setattr(loader_mod, "current_rss", lambda: 0)
        monkeypatch.setattr(loader_mod, "load_model", self._load_model)

    def _load_model(
        self,
        url: Path,
        *,
        model_id: str,
        handler: str | None = None,
        walk_trees: bool = True,
        snapshot: Path | None = None,
        environments: Any = None,
    ) -> FakeModel:
        block = self.load_blocks.get(model_id)
        if block is not None:
            block.started.set()
            assert block.release.wait(30)
        size = self.model_sizes.get(model_id, 1)
        model = FakeModel(model_id, size, self.invoke_blocks.get(model_id))
        self.models.setdefault(model_id, []).append(model)
        return model

    def gate_inference(self, manager: ModelManager) -> list[asyncio.Event]:
        """Make each inference call wait on its own asyncio event, then run inline."""
        real = runner_mod.run_blocking
        gates: list[asyncio.Event] = []

        async def gated(pool: Any, fn: Any, *args: Any, **kwargs: Any) -> Any:
            if pool is manager.pools.inference:
                gate = asyncio.Event()
                gates.append(gate)
                await gate.wait()
                return fn(*args, **kwargs)
            return await real(pool, fn, *args, **kwargs)

        self.monkeypatch.setattr(runner_mod, "run_blocking", gated)  # where inference runs
        return gates


async def spin(condition: Any, rounds: int = 1000) -> None:
    """Let the event loop run (no wall-clock sleep) until ``condition()`` holds."""
    for _ in range(rounds):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


def model_folder(tmp_path: Path, name: str, size: int = 1000) -> str:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "weights.bin").write_bytes(b"x" * size)
    return str(folder)


async def invoke(manager: ModelManager, name: str) -> Any:
    return await manager.invoke(name, b"1", content_type="text/csv", accept=None)


async def invoke_loaded(manager: ModelManager, name: str) -> Any:
    return await manager.invoke_loaded(name, b"1", content_type="text/csv", accept=None)

"""Pool helpers: the overlap tracker used to trust (or not) RSS growth around a load; the
OpenMP wait policy, set by the entry points only."""

from __future__ import annotations

import gc
import os
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from modelfleet.config import Settings
from modelfleet.instance.pools import OverlapTracker, configure_openmp
from tests.servers import thread_server


def test_sections_one_after_another_do_not_overlap() -> None:
    tracker = OverlapTracker()
    with tracker.track() as first:
        pass
    with tracker.track() as second:
        pass
    assert not first.happened
    assert not second.happened


def test_overlapping_sections_both_know() -> None:
    tracker = OverlapTracker()
    with tracker.track() as outer:
        with tracker.track() as inner:
            pass
        assert inner.happened
    assert outer.happened
    with tracker.track() as later:
        pass
    assert not later.happened


def test_openmp_workers_sleep_when_idle_unless_told_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OMP_WAIT_POLICY", "restored-after-the-test")  # so delenv is undone
    monkeypatch.delenv("OMP_WAIT_POLICY")
    configure_openmp()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    configure_openmp()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


def _recorded(name: str, real: Callable[..., object], calls: list[str]) -> Callable[..., object]:
    def call(*args: object) -> object:
        calls.append(name)
        return real(*args)

    return call


def test_a_manager_leaves_its_host_process_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Process-wide tuning is the entry points' (instance/bootstrap.py): an endpoint started
    inside this test process changes neither its environment nor its collector.

    The collector is watched by its calls, not by ``gc.get_freeze_count()`` alone: threads that
    other tests left in this process (Ray's driver) may free frozen objects meanwhile, so the
    count may fall; it must never rise."""
    monkeypatch.setenv("OMP_WAIT_POLICY", "restored-after-the-test")  # so delenv is undone
    monkeypatch.delenv("OMP_WAIT_POLICY")
    calls: list[str] = []
    for name in ("freeze", "unfreeze", "set_threshold", "disable"):
        monkeypatch.setattr(gc, name, _recorded(name, getattr(gc, name), calls))
    frozen = gc.get_freeze_count()
    threshold = gc.get_threshold()
    (tmp_path / "source").mkdir()
    settings = Settings(model_source=str(tmp_path / "source"), cache_dir=tmp_path / "cache")
    with thread_server(settings) as server:
        assert httpx.get(f"{server.url}/ping").status_code == 200
    assert "OMP_WAIT_POLICY" not in os.environ
    assert calls == []
    assert gc.get_freeze_count() <= frozen
    assert gc.get_threshold() == threshold
    assert gc.isenabled()

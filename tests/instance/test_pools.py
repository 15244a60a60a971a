"""Pool helpers: the overlap tracker used to trust (or not) RSS growth around a load; the
OpenMP wait policy."""

from __future__ import annotations

import os

import pytest

from modelfleet.instance.pools import OverlapTracker, configure_openmp


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

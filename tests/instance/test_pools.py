"""Pool helpers: the overlap tracker used to trust (or not) RSS growth around a load."""

from __future__ import annotations

from modelfleet.instance.pools import OverlapTracker


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

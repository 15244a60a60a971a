"""Process-memory pressure: the RSS high-water mark, and pacing of collections and trims.

The memory budget is kept by measured footprints (:mod:`modelfleet.instance.loader`); this is
the safety net behind them. The high-water mark starts at the RSS at start plus the budget plus
slack for the allocator, and rises by what framework imports add (a one-time cost that stays
with the process). Above it, the instance first hands freed heap pages back to the OS
(``malloc_trim``) and evicts idle models worth what excess remains.

Freed heap pages are not handed back at every unload: ``malloc_trim`` walks the whole heap and
unmaps every free page, and the next load faults them back in. Trimming after each unload made
a reload from a load snapshot cost 3.4 ms instead of 0.6 ms, four fifths of it in the kernel
(40 forests of 0.5-5 MB loaded and dropped in turn). A model's freed pages serve the next load
instead; they go back to the OS when the RSS nears the mark, or once unloads pause for a second.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable

from modelfleet.instance.pools import current_rss

CHECK_INTERVAL_S = 1.0
_FULL_COLLECT_INTERVAL_S = 5.0
_TRIM_QUIET_S = 1.0
_SLACK_BYTES = 64 * 1024 * 1024


class MemoryPressure:
    """The RSS high-water mark of one instance, and when the next full GC is due."""

    def __init__(self, *, memory_limit: int, high_water: int | None) -> None:
        self._memory_limit = memory_limit
        self._fixed = high_water
        self.high_water = high_water or 0
        self._last_collect = 0.0
        self._freed_at: float | None = None  # when memory was last freed and not yet trimmed
        self.freeze_wanted = False  # a framework was imported since the last gc.freeze

    def start(self) -> None:
        """Set the mark from the RSS now (unless it was configured)."""
        if self._fixed is None:
            slack = max(_SLACK_BYTES, self._memory_limit // 10)
            self.high_water = current_rss() + self._memory_limit + slack

    def imported(self, grown_bytes: int) -> None:
        """A load imported a framework that grew the process by ``grown_bytes`` for good."""
        if grown_bytes > 0:
            self.freeze_wanted = True
        if self._fixed is None:
            self.high_water += grown_bytes

    def freeze_if_safe(self, safe: Callable[[], bool]) -> None:
        """Move every object alive now out of the garbage collector's reach (``gc.freeze``)
        once a load has imported a framework, as soon as ``safe()``.

        A framework's modules live as long as the process, and the full collection behind
        unloads walked all of them (125,000 objects, 63 ms holding the GIL, with scikit-learn
        imported). Frozen objects are never collected, only freed by reference counting, so a
        frozen object in a reference cycle would stay for good: ``safe()`` says that nothing
        alive may be part of one (see ``ModelManager``).
        """
        if self.freeze_wanted and safe():
            gc.freeze()
            self.freeze_wanted = False

    def excess(self) -> tuple[int, int]:
        """The RSS now, and how far it is above the mark (negative when below)."""
        rss = current_rss()
        return rss, rss - self.high_water

    def freed(self) -> None:
        """A model's memory was freed (its heap pages are kept for the next load for now)."""
        self._freed_at = time.monotonic()

    def trim_due(self, excess: int) -> bool:
        """Whether to hand freed heap pages back to the OS now: the RSS is above the mark (a trim
        may spare an eviction), or models were freed and no unload happened for a second since."""
        if excess > 0:
            return True
        return self._freed_at is not None and time.monotonic() - self._freed_at >= _TRIM_QUIET_S

    def trimmed(self) -> None:
        self._freed_at = None

    def collect_due(self) -> bool:
        """Whether an unload should run a full garbage collection now.

        Most models are acyclic and freed by reference counting the moment they are dropped;
        a full collection walks every object of the process (tens of milliseconds once a few
        frameworks are imported), so it runs at most every few seconds, not per unload.
        """
        now = time.monotonic()
        if now - self._last_collect >= _FULL_COLLECT_INTERVAL_S:
            self._last_collect = now
            return True
        return False

"""Thrashing: an instance whose memory budget is below its working set, so that it keeps
unloading models it loads again soon after.

Checked every few seconds over the last minute, at no cost to a request: the share of
requests that waited on a load comes from the manager's hit and miss counters sampled at each
check; the reloads (a model loaded again within a minute of its unload) and the working set
(the bytes of the models asked for in the minute: those loaded in it, and those whose last
use falls in it) from the loads and unloads, which are few. An instance thrashes when at least
``MIN_RELOADS`` reloads happened and ``MIN_WAIT_SHARE`` of the requests waited on a load. It
then logs one warning a minute naming the cause, and says so in its metrics and its summary
(``/admin/instances``).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from modelfleet.config import format_size

logger = logging.getLogger(__name__)

WINDOW_S = 60.0  # what a check looks at
RELOAD_S = 60.0  # a load this soon after the model's unload is a reload
CHECK_S = 5.0
MIN_RELOADS = 3
MIN_WAIT_SHARE = 0.10
WARN_EVERY_S = 60.0


@dataclass(frozen=True, slots=True)
class Verdict:
    """One check's findings."""

    thrashing: bool
    wait_share: float  # requests that waited on a load, over the window's requests
    reloads: int  # in the window
    working_set_bytes: int  # the models asked for in the window
    budget_bytes: int
    requests: int

    def as_dict(self) -> dict[str, object]:
        return {
            "thrashing": self.thrashing,
            "load_wait_share": round(self.wait_share, 4),
            "reloads_last_minute": self.reloads,
            "working_set_bytes": self.working_set_bytes,
            "requests_last_minute": self.requests,
        }

    def reason(self) -> str:
        return (
            f"working set {format_size(self.working_set_bytes)}, memory budget "
            f"{format_size(self.budget_bytes)}: {self.wait_share:.0%} of requests wait on a "
            f"load ({self.reloads} models loaded again within {RELOAD_S:.0f} s of their unload"
            " in the last minute); raise --memory-limit, add instances, or pin fewer models"
        )


class Thrashing:
    """The thrashing check of one instance (see the module doc)."""

    def __init__(self, budget_bytes: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.budget_bytes = budget_bytes
        self._clock = clock
        self._unloaded: dict[str, float] = {}  # model -> when it was last unloaded
        self._loads: deque[tuple[float, str, int]] = deque()  # (when, model, bytes)
        self._reloads: deque[float] = deque()
        self._counts: deque[tuple[float, int, int]] = deque()  # (when, hits, misses)
        self._warned = -float("inf")
        self.reloads_total = 0
        self.last = Verdict(False, 0.0, 0, 0, budget_bytes, 0)

    def unloaded(self, model: str) -> None:
        self._unloaded[model] = self._clock()

    def loaded(self, model: str, size_bytes: int) -> None:
        now = self._clock()
        self._loads.append((now, model, size_bytes))
        gone = self._unloaded.pop(model, None)
        if gone is not None and now - gone <= RELOAD_S:
            self._reloads.append(now)
            self.reloads_total += 1

    def check(self, hits: int, misses: int, in_memory: Iterable[tuple[str, int, float]]) -> Verdict:
        """A check now, given the hit and miss counters so far and each loaded model's
        (name, bytes, last use on this clock); warns (at most once a minute) if thrashing."""
        now = self._clock()
        since = now - WINDOW_S
        self._counts.append((now, hits, misses))
        while len(self._counts) > 1 and self._counts[1][0] <= since:
            self._counts.popleft()
        while self._loads and self._loads[0][0] < since:
            self._loads.popleft()
        while self._reloads and self._reloads[0] < since:
            self._reloads.popleft()
        for model, at in list(self._unloaded.items()):
            if now - at > RELOAD_S:
                del self._unloaded[model]
        _, hits_then, misses_then = self._counts[0]
        waited = misses - misses_then
        requests = waited + hits - hits_then
        share = waited / requests if requests else 0.0
        working: dict[str, int] = {model: size for _, model, size in self._loads}
        for model, size, last_used in in_memory:
            if last_used >= since:
                working[model] = size
        verdict = Verdict(
            thrashing=len(self._reloads) >= MIN_RELOADS and share >= MIN_WAIT_SHARE,
            wait_share=share,
            reloads=len(self._reloads),
            working_set_bytes=sum(working.values()),
            budget_bytes=self.budget_bytes,
            requests=requests,
        )
        if verdict.thrashing and now - self._warned >= WARN_EVERY_S:
            self._warned = now
            logger.warning("thrashing: %s", verdict.reason())
        self.last = verdict
        return verdict

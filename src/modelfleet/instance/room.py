"""Memory room for loads: how a load gets its reservation, and who waits for room.

A load reserves its room before it starts (:meth:`Room.for_load`), so that the models hits want
stay. Loads in flight hold their reservations, and a model just loaded is pinned until its
callers' inference returns; a small budget holds few models, and on the end-to-end Zipf
benchmark (2 instances with room for about 10 models each) these filled most of it at times:
every entry but the hottest model was pinned, so the hottest model was the one evicted, 28 times
in 5,000 requests where a sequential replay of the same requests loaded it once. So loads in
flight may hold at most a quarter of the budget between them (one always may), and a load whose
policy-chosen victims are in use waits for them (both up to 0.2 s) rather than evicting what the
policy ranks above them. The 2-instance fleet's hit ratio went from 0.75 to 0.91-0.92 of one
instance's with the whole room on that benchmark's Zipf trace, from 0.90 to 0.99-1.00 on its
shifting one (docs/benchmarks.md).

Everything here runs on the instance's event loop; the wake-up is one ``asyncio.Event``,
replaced each time it is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from modelfleet.cache.memory import MemoryCache
from modelfleet.errors import OutOfMemoryError
from modelfleet.instance.state import Entry, Resident

LOADING_SHARE = 0.25  # of the memory budget that loads in flight may reserve between them
VICTIM_WAIT_S = 0.2  # longest a load waits for that share, or for its victims to be idle
SHORT_CALL_S = 0.02  # a victim in use is waited for only if its calls are this short


def soon_idle(entry: Entry) -> bool:
    """Whether a model in use is worth a load's wait: its calls average at most
    ``SHORT_CALL_S`` of CPU (a model whose calls were never measured, one just loaded, is)."""
    return entry.value.latency_ewma_s <= SHORT_CALL_S


class Room:
    """Reservations of memory room for loads, and the waits for room in the memory tier."""

    def __init__(
        self, memory: MemoryCache[Resident], *, timeout_s: float, spare_cached: bool
    ) -> None:
        self._memory = memory
        self._timeout_s = timeout_s  # how long an attempt waits for pins to go (invoke timeout)
        self._spare_cached = spare_cached  # False with the model cache disabled: none to spare
        self._changed = asyncio.Event()

    async def for_load(self, name: str, size_bytes: int) -> list[Entry]:
        """Reserve room for loading ``name``; return the models evicted for it.

        Two waits come first, each bounded by ``VICTIM_WAIT_S``, for the sake of the models
        that hits still want (see the module doc):

        * while the reservations of other loads would take more than ``LOADING_SHARE`` of
          the budget with this one, it waits for one of them to be admitted;
        * while the policy's next victims are in use (a model just loaded, its callers still
          in inference), it waits for them rather than evicting models the policy ranks above;
          not for a model whose calls are slow (:func:`soon_idle`): it would wait the whole
          bound at every miss while that model serves.

        Then it evicts as it can, waiting only for the room models in use hold. With the model
        cache disabled there are no such models to spare, and neither wait applies.
        """
        memory = self._memory
        deadline = time.monotonic() + (VICTIM_WAIT_S if self._spare_cached else 0.0)
        limit = LOADING_SHARE * memory.budget_bytes
        while (remaining := deadline - time.monotonic()) > 0:
            loading = memory.reserved_bytes
            if not loading or loading + size_bytes <= limit:
                try:
                    return memory.reserve(name, size_bytes, wait_for=soon_idle)
                except OutOfMemoryError:
                    pass  # a victim in use, or no room at all: wait for a pin or a load
            await self._wait(remaining)
        return await self.wait_for(lambda: memory.reserve(name, size_bytes))

    async def wait_for(self, attempt: Callable[[], list[Entry]]) -> list[Entry]:
        """Run ``attempt`` (a reservation or an admission), waiting while models in use hold
        the memory room.

        Calls in flight unpin their models within milliseconds, so a load that finds the
        budget held by pins waits for room (up to the invoke timeout) rather than failing.
        """
        deadline = time.monotonic() + self._timeout_s
        while True:
            try:
                return attempt()
            except OutOfMemoryError:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise
                await self._wait(remaining)

    def changed(self) -> None:
        """Wake the loads waiting for room: a pin or a reservation was dropped, or a load was
        admitted (its reservation is an entry now)."""
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def _wait(self, timeout_s: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout_s)

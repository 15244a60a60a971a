"""Pins: what keeps a model in use from being evicted, unloaded or deleted.

Every place that hands a loaded model to a call goes through :class:`Pins`, so the rule is kept
in one place. The invariant: an entry's ``pins`` is the number of calls that hold it (taken
before the call's first await, released exactly once when its inference has returned) plus the
pins a load took for callers still waiting to claim them (``Flight.prepins``). It never goes
below zero, and nothing with ``pins > 0`` leaves the memory tier except an explicit unload or a
revalidation, which both wait for ``pins == 0`` before unloading.

Releasing more often than taking raises :class:`PinError` (a bug, never a client's fault): a
pin released twice would let a model in use be evicted under its caller.
"""

from __future__ import annotations

from collections.abc import Callable

from modelfleet.instance.state import Entry, Flight


class PinError(RuntimeError):
    """A pin was released that was never taken (or released twice)."""


class Pins:
    """Takes and releases pins on memory entries; ``on_idle(entry)`` runs when an entry's last
    pin is released."""

    def __init__(self, on_idle: Callable[[Entry], None]) -> None:
        self._on_idle = on_idle

    @staticmethod
    def take(entry: Entry) -> Entry:
        """One pin of ``entry`` for the calling request; returns ``entry``."""
        entry.pins += 1
        return entry

    @staticmethod
    def take_for_waiters(entry: Entry, flight: Flight) -> None:
        """At admission: one pin for each caller waiting on ``flight``, each claimed (or
        released) by that caller through :meth:`Flight.claim`."""
        entry.pins += flight.waiters
        flight.prepins, flight.entry = flight.waiters, entry

    def release(self, entry: Entry) -> None:
        """Drop one pin of ``entry``; at the last one, ``on_idle(entry)``."""
        if entry.pins <= 0:
            raise PinError(f"model {entry.key!r} released more often than it was pinned")
        entry.pins -= 1
        if entry.pins == 0:
            self._on_idle(entry)

"""The memory tier: a byte-budgeted mapping of loaded models with pins and reservations.

All methods are called from one thread (the instance's event loop); the blocking work of
loading and unloading happens elsewhere, so this class needs no lock. A load goes through
:meth:`MemoryCache.reserve` (room is made before the load starts, so concurrent loads cannot
overrun the budget together), then :meth:`MemoryCache.admit` with the measured footprint.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from modelfleet.cache.policy import EvictionPolicy
from modelfleet.errors import ModelTooLargeError, OutOfMemoryError

V = TypeVar("V")


@dataclass(slots=True)
class MemoryEntry(Generic[V]):
    """One loaded model as the memory tier sees it."""

    key: str
    value: V
    size_bytes: int
    pins: int = 0
    hits: int = 0
    loaded_at: float = 0.0
    last_used: float = 0.0
    extra: dict[str, object] = field(default_factory=dict)


class VictimInUseError(OutOfMemoryError):
    """The room a reservation needs is the policy's first victims', and one of them is in use:
    waiting for it is better than evicting a model the policy values more."""


class MemoryCache(Generic[V]):
    """Loaded models under a byte budget; the policy chooses victims, pinned ones (in use) and
    kept ones (pinned by the operator: :meth:`keep`) are skipped."""

    def __init__(
        self,
        budget_bytes: int,
        policy: EvictionPolicy,
        *,
        clock: Callable[[], float],
    ) -> None:
        self.budget_bytes = budget_bytes
        self.policy = policy
        self._clock = clock
        self._entries: dict[str, MemoryEntry[V]] = {}
        self._reserved: dict[str, int] = {}
        self._used = 0
        self.kept: dict[str, int] = {}  # key -> bytes: never a victim until popped

    # -- reading -------------------------------------------------------------------------
    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._entries))

    @property
    def used_bytes(self) -> int:
        """Bytes held by admitted models plus reservations of loads in progress."""
        return self._used + sum(self._reserved.values())

    @property
    def reserved_bytes(self) -> int:
        """Bytes held by reservations (loads in progress, models waiting to be unloaded)."""
        return sum(self._reserved.values())

    def entry(self, key: str) -> MemoryEntry[V] | None:
        """The entry for ``key`` without counting a use."""
        return self._entries.get(key)

    def get(self, key: str) -> MemoryEntry[V] | None:
        """The entry for ``key``, counted as a use (policy and hit counter)."""
        entry = self._entries.get(key)
        if entry is not None:
            entry.hits += 1
            entry.last_used = self._clock()
            self.policy.on_access(key)
        return entry

    # -- pins ------------------------------------------------------------------------------
    def keep(self, key: str) -> None:
        """Never choose the entry ``key`` as a victim (until :meth:`pop`)."""
        self.kept[key] = self._entries[key].size_bytes

    def _check_fits(self, key: str, size_bytes: int, measured: str) -> None:
        """:class:`ModelTooLargeError` if ``size_bytes`` can never fit: over the budget, or
        over what the kept models leave of it."""
        if size_bytes > self.budget_bytes:
            raise ModelTooLargeError(
                f"Model '{key}' {measured} {size_bytes} bytes of memory but the instance's "
                f"whole memory budget is {self.budget_bytes} bytes."
            )
        kept = sum(self.kept.values())
        if kept and size_bytes > self.budget_bytes - kept:
            raise ModelTooLargeError(
                f"Model '{key}' {measured} {size_bytes} bytes of memory; pinned models hold "
                f"{kept} of the instance's {self.budget_bytes}-byte memory budget, leaving "
                f"{self.budget_bytes - kept}."
            )

    def pin(self, key: str) -> None:
        self._entries[key].pins += 1

    def unpin(self, key: str) -> None:
        entry = self._entries.get(key)
        if entry is not None and entry.pins > 0:
            entry.pins -= 1

    # -- admission and eviction -------------------------------------------------------------
    def reserve(
        self,
        key: str,
        size_bytes: int,
        *,
        wait_for: Callable[[MemoryEntry[V]], bool] | None = None,
    ) -> list[MemoryEntry[V]]:
        """Hold ``size_bytes`` for a load of ``key``; return the entries evicted to make room.

        The returned entries are already out of the cache: the caller unloads them. Raises
        :class:`ModelTooLargeError` when the model can never fit and :class:`OutOfMemoryError`
        when the room is held by pinned models or other loads. Pinned entries among the
        policy's victims are passed over, except those ``wait_for`` accepts: one of those among
        the victims needed raises :class:`VictimInUseError`, nothing evicted.
        """
        self._check_fits(key, size_bytes, "needs")
        victims = self._make_room(size_bytes, wait_for=wait_for)
        self._reserved[key] = self._reserved.get(key, 0) + size_bytes
        return victims

    def release(self, key: str) -> None:
        """Drop the reservation of a load that failed."""
        self._reserved.pop(key, None)

    def admit(self, key: str, value: V, size_bytes: int, *, cost_s: float) -> list[MemoryEntry[V]]:
        """Turn the reservation of ``key`` into an entry of its measured size.

        Returns the entries evicted because the measured size exceeded the reservation (already
        out of the cache: the caller unloads them). Raises, admitting nothing, when the measured
        size can never fit (:class:`ModelTooLargeError`, reservation dropped) or the room is
        held by pinned models (:class:`OutOfMemoryError`, reservation kept so the caller can
        wait for room and retry, or :meth:`release` it).
        """
        if key in self._entries:
            raise ValueError(f"{key!r} is already in the memory cache")
        try:
            self._check_fits(key, size_bytes, "measured")
        except ModelTooLargeError:
            self._reserved.pop(key, None)
            raise
        reserved = self._reserved.pop(key, 0)
        try:
            victims = self._make_room(size_bytes)
        except OutOfMemoryError:
            if reserved:
                self._reserved[key] = reserved  # still held: the caller may wait and retry
            raise
        now = self._clock()
        entry = MemoryEntry(key=key, value=value, size_bytes=size_bytes, loaded_at=now)
        entry.last_used = now
        self._entries[key] = entry
        self._used += size_bytes
        self.policy.on_insert(key, size_bytes, cost_s)
        return victims

    def pop(self, key: str) -> MemoryEntry[V] | None:
        """Remove ``key`` (for an explicit unload); the caller unloads the returned entry."""
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._used -= entry.size_bytes
            self.kept.pop(key, None)
            self.policy.on_remove(key)
        return entry

    def evict_one(
        self, accept: Callable[[MemoryEntry[V]], bool] | None = None
    ) -> MemoryEntry[V] | None:
        """Evict the policy's first unpinned victim that ``accept`` allows (default: any)."""
        for key in self.policy.victims():
            entry = self._entries.get(key)
            if entry is None or entry.pins or key in self.kept:
                continue
            if accept is None or accept(entry):
                return self.pop(key)
        return None

    def _make_room(
        self, size_bytes: int, *, wait_for: Callable[[MemoryEntry[V]], bool] | None = None
    ) -> list[MemoryEntry[V]]:
        need = self.used_bytes + size_bytes - self.budget_bytes
        if need <= 0:
            return []
        chosen: list[str] = []
        freed = 0
        for key in self.policy.victims():
            entry = self._entries.get(key)
            if key in self.kept:
                continue
            if entry is not None and entry.pins > 0 and wait_for is not None and wait_for(entry):
                raise VictimInUseError(f"Model '{key}', next to be evicted, is in use.")
            if entry is None or entry.pins > 0:
                continue
            chosen.append(key)
            freed += entry.size_bytes
            if freed >= need:
                break
        if freed < need:
            raise OutOfMemoryError(
                f"Cannot make {size_bytes} bytes of room: "
                f"{self.used_bytes - freed} of {self.budget_bytes} bytes are held by models "
                "in use, loading or pinned."
            )
        victims = []
        for key in chosen:
            victim = self.pop(key)
            if victim is not None:
                victims.append(victim)
        return victims

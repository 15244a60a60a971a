"""What every backend shares: the states an instance goes through, the router's view of an
instance, and the protocol the endpoint and the autoscaler talk to.

::

    STARTING --(answers /ping)--> UP          STARTING <--(room)--> PENDING
    UP --(fails a forward or its health check)--> DOWN --(restarted, answers /ping)--> UP
    UP --(scale-in, rolling update)--> DRAINING --(calls done)--> removed

Only an instance that is UP takes new requests. An instance is PENDING while its backend waits
for room to start it (on Ray: no node has the CPUs and memory free; never with ``local``).
The values are the strings ``/admin/instances`` and ``modelfleet status`` show.

Backends: ``inprocess`` (:mod:`.inprocess`, one instance inside the router's process) and the
supervised ones (:class:`~modelfleet.backends.supervisor.Supervisor` with a launcher: ``local``
subprocesses, ``ray`` actors).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import Any, Protocol

from modelfleet.config import Settings
from modelfleet.instance.state import InvokeResult

__all__ = ["Backend", "Instance", "InstanceState"]


class InstanceState(StrEnum):
    """Where an instance is in its life (see the module's diagram)."""

    PENDING = "pending"
    STARTING = "starting"
    UP = "up"
    DOWN = "down"
    DRAINING = "draining"


class Instance(Protocol):
    """The router's (and the autoscaler's) view of one instance, in-process or remote."""

    instance_id: str
    in_flight: int

    @property
    def state(self) -> InstanceState: ...

    def available(self) -> bool:
        """Whether it takes new requests now (UP)."""
        ...

    async def ping(self) -> bool:
        """Whether the instance answers now (asked before a request's last allowed try)."""
        ...

    async def invoke(
        self,
        target_model: str,
        body: bytes,
        *,
        content_type: str | None,
        accept: str | None,
        custom_attributes: str | None,
    ) -> InvokeResult: ...

    async def unload(self, target_model: str) -> bool:
        """UnloadModel; True if the model was loaded there."""
        ...

    async def prewarm(self, target_models: list[str]) -> int:
        """Fetch and load ``target_models``; how many it loaded."""
        ...

    async def loaded_models(self) -> list[str]:
        """The target models loaded there now (empty if it cannot say)."""
        ...


class Backend(Protocol):
    """What starts, supervises, resizes and stops one variant's instances.

    ``instances`` is a live list: the router routes over it, so instances added or removed
    show at once. ``elastic`` says whether instances can be added and removed (the in-process
    backend's one instance cannot); only an elastic backend gets an autoscaler, copy retirement
    and config reloads.
    """

    settings: Settings
    variant: str
    elastic: bool
    scaling: asyncio.Lock  # one scaling action at a time (autoscaler, reload)
    on_removed: list[Callable[[str], None]]  # told the id of each instance removed

    @property
    def instances(self) -> Sequence[Instance]: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def add_instance(self) -> Instance:
        """Start one more instance; return it once it is up (or at the backend's timeout)."""
        ...

    async def remove_instance(self, instance: Instance, *, drain_s: float = 60.0) -> None:
        """Drain ``instance`` (no new requests; those in flight finish) and stop it."""
        ...

    async def resize(self, count: int) -> None:
        """Add or remove (newest first, drained) instances until there are ``count``."""
        ...

    async def replace(self, settings: Settings) -> None:
        """Rolling update of every instance to ``settings``."""
        ...

    async def describe(self) -> list[dict[str, Any]]:
        """Per instance: id, url, pid, state, in-flight, restarts and its own summary."""
        ...

    async def metrics_texts(self) -> list[str]:
        """The ``/metrics`` text of each instance with metrics of its own (none in-process)."""
        ...

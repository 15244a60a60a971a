"""What every backend shares: the states an instance goes through.

::

    STARTING --(answers /ping)--> UP --(fails a forward or its health check)--> DOWN
    UP --(scale-in, rolling update)--> DRAINING --(calls done)--> removed
    DOWN --(restarted, answers /ping)--> UP

Only an instance that is UP takes new requests. The values are the strings ``/admin/instances``
and ``modelfleet status`` show.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["InstanceState"]


class InstanceState(StrEnum):
    """Where an instance is in its life (see the module's diagram)."""

    STARTING = "starting"
    UP = "up"
    DOWN = "down"
    DRAINING = "draining"

"""A real multi-node Ray cluster on this machine for the tests (``ray.cluster_utils.Cluster``).

A head node with no CPUs (nothing is placed on it) and worker nodes of one CPU each, every node
bound to 127.0.0.1, without the dashboard and with the object store at its minimum. Ray is only
started inside a network namespace that has nothing but loopback (``scripts/test`` runs the
suite in one, ``unshare --net``), with usage statistics off: Ray otherwise probes the cloud
metadata address and other hosts. Nothing here runs ``ray stop``: the cluster started here is
stopped by :meth:`Cluster.shutdown`, which ends the processes it started by PID.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

OBJECT_STORE_BYTES = 78_643_200  # Ray's minimum


def loopback_only() -> bool:
    """Whether this process's network namespace has no interface but loopback (asked of the
    kernel: /sys/class/net shows the namespace /sys was mounted in)."""
    return [name for _, name in socket.if_nameindex()] == ["lo"]


class RayCluster:
    """The test cluster: its address, and worker nodes to add and remove."""

    def __init__(self, workers: int) -> None:
        os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # also for every process Ray starts
        from ray.cluster_utils import Cluster

        self._cluster = Cluster(
            initialize_head=True,
            head_node_args={
                "num_cpus": 0,
                "include_dashboard": False,
                "object_store_memory": OBJECT_STORE_BYTES,
                "node_ip_address": "127.0.0.1",
            },
        )
        self.workers: list[Any] = []
        for _ in range(workers):
            self.add_worker()
        self._cluster.wait_for_nodes()
        self.address: str = self._cluster.address

    def add_worker(self) -> Any:
        node = self._cluster.add_node(
            num_cpus=1, object_store_memory=OBJECT_STORE_BYTES, node_ip_address="127.0.0.1"
        )
        self.workers.append(node)
        return node

    def remove_worker(self, node: Any) -> None:
        """Remove ``node`` without grace (its raylet and workers are killed)."""
        self.workers.remove(node)
        self._cluster.remove_node(node, allow_graceful=False)

    def node_id(self, node: Any) -> str:
        return str(node.node_id)

    def head_node_id(self) -> str:
        return str(self._cluster.head_node.node_id)

    def shutdown(self) -> None:
        self._cluster.shutdown()


def serve_args(cluster: RayCluster, namespace: str) -> list[str]:
    """``modelfleet serve`` flags for a fleet on ``cluster`` in its own namespace."""
    return ["--backend", "ray", "--ray-address", cluster.address, "--ray-namespace", namespace]


def log_of(path: Path) -> str:
    return path.read_text() if path.exists() else ""

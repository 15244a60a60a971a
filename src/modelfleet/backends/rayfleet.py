"""The router's side of the ``ray`` backend: :class:`RayFleet` links a router process to the
fleet's controller (:mod:`modelfleet.backends.ray`), creating it (``modelfleet serve``) or
joining it (``modelfleet router``), and keeps every variant's live instance list in step with
the controller's versioned snapshots by long poll; :class:`RayBackend` is one variant as the
endpoint sees it (a :class:`~modelfleet.backends.base.Backend`). Requests never touch the
controller: routers keep serving on their last snapshot while it is away, and independent
routers agree on placement by rendezvous hashing over the same membership.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from modelfleet.backends.base import Instance, InstanceState
from modelfleet.backends.ray import CONTROLLER_NAME, INSTANCE_PREFIX, POLL_S, Controller
from modelfleet.backends.remote import RemoteInstance, fetch_metrics, new_session
from modelfleet.backends.supervisor import READY_TIMEOUT_S
from modelfleet.config import Settings
from modelfleet.endpoint.variants import EndpointConfig
from modelfleet.errors import ServiceUnavailableError

__all__ = ["RayBackend", "RayFleet", "controller_pid"]

logger = logging.getLogger(__name__)

_SHUTDOWN_S = 60.0  # the controller's stop of the fleet: instances get 10 s each, side by side
_ASK_CONTROLLER_S = 30.0  # an admin view waits no longer for the controller


def _head_node() -> Any:
    """The controller's placement: the head node if there is one to be found (it lives as long
    as the cluster, and the controller reserves nothing, so it always fits; a worker node lost
    would take the controller with it), else Ray's choice. Not a soft affinity: Ray placed a
    soft one on a worker node now and then."""
    for node in ray.nodes():
        if node.get("Alive") and "node:__internal_head__" in node.get("Resources", {}):
            return NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
    return "DEFAULT"


class RayFleet:
    """A router process's link to the fleet's controller: creates it (``own``: the ``serve``
    process) or joins it (``modelfleet router``), and keeps every variant's instance list in
    step with its snapshots."""

    def __init__(
        self, namespace: str, endpoints: list[EndpointConfig] | None, *, own: bool
    ) -> None:
        self.namespace = namespace
        self.own = own
        self._endpoints = endpoints
        self.controller: Any = None
        self.version = -1
        self.backends: dict[tuple[str, str], RayBackend] = {}
        self._poll: asyncio.Task[None] | None = None
        self._watch: asyncio.Task[None] | None = None
        self._retell: asyncio.Task[None] | None = None
        self._started = False
        self._first = asyncio.Event()
        self.session: aiohttp.ClientSession | None = None
        self.members: dict[str, Any] = {}  # the last snapshot's instances
        self._controller_pid: int | None = None
        # the deployments added after start (the control plane's endpoints), by their name in
        # the fleet; a restarted controller is told them again
        self.added: dict[str, EndpointConfig] = {}
        self._removing: set[asyncio.Task[None]] = set()

    def backend(self, settings: Settings, endpoint: str, variant: str) -> RayBackend:
        backend = RayBackend(self, settings, endpoint, variant)
        self.backends[(endpoint, variant)] = backend
        if endpoint in self.members:  # made after the snapshot that has it
            backend.sync(self.members[endpoint].get(variant, []))
        return backend

    async def add_endpoint(self, config: EndpointConfig) -> None:
        """Have the controller start ``config`` as a deployment of the fleet (its variants'
        backends are made first, with :meth:`backend`, under the same name)."""
        self.added[config.name] = config
        try:
            await self.controller.add_endpoint.remote(config)
        except BaseException:
            self.added.pop(config.name, None)
            raise

    def remove_endpoint(self, name: str) -> asyncio.Task[None]:
        """Have the controller stop the deployment ``name`` (the fleet's stop waits for it)."""
        self.added.pop(name, None)

        async def remove() -> None:
            try:
                await asyncio.wait_for(self.controller.remove_endpoint.remote(name), _SHUTDOWN_S)
            except Exception as exc:  # a restarted controller stops them once unclaimed
                logger.warning("the controller did not stop deployment %s (%r)", name, exc)

        task = asyncio.create_task(remove())
        self._removing.add(task)
        task.add_done_callback(self._removing.discard)
        return task

    async def _tell_again(self) -> None:
        """Tell a restarted controller the deployments added since the fleet started."""
        for config in list(self.added.values()):
            try:
                await self.controller.add_endpoint.remote(config)
            except Exception as exc:
                logger.warning(
                    "the controller did not take deployment %s again (%r)", config.name, exc
                )

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        if not ray.is_initialized():
            raise ServiceUnavailableError(
                "Ray is not initialized in this process: call ray.init(address=...) first"
                " (modelfleet serve --backend ray does)"
            )
        settings = next(iter(self.backends.values())).settings
        self.session = new_session(settings)
        for backend in self.backends.values():
            for instance in backend.instances:
                instance.session = self.session
        if self.own:
            self.controller = Controller.options(
                name=CONTROLLER_NAME,
                namespace=self.namespace,
                lifetime="detached",
                get_if_exists=True,
                scheduling_strategy=_head_node(),
            ).remote(self._endpoints, self.namespace)
        else:
            self.controller = ray.get_actor(CONTROLLER_NAME, namespace=self.namespace)
        self._poll = asyncio.create_task(self._follow(), name="modelfleet-ray-membership")
        self._watch = asyncio.create_task(self._revive(), name="modelfleet-ray-revive")
        try:
            await asyncio.wait_for(self._first.wait(), READY_TIMEOUT_S)
        except TimeoutError:
            raise ServiceUnavailableError(
                f"the fleet's controller in Ray namespace {self.namespace!r} gave no membership"
                f" in {READY_TIMEOUT_S:.0f} s (see its log in Ray's log folder)"
            ) from None

    async def stop(self) -> None:
        await asyncio.gather(*self._removing, return_exceptions=True)
        tasks = [t for t in (self._poll, self._watch, self._retell) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.own and self.controller is not None:
            try:
                await asyncio.wait_for(self.controller.shutdown.remote(), _SHUTDOWN_S)
            except Exception as exc:  # its instances are stopped by name instead
                logger.warning("the controller did not stop the fleet (%r); killing it", exc)
                self._kill_instances()
            with contextlib.suppress(Exception):
                ray.kill(self.controller, no_restart=True)
        if self.session is not None:
            await self.session.close()

    def _kill_instances(self) -> None:
        """Kill every instance actor of the namespace by name (the controller could not)."""
        for actor in ray.util.list_named_actors(all_namespaces=True):
            if not isinstance(actor, dict) or actor.get("namespace") != self.namespace:
                continue
            if str(actor.get("name", "")).startswith(f"{INSTANCE_PREFIX}:"):
                with contextlib.suppress(Exception):
                    ray.kill(ray.get_actor(actor["name"], namespace=self.namespace))

    async def _follow(self) -> None:
        """Long-poll the controller; a controller that is away (restarting) is waited for,
        the last snapshot serving meanwhile."""
        backoff = 0.1
        while True:
            try:
                snapshot = await self.controller.membership.remote(self.version, POLL_S)
            except Exception as exc:
                logger.warning("controller unreachable (%s); serving on the last snapshot", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            backoff = 0.1
            if snapshot["version"] != self.version:
                self.version = snapshot["version"]
                self.members = members = snapshot["instances"] or {}
                for (endpoint, variant), backend in list(self.backends.items()):
                    # an endpoint missing from a snapshot is one being added, or one that a
                    # restarted controller is not told again yet: it keeps serving as it was
                    if endpoint in members:
                        backend.sync(members[endpoint].get(variant, []))
            pid = snapshot.get("pid")
            if self._controller_pid not in (None, pid) and self.own and self.added:
                self._retell = asyncio.create_task(self._tell_again())
            self._controller_pid = pid
            self._first.set()

    async def _revive(self) -> None:
        """Instances this router marked down (a failed forward) while the controller still
        says up are pinged and taken back once they answer."""
        while True:
            await asyncio.sleep(1.0)
            for backend in list(self.backends.values()):
                for instance in list(backend.instances):
                    if not self._revivable(backend, instance):
                        continue
                    url = instance.url
                    # a snapshot may have changed it meanwhile (draining, a new process)
                    if (
                        await instance.answers_ping()
                        and self._revivable(backend, instance)
                        and instance.url == url
                    ):
                        instance.state = InstanceState.UP

    @staticmethod
    def _revivable(backend: RayBackend, instance: RemoteInstance) -> bool:
        said = backend.said.get(instance.instance_id)
        return (
            instance in backend.instances
            and instance.state == InstanceState.DOWN
            and said == InstanceState.UP
        )


class RayBackend:
    """One variant's instances on Ray, as a router sees them (a
    :class:`~modelfleet.backends.base.Backend`); changes go to the controller."""

    def __init__(self, fleet: RayFleet, settings: Settings, endpoint: str, variant: str) -> None:
        self.fleet = fleet
        self.settings = settings
        self.endpoint = endpoint
        self.variant = variant
        self.elastic = fleet.own  # a joined router serves; the serve process steers
        self.scaling = asyncio.Lock()
        self.on_removed: list[Callable[[str], None]] = []
        self._instances: list[RemoteInstance] = []
        self.said: dict[str, InstanceState] = {}  # each instance's state in the last snapshot

    @property
    def instances(self) -> list[RemoteInstance]:
        return self._instances

    def sync(self, members: list[dict[str, Any]]) -> None:
        """Bring the live instance list in step with a snapshot."""
        by_id = {i.instance_id: i for i in self._instances}
        seen = set()
        for member in members:
            instance_id = member["id"]
            seen.add(instance_id)
            instance = by_id.get(instance_id)
            if instance is None:
                instance = RemoteInstance(instance_id, member["url"])
                instance.session = self.fleet.session
                self._instances.append(instance)
            state = InstanceState(member["state"])
            # No process_started(): nothing here learns how a process ended, so a request an
            # instance dropped is retried at once (RequestDroppedError), never held back.
            instance.url, instance.pid = member["url"], member["pid"]
            instance.node = member["node"]
            instance.state = state
            self.said[instance_id] = state
        for instance in [i for i in self._instances if i.instance_id not in seen]:
            self._instances.remove(instance)
            self.said.pop(instance.instance_id, None)
            for listener in self.on_removed:
                listener(instance.instance_id)

    async def start(self) -> None:
        await self.fleet.start()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            waiting = (InstanceState.UP, InstanceState.PENDING)
            if self._instances and all(i.state in waiting for i in self._instances):
                return  # those waiting for room start when it comes: serve without them
            await asyncio.sleep(0.05)
        logger.warning("%s/%s: not every instance is up yet", self.endpoint, self.variant)

    async def stop(self) -> None:
        """The last variant of the fleet to stop stops the fleet (its controller and its
        instances, when this process owns them); the last of a deployment added after start
        has its instances stopped."""
        fleet = self.fleet
        fleet.backends.pop((self.endpoint, self.variant), None)
        if not fleet.backends:
            await fleet.stop()
        elif self.endpoint in fleet.added and not any(
            endpoint == self.endpoint for endpoint, _ in fleet.backends
        ):
            await fleet.remove_endpoint(self.endpoint)

    async def _appears(self, instance_id: str) -> RemoteInstance:
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline:
            for instance in self._instances:
                if instance.instance_id == instance_id:
                    return instance
            await asyncio.sleep(0.02)
        raise ServiceUnavailableError(f"instance {instance_id} did not appear in the membership")

    async def add_instance(self) -> Instance:
        instance_id = await self.fleet.controller.add_instance.remote(self.endpoint, self.variant)
        return await self._appears(instance_id)

    async def remove_instance(self, instance: Instance, *, drain_s: float = 60.0) -> None:
        await self.fleet.controller.remove_instance.remote(
            self.endpoint, self.variant, instance.instance_id, drain_s
        )

    async def resize(self, count: int) -> None:
        async with self.scaling:
            await self.fleet.controller.resize.remote(self.endpoint, self.variant, count)

    async def replace(self, settings: Settings) -> None:
        async with self.scaling:
            await self.fleet.controller.replace.remote(self.endpoint, self.variant, settings)
            self.settings = settings

    async def describe(self) -> list[dict[str, Any]]:
        try:
            described: list[dict[str, Any]] = await asyncio.wait_for(
                self.fleet.controller.describe.remote(self.endpoint, self.variant),
                _ASK_CONTROLLER_S,
            )
        except Exception:  # the controller is away: what the last snapshot said
            described = [
                {
                    "id": i.instance_id,
                    "url": i.url or None,
                    "pid": i.pid,
                    "node": i.node,
                    "state": self.said.get(i.instance_id, i.state),
                    "restarts": None,
                }
                for i in self._instances
            ]
        mine = {i.instance_id: i for i in self._instances}
        for item in described:
            if item["id"] in mine:
                item["in_flight"] = mine[item["id"]].in_flight  # requests from this router
        return described

    async def metrics_texts(self) -> list[str]:
        if self.fleet.session is None:
            return []
        return await fetch_metrics(self.fleet.session, self._instances)


def controller_pid(namespace: str) -> int:
    """The controller's PID (tests: kill it and see the fleet survive)."""
    controller = ray.get_actor(CONTROLLER_NAME, namespace=namespace)
    snapshot: dict[str, Any] = ray.get(controller.membership.remote(-1, 0.0))
    return int(snapshot["pid"])

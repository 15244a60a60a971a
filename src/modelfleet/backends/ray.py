"""The ``ray`` backend: instances as Ray actors across a Ray cluster, one controller, a router
on every node that asks for one.

Three parts (DESIGN section 11):

- :class:`InstanceActor`: one instance. It runs the instance HTTP server of
  :mod:`modelfleet.instance.server` on a thread of its own process, bound to its node's address,
  and reports ``(node, address, pid)``; routers forward to it over the same pooled HTTP path as
  to a ``local`` instance. Its methods are control calls only (start, describe, requests in
  progress, stop), in their own concurrency group, so they never queue behind loads. It is a
  detached, named actor (``instance:<endpoint>:<variant>:<slot>:<generation>``) that outlives
  the controller. It takes the first free cache folder ``<cache_dir>/slot-<k>`` of its node, so
  an instance replaced on the same node finds that node's disk cache again.
- :class:`Controller`: a named, detached actor (``controller`` in the fleet's namespace) that
  owns the desired fleet. It runs the same :class:`~modelfleet.backends.supervisor.Supervisor`
  as the ``local`` backend, per variant, over a :class:`RayLauncher`, and publishes the
  membership as a versioned snapshot that routers long-poll. Restarted (Ray restarts it), it
  finds its instance actors again by name and supervises them without restarting them.
- :mod:`modelfleet.backends.rayfleet`: the router's side (``RayFleet``, ``RayBackend``). One
  long-poll loop keeps every variant's live instance list in step with the snapshots; requests
  never touch the controller, so routers keep serving on their last snapshot while it is away,
  and independent routers agree on placement by rendezvous hashing over the same membership.

Failover is the router's, on the HTTP error, at once; Ray's detection of a dead node (tens of
seconds) only drives replacement, which the controller's health checks start sooner (an
instance silent for ``hang_timeout`` is killed and started again elsewhere, avoiding its node).
Ray is imported only here: the default install does not need it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from modelfleet.backends.local import instance_settings
from modelfleet.backends.remote import new_session
from modelfleet.backends.supervisor import READY_TIMEOUT_S, InstanceSpec, Supervisor
from modelfleet.cache.lock import FolderLock
from modelfleet.config import Settings
from modelfleet.endpoint.variants import EndpointConfig
from modelfleet.errors import CacheInUseError, ServiceUnavailableError

__all__ = ["CONTROLLER_NAME", "Controller", "InstanceActor", "RayLauncher"]

logger = logging.getLogger(__name__)

CONTROLLER_NAME = "controller"
INSTANCE_PREFIX = "instance"
_PUBLISH_INTERVAL_S = 0.05  # how often the controller looks for a changed membership
POLL_S = 10.0  # a router's long poll returns at least this often
_PENDING_AFTER_S = 3.0  # an actor not started after this may be waiting for room
_SUSPECT_S = 120.0  # a node whose instance went silent is avoided this long for replacements
_DRAIN_SETTLE_S = 0.5  # routers learn DRAINING within this; requests sent before it may arrive
_UNCLAIMED_S = 120.0  # a restarted controller keeps instances of endpoints it lost this long
_CONTROL = {"control": 16, "watch": 4}


def _actor_name(spec: InstanceSpec, generation: int) -> str:
    return f"{INSTANCE_PREFIX}:{spec.deployment}:{spec.variant}:{spec.index}:{generation}"


class _Active:
    """ASGI wrapper counting the requests in progress (a drain waits for none)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.count = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        counted = path == "/invocations" or path.startswith("/models")
        self.count += counted
        try:
            await self.app(scope, receive, send)
        finally:
            self.count -= counted


class _InstanceActor:
    """One instance in a Ray actor's process (see the module doc)."""

    def __init__(self, spec: InstanceSpec) -> None:
        self.spec = spec
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._active: _Active | None = None
        self._claim: FolderLock | None = None
        self._where: dict[str, Any] = {}

    @ray.method(concurrency_group="control")
    async def start(self) -> dict[str, Any]:
        """Start the HTTP server; return ``{"url", "pid", "node", "slot"}``."""
        if self._where:
            return self._where
        return await asyncio.to_thread(self._start)

    def _start(self) -> dict[str, Any]:
        import uvicorn

        from modelfleet.instance.bootstrap import tune_process
        from modelfleet.instance.server import create_instance_app
        from modelfleet.listener import ClientLimits, listener_config

        root = Path(self.spec.settings.cache_dir)
        slot = 0
        while True:  # the first cache folder of this node no other live instance holds
            claim = FolderLock(root / f"slot-{slot}")
            try:
                claim.acquire()
            except CacheInUseError:
                slot += 1
                continue
            self._claim = claim
            break
        settings = instance_settings(self.spec.settings, root / f"slot-{slot}" / "cache")
        app = create_instance_app(
            settings, instance_id=self.spec.instance_id, variant=self.spec.variant
        )
        self._active = _Active(app)
        # The process is the instance's own, as a subprocess would be: tuned by the entry
        # point, after the app is built and before it serves (as `modelfleet instance` does).
        tune_process()
        limits = ClientLimits.from_settings(settings).with_keep_alive(75.0)
        config = listener_config(self._active, limits)
        ip = ray.util.get_node_ip_address()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((ip, 0))
        sock.listen(1024)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="modelfleet-instance"
        )
        self._thread.start()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"instance {self.spec.instance_id} did not start")
            time.sleep(0.01)
        self._where = {
            "url": f"http://{ip}:{sock.getsockname()[1]}",
            "pid": os.getpid(),
            "node": ray.get_runtime_context().get_node_id(),
            "slot": slot,
        }
        return self._where

    @ray.method(concurrency_group="control")
    def describe(self) -> dict[str, Any]:
        """Where it serves (empty before :meth:`start`)."""
        return self._where

    @ray.method(concurrency_group="control")
    def active(self) -> int:
        """Requests in progress now."""
        return self._active.count if self._active is not None else 0

    @ray.method(concurrency_group="watch")
    async def wait_stopped(self) -> None:
        """Return once the HTTP server has ended (never while it serves)."""
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)

    @ray.method(concurrency_group="control")
    async def stop(self, grace_s: float) -> None:
        """Stop serving: requests in progress get ``grace_s`` to finish."""
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        await asyncio.to_thread(self._thread.join, grace_s)
        if self._thread.is_alive():
            self._server.force_exit = True
            await asyncio.to_thread(self._thread.join, grace_s)


InstanceActor = ray.remote(concurrency_groups=_CONTROL, max_restarts=0)(_InstanceActor)


class _Actor:
    """One instance actor as its launcher sees it (a :class:`~.supervisor.Launched`)."""

    def __init__(
        self, launcher: RayLauncher, name: str, handle: Any, where: dict[str, Any]
    ) -> None:
        self.launcher = launcher
        self.name = name
        self.handle = handle
        self.url: str = where["url"]
        self.pid: int | None = where["pid"]
        self.node: str | None = where["node"]
        self._killed = asyncio.Event()
        self._drain_began: float | None = None
        launcher.placed(name, self.node)

    async def ended(self) -> str | None:
        watch = asyncio.ensure_future(self.handle.wait_stopped.remote())
        killed = asyncio.ensure_future(self._killed.wait())
        try:
            await asyncio.wait((watch, killed), return_when=asyncio.FIRST_COMPLETED)
        finally:  # cancelled: the supervisor stops it (terminate: gracefully) or moved on
            killed.cancel()
            if not watch.done():
                watch.cancel()
        if not self._killed.is_set():
            self._kill()  # its server ended, or the actor died: nothing of it may linger
        return None  # Ray does not say whether the instance's own code ended it

    async def terminate(self, grace_s: float) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.handle.stop.remote(grace_s), grace_s * 2 + 5.0)
        self._kill()

    def kill(self) -> None:
        """It stopped answering while its process may live: its node may be gone, so its
        replacement goes elsewhere (Ray takes tens of seconds to declare a node dead)."""
        if self.node is not None:
            self.launcher.suspect(self.node)
        self._kill()

    def _kill(self) -> None:
        with contextlib.suppress(Exception):
            ray.kill(self.handle, no_restart=True)
        self.launcher.placed(self.name, None)
        self._killed.set()

    async def busy(self) -> bool:
        now = time.monotonic()
        if self._drain_began is None:
            self._drain_began = now
        if now - self._drain_began < _DRAIN_SETTLE_S:
            return True  # routers may not have seen DRAINING yet
        try:
            return int(await asyncio.wait_for(self.handle.active.remote(), 5.0)) > 0
        except TimeoutError:
            return True  # alive but slow to say: assume requests still run
        except Exception:
            return False  # gone: nothing in progress there


class RayLauncher:
    """Starts instances as detached Ray actors (a :class:`~.supervisor.Launcher`)."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self._generation: dict[tuple[str, str, int], int] = {}
        self._suspects: dict[str, float] = {}
        self._nodes: dict[str, str] = {}  # actor name -> node, for the per-node cap
        self._pending: dict[str, dict[str, float]] = {}  # actors waiting for room: bundles

    @property
    def pending(self) -> int:
        """Instances waiting for room in the cluster."""
        return len(self._pending)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def spec(self, settings: Settings, index: int, instance_id: str, variant: str) -> InstanceSpec:
        return InstanceSpec(instance_id, index, variant, settings)

    def address(self, spec: InstanceSpec) -> str:
        return ""  # known once the actor has started on its node

    def suspect(self, node: str) -> None:
        self._suspects[node] = time.monotonic()

    def note_generation(self, spec: InstanceSpec, generation: int) -> None:
        key = (spec.deployment, spec.variant, spec.index)
        self._generation[key] = max(self._generation.get(key, 0), generation + 1)

    def placed(self, name: str, node: str | None) -> None:
        """The actor ``name`` runs on ``node`` (None: it ended)."""
        if node is None:
            self._nodes.pop(name, None)
        else:
            self._nodes[name] = node

    def _strategy(self, spec: InstanceSpec) -> Any:
        """SPREAD; a node of our choice when a node is suspect or nodes have a cap."""
        placed: dict[str, int] = {}
        for node in self._nodes.values():
            placed[node] = placed.get(node, 0) + 1
        now = time.monotonic()
        suspects = {n for n, t in self._suspects.items() if now - t < _SUSPECT_S}
        cap = spec.settings.ray_max_instances_per_node
        if not suspects and cap is None:
            return "SPREAD"
        cpus = spec.settings.ray_cpus_per_instance
        nodes = [
            n
            for n in ray.nodes()
            if n.get("Alive")
            and n["NodeID"] not in suspects
            and n.get("Resources", {}).get("CPU", 0.0) >= cpus
            and (cap is None or placed.get(n["NodeID"], 0) < cap)
        ]
        if not nodes:
            return "SPREAD" if cap is None else None
        best = min(nodes, key=lambda n: placed.get(n["NodeID"], 0))
        return NodeAffinitySchedulingStrategy(best["NodeID"], soft=False)

    @staticmethod
    def _unplaced(handle: Any) -> bool:
        """Whether the actor still waits for a node with room (the GCS's view of it: no worker
        process leased for it yet)."""
        try:  # an internal API; when it fails, the actor is taken as placed
            state = ray._private.state.actors(actor_id=handle._actor_id.hex())
        except Exception:
            return False
        waiting = str(state.get("State", "")) in ("PENDING_CREATION", "DEPENDENCIES_UNREADY")
        return waiting and not state.get("Pid")

    def _wait_for_room(self, name: str, spec: InstanceSpec, memory: int) -> None:
        """``name`` cannot be placed now: count it pending and ask the autoscaler for room."""
        if name not in self._pending:
            logger.warning(
                "instance %s waits for room in the Ray cluster (%.1f CPU, %d bytes)",
                spec.instance_id,
                spec.settings.ray_cpus_per_instance,
                memory,
            )
        self._pending[name] = {"CPU": spec.settings.ray_cpus_per_instance, "memory": memory}
        self._request_room()

    def _request_room(self) -> None:
        from ray.autoscaler.sdk import request_resources

        try:  # replaces the previous request: every instance waiting now
            request_resources(bundles=list(self._pending.values()))
        except Exception:  # no autoscaler to ask: the instances stay pending
            logger.debug("request_resources failed", exc_info=True)

    async def launch(self, spec: InstanceSpec, pending: Callable[[], None]) -> _Actor:
        key = (spec.deployment, spec.variant, spec.index)
        generation = self._generation.get(key, 0)
        self._generation[key] = generation + 1
        settings = spec.settings
        memory = int(settings.memory_limit + settings.ray_memory_overhead)
        name = _actor_name(spec, generation)
        handle: Any = None
        started: asyncio.Future[Any] | None = None
        try:
            strategy = self._strategy(spec)
            while strategy is None:  # every node is at its cap: wait for one to free up
                self._wait_for_room(name, spec, memory)
                pending()
                await asyncio.sleep(1.0)
                strategy = self._strategy(spec)
            if isinstance(strategy, NodeAffinitySchedulingStrategy):
                self.placed(name, strategy.node_id)  # counted now: launches run side by side
            handle = InstanceActor.options(
                name=name,
                namespace=self.namespace,
                lifetime="detached",
                num_cpus=settings.ray_cpus_per_instance,
                memory=memory,
                scheduling_strategy=strategy,
            ).remote(spec)
            started = asyncio.ensure_future(handle.start.remote())
            done, _ = await asyncio.wait((started,), timeout=_PENDING_AFTER_S)
            unplaced = 0  # checks in a row that found no worker process for it
            while not done:
                unplaced = unplaced + 1 if self._unplaced(handle) else 0
                if unplaced == 2 and name not in self._pending:
                    self._wait_for_room(name, spec, memory)  # ask the cluster's autoscaler
                    pending()
                done, _ = await asyncio.wait((started,), timeout=1.0)
            where = await started
        except BaseException:  # cancelled (removed), or it could not start: undo it all
            if started is not None:
                started.cancel()
            self.placed(name, None)
            if handle is not None:
                with contextlib.suppress(Exception):
                    ray.kill(handle, no_restart=True)
            raise
        finally:
            if self._pending.pop(name, None) is not None:
                self._request_room()
        return _Actor(self, name, handle, where)

    async def release(self, spec: InstanceSpec) -> None:
        pass  # the slot's cache folder stays for the next instance on that node


class _ControllerImpl:
    """The fleet's controller (see the module doc)."""

    def __init__(self, endpoints: list[EndpointConfig], namespace: str) -> None:
        self.endpoints = endpoints  # those declared (flags, config file)
        self.namespace = namespace
        # Versions start from the clock, so a restarted controller never repeats one that a
        # router still holds (it would wait on it instead of taking the new snapshot).
        self.version = time.time_ns()
        self._members: Any = None
        self._changed: asyncio.Condition | None = None
        self._supervisors: dict[tuple[str, str], Supervisor] = {}
        self._launcher = RayLauncher(namespace)
        self._started: asyncio.Task[None] | None = None
        self._publisher: asyncio.Task[None] | None = None
        self._starting: list[asyncio.Task[None]] = []
        # instances found again of endpoints it was not started with: endpoints added after
        # the fleet started (a restarted controller learns them again from add_endpoint)
        self._unclaimed: dict[str, dict[tuple[str, str], dict[int, Any]]] = {}
        self._reaper: asyncio.Task[None] | None = None
        self._session: Any = None

    async def _ready(self) -> None:
        if self._started is None:
            self._started = asyncio.create_task(self._start())
        await asyncio.shield(self._started)

    async def _start(self) -> None:
        self._changed = asyncio.Condition()
        found = await self._find_instances()
        for config in self.endpoints:
            self._supervise(config, found)
        for (endpoint, variant), slots in found.items():
            if not any(key[0] == endpoint for key in self._supervisors):
                self._unclaimed.setdefault(endpoint, {})[(endpoint, variant)] = slots
        if self._unclaimed:
            self._reaper = asyncio.create_task(self._reap_unclaimed())
        self._publisher = asyncio.create_task(self._publish())
        # Not awaited: a supervisor's start waits for its instances to come up, and routers
        # must get snapshots meanwhile (a restarted controller replacing lost instances).
        self._starting = [asyncio.create_task(s.start()) for s in self._supervisors.values()]

    def _supervise(
        self, config: EndpointConfig, found: dict[tuple[str, str], dict[int, Any]]
    ) -> list[Supervisor]:
        """A supervisor (not started) for each group of ``config``'s instances, adopting those
        of ``found`` that are its own."""
        if self._session is None:
            self._session = new_session(config.variants[0].settings)
        made = []
        for name, settings in config.groups():
            key = (config.name, name)
            mine = found.get(key, {})
            several = len(config.variants) > 1 or "/" in name  # a pipeline's step
            prefix = f"{name.replace('/', '-')}-" if several else ""
            supervisor = Supervisor(
                settings,
                self._launcher,
                variant=name,
                id_prefix=prefix,
                session=self._session,
                initial=0,
                group=config.name,
            )
            for index, (generation, actor, handle, where) in sorted(mine.items()):
                spec = InstanceSpec("", index, name, settings, group=config.name)
                self._launcher.note_generation(spec, generation)
                supervisor.adopt(index, _Actor(self._launcher, actor, handle, where))
            supervisor.top_up(settings.instances)  # numbered after those found
            self._supervisors[key] = supervisor
            made.append(supervisor)
        return made

    async def _reap_unclaimed(self) -> None:
        """Instances found again that no endpoint claims within ``_UNCLAIMED_S`` are stopped:
        their endpoint was removed while the controller was away."""
        await asyncio.sleep(_UNCLAIMED_S)
        for endpoint, groups in list(self._unclaimed.items()):
            logger.warning("stopping the instances of %s: no endpoint claimed them", endpoint)
            for slots in groups.values():
                for _, _, handle, _ in slots.values():
                    with contextlib.suppress(Exception):
                        ray.kill(handle, no_restart=True)
        self._unclaimed.clear()

    async def add_endpoint(self, config: EndpointConfig) -> None:
        """Start ``config``'s instances as a deployment of the fleet named ``config.name``
        (the control plane's endpoints); return once each answers or waits for room. A
        deployment it runs already is left as it is (a router telling a restarted controller
        again), and its instances found again after a restart are adopted, not restarted."""
        await self._ready()
        if any(key[0] == config.name for key in self._supervisors):
            return
        made = self._supervise(config, self._unclaimed.pop(config.name, {}))
        try:
            await asyncio.gather(*(s.start() for s in made))
        except BaseException:
            await self.remove_endpoint(config.name)
            raise

    async def remove_endpoint(self, name: str) -> None:
        """Stop the instances of the deployment ``name`` and forget it."""
        await self._ready()
        keys = [key for key in self._supervisors if key[0] == name]
        stopping = [self._supervisors.pop(key) for key in keys]
        await asyncio.gather(*(s.stop() for s in stopping))

    async def _find_instances(self) -> dict[tuple[str, str], dict[int, Any]]:
        """The instance actors alive in the namespace (a restarted controller's fleet), asked
        side by side under one deadline; those that do not answer are killed (replaced as any
        lost instance), and every name seen numbers the next generations past it."""
        named: list[tuple[str, str, str, int, int]] = []
        for actor in ray.util.list_named_actors(all_namespaces=True):
            name = actor["name"] if isinstance(actor, dict) else actor
            if isinstance(actor, dict) and actor.get("namespace") != self.namespace:
                continue
            parts = name.split(":")
            if len(parts) != 5 or parts[0] != INSTANCE_PREFIX:
                continue
            _, endpoint, variant, index, generation = parts
            named.append((name, endpoint, variant, int(index), int(generation)))
            spec = InstanceSpec("", int(index), variant, Settings(), group=endpoint)
            self._launcher.note_generation(spec, int(generation))

        async def where(name: str) -> tuple[Any, dict[str, Any] | None]:
            handle = None
            try:
                handle = ray.get_actor(name, namespace=self.namespace)
                answer: dict[str, Any] = await asyncio.wait_for(handle.describe.remote(), 10.0)
                return handle, answer or None
            except Exception:
                return handle, None

        answers = await asyncio.gather(*(where(n[0]) for n in named))
        found: dict[tuple[str, str], dict[int, Any]] = {}
        for (name, endpoint, variant, index, generation), (handle, at) in zip(
            named, answers, strict=True
        ):
            if at is None:  # dead, never started, or silent: start afresh
                if handle is not None:
                    with contextlib.suppress(Exception):
                        ray.kill(handle, no_restart=True)
                continue
            slots = found.setdefault((endpoint, variant), {})
            mine = (generation, name, handle, at)
            other = slots.get(index)
            if other is not None:  # two generations of one slot: keep the newer, stop the other
                mine, other = (mine, other) if mine[0] > other[0] else (other, mine)
                with contextlib.suppress(Exception):
                    ray.kill(other[2], no_restart=True)
            slots[index] = mine
            logger.info("found instance %s again (pid %s)", name, at.get("pid"))
        return found

    def _membership(self) -> dict[str, dict[str, list[dict[str, Any]]]]:
        view: dict[str, dict[str, list[dict[str, Any]]]] = {}
        for (endpoint, variant), supervisor in self._supervisors.items():
            view.setdefault(endpoint, {})[variant] = [
                {
                    "id": i.instance_id,
                    "url": i.url,
                    "state": str(i.state),
                    "pid": i.pid,
                    "node": i.node,
                }
                for i in supervisor.instances
            ]
        return view

    async def _publish(self) -> None:
        assert self._changed is not None
        while True:
            members = self._membership()
            if members != self._members:
                self._members = members
                async with self._changed:
                    self.version += 1
                    self._changed.notify_all()
            await asyncio.sleep(_PUBLISH_INTERVAL_S)

    async def membership(self, known: int, timeout_s: float = POLL_S) -> dict[str, Any]:
        """The membership snapshot once its version differs from ``known`` (or at the
        timeout): ``{"version", "instances": {endpoint: {variant: [...]}}, "pid"}``."""
        await self._ready()
        assert self._changed is not None
        if self.version == known:
            async with self._changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._changed.wait_for(lambda: self.version != known), timeout_s
                    )
        return {"version": self.version, "instances": self._members, "pid": os.getpid()}

    def config(self) -> list[EndpointConfig]:
        """The endpoints declared at start (a joined router serves those)."""
        return self.endpoints

    async def _supervisor(self, endpoint: str, variant: str) -> Supervisor:
        await self._ready()
        supervisor = self._supervisors.get((endpoint, variant))
        if supervisor is None:
            raise ServiceUnavailableError(f"no variant {endpoint}/{variant} in this fleet")
        return supervisor

    async def add_instance(self, endpoint: str, variant: str) -> str:
        supervisor = await self._supervisor(endpoint, variant)
        async with supervisor.scaling:
            return (await supervisor.add_instance()).instance_id

    async def remove_instance(
        self, endpoint: str, variant: str, instance_id: str, drain_s: float
    ) -> None:
        supervisor = await self._supervisor(endpoint, variant)
        for instance in list(supervisor.instances):
            if instance.instance_id == instance_id:
                await supervisor.remove_instance(instance, drain_s=drain_s)

    async def resize(self, endpoint: str, variant: str, count: int) -> None:
        await (await self._supervisor(endpoint, variant)).resize(count)

    async def replace(self, endpoint: str, variant: str, settings: Settings) -> None:
        await (await self._supervisor(endpoint, variant)).replace(settings)

    async def describe(self, endpoint: str, variant: str) -> list[dict[str, Any]]:
        described = await (await self._supervisor(endpoint, variant)).describe()
        pending = self._launcher.pending
        for item in described:
            item["ray_pending"] = pending
        return described

    async def shutdown(self) -> None:
        """Stop every instance (the caller then kills the controller)."""
        await self._ready()
        for task in (self._publisher, self._reaper):
            if task is not None:
                task.cancel()
        for task in self._starting:
            task.cancel()
        await asyncio.gather(*self._starting, return_exceptions=True)
        await asyncio.gather(*(s.stop() for s in list(self._supervisors.values())))


Controller = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)(_ControllerImpl)

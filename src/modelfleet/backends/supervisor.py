"""One supervision policy for every backend whose instances run in processes of their own.

The :class:`Supervisor` owns the policy: which instances exist, their states, health checks,
restart with backoff, draining, rolling replacement, resizing, prewarming a restarted instance.
A :class:`Launcher` owns the mechanism: it starts one instance's process (a subprocess for the
``local`` backend, a Ray actor for ``ray``) from an :class:`InstanceSpec` and hands back a
:class:`Launched` handle with the instance's address, its PID and a way to wait for its end and
to stop it. This is the split uvicorn makes between its supervisors and a worker process.

Supervision: a crashed instance is marked down at once (its in-flight requests fail over to
another instance), restarted after a backoff (0.5 s, doubling to 10 s, reset after 30 s up),
takes traffic again once ``/ping`` answers, and is prewarmed with the models it held before.
An instance that stops answering ``/ping`` (to its watcher, or to the router before a retry) is
marked down until it answers again, and killed if it was up and stays silent for
``hang_timeout``: it is hung (or its machine is gone).

How a process ended is told to its :class:`RemoteInstance` (``process_ended``): requests it
dropped while ending by its own hand (as the launcher tells: a non-zero exit status, a crash
signal) are the likely cause and are not retried; those it dropped when killed from outside
are tried once more.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

import aiohttp

from modelfleet.backends.base import Instance, InstanceState
from modelfleet.backends.remote import (
    PING_TIMEOUT,
    RemoteInstance,
    RolloutError,
    fetch_metrics,
    new_session,
)
from modelfleet.config import Settings

__all__ = ["InstanceSpec", "Launched", "Launcher", "Supervisor"]

logger = logging.getLogger(__name__)

PENDING, STARTING, UP, DOWN, DRAINING = (
    InstanceState.PENDING,
    InstanceState.STARTING,
    InstanceState.UP,
    InstanceState.DOWN,
    InstanceState.DRAINING,
)
READY_TIMEOUT_S = 120.0
_HEALTH_INTERVAL_S = 1.0
_BACKOFF_S = (0.5, 10.0)
_STOP_GRACE_S = 10.0
_HELD_REFRESH_S = 5.0  # how often the models an instance holds are noted (its restart's prewarm)


@dataclass(frozen=True)
class InstanceSpec:
    """What a launcher needs to start one instance: its id, its slot, its variant, and its own
    settings (one instance; ``cache_dir`` is the instance's own folder)."""

    instance_id: str
    index: int
    variant: str
    settings: Settings
    # the deployment it belongs to, where one endpoint runs two side by side (a blue/green
    # update on the ray backend, whose actor names carry it); empty: the endpoint's name
    group: str = ""

    @property
    def deployment(self) -> str:
        return self.group or self.settings.endpoint_name


class Launched(Protocol):
    """One running (or starting) instance process, as its launcher reports it."""

    url: str
    pid: int | None
    node: str | None  # where it runs (a Ray node id); None on this machine

    async def ended(self) -> str | None:
        """Wait for the process to end; how, if by its own hand (``"exit status 7"``), else
        None (stopped, or killed from outside)."""
        ...

    async def terminate(self, grace_s: float) -> None:
        """Stop it gracefully, killing it after ``grace_s``; return once it is gone."""
        ...

    def kill(self) -> None:
        """Kill it now (it is hung); :meth:`ended` then returns."""
        ...

    async def busy(self) -> bool:
        """Whether requests are in progress there that the router's own count does not see
        (requests from other routers); False when this router sends them all."""
        ...


class Launcher(Protocol):
    """Starts instance processes (see the module doc)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def spec(self, settings: Settings, index: int, instance_id: str, variant: str) -> InstanceSpec:
        """The spec of the instance in slot ``index`` (its cache folder chosen here)."""
        ...

    def address(self, spec: InstanceSpec) -> str:
        """The instance's URL if known before it starts (a socket held for it), else ""."""
        ...

    async def launch(self, spec: InstanceSpec, pending: Callable[[], None]) -> Launched:
        """Start the instance's process; return once it has an address (it may not answer
        ``/ping`` yet). If it has to wait for room, it calls ``pending()`` first (the
        instance shows as PENDING until this returns)."""
        ...

    async def release(self, spec: InstanceSpec) -> None:
        """The instance was removed for good: free what its slot held."""
        ...


class _Slot:
    """One instance: its spec, its current process, and its supervision task."""

    def __init__(self, instance: RemoteInstance, spec: InstanceSpec) -> None:
        self.instance = instance
        self.spec = spec
        self.launched: Launched | None = None
        self.task: asyncio.Task[None] | None = None
        self.removing = False
        self.held: list[str] = []  # the models it held when last asked (prewarmed at restart)
        self.prewarming: asyncio.Task[None] | None = None


class Supervisor:
    """Starts, supervises, resizes and stops ``settings.instances`` instances of one variant
    through ``launcher`` (a :class:`~modelfleet.backends.base.Backend`)."""

    elastic = True

    def __init__(
        self,
        settings: Settings,
        launcher: Launcher,
        *,
        variant: str = "AllTraffic",
        id_prefix: str = "",
        session: aiohttp.ClientSession | None = None,
        initial: int | None = None,
        group: str = "",
    ) -> None:
        self.settings = settings
        self.variant = variant
        self.group = group  # InstanceSpec.group of its instances
        self.launcher = launcher
        self._id_prefix = id_prefix
        self._session = session
        self._own_session = session is None
        self._slots: list[_Slot] = []
        self._stopping = False
        self._next_index = 0
        self.scaling = asyncio.Lock()
        self.on_removed: list[Callable[[str], None]] = []
        # The router routes over this very list: instances added or removed show at once.
        self._instances: list[RemoteInstance] = []
        for _ in range(settings.instances if initial is None else initial):
            self._make_slot()

    @property
    def instances(self) -> list[RemoteInstance]:
        return self._instances

    def adopt_index(self, index: int) -> None:
        """Number new slots after ``index`` (instances found again after a restart)."""
        self._next_index = max(self._next_index, index + 1)

    def _make_slot(self, index: int | None = None) -> _Slot:
        if index is None:
            index = self._next_index
        self.adopt_index(index)
        instance_id = f"{self._id_prefix}{index}"
        spec = self.launcher.spec(self.settings, index, instance_id, self.variant)
        if self.group:
            spec = replace(spec, group=self.group)
        instance = RemoteInstance(instance_id, self.launcher.address(spec))
        instance.state = STARTING
        instance.session = self._session
        slot = _Slot(instance, spec)
        self._slots.append(slot)
        self._instances.append(instance)
        return slot

    def _slot(self, instance: Instance) -> _Slot | None:
        return next((s for s in self._slots if s.instance is instance), None)

    async def start(self) -> None:
        """Start every instance; return once each answers ``/ping`` or waits for room (or at
        a timeout).

        Raises:
            CacheInUseError: another live server holds the instances' cache folder.
        """
        await self.launcher.start()
        if self._session is None:
            self._session = new_session(self.settings)
        for instance in self._instances:
            instance.session = self._session
        for slot in self._slots:
            if slot.task is None:
                self._supervise_slot(slot, slot.launched)  # adopted ones: not started again
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if all(i.state in (UP, PENDING) for i in self._instances):
                return  # those waiting for room start when it comes: serve without them
            await asyncio.sleep(0.05)
        logger.warning(
            "instances not up after %.0f s: %s",
            READY_TIMEOUT_S,
            [i.instance_id for i in self._instances if i.state != UP],
        )

    def _supervise_slot(self, slot: _Slot, launched: Launched | None = None) -> None:
        slot.task = asyncio.create_task(
            self._supervise(slot, launched), name=f"modelfleet-instance-{slot.spec.instance_id}"
        )

    async def stop(self) -> None:
        """Stop every instance (gracefully, then killed after a grace period) and wait."""
        self._stopping = True
        for slot in self._slots:
            if slot.task is not None:
                slot.task.cancel()
        await asyncio.gather(
            *(s.task for s in self._slots if s.task is not None), return_exceptions=True
        )
        await asyncio.gather(*(self._terminate(s) for s in self._slots))
        if self._session is not None and self._own_session:
            await self._session.close()
        await self.launcher.stop()

    async def replace(self, settings: Settings) -> None:
        """Rolling update to ``settings``: each instance in turn is replaced by a new one (up
        and prewarmed with the models the old one held) before the old one is drained and
        stopped; then the count is brought to ``settings.instances``.

        A new instance that does not come up stops the rollout: it is removed, the instances
        not yet replaced keep serving, and :class:`RolloutError` says so.
        """
        async with self.scaling:
            previous = self.settings
            self.settings = settings  # what add_instance starts
            try:
                for old in [i for i in self._instances if i.state != DRAINING]:
                    if old not in self._instances or old.state == DRAINING:
                        continue  # removed meanwhile
                    held = await old.loaded_models()
                    new = await self.add_instance()
                    deadline = time.monotonic() + READY_TIMEOUT_S
                    while time.monotonic() < deadline:  # waiting for room, then to start
                        if new.state not in (PENDING, STARTING) or new.restarts >= 2:
                            break
                        await asyncio.sleep(0.1)
                    if new.state != UP:
                        await self.remove_instance(new, drain_s=0.0)
                        raise RolloutError(
                            f"variant {self.variant}: a new instance with the new settings did"
                            " not come up; the rollout stopped (instances not yet replaced"
                            " keep the old settings)"
                        )
                    if held:
                        await new.prewarm(held)
                    await self.remove_instance(old)
            except BaseException:
                self.settings = previous
                raise
            await self._resize(settings.instances)

    async def resize(self, count: int) -> None:
        """Add or remove (newest first, drained) instances until there are ``count``."""
        async with self.scaling:
            await self._resize(count)

    async def _resize(self, count: int) -> None:
        active = [i for i in self._instances if i.state != DRAINING]
        if len(active) < count:
            await asyncio.gather(*(self.add_instance() for _ in range(count - len(active))))
        for instance in reversed(active[count:]):
            await self.remove_instance(instance)

    async def add_instance(self, *, timeout_s: float = READY_TIMEOUT_S) -> RemoteInstance:
        """Start one more instance; return it once it answers ``/ping``, waits for room
        (PENDING: it starts when room appears) or at the timeout (STARTING)."""
        slot = self._make_slot()
        self._supervise_slot(slot)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if slot.instance.state in (UP, PENDING) or slot.instance.restarts >= 2:
                break  # up, waiting for room, or it keeps crashing: the caller decides
            await asyncio.sleep(0.05)
        return slot.instance

    def adopt(self, index: int, launched: Launched) -> RemoteInstance:
        """Take an instance that is already running (found again after a restart of whatever
        runs this supervisor) into slot ``index``; :meth:`start` supervises it without
        starting it again. It counts as up: it served a moment ago (its health checks say
        otherwise within a second if not)."""
        slot = self._make_slot(index)
        slot.launched = launched
        slot.instance.url = launched.url
        slot.instance.pid = launched.pid
        slot.instance.node = launched.node
        slot.instance.state = UP
        return slot.instance

    def top_up(self, count: int) -> None:
        """Add slots (started by :meth:`start`) until there are ``count``."""
        while len(self._instances) < count:
            self._make_slot()

    async def remove_instance(self, instance: Instance, *, drain_s: float = 60.0) -> None:
        """Drain ``instance`` (no new requests; those in flight finish, up to ``drain_s``),
        then stop its process and forget it."""
        slot = self._slot(instance)
        if slot is None or slot.removing:
            return  # removed already, or being removed
        slot.removing = True
        slot.instance.state = DRAINING
        await self._drain(slot, drain_s)
        if slot.task is not None:
            slot.task.cancel()
            await asyncio.gather(slot.task, return_exceptions=True)
        await self._terminate(slot)
        self._slots.remove(slot)
        self._instances.remove(slot.instance)
        for listener in self.on_removed:
            listener(slot.instance.instance_id)
        await self.launcher.release(slot.spec)

    async def _drain(self, slot: _Slot, drain_s: float) -> None:
        """Wait until no request is in flight to the instance (up to ``drain_s``)."""
        deadline = time.monotonic() + drain_s
        while time.monotonic() < deadline:
            launched = slot.launched
            if slot.instance.in_flight == 0 and (launched is None or not await launched.busy()):
                break
            await asyncio.sleep(0.05)

    async def _terminate(self, slot: _Slot) -> None:
        if slot.prewarming is not None:
            slot.prewarming.cancel()
        launched, slot.launched = slot.launched, None
        if launched is None:
            return
        await launched.terminate(_STOP_GRACE_S)
        slot.instance.state = DOWN
        slot.instance.process_ended(None)  # stopped by us: not the requests' doing

    async def _supervise(self, slot: _Slot, launched: Launched | None) -> None:
        instance = slot.instance
        backoff = _BACKOFF_S[0]
        while not self._stopping and not slot.removing:
            if launched is None:
                instance.state = STARTING

                def pending() -> None:  # the launcher waits for room to start it
                    if not slot.removing:
                        instance.state = PENDING

                try:
                    launched = await self.launcher.launch(slot.spec, pending)
                except Exception:  # it could not start (its node died meanwhile...): again
                    logger.exception(
                        "instance %s could not start; trying again in %.1f s",
                        instance.instance_id,
                        backoff,
                    )
                    instance.state = DOWN
                    instance.restarts += 1
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, _BACKOFF_S[1])
                    continue
                instance.url, instance.pid = launched.url, launched.pid
                instance.node = launched.node
                if not slot.removing:
                    instance.state = STARTING
                instance.process_started()
            else:
                instance.process_started()
            slot.launched = launched
            started = time.monotonic()
            adopted = instance.state == UP  # found again running: it was up a moment ago
            health = asyncio.create_task(self._watch_health(slot, launched, adopted=adopted))
            try:
                how = await launched.ended()
            finally:
                health.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await health
            slot.launched, launched = None, None
            instance.state = DOWN
            instance.process_ended(how)  # requests it dropped: retry them?
            if self._stopping or slot.removing:
                return
            instance.restarts += 1
            if time.monotonic() - started > 30.0:
                backoff = _BACKOFF_S[0]
            logger.warning(
                "instance %s (pid %s) ended (%s); restarting in %.1f s",
                instance.instance_id,
                instance.pid,
                how or "stopped or killed from outside",
                backoff,
            )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _BACKOFF_S[1])

    async def _watch_health(self, slot: _Slot, launched: Launched, *, adopted: bool) -> None:
        """Mark the instance up while ``/ping`` answers 200, down while it does not; kill it
        (the supervisor restarts it) when it was up and has failed for ``hang_timeout``. A
        restarted instance is prewarmed with the models its predecessor held."""
        assert self._session is not None
        instance = slot.instance
        down_since: float | None = None
        # this process answered once (or was found serving): from then on, silence may be a hang
        was_up = adopted
        noted = 0.0
        while True:
            healthy = await self._pings(instance)
            if instance.state == DRAINING:
                await asyncio.sleep(_HEALTH_INTERVAL_S)  # being removed: no new requests
                continue
            if healthy and not was_up:
                logger.info("instance %s up at %s", instance.instance_id, instance.url)
                if slot.held:
                    self._prewarm_later(slot, list(slot.held))
            if healthy:
                instance.state, down_since, was_up = UP, None, True
                if time.monotonic() - noted > _HELD_REFRESH_S:
                    noted = time.monotonic()
                    slot.held = await instance.loaded_models() or slot.held
            elif was_up and down_since is None:
                # the router may have marked it down first (a ping before a retry failed)
                instance.state, down_since = DOWN, time.monotonic()
            elif (
                down_since is not None
                and time.monotonic() - down_since > self.settings.hang_timeout
            ):
                logger.warning(
                    "instance %s (pid %s) has not answered /ping for %.0f s; killing it",
                    instance.instance_id,
                    instance.pid,
                    self.settings.hang_timeout,
                )
                launched.kill()  # the supervisor sees the end and restarts it
                down_since = None
            await asyncio.sleep(_HEALTH_INTERVAL_S if instance.state == UP else 0.05)

    def _prewarm_later(self, slot: _Slot, models: list[str]) -> None:
        async def prewarm() -> None:
            loaded = await slot.instance.prewarm(models)
            logger.info(
                "prewarmed restarted instance %s with %d of %d models",
                slot.instance.instance_id,
                loaded,
                len(models),
            )

        task = asyncio.create_task(prewarm())
        slot.prewarming = task  # cancelled if the instance is removed or stopped first
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _pings(self, instance: RemoteInstance) -> bool:
        assert self._session is not None
        if not instance.url:
            return False
        try:
            url = f"{instance.url}/ping"
            async with self._session.get(url, timeout=PING_TIMEOUT) as response:
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def metrics_texts(self) -> list[str]:
        """The ``/metrics`` text of every instance that is up (one that fails is left out)."""
        if self._session is None:
            return []
        return await fetch_metrics(self._session, self._instances)

    async def describe(self) -> list[dict[str, Any]]:
        """Per instance: id, url, pid, node, state, in-flight requests, restarts, how many
        models a restart would be prewarmed with, and what the instance reports of itself
        (loaded models with bytes, memory, hits, hit ratio)."""
        return list(await asyncio.gather(*(self._describe(s) for s in list(self._slots))))

    async def _describe(self, slot: _Slot) -> dict[str, Any]:
        instance = slot.instance
        described: dict[str, Any] = {
            "id": instance.instance_id,
            "url": instance.url or None,
            "pid": instance.pid,
            "node": instance.node,
            "state": instance.state,
            "in_flight": instance.in_flight,
            "restarts": instance.restarts,
            # what a restart would be prewarmed with (noted every few seconds)
            "prewarm_on_restart": len(slot.held),
        }
        if instance.state == UP and self._session is not None:
            timeout = aiohttp.ClientTimeout(total=5.0)
            try:
                url = f"{instance.url}/admin/instance"
                async with self._session.get(url, timeout=timeout) as response:
                    if response.status == 200:
                        described.update(await response.json())
            except (aiohttp.ClientError, TimeoutError, ValueError):
                pass  # it went down meanwhile: the state says what is known
        return described

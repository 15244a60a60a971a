"""The ``local`` backend: N instance subprocesses on this machine, supervised by the router.

Each instance is ``python -m modelfleet instance``: its own process, its own cache folder
(``<cache_dir>/instance-<i>``) and the per-instance budgets of the settings. The router creates
each instance's listening socket on 127.0.0.1 and hands it down as an inherited file descriptor,
so an instance keeps its address when it is restarted and no port is ever raced for. The router
talks to the instances over pooled keep-alive HTTP connections (:mod:`.remote`).

Supervision: a crashed instance is marked down at once (its in-flight requests fail over to
another instance), restarted after a backoff (0.5 s, doubling to 10 s, reset after 30 s up),
and takes traffic again once ``/ping`` answers. An instance that stops answering ``/ping`` (to
its watcher, or to the router before a retry) is marked down until it answers again, and
killed if it was up and stays silent for ``hang_timeout``: it is hung. Each instance also
exits by itself when the router's process disappears (it watches its parent), so a killed
router leaves no orphans.

How a process ended is told to its :class:`RemoteInstance` (:func:`ended_by_itself`): requests
it dropped while ending by its own hand (a non-zero exit status, as from ``os._exit``, or a
crash signal) are the likely cause and are not retried; those it dropped when killed from
outside (SIGKILL: ``kill -9``, the OOM killer, the hang watcher; SIGTERM) are tried once more.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from modelfleet.backends.remote import (
    DOWN,
    DRAINING,
    PING_TIMEOUT,
    STARTING,
    UP,
    InstanceFullError,
    InstanceUnreachableError,
    RemoteInstance,
    RolloutError,
)
from modelfleet.cache.lock import FolderLock
from modelfleet.config import Settings
from modelfleet.instance.server import SETTINGS_ENV

__all__ = [
    "DRAINING",
    "InstanceFullError",
    "InstanceUnreachableError",
    "LocalBackend",
    "RemoteInstance",
    "RolloutError",
    "ended_by_itself",
]

logger = logging.getLogger(__name__)

_READY_TIMEOUT_S = 120.0
_HEALTH_INTERVAL_S = 1.0
_BACKOFF_S = (0.5, 10.0)
_STOP_GRACE_S = 10.0
# Idle pooled connections are dropped before the instance's own keep-alive timeout (75 s,
# set by ``modelfleet instance``), so a request never meets a connection the instance closes.
_KEEPALIVE_S = 60.0
# Signals a process raises against itself when it crashes (native code, abort(), a bad
# instruction); SIGKILL and SIGTERM come from outside.
_CRASH_SIGNALS = frozenset(
    {signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS, signal.SIGILL, signal.SIGFPE}
)


def ended_by_itself(returncode: int) -> str | None:
    """How a process with ``returncode`` ended, if by its own hand (``"exit status 7"``,
    ``"signal SIGSEGV"``); None for a clean exit (0: after SIGTERM, the instance stops
    gracefully) or a signal from outside (SIGKILL, SIGTERM, ...)."""
    if returncode > 0:
        return f"exit status {returncode}"
    if -returncode in _CRASH_SIGNALS:
        return f"signal {signal.Signals(-returncode).name}"
    return None


class _Child:
    """One instance's process, its inherited socket, and its supervision loop."""

    def __init__(
        self, instance: RemoteInstance, sock: socket.socket, env: dict[str, str], variant: str
    ) -> None:
        self.instance = instance
        self.variant = variant
        self.sock = sock
        self.env = env
        self.process: asyncio.subprocess.Process | None = None
        self.task: asyncio.Task[None] | None = None
        self.removing = False
        self.cache_dir: Path | None = None

    async def spawn(self) -> None:
        fd = self.sock.fileno()
        argv = [sys.executable, "-m", "modelfleet", "instance", "--fd", str(fd)]
        argv += ["--instance-id", self.instance.instance_id, "--parent-pid", str(os.getpid())]
        argv += ["--variant", self.variant]
        self.process = await asyncio.create_subprocess_exec(
            *argv, pass_fds=(fd,), env=self.env, start_new_session=True
        )
        self.instance.pid = self.process.pid
        self.instance.process_started()
        if not self.removing:
            self.instance.state = STARTING


class LocalBackend:
    """Starts, supervises and stops ``settings.instances`` instance processes."""

    def __init__(self, settings: Settings, *, variant: str = "AllTraffic", id_prefix: str = ""):
        self.settings = settings
        self.variant = variant
        self._id_prefix = id_prefix
        self._session: aiohttp.ClientSession | None = None
        self._children: list[_Child] = []
        self._stopping = False
        self._next_index = 0
        self.scaling = asyncio.Lock()  # one scaling action at a time (autoscaler, reload)
        self.on_removed: list[Callable[[str], None]] = []
        self._root_lock = FolderLock(Path(settings.cache_dir))
        self._root_previous = ""  # what the lock said before: put back at stop
        # The router routes over this very list: instances added or removed show at once.
        self.instances: list[RemoteInstance] = []
        for _ in range(settings.instances):
            self._make_child()

    def _make_child(self) -> _Child:
        index = self._next_index
        self._next_index += 1
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(1024)
        sock.set_inheritable(True)
        port = sock.getsockname()[1]
        instance = RemoteInstance(f"{self._id_prefix}{index}", f"http://127.0.0.1:{port}")
        instance.session = self._session
        child_settings = self.settings.model_dump(mode="json")
        child_settings.update(  # one instance: scaling is the router's business
            cache_dir=str(Path(self.settings.cache_dir) / f"instance-{index}"),
            instances=1,
            min_instances=None,
            max_instances=None,
            autoscale_target=0.0,
        )
        env = {**os.environ, SETTINGS_ENV: json.dumps(child_settings)}
        child = _Child(instance, sock, env, self.variant)
        child.cache_dir = Path(child_settings["cache_dir"])
        self._children.append(child)
        self.instances.append(instance)
        return child

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
                for old in [i for i in self.instances if i.state != DRAINING]:
                    if old not in self.instances or old.state == DRAINING:
                        continue  # removed meanwhile
                    held = await old.loaded_models()
                    new = await self.add_instance()
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
        active = [i for i in self.instances if i.state != DRAINING]
        if len(active) < count:
            await asyncio.gather(*(self.add_instance() for _ in range(count - len(active))))
        for instance in reversed(active[count:]):
            await self.remove_instance(instance)

    async def add_instance(self, *, timeout_s: float = _READY_TIMEOUT_S) -> RemoteInstance:
        """Start one more instance; return it once it answers ``/ping`` (or at the timeout)."""
        child = self._make_child()
        child.task = asyncio.create_task(
            self._supervise(child), name=f"modelfleet-instance-{child.instance.instance_id}"
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if child.instance.state == UP or child.instance.restarts >= 2:
                break  # up, or it keeps crashing: the caller decides
            await asyncio.sleep(0.05)
        return child.instance

    async def remove_instance(self, instance: RemoteInstance, *, drain_s: float = 60.0) -> None:
        """Drain ``instance`` (no new requests; those in flight finish, up to ``drain_s``),
        then stop its process and forget it."""
        child = next((c for c in self._children if c.instance is instance), None)
        if child is None or child.removing:
            return  # removed already, or being removed
        child.removing = True
        instance.state = DRAINING
        deadline = time.monotonic() + drain_s
        while time.monotonic() < deadline:
            if instance.in_flight == 0:
                break
            await asyncio.sleep(0.05)
        if child.task is not None:
            child.task.cancel()
            await asyncio.gather(child.task, return_exceptions=True)
        await self._terminate(child)
        child.sock.close()
        self._children.remove(child)
        self.instances.remove(instance)
        for listener in self.on_removed:
            listener(instance.instance_id)
        if child.cache_dir is not None:  # a removed instance's cache is not reused: free it
            await asyncio.to_thread(shutil.rmtree, child.cache_dir, True)

    async def start(self) -> None:
        """Start every instance; return once each answers ``/ping`` (or failed to start).

        Raises:
            CacheInUseError: another live server holds the instances' cache folder.
        """
        # One live fleet per cache folder: the instances' folders are numbered from 0 in
        # every run, so a second fleet would share them (each instance also locks its own).
        self._root_previous = self._root_lock.acquire()
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=_KEEPALIVE_S),
            # An instance answers 429 at invoke_timeout: one silent for much longer is hung.
            timeout=aiohttp.ClientTimeout(
                total=self.settings.invoke_timeout + 60.0, sock_connect=5.0
            ),
            # No Content-Type of aiohttp's own: a request without one must reach the model
            # without one (CSV by default), as in process.
            skip_auto_headers=("User-Agent", "Content-Type"),
        )
        for instance in self.instances:
            instance.session = self._session
        for child in self._children:
            child.task = asyncio.create_task(
                self._supervise(child), name=f"modelfleet-instance-{child.instance.instance_id}"
            )
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if all(i.state == UP for i in self.instances):
                return
            await asyncio.sleep(0.05)
        logger.warning(
            "instances not up after %.0f s: %s",
            _READY_TIMEOUT_S,
            [i.instance_id for i in self.instances if i.state != UP],
        )

    async def stop(self) -> None:
        """Stop every instance (SIGTERM, then SIGKILL after a grace period) and wait for it."""
        self._stopping = True
        for child in self._children:
            if child.task is not None:
                child.task.cancel()
        await asyncio.gather(
            *(c.task for c in self._children if c.task is not None), return_exceptions=True
        )
        await asyncio.gather(*(self._terminate(c) for c in self._children))
        for child in self._children:
            child.sock.close()
        if self._session is not None:
            await self._session.close()
        # A single server's "clean" (or a crashed one's PID) stays what it was.
        self._root_lock.release(self._root_previous)

    async def _terminate(self, child: _Child) -> None:
        process = child.process
        if process is None or process.returncode is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), _STOP_GRACE_S)
        except TimeoutError:
            logger.warning("instance %s ignored SIGTERM; killing it", child.instance.instance_id)
            process.kill()
            await process.wait()
        child.instance.state = DOWN
        child.instance.process_ended(None)  # stopped by the router: not the requests' doing

    async def _supervise(self, child: _Child) -> None:
        instance = child.instance
        backoff = _BACKOFF_S[0]
        while not self._stopping and not child.removing:
            await child.spawn()
            assert child.process is not None
            started = time.monotonic()
            health = asyncio.create_task(self._watch_health(child))
            try:
                code = await child.process.wait()
            finally:
                health.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await health
            instance.state = DOWN
            instance.process_ended(ended_by_itself(code))  # requests it dropped: retry them?
            if self._stopping or child.removing:
                return
            instance.restarts += 1
            if time.monotonic() - started > 30.0:
                backoff = _BACKOFF_S[0]
            logger.warning(
                "instance %s (pid %s) exited with %s; restarting in %.1f s",
                instance.instance_id,
                instance.pid,
                code,
                backoff,
            )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _BACKOFF_S[1])

    async def _watch_health(self, child: _Child) -> None:
        """Mark the instance up while ``/ping`` answers 200, down while it does not; kill it
        (the supervisor restarts it) when it was up and has failed for ``hang_timeout``."""
        assert self._session is not None
        instance = child.instance
        down_since: float | None = None
        was_up = False  # this process answered once: from then on, silence may be a hang
        while True:
            try:
                url = f"{instance.url}/ping"
                async with self._session.get(url, timeout=PING_TIMEOUT) as response:
                    healthy = response.status == 200
            except (aiohttp.ClientError, TimeoutError):
                healthy = False
            if instance.state == DRAINING:
                await asyncio.sleep(_HEALTH_INTERVAL_S)  # being removed: no new requests
                continue
            if healthy and instance.state != UP:
                logger.info("instance %s up at %s", instance.instance_id, instance.url)
            if healthy:
                instance.state, down_since, was_up = UP, None, True
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
                if child.process is not None and child.process.returncode is None:
                    child.process.kill()  # the supervisor sees the exit and restarts it
                down_since = None
            await asyncio.sleep(_HEALTH_INTERVAL_S if instance.state == UP else 0.05)

    async def metrics_texts(self) -> list[str]:
        """The ``/metrics`` text of every instance that is up (one that fails is left out)."""

        async def one(instance: RemoteInstance) -> str | None:
            if instance.state != UP or self._session is None:
                return None
            timeout = aiohttp.ClientTimeout(total=5.0)
            try:
                async with self._session.get(f"{instance.url}/metrics", timeout=timeout) as r:
                    return await r.text() if r.status == 200 else None
            except (aiohttp.ClientError, TimeoutError):
                return None

        texts = await asyncio.gather(*(one(i) for i in self.instances))
        return [text for text in texts if text is not None]

    async def describe(self) -> list[dict[str, Any]]:
        """Per instance: id, url, pid, state, in-flight requests, restarts, and what the
        instance reports of itself (loaded models with bytes, memory, hits, hit ratio)."""
        return list(await asyncio.gather(*(self._describe(i) for i in self.instances)))

    async def _describe(self, instance: RemoteInstance) -> dict[str, Any]:
        described: dict[str, Any] = {
            "id": instance.instance_id,
            "url": instance.url,
            "pid": instance.pid,
            "state": instance.state,
            "in_flight": instance.in_flight,
            "restarts": instance.restarts,
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

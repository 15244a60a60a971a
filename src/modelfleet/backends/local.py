"""The ``local`` backend: N instance subprocesses on this machine.

The policy (health, restart, drain, rolling replace, resize) is the
:class:`~modelfleet.backends.supervisor.Supervisor`'s; this module is the mechanism, the
:class:`SubprocessLauncher`. Each instance is ``python -m modelfleet instance``: its own
process, its own cache folder (``<cache_dir>/instance-<i>``) and the per-instance budgets of the
settings, which it reads as JSON from its standard input (a pipe the launcher writes and closes:
they are not in its environment, where the model's code and its own children would see them).

The launcher creates each instance's listening socket on 127.0.0.1 and hands it down as an
inherited file descriptor, so an instance keeps its address when it is restarted and no port is
ever raced for. Each instance also exits by itself when the router's process disappears (it
watches its parent), so a killed router leaves no orphans.

How a process ended (:func:`ended_by_itself`): a non-zero exit status (as from ``os._exit``) or
a crash signal is by its own hand; SIGKILL (``kill -9``, the OOM killer, the hang watcher) and
SIGTERM come from outside.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path

from modelfleet.backends.remote import (
    DRAINING,
    InstanceFullError,
    InstanceUnreachableError,
    RemoteInstance,
    RolloutError,
)
from modelfleet.backends.supervisor import InstanceSpec, Supervisor
from modelfleet.cache.lock import FolderLock
from modelfleet.config import Settings

__all__ = [
    "DRAINING",
    "InstanceFullError",
    "InstanceUnreachableError",
    "LocalBackend",
    "RemoteInstance",
    "RolloutError",
    "SubprocessLauncher",
    "ended_by_itself",
]

logger = logging.getLogger(__name__)

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


def instance_settings(settings: Settings, cache_dir: Path) -> Settings:
    """One instance's settings: scaling is its supervisor's business, the cache folder its own."""
    return settings.model_copy(
        update={
            "cache_dir": cache_dir,
            "instances": 1,
            "min_instances": None,
            "max_instances": None,
            "autoscale_target": 0.0,
        }
    )


class _Process:
    """One ``modelfleet instance`` subprocess (a :class:`~.supervisor.Launched`)."""

    def __init__(self, process: asyncio.subprocess.Process, url: str) -> None:
        self.process = process
        self.url = url
        self.pid: int | None = process.pid
        self.node: str | None = None

    async def ended(self) -> str | None:
        return ended_by_itself(await self.process.wait())

    async def terminate(self, grace_s: float) -> None:
        if self.process.returncode is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), grace_s)
        except TimeoutError:
            logger.warning("instance pid %s ignored SIGTERM; killing it", self.pid)
            self.process.kill()
            await self.process.wait()

    def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()

    async def busy(self) -> bool:
        return False  # only this router sends it requests: its in-flight count is all


class SubprocessLauncher:
    """Starts instances as subprocesses of this process (see the module doc)."""

    def __init__(self, cache_dir: Path) -> None:
        self._root = Path(cache_dir)
        self._sockets: dict[str, socket.socket] = {}
        self._root_lock = FolderLock(self._root)
        self._root_previous = ""  # what the lock said before: put back at stop

    async def start(self) -> None:
        # One live fleet per cache folder: the instances' folders are numbered from 0 in
        # every run, so a second fleet would share them (each instance also locks its own).
        self._root_previous = self._root_lock.acquire()

    async def stop(self) -> None:
        for sock in self._sockets.values():
            sock.close()
        self._sockets.clear()
        # A single server's "clean" (or a crashed one's PID) stays what it was.
        self._root_lock.release(self._root_previous)

    def spec(self, settings: Settings, index: int, instance_id: str, variant: str) -> InstanceSpec:
        own = instance_settings(settings, Path(settings.cache_dir) / f"instance-{index}")
        return InstanceSpec(instance_id, index, variant, own)

    def address(self, spec: InstanceSpec) -> str:
        sock = self._sockets.get(spec.instance_id)
        if sock is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", 0))
            sock.listen(1024)
            sock.set_inheritable(True)
            self._sockets[spec.instance_id] = sock
        return f"http://127.0.0.1:{sock.getsockname()[1]}"

    async def launch(self, spec: InstanceSpec, pending: Callable[[], None]) -> _Process:
        url = self.address(spec)
        fd = self._sockets[spec.instance_id].fileno()
        argv = [sys.executable, "-m", "modelfleet", "instance", "--fd", str(fd)]
        argv += ["--instance-id", spec.instance_id, "--parent-pid", str(os.getpid())]
        argv += ["--variant", spec.variant]
        # The router's log level (``serve --log-level``) is the instances' too.
        level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
        argv += ["--log-level", str(level).lower()]
        env = {**os.environ, **spec.settings.environment} if spec.settings.environment else None
        process = await asyncio.create_subprocess_exec(
            *argv, pass_fds=(fd,), stdin=asyncio.subprocess.PIPE, start_new_session=True, env=env
        )
        assert process.stdin is not None
        process.stdin.write(spec.settings.model_dump_json().encode())
        process.stdin.close()  # the instance reads to the end: its settings are complete
        return _Process(process, url)

    async def release(self, spec: InstanceSpec) -> None:
        sock = self._sockets.pop(spec.instance_id, None)
        if sock is not None:
            sock.close()
        # A removed instance's cache is not reused: free it.
        await asyncio.to_thread(shutil.rmtree, spec.settings.cache_dir, True)


class LocalBackend(Supervisor):
    """``settings.instances`` instance subprocesses of one variant, supervised."""

    def __init__(self, settings: Settings, *, variant: str = "AllTraffic", id_prefix: str = ""):
        super().__init__(
            settings, SubprocessLauncher(settings.cache_dir), variant=variant, id_prefix=id_prefix
        )

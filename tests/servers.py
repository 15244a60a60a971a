"""Real servers for integration tests: uvicorn in a thread, or ``modelfleet serve`` as a process.

Both listen on 127.0.0.1 on a free port and are stopped by the fixture that started them (the
process by its PID: terminate, then kill after a bound).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import uvicorn

from modelfleet.backends.inprocess import InProcessBackend
from modelfleet.config import Settings
from modelfleet.endpoint.app import EndpointServer
from modelfleet.endpoint.variants import EndpointConfig
from modelfleet.listener import Follower, serve_listeners

START_TIMEOUT_S = 60.0
#: how long a test waits for state it expects (an instance up, a copy unloaded): it only bounds a
#: hang, since on an idle machine these waits end within seconds and a loaded one is not a bug
PATIENCE_S = 120.0


def wait_until(condition: Callable[[], bool], what: str, *, poll_s: float = 0.05) -> None:
    """Poll observable state until ``condition()`` holds; fail after ``PATIENCE_S``."""
    deadline = time.monotonic() + PATIENCE_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {PATIENCE_S:.0f} s waiting for {what}")
        time.sleep(poll_s)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ThreadServer:
    """An endpoint served by uvicorn on a background thread of the test process: its public
    listener (``url``) and its admin listener (``admin_url``)."""

    def __init__(self, settings: Settings, endpoints: list[EndpointConfig] | None = None) -> None:
        self.endpoint = EndpointServer(settings, endpoints)
        options: dict[str, Any] = {"host": "127.0.0.1", "port": 0, "log_config": None}
        self._server = uvicorn.Server(
            uvicorn.Config(self.endpoint.app, access_log=False, lifespan="on", **options)
        )
        self._admin: list[Follower] = []
        if self.endpoint.admin_app is not None:
            admin = uvicorn.Config(self.endpoint.admin_app, lifespan="off", **options)
            self._admin.append(Follower(admin, self._server))
        self._thread = threading.Thread(target=self._run, name="test-uvicorn", daemon=True)
        self.url = ""
        self.admin_url = ""

    def _run(self) -> None:
        asyncio.run(serve_listeners(self._server, self._admin))

    def start(self) -> ThreadServer:
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("test server did not start")
            time.sleep(0.01)
        port = self._server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.admin_url = self.url  # the SageMaker container mode: one listener
        for server in self._admin:
            self.admin_url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)

    @property
    def manager(self) -> Any:
        (endpoint,) = self.endpoint.endpoints.values()
        (backend,) = endpoint.backends.values()
        assert isinstance(backend, InProcessBackend), "one instance, in this process"
        return backend.manager


@contextlib.contextmanager
def thread_server(settings: Settings) -> Iterator[ThreadServer]:
    server = ThreadServer(settings).start()
    try:
        yield server
    finally:
        server.stop()


class ProcessServer:
    """``python -m modelfleet serve`` in a child process."""

    def __init__(
        self,
        args: list[str],
        *,
        env: dict[str, str] | None = None,
        log: Path,
        tls_ca: Path | None = None,
    ) -> None:
        self.port = free_port()
        # with ``tls_ca`` the server speaks HTTPS with a certificate that CA file verifies
        self._scheme = "https" if tls_ca is not None else "http"
        self._verify: ssl.SSLContext | bool = True
        if tls_ca is not None:
            self._verify = ssl.create_default_context(cafile=str(tls_ca))
        self.url = f"{self._scheme}://127.0.0.1:{self.port}"
        self.admin_port = free_port()
        self.admin_url = f"{self._scheme}://127.0.0.1:{self.admin_port}"
        self._args = [
            sys.executable,
            "-m",
            "modelfleet",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--admin-port",
            str(self.admin_port),
            *args,
        ]
        self._env = {**os.environ, **(env or {})}
        self._log_path = log
        self.proc: subprocess.Popen[bytes] | None = None
        self._port_tries = 0

    def start(self) -> ProcessServer:
        log = self._log_path.open("ab")
        self.proc = subprocess.Popen(self._args, env=self._env, stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                text = self._log_path.read_text()
                if "address already in use" in text and self._port_tries < 3:
                    # the free port was taken meanwhile (Ray's processes bind many): another
                    self._port_tries += 1
                    self.port = free_port()
                    self.admin_port = free_port()
                    self.url = f"{self._scheme}://127.0.0.1:{self.port}"
                    self.admin_url = f"{self._scheme}://127.0.0.1:{self.admin_port}"
                    self._args[self._args.index("--port") + 1] = str(self.port)
                    self._args[self._args.index("--admin-port") + 1] = str(self.admin_port)
                    return self.start()
                raise RuntimeError(f"server exited early:\n{text}")
            try:
                ping = httpx.get(f"{self.url}/ping", timeout=1, verify=self._verify)
            except httpx.HTTPError:
                ping = None
            except BaseException:  # never leave the child running behind a failed start
                self.stop()
                raise
            if ping is not None and ping.status_code == 200:
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"server did not start:\n{self._log_path.read_text()}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


@contextlib.contextmanager
def process_server(
    args: list[str], *, log: Path, env: dict[str, str] | None = None, tls_ca: Path | None = None
) -> Iterator[ProcessServer]:
    server = ProcessServer(args, env=env, log=log, tls_ca=tls_ca).start()
    try:
        yield server
    finally:
        server.stop()


def metric(text: str, name: str) -> float:
    """The value of the first sample of ``name`` in Prometheus text (0 if absent)."""
    for line in text.splitlines():
        if line.startswith(name) and (len(line) == len(name) or line[len(name)] in " {"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def keep_invoking(
    url: str,
    models: list[str],
    body: bytes,
    statuses: list[int],
    stop: threading.Event,
    *,
    pause_s: float = 0.0,
    limit: int = 50_000,
    endpoint: str = "default",
) -> None:
    """One client (run it in a thread): invoke ``models`` in turn on ``endpoint`` of the
    server at ``url``, appending each status, until ``stop`` is set or ``limit`` requests
    were made."""
    with httpx.Client(base_url=url, timeout=60) as http:
        index = 0
        while not stop.is_set() and len(statuses) < limit:
            response = http.post(
                f"/endpoints/{endpoint}/invocations",
                content=body,
                headers={
                    "X-Amzn-SageMaker-Target-Model": models[index % len(models)],
                    "Content-Type": "text/csv",
                },
            )
            statuses.append(response.status_code)
            index += 1
            time.sleep(pause_s)


@contextlib.contextmanager
def invoking(
    url: str,
    models: list[str],
    body: bytes,
    statuses: list[int],
    *,
    clients: int = 1,
    pause_s: float = 0.0,
    endpoint: str = "default",
) -> Iterator[None]:
    """``clients`` threads running :func:`keep_invoking` for the body of the ``with``."""
    stop = threading.Event()
    threads = [
        threading.Thread(
            target=keep_invoking,
            args=(url, models, body, statuses, stop),
            kwargs={"pause_s": pause_s, "endpoint": endpoint},
            name=f"test-client-{index}",
        )
        for index in range(clients)
    ]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)


def fleet_instances(server: ProcessServer) -> list[dict[str, Any]]:
    """The fleet's instances as ``/admin/instances`` lists them."""
    response = httpx.get(f"{server.admin_url}/admin/instances", timeout=30)
    listed: list[dict[str, Any]] = response.json()["instances"]
    return listed


def process_gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie waiting for its parent counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@contextlib.contextmanager
def process_fleet(
    source: Path, tmp_path: Path, count: int
) -> Iterator[tuple[ProcessServer, set[int]]]:
    """``serve --instances count`` and the instance PIDs seen (a test adds restarted ones).
    Afterwards every one of them must be gone: a process the router left behind is killed by
    PID, and the check fails."""
    args = ["--model-source", str(source), "--cache-dir", str(tmp_path / "cache")]
    args += ["--instances", str(count), "--log-level", "warning"]
    seen: set[int] = set()
    try:
        with process_server(args, log=tmp_path / "server.log") as server:
            seen.update(i["pid"] for i in fleet_instances(server))
            try:
                yield server, seen
            finally:
                seen.update(i["pid"] for i in fleet_instances(server) if i["pid"])
    finally:
        deadline = time.monotonic() + PATIENCE_S
        while not all(process_gone(pid) for pid in seen) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = [pid for pid in seen if not process_gone(pid)]
        for pid in left:  # a failure here must not leave processes behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert not left, f"instance processes left after the router stopped: {left}"

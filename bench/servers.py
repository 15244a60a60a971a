"""Servers under test as subprocesses: start one, wait until it answers, stop it by its PID.

Every server listens on 127.0.0.1 only. A server is started in its own session (process group)
and stopped by that group's id, which is its PID: SIGTERM (SIGINT for Ray, whose driver shuts
its cluster down on it), then SIGKILL after a bound. Benchmarks that start Ray re-execute
themselves inside a network namespace that has only loopback (:func:`ensure_isolated`), so Ray
never sees a route to anything but this machine; the load generator runs in the same namespace.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PEERS = ROOT / "bench" / "peers"
VENVS = ROOT / "bench" / ".venvs"
MAIN_PYTHON = sys.executable
#: uvloop and httptools, installed apart from the project (``--target``) by ``peers/setup.sh``;
#: put on ``PYTHONPATH`` they give uvicorn's ``auto`` loop and parser their fast choices
FAST_SITE = VENVS / "uvfast"
_ISOLATED_ENV = "MODELFLEET_BENCH_NETNS"


class ServerError(RuntimeError):
    """A server under test did not start, or a peer is unavailable."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(url: str, timeout_s: float = 5.0) -> tuple[int, bytes]:
    """GET ``url`` (loopback only); the status and body, or (-1, b"") when unreachable."""
    if not url.startswith("http://127.0.0.1:"):
        raise ValueError(f"benchmarks only talk to 127.0.0.1, not {url}")
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, b""
    except (urllib.error.URLError, OSError):
        return -1, b""


@dataclass
class Server:
    """One server process: the command, where it answers, and how to tell it is ready."""

    name: str
    argv: list[str]
    port: int
    ready_path: str = "/ping"
    env: dict[str, str] = field(default_factory=dict)
    start_timeout_s: float = 120.0
    stop_signal: int = signal.SIGTERM
    cwd: Path | None = None
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    started_s: float = 0.0
    admin_port: int | None = None  # modelfleet's admin listener (/metrics, /admin/*)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port or self.port}"

    def start(self, log_dir: Path) -> Server:
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{self.name}.log"
        began = time.perf_counter()
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
                cwd=self.cwd,
                start_new_session=True,
            )
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(
                    f"{self.name} exited with {self.process.returncode}: {self.tail()}"
                )
            if http_get(self.url + self.ready_path, timeout_s=2.0)[0] == 200:
                self.started_s = time.perf_counter() - began
                return self
            time.sleep(0.25)
        self.stop()
        raise ServerError(f"{self.name} not ready after {self.start_timeout_s:g} s: {self.tail()}")

    def tail(self, lines: int = 8) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        text = self.log_path.read_text(errors="replace").strip().splitlines()
        return " | ".join(text[-lines:])

    @property
    def pid(self) -> int:
        if self.process is None:
            raise ServerError(f"{self.name} is not running")
        return self.process.pid

    def stop(self, timeout_s: float = 30.0) -> None:
        """Signal the server's process group (its PID), then kill the group after a bound."""
        process = self.process
        if process is None:
            return
        self.process = None
        for sig, wait_s in ((self.stop_signal, timeout_s), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
            try:
                process.wait(timeout=wait_s)
                break
            except subprocess.TimeoutExpired:
                continue
        # Children that outlived the leader (Ray's raylet, MLServer's workers) share its group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def uvicorn_env(fast: bool) -> dict[str, str]:
    """The environment that gives uvicorn uvloop + httptools (``fast``) or asyncio + h11."""
    path = os.environ.get("PYTHONPATH", "")
    if fast:
        path = f"{FAST_SITE}{os.pathsep}{path}" if path else str(FAST_SITE)
    return {"PYTHONPATH": path}


def venv_python(name: str) -> Path:
    return VENVS / name / "bin" / "python"


def setup_peers(peers: Sequence[str], *, timeout_s: float = 900.0) -> dict[str, str]:
    """Run ``peers/setup.sh`` for ``peers``; a map of peer -> reason for each one unavailable."""
    unavailable: dict[str, str] = {}
    for peer in peers:
        began = time.perf_counter()
        try:
            done = subprocess.run(
                ["bash", str(PEERS / "setup.sh"), peer],
                capture_output=True,
                text=True,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired:
            unavailable[peer] = f"setup.sh {peer} took over {timeout_s:g} s"
            continue
        took = time.perf_counter() - began
        if done.returncode != 0:
            lines = (done.stdout + done.stderr).strip().splitlines()
            unavailable[peer] = "setup failed: " + " | ".join(lines[-3:])
        else:
            print(f"peer {peer} ready ({took:.1f} s setup)", file=sys.stderr)
    return unavailable


def is_isolated() -> bool:
    """True inside a network namespace whose only interface is loopback."""
    try:  # /proc/self/net follows this process's namespace (/sys/class/net may not)
        lines = Path("/proc/self/net/dev").read_text().splitlines()[2:]
    except OSError:
        return False
    return [line.split(":", 1)[0].strip() for line in lines] == ["lo"]


def ensure_isolated(module: str, argv: Sequence[str]) -> None:
    """Re-execute ``python -m module argv`` inside a loopback-only network namespace.

    Returns only when already isolated; otherwise replaces this process (same PID).
    """
    if is_isolated():
        return
    if os.environ.get(_ISOLATED_ENV):
        raise ServerError("re-executed into a network namespace that still has other interfaces")
    script = 'ip link set lo up && exec "$@"'
    command = ["unshare", "--net", "bash", "-c", script, "bash"]
    command += [MAIN_PYTHON, "-m", module, *argv]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe("unshare", command, {**os.environ, _ISOLATED_ENV: "1"})


#: Ray's smallest object store: the benchmarks pass no objects through it
RAY_OBJECT_STORE_BYTES = 78_643_200


@contextlib.contextmanager
def ray_cluster(workers: int) -> Iterator[str]:
    """A Ray cluster on this machine for the ``ray`` backend (``ray.cluster_utils.Cluster``):
    a head node with no CPUs and ``workers`` worker nodes of one CPU each, all bound to
    127.0.0.1, no dashboard, the object store at its minimum; yields its address. It is stopped
    on the way out by ``Cluster.shutdown()``, which ends the processes it started by PID (never
    ``ray stop``). Only inside a loopback-only network namespace (:func:`is_isolated`)."""
    if not is_isolated():
        raise ServerError("Ray must start inside a loopback-only network namespace")
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # also for every process Ray starts
    from ray.cluster_utils import Cluster

    node = {"object_store_memory": RAY_OBJECT_STORE_BYTES, "node_ip_address": "127.0.0.1"}
    cluster = Cluster()
    try:
        cluster.add_node(num_cpus=0, include_dashboard=False, **node)
        for _ in range(workers):
            cluster.add_node(num_cpus=1, **node)
        cluster.wait_for_nodes()
        yield str(cluster.address)
    finally:
        cluster.shutdown()


def run_loadgen(
    url: str,
    *,
    concurrency: int,
    duration_s: float,
    headers: dict[str, str],
    body_file: Path,
    targets_file: Path | None = None,
    warmup: int = 50,
    timeout_s: float = 600.0,
    requests: int | None = None,
) -> dict[str, Any]:
    """Run ``bench.loadgen`` as its own process and return its JSON figures."""
    argv = [MAIN_PYTHON, "-m", "bench.loadgen", "--url", url]
    argv += ["--concurrency", str(concurrency), "--duration", str(duration_s)]
    argv += ["--warmup", str(warmup), "--body-file", str(body_file)]
    for name, value in headers.items():
        argv += ["--header", f"{name}: {value}"]
    if targets_file is not None:
        argv += ["--targets-file", str(targets_file)]
    if requests is not None:
        argv += ["--requests", str(requests)]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout_s, check=False, cwd=ROOT
    )
    if done.returncode != 0:
        raise ServerError(f"loadgen failed: {done.stderr.strip()[-400:]}")
    figures: dict[str, Any] = json.loads(done.stdout)
    return figures


def replay(url: str, *, concurrency: int, trace: Path, body: Path) -> dict[str, Any]:
    """Send every request of ``trace`` (a target model per line) once to the server at ``url``,
    closed loop at ``concurrency``, each with the CSV ``body``; the load generator's figures."""
    return run_loadgen(
        f"{url}/endpoints/default/invocations",
        concurrency=concurrency,
        duration_s=3600.0,
        headers={"Content-Type": "text/csv"},
        body_file=body,
        targets_file=trace,
        warmup=0,
    )


# ---------------------------------------------------------------- the systems under test


def modelfleet(
    port: int,
    source: Path,
    cache_dir: Path,
    *,
    memory_limit: str = "2GiB",
    walk_trees: bool = True,
    instances: int = 1,
    extra: Sequence[str] = (),
    src: Path | None = None,
) -> Server:
    """``modelfleet serve`` on ``source`` (uvloop + httptools: its own dependencies).

    ``memory_limit`` is per instance (``instances`` > 1: the ``local`` backend). ``src``: the
    ``src`` folder of another checkout to run modelfleet from (a build to compare with)."""
    argv = [MAIN_PYTHON, "-m", "modelfleet", "serve", "--model-source", str(source)]
    admin_port = free_port()
    argv += ["--port", str(port), "--admin-port", str(admin_port), "--cache-dir", str(cache_dir)]
    argv += ["--state-dir", str(cache_dir.parent / f"{cache_dir.name}-state")]
    argv += ["--memory-limit", memory_limit, "--log-level", "warning"]
    if not walk_trees:
        argv.append("--no-walk-trees")
    if instances > 1:
        argv += ["--instances", str(instances)]
    argv += list(extra)
    name = "modelfleet" if walk_trees else "modelfleet-predict"
    name += f"-x{instances}" if instances > 1 else ""
    env = uvicorn_env(False)
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(src), env["PYTHONPATH"]) if p)
    server = Server(name, argv, port, env=env, cwd=ROOT)
    server.admin_port = admin_port
    return server


def bare(port: int, model: Path, *, fast: bool = False, threaded: bool = False) -> Server:
    """The bare Starlette app over one model file."""
    argv = [MAIN_PYTHON, "-m", "bench.peers.bare_app", "--model", str(model)]
    argv += ["--port", str(port), *_uvicorn_flags(fast)]
    if threaded:
        argv.append("--threaded")
    name = "bare" + ("-fast" if fast else "") + ("-thread" if threaded else "")
    return Server(f"{name}-{model.stem}", argv, port, env=uvicorn_env(fast), cwd=ROOT)


def bare_lru(
    port: int, model_dir: Path, budget: int, *, models: bool = False, fast: bool = False
) -> Server:
    """The bare LRU multi-model app: ``budget`` bytes, or ``budget`` models (``models``: the
    count-LRU, loading on its event loop)."""
    argv = [MAIN_PYTHON, "-m", "bench.peers.bare_lru", "--model-dir", str(model_dir)]
    argv += ["--budget-models" if models else "--budget-bytes", str(budget)]
    argv += ["--port", str(port), *_uvicorn_flags(fast)]
    name = "bare-lru-count" if models else "bare-lru"
    return Server(name, argv, port, env=uvicorn_env(fast), cwd=ROOT)


def _uvicorn_flags(fast: bool) -> list[str]:
    return ["--loop", "uvloop", "--http", "httptools"] if fast else []


#: Ray Serve's documented high-throughput switches (Ray >= 2.55): HAProxy ingress in front of
#: direct-ingress replicas, and the throughput-optimized request path
RAY_BEST_ENV = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_HA_PROXY": "1"}


def ray_serve(
    port: int,
    model_dir: Path,
    *,
    best: bool,
    max_models: int,
    replicas: int = 1,
    max_ongoing: int | None = None,
) -> Server:
    """The Ray Serve peer; must be started inside a loopback-only network namespace."""
    if not is_isolated():
        raise ServerError("Ray must start inside a loopback-only network namespace")
    python = venv_python("ray")
    if not python.exists():
        raise ServerError("not installed (bench/peers/setup.sh ray)")
    argv = [str(python), str(PEERS / "ray_app.py"), "--port", str(port)]
    argv += ["--model-dir", str(model_dir), "--max-models", str(max_models)]
    argv += ["--replicas", str(replicas)]
    if max_ongoing is not None:
        argv += ["--max-ongoing", str(max_ongoing)]
    env = {"RAY_USAGE_STATS_ENABLED": "0", **(RAY_BEST_ENV if best else {})}
    name = "ray-best" if best else "ray-default"
    return Server(name, argv, port, env=env, stop_signal=signal.SIGINT, start_timeout_s=180.0)


def mlserver(
    port: int, workdir: Path, models: dict[str, Path], *, options: dict[str, Any], name: str
) -> Server:
    """MLServer with mlserver-sklearn serving ``models`` (name -> joblib file).

    ``options`` are settings over MLServer's defaults (``parallel_workers``, ``debug``...).
    """
    executable = VENVS / "mlserver" / "bin" / "mlserver"
    if not executable.exists():
        raise ServerError("not installed (bench/peers/setup.sh mlserver)")
    workdir.mkdir(parents=True, exist_ok=True)
    settings = json.loads((PEERS / "mlserver" / "settings.json").read_text())
    settings.update(options, http_port=port, grpc_port=free_port(), metrics_port=free_port())
    (workdir / "settings.json").write_text(json.dumps(settings))
    template = json.loads((PEERS / "mlserver" / "model-settings.json").read_text())
    for name, path in models.items():
        folder = workdir / name
        folder.mkdir(exist_ok=True)
        model_settings = {**template, "name": name}
        model_settings["parameters"] = {**template["parameters"], "uri": str(path)}
        (folder / "model-settings.json").write_text(json.dumps(model_settings))
    first = next(iter(models))
    argv = [str(executable), "start", str(workdir)]
    return Server(name, argv, port, ready_path=f"/v2/models/{first}/ready")


def source_revision() -> str:
    """The measured tree's commit, with ``+dirty`` when ``src/`` has uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "src"], capture_output=True, text=True, cwd=ROOT
        ).stdout.strip()
    except OSError:
        return "unknown"
    return f"{head}+dirty" if dirty else head or "unknown"

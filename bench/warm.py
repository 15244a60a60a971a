"""Warm path: one loaded model, 10 features, 1 row per request, closed loop at concurrency 1 and 16.

``python -m bench.warm [--quick] [--peers] [--systems a,b,...]``

Systems: ``bare`` (Starlette + uvicorn calling ``predict``, on modelfleet's stack: asyncio + h11),
``bare-fast`` (uvloop + httptools), ``bare-thread`` (``predict`` in a thread pool, as a server that
keeps its loop free must), ``modelfleet`` (uvloop + httptools, its own dependencies: compare it
with ``bare-fast``), ``modelfleet-predict`` (the same with ``--no-walk-trees``: scikit-learn's own
forest ``predict``, as every other system calls it, so the serving overhead alone),
``modelfleet-baseline`` (``modelfleet`` run from the checkout ``--baseline-src`` names: two
builds compared), ``modelfleet-accesslog`` (``modelfleet`` writing ``--access-log``),
``modelfleet-sigv4`` (``modelfleet`` with ``--auth sigv4``: every request's
signature verified;
the requests are signed once by botocore's signer, so the client spends nothing on it), Ray Serve
with ``@serve.multiplexed`` in its defaults (``ray-default``) and its documented high-throughput
configuration (``ray-best``), and MLServer with mlserver-sklearn (``mlserver-default``: one
parallel worker; ``mlserver-best``: inference in the server process). Models: a scikit-learn
``LogisticRegression`` (serving overhead dominates) and a 10-tree ``RandomForestRegressor``.
Every figure is also shown as a ratio to ``bare`` measured in the same run. ``cpu_us`` is the
server process's CPU time (user + system) per request: what a change costs the server, and
steadier than throughput on a busy machine. MLServer is sent the
same row as a V2 inference request (JSON, ``FP64``, shape [1, 10]) instead of CSV.

``--paired N --systems a,b`` runs two systems at once and alternates short slices between them
(A B B A ...), reporting the median of the N pairs' ratios: the way to measure a small
difference on a shared machine.

Full mode runs two rounds over all systems (interleaved, 4 s per measurement) and keeps each
cell's best round, with the spread between rounds: the machine is shared and noisy. Quick mode
measures modelfleet and bare once, 3 s each (``--peers`` adds the peers). Ray is started only
inside a loopback-only network namespace: with Ray among the systems the benchmark re-executes
itself under ``unshare --net`` (the servers and the load generator all live there).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import psutil

from bench import servers
from bench.common import parser, print_table, write_results
from bench.servers import Server, ServerError
from tests.artifacts import features, train_sklearn

N_FEATURES = 10
CONCURRENCIES = (1, 16)
QUICK_SYSTEMS = ("bare", "modelfleet")
FULL_SYSTEMS = (
    "bare",
    "bare-fast",
    "bare-thread",
    "modelfleet",
    "modelfleet-predict",
    "modelfleet-sigv4",
    "ray-default",
    "ray-best",
    "mlserver-default",
    "mlserver-best",
)
PEER_NEEDS = {"ray-default": "ray", "ray-best": "ray", "mlserver-default": "mlserver"}
PEER_NEEDS |= {"mlserver-best": "mlserver", "bare-fast": "uvfast"}
#: Ray Serve's best configuration here (tried: 1 or 2 replicas, max_ongoing_requests 5, 32, 64)
RAY_BEST = {"replicas": 1, "max_ongoing": 64}
#: MLServer's best configuration here: no debug logging, no gzip or metrics middleware, and
#: inference in the server process (tried: 0, 1 and 2 parallel workers)
MLSERVER_BEST: dict[str, Any] = {
    "debug": False,
    "gzip_enabled": False,
    "metrics_endpoint": None,
    "parallel_workers": 0,
}
TARGET_HEADER = "X-Amzn-SageMaker-Target-Model"


def build_models(folder: Path) -> dict[str, Path]:
    """The two models as joblib files: ``logreg.joblib`` and ``forest.joblib``."""
    from sklearn.linear_model import LogisticRegression

    x = features(0, 500, N_FEATURES)
    y = (x @ np.linspace(-1.0, 1.0, N_FEATURES) > 0).astype(int)
    models = {
        "logreg": LogisticRegression(max_iter=200).fit(x, y),
        "forest": train_sklearn(seed=0, n_features=N_FEATURES, n_trees=10),
    }
    paths = {}
    for name, estimator in models.items():
        paths[name] = folder / f"{name}.joblib"
        joblib.dump(estimator, paths[name])
    return paths


SIGV4_KEY = ("AKIDBENCHWARM001", "bench-warm-secret-key")


def signed(target: Target) -> Target:
    """``target`` with SigV4 headers made once by botocore's signer (as boto3 signs): the
    server verifies every request as if new (it cannot tell a replay within the 5-minute window
    from a fresh request), and the load generator spends no CPU signing."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    request = AWSRequest(
        method="POST", url=target.url, data=target.body_file.read_bytes(), headers=target.headers
    )
    SigV4Auth(Credentials(*SIGV4_KEY), "sagemaker", "us-east-1").add_auth(request)
    return Target(target.url, dict(request.headers.items()), target.body_file, target.pid)


@dataclass(frozen=True)
class Target:
    """How to invoke one model on one running server."""

    url: str
    headers: dict[str, str]
    body_file: Path
    pid: int


class Bench:
    """The run's scratch folder, the models and the request bodies."""

    def __init__(self, work: Path, baseline_src: Path | None = None) -> None:
        self.work = work
        self.baseline_src = baseline_src  # modelfleet-baseline runs modelfleet from here
        self.source = work / "models"
        self.source.mkdir()
        self.models = build_models(self.source)
        row = features(7, 1, N_FEATURES)[0]
        self.csv = work / "row.csv"
        self.csv.write_text(",".join(f"{v:.6f}" for v in row) + "\n")
        v2 = {"inputs": [{"name": "x", "shape": [1, N_FEATURES], "datatype": "FP64"}]}
        v2["inputs"][0]["data"] = [round(float(v), 6) for v in row]
        self.v2 = work / "row-v2.json"
        self.v2.write_text(json.dumps(v2))

    def sagemaker(self, server: Server, model: str) -> Target:
        headers = {"Content-Type": "text/csv", TARGET_HEADER: f"{model}.joblib"}
        url = f"{server.url}/endpoints/default/invocations"
        return Target(url, headers, self.csv, server.pid)

    def start(self, system: str) -> tuple[list[Server], Callable[[str], Target]]:
        """Start ``system``; its servers and how to reach each model on them."""
        port = servers.free_port
        logs = self.work / "logs"
        if system.startswith("bare"):
            fast, threaded = "fast" in system, "thread" in system
            started = {
                name: servers.bare(port(), path, fast=fast, threaded=threaded).start(logs)
                for name, path in self.models.items()
            }
            return list(started.values()), lambda m: self.sagemaker(started[m], m)
        if system == "modelfleet-sigv4":
            credentials = self.work / "credentials.toml"
            credentials.write_text(
                f'[[keys]]\naccess_key_id = "{SIGV4_KEY[0]}"\n'
                f'secret_access_key = "{SIGV4_KEY[1]}"\n'
            )
            extra = ["--auth", "sigv4", "--credentials-file", str(credentials)]
            one = servers.modelfleet(
                port(), self.source, self.work / f"cache-{system}", extra=extra
            )
            one.name = system
            one.start(logs)
            return [one], lambda m: signed(self.sagemaker(one, m))
        if system == "modelfleet-accesslog":
            log = self.work / "access.tsv"
            extra = ["--access-log", str(log), "--access-log-max-bytes", "64MiB"]
            one = servers.modelfleet(
                port(), self.source, self.work / f"cache-{system}", extra=extra
            )
            one.name = system
            one.start(logs)
            return [one], lambda m: self.sagemaker(one, m)
        if system == "modelfleet-headers":  # no authentication, the signed requests' headers
            one = servers.modelfleet(port(), self.source, self.work / f"cache-{system}")
            one.name = system
            one.start(logs)
            return [one], lambda m: signed(self.sagemaker(one, m))
        if system == "modelfleet-baseline":
            if self.baseline_src is None:
                raise SystemExit("modelfleet-baseline needs --baseline-src")
            cache = self.work / f"cache-{system}"
            one = servers.modelfleet(port(), self.source, cache, src=self.baseline_src)
            one.name = system
            one.start(logs)
            return [one], lambda m: self.sagemaker(one, m)
        if system.startswith("modelfleet"):
            cache = self.work / f"cache-{system}"
            walk = system != "modelfleet-predict"
            one = servers.modelfleet(port(), self.source, cache, walk_trees=walk)
            one.start(logs)
            return [one], lambda m: self.sagemaker(one, m)
        if system.startswith("ray"):
            options = RAY_BEST if system == "ray-best" else {}
            best = system == "ray-best"
            ray = servers.ray_serve(port(), self.source, best=best, max_models=3, **options)
            ray.start(logs)
            return [ray], lambda m: self.sagemaker(ray, m)
        if system.startswith("mlserver"):
            options = MLSERVER_BEST if system == "mlserver-best" else {}
            ml = servers.mlserver(
                port(), self.work / system, self.models, options=options, name=system
            )
            ml.start(logs)

            def v2(model: str) -> Target:
                headers = {"Content-Type": "application/json"}
                return Target(f"{ml.url}/v2/models/{model}/infer", headers, self.v2, ml.pid)

            return [ml], v2
        raise ServerError(f"unknown system {system}")


#: where a sampled stack's time goes: the deepest frame whose file matches a pattern names it
PROFILE_CATEGORIES = (
    ("modelfleet/handlers/codecs", "codecs: CSV in, JSON out"),
    ("bench/peers/", "codecs: CSV in, JSON out"),
    ("modelfleet/metrics", "metrics"),
    ("prometheus_client/", "metrics"),
    ("modelfleet/edge", "modelfleet edge: request id, body, errors"),
    ("modelfleet/handlers/sklearn", "predict (scikit-learn, numpy)"),  # the forest walk
    ("modelfleet/", "modelfleet endpoint, router, manager"),
    ("sklearn/", "predict (scikit-learn, numpy)"),
    ("joblib/", "predict (scikit-learn, numpy)"),
    ("concurrent/futures/", "thread-pool hop"),
    ("starlette/", "starlette: routing, Request, Response"),
    ("h11/", "HTTP: uvicorn protocol and parser"),
    ("uvicorn/", "HTTP: uvicorn protocol and parser"),
    ("asyncio/", "event loop (asyncio)"),
    ("uvloop", "event loop (uvloop)"),
)
PY_SPY = servers.VENVS / "tools" / "bin" / "py-spy"
PROFILE_RATE_HZ = 250


class Profiler:
    """py-spy sampling one server process (non-blocking, idle threads left out)."""

    def __init__(self, pid: int, output: Path, duration_s: float) -> None:
        if not PY_SPY.exists():
            raise ServerError("py-spy not installed (bench/peers/setup.sh tools)")
        self.output = output
        argv = [str(PY_SPY), "record", "--pid", str(pid), "--rate", str(PROFILE_RATE_HZ)]
        argv += ["--duration", str(max(1, round(duration_s))), "--nonblocking"]
        argv += ["--format", "raw", "--output", str(output)]
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def summary(self, requests: int) -> dict[str, float]:
        """CPU microseconds per request in each category (samples / rate / requests)."""
        _, err = self.process.communicate(timeout=120)
        if self.process.returncode != 0 or not self.output.exists():
            raise ServerError(f"py-spy failed: {err.decode(errors='replace')[-300:]}")
        totals: dict[str, float] = {}
        for line in self.output.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            category = "other (interpreter, GC, stdlib)"
            for frame in reversed(stack.split(";")):
                match = next((c for pattern, c in PROFILE_CATEGORIES if pattern in frame), None)
                if match is not None:
                    category = match
                    break
            totals[category] = totals.get(category, 0.0) + int(count)
        scale = 1e6 / PROFILE_RATE_HZ / max(requests, 1)
        return {c: round(n * scale, 1) for c, n in sorted(totals.items(), key=lambda kv: -kv[1])}


WARMUP_REQUESTS = 100


def server_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) the server process ``pid`` has used so far.

    Per request, this is what a change costs the server, and it moves far less than throughput
    when the shared machine is busy (throughput runs of one build spread by up to 60% here).
    """
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def measure_once(
    bench: Bench, system: str, duration_s: float, profile: bool = False
) -> list[dict[str, Any]]:
    """Start ``system``, measure every model at every concurrency, stop it.

    With ``profile``, py-spy samples the server during each run at the highest concurrency.
    """
    running, target = bench.start(system)
    rows = []
    try:
        for model in bench.models:
            for concurrency in CONCURRENCIES:
                t = target(model)
                spy = None
                if profile and concurrency == max(CONCURRENCIES):
                    spy = Profiler(t.pid, bench.work / f"{system}-{model}.txt", duration_s)
                cpu_s = server_cpu_s(t.pid)
                figures = servers.run_loadgen(
                    t.url,
                    concurrency=concurrency,
                    duration_s=duration_s,
                    headers=t.headers,
                    body_file=t.body_file,
                    warmup=WARMUP_REQUESTS,
                )
                cpu_s = server_cpu_s(t.pid) - cpu_s
                rows.append({"system": system, "model": model, "concurrency": concurrency})
                rows[-1].update(figures)
                served = int(figures["ok"]) + WARMUP_REQUESTS
                rows[-1]["cpu_us"] = round(cpu_s * 1e6 / max(served, 1), 1)
                if spy is not None:
                    rows[-1]["profile_us"] = spy.summary(int(figures["ok"]))
                print(
                    f"{system:17} {model:7} c={concurrency:<3} "
                    f"{figures['throughput']:8.1f} req/s  p50 {figures['p50_ms']:.2f} ms",
                    file=sys.stderr,
                )
    finally:
        for server in running:
            server.stop()
    return rows


def measure(
    bench: Bench, systems: list[str], duration_s: float, rounds: int, profile: bool = False
) -> list[dict[str, Any]]:
    """``rounds`` rounds over the systems (interleaved, so slow spells of a shared machine hit
    all of them); each cell keeps its best round, and the spread of its throughputs."""
    cells: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    failed: dict[str, str] = {}
    for _ in range(rounds):
        for system in systems:
            if system in failed:
                continue
            began = time.perf_counter()
            try:
                rows = measure_once(bench, system, duration_s, profile)
            except ServerError as exc:
                print(f"{system}: unavailable: {exc}", file=sys.stderr)
                failed[system] = str(exc)[:300]
                continue
            for row in rows:
                cells.setdefault((system, row["model"], row["concurrency"]), []).append(row)
            print(f"{system}: {time.perf_counter() - began:.1f} s in all", file=sys.stderr)
    best: list[dict[str, Any]] = []
    for runs in cells.values():
        top = max(runs, key=lambda r: float(r["throughput"]))
        rates = [float(r["throughput"]) for r in runs]
        best.append({**top, "rounds": rates, "spread": (max(rates) - min(rates)) / max(rates)})
    best += [{"system": s, "unavailable": reason} for s, reason in failed.items()]
    return best


def measure_paired(
    bench: Bench,
    systems: list[str],
    duration_s: float,
    pairs: int,
    concurrencies: tuple[int, ...] = CONCURRENCIES,
) -> list[dict[str, Any]]:
    """Two systems up at once, measured in alternating short slices (A B B A ...), each slice
    of one paired with the neighbouring slice of the other: the ratio of a pair is taken over
    a second or two, so the slow spells of a shared machine (which move single runs by 30% or
    more here) hit both sides of it. Per model and concurrency: the median of each side, and
    the median and quartiles of the pairs' ratios (second system / first)."""
    first, second = systems
    started = {system: bench.start(system) for system in systems}
    rows: list[dict[str, Any]] = []
    try:
        for model in bench.models:
            for concurrency in concurrencies:
                slices: dict[str, list[tuple[float, float]]] = {first: [], second: []}
                for index in range(2 * pairs):
                    system = first if index % 4 in (0, 3) else second  # A B B A A B B A ...
                    t = started[system][1](model)
                    cpu_s = server_cpu_s(t.pid)
                    figures = servers.run_loadgen(
                        t.url,
                        concurrency=concurrency,
                        duration_s=duration_s,
                        headers=t.headers,
                        body_file=t.body_file,
                        warmup=WARMUP_REQUESTS,
                    )
                    if figures["errors"]:
                        raise ServerError(f"{system}: {figures['failures'][:1]}")
                    cpu_us = (server_cpu_s(t.pid) - cpu_s) * 1e6 / (figures["ok"] + WARMUP_REQUESTS)
                    slices[system].append((float(figures["throughput"]), cpu_us))
                a, b = slices[first], slices[second]
                ratios = sorted(y[0] / x[0] for x, y in zip(a, b, strict=True))
                cpu_ratios = sorted(y[1] / x[1] for x, y in zip(a, b, strict=True))
                q1, median, q3 = statistics.quantiles(ratios, n=4)
                row = {"model": model, "concurrency": concurrency, "pairs": pairs}
                row[f"{first}_rps"] = statistics.median(x[0] for x in a)
                row[f"{second}_rps"] = statistics.median(x[0] for x in b)
                row.update(ratio=median, ratio_q1=q1, ratio_q3=q3)
                row[f"{first}_cpu_us"] = statistics.median(x[1] for x in a)
                row[f"{second}_cpu_us"] = statistics.median(x[1] for x in b)
                row["cpu_ratio"] = statistics.median(cpu_ratios)
                row["slices"] = {first: a, second: b}
                rows.append(row)
                print(
                    f"{model:7} c={concurrency:<3} {second}/{first} throughput {median:.3f} "
                    f"(quartiles {q1:.3f}-{q3:.3f}), server CPU {row['cpu_ratio']:.3f}",
                    file=sys.stderr,
                )
    finally:
        for running, _ in started.values():
            for server in running:
                server.stop()
    return rows


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Throughput and server-CPU ratios and the p50 difference to ``bare`` of the same model
    and concurrency."""
    bare = {(r["model"], r["concurrency"]): r for r in rows if r.get("system") == "bare"}
    for row in rows:
        base = bare.get((row.get("model"), row.get("concurrency")))
        if base is None or "throughput" not in row:
            continue
        row["vs_bare"] = row["throughput"] / base["throughput"] if base["throughput"] else None
        row["p50_vs_bare_ms"] = row["p50_ms"] - base["p50_ms"]
        if row.get("cpu_us") and base.get("cpu_us"):
            row["cpu_vs_bare"] = row["cpu_us"] / base["cpu_us"]


def print_profiles(rows: list[dict[str, Any]]) -> None:
    """One table per model: CPU microseconds per request by category, one column a system."""
    for model in sorted({r["model"] for r in rows if "profile_us" in r}):
        profiled = [r for r in rows if r.get("model") == model and "profile_us" in r]
        categories = sorted({c for r in profiled for c in r["profile_us"]})
        table = [
            {"category": c, **{r["system"]: r["profile_us"].get(c, 0.0) for r in profiled}}
            for c in categories
        ]
        table.append(
            {"category": "total", **{r["system"]: sum(r["profile_us"].values()) for r in profiled}}
        )
        columns = ["category", *(r["system"] for r in profiled)]
        print_table(table, columns, title=f"CPU us per request at c=16 by py-spy, {model}")


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--peers", action="store_true", help="in quick mode, also run the peers")
    p.add_argument("--systems", help="comma-separated systems (default: by mode)")
    p.add_argument("--duration", type=float, help="seconds per measurement")
    p.add_argument("--rounds", type=int, help="rounds over the systems; the best is kept")
    p.add_argument("--profile", action="store_true", help="py-spy each server at c=16")
    p.add_argument(
        "--paired",
        type=int,
        metavar="N",
        help="two --systems up at once, N pairs of alternating slices (--duration each)",
    )
    p.add_argument(
        "--concurrency", type=int, action="append", help="with --paired: only these (repeat)"
    )
    p.add_argument(
        "--baseline-src",
        type=Path,
        help="the src folder of another checkout (git worktree add DIR COMMIT): the system "
        "modelfleet-baseline runs modelfleet from it, to compare two builds with --paired",
    )
    args = p.parse_args()
    if args.paired:
        paired(args)
        return
    if args.systems:
        systems = args.systems.split(",")
    else:
        systems = list(FULL_SYSTEMS if args.peers or not args.quick else QUICK_SYSTEMS)
    duration_s = args.duration or (3.0 if args.quick else 4.0)
    rounds = args.rounds or (1 if args.quick else 2)
    unavailable: dict[str, str] = {}
    if not servers.is_isolated():
        peers = sorted({PEER_NEEDS[s] for s in systems if s in PEER_NEEDS})
        unavailable = servers.setup_peers(peers)
        if any(s.startswith("ray") for s in systems) and "ray" not in unavailable:
            servers.ensure_isolated("bench.warm", sys.argv[1:])
    runnable = [s for s in systems if PEER_NEEDS.get(s) not in unavailable]
    with tempfile.TemporaryDirectory(prefix="bench-warm-") as scratch:
        rows = measure(Bench(Path(scratch)), runnable, duration_s, rounds, args.profile)
    rows += [
        {"system": s, "unavailable": unavailable[PEER_NEEDS[s]]}
        for s in systems
        if s not in runnable
    ]
    add_ratios(rows)
    columns = ["system", "model", "concurrency", "throughput", "p50_ms", "p99_ms"]
    columns += ["vs_bare", "p50_vs_bare_ms", "cpu_us", "cpu_vs_bare", "spread", "errors"]
    columns += ["unavailable"]
    print_table(rows, columns, title="Warm path: 1 row, 10 features, closed loop")
    if args.profile:
        print_profiles(rows)
    params = {"systems": systems, "duration_s": duration_s, "concurrency": CONCURRENCIES}
    params["rounds"] = rounds
    params["revision"] = servers.source_revision()
    params["ray_best"] = {**RAY_BEST, **servers.RAY_BEST_ENV}
    name = "warm-profile" if args.profile else "warm"
    path = write_results(name, quick=args.quick, params=params, rows=rows, out=args.out)
    print(f"\nwrote {path}")


def paired(args: Any) -> None:
    """``--paired N``: the ratio of two systems, slice by slice (:func:`measure_paired`)."""
    systems = (args.systems or "modelfleet,modelfleet-sigv4").split(",")
    if len(systems) != 2 or any(s.startswith(("ray", "mlserver")) for s in systems):
        raise SystemExit("--paired takes two --systems, of bare* and modelfleet*")
    duration_s = args.duration or 1.5
    with tempfile.TemporaryDirectory(prefix="bench-warm-") as scratch:
        concurrencies = tuple(args.concurrency or CONCURRENCIES)
        bench = Bench(Path(scratch), args.baseline_src)
        rows = measure_paired(bench, systems, duration_s, args.paired, concurrencies)
    first, second = systems
    columns = ["model", "concurrency", "pairs", f"{first}_rps", f"{second}_rps", "ratio"]
    columns += ["ratio_q1", "ratio_q3", f"{first}_cpu_us", f"{second}_cpu_us", "cpu_ratio"]
    print_table(rows, columns, title=f"Warm path, paired slices: {second} / {first}")
    params = {"systems": systems, "duration_s": duration_s, "pairs": args.paired}
    params["concurrency"] = tuple(args.concurrency or CONCURRENCIES)
    params["revision"] = servers.source_revision()
    name = f"warm-paired-{second}"
    path = write_results(name, quick=args.quick, params=params, rows=rows, out=args.out)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()

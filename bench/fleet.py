"""Fleet: several instances behind one router, affinity routing against random routing.

3 instances (``modelfleet serve --instances 3``), 60 scikit-learn forests of 0.5-5 MB in a folder
source, requests drawn from Zipf(1.0) with a fixed seed and sent at concurrency 8 by
``bench.loadgen --targets-file`` from empty caches; each instance has memory room for 8 models
(24 of the 60 fit across the fleet). The same trace runs twice in one invocation: with
``--routing affinity`` (the default: holders, then rendezvous hashing under a load bound) and
``--routing random``. Figures: throughput, p50, p99, the per-request hit ratio and the loads and
downloads summed over the instances' own ``/metrics``, and on how many instances each model
landed (downloaded into the instance's disk cache, read from the cache folders), with the
popularity rank of every model found on more than 2.

Second part, one hot model: an ``inference.py`` model whose ``predict_fn`` takes 20 ms with the
GIL released (``time.sleep``: the shape of a native kernel), driven at concurrency 24 for a fixed
number of requests, served by one instance (in process) and by 3 instances; the figures are the
throughput, how many instances held the model at the end of the load (ListModels on each), and
how many one idle-copy period after the load (``--copy-idle-timeout 2``, a slow trickle of
requests meanwhile).

Third part, the router's cost: one warm 10-tree forest, 1 row per request, closed loop at
concurrency 1 and 16 (4 s each; quick: 2 s), served in process (``--instances 1``), through the
router to one instance process (``--instances 1 --max-instances 2``: the ``local`` backend with
one instance, so the hop alone) and to two.

Fourth part, the ``ray`` backend against the ``local`` one, side by side on one Ray cluster
started here (``ray.cluster_utils.Cluster``: a head with no CPUs and 3 worker nodes of one CPU
each, on 127.0.0.1), both backends measured while it runs, in alternating rounds. The hop: the
third part's warm forest through the router to one instance, ``local`` (``--instances 1
--max-instances 2``) and ``ray`` (``--backend ray --instances 1``), at concurrency 1 and 16:
p50 and what Ray adds to it. Throughput: 3 ``local`` instances against 3 ``ray`` instances (one
per node), 12 warm 10-tree forests drawn uniformly (fixed seed), 1 row per request, concurrency
16: requests/s and the ratio ray/local. Targets (issue): Ray adds <= 1 ms to the hop's p50, and
its 3 instances serve >= 0.9x the requests of 3 local ones. 5 rounds of 2 s a cell (quick: one
of 1.5 s); a round measures each cell local then ray (ray first in the next round), and the
ray/local figures are the medians of the rounds' own differences and ratios. CPU time per
request of the router process and of the instance processes is measured too: on a busy
shared machine it moves far less than throughput.

Ray probes the network when it starts: the Ray part runs only inside a network namespace with
nothing but loopback, and refuses otherwise::

    unshare --net bash -c 'ip link set lo up && RAY_USAGE_STATS_ENABLED=0 \
        .venv/bin/python -m bench.fleet [--quick] [--part ray]'

    python -m bench.fleet [--quick] [--part zipf|hot|router|ray ...]

``--part`` (repeatable) runs only those parts (default: all four); a run of some parts writes
``fleet-<parts>[-quick].json``. Quick mode: 600 Zipf requests instead of 4,000 and 300
hot-model requests instead of 2,000, shorter cells.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import psutil

from bench import servers
from bench.common import parser, print_table, write_results
from bench.zipf_http import (
    N_FEATURES,
    Workload,
    build_models,
    landed,
    modelfleet_counts,
    zipf_trace,
)
from tests.artifacts import features, inference_py_artifact

INSTANCES = 3
ROOM_PER_INSTANCE = 8


def run(
    routing: str, work: Path, models: Path, w: Workload, room: int, trace: Path
) -> dict[str, Any]:
    cache = work / f"cache-{routing}"
    server = servers.modelfleet(
        servers.free_port(),
        models,
        cache,
        memory_limit=str(room),
        instances=INSTANCES,
        extra=["--routing", routing],
    )
    server.start(work / "logs")
    body = work / "row.csv"
    body.write_text(",".join(f"{v:.6f}" for v in features(7, 1, N_FEATURES)[0]) + "\n")
    try:
        figures = servers.replay(server.url, concurrency=w.concurrency, trace=trace, body=body)
        counts = modelfleet_counts(server)
    finally:
        server.stop()
    spread = landed(cache)
    looked_up = counts["hits"] + counts["misses"]
    return {
        "routing": routing,
        **figures,
        "hit_ratio": counts["hits"] / looked_up if looked_up else None,
        "loads": counts["loads"],
        "models_seen": len(spread),
        "max_instances_per_model": max(spread.values(), default=0),
        "models_on_3_or_more": sum(1 for n in spread.values() if n > 2),
        "spread": dict(spread),
    }


SLOW_MODEL = """
import time

def model_fn(model_dir):
    return None

def input_fn(data, content_type):
    return data

def predict_fn(data, model):
    time.sleep(0.02)
    return b"ok"

def output_fn(prediction, accept):
    return prediction, "text/plain"
"""
HOT = "hot/model.tar.gz"


def holders(url: str) -> int:
    listed = httpx.get(f"{url}/admin/instances").json()["instances"]
    urls = [i["url"] for i in listed if i["url"]]
    if not urls:
        return 1  # one instance, in the router's process
    count = 0
    for instance in urls:
        models = httpx.get(f"{instance}/models").json()["models"]
        count += any(m["modelName"] == HOT for m in models)
    return count


def hot_model(work: Path, count: int, requests: int) -> dict[str, Any]:
    source = work / f"hot-source-{count}"
    (source / "hot").mkdir(parents=True)
    (source / HOT).write_bytes(inference_py_artifact({"inference.py": SLOW_MODEL}))
    server = servers.modelfleet(
        servers.free_port(),
        source,
        work / f"hot-cache-{count}",
        instances=count,
        extra=["--copy-idle-timeout", "2"],
    )
    server.start(work / "logs")
    body = work / "hot.txt"
    body.write_text("x")
    try:
        headers = {"Content-Type": "text/plain", "X-Amzn-SageMaker-Target-Model": HOT}
        url = f"{server.url}/endpoints/default/invocations"
        figures = servers.run_loadgen(
            url,
            concurrency=24,
            duration_s=3600.0,
            headers=headers,
            body_file=body,
            warmup=0,
            requests=requests,
        )
        during = holders(server.admin_url)
        deadline = time.monotonic() + 6.0  # 3 idle periods of trickle
        while time.monotonic() < deadline:
            httpx.post(url, content=b"x", headers=headers)
            time.sleep(0.2)
        after = holders(server.admin_url)
    finally:
        server.stop()
    return {
        "instances": count,
        "throughput": figures["throughput"],
        "p50_ms": figures["p50_ms"],
        "p99_ms": figures["p99_ms"],
        "errors": figures["errors"],
        "holders_under_load": during,
        "holders_after_idle": after,
    }


def write_forests(source: Path, names: list[str]) -> Path:
    """10-tree forests (seeds 1, 2...) at ``names`` in the folder source ``source``."""
    from tests.artifacts import sklearn_artifact

    for seed, name in enumerate(names, 1):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes(sklearn_artifact(seed=seed, n_trees=10))
    return source


def forest_row(work: Path) -> Path:
    body = work / "forest-row.csv"
    body.write_text(",".join(["0.5"] * N_FEATURES) + "\n")
    return body


def router_cost(work: Path, duration_s: float) -> list[dict[str, Any]]:
    source = write_forests(work / "router-source", ["forest/model.tar.gz"])
    body = forest_row(work)
    headers = {"Content-Type": "text/csv", "X-Amzn-SageMaker-Target-Model": "forest/model.tar.gz"}
    setups = {
        "in process": (1, []),
        "router -> 1 instance": (1, ["--max-instances", "2"]),
        "router -> 2 instances": (2, []),
    }
    rows = []
    for name, (count, extra) in setups.items():
        server = servers.modelfleet(
            servers.free_port(),
            source,
            work / f"router-cache-{count}-{len(extra)}",
            instances=count,
            extra=extra,
        )
        server.start(work / "logs")
        try:
            for concurrency in (1, 16):
                figures = servers.run_loadgen(
                    f"{server.url}/endpoints/default/invocations",
                    concurrency=concurrency,
                    duration_s=duration_s,
                    headers=headers,
                    body_file=body,
                    warmup=200,
                )
                rows.append(
                    {
                        "setup": name,
                        "concurrency": concurrency,
                        "throughput": figures["throughput"],
                        "p50_ms": figures["p50_ms"],
                        "p99_ms": figures["p99_ms"],
                        "errors": figures["errors"],
                    }
                )
        finally:
            server.stop()
    base = {r["concurrency"]: r for r in rows if r["setup"] == "in process"}
    for row in rows:
        row["p50_added_ms"] = row["p50_ms"] - base[row["concurrency"]]["p50_ms"]
        row["vs_in_process"] = row["throughput"] / base[row["concurrency"]]["throughput"]
    return rows


# ---------------------------------------------------------------- the ray backend against local

RAY_FORESTS = 12
RAY_CONCURRENCY = 16
HOP_TARGET_MS = 1.0  # the acceptance: Ray adds at most this to the hop's p50
THROUGHPUT_TARGET = 0.9  # and its 3 instances serve at least this times what 3 local ones do
REFUSAL = """bench.fleet: the Ray part starts a Ray cluster, which probes the network as it starts:
it runs only inside a network namespace whose one interface is loopback. Run it as
  unshare --net bash -c 'ip link set lo up && RAY_USAGE_STATS_ENABLED=0 \\
      .venv/bin/python -m bench.fleet {args}'
or leave it out: --part zipf --part hot --part router"""


def instances_up(server: servers.Server, count: int, timeout_s: float = 60.0) -> list[Any]:
    """The instances behind ``server``'s router once ``count`` of them are up (and no more)."""
    deadline = time.monotonic() + timeout_s
    while True:
        listed = httpx.get(f"{server.admin_url}/admin/instances").json()["instances"]
        if len(listed) == count and all(i["state"] == "up" and i["url"] for i in listed):
            return list(listed)
        if time.monotonic() > deadline:
            states = [(i["id"], i["state"]) for i in listed]
            raise servers.ServerError(f"{server.name}: not {count} instances up: {states}")
        time.sleep(0.2)


def cpu_s(pids: list[int]) -> float:
    """CPU seconds (user + system) the processes ``pids`` have used so far."""
    return sum(float(sum(psutil.Process(pid).cpu_times()[:2])) for pid in pids)


@dataclass
class Fleet:
    """One ``modelfleet serve`` (the router) and its instances' processes."""

    server: servers.Server
    pids: list[int]
    nodes: int  # distinct Ray nodes (local: 1, this machine)

    def measure(self, *, warmup: int, **loadgen: Any) -> dict[str, Any]:
        """``bench.loadgen`` against the fleet, with the CPU time the router process and the
        instance processes spent per request (loadgen's warm-up requests included): it moves
        far less than throughput when the shared machine is busy."""
        router, instances = cpu_s([self.server.pid]), cpu_s(self.pids)
        figures = servers.run_loadgen(
            f"{self.server.url}/endpoints/default/invocations", warmup=warmup, **loadgen
        )
        served = max(figures["requests"] + warmup, 1)
        figures["router_cpu_us"] = 1e6 * (cpu_s([self.server.pid]) - router) / served
        figures["instance_cpu_us"] = 1e6 * (cpu_s(self.pids) - instances) / served
        return figures


@contextlib.contextmanager
def fleets(
    work: Path, source: Path, setups: dict[str, tuple[int, list[str]]]
) -> Iterator[dict[str, Fleet]]:
    """One ``modelfleet serve`` per setup (name -> instances, flags), all up together; each
    stopped by its PID on the way out."""
    with contextlib.ExitStack() as stack:
        up = {}
        for name, (count, extra) in setups.items():
            server = servers.modelfleet(
                servers.free_port(), source, work / f"cache-{name}", instances=count, extra=extra
            )
            server.name = f"fleet-{name}"  # its own log file
            server.env["RAY_USAGE_STATS_ENABLED"] = "0"
            stack.callback(server.stop)
            server.start(work / "logs")
            listed = instances_up(server, count)
            nodes = len({i.get("node") for i in listed})
            up[name] = Fleet(server, [int(i["pid"]) for i in listed], nodes)
            print(f"{server.name} up ({server.started_s:.1f} s)", file=sys.stderr)
        yield up


def in_turn(backends: tuple[str, ...], round_: int) -> tuple[str, ...]:
    """Who goes first alternates from round to round."""
    return backends if round_ % 2 == 0 else backends[::-1]


FIGURES = ("throughput", "p50_ms", "p99_ms", "router_cpu_us", "instance_cpu_us")


def summarize(runs: list[dict[str, Any]], local: list[dict[str, Any]]) -> dict[str, Any]:
    """Rounds of one cell: mean throughput, median latencies and CPU per request, errors
    summed; against ``local`` (the same cell's local rounds), the median of the rounds' own
    differences and ratios, each round's two runs measured back to back (the shared machine's
    load drifts between rounds far more than within one)."""
    cell = {"throughput": statistics.fmean(r["throughput"] for r in runs)}
    cell.update({k: statistics.median(r[k] for r in runs) for k in FIGURES[1:]})
    cell["cpu_us"] = cell["router_cpu_us"] + cell["instance_cpu_us"]
    pairs = list(zip(runs, local, strict=True))

    def cpu(r: dict[str, Any]) -> float:
        return float(r["router_cpu_us"] + r["instance_cpu_us"])

    return {
        **cell,
        "vs_local": statistics.median(r["throughput"] / b["throughput"] for r, b in pairs),
        "p50_vs_local_ms": statistics.median(r["p50_ms"] - b["p50_ms"] for r, b in pairs),
        "cpu_vs_local": statistics.median(cpu(r) / cpu(b) for r, b in pairs),
        "errors": sum(r["errors"] for r in runs),
        "rounds": [{k: r[k] for k in FIGURES} for r in runs],
    }


def ray_against_local(work: Path, duration_s: float, rounds: int) -> dict[str, Any]:
    """The fourth part (see the module doc): hop and throughput, ``local`` against ``ray``."""
    names = [f"forest-{k:02d}/model.tar.gz" for k in range(RAY_FORESTS)]
    source = write_forests(work / "ray-source", names)
    body = forest_row(work)
    trace = work / "ray-trace.txt"
    trace.write_text("\n".join(random.Random(11).choices(names, k=200_000)) + "\n")
    one = {"Content-Type": "text/csv", "X-Amzn-SageMaker-Target-Model": names[0]}
    many = {"headers": {"Content-Type": "text/csv"}, "body_file": body, "targets_file": trace}
    backends = ("local", "ray")
    began = time.perf_counter()
    with servers.ray_cluster(INSTANCES) as address:
        cluster_s = time.perf_counter() - began
        print(f"ray cluster up at {address} ({cluster_s:.1f} s)", file=sys.stderr)

        def ray_flags(part: str) -> list[str]:
            namespace = f"bench-fleet-{os.getpid()}-{part}"
            return ["--backend", "ray", "--ray-address", address, "--ray-namespace", namespace]

        hop_runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
        hop_setups = {"local-hop": (1, ["--max-instances", "2"]), "ray-hop": (1, ray_flags("hop"))}
        with fleets(work, source, hop_setups) as up:
            for backend in backends:  # the forest loaded (and sklearn imported), not measured
                up[f"{backend}-hop"].measure(
                    concurrency=1, duration_s=0.5, headers=one, body_file=body, warmup=20
                )
            for round_ in range(rounds):
                for concurrency in (1, RAY_CONCURRENCY):
                    for backend in in_turn(backends, round_):
                        figures = up[f"{backend}-hop"].measure(
                            concurrency=concurrency,
                            duration_s=duration_s,
                            headers=one,
                            body_file=body,
                            warmup=200,
                        )
                        hop_runs.setdefault((backend, concurrency), []).append(figures)
        wide_runs: dict[str, list[dict[str, Any]]] = {}
        wide_setups = {"local-x3": (INSTANCES, []), "ray-x3": (INSTANCES, ray_flags("x3"))}
        with fleets(work, source, wide_setups) as up:
            for backend in backends:  # every model loaded where the router puts it
                up[f"{backend}-x3"].measure(
                    concurrency=RAY_CONCURRENCY, duration_s=1.0, warmup=0, **many
                )
            for round_ in range(rounds):
                for backend in in_turn(backends, round_):
                    figures = up[f"{backend}-x3"].measure(
                        concurrency=RAY_CONCURRENCY, duration_s=duration_s, warmup=0, **many
                    )
                    wide_runs.setdefault(backend, []).append(figures)
            nodes = {backend: up[f"{backend}-x3"].nodes for backend in backends}
    hop = [
        {
            "setup": f"{backend}: router -> 1 instance",
            "backend": backend,
            "concurrency": concurrency,
            **summarize(hop_runs[(backend, concurrency)], hop_runs[("local", concurrency)]),
        }
        for concurrency in (1, RAY_CONCURRENCY)
        for backend in backends
    ]
    wide = [
        {
            "backend": backend,
            "instances": INSTANCES,
            "nodes": nodes[backend],
            "concurrency": RAY_CONCURRENCY,
            **summarize(wide_runs[backend], wide_runs["local"]),
        }
        for backend in backends
    ]
    added = {r["concurrency"]: r["p50_vs_local_ms"] for r in hop if r["backend"] == "ray"}
    verdict = {
        "hop_p50_added_ms": added[1],
        "hop_p50_added_ms_c16": added[RAY_CONCURRENCY],
        "hop_target_ms": HOP_TARGET_MS,
        "throughput_ratio": wide[1]["vs_local"],
        "throughput_target": THROUGHPUT_TARGET,
        "hop_cpu_ratio": next(r["cpu_vs_local"] for r in hop if r["backend"] == "ray"),
        "throughput_cpu_ratio": wide[1]["cpu_vs_local"],
        "meets_hop": added[1] <= HOP_TARGET_MS,
        "meets_throughput": wide[1]["vs_local"] >= THROUGHPUT_TARGET,
        "cluster_start_s": cluster_s,
    }
    return {"hop": hop, "throughput": wide, "verdict": verdict}


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # the servers and the Ray cluster are stopped on the way out


PARTS = ("zipf", "hot", "router", "ray")


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument(
        "--part",
        action="append",
        choices=PARTS,
        help="run only this part (repeatable; default: all): zipf (affinity against random), "
        "hot (one hot model), router (the router's cost), ray (the ray backend against local)",
    )
    args = p.parse_args()
    parts = [part for part in PARTS if part in (args.part or PARTS)]
    if "ray" in parts:
        if not servers.is_isolated():
            sys.exit(REFUSAL.format(args=" ".join(sys.argv[1:])))
        if importlib.util.find_spec("ray") is None:
            sys.exit("bench.fleet: the Ray part needs Ray: pip install 'modelfleet[ray]'")
    signal.signal(signal.SIGTERM, _terminate)
    w = Workload(60, 600 if args.quick else 4000, ROOM_PER_INSTANCE * INSTANCES)
    params: dict[str, Any] = {"parts": parts, "instances": INSTANCES}
    rows = []
    extra: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as scratch:
        work = Path(scratch)
        if "zipf" in parts:
            key = hashlib.sha256(repr(("fleet", w)).encode()).hexdigest()[:12]
            models = Path(tempfile.gettempdir()) / f"modelfleet-bench-fleet-{key}"
            sizes = build_models(models, w)
            room = int(ROOM_PER_INSTANCE * sum(sizes.values()) / len(sizes))
            params.update(vars(w), room_bytes_per_instance=room)
            names = zipf_trace(sorted(sizes), w)
            popularity = {m: rank for rank, (m, _) in enumerate(Counter(names).most_common(), 1)}
            trace = work / "trace.txt"
            trace.write_text("\n".join(names) + "\n")
            for routing in ("affinity", "random"):
                row = run(routing, work, models, w, room, trace)
                row["ranks_on_3_or_more"] = sorted(
                    popularity.get(m, 0) for m, n in row.pop("spread").items() if n > 2
                )
                rows.append(row)
                print(f"{routing}: {row}", file=sys.stderr)
        if "hot" in parts:
            hot_requests = 300 if args.quick else 2000
            extra["hot"] = [hot_model(work, count, hot_requests) for count in (1, INSTANCES)]
        if "router" in parts:
            extra["router"] = router_cost(work, 2.0 if args.quick else 4.0)
        if "ray" in parts:
            cell_s, rounds = (1.5, 1) if args.quick else (2.0, 5)
            params.update(ray_cell_s=cell_s, ray_rounds=rounds, ray_forests=RAY_FORESTS)
            extra["ray"] = ray_against_local(work, cell_s, rounds)
    if "zipf" in parts:
        columns = ["routing", "throughput", "p50_ms", "p99_ms", "hit_ratio", "loads", "errors"]
        columns += ["max_instances_per_model", "models_on_3_or_more"]
        print_table(rows, columns, title=f"Fleet of {INSTANCES}: {w}")
    if "hot" in parts:
        hot_columns = ["instances", "throughput", "p50_ms", "p99_ms", "errors"]
        hot_columns += ["holders_under_load", "holders_after_idle"]
        title = "One hot model (20 ms, GIL released), concurrency 24"
        print_table(extra["hot"], hot_columns, title=title)
    if "router" in parts:
        columns = ["setup", "concurrency", "throughput", "p50_ms", "p99_ms", "p50_added_ms"]
        print_table(
            extra["router"], [*columns, "vs_in_process", "errors"], title="The router's cost"
        )
    if "ray" in parts:
        ray = extra["ray"]
        cpu = ["router_cpu_us", "instance_cpu_us", "cpu_vs_local", "errors"]
        columns = ["setup", "concurrency", "throughput", "p50_ms", "p99_ms", "p50_vs_local_ms"]
        print_table(
            ray["hop"], [*columns, "vs_local", *cpu], title="The hop on Ray: router -> 1 instance"
        )
        columns = ["backend", "instances", "nodes", "throughput", "p50_ms", "p99_ms", "vs_local"]
        title = f"3 instances, {RAY_FORESTS} warm forests, concurrency {RAY_CONCURRENCY}"
        print_table(ray["throughput"], [*columns, *cpu], title=title)
        v = ray["verdict"]
        print(
            f"\nRay adds {v['hop_p50_added_ms']:+.3f} ms to the hop's p50 at concurrency 1"
            f" (target <= {HOP_TARGET_MS:g} ms: {'met' if v['meets_hop'] else 'MISSED'});"
            f" 3 Ray instances serve {v['throughput_ratio']:.3f}x 3 local ones"
            f" (target >= {THROUGHPUT_TARGET:g}x:"
            f" {'met' if v['meets_throughput'] else 'MISSED'})"
        )
    params["revision"] = servers.source_revision()
    name = "fleet" if parts == list(PARTS) else "-".join(["fleet", *parts])
    path = write_results(
        name, quick=args.quick, params=params, rows=rows, out=args.out, extra=extra
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()

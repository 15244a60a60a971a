"""End-to-end Zipf through HTTP: many forests, little memory, replayable traces for everyone.

``python -m bench.zipf_http [--quick] [--peers] [--systems a,b,...] [--traces zipf,shifting]
[--rounds K] [--room-models R]``

200 scikit-learn forests whose joblib files are 0.5-5 MB (log-uniform; popularity rank drawn
independently of size), 5,000 requests sent at concurrency 8 by ``bench.loadgen --targets-file``
from an empty cache, with memory room R for 20 models (``--room-models``; the same forests). Two
traces, fixed seeds: ``zipf`` draws every request from Zipf(1.0); ``shifting`` draws from Zipf(1.0)
too but over a new random ranking every 1,000 requests (the hot set changes five times). Every
system runs every trace from an empty cache.

One instance: ``modelfleet`` (``--memory-limit`` R = 20 times the mean file size),
``modelfleet-predict`` (``--no-walk-trees``: scikit-learn's own forest ``predict``, as the others
call it), ``bare-lru`` (a bare Starlette app with a byte-LRU of R, loads in a thread,
``peers/bare_lru.py``), ``bare-lru-fast`` (the same on uvloop + httptools), ``bare-lru-count``
(an LRU of 20 models whatever their sizes, ``joblib.load`` on the event loop), and Ray Serve
multiplexing with ``max_num_models_per_replica=20`` in its defaults (``ray-default``) and its
high-throughput configuration (``ray-best``).

A fleet: ``modelfleet-x2`` and ``modelfleet-x3`` run 2 and 3 instance processes behind
modelfleet's router (``--instances N``, the ``local`` backend), room R/N each;
``modelfleet-ray-x2`` and ``modelfleet-ray-x3`` the same on the ``ray`` backend, on a Ray
cluster started for them on this machine (a head node and 3 one-CPU worker nodes). For a fleet,
``on_2``/``on_3`` count the models whose artifact landed on 2 or 3 instances' disks (each load
there put it there), ``loads_per_model`` is loads over the models requested.

Hit ratio: modelfleet's from its ``/metrics`` (``modelfleet_model_cache_hit_total`` and
``_miss_total``, summed over the instances), the bare app's from its own counters; Ray's is
``1 - loads / requests`` (its app counts its multiplexed loads), shown for every system as
``hit_ratio_by_loads`` (a request that waits on another's load is a miss in ``hit_ratio`` but
causes no load). ``--rounds K`` runs everything K times, each round from empty caches in a
rotated order; the table shows each figure's median over the rounds, the JSON every round.

Quick mode: 100 models, 1,000 requests (the hot set changing every 200), room for 10,
``modelfleet``, ``bare-lru`` and ``bare-lru-count`` only (``--peers`` adds the rest). The forests
are built once and kept in the temporary folder between runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import joblib
import numpy as np

from bench import servers
from bench.common import parser, print_table, write_results
from bench.servers import Server, ServerError
from tests.artifacts import features

N_FEATURES = 10
TRAIN_ROWS = 1000
TRACES = ("zipf", "shifting")
QUICK_SYSTEMS = ("modelfleet", "bare-lru", "bare-lru-count")
FLEETS = ("modelfleet-x2", "modelfleet-x3", "modelfleet-ray-x2", "modelfleet-ray-x3")
FULL_SYSTEMS = (
    "modelfleet",
    "modelfleet-predict",
    "bare-lru",
    "bare-lru-fast",
    "bare-lru-count",
    "ray-default",
    "ray-best",
    *FLEETS,
)
PEER_NEEDS = {"ray-default": "ray", "ray-best": "ray"}
PEER_NEEDS |= {"bare-lru-fast": "uvfast"}
RAY_BEST = {"replicas": 1, "max_ongoing": 64}
RAY_WORKERS = 3  # one-CPU worker nodes of the cluster the ray-backend fleets run on
FIGURES = (
    *("throughput", "p50_ms", "p90_ms", "p99_ms", "p999_ms", "hit_ratio", "hit_ratio_by_loads"),
    *("loads", "ok", "errors", "loads_per_model", "on_2", "on_3"),
)


@dataclass(frozen=True)
class Workload:
    n_models: int
    n_requests: int
    room_models: int
    concurrency: int = 8
    exponent: float = 1.0
    min_mb: float = 0.5
    max_mb: float = 5.0
    seed: int = 42
    phase: int = 1000  # requests between changes of the hot set (the shifting trace)


def build_models(folder: Path, w: Workload) -> dict[str, int]:
    """Forests as ``model-NNN.joblib`` in ``folder`` (reused when already built); name -> bytes."""
    from sklearn.ensemble import RandomForestRegressor

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(w.seed)
    targets_mb = np.exp(rng.uniform(np.log(w.min_mb), np.log(w.max_mb), w.n_models))
    x = features(w.seed, TRAIN_ROWS, N_FEATURES)
    one_tree = RandomForestRegressor(n_estimators=1, random_state=0).fit(x, x.sum(axis=1))
    buffer = io.BytesIO()
    joblib.dump(one_tree, buffer)
    tree_mb = len(buffer.getvalue()) / 1e6
    sizes = {}
    for index, target_mb in enumerate(targets_mb):
        path = folder / f"model-{index:03d}.joblib"
        if not path.exists():
            y = x @ rng.normal(size=N_FEATURES)
            trees = max(1, round(target_mb / tree_mb))
            forest = RandomForestRegressor(n_estimators=trees, random_state=index, n_jobs=1)
            joblib.dump(forest.fit(x, y), path.with_suffix(".tmp"))
            path.with_suffix(".tmp").rename(path)
        sizes[path.name] = path.stat().st_size
    return sizes


def zipf_trace(names: list[str], w: Workload) -> list[str]:
    """``w.n_requests`` model names; popularity ∝ 1 / rank^exponent over a seeded ranking."""
    rng = np.random.default_rng(w.seed + 1)
    ranked = [names[i] for i in rng.permutation(len(names))]
    weights = 1.0 / np.arange(1, len(names) + 1) ** w.exponent
    picks = rng.choice(len(names), size=w.n_requests, p=weights / weights.sum())
    return [ranked[i] for i in picks]


def shifting_trace(names: list[str], w: Workload) -> list[str]:
    """Like :func:`zipf_trace`, but every ``w.phase`` requests the ranking is drawn afresh: the
    hot set changes and yesterday's hot models go cold."""
    rng = np.random.default_rng(w.seed + 2)
    weights = 1.0 / np.arange(1, len(names) + 1) ** w.exponent
    trace: list[str] = []
    while len(trace) < w.n_requests:
        ranked = [names[i] for i in rng.permutation(len(names))]
        count = min(w.phase, w.n_requests - len(trace))
        picks = rng.choice(len(names), size=count, p=weights / weights.sum())
        trace += [ranked[i] for i in picks]
    return trace


_METRIC = re.compile(r"^(modelfleet_[a-z_]+?)(?:\{[^}]*\})? ([0-9.eE+-]+)$", re.MULTILINE)


def modelfleet_counts(server: Server) -> dict[str, float]:
    """Cache counters summed over the server's instances (each has its own ``/metrics`` when
    there are several)."""
    status, body = servers.http_get(server.admin_url + "/admin/instances")
    if status != 200:
        raise ServerError(f"{server.name}: /admin/instances answered {status}")
    urls = [i["url"] for i in json.loads(body)["instances"] if i["url"]] or [server.admin_url]
    totals: dict[str, float] = {}
    for url in urls:
        status, body = servers.http_get(url + "/metrics")
        if status != 200:
            raise ServerError(f"{server.name}: {url}/metrics answered {status}")
        for name, value in _METRIC.findall(body.decode()):
            totals[name] = totals.get(name, 0.0) + float(value)
    hits = totals.get("modelfleet_model_cache_hit_total", 0.0)
    misses = totals.get("modelfleet_model_cache_miss_total", 0.0)
    loads = totals.get("modelfleet_model_loading_time_seconds_count", 0.0)
    return {"hits": hits, "misses": misses, "loads": loads}


def landed(cache: Path) -> Counter[str]:
    """Models whose artifact is in an instance's disk cache under ``cache``: model -> number
    of instances (``instance-N/`` folders of the local backend, ``slot-N/cache/`` of the ray
    one)."""
    counts: Counter[str] = Counter()
    for pattern in ("*/models/*/meta.json", "slot-*/cache/models/*/meta.json"):
        for meta in cache.glob(pattern):
            counts[json.loads(meta.read_text())["target_model"]] += 1
    return counts


def app_counts(server: Server) -> dict[str, float]:
    status, body = servers.http_get(server.url + "/stats")
    if status != 200:
        raise ServerError(f"{server.name}: /stats answered {status}")
    figures: dict[str, float] = json.loads(body)
    return figures


def instances_of(system: str) -> int:
    match = re.search(r"-x(\d+)$", system)
    return int(match.group(1)) if match else 1


def start(
    system: str, cache: Path, models: Path, w: Workload, room_bytes: int, ray_address: str | None
) -> Server:
    port = servers.free_port()
    fast = system.endswith("-fast")
    if system.startswith("modelfleet"):
        count = instances_of(system)
        extra: list[str] = []
        if "-ray-" in system:
            if ray_address is None:
                raise ServerError("no Ray cluster (it runs only in a loopback-only namespace)")
            extra = ["--backend", "ray", "--ray-address", ray_address]
            extra += ["--ray-namespace", f"bench-zipf-{cache.name}"]
        server = servers.modelfleet(
            port,
            models,
            cache,
            memory_limit=str(room_bytes // count),
            walk_trees=system != "modelfleet-predict",
            instances=count,
            extra=extra,
        )
        server.name = system
    elif system == "bare-lru-count":
        server = servers.bare_lru(port, models, w.room_models, models=True)
    elif system.startswith("bare-lru"):
        server = servers.bare_lru(port, models, room_bytes, fast=fast)
    elif system.startswith("ray"):
        options: dict[str, Any] = RAY_BEST if system == "ray-best" else {}
        best = system == "ray-best"
        server = servers.ray_serve(port, models, best=best, max_models=w.room_models, **options)
    else:
        raise ServerError(f"unknown system {system}")
    return server.start(cache.parent / "logs")


def run_system(
    system: str,
    work: Path,
    models: Path,
    w: Workload,
    room_bytes: int,
    trace: Path,
    body: Path,
    ray_address: str | None,
) -> dict[str, Any]:
    cache = work / f"cache-{system}-{trace.stem}"
    server = start(system, cache, models, w, room_bytes, ray_address)
    try:
        figures = servers.replay(server.url, concurrency=w.concurrency, trace=trace, body=body)
        counts = modelfleet_counts(server) if system.startswith("modelfleet") else {}
        counts = counts or app_counts(server)
    finally:
        server.stop()
    row: dict[str, Any] = {"system": system, **figures, "loads": counts.get("loads")}
    if row.get("ok"):
        row["hit_ratio_by_loads"] = max(0.0, 1.0 - float(counts.get("loads", 0)) / row["ok"])
    if "hits" in counts:
        looked_up = counts["hits"] + counts["misses"]
        row["hit_ratio"] = counts["hits"] / looked_up if looked_up else None
    elif counts.get("requests"):  # Ray: a request is a hit unless it caused a load
        row["hit_ratio"] = 1.0 - counts["loads"] / counts["requests"]
    if instances_of(system) > 1:
        spread = landed(cache)
        requested = len(set(trace.read_text().split()))
        row["loads_per_model"] = float(counts.get("loads", 0)) / requested
        row["on_2"] = sum(1 for n in spread.values() if n == 2)
        row["on_3"] = sum(1 for n in spread.values() if n >= 3)
        row["spread"] = dict(sorted(Counter(spread.values()).items()))
    return row


def median_rows(rounds: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per (trace, system): each figure's median over the rounds."""
    by_key: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for rows in rounds:
        for one in rows:
            by_key.setdefault((one["trace"], one["system"]), []).append(one)
    merged = []
    for (trace, system), runs in by_key.items():
        row: dict[str, Any] = {"trace": trace, "system": system, "rounds": len(runs)}
        for figure in FIGURES:
            values = [r[figure] for r in runs if isinstance(r.get(figure), int | float)]
            if values:
                row[figure] = statistics.median(values)
        reasons = [r["unavailable"] for r in runs if "unavailable" in r]
        if reasons:
            row["unavailable"] = reasons[0]
        merged.append(row)
    return merged


def verdict(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per trace, modelfleet against the bare byte-LRU app, and each fleet against one
    modelfleet instance with all the room: ratios of the medians."""
    by = {(r["trace"], r["system"]): r for r in rows if "throughput" in r}
    out = []
    for trace in dict.fromkeys(r["trace"] for r in rows):
        one = by.get((trace, "modelfleet"))
        pairs = [("bare-lru", one)] + [(fleet, by.get((trace, fleet))) for fleet in FLEETS]
        for other, row in pairs:
            if one is None or row is None or (trace, other) not in by:
                continue
            if other == "bare-lru":  # modelfleet against the bare app
                mine, theirs = one, by[(trace, other)]
                label = "modelfleet / bare-lru"
            else:  # the fleet against one instance
                mine, theirs = row, one
                label = f"{other} / modelfleet"
            out.append(
                {
                    "trace": trace,
                    "compared": label,
                    "throughput": mine["throughput"] / theirs["throughput"],
                    "p99": mine["p99_ms"] / theirs["p99_ms"],
                    "p999": mine["p999_ms"] / theirs["p999_ms"],
                    "hit_ratio": _ratio(mine.get("hit_ratio"), theirs.get("hit_ratio")),
                    "hit_ratio_by_loads": _ratio(
                        mine.get("hit_ratio_by_loads"), theirs.get("hit_ratio_by_loads")
                    ),
                }
            )
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--peers", action="store_true", help="in quick mode, also run the rest")
    p.add_argument("--systems", help="comma-separated systems (default: by mode)")
    p.add_argument("--traces", default=",".join(TRACES), help="comma-separated traces")
    p.add_argument("--rounds", type=int, default=1, help="runs of everything (medians shown)")
    p.add_argument("--room-models", type=int, help="memory room R in mean-sized models")
    args = p.parse_args()
    w = Workload(100, 1000, 10, phase=200) if args.quick else Workload(200, 5000, 20)
    key = hashlib.sha256(repr(replace(w, phase=0)).encode()).hexdigest()[:12]  # the forests'
    if args.room_models is not None:
        if args.room_models < 1:
            p.error("--room-models must be at least 1")
        w = replace(w, room_models=args.room_models)
    if args.systems:
        systems = args.systems.split(",")
    else:
        systems = list(FULL_SYSTEMS if args.peers or not args.quick else QUICK_SYSTEMS)
    traces = args.traces.split(",")
    if unknown := set(traces) - set(TRACES):
        p.error(f"unknown traces {sorted(unknown)}; known: {', '.join(TRACES)}")
    unavailable: dict[str, str] = {}
    needs_ray = any(s.startswith("ray") or "-ray-" in s for s in systems)
    if not servers.is_isolated():
        unavailable = servers.setup_peers(
            sorted({PEER_NEEDS[s] for s in systems if s in PEER_NEEDS})
        )
        if needs_ray and "ray" not in unavailable:
            servers.ensure_isolated("bench.zipf_http", sys.argv[1:])
    models = Path(tempfile.gettempdir()) / f"modelfleet-bench-zipf-{key}"
    began = time.perf_counter()
    sizes = build_models(models, w)
    print(f"{len(sizes)} models ready in {time.perf_counter() - began:.1f} s", file=sys.stderr)
    room_bytes = int(w.room_models * sum(sizes.values()) / len(sizes))
    rounds: list[list[dict[str, Any]]] = []
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory(prefix="bench-zipf-") as tmp:
        work = Path(tmp)
        body = work / "row.csv"
        body.write_text(",".join(f"{v:.6f}" for v in features(7, 1, N_FEATURES)[0]) + "\n")
        ray_address = None
        if any("-ray-" in s for s in systems) and servers.is_isolated():
            ray_address = stack.enter_context(servers.ray_cluster(RAY_WORKERS))
        make = {"zipf": zipf_trace, "shifting": shifting_trace}
        for round_ in range(args.rounds):
            rows: list[dict[str, Any]] = []
            order = systems[round_ % len(systems) :] + systems[: round_ % len(systems)]
            for name in traces:
                trace = work / f"{name}.txt"
                trace.write_text("\n".join(make[name](sorted(sizes), w)) + "\n")
                scratch = work / f"round-{round_}"
                for system in order:
                    result: dict[str, Any]
                    if PEER_NEEDS.get(system) in unavailable:
                        reason = unavailable[PEER_NEEDS[system]]
                        result = {"system": system, "unavailable": reason}
                    else:
                        try:
                            result = run_system(
                                system, scratch, models, w, room_bytes, trace, body, ray_address
                            )
                        except ServerError as exc:
                            result = {"system": system, "unavailable": str(exc)[:300]}
                    rows.append({"trace": name, "round": round_, **result})
                    print(f"round {round_} {name} {system}: {rows[-1]}", file=sys.stderr)
            rounds.append(rows)
    table = median_rows(rounds)
    table.sort(key=lambda r: (traces.index(r["trace"]), systems.index(r["system"])))
    columns = ["trace", "system", "throughput", "p50_ms", "p90_ms", "p99_ms", "p999_ms"]
    columns += ["hit_ratio", "hit_ratio_by_loads", "loads", "errors", "loads_per_model"]
    columns += ["on_2", "on_3", "unavailable"]
    print_table(table, columns, title=f"End-to-end Zipf ({args.rounds} round(s), medians): {w}")
    ratios = verdict(table)
    columns = ["trace", "compared", "throughput", "p99", "p999", "hit_ratio", "hit_ratio_by_loads"]
    print_table(ratios, columns, title="Ratios of the medians")
    params = {**vars(w), "room_bytes": room_bytes, "systems": systems, "traces": traces}
    params |= {"rounds": args.rounds, "ray_best": RAY_BEST, "ray_workers": RAY_WORKERS}
    params["revision"] = servers.source_revision()
    params["model_bytes"] = {"min": min(sizes.values()), "max": max(sizes.values())}
    params["model_bytes"]["mean"] = sum(sizes.values()) / len(sizes)
    extra = {"medians": table, "ratios": ratios}
    rows = [row for round_rows in rounds for row in round_rows]
    path = write_results(
        "zipf_http", quick=args.quick, params=params, rows=rows, extra=extra, out=args.out
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()

"""End-to-end Zipf through HTTP: many forests, little memory, one replayable trace for everyone.

``python -m bench.zipf_http [--quick] [--peers] [--systems a,b,...]``

200 scikit-learn forests whose joblib files are 0.5-5 MB (log-uniform; popularity rank drawn
independently of size), 5,000 requests drawn from Zipf(1.0) with a fixed seed, sent at
concurrency 8 by ``bench.loadgen --targets-file`` from an empty cache, with memory room for 20
models. Systems: ``modelfleet`` (``--memory-limit`` = 20 times the mean file size), ``bare-lru`` (a
bare Starlette app with a byte-LRU of the same room, ``peers/bare_lru.py``), and Ray Serve
multiplexing with ``max_num_models_per_replica=20`` in its defaults (``ray-default``) and its
high-throughput configuration (``ray-best``); ``bare-lru-fast`` runs the bare app on uvloop +
httptools (modelfleet's own stack); ``modelfleet-predict`` runs modelfleet with ``--no-walk-trees``
(scikit-learn's own forest ``predict``, as the others call it); ``modelfleet-x2`` runs two
instance processes behind modelfleet's router (``--instances 2``), each with half the room. Hit
ratio: modelfleet's from its
``/metrics`` (``modelfleet_model_cache_hit_total`` and ``_miss_total``), the bare app's from its own
counters; Ray's is ``1 - loads / requests`` (its app counts its multiplexed loads), shown for
every system as ``hit_ratio_by_loads`` (a request that waits on another's load is a miss in
``hit_ratio`` but causes no load).

Quick mode: 100 models, 1,000 requests, room for 10, modelfleet and bare-lru only (``--peers``
adds Ray). The forests are built once and kept in the temporary folder between runs.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import sys
import tempfile
import time
from dataclasses import dataclass
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
QUICK_SYSTEMS = ("modelfleet", "bare-lru")
FULL_SYSTEMS = (
    "modelfleet",
    "modelfleet-predict",
    "modelfleet-x2",
    "bare-lru",
    "bare-lru-fast",
    "ray-default",
    "ray-best",
)
PEER_NEEDS = {"ray-default": "ray", "ray-best": "ray"}
PEER_NEEDS |= {"bare-lru-fast": "uvfast"}
RAY_BEST = {"replicas": 1, "max_ongoing": 64}


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


_METRIC = re.compile(r"^(modelfleet_[a-z_]+?)(?:\{[^}]*\})? ([0-9.eE+-]+)$", re.MULTILINE)


def modelfleet_counts(server: Server) -> dict[str, float]:
    """Cache counters summed over the server's instances (each has its own ``/metrics`` when
    there are several)."""
    status, body = servers.http_get(server.url + "/admin/instances")
    if status != 200:
        raise ServerError(f"{server.name}: /admin/instances answered {status}")
    urls = [i["url"] for i in json.loads(body)["instances"] if i["url"]] or [server.url]
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


def app_counts(server: Server) -> dict[str, float]:
    status, body = servers.http_get(server.url + "/stats")
    if status != 200:
        raise ServerError(f"{server.name}: /stats answered {status}")
    figures: dict[str, float] = json.loads(body)
    return figures


def start(system: str, work: Path, models: Path, w: Workload, room_bytes: int) -> Server:
    port = servers.free_port()
    fast = system.endswith("-fast")
    if system.startswith("modelfleet"):
        cache = work / f"cache-{system}"
        walk = system != "modelfleet-predict"
        count = 2 if system == "modelfleet-x2" else 1
        server = servers.modelfleet(
            port,
            models,
            cache,
            memory_limit=str(room_bytes // count),
            walk_trees=walk,
            instances=count,
        )
    elif system.startswith("bare-lru"):
        server = servers.bare_lru(port, models, room_bytes, fast=fast)
    elif system.startswith("ray"):
        options: dict[str, Any] = RAY_BEST if system == "ray-best" else {}
        best = system == "ray-best"
        server = servers.ray_serve(port, models, best=best, max_models=w.room_models, **options)
    else:
        raise ServerError(f"unknown system {system}")
    return server.start(work / "logs")


def run_system(
    system: str, work: Path, models: Path, w: Workload, room_bytes: int, trace: Path, body: Path
) -> dict[str, Any]:
    server = start(system, work, models, w, room_bytes)
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
    return row


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--peers", action="store_true", help="in quick mode, also run Ray Serve")
    p.add_argument("--systems", help="comma-separated systems (default: by mode)")
    args = p.parse_args()
    w = Workload(100, 1000, 10) if args.quick else Workload(200, 5000, 20)
    if args.systems:
        systems = args.systems.split(",")
    else:
        systems = list(FULL_SYSTEMS if args.peers or not args.quick else QUICK_SYSTEMS)
    unavailable: dict[str, str] = {}
    if not servers.is_isolated():
        unavailable = servers.setup_peers(
            sorted({PEER_NEEDS[s] for s in systems if s in PEER_NEEDS})
        )
        if any(s.startswith("ray") for s in systems) and "ray" not in unavailable:
            servers.ensure_isolated("bench.zipf_http", sys.argv[1:])
    key = hashlib.sha256(repr(w).encode()).hexdigest()[:12]
    models = Path(tempfile.gettempdir()) / f"modelfleet-bench-zipf-{key}"
    began = time.perf_counter()
    sizes = build_models(models, w)
    print(f"{len(sizes)} models ready in {time.perf_counter() - began:.1f} s", file=sys.stderr)
    room_bytes = int(w.room_models * sum(sizes.values()) / len(sizes))
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-zipf-") as scratch:
        work = Path(scratch)
        trace = work / "trace.txt"
        trace.write_text("\n".join(zipf_trace(sorted(sizes), w)) + "\n")
        body = work / "row.csv"
        body.write_text(",".join(f"{v:.6f}" for v in features(7, 1, N_FEATURES)[0]) + "\n")
        for system in systems:
            if PEER_NEEDS.get(system) in unavailable:
                reason = unavailable[PEER_NEEDS[system]]
                rows.append({"system": system, "unavailable": reason})
                continue
            try:
                rows.append(run_system(system, work, models, w, room_bytes, trace, body))
            except ServerError as exc:
                rows.append({"system": system, "unavailable": str(exc)[:300]})
            print(f"{system}: {rows[-1]}", file=sys.stderr)
    columns = ["system", "throughput", "p50_ms", "p99_ms", "hit_ratio", "hit_ratio_by_loads"]
    columns += ["loads", "ok", "errors"]
    print_table(rows, [*columns, "unavailable"], title=f"End-to-end Zipf: {w}")
    params = {**vars(w), "room_bytes": room_bytes, "systems": systems, "ray_best": RAY_BEST}
    params["revision"] = servers.source_revision()
    params["model_bytes"] = {"min": min(sizes.values()), "max": max(sizes.values())}
    params["model_bytes"]["mean"] = sum(sizes.values()) / len(sizes)
    path = write_results("zipf_http", quick=args.quick, params=params, rows=rows, out=args.out)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()

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

    python -m bench.fleet [--quick]

Quick mode: 600 Zipf requests instead of 4,000 and 300 hot-model requests instead of 2,000.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from bench import servers
from bench.common import parser, print_table, write_results
from bench.zipf_http import N_FEATURES, Workload, build_models, modelfleet_counts, zipf_trace
from tests.artifacts import features, inference_py_artifact

INSTANCES = 3
ROOM_PER_INSTANCE = 8


def landed(cache: Path) -> Counter[str]:
    """Models found in the instances' disk caches: model -> number of instances."""
    counts: Counter[str] = Counter()
    for meta in cache.glob("instance-*/models/*/meta.json"):
        counts[json.loads(meta.read_text())["target_model"]] += 1
    return counts


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
        during = holders(server.url)
        deadline = time.monotonic() + 6.0  # 3 idle periods of trickle
        while time.monotonic() < deadline:
            httpx.post(url, content=b"x", headers=headers)
            time.sleep(0.2)
        after = holders(server.url)
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


def router_cost(work: Path, duration_s: float) -> list[dict[str, Any]]:
    from tests.artifacts import sklearn_artifact

    source = work / "router-source"
    (source / "forest").mkdir(parents=True)
    (source / "forest" / "model.tar.gz").write_bytes(sklearn_artifact(seed=1, n_trees=10))
    body = work / "forest-row.csv"
    body.write_text(",".join(["0.5"] * N_FEATURES) + "\n")
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


def main() -> None:
    args = parser(__doc__ or "").parse_args()
    w = Workload(60, 600 if args.quick else 4000, ROOM_PER_INSTANCE * INSTANCES)
    key = hashlib.sha256(repr(("fleet", w)).encode()).hexdigest()[:12]
    models = Path(tempfile.gettempdir()) / f"modelfleet-bench-fleet-{key}"
    sizes = build_models(models, w)
    room = int(ROOM_PER_INSTANCE * sum(sizes.values()) / len(sizes))
    names = zipf_trace(sorted(sizes), w)
    popularity = {name: rank for rank, (name, _) in enumerate(Counter(names).most_common(), 1)}
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as scratch:
        work = Path(scratch)
        trace = work / "trace.txt"
        trace.write_text("\n".join(names) + "\n")
        for routing in ("affinity", "random"):
            row = run(routing, work, models, w, room, trace)
            row["ranks_on_3_or_more"] = sorted(
                popularity.get(m, 0) for m, n in row.pop("spread").items() if n > 2
            )
            rows.append(row)
            print(f"{routing}: {row}", file=sys.stderr)
        hot_requests = 300 if args.quick else 2000
        hot = [hot_model(work, count, hot_requests) for count in (1, INSTANCES)]
        router = router_cost(work, 2.0 if args.quick else 4.0)
    columns = ["routing", "throughput", "p50_ms", "p99_ms", "hit_ratio", "loads", "errors"]
    columns += ["max_instances_per_model", "models_on_3_or_more"]
    print_table(rows, columns, title=f"Fleet of {INSTANCES}: {w}")
    hot_columns = ["instances", "throughput", "p50_ms", "p99_ms", "errors"]
    hot_columns += ["holders_under_load", "holders_after_idle"]
    print_table(hot, hot_columns, title="One hot model (20 ms, GIL released), concurrency 24")
    router_columns = ["setup", "concurrency", "throughput", "p50_ms", "p99_ms", "p50_added_ms"]
    print_table(router, [*router_columns, "vs_in_process", "errors"], title="The router's cost")
    params = {**vars(w), "instances": INSTANCES, "room_bytes_per_instance": room}
    params["revision"] = servers.source_revision()
    path = write_results(
        "fleet",
        quick=args.quick,
        params=params,
        rows=rows,
        out=args.out,
        extra={"hot": hot, "router": router},
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()

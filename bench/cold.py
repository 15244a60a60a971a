"""Cold path: one request for a model that is nowhere yet, broken down, against the raw steps.

Artifacts of about 1, 10 and 100 MB (scikit-learn forest, XGBoost) sit in an S3-compatible
server (moto, its own process) reached over HTTP. For each, alternately (which of the two goes
first alternates too, so neither always runs right after the other's disk writes):

- **raw**: what a script does by hand — obstore get streamed to a file, tarfile extract,
  framework load, one predict — in this warmed-up process, which keeps each model it loads
  until the end of the run, as the server keeps its models. (Before
  2026-11-25 each raw run freed its model and the next one reused that heap instead of faulting
  fresh pages in, which no server that keeps its models loaded can do: a 1 MB XGBoost booster
  loaded in 1.0 ms that way against 1.9 ms when the earlier ones stay loaded. A fresh process
  per raw run was tried too and is not used: it also pays a new process's warm-up, which a
  running server does not; in a quick run its raw steps took 2-5x as long.)
- **modelfleet**: one request to a ``modelfleet serve`` process whose source is that bucket,
  timed at the client, with the server's own breakdown from ``/metrics`` (download + unpack,
  load, inference; the rest is overhead).

Each repetition uses fresh object keys, so every request is truly cold. Full mode repeats 9
times at 1 MB and 5 at 10 and 100 MB (medians; 100 MB loads swing most from run to run on a
shared machine); quick mode once.

    python -m bench.cold [--quick]
"""

from __future__ import annotations

import statistics
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.artifacts import artifact, sample_row
from bench.common import parser, print_table, write_results
from bench.moto import fleet_args, moto_server, s3_client, s3_env
from tests.servers import metric, process_server

BUCKET = "bench-cold"


def repetitions(size_mb: float, quick: bool) -> int:
    """Runs per model and size: more where one run is short and noise weighs most."""
    if quick:
        return 1
    return 9 if size_mb < 5 else 5


def raw_cold(url: str, key: str, kind: str, workdir: Path, keep: list[Any]) -> dict[str, float]:
    """The raw steps, timed one by one; the model loaded is appended to ``keep``."""
    import numpy as np
    from obstore.store import S3Store

    store = S3Store(
        BUCKET,
        config={
            "endpoint": url,
            "region": "us-east-1",
            "access_key_id": "bench",
            "secret_access_key": "bench",
        },
        client_options={"allow_http": True},
    )
    archive = workdir / "model.tar.gz"
    unpacked = workdir / "model"
    started = time.perf_counter()
    import obstore

    with archive.open("wb") as out:
        for chunk in obstore.get(store, key).stream(min_chunk_size=1 << 20):
            out.write(chunk)
    downloaded = time.perf_counter()
    with tarfile.open(archive, "r:gz") as tar:
        tar.extractall(unpacked, filter="data")
    extracted = time.perf_counter()
    row = np.array([float(v) for v in sample_row().decode().split(",")]).reshape(1, -1)
    if kind == "sklearn":
        import joblib

        model = joblib.load(unpacked / "model.joblib")
        loaded = time.perf_counter()
        model.predict(row)
        keep.append(model)
    else:
        import xgboost

        booster = xgboost.Booster(model_file=str(unpacked / "xgboost-model"))
        loaded = time.perf_counter()
        booster.inplace_predict(row)
        keep.append(booster)
    done = time.perf_counter()
    return {
        "download_s": downloaded - started,
        "unpack_s": extracted - downloaded,
        "load_s": loaded - extracted,
        "infer_s": done - loaded,
        "total_s": done - started,
    }


def fleet_cold(http: httpx.Client, key: str, metrics_url: str) -> dict[str, float]:
    """One cold request (on a warm keep-alive connection); the server's own breakdown (from
    ``metrics_url``, on its admin listener)."""
    before = http.get(metrics_url).text
    started = time.perf_counter()
    response = http.post(
        "/endpoints/default/invocations",
        content=sample_row(),
        headers={"Content-Type": "text/csv", "X-Amzn-SageMaker-Target-Model": key},
        timeout=600,
    )
    total = time.perf_counter() - started
    response.raise_for_status()
    after = http.get(metrics_url).text

    def delta(name: str) -> float:
        return metric(after, name) - metric(before, name)

    download = delta("modelfleet_model_downloading_time_seconds_sum")
    load = delta("modelfleet_model_loading_time_seconds_sum")
    infer = delta("modelfleet_model_latency_seconds_sum")
    assert delta("modelfleet_model_downloads_total") == 1, "the request was not cold"
    return {
        "download_unpack_s": download,
        "load_s": load,
        "infer_s": infer,
        "overhead_s": total - download - load - infer,
        "total_s": total,
    }


Keys = dict[tuple[str, float, int], tuple[str, str]]


def upload(s3: Any, kinds: list[str], reps: dict[float, int]) -> tuple[Keys, dict[Any, float]]:
    """Put each artifact under fresh raw and fleet keys per repetition, plus one warm-up model
    per kind; return the keys and each artifact's size in MB."""
    keys: Keys = {}
    sizes_mb: dict[Any, float] = {}
    for kind in kinds:
        for size, count in reps.items():
            data = artifact(kind, size)
            sizes_mb[kind, size] = len(data) / 1e6
            for rep in range(count):
                raw_key = f"raw/{kind}-{size:g}-{rep}/model.tar.gz"
                fleet_key = f"{kind}-{size:g}-{rep}/model.tar.gz"
                s3.put_object(Bucket=BUCKET, Key=raw_key, Body=data)
                s3.put_object(Bucket=BUCKET, Key=f"fleet/{fleet_key}", Body=data)
                keys[kind, size, rep] = (raw_key, fleet_key)
        warm = artifact(kind, 1.0, seed=1)  # imports are a one-time cost, not a cold load's
        for prefix in ("fleet", "raw"):
            s3.put_object(Bucket=BUCKET, Key=f"{prefix}/warm-{kind}/model.tar.gz", Body=warm)
    return keys, sizes_mb


def compare(
    http: httpx.Client,
    metrics_url: str,
    url: str,
    tmp: str,
    kind: str,
    keys: list[tuple[str, str]],
    kept: list[Any],
) -> dict[str, Any]:
    """Raw steps and modelfleet on each pair of keys, the order alternating; the medians. The
    raw side's models are appended to ``kept``."""
    raws, fleets = [], []
    for rep, (raw_key, fleet_key) in enumerate(keys):
        if rep % 2:
            fleets.append(fleet_cold(http, fleet_key, metrics_url))
        with tempfile.TemporaryDirectory(dir=tmp) as work:
            raws.append(raw_cold(url, raw_key, kind, Path(work), kept))
        if not rep % 2:
            fleets.append(fleet_cold(http, fleet_key, metrics_url))
    raw = {k: statistics.median(r[k] for r in raws) for k in raws[0]}
    fleet = {k: statistics.median(f[k] for f in fleets) for k in fleets[0]}
    return {
        "raw_download_unpack_s": raw["download_s"] + raw["unpack_s"],
        "raw_load_s": raw["load_s"],
        "raw_total_s": raw["total_s"],
        "mf_download_unpack_s": fleet["download_unpack_s"],
        "mf_load_s": fleet["load_s"],
        "mf_infer_s": fleet["infer_s"],
        "mf_overhead_s": fleet["overhead_s"],
        "mf_total_s": fleet["total_s"],
        "ratio": fleet["total_s"] / raw["total_s"],
        "raw_runs": raws,
        "mf_runs": fleets,
    }


COLUMNS = [
    "model",
    "artifact_mb",
    "raw_download_unpack_s",
    "raw_load_s",
    "raw_total_s",
    "mf_download_unpack_s",
    "mf_load_s",
    "mf_overhead_s",
    "mf_total_s",
    "ratio",
]


def main() -> None:
    args = parser(__doc__ or "").parse_args()
    sizes = [1.0, 10.0] if args.quick else [1.0, 10.0, 100.0]
    kinds = ["sklearn", "xgboost"]
    reps = {size: repetitions(size, args.quick) for size in sizes}
    rows: list[dict[str, Any]] = []
    with moto_server() as url, tempfile.TemporaryDirectory() as tmp:
        s3 = s3_client(url)
        s3.create_bucket(Bucket=BUCKET)
        keys, sizes_mb = upload(s3, kinds, reps)
        server_args = fleet_args(f"s3://{BUCKET}/fleet/", f"{tmp}/cache")
        with (
            process_server(server_args, env=s3_env(url), log=Path(tmp) / "server.log") as srv,
            httpx.Client(base_url=srv.url) as http,
        ):
            for kind in kinds:
                with tempfile.TemporaryDirectory(dir=tmp) as work:
                    raw_cold(url, f"raw/warm-{kind}/model.tar.gz", kind, Path(work), [])
                fleet_cold(http, f"warm-{kind}/model.tar.gz", f"{srv.admin_url}/metrics")
            kept: list[Any] = []  # the raw side keeps its models to the end, as the server does
            for kind in kinds:
                for size in sizes:
                    pairs = [keys[kind, size, rep] for rep in range(reps[size])]
                    row = {"model": kind, "artifact_mb": round(sizes_mb[kind, size], 1)}
                    rows.append(
                        row | compare(http, f"{srv.admin_url}/metrics", url, tmp, kind, pairs, kept)
                    )
    print_table(rows, COLUMNS, title="Cold path (medians); ratio = modelfleet / raw")
    params = {"sizes_mb": sizes, "kinds": kinds}
    params["repetitions"] = {f"{k:g} MB": n for k, n in reps.items()}
    path = write_results("cold", quick=args.quick, out=args.out, rows=rows, params=params)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()

"""Herds and parallel loads.

1. **Herd**: 100 concurrent requests for one cold model. Counts downloads and loads (from the
   server's metrics): single flight means one of each, and 100 identical answers.
2. **Parallel cold loads**: 8 different cold models requested at once, against the slowest of
   the same models loaded one at a time (a server that serialises loads behind one lock, as
   Ray Serve's multiplexing does, takes the sum instead). Two mixes: eight 10 MB models, and
   sizes from 1 to 10 MB. The target: the batch within 1.5 x max(the slowest single, the
   server's CPU time for the singles / the machine's cores), ``ratio_to_bound`` <= 1.5; the
   second term is what the cores allow when the loads are CPU work.

Artifacts live in an S3-compatible server (moto, its own process) over HTTP; the server under
test is a ``modelfleet serve`` process. Full mode measures the parallel loads twice: straight
to moto on loopback (about 1 ms to first byte, memory-speed streams: every load is CPU-bound
on this machine) and through ``bench.shaper``, which gives each request S3-like latency and
each connection an S3-like bandwidth (``--s3-latency-ms``, ``--s3-mbps``; 30 ms and 80 MB/s by
default). Quick mode: loopback only, one repetition of the 1-10 MB mix.

    python -m bench.herds [--quick] [--s3-latency-ms MS] [--s3-mbps MBPS]
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.artifacts import artifact, sample_row
from bench.common import parser, print_table, write_results
from bench.moto import fleet_args, moto_server, s3_client, s3_env
from bench.shaper import shaped
from tests.servers import metric, process_server

BUCKET = "bench-herds"
MIXES = {
    "8 x 10 MB": [("sklearn", 10.0)] * 4 + [("xgboost", 10.0)] * 4,
    "1-10 MB": [("sklearn", 1.0), ("xgboost", 1.0), ("sklearn", 10.0), ("xgboost", 10.0)] * 2,
}


async def _invoke(http: httpx.AsyncClient, key: str) -> tuple[int, bytes, float]:
    started = time.perf_counter()
    response = await http.post(
        "/endpoints/default/invocations",
        content=sample_row(),
        headers={"Content-Type": "text/csv", "X-Amzn-SageMaker-Target-Model": key},
        timeout=600,
    )
    return response.status_code, response.content, time.perf_counter() - started


async def herd(url: str, admin_url: str, key: str, size: int) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=size, max_keepalive_connections=size)
    async with httpx.AsyncClient(base_url=url, limits=limits) as http:
        before = (await http.get(f"{admin_url}/metrics")).text
        started = time.perf_counter()
        results = await asyncio.gather(*(_invoke(http, key) for _ in range(size)))
        wall = time.perf_counter() - started
        after = (await http.get(f"{admin_url}/metrics")).text

    def delta(name: str) -> float:
        return metric(after, name) - metric(before, name)

    return {
        "requests": size,
        "ok": sum(1 for status, _, _ in results if status == 200),
        "distinct_answers": len({body for _, body, _ in results}),
        "downloads": delta("modelfleet_model_downloads_total"),
        "loads": delta("modelfleet_model_loading_time_seconds_count"),
        "wall_s": wall,
    }


async def cold_batch(url: str, keys: list[str]) -> tuple[float, list[float]]:
    limits = httpx.Limits(max_connections=len(keys))
    async with httpx.AsyncClient(base_url=url, limits=limits) as http:
        await http.get("/ping")
        started = time.perf_counter()
        results = await asyncio.gather(*(_invoke(http, key) for key in keys))
        wall = time.perf_counter() - started
    assert all(status == 200 for status, _, _ in results), results
    return wall, [elapsed for _, _, elapsed in results]


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (``/proc``)."""
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


async def one_at_a_time(url: str, keys: list[str], pid: int | None = None) -> list[float]:
    """Wall seconds of each request in turn; with ``pid``, the server's CPU seconds for all of
    them appended last."""
    times = []
    used = cpu_s(pid) if pid is not None else 0.0
    async with httpx.AsyncClient(base_url=url) as http:
        await http.get("/ping")
        for key in keys:
            status, _, elapsed = await _invoke(http, key)
            assert status == 200
            times.append(elapsed)
    if pid is not None:
        times.append(cpu_s(pid) - used)
    return times


class ColdModels:
    """Puts each run's cold models into the bucket just before use and deletes them after
    (moto keeps objects in memory, and a gigabyte of them slowed every GET in full mode)."""

    def __init__(self, s3: Any, mixes: dict[str, list[tuple[str, float]]]) -> None:
        self.s3 = s3
        self.mixes = mixes

    def upload(self, network: str, name: str, rep: int, phase: str) -> list[str]:
        batch = []
        for index, (kind, size) in enumerate(self.mixes[name]):
            key = f"{network}-{phase}-{rep}-{name.replace(' ', '')}-{index}/model.tar.gz"
            self.s3.put_object(Bucket=BUCKET, Key=key, Body=artifact(kind, size))
            batch.append(key)
        return batch

    def delete(self, keys: list[str]) -> None:
        self.s3.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": k} for k in keys]})

    def measure(self, url: str, pid: int, network: str, name: str, rep: int) -> dict[str, Any]:
        """The mix one at a time, then all at once (fresh keys for each), as a result row."""
        single_keys = self.upload(network, name, rep, "single")
        batch_keys = self.upload(network, name, rep, "batch")
        *singles, singles_cpu = asyncio.run(one_at_a_time(url, single_keys, pid))
        wall, each = asyncio.run(cold_batch(url, batch_keys))
        self.delete(single_keys + batch_keys)
        bound = max(max(singles), singles_cpu / (os.cpu_count() or 1))
        return {
            "network": network,
            "mix": name,
            "rep": rep,
            "slowest_single_s": max(singles),
            "sum_of_singles_s": sum(singles),
            "batch_wall_s": wall,
            "ratio_to_slowest": wall / max(singles),
            "singles_cpu_s": singles_cpu,
            "ratio_to_bound": wall / bound,
            "singles_s": singles,
            "batch_each_s": each,
        }


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--s3-latency-ms", type=float, default=30.0, help="shaped: first-byte wait")
    p.add_argument("--s3-mbps", type=float, default=80.0, help="shaped: MB/s per connection")
    args = p.parse_args()
    herd_size = 100
    reps = 1 if args.quick else 3
    mixes = {"1-10 MB": MIXES["1-10 MB"]} if args.quick else MIXES
    networks = ["loopback"] if args.quick else ["loopback", "s3-like"]
    rows: list[dict[str, Any]] = []
    with moto_server() as url, tempfile.TemporaryDirectory() as tmp:
        s3 = s3_client(url)
        s3.create_bucket(Bucket=BUCKET)
        s3.put_object(Bucket=BUCKET, Key="herd/model.tar.gz", Body=artifact("sklearn", 10.0))
        cold = ColdModels(s3, mixes)
        for kind in ("sklearn", "xgboost"):  # imports are a one-time cost: pay them first
            s3.put_object(
                Bucket=BUCKET, Key=f"warm-{kind}/model.tar.gz", Body=artifact(kind, 1.0, seed=1)
            )
        herd_row: dict[str, Any] = {}
        for network in networks:
            with contextlib.ExitStack() as stack:
                endpoint = url
                if network == "s3-like":
                    endpoint = stack.enter_context(
                        shaped(url, latency_ms=args.s3_latency_ms, mbps=args.s3_mbps)
                    )
                server_args = fleet_args(f"s3://{BUCKET}/", f"{tmp}/cache-{network}")
                log = Path(tmp) / f"server-{network}.log"
                srv = stack.enter_context(
                    process_server(server_args, env=s3_env(endpoint), log=log)
                )
                warm = [f"warm-{k}/model.tar.gz" for k in ("sklearn", "xgboost")]
                asyncio.run(one_at_a_time(srv.url, warm))
                if network == "loopback":
                    herd_row = asyncio.run(
                        herd(srv.url, srv.admin_url, "herd/model.tar.gz", herd_size)
                    )
                assert srv.proc is not None
                rows += [
                    cold.measure(srv.url, srv.proc.pid, network, name, rep)
                    for name in mixes
                    for rep in range(reps)
                ]
    print_table(
        [herd_row],
        ["requests", "ok", "distinct_answers", "downloads", "loads", "wall_s"],
        title="Herd: concurrent requests for one cold model",
    )
    columns = ["network", "mix", "rep", "slowest_single_s", "sum_of_singles_s", "batch_wall_s"]
    print_table(
        rows,
        [*columns, "singles_cpu_s", "ratio_to_slowest", "ratio_to_bound"],
        title="8 different cold models at once vs the slowest single cold request",
    )
    path = write_results(
        "herds",
        quick=args.quick,
        out=args.out,
        rows=rows,
        params={
            "herd_size": herd_size,
            "mixes": {k: v for k, v in mixes.items()},
            "repetitions": reps,
            "networks": networks,
            "s3_like": {"latency_ms": args.s3_latency_ms, "mbps": args.s3_mbps},
        },
        extra={"herd": herd_row},
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()

"""Scale: a model source holding 100,000 tiny models.

- **Start-up**: time to ``/ping`` with the big source against a source of 10 models (the server
  must not list or stat the source at start).
- **Memory per model seen**: RSS growth (at rest) after 10,000 distinct models were invoked, less
  the growth of the bytes charged for loaded models, per model (bookkeeping: disk index, policy
  history...). Shown over all 10,000 and over the second 5,000 only (the marginal cost of one
  more model: by then the loaded set is at its steady size, so the loaded models' memory beyond
  their charged bytes and one-time growth, such as the interpreter's interned-string table, are
  left out).
- **Request overhead**: warm-hit p50 latency on one model before and after those 10,000.

The source is a local folder (the embedded default; start-up behaviour is the same for S3).

    python -m bench.scale [--quick]
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.common import parser, print_table, write_results
from tests.servers import metric, process_server

SETTLE_S = 2.5


def tiny_model() -> bytes:
    import joblib
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 10))
    model = LogisticRegression().fit(x, x[:, 0] > 0)
    buffer = io.BytesIO()
    joblib.dump(model, buffer)
    return buffer.getvalue()


def make_source(root: Path, count: int, data: bytes) -> list[str]:
    root.mkdir(parents=True)
    names = []
    for i in range(count):
        name = f"m{i:06d}.joblib"
        (root / name).write_bytes(data)
        names.append(name)
    return names


def loadgen(
    url: str,
    *,
    targets: Path | None,
    concurrency: int,
    requests: int | None,
    target: str | None = None,
    duration: float = 600.0,
) -> dict[str, Any]:
    body = ",".join(["0.5"] * 10)
    command = [
        sys.executable,
        "-m",
        "bench.loadgen",
        "--url",
        f"{url}/endpoints/default/invocations",
        "--concurrency",
        str(concurrency),
        "--duration",
        str(duration),
        "--header",
        "Content-Type: text/csv",
        "--body",
        body,
        "--warmup",
        "0" if target is None else "20",
    ]
    if targets is not None:
        command += ["--targets-file", str(targets)]
    if requests is not None:
        command += ["--requests", str(requests)]
    if target is not None:
        command += ["--header", f"X-Amzn-SageMaker-Target-Model: {target}"]
    out = subprocess.run(command, check=True, capture_output=True, text=True, timeout=900)
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def startup_seconds(source: Path, tmp: Path, tag: str) -> float:
    started = time.perf_counter()
    args = [
        "--model-source",
        str(source),
        "--cache-dir",
        str(tmp / f"cache-{tag}"),
        "--log-level",
        "warning",
    ]
    with process_server(args, log=tmp / f"{tag}.log"):
        return time.perf_counter() - started


def snapshot(url: str, pid: int) -> tuple[int, float, float]:
    """The server's RSS at rest, the bytes charged for loaded models, and how many are loaded.

    At rest: after SETTLE_S without requests, by when the instance has handed freed heap pages
    back to the OS (its RSS watcher does once unloads pause for a second; under load they are
    kept for the next load, see modelfleet.instance.pressure).
    """
    time.sleep(SETTLE_S)
    rss = psutil.Process(pid).memory_info().rss
    text = httpx.get(f"{url}/metrics").text
    used = metric(text, "modelfleet_memory_used_bytes")
    return rss, used, metric(text, "modelfleet_loaded_model_count")


def main() -> None:
    args = parser(__doc__ or "").parse_args()
    total = 20_000 if args.quick else 100_000
    touched = 2_000 if args.quick else 10_000
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        data = tiny_model()
        started = time.perf_counter()
        names = make_source(tmp / "big", total, data)
        make_source(tmp / "small", 10, data)
        build_s = time.perf_counter() - started
        small = min(startup_seconds(tmp / "small", tmp, f"small{i}") for i in range(3))
        big = min(startup_seconds(tmp / "big", tmp, f"big{i}") for i in range(3))
        rows.append({"figure": "start-up, 10-model source (s)", "value": small})
        rows.append({"figure": f"start-up, {total:,}-model source (s)", "value": big})
        rows.append({"figure": "start-up ratio (big / small)", "value": big / small})

        half = touched // 2
        first, second = tmp / "targets-1.txt", tmp / "targets-2.txt"
        first.write_text("\n".join(names[:half]) + "\n")
        second.write_text("\n".join(names[half:touched]) + "\n")
        server_args = [
            "--model-source",
            str(tmp / "big"),
            "--cache-dir",
            str(tmp / "cache"),
            "--memory-limit",
            "1MiB",  # a few hundred tiny models: most of the 10,000 are seen, not loaded
            "--disk-limit",
            "10GiB",
            "--log-level",
            "warning",
        ]
        with process_server(server_args, log=tmp / "server.log") as srv:
            hot = names[-1]
            before = loadgen(srv.url, targets=None, concurrency=1, requests=2000, target=hot)
            rss_before, used_before, _ = snapshot(srv.admin_url, srv.pid)
            sweep = loadgen(srv.url, targets=first, concurrency=8, requests=None)
            rss_half, used_half, _ = snapshot(srv.admin_url, srv.pid)
            sweep2 = loadgen(srv.url, targets=second, concurrency=8, requests=None)
            after = loadgen(srv.url, targets=None, concurrency=1, requests=2000, target=hot)
            rss_after, used_after, loaded = snapshot(srv.admin_url, srv.pid)
        per_model = (rss_after - rss_before - (used_after - used_before)) / touched
        marginal = (rss_after - rss_half - (used_after - used_half)) / (touched - half)
        errors = sweep["errors"] + sweep2["errors"]
        throughput = (sweep["ok"] + sweep2["ok"]) / (sweep["seconds"] + sweep2["seconds"])
        rows.append(
            {
                "figure": f"distinct models invoked (errors: {errors})",
                "value": float(touched),
            }
        )
        rows.append({"figure": "throughput of the sweep (req/s, all cold)", "value": throughput})
        rows.append({"figure": "models loaded at the end", "value": loaded})
        rows.append({"figure": "RSS growth per model seen, all (bytes)", "value": per_model})
        rows.append({"figure": "RSS growth per model seen, second half (bytes)", "value": marginal})
        rows.append({"figure": "warm p50 before (ms)", "value": before["p50_ms"]})
        rows.append({"figure": f"warm p50 after {touched:,} models (ms)", "value": after["p50_ms"]})
        rows.append(
            {
                "figure": "warm p50 ratio (after / before)",
                "value": after["p50_ms"] / before["p50_ms"],
            }
        )
    print_table(rows, ["figure", "value"], title=f"Scale: {total:,} models in the source")
    path = write_results(
        "scale",
        quick=args.quick,
        out=args.out,
        rows=rows,
        params={"models_in_source": total, "models_touched": touched, "source_build_s": build_s},
        extra={"sweeps": [sweep, sweep2], "warm_before": before, "warm_after": after},
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()

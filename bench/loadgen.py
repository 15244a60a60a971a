"""A closed-loop HTTP load generator, run as its own process so it never shares a GIL with the
server under test.

``python -m bench.loadgen --url URL --concurrency 16 --duration 10 [--requests N]
--header 'Name: value' --body-file F [--targets-file F]`` prints one JSON object: requests,
errors, seconds, throughput, p50/p90/p99/p99.9 latency in ms, plus per-status counts. With
``--targets-file`` (one target model a line) request *i* sends target line *i* in the
``X-Amzn-SageMaker-Target-Model`` header (a replayable trace).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter
from pathlib import Path

import aiohttp

TARGET_HEADER = "X-Amzn-SageMaker-Target-Model"


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


async def run(
    args: argparse.Namespace, body: bytes, targets: list[str] | None
) -> dict[str, object]:
    headers = dict(h.split(":", 1) for h in args.header)
    headers = {k.strip(): v.strip() for k, v in headers.items()}
    limit = len(targets) if targets is not None else args.requests
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    failures: list[dict[str, object]] = []  # the first few, to say what went wrong
    issued = 0
    deadline = time.perf_counter() + args.duration
    connector = aiohttp.TCPConnector(limit=args.concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=args.timeout)

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker() -> None:
            nonlocal issued
            while time.perf_counter() < deadline and (limit is None or issued < limit):
                index = issued
                issued += 1
                sent = headers
                if targets is not None:
                    sent = {**headers, TARGET_HEADER: targets[index]}
                started = time.perf_counter()
                try:
                    async with session.post(args.url, data=body, headers=sent) as response:
                        answer = await response.read()
                        statuses[response.status] += 1
                        if response.status != 200 and len(failures) < _FAILURES_KEPT:
                            failures.append(_failure(response.status, sent, answer))
                except (aiohttp.ClientError, TimeoutError) as exc:
                    statuses[-1] += 1
                    if len(failures) < _FAILURES_KEPT:
                        failures.append(_failure(-1, sent, repr(exc).encode()))
                    continue
                latencies.append(time.perf_counter() - started)

        # Warm-up requests are not counted.
        for _ in range(args.warmup):
            async with session.post(args.url, data=body, headers=headers) as response:
                await response.read()
        deadline = time.perf_counter() + args.duration
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        elapsed = time.perf_counter() - started

    ok = sorted(latencies)
    errors = sum(n for status, n in statuses.items() if status != 200)
    return {
        "requests": sum(statuses.values()),
        "ok": statuses.get(200, 0),
        "errors": errors,
        "statuses": {str(k): v for k, v in statuses.items()},
        "seconds": elapsed,
        "throughput": statuses.get(200, 0) / elapsed if elapsed else 0.0,
        "p50_ms": 1000 * percentile(ok, 0.50),
        "p90_ms": 1000 * percentile(ok, 0.90),
        "p99_ms": 1000 * percentile(ok, 0.99),
        "p999_ms": 1000 * percentile(ok, 0.999),
        "failures": failures,
    }


_FAILURES_KEPT = 5


def _failure(status: int, headers: dict[str, str], answer: bytes) -> dict[str, object]:
    """What one failed request was sent and got (its answer cut to 500 characters)."""
    text = answer.decode("utf-8", "replace")[:500]
    return {"status": status, "target": headers.get(TARGET_HEADER), "answer": text}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--url", required=True)
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--requests", type=int, default=None)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--header", action="append", default=[])
    p.add_argument("--body", default="")
    p.add_argument("--body-file")
    p.add_argument("--targets-file")
    args = p.parse_args()
    body = Path(args.body_file).read_bytes() if args.body_file else args.body.encode()
    targets = Path(args.targets_file).read_text().split() if args.targets_file else None
    print(json.dumps(asyncio.run(run(args, body, targets))))


if __name__ == "__main__":
    main()

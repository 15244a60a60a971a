"""Per-call cost of the request path's pure-Python helpers, measured outside any server.

``python -m bench.hotpath [--quick]``

Two things every invocation pays besides the model and HTTP: decoding a one-row CSV body and
encoding the prediction as JSON (``handlers/codecs``), and validating the target model's name
(``source/target``). Each case runs many calls per round; the table shows the median and the
best round in microseconds per call. These figures were once asserted by unit tests (a CSV row
in and JSON out under 50 us, a name in about a microsecond); a test that reads a clock fails at
random on a loaded machine, so the claims are measured here instead. ``bench.warm --profile``
shows the same codecs inside a running server, per request.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np

from bench.common import parser, print_table, write_results
from modelfleet.handlers import codecs
from modelfleet.source import validate_target_model

ROW = b"1990,2500,3,2,1.25,2"
CONTENT_TYPE = "text/csv; charset=utf-8"


def _codecs(calls: int) -> Callable[[], None]:
    prediction = np.array([123.5], dtype=np.float32)

    def run() -> None:
        for _ in range(calls):
            codecs.decode_matrix(ROW, CONTENT_TYPE)
            codecs.encode(prediction, "application/json")

    return run


def _target_names(calls: int) -> Callable[[], None]:
    names = [f"customer-{index}/model-{index}.tar.gz" for index in range(calls)]

    def run() -> None:
        for name in names:
            validate_target_model(name)

    return run


CASES: dict[str, tuple[str, Callable[[int], Callable[[], None]]]] = {
    "codecs": ("one CSV row in, JSON out", _codecs),
    "target": ("target model name validated", _target_names),
}


def measure(case: str, calls: int, rounds: int) -> dict[str, object]:
    description, make = CASES[case]
    run = make(calls)
    run()  # warm-up: imports, caches
    per_call_us = []
    for _ in range(rounds):
        started = time.perf_counter()
        run()
        per_call_us.append((time.perf_counter() - started) / calls * 1e6)
    return {
        "case": case,
        "what": description,
        "calls": calls,
        "rounds": rounds,
        "median_us": statistics.median(per_call_us),
        "best_us": min(per_call_us),
    }


def main() -> None:
    p = parser(__doc__ or "")
    args = p.parse_args()
    calls, rounds = (2_000, 3) if args.quick else (20_000, 15)
    rows = [measure(case, calls, rounds) for case in CASES]
    print_table(
        rows,
        ["case", "what", "calls", "rounds", "median_us", "best_us"],
        title="Request-path helpers, microseconds per call",
    )
    params = {"calls": calls, "rounds": rounds}
    path = write_results("hotpath", quick=args.quick, params=params, rows=rows, out=args.out)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()

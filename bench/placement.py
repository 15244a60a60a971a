"""How well can N instances with room R/N each cache, against one instance with room R?

``python -m bench.placement [--quick] [--rooms 20,40,60]``

The bound behind the split-cache target of issue 13, computed without servers: the end-to-end
Zipf benchmark's own forests and traces (:mod:`bench.zipf_http`: 200 models of 0.5-5 MB, the
``zipf`` and ``shifting`` traces of 5,000 requests) replayed one request at a time through the
real MemoryCache and the default policy (:func:`modelfleet.plan.sim.simulate`), for one
instance with room R and for fleets of 2 and 3 with room R/N each, at several R (counted in
mean-sized models). Requests one at a time: no concurrency, so these are what placement alone
allows; live runs lose more (loads in flight hold room).

Each fleet places every model on exactly one instance (copies only take room), by:

- ``rendezvous``: the router's rendezvous-hash order over the instance ids the ``local`` and
  ``ray`` backends give (``0``, ``1``, ``2``): where every model goes with no other knowledge;
- ``oracle-*``: partitions that know how often each model is requested in the whole trace
  (no router can): models dealt hottest first to the instance with the fewest requests so far
  (``oracle-requests``), the fewest bytes so far (``oracle-bytes``), or in turn
  (``oracle-turns``). ``best-oracle`` is the best of the three per row.

Also ``one-at-0.9R``: one instance with 10% less room, to read the ratios against (a fleet
whose split wastes a tenth of its room loses about that much).

A load costs ``1 ms + 1.5 ms/MB`` here, a smooth curve in place of measured CPU seconds (the
default policy prices a miss by it); every figure is a deterministic function of the trace.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.common import parser, print_table, write_results
from bench.zipf_http import Workload, build_models, shifting_trace, zipf_trace
from modelfleet.cache.policy import make_policy
from modelfleet.config import Settings
from modelfleet.endpoint.router import rendezvous_score
from modelfleet.plan.sim import Catalogue, simulate

FLEETS = (2, 3)
ROOMS = (20, 40, 60)
POLICY = Settings().eviction_policy
Placement = Callable[[list[int], Catalogue, int], list[int]]  # trace -> instance per model


def rendezvous(trace: list[int], catalogue: Catalogue, n: int) -> list[int]:
    ids = [str(i) for i in range(n)]  # the ids the local and ray backends give
    models = range(len(catalogue.sizes))
    return [max(range(n), key=lambda i: rendezvous_score(model_name(m), ids[i])) for m in models]


def _dealt(weight: Callable[[int, int], float]) -> Placement:
    def place(trace: list[int], catalogue: Catalogue, n: int) -> list[int]:
        counts = Counter(trace)
        loads = [0.0] * n
        where = [0] * len(catalogue.sizes)
        for model in sorted(range(len(where)), key=lambda m: -counts[m]):
            instance = min(range(n), key=lambda i: loads[i])
            where[model] = instance
            loads[instance] += weight(model, counts[model]) if counts[model] else 0.0
        return where

    return place


def turns(trace: list[int], catalogue: Catalogue, n: int) -> list[int]:
    counts = Counter(trace)
    where = [0] * len(catalogue.sizes)
    for turn, model in enumerate(sorted(range(len(where)), key=lambda m: -counts[m])):
        where[model] = turn % n
    return where


def model_name(index: int) -> str:
    return f"model-{index:03d}.joblib"  # as bench.zipf_http names the forests


def fleet_hit_ratio(
    trace: list[int], catalogue: Catalogue, room_bytes: int, where: list[int], n: int
) -> float:
    """Hits of ``n`` instances with ``room_bytes // n`` each, each model on ``where[model]``."""
    hits = 0
    for instance in range(n):
        mine = [m for m in trace if where[m] == instance]
        hits += simulate(mine, catalogue, room_bytes // n, make_policy(POLICY)).hits
    return hits / len(trace)


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--rooms", default=",".join(map(str, ROOMS)), help="R values, in models")
    args = p.parse_args()
    rooms = [int(r) for r in args.rooms.split(",")]
    w = Workload(100, 1000, 10, phase=200) if args.quick else Workload(200, 5000, 20)
    key = hashlib.sha256(repr(replace(w, phase=0)).encode()).hexdigest()[:12]
    sizes = build_models(Path(tempfile.gettempdir()) / f"modelfleet-bench-zipf-{key}", w)
    names = sorted(sizes)
    catalogue = Catalogue(
        tuple(sizes[n] for n in names), tuple(0.001 + 0.0015 * sizes[n] / 1e6 for n in names)
    )
    index = {name: i for i, name in enumerate(names)}
    placements: dict[str, Placement] = {
        "rendezvous": rendezvous,
        "oracle-requests": _dealt(lambda m, count: count),
        "oracle-bytes": _dealt(lambda m, count: catalogue.sizes[m]),
        "oracle-turns": turns,
    }
    rows: list[dict[str, Any]] = []
    for trace_name, make in (("zipf", zipf_trace), ("shifting", shifting_trace)):
        trace = [index[name] for name in make(names, w)]
        for room_models in rooms:
            room = int(room_models * sum(sizes.values()) / len(sizes))
            one = simulate(trace, catalogue, room, make_policy(POLICY)).hit_ratio
            smaller = simulate(trace, catalogue, int(0.9 * room), make_policy(POLICY)).hit_ratio
            row: dict[str, Any] = {"trace": trace_name, "room_models": room_models}
            row |= {"one_hit_ratio": one, "one-at-0.9R": smaller / one}
            for n in FLEETS:
                oracles = []
                for label, place in placements.items():
                    where = place(trace, catalogue, n)
                    ratio = fleet_hit_ratio(trace, catalogue, room, where, n) / one
                    row[f"x{n} {label}"] = ratio
                    if label.startswith("oracle"):
                        oracles.append(ratio)
                row[f"x{n} best-oracle"] = max(oracles)
            rows.append(row)
            print(f"{trace_name} room {room_models}: {row}", flush=True)
    columns = ["trace", "room_models", "one_hit_ratio", "one-at-0.9R"]
    for n in FLEETS:
        columns += [f"x{n} rendezvous", f"x{n} best-oracle"]
    print_table(
        rows, columns, title=f"Fleet hit ratio / one instance's, requests one at a time ({w})"
    )
    columns = ["trace", "room_models", *(f"x{n} {label}" for n in FLEETS for label in placements)]
    print_table(rows, columns, title="Every placement")
    params = {**vars(w), "rooms": rooms, "policy": POLICY, "fleets": FLEETS}
    path = write_results("placement", quick=args.quick, params=params, rows=rows, out=args.out)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()

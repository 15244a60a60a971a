"""The workloads ``modelfleet plan`` sizes for: an access log, or a synthetic trace over a
model source's artifacts.

From an access log (:mod:`modelfleet.endpoint.accesslog`): the answered requests (status 200)
in their order, each model's memory and artifact bytes (the largest seen), its load and
download seconds (the mean of those seen; a model whose load was never seen, always a hit,
gets the load of its size on a line fitted through the others). A line that cannot be read
is reported with its number and skipped.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from modelfleet.endpoint.accesslog import COLUMNS
from modelfleet.plan.replay import Workload
from modelfleet.plan.sim import zipf_trace

MB = 1_000_000


@dataclass(slots=True)
class _Seen:
    memory: int = 0
    artifact: int = 0
    loads: list[float] = field(default_factory=list)
    downloads: list[float] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Problem:
    """A line of an access log that was skipped."""

    line: int
    reason: str


def read_access_log(paths: Iterable[Path]) -> tuple[Workload, list[Problem]]:
    """The workload of the access logs ``paths`` (oldest first: a rotated log's ``FILE.2``,
    ``FILE.1``, then ``FILE``), and the lines skipped."""
    seen: dict[str, _Seen] = {}
    order: list[str] = []
    times: list[float] = []
    problems: list[Problem] = []
    for path in paths:
        for number, fields, reason in _lines(Path(path)):
            if reason is not None:
                problems.append(Problem(number, f"{path}:{number}: {reason}"))
                continue
            row = dict(zip(COLUMNS, fields, strict=True))
            try:
                at, status = float(row["time"]), int(row["status"])
                memory, artifact = int(row["memory_bytes"]), int(row["artifact_bytes"])
                load = None if row["load_s"] == "-" else float(row["load_s"])
                download = None if row["download_s"] == "-" else float(row["download_s"])
            except ValueError as exc:
                problems.append(Problem(number, f"{path}:{number}: {exc}"))
                continue
            if status != 200:
                continue  # no model answered it
            model = row["model"]
            stats = seen.get(model)
            if stats is None:
                stats = seen[model] = _Seen()
            stats.memory = max(stats.memory, memory)
            stats.artifact = max(stats.artifact, artifact)
            if load is not None:
                stats.loads.append(load)
            if download is not None:
                stats.downloads.append(download)
            order.append(model)
            times.append(at)
    names = tuple(seen)
    index = {name: i for i, name in enumerate(names)}
    memory_sizes = _filled([seen[n].memory or None for n in names])
    artifact_sizes = _filled([seen[n].artifact or None for n in names])
    loads = _fitted([_mean(seen[n].loads) for n in names], memory_sizes)
    downloads = _fitted([_mean(seen[n].downloads) for n in names], artifact_sizes)
    workload = Workload(
        models=names,
        memory_bytes=tuple(int(m) for m in memory_sizes),
        artifact_bytes=tuple(int(a) for a in artifact_sizes),
        load_s=tuple(loads),
        download_s=tuple(downloads),
        requests=tuple(index[m] for m in order),
        seconds=(max(times) - min(times)) if times else 0.0,
    )
    return workload, problems


def _lines(path: Path) -> Iterator[tuple[int, list[str], str | None]]:
    with path.open(encoding="utf-8", errors="replace") as stream:
        for number, line in enumerate(stream, 1):
            if line.startswith("#") or not line.strip():
                continue
            fields = line.rstrip("\n").split("\t")
            if len(fields) != len(COLUMNS):
                yield number, fields, f"{len(fields)} fields, not {len(COLUMNS)}"
                continue
            yield number, fields, None


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _filled(values: list[int | None]) -> list[float]:
    """Unknown sizes (0: never measured) as the median of the known ones (1 MB if none)."""
    known = [v for v in values if v]
    middle = float(np.median(known)) if known else float(MB)
    return [float(v) if v else middle for v in values]


def _fitted(values: list[float | None], sizes: list[float]) -> list[float]:
    """Unknown times from a least-squares line through the known (size, time) pairs; with
    fewer than two known, their mean (0 if none)."""
    pairs = [(s, v) for s, v in zip(sizes, values, strict=True) if v is not None]
    if len(pairs) >= 2 and len({s for s, _ in pairs}) >= 2:
        slope, base = np.polyfit([s for s, _ in pairs], [v for _, v in pairs], 1)
    else:
        slope, base = 0.0, (sum(v for _, v in pairs) / len(pairs) if pairs else 0.0)
    return [
        v if v is not None else max(float(base + slope * s), 0.0)
        for s, v in zip(sizes, values, strict=True)
    ]


def synthetic(
    models: list[tuple[str, int]],
    *,
    requests: int,
    exponent: float,
    shift_every: int | None,
    rate_per_s: float,
    memory_per_byte: float,
    load_base_s: float,
    load_s_per_mb: float,
    download_mb_per_s: float,
    seed: int = 7,
) -> Workload:
    """A Zipf (or shifting, ``shift_every``) trace of ``requests`` over ``models`` (name,
    artifact bytes), at ``rate_per_s``; a model takes ``memory_per_byte`` times its artifact's
    bytes in memory, loads in ``load_base_s + load_s_per_mb * MB`` and downloads at
    ``download_mb_per_s``."""
    trace = zipf_trace(len(models), requests, exponent, seed, shift_every=shift_every)
    artifact = [size for _, size in models]
    return Workload(
        models=tuple(name for name, _ in models),
        memory_bytes=tuple(max(1, math.ceil(a * memory_per_byte)) for a in artifact),
        artifact_bytes=tuple(artifact),
        load_s=tuple(load_base_s + load_s_per_mb * a / MB for a in artifact),
        download_s=tuple(a / MB / download_mb_per_s for a in artifact),
        requests=trace.requests,
        seconds=requests / rate_per_s,
    )

"""Replaying a workload through a simulated fleet: what ``modelfleet plan`` measures.

Each instance has the real memory tier (:class:`~modelfleet.cache.memory.MemoryCache` and the
real eviction policy, as :func:`modelfleet.plan.sim.simulate` drives them) and a disk tier of
its own (least recently used artifacts leave first, by bytes). Requests go to instances as the
router sends a model nobody holds: the highest rendezvous score of (model, instance id), the
router's own function, so every model has one home instance. Requests are replayed one at a
time in their order; a miss costs its load (and its download first, when its artifact is not
on the instance's disk), which is the latency it adds.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

from modelfleet.cache.memory import MemoryCache
from modelfleet.cache.policy import make_policy
from modelfleet.endpoint.router import rendezvous_score


@dataclass(frozen=True, slots=True)
class Workload:
    """Requests over a catalogue of models, with what each model costs."""

    models: tuple[str, ...]  # target model names
    memory_bytes: tuple[int, ...]  # each model's footprint in memory
    artifact_bytes: tuple[int, ...]  # its artifact on disk
    load_s: tuple[float, ...]  # seconds to load it into memory
    download_s: tuple[float, ...]  # seconds to download its artifact
    requests: tuple[int, ...]  # model numbers, in order
    seconds: float  # the time the requests span (for the cost of a million)

    @property
    def total_memory_bytes(self) -> int:
        return sum(self.memory_bytes)


@dataclass(frozen=True, slots=True)
class Config:
    """One configuration of the grid: per instance budgets, and how many instances."""

    memory_bytes: int
    disk_bytes: int | None  # None: every artifact fits
    instances: int


@dataclass(frozen=True, slots=True)
class Result:
    config: Config
    requests: int
    hit_ratio: float  # requests that found their model in memory
    disk_hit_ratio: float  # misses whose artifact was on the instance's disk
    load_seconds: float  # summed over every load
    added_p50_ms: float  # the latency loads (and downloads) add to requests
    added_p99_ms: float
    downloaded_bytes: int
    cost_per_million: float | None  # given a price per instance-hour
    too_large: int = 0  # requests for models larger than the memory budget (refused)


def replay(
    workload: Workload,
    config: Config,
    *,
    policy: str = "lrfu",
    price_per_hour: float | None = None,
) -> Result:
    """``workload`` through ``config`` (see the module doc)."""
    clock = [0.0]
    memories: list[MemoryCache[None]] = [
        MemoryCache(config.memory_bytes, make_policy(policy), clock=lambda: clock[0])
        for _ in range(config.instances)
    ]
    disks: list[OrderedDict[int, int]] = [OrderedDict() for _ in range(config.instances)]
    disk_used = [0] * config.instances
    ids = [str(index) for index in range(config.instances)]
    homes: dict[int, int] = {}
    names = workload.models
    added: list[float] = []
    hits = disk_hits = downloaded = too_large = 0
    load_seconds = 0.0
    for position, model in enumerate(workload.requests):
        clock[0] = float(position)
        home = homes.get(model)
        if home is None:
            home = homes[model] = max(
                range(config.instances), key=lambda i: rendezvous_score(names[model], ids[i])
            )
        memory, disk = memories[home], disks[home]
        key = names[model]
        if workload.memory_bytes[model] > config.memory_bytes:
            too_large += 1  # the server refuses it (507): nothing is loaded
            continue
        if memory.get(key) is not None:
            hits += 1
            added.append(0.0)
            continue
        wait = workload.load_s[model]
        if model in disk:
            disk.move_to_end(model)
            disk_hits += 1
        else:
            wait += workload.download_s[model]
            downloaded += workload.artifact_bytes[model]
            disk[model] = workload.artifact_bytes[model]
            disk_used[home] += workload.artifact_bytes[model]
            while config.disk_bytes is not None and disk_used[home] > config.disk_bytes:
                _, size = disk.popitem(last=False)
                disk_used[home] -= size
        load_seconds += workload.load_s[model]
        added.append(wait)
        size = workload.memory_bytes[model]
        memory.reserve(key, size)
        memory.admit(key, None, size, cost_s=workload.load_s[model])
        memory.get(key)  # the loading request's own use, as the manager counts it
    count = len(workload.requests)
    cost: float | None = None
    if price_per_hour is not None and count:
        hours = max(workload.seconds, 1.0) / 3600.0
        cost = config.instances * price_per_hour * hours / count * 1e6
    misses = count - hits - too_large
    return Result(
        config=config,
        requests=count,
        hit_ratio=hits / count if count else 0.0,
        disk_hit_ratio=disk_hits / misses if misses else 0.0,
        load_seconds=load_seconds,
        added_p50_ms=_percentile(added, 0.50) * 1000,
        added_p99_ms=_percentile(added, 0.99) * 1000,
        downloaded_bytes=downloaded,
        cost_per_million=cost,
        too_large=too_large,
    )


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]

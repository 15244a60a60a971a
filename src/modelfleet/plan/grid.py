"""The grid of ``modelfleet plan``: every configuration replayed, the table, the cheapest that
meets a target, and the plot."""

from __future__ import annotations

from pathlib import Path

from modelfleet.config import format_size
from modelfleet.plan.replay import Config, Result, Workload, replay


def grid(
    workload: Workload,
    memories: list[int],
    disks: list[int | None],
    instances: list[int],
    *,
    policy: str,
    price_per_hour: float | None,
) -> list[Result]:
    """``workload`` replayed through every (instances, memory, disk) configuration."""
    return [
        replay(workload, Config(memory, disk, count), policy=policy, price_per_hour=price_per_hour)
        for count in instances
        for memory in sorted(memories)
        for disk in disks
    ]


def best(results: list[Result], *, target_hit: float, target_p99_ms: float | None) -> Result | None:
    """The cheapest result that meets the targets: by cost per million when priced, then by
    the memory of the whole fleet, then by fewer instances."""
    meeting = [
        r
        for r in results
        if r.hit_ratio >= target_hit
        and not r.too_large
        and (target_p99_ms is None or r.added_p99_ms <= target_p99_ms)
    ]
    if not meeting:
        return None
    return min(
        meeting,
        key=lambda r: (
            r.cost_per_million if r.cost_per_million is not None else 0.0,
            r.config.instances * r.config.memory_bytes,
            r.config.instances,
        ),
    )


def table(results: list[Result]) -> str:
    """The results as a table for people."""
    priced = any(r.cost_per_million is not None for r in results)
    head = ["instances", "memory each", "disk each", "hit ratio", "load s", "p50 ms", "p99 ms"]
    head += ["downloaded", "too large", *(["$ per 1M requests"] if priced else [])]
    rows = [head]
    for r in results:
        c = r.config
        row = [
            str(c.instances),
            format_size(c.memory_bytes),
            format_size(c.disk_bytes) if c.disk_bytes is not None else "all",
            f"{r.hit_ratio:.3f}",
            f"{r.load_seconds:.1f}",
            f"{r.added_p50_ms:.0f}",
            f"{r.added_p99_ms:.0f}",
            format_size(r.downloaded_bytes),
            str(r.too_large) if r.too_large else "-",
        ]
        if priced:
            row.append(f"{r.cost_per_million:.2f}" if r.cost_per_million is not None else "-")
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    return "\n".join(
        "  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    )


def draw(results: list[Result], path: Path) -> None:
    """Hit ratio, and cost per million requests when priced, against memory per instance, one
    line per instance count (ImportError without matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")  # a file, no screen
    import matplotlib.pyplot as plt

    priced = any(r.cost_per_million is not None for r in results)
    figure, axes = plt.subplots(1, 2 if priced else 1, figsize=(11 if priced else 6, 4))
    hit_axis = axes[0] if priced else axes
    for count in sorted({r.config.instances for r in results}):
        by_memory: dict[int, Result] = {}
        for r in results:  # one point a memory budget: the first disk budget tried
            if r.config.instances == count:
                by_memory.setdefault(r.config.memory_bytes, r)
        mine = [by_memory[m] for m in sorted(by_memory)]
        mib = [r.config.memory_bytes / 2**20 for r in mine]
        hit_axis.plot(mib, [r.hit_ratio for r in mine], marker="o", label=f"{count} instances")
        if priced:
            cost = [r.cost_per_million or 0.0 for r in mine]
            axes[1].plot(mib, cost, marker="o", label=f"{count} instances")
    hit_axis.set_xlabel("memory per instance (MiB)")
    hit_axis.set_ylabel("hit ratio")
    hit_axis.set_ylim(0, 1)
    hit_axis.grid(alpha=0.3)
    hit_axis.legend()
    if priced:
        axes[1].set_xlabel("memory per instance (MiB)")
        axes[1].set_ylabel("cost per million requests")
        axes[1].grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)

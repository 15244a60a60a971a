"""``modelfleet plan``: size a fleet from its own traffic (added to the ``modelfleet`` group by
:mod:`modelfleet.cli`; docs/sizing.md)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from modelfleet.config import format_size, parse_size


def _sizes(text: str | None, what: str) -> list[int] | None:
    if text is None:
        return None
    try:
        sizes = [parse_size(part.strip()) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=what) from None
    if not sizes or min(sizes) <= 0:
        raise click.BadParameter(
            "give one or more sizes above 0, e.g. 512MiB,1GiB", param_hint=what
        )
    return sizes


def _counts(text: str) -> list[int]:
    try:
        counts = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise click.BadParameter(
            f"{text!r}: whole numbers, e.g. 1,2,3", param_hint="--instances"
        ) from None
    if not counts or counts[0] < 1:
        raise click.BadParameter("at least one instance", param_hint="--instances")
    return counts


@click.command(
    short_help="Recommend memory, disk and instances from an access log or a synthetic trace."
)
@click.option(
    "--access-log",
    "logs",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="An access log of modelfleet serve --access-log; repeat for rotated ones, oldest "
    "first (FILE.2 FILE.1 FILE); default: none (then --source).",
)
@click.option(
    "--source",
    help="Instead of a log: a model source; a synthetic trace asks for its artifacts "
    "(default: none).",
)
@click.option(
    "--trace",
    type=click.Choice(["zipf", "shifting"]),
    default="zipf",
    show_default=True,
    help="The synthetic trace: Zipf popularity, or Zipf whose hot set moves every "
    "--shift-every requests.",
)
@click.option("--exponent", type=float, default=1.0, show_default=True, help="Zipf exponent.")
@click.option(
    "--requests",
    type=click.IntRange(min=1),
    default=100_000,
    show_default=True,
    help="Requests in the synthetic trace.",
)
@click.option(
    "--shift-every",
    type=click.IntRange(min=1),
    default=10_000,
    show_default=True,
    help="With --trace shifting: requests between two hot sets.",
)
@click.option(
    "--rate",
    type=float,
    default=100.0,
    show_default=True,
    help="Requests per second of the synthetic trace (for the cost).",
)
@click.option(
    "--memory-per-byte",
    type=float,
    default=1.0,
    show_default=True,
    help="Synthetic: memory a model takes per byte of its artifact.",
)
@click.option(
    "--load-base-s",
    type=float,
    default=0.05,
    show_default=True,
    help="Synthetic: seconds any load takes.",
)
@click.option(
    "--load-s-per-mb",
    type=float,
    default=0.01,
    show_default=True,
    help="Synthetic: seconds a load takes per MB of artifact, beyond the base.",
)
@click.option(
    "--download-mb-per-s",
    type=float,
    default=100.0,
    show_default=True,
    help="Synthetic: download speed from the source.",
)
@click.option(
    "--memory",
    help="Memory budgets per instance to try, e.g. 512MiB,1GiB (default: "
    "8 steps from 5% to 100% of the models' memory).",
)
@click.option("--disk", help="Disk budgets per instance to try (default: every artifact fits).")
@click.option("--instances", default="1,2,3,4", show_default=True, help="Instance counts to try.")
@click.option(
    "--policy",
    default="lrfu",
    show_default=True,
    help="The eviction policy (as --eviction-policy).",
)
@click.option(
    "--price-per-hour",
    type=float,
    help="Price of one instance-hour: adds the cost per million requests and picks "
    "the cheapest configuration (default: none; then the least memory in all).",
)
@click.option(
    "--target-hit",
    type=float,
    default=0.95,
    show_default=True,
    help="The hit ratio a recommendation must reach.",
)
@click.option(
    "--target-p99-ms",
    type=float,
    help="And the 99th percentile of the latency loads add, in ms (default: none).",
)
@click.option(
    "--plot",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Draw hit ratio and cost against memory per instance into this PNG "
    "(needs matplotlib: pip install 'modelfleet[plot]'; default: none).",
)
@click.option("--json", "as_json", is_flag=True, help="Print every result as JSON.")
def plan(
    logs: tuple[Path, ...],
    source: str | None,
    memory: str | None,
    disk: str | None,
    instances: str,
    policy: str,
    price_per_hour: float | None,
    target_hit: float,
    target_p99_ms: float | None,
    plot: Path | None,
    as_json: bool,
    **synthetic: Any,
) -> None:
    """Replay traffic (an access log, or a synthetic trace over a model source) through the
    eviction policy and routing the server uses, over a grid of memory budgets, disk budgets
    and instance counts; print hit ratio, load seconds, the p50 and p99 of the latency loads
    add, bytes downloaded and the cost per million requests; recommend the cheapest
    configuration that meets the target."""
    from modelfleet.cache.policy import POLICIES
    from modelfleet.plan.grid import best, grid, table

    if policy not in POLICIES:
        raise click.BadParameter(
            f"{policy!r}: one of {', '.join(sorted(POLICIES))}", param_hint="--policy"
        )
    workload = _workload(logs, source, synthetic)
    if not workload.requests:
        click.echo("error: no answered request to replay", err=True)
        sys.exit(2)
    memories = _sizes(memory, "--memory") or _default_memories(
        workload.total_memory_bytes, max(workload.memory_bytes)
    )
    disks: list[int | None] = [None]
    if disk is not None:
        disks = list(_sizes(disk, "--disk") or [])
    results = grid(
        workload, memories, disks, _counts(instances), policy=policy, price_per_hour=price_per_hour
    )
    chosen = best(results, target_hit=target_hit, target_p99_ms=target_p99_ms)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "results": [_as_dict(r) for r in results],
                    "recommended": _as_dict(chosen) if chosen else None,
                },
                indent=2,
            )
        )
    else:
        click.echo(
            f"{len(workload.requests)} requests over {len(workload.models)} models "
            f"({format_size(workload.total_memory_bytes)} in memory, all of them), "
            f"policy {policy}"
        )
        click.echo(table(results))
        target = f"hit ratio >= {target_hit:g}" + (
            f" and p99 <= {target_p99_ms:g} ms" if target_p99_ms is not None else ""
        )
        if chosen is None:
            click.echo(f"no configuration tried reaches {target}: try more memory or instances")
        else:
            c = chosen.config
            disk_text = format_size(c.disk_bytes) if c.disk_bytes is not None else "every artifact"
            click.echo(
                f"recommended ({target}, the cheapest): {c.instances} x "
                f"--memory-limit {format_size(c.memory_bytes)}, disk {disk_text}: hit ratio "
                f"{chosen.hit_ratio:.3f}, p99 {chosen.added_p99_ms:.0f} ms"
            )
    if plot is not None:
        from modelfleet.plan.grid import draw

        try:
            draw(results, plot)
        except ImportError:
            click.echo("error: --plot needs matplotlib: pip install 'modelfleet[plot]'", err=True)
            sys.exit(2)
        click.echo(f"plot: {plot}", err=True)


def _workload(logs: tuple[Path, ...], source: str | None, options: dict[str, Any]) -> Any:
    """The access logs' workload, or a synthetic one over ``source`` (``options``: the
    synthetic trace's flags)."""
    from modelfleet.plan.workload import read_access_log
    from modelfleet.plan.workload import synthetic as synthetic_workload

    if logs and source:
        raise click.UsageError("give --access-log or --source, not both")
    if logs:
        workload, problems = read_access_log(logs)
        for problem in problems[:20]:
            click.echo(f"skipped {problem.reason}", err=True)
        if len(problems) > 20:
            click.echo(f"skipped {len(problems) - 20} more lines", err=True)
        return workload
    if not source:
        raise click.UsageError("give --access-log FILE, or --source URI for a synthetic trace")
    from modelfleet.cli_models import _source

    listed = [(info.target_model, info.size) for info in _source(source).list()]
    if not listed:
        click.echo(f"error: no artifacts in {source}", err=True)
        sys.exit(2)
    shape, shift_every = options.pop("trace"), options.pop("shift_every")
    return synthetic_workload(
        sorted(listed),
        shift_every=shift_every if shape == "shifting" else None,
        rate_per_s=options.pop("rate"),
        **options,
    )


def _default_memories(total: int, largest: int) -> list[int]:
    """5% to 100% of all the models' memory, none below the largest model."""
    steps = (0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0)
    return sorted({max(largest, int(total * f)) for f in steps})


def _as_dict(result: Any) -> dict[str, Any]:
    c = result.config
    return {
        "instances": c.instances,
        "memory_bytes": c.memory_bytes,
        "disk_bytes": c.disk_bytes,
        "hit_ratio": round(result.hit_ratio, 4),
        "load_seconds": round(result.load_seconds, 3),
        "added_p50_ms": round(result.added_p50_ms, 3),
        "added_p99_ms": round(result.added_p99_ms, 3),
        "downloaded_bytes": result.downloaded_bytes,
        "cost_per_million": result.cost_per_million,
        "too_large": result.too_large,
    }

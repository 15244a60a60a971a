"""``modelfleet plan`` as people run it: from an access log with bad lines in it, from a
synthetic trace over a model source, the recommendation, the plot, and its --help."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import click
from click.testing import CliRunner

from modelfleet.cli import main
from modelfleet.cli_plan import plan
from modelfleet.endpoint.accesslog import HEADER
from tests.artifacts import sklearn_source

KIB = 1024


def write_log(path: Path, requests: int = 3000, models: int = 50) -> None:
    """An access log of a Zipf-ish trace over ``models`` models of 20-100 KiB."""
    rng = random.Random(3)
    weights = [1 / (i + 1) for i in range(models)]
    sizes = [rng.randrange(20, 100) * KIB for _ in range(models)]
    lines = [HEADER]
    held: set[int] = set()
    for i in range(requests):
        m = rng.choices(range(models), weights)[0]
        tier, load, download = ("memory", "-", "-") if m in held else ("source", "0.0500", "0.0100")
        held.add(m)
        lines.append(
            f"{1796400000 + i * 0.1:.3f}\tdefault\tAllTraffic\tc{m}/model.tar.gz\t{sizes[m]}\t"
            f"{sizes[m] * 2}\t{tier}\t{load}\t{download}\t200\n"
        )
    lines.insert(3, "this line is not tab separated\n")
    lines.insert(7, "1796400000.5\tdefault\tAllTraffic\tx\tNaN-bytes\t1\tmemory\t-\t-\t200\n")
    path.write_text("".join(lines))


def test_plan_from_an_access_log_reports_bad_lines_and_recommends(tmp_path: Path) -> None:
    log = tmp_path / "access.tsv"
    write_log(log)
    png = tmp_path / "plan.png"
    result = CliRunner().invoke(
        main,
        [
            "plan",
            "--access-log",
            str(log),
            "--memory",
            "256KiB,512KiB,1MiB,2MiB,8MiB",
            "--instances",
            "1,2",
            "--price-per-hour",
            "0.5",
            "--target-hit",
            "0.9",
            "--plot",
            str(png),
        ],
    )
    assert result.exit_code == 0, result.output
    assert f"skipped {log}:4: 1 fields, not 10" in result.output  # lines counted from 1
    assert f"skipped {log}:8: invalid literal for int() with base 10: 'NaN-bytes'" in (
        result.output
    )
    assert "3000 requests over 50 models" in result.output
    assert re.search(
        r"recommended \(hit ratio >= 0.9, the cheapest\): 1 x --memory-limit", result.output
    )
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    as_json = CliRunner().invoke(
        main, ["plan", "--access-log", str(log), "--instances", "1", "--json"]
    )
    answer = json.loads(as_json.stdout)
    ratios = [r["hit_ratio"] for r in answer["results"]]
    assert ratios == sorted(ratios)  # more memory never hits less on this trace
    assert answer["results"][-1]["hit_ratio"] >= 0.98  # all of it fits: only first loads miss


def test_plan_of_a_synthetic_trace_over_a_source(tmp_path: Path) -> None:
    source = sklearn_source(tmp_path / "source", [f"m{i}/model.tar.gz" for i in range(30)], 4)
    result = CliRunner().invoke(
        main,
        [
            "plan",
            "--source",
            str(source),
            "--trace",
            "shifting",
            "--requests",
            "5000",
            "--shift-every",
            "1000",
            "--instances",
            "1,3",
            "--target-hit",
            "0.99",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "5000 requests over 30 models" in result.output
    assert "instances" in result.output.splitlines()[1]


def test_plan_needs_a_workload_and_says_so() -> None:
    result = CliRunner().invoke(main, ["plan"])
    assert result.exit_code == 2
    assert "give --access-log FILE, or --source URI" in result.output


def test_plan_help_explains_every_flag_with_its_default() -> None:
    for param in plan.params:
        if isinstance(param, click.Option) and not param.is_flag:
            said = param.help or ""
            assert param.show_default or "default" in said, param.name

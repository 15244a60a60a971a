"""Shared plumbing of the benchmarks: arguments, tables for people, JSON for machines.

Every benchmark is ``python -m bench.<name> [--quick]``: it prints a table and writes
``bench/results/<name>[-quick].json`` with the machine, the versions, the parameters and the
figures. Figures that compare systems are ratios against a baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="small, fast run (for CI and smoke)")
    p.add_argument("--out", type=Path, default=None, help="JSON file to write")
    return p


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine() -> dict[str, Any]:
    packages = (
        "modelfleet",
        "numpy",
        "scikit-learn",
        "xgboost-cpu",
        "starlette",
        "uvicorn",
        "obstore",
        "ray",
    )
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "versions": {name: _version(name) for name in packages},
    }


def write_results(
    name: str,
    *,
    quick: bool,
    params: dict[str, Any],
    rows: list[dict[str, Any]],
    extra: dict[str, Any] | None = None,
    out: Path | None = None,
) -> Path:
    path = out or RESULTS / f"{name}{'-quick' if quick else ''}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "benchmark": name,
        "quick": quick,
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "params": params,
        "rows": rows,
        **(extra or {}),
    }
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
    return path


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], title: str = "") -> None:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
        return "" if value is None else str(value)

    table = [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [
        max(len(c), *(len(r[i]) for r in table)) if table else len(c) for i, c in enumerate(columns)
    ]
    if title:
        print(f"\n{title}")
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for r in table:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))

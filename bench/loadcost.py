"""Calibrate the load-cost curve of the eviction simulation with real loads.

Trains scikit-learn random forests of a few sizes, saves each with joblib, and times
``joblib.load`` from the file (the page cache is warm: this is the load, not the download).
A least-squares line ``seconds = a + b * MB`` through the medians is what the simulator
charges for a miss. Only this step reads a clock; the simulation itself is deterministic.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MB = 1_000_000


@dataclass(frozen=True, slots=True)
class CostCurve:
    """``seconds = a + b * MB`` and the points it was fitted to."""

    a: float
    b: float
    points: tuple[tuple[float, float], ...] = ()  # (MB on disk, median load seconds)

    def seconds(self, size_bytes: int) -> float:
        return self.a + self.b * size_bytes / MB

    def as_dict(self) -> dict[str, object]:
        return {
            "a_s": self.a,
            "b_s_per_mb": self.b,
            "points": [{"mb": mb, "load_s": s} for mb, s in self.points],
        }


def _forest_file(folder: Path, target_mb: float, seed: int) -> Path:
    import joblib
    from sklearn.ensemble import RandomForestRegressor

    # A fully grown regression tree on n distinct samples has about 1.26 n nodes (bootstrap)
    # of about 72 bytes each on disk; 8 trees split the target between them.
    trees = 8
    samples = max(200, int(target_mb * MB / (trees * 1.26 * 72)))
    rng = np.random.default_rng(seed)
    x = rng.random((samples, 10))
    y = rng.random(samples)
    forest = RandomForestRegressor(n_estimators=trees, random_state=seed, n_jobs=1).fit(x, y)
    path = folder / f"forest-{target_mb:g}mb.joblib"
    joblib.dump(forest, path)
    return path


def _median_load_s(path: Path, repeats: int) -> float:
    import joblib

    joblib.load(path)  # warm the page cache and the imports
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        joblib.load(path)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def calibrate(sizes_mb: tuple[float, ...] = (1, 4, 16, 48), repeats: int = 5) -> CostCurve:
    """Measure real loads of forests of about ``sizes_mb`` and fit the cost line."""
    points = []
    with tempfile.TemporaryDirectory(prefix="modelfleet-calibrate-") as tmp:
        for i, target in enumerate(sizes_mb):
            path = _forest_file(Path(tmp), target, seed=i)
            mb = path.stat().st_size / MB
            points.append((mb, _median_load_s(path, repeats)))
    slope, intercept = np.polyfit([p[0] for p in points], [p[1] for p in points], 1)
    return CostCurve(a=max(float(intercept), 0.0), b=float(slope), points=tuple(points))


if __name__ == "__main__":
    curve = calibrate()
    print(curve.as_dict())

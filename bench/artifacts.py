"""Model artifacts of chosen sizes for the benchmarks, built once and cached in bench/.cache/.

Sizes are of the ``model.tar.gz``. Forests are grown on random data (deep trees, so the size
follows the row count); XGBoost boosters grow by rounds.
"""

from __future__ import annotations

import copy
import io
import tarfile
from pathlib import Path

import numpy as np

CACHE = Path(__file__).resolve().parent / ".cache"
MB = 1_000_000
N_FEATURES = 10


def tar_gz(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=6) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _sklearn_forest(copies: int, seed: int) -> bytes:
    """A forest of ``10 * copies`` deep trees: 10 trained ones, repeated (cheap to build)."""
    import joblib
    from sklearn.ensemble import RandomForestRegressor

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2000, N_FEATURES))
    y = x @ rng.standard_normal(N_FEATURES) + rng.standard_normal(2000)
    forest = RandomForestRegressor(n_estimators=10, random_state=seed, n_jobs=1).fit(x, y)
    # Distinct copies: pickle would store repeats of one object only once.
    forest.estimators_ = [copy.deepcopy(tree) for _ in range(copies) for tree in forest.estimators_]
    forest.n_estimators = len(forest.estimators_)
    buffer = io.BytesIO()
    joblib.dump(forest, buffer)
    return tar_gz({"model.joblib": buffer.getvalue()})


def _xgboost(copies: int, seed: int) -> bytes:
    """A booster of ``20 * copies`` trees: 20 trained ones, repeated in the JSON model."""
    import json

    import xgboost

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((5000, N_FEATURES))
    y = x @ rng.standard_normal(N_FEATURES) + rng.standard_normal(5000)
    params = {"max_depth": 10, "eta": 0.05, "nthread": 2, "seed": seed}
    booster = xgboost.train(params, xgboost.DMatrix(x, label=y), num_boost_round=20)
    model = json.loads(bytes(booster.save_raw("json")))
    gbtree = model["learner"]["gradient_booster"]["model"]
    trees = gbtree["trees"] * copies
    for index, tree in enumerate(trees):
        trees[index] = {**tree, "id": index}
    gbtree["trees"] = trees
    gbtree["tree_info"] = gbtree["tree_info"] * copies
    gbtree["iteration_indptr"] = list(range(len(trees) + 1))
    gbtree["gbtree_model_param"]["num_trees"] = str(len(trees))
    grown = xgboost.Booster()
    grown.load_model(bytearray(json.dumps(model).encode()))
    return tar_gz({"xgboost-model": bytes(grown.save_raw("ubj"))})


def _grow(kind: str, target_bytes: int, seed: int) -> bytes:
    """Build an artifact near ``target_bytes``: measure one copy, then repeat to size."""
    build = _sklearn_forest if kind == "sklearn" else _xgboost
    one = len(build(1, seed))
    return build(max(1, round(target_bytes / one)), seed)


def artifact(kind: str, size_mb: float, seed: int = 0) -> bytes:
    """A cached ``model.tar.gz`` of about ``size_mb`` MB: ``kind`` is sklearn or xgboost."""
    path = CACHE / f"{kind}-{size_mb:g}MB-{seed}.tar.gz"
    if path.exists():
        return path.read_bytes()
    data = _grow(kind, int(size_mb * MB), seed)
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return data


def sample_row() -> bytes:
    return ",".join(f"{v:.3f}" for v in np.linspace(-1, 1, N_FEATURES)).encode()

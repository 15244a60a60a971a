"""Makes the XGBoost 1.7 fixtures in this folder. Runs under XGBoost 1.7.6, not this project's.

    python3 -m venv /tmp/xgb17 && /tmp/xgb17/bin/pip install xgboost==1.7.6 "numpy<2" scipy
    /tmp/xgb17/bin/python tests/handlers/xgboost17/make_fixtures.py

For each case it trains a small booster with XGBoost 1.7.6 and saves it as the SageMaker
built-in XGBoost container 1.7-1 does (``bst.save_model(os.path.join(model_dir,
"xgboost-model"))``: no extension, so XGBoost 1.x writes its binary format) in
``<case>/xgboost-model``, with the JSON XGBoost 1.7.6 writes for that file once loaded in
``<case>.json``. ``expected.json`` holds the request rows and the container's answers to them,
computed as its serving code computes them (``algorithm_mode/serve_utils.py`` on the 1.7-1
branch of github.com/aws/sagemaker-xgboost-container): a fresh ``xgb.Booster()`` with
``load_model`` and ``set_param("nthread", 1)``, then ``predict(dtest,
ntree_limit=getattr(booster, "best_ntree_limit", 0), validate_features=False)``, where
``dtest`` is ``xgb.DMatrix`` of the CSV rows (floats), or, for ``text/libsvm`` bodies, of the
``scipy.sparse.csr_matrix`` its ``_get_sparse_matrix_from_libsvm`` builds (tokens split on
spaces, ``index:value`` pairs kept, the label ignored).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import xgboost as xgb
from scipy.sparse import csr_matrix

HERE = Path(__file__).resolve().parent
FEATURES = 6


def data(seed: int, rows: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(rows, FEATURES))
    x[::7, 2] = np.nan  # some missing values: the trees' default directions matter
    return x


def libsvm_matrix(payload: str) -> csr_matrix:
    """The container's ``_get_sparse_matrix_from_libsvm``, restated."""
    rows, cols, values = [], [], []
    for row, line in enumerate(payload.split("\n")):
        for item in line.split(" "):
            if ":" in item:
                col, value = item.split(":")[0], item.split(":")[1]
                rows.append(row)
                cols.append(int(col))
                values.append(float(value))
    return csr_matrix((np.array(values), (np.array(rows), np.array(cols))))


def train(case: str) -> xgb.Booster:
    x = data(1, 300)
    signal = x[:, 0] * 2 - np.nan_to_num(x[:, 1]) + 0.5 * np.nan_to_num(x[:, 2])
    params: dict[str, object] = {"max_depth": 3, "eta": 0.3, "seed": 0, "nthread": 1}
    rounds = 8
    evals = ()
    stop = None
    if case == "binary-logistic-early-stopping":
        params["objective"] = "binary:logistic"
        labels = (signal > 0).astype(float)
        evals, stop, rounds = True, 2, 60
    elif case == "multi-softprob":
        params |= {"objective": "multi:softprob", "num_class": 3}
        labels = np.digitize(signal, [-1.0, 1.0]).astype(float)
    elif case == "multi-softmax":
        params |= {"objective": "multi:softmax", "num_class": 3}
        labels = np.digitize(signal, [-1.0, 1.0]).astype(float)
    elif case == "reg-squarederror":
        params["objective"] = "reg:squarederror"
        labels = signal
    elif case == "count-poisson":
        params |= {"objective": "count:poisson", "max_delta_step": 0.7}
        labels = np.random.default_rng(3).poisson(np.exp(signal / 3))
    elif case == "dart":
        params |= {"objective": "reg:squarederror", "booster": "dart", "rate_drop": 0.3}
        labels = signal
    elif case == "gblinear":
        params |= {"objective": "reg:squarederror", "booster": "gblinear"}
        labels = signal
    else:
        raise ValueError(case)
    train_x, valid_x = x[:200], x[200:]
    train_m = xgb.DMatrix(train_x, label=labels[:200])
    if evals:
        valid = xgb.DMatrix(valid_x, label=labels[200:])
        return xgb.train(
            params,
            train_m,
            rounds,
            evals=[(valid, "v")],
            early_stopping_rounds=stop,
            verbose_eval=False,
        )
    return xgb.train(params, train_m, rounds)


CASES = (
    "binary-logistic-early-stopping",
    "multi-softprob",
    "multi-softmax",
    "reg-squarederror",
    "count-poisson",
    "dart",
    "gblinear",
)


def main() -> None:
    assert xgb.__version__ == "1.7.6", xgb.__version__
    rows = data(2, 5)
    # libsvm: a label first (ignored), then index:value pairs; missing values are left out
    libsvm_body = "\n".join(
        "0 " + " ".join(f"{i}:{float(v)!r}" for i, v in enumerate(r) if not np.isnan(v))
        for r in rows
    )
    # the same without the last feature: the matrix the container builds is one column narrower
    short_body = "\n".join(line.rsplit(" ", 1)[0] for line in libsvm_body.split("\n"))
    dense_rows = np.nan_to_num(rows, nan=0.0)  # CSV fixtures avoid empty fields
    expected: dict[str, object] = {
        "xgboost": xgb.__version__,
        "rows": dense_rows.tolist(),
        "libsvm_body": libsvm_body,
        "libsvm_short_body": short_body,
        "cases": {},
    }
    for case in CASES:
        folder = HERE / case
        folder.mkdir(exist_ok=True)
        booster = train(case)
        booster.save_model(os.path.join(folder, "xgboost-model"))  # as the container saves it
        served = xgb.Booster()
        served.load_model(os.path.join(folder, "xgboost-model"))
        served.save_model(str(HERE / f"{case}.json"))  # what XGBoost 1.7.6 makes of the file
        served.set_param("nthread", 1)
        limit = getattr(served, "best_ntree_limit", 0)
        dense = served.predict(xgb.DMatrix(dense_rows), ntree_limit=limit, validate_features=False)
        sparse = served.predict(
            xgb.DMatrix(libsvm_matrix(libsvm_body.strip())),
            ntree_limit=limit,
            validate_features=False,
        )
        short = served.predict(
            xgb.DMatrix(libsvm_matrix(short_body.strip())),
            ntree_limit=limit,
            validate_features=False,
        )
        expected["cases"][case] = {  # type: ignore[index]
            "csv": dense.tolist(),
            "libsvm": sparse.tolist(),
            "libsvm_short": short.tolist(),
            "best_ntree_limit": limit,
        }
    (HERE / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""A model cannot take the server down: real ``modelfleet serve`` processes over HTTP.

* Model code that raises ``SystemExit`` (``sys.exit()``) or ``KeyboardInterrupt``, while it is
  unpickled, in ``inference.py``'s import or ``model_fn``, or while it serves a request (on the
  inference pool or inline on the event loop), fails that model's request with a 424 ModelError;
  the server keeps serving every other model.
* A load that allocated 300 MiB and then failed gives the memory back before its error is
  answered (the server's RSS, read with psutil).
* ``os._exit`` in model code ends the process it runs in: with ``--instances N`` that is one
  instance, which the router outlives and restarts; it sees the exit status, answers the request
  with a 424 ModelError instead of trying it on another instance, and the other instances keep
  serving (with two instances too).
"""

from __future__ import annotations

import contextlib
import pickle
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.artifacts import inference_py_artifact, make_tar_gz, sklearn_artifact
from tests.servers import ProcessServer, process_fleet, process_server
from tests.servers import fleet_instances as instances
from tests.servers import process_gone as gone

N_FEATURES = 4
ROW = b"0.5,-1.0,2.0,0.25"
GOOD = "good/model.tar.gz"


class _PickleCalls:
    """Unpickles as the call ``func(*args)``: what a pickle can make its loader do."""

    def __init__(self, func: Any, *args: Any) -> None:
        self.call = (func, args)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.call


def pickle_artifact(func: Any, *args: Any) -> bytes:
    """A scikit-learn layout artifact whose ``model.pkl`` calls ``func(*args)`` when loaded."""
    return make_tar_gz({"model.pkl": pickle.dumps(_PickleCalls(func, *args))})


def exiting_pipeline_artifact() -> bytes:
    """A fitted pipeline whose first step calls ``sys.exit(features)`` in ``predict``."""
    import joblib
    import numpy as np
    from sklearn.linear_model import LinearRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    rows = np.random.default_rng(0).normal(size=(20, N_FEATURES))
    pipeline = make_pipeline(FunctionTransformer(), LinearRegression()).fit(rows, rows[:, 0])
    pipeline.steps[0][1].func = sys.exit  # set after fitting: the fit must not exit
    import io

    buffer = io.BytesIO()
    joblib.dump(pipeline, buffer)
    return make_tar_gz({"model.joblib": buffer.getvalue()})


def inference_py(model_fn_body: str, *, top: str = "", predict: str = "return data") -> bytes:
    code = f"""
import sys
import threading
{top}

def model_fn(model_dir):
    {model_fn_body}

def input_fn(data, content_type):
    return data

def predict_fn(data, model):
    {predict}

def output_fn(prediction, accept):
    return prediction, "text/plain"
"""
    return inference_py_artifact({"inference.py": code})


PREDICT_EXITS = """if data == "exit":  # a text/csv body reaches input_fn as str
        sys.exit(6)
    if data == "interrupt":
        raise KeyboardInterrupt
    return threading.current_thread().name.encode()"""

MODELS: dict[str, Any] = {
    "exit-unpickling/model.tar.gz": lambda: pickle_artifact(sys.exit, 3),
    "interrupt-unpickling/model.tar.gz": lambda: pickle_artifact(exec, "raise KeyboardInterrupt"),
    "exit-import/model.tar.gz": lambda: inference_py("return 1", top="sys.exit(5)"),
    "exit-model-fn/model.tar.gz": lambda: inference_py("sys.exit(4)"),
    "interrupt-model-fn/model.tar.gz": lambda: inference_py("raise KeyboardInterrupt"),
    "exit-predict/model.tar.gz": lambda: inference_py("return 1", predict=PREDICT_EXITS),
    "exit-inline/model.tar.gz": lambda: inference_py("return 1", predict=PREDICT_EXITS),
    "exit-pipeline/model.tar.gz": exiting_pipeline_artifact,
    GOOD: lambda: sklearn_artifact(seed=0, n_features=N_FEATURES, n_trees=2),
}


def write_source(root: Path, models: dict[str, Any]) -> Path:
    for name, build in models.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(build())
    return root


def invoke(server: ProcessServer, model: str, body: bytes = ROW) -> httpx.Response:
    return httpx.post(
        f"{server.url}/endpoints/default/invocations",
        content=body,
        headers={"X-Amzn-SageMaker-Target-Model": model, "Content-Type": "text/csv"},
        timeout=60,
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessServer]:
    """One in-process server for the exit cases; every model inline-eligible (see below)."""
    root = tmp_path_factory.mktemp("faults")
    source = write_source(root / "source", MODELS)
    args = ["--model-source", str(source), "--cache-dir", str(root / "cache")]
    # Any model may run on the event loop after its first calls: the inline case needs it.
    env = {"MODELFLEET_INLINE_INFERENCE_MS": "10000"}
    with process_server([*args, "--log-level", "warning"], log=root / "server.log", env=env) as s:
        yield s


def assert_model_error(response: httpx.Response, raised: str) -> None:
    assert response.status_code == 424, response.text
    assert response.headers["x-amzn-errortype"] == "ModelError"
    assert raised in response.json()["message"]


def assert_still_serving(server: ProcessServer) -> None:
    assert server.proc is not None
    assert server.proc.poll() is None, "the server process ended"
    assert httpx.get(f"{server.url}/ping", timeout=10).status_code == 200
    good = invoke(server, GOOD)
    assert good.status_code == 200, good.text


@pytest.mark.parametrize(
    ("model", "raised"),
    [
        ("exit-unpickling/model.tar.gz", "SystemExit"),
        ("interrupt-unpickling/model.tar.gz", "KeyboardInterrupt"),
        ("exit-import/model.tar.gz", "SystemExit"),
        ("exit-model-fn/model.tar.gz", "SystemExit"),
        ("interrupt-model-fn/model.tar.gz", "KeyboardInterrupt"),
    ],
)
def test_a_load_that_exits_fails_only_its_model(
    server: ProcessServer, model: str, raised: str
) -> None:
    assert_model_error(invoke(server, model), raised)
    assert_still_serving(server)
    assert_model_error(invoke(server, model), raised)  # tried again: the same answer
    listed = httpx.get(f"{server.admin_url}/admin/instances").json()["instances"][0]["loaded"]
    assert model not in [entry["name"] for entry in listed]
    assert_still_serving(server)


@pytest.mark.parametrize(("body", "raised"), [(b"exit", "SystemExit"), (b"interrupt", "Key")])
def test_inference_that_exits_on_the_pool_fails_only_its_request(
    server: ProcessServer, body: bytes, raised: str
) -> None:
    model = "exit-predict/model.tar.gz"
    assert_model_error(invoke(server, model, body), raised)  # its first calls run on the pool
    assert_still_serving(server)
    assert invoke(server, model, b"fine").status_code == 200  # the model itself stays loaded


def test_inference_that_exits_inline_on_the_event_loop_fails_only_its_request(
    server: ProcessServer,
) -> None:
    model = "exit-inline/model.tar.gz"
    threads = [invoke(server, model, b"fine").content for _ in range(12)]
    assert threads[-1] == b"MainThread"  # a fast model now runs on the event loop
    assert_model_error(invoke(server, model, b"exit"), "SystemExit")
    assert_still_serving(server)
    assert_model_error(invoke(server, model, b"interrupt"), "KeyboardInterrupt")
    assert_still_serving(server)


def test_a_pickled_estimator_that_exits_in_predict_fails_only_its_request(
    server: ProcessServer,
) -> None:
    assert_model_error(invoke(server, "exit-pipeline/model.tar.gz"), "SystemExit")
    assert_still_serving(server)


# ----------------------------------------------------------------- memory of a failed load

HOG_MIB = 300
HOG_LOCAL = f"""
import numpy as np

def model_fn(model_dir):
    weights = np.ones({HOG_MIB} * 2**20 // 8)  # every page written: resident
    raise RuntimeError(f"failed after allocating {{weights.nbytes}} bytes")

def predict_fn(data, model):
    return data
"""
HOG_GLOBAL = f"""
import numpy as np

KEPT = []  # a module global: freed only with the model's namespace (a reference cycle)

def model_fn(model_dir):
    KEPT.append(np.ones({HOG_MIB} * 2**20 // 8))
    raise RuntimeError("failed after allocating")

def predict_fn(data, model):
    return data
"""
SMALL = """
import numpy as np

def model_fn(model_dir):
    return np.arange(1000.0)

def predict_fn(data, model):
    return float(model.sum())
"""


def rss_after_poll(pid: int, below: int) -> int:
    """The RSS of ``pid``, polled a bounded number of times until it is under ``below``."""
    process = psutil.Process(pid)
    rss = int(process.memory_info().rss)
    for _ in range(100):
        if rss < below:
            break
        time.sleep(0.05)
        rss = int(process.memory_info().rss)
    return rss


def test_a_failed_load_gives_its_memory_back(tmp_path: Path) -> None:
    source = write_source(
        tmp_path / "source",
        {
            "hog-local/model.tar.gz": lambda: inference_py_artifact({"inference.py": HOG_LOCAL}),
            "hog-global/model.tar.gz": lambda: inference_py_artifact({"inference.py": HOG_GLOBAL}),
            "small/model.tar.gz": lambda: inference_py_artifact({"inference.py": SMALL}),
        },
    )
    args = ["--model-source", str(source), "--cache-dir", str(tmp_path / "cache")]
    with process_server(args, log=tmp_path / "server.log") as server:
        small = invoke(server, "small/model.tar.gz")  # loads and serves like the hogs would
        assert small.status_code == 200, small.text
        baseline = int(psutil.Process(server.pid).memory_info().rss)
        hog = HOG_MIB * 2**20
        for model in ("hog-local/model.tar.gz", "hog-global/model.tar.gz"):
            failed = invoke(server, model)
            assert_model_error(failed, "RuntimeError: failed after allocating")
            rss = rss_after_poll(server.pid, below=baseline + hog // 4)
            print(f"{model}: RSS {baseline / 2**20:.0f} MiB before, {rss / 2**20:.0f} after")
            assert rss - baseline < hog // 4, f"{(rss - baseline) / 2**20:.0f} MiB kept"
        assert invoke(server, "small/model.tar.gz").status_code == 200


# ----------------------------------------------------------------- os._exit: process isolation

KILLER = """
import os

def model_fn(model_dir):
    os._exit(7)  # ends whatever process loads it

def predict_fn(data, model):
    return data
"""
FLEET_MODELS = [f"g{i}/model.tar.gz" for i in range(6)]


@contextlib.contextmanager
def fleet(source: Path, tmp_path: Path, count: int) -> Iterator[ProcessServer]:
    with process_fleet(source, tmp_path, count) as (server, _):
        yield server


@pytest.mark.parametrize("count", [2, 3])
def test_os_exit_in_a_load_ends_instances_not_the_endpoint(tmp_path: Path, count: int) -> None:
    models = {
        name: (lambda i=i: sklearn_artifact(seed=i, n_features=N_FEATURES, n_trees=2))
        for i, name in enumerate(FLEET_MODELS)
    }
    models["killer/model.tar.gz"] = lambda: inference_py_artifact({"inference.py": KILLER})
    source = write_source(tmp_path / "source", models)
    with fleet(source, tmp_path, count) as server:
        for model in FLEET_MODELS:
            assert invoke(server, model).status_code == 200
        before = {i["id"]: i["pid"] for i in instances(server)}

        deadly = invoke(server, "killer/model.tar.gz")
        # answered (the router lives on) at once: the instance ended by its own hand, so the
        # request that did it is not tried on another one
        assert deadly.status_code == 424, deadly.text
        answer = deadly.json()
        assert answer["__type"] == "ModelError"
        assert answer["OriginalStatusCode"] == 500
        assert "(exit status 7)" in answer["message"]
        # One instance was reached: the others still run the process they had before.
        kept = [i for i in instances(server) if not gone(before[i["id"]])]
        assert len(kept) == count - 1
        assert all(i["state"] == "up" and i["pid"] == before[i["id"]] for i in kept)
        for model in FLEET_MODELS:  # served while the others restart
            answer = invoke(server, model)
            assert answer.status_code == 200, answer.text

        deadline = time.monotonic() + 60
        listed = instances(server)
        while time.monotonic() < deadline and not all(i["state"] == "up" for i in listed):
            time.sleep(0.1)
            listed = instances(server)
        restarted = [i for i in listed if i["pid"] != before[i["id"]]]
        assert all(i["state"] == "up" for i in listed)
        assert all(gone(before[i["id"]]) for i in restarted)
        assert len(restarted) == 1
        assert sum(i["restarts"] for i in listed) == len(restarted)
        for model in FLEET_MODELS:
            assert invoke(server, model).status_code == 200

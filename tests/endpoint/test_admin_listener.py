"""The admin surface apart: the public listener serves only the runtime API and ``/ping``, the
admin listener the container contract, ``/admin/*`` and ``/metrics``; LoadModel stays inside the
model source and the cache; and no answer of any path carries an absolute path of the server's
disk."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from modelfleet.config import Settings
from tests.artifacts import inference_py_artifact, make_tar_gz, sklearn_artifact, unpack
from tests.servers import PATIENCE_S, free_port, thread_server

ROW = "0.1,0.2,0.3,0.4"

#: every path of the admin listener (the container contract of the in-process instance included)
ADMIN_PATHS = [
    ("GET", "/models"),
    ("POST", "/models"),
    ("GET", "/models/m/model.tar.gz"),
    ("DELETE", "/models/m/model.tar.gz"),
    ("POST", "/models/m/model.tar.gz/invoke"),
    ("POST", "/invocations"),
    ("GET", "/metrics"),
    ("GET", "/admin/instances"),
    ("POST", "/admin/reload"),
    ("GET", "/admin/instance"),
    ("POST", "/admin/prewarm"),
    ("GET", "/dashboard"),
    ("GET", "/dashboard/fragment"),
    ("GET", "/dashboard/data"),
    ("GET", "/models/m/model.tar.gz/stats"),
]

# model_fn and predict_fn fail with messages that quote the server's folders
LEAKY_CODE = """
import os


def model_fn(model_dir):
    if os.path.exists(os.path.join(model_dir, "fail-load")):
        raise FileNotFoundError(os.path.join(model_dir, "weights.bin") + " is missing")
    return model_dir


def predict_fn(data, model):
    raise ValueError("cannot predict with the model in " + model + " from " + __file__)
"""


def _source(root: Path) -> Path:
    models = {
        "m/model.tar.gz": sklearn_artifact(seed=1, n_features=4, n_trees=2),
        "broken/model.tar.gz": make_tar_gz({"model.joblib": b"not a pickle at all"}),
        "leaky/model.tar.gz": inference_py_artifact({"inference.py": LEAKY_CODE}),
        "leaky-load/model.tar.gz": inference_py_artifact(
            {"inference.py": LEAKY_CODE}, {"fail-load": b""}
        ),
    }
    for name, data in models.items():
        (root / name).parent.mkdir(parents=True)
        (root / name).write_bytes(data)
    unpack(sklearn_artifact(seed=2, n_features=4, n_trees=2), root / "unpacked")
    return root


def test_the_public_listener_serves_only_the_runtime_api(tmp_path: Path) -> None:
    source = _source(tmp_path / "source")
    settings = Settings(model_source=str(source), cache_dir=tmp_path / "cache")
    headers = {"Content-Type": "text/csv", "X-Amzn-SageMaker-Target-Model": "m/model.tar.gz"}
    with thread_server(settings) as server:
        assert server.admin_url != server.url
        invoked = httpx.post(
            f"{server.url}/endpoints/default/invocations", content=ROW, headers=headers
        )
        assert invoked.status_code == 200, invoked.text
        assert httpx.get(f"{server.url}/ping").status_code == 200
        for method, path in ADMIN_PATHS:
            answer = httpx.request(method, f"{server.url}{path}")
            assert answer.status_code == 404, (method, path)
            assert answer.headers["x-amzn-errortype"] == "UnknownOperationException"
            assert path in answer.json()["message"]
        # the admin listener serves them, and not the runtime API
        assert httpx.get(f"{server.admin_url}/ping").status_code == 200
        assert "modelfleet_" in httpx.get(f"{server.admin_url}/metrics").text
        listed = httpx.get(f"{server.admin_url}/models").json()["models"]
        assert [m["modelName"] for m in listed] == ["m/model.tar.gz"]
        assert httpx.get(f"{server.admin_url}/admin/instances").json()["endpoints"] == ["default"]
        stray = httpx.post(
            f"{server.admin_url}/endpoints/default/invocations", content=ROW, headers=headers
        )
        assert stray.status_code == 404


def test_load_model_stays_inside_the_model_source_and_the_cache(tmp_path: Path) -> None:
    source = _source(tmp_path / "source")
    outside = unpack(sklearn_artifact(seed=3, n_features=4, n_trees=2), tmp_path / "outside")
    settings = Settings(model_source=str(source), cache_dir=tmp_path / "cache")
    with thread_server(settings) as server:
        load = f"{server.admin_url}/models"
        for url in (
            "/etc",
            f"{source}/../outside",
            str(outside),
            "../../etc",
            "unpacked",
            f"{source}/unpacked/../../outside",
        ):
            answer = httpx.post(load, json={"model_name": "x", "url": url})
            assert answer.status_code == 400, url
            assert "under the model source or the cache folder" in answer.json()["message"]
        assert httpx.get(load).json()["models"] == []
        answer = httpx.post(load, json={"model_name": "x", "url": f"{source}/unpacked"})
        assert answer.status_code == 200, answer.text


def _walk(base: str, admin: str, source: Path) -> list[httpx.Response]:
    """Every path's answers, successes and failures, of the public and admin listeners."""
    answers: list[httpx.Response] = []
    invoke = f"{base}/endpoints/default/invocations"

    def call(url: str, model: str, body: str = ROW) -> None:
        headers = {"Content-Type": "text/csv", "X-Amzn-SageMaker-Target-Model": model}
        answers.append(httpx.post(url, content=body, headers=headers, timeout=PATIENCE_S))

    for model in ("m/model.tar.gz", "broken/model.tar.gz", "leaky/model.tar.gz"):
        call(invoke, model)
    call(invoke, "leaky-load/model.tar.gz")
    call(invoke, "missing/model.tar.gz")
    call(invoke, "m/model.tar.gz", "not,numbers")
    call(invoke, "../../etc/passwd")
    answers.append(httpx.get(f"{base}/ping"))
    answers.append(httpx.get(f"{base}/nowhere"))
    paths = ("/metrics", "/admin/instances", "/ping", "/nowhere", "/dashboard", "/dashboard/data")
    for path in (*paths, "/models/m/model.tar.gz/stats", "/models/nothing/stats"):
        answers.append(httpx.get(f"{admin}{path}", timeout=PATIENCE_S))
    answers.append(httpx.post(f"{admin}/admin/reload"))
    contracts = [admin]
    listed = httpx.get(f"{admin}/admin/instances").json()["instances"]
    contracts = [i["url"] for i in listed if i["url"]] or [admin]  # a fleet's own instances
    for url in contracts:
        for body in (
            {"model_name": "u", "url": f"{source}/unpacked"},
            {"model_name": "u", "url": f"{source}/unpacked"},  # already loaded
            {"model_name": "gone", "url": f"{source}/no-such-folder"},
            {"model_name": "etc", "url": "/etc"},
            {"model_name": "bad", "url": f"{source}/broken-folder"},
        ):
            answers.append(httpx.post(f"{url}/models", json=body, timeout=PATIENCE_S))
        answers.append(httpx.get(f"{url}/models"))
        answers.append(httpx.get(f"{url}/models/u"))
        answers.append(httpx.get(f"{url}/models/nope"))
        call(f"{url}/models/u/invoke", "u")
        call(f"{url}/invocations", "leaky/model.tar.gz")
        answers.append(httpx.get(f"{url}/admin/instance"))
        answers.append(httpx.delete(f"{url}/models/u"))
        answers.append(httpx.delete(f"{url}/models/u"))
    return answers


@pytest.mark.parametrize("instances", [1, 2])
def test_no_answer_carries_a_server_path(tmp_path: Path, instances: int) -> None:
    source = _source(tmp_path / "source")
    (source / "broken-folder").mkdir()
    (source / "broken-folder" / "model.joblib").write_bytes(b"not a pickle either")
    settings = Settings(model_source=str(source), cache_dir=tmp_path / "cache", instances=instances)
    with thread_server(settings) as server:
        answers = _walk(server.url, server.admin_url, source)
    statuses = {a.status_code for a in answers}
    assert {200, 400, 404, 409, 424} <= statuses  # the failures were reached, not only 200s
    assert any("<model-source>/unpacked" in a.text for a in answers)  # modelUrl, relative
    forbidden = {str(tmp_path), str(tmp_path.resolve()), sys.prefix, os.getcwd()}
    for answer in answers:
        text = f"{answer.headers}\n{answer.text}"
        for path in forbidden:
            assert path not in text, (answer.request.method, answer.request.url, answer.text)


def test_an_admin_port_in_use_stops_the_server_before_it_serves(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        admin_port = taken.getsockname()[1]
        port = free_port()
        argv = [sys.executable, "-m", "modelfleet", "serve", "--port", str(port)]
        argv += ["--admin-port", str(admin_port), "--cache-dir", str(tmp_path / "cache")]
        argv += ["--model-source", str(_source(tmp_path / "source"))]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=PATIENCE_S)
    assert done.returncode != 0
    assert f"127.0.0.1:{admin_port} is already in use" in done.stderr
    assert "--admin-port" in done.stderr
    assert "Application startup complete" not in done.stderr  # nothing was started

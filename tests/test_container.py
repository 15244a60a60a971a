"""The image's entrypoint (docker/entrypoint.sh), run as the image runs it: ``serve`` alone is
SageMaker's bring-your-own multi-model container (``/ping``, ``/invocations`` and the container
contract on one port, models under the model source), anything else runs as given. The image
itself is built where a container engine is at hand (docs/deploy.md)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.artifacts import sklearn_artifact, unpack
from tests.servers import START_TIMEOUT_S, free_port

ROOT = Path(__file__).resolve().parent.parent
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
ROW = "0.1,0.2,0.3,0.4"
CSV = {"Content-Type": "text/csv"}


@contextmanager
def entrypoint(args: list[str], env: dict[str, str], log: Path, url: str) -> Iterator[str]:
    """``sh docker/entrypoint.sh ARGS`` with the virtual environment's ``modelfleet`` on PATH,
    until ``url``/ping answers 200; stopped by its PID (the entrypoint execs the server)."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            ["sh", str(ENTRYPOINT), *args],
            env={**os.environ, **env, "PATH": path},
            stdout=out,
            stderr=out,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the entrypoint exited:\n{log.read_text()}")
            try:
                if httpx.get(f"{url}/ping", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start:\n{log.read_text()}")
            time.sleep(0.05)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def test_serve_is_sagemakers_multi_model_container(tmp_path: Path) -> None:
    models = tmp_path / "opt-ml-models"  # /opt/ml/models in the image
    # what SageMaker's agent does: download to a folder of its own, then LoadModel it
    unpack(sklearn_artifact(seed=6, n_features=4, n_trees=2), models / "d41d8cd9" / "model")
    (models / "direct").mkdir()
    (models / "direct" / "model.tar.gz").write_bytes(sklearn_artifact(seed=7, n_features=4))
    port = free_port()
    env = {
        "SAGEMAKER_BIND_TO_PORT": str(port),
        "MODELFLEET_HOST": "127.0.0.1",  # the image listens on 0.0.0.0; tests stay on loopback
        "MODELFLEET_MODEL_SOURCE": str(models),
        "MODELFLEET_CACHE_DIR": str(tmp_path / "cache"),
    }
    log = tmp_path / "container.log"
    with entrypoint(["serve"], env, log, f"http://127.0.0.1:{port}") as url:
        loaded = httpx.post(
            f"{url}/models", json={"model_name": "m1", "url": f"{models}/d41d8cd9/model"}
        )
        assert loaded.status_code == 200, loaded.text
        invoked = httpx.post(f"{url}/models/m1/invoke", content=ROW, headers=CSV)
        assert invoked.status_code == 200, invoked.text
        (listed,) = httpx.get(f"{url}/models").json()["models"]
        assert listed == {"modelName": "m1", "modelUrl": "<model-source>/d41d8cd9/model"}
        direct = {**CSV, "X-Amzn-SageMaker-Target-Model": "direct/model.tar.gz"}
        assert httpx.post(f"{url}/invocations", content=ROW, headers=direct).status_code == 200
        runtime = f"{url}/endpoints/default/invocations"
        assert httpx.post(runtime, content=ROW, headers=direct).status_code == 200
        refused = httpx.post(f"{url}/models", json={"model_name": "x", "url": "/etc"})
        assert refused.status_code == 400
        assert httpx.delete(f"{url}/models/m1").status_code == 200
        assert httpx.get(f"{url}/models/m1").status_code == 404
    text = log.read_text()
    assert "SageMaker container mode" in text
    assert f"127.0.0.1:{port}" in text


def test_anything_else_runs_as_given(tmp_path: Path) -> None:
    source = tmp_path / "models"
    (source / "m").mkdir(parents=True)
    (source / "m" / "model.tar.gz").write_bytes(sklearn_artifact(seed=8, n_features=4))
    port, admin = free_port(), free_port()
    args = ["modelfleet", "serve", "--port", str(port), "--admin-port", str(admin)]
    args += ["--model-source", str(source), "--cache-dir", str(tmp_path / "cache")]
    with entrypoint(args, {}, tmp_path / "server.log", f"http://127.0.0.1:{port}") as url:
        headers = {**CSV, "X-Amzn-SageMaker-Target-Model": "m/model.tar.gz"}
        runtime = f"{url}/endpoints/default/invocations"
        assert httpx.post(runtime, content=ROW, headers=headers).status_code == 200
        assert httpx.get(f"{url}/models").status_code == 404  # a plain server keeps them apart
        assert httpx.get(f"http://127.0.0.1:{admin}/models").status_code == 200
    assert "SageMaker container mode" not in (tmp_path / "server.log").read_text()


def test_the_dockerfile_builds_the_image_sagemaker_expects() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "com.amazonaws.sagemaker.capabilities.multi-models=true" in text
    assert "COPY docker/entrypoint.sh /usr/local/bin/modelfleet-entrypoint" in text
    assert 'ENTRYPOINT ["modelfleet-entrypoint"]' in text
    assert 'CMD ["serve"]' in text
    assert "\nUSER modelfleet\n" in text  # not root
    assert "EXPOSE 8080" in text
    assert text.count("\nFROM ") == 2  # a build stage, then a slim runtime stage

"""``--model-requirements install``: a model's ``code/requirements.txt`` gets an environment of its
own and the model a worker process in it, through boto3 against a real server.

pip runs for real, offline: the server's ``pip_args`` are ``--no-index --find-links <folder>``,
and the folder holds wheels written by the test (no traffic leaves the machine).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import textwrap
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from modelfleet.config import Settings
from tests.artifacts import make_tar_gz
from tests.endpoint.test_boto3_s3 import runtime_client
from tests.servers import ThreadServer, thread_server


def write_wheel(folder: Path, name: str, version: str, files: dict[str, str]) -> Path:
    """A pure-Python wheel holding ``files``; pip installs it like any other."""
    dist = f"{name.replace('-', '_')}-{version}"
    meta = {
        f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}.dist-info/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: modelfleet-tests\nRoot-Is-Purelib: true\n"
            "Tag: py3-none-any\n"
        ),
    }
    entries = {**files, **meta}
    record = []
    for path, text in entries.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{path},sha256={digest.decode()},{len(text.encode())}")
    record.append(f"{dist}.dist-info/RECORD,,")
    wheel = folder / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in entries.items():
            archive.writestr(path, text)
        archive.writestr(f"{dist}.dist-info/RECORD", "\n".join(record) + "\n")
    return wheel


INFERENCE = """
import os
import sys

import mf_extra_dep
import six

print("hello from the model's import")  # must not disturb the worker's channel

def model_fn(model_dir):
    return {"loaded_from": model_dir}

def predict_fn(data, model):
    if data.ndim == 0:  # a single value
        os._exit(3)  # the worker dies mid-request
    return {
        "value": mf_extra_dep.VALUE,
        "six": six.__version__,
        "prefix": sys.prefix,
        "pid": os.getpid(),
        "shape": list(data.shape),
    }
"""


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("requirements")


@pytest.fixture(scope="module")
def server(root: Path) -> Iterator[ThreadServer]:
    """One server for the module: building environments (venv + pip) is the slow part."""
    tmp_path = root
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    write_wheel(wheels, "mf-extra-dep", "1.0", {"mf_extra_dep/__init__.py": "VALUE = 42\n"})
    # a package the server has too (six): the model's environment must win
    write_wheel(wheels, "six", "99.0", {"six.py": "__version__ = '99.0'\n"})
    source = tmp_path / "source"
    source.mkdir()
    code = textwrap.dedent(INFERENCE).encode()
    needs = b"mf-extra-dep==1.0\nsix==99.0\n"
    for name in ("first", "second"):  # the same requirements: one environment
        files = {"code/inference.py": code, "code/requirements.txt": needs}
        (source / f"{name}.tar.gz").write_bytes(make_tar_gz(files))
    broken = {"code/inference.py": code, "code/requirements.txt": b"mf-not-anywhere==1.0\n"}
    (source / "broken.tar.gz").write_bytes(make_tar_gz(broken))
    settings = Settings(
        model_source=str(source),
        cache_dir=tmp_path / "cache",
        model_requirements="install",
        pip_args=f"--no-index --find-links {wheels}",
    )
    with thread_server(settings) as srv:
        yield srv


def _ask(server: ThreadServer, target: str) -> dict[str, object]:
    answer = runtime_client(server.url).invoke_endpoint(
        EndpointName="default",
        TargetModel=f"{target}.tar.gz",
        ContentType="text/csv",
        Accept="application/json",
        Body="1,2,3",
    )
    result: dict[str, object] = json.loads(answer["Body"].read())
    return result


def test_a_model_with_requirements_runs_in_its_own_environment(
    server: ThreadServer, root: Path
) -> None:
    first = _ask(server, "first")
    assert first["value"] == 42
    assert first["six"] == "99.0"  # the server's own six is another version
    assert first["pid"] != os.getpid()
    envs = root / "cache" / "envs"
    assert str(first["prefix"]).startswith(str(envs))
    assert first["shape"] == [3]  # the toolkit's default input_fn ran in the worker
    second = _ask(server, "second")
    assert second["prefix"] == first["prefix"]  # one environment for one requirements file
    assert second["pid"] != first["pid"]  # a worker per model
    built = [p for p in envs.iterdir() if p.is_dir()]
    assert len(built) == 1


def test_pip_failing_fails_the_load_with_pips_reason(server: ThreadServer, root: Path) -> None:
    envs = root / "cache" / "envs"
    before = sorted(p.name for p in envs.iterdir() if p.is_dir()) if envs.exists() else []
    with pytest.raises(ClientError) as caught:
        _ask(server, "broken")
    assert caught.value.response["Error"]["Code"] == "ModelError"
    message = caught.value.response["Error"]["Message"]
    assert "pip could not install code/requirements.txt" in message
    assert "mf-not-anywhere" in message
    assert sorted(p.name for p in envs.iterdir() if p.is_dir()) == before  # nothing half-built


def test_a_worker_that_dies_fails_its_request_and_the_next_one_starts_another(
    server: ThreadServer,
) -> None:
    before = _ask(server, "first")
    client = runtime_client(server.url)
    with pytest.raises(ClientError) as caught:
        client.invoke_endpoint(
            EndpointName="default", TargetModel="first.tar.gz", ContentType="text/csv", Body="1"
        )
    assert caught.value.response["Error"]["Code"] == "ModelError"
    assert caught.value.response["OriginalStatusCode"] == 500
    assert "ended (exit status 3)" in caught.value.response["Error"]["Message"]
    after = _ask(server, "first")
    assert after["value"] == 42
    assert after["pid"] != before["pid"]

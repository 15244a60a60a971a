"""The files in ``examples/`` work as their comments say: the script pushes the example models
to a local S3-compatible server (moto's), and ``modelfleet serve --config examples/fleet.toml``
serves them as a two-variant fleet with its preload list and pin."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.servers import fleet_instances, process_server

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_the_example_script_and_fleet_config(tmp_path: Path, s3_server: str, aws_env: str) -> None:
    pushed = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "push_to_local_s3.py"),
            "--endpoint-url",
            s3_server,
            "--access-key-id",
            "testing",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert pushed.returncode == 0, pushed.stderr
    assert "list them with: modelfleet models --source s3://modelfleet-examples/models/" in (
        pushed.stdout
    )
    args = ["--config", str(ROOT / "examples" / "fleet.toml"), "--log-level", "info"]
    args += ["--cache-dir", str(tmp_path / "cache"), "--state-dir", str(tmp_path / "state")]
    with process_server(args, log=tmp_path / "server.log") as server:
        listed = fleet_instances(server)
        assert Counter(i["variant"] for i in listed) == {"current": 2, "candidate": 1}
        current = [i for i in listed if i["variant"] == "current"]
        loaded = {m["name"]: m["pinned"] for i in current for m in i["loaded"]}
        assert loaded == {
            "sklearn-iris/model.tar.gz": True,  # preloaded and pinned
            "xgboost-housing/model.tar.gz": False,  # by the glob of examples/preload.txt
        }
        served: Counter[str] = Counter()
        with httpx.Client(base_url=server.url, timeout=60) as http:
            for _ in range(40):
                answer = http.post(
                    "/endpoints/recommendations/invocations",
                    content=b"5.1,3.5,1.4,0.2",
                    headers={
                        "X-Amzn-SageMaker-Target-Model": "sklearn-iris/model.tar.gz",
                        "Content-Type": "text/csv",
                    },
                )
                assert answer.status_code == 200, answer.text
                served[answer.headers["x-amzn-invoked-production-variant"]] += 1
        assert set(served) == {"current", "candidate"}

"""``modelfleet plan``'s simulator against a real server: the same trace through a server
(one instance, and a fleet of 3) with its access log, then through the simulator from that
log with the server's settings; the hit ratios agree within 0.03."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from modelfleet.config import parse_size
from modelfleet.endpoint.accesslog import COLUMNS
from modelfleet.plan.replay import Config, replay
from modelfleet.plan.sim import zipf_trace
from modelfleet.plan.workload import read_access_log
from tests.artifacts import features, sklearn_source
from tests.servers import process_server

ROW = ",".join(f"{v:.4f}" for v in features(1, 1, 4)[0]).encode()
MODELS = [f"m{i}/model.tar.gz" for i in range(200)]
REQUESTS = 2000

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sklearn_source(tmp_path_factory.mktemp("plan") / "source", MODELS, 4)


@pytest.mark.parametrize("instances", [1, 3])
@pytest.mark.parametrize("shape", ["zipf", "shifting"])
def test_plans_hit_ratio_is_the_servers(
    tmp_path: Path, source: Path, instances: int, shape: str
) -> None:
    trace = zipf_trace(
        len(MODELS), REQUESTS, 1.0, 11, shift_every=500 if shape == "shifting" else None
    )
    memory = "600KiB" if instances == 1 else "200KiB"  # the same in all: about a fifth of the set
    log = tmp_path / "access.tsv"
    args = ["--model-source", str(source), "--cache-dir", str(tmp_path / "cache")]
    args += ["--memory-limit", memory, "--instances", str(instances), "--access-log", str(log)]
    args += ["--log-level", "warning"]
    with (
        process_server(args, log=tmp_path / "server.log") as server,
        httpx.Client(base_url=server.url, timeout=60) as http,
    ):
        for model in trace.requests:
            answer = http.post(
                "/endpoints/default/invocations",
                content=ROW,
                headers={
                    "X-Amzn-SageMaker-Target-Model": MODELS[model],
                    "Content-Type": "text/csv",
                },
            )
            assert answer.status_code == 200, answer.text
    rows = [
        dict(zip(COLUMNS, line.split("\t"), strict=True))
        for line in log.read_text().splitlines()
        if not line.startswith("#")
    ]
    assert len(rows) == REQUESTS
    measured = sum(r["tier"] == "memory" for r in rows) / len(rows)

    workload, problems = read_access_log([log])
    assert problems == []
    planned = replay(workload, Config(parse_size(memory), None, instances))
    print(f"{shape} x{instances}: server {measured:.3f}, plan {planned.hit_ratio:.3f}")
    assert abs(planned.hit_ratio - measured) <= 0.03

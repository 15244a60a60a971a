"""``--preload`` and ``--pin`` on a real server (one instance in its process, and a fleet of
two instance processes): each model is loaded at start on the instance its requests go to,
so every first request is a hit, and ``--ready-after-preload`` holds ``/ping`` until then."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.artifacts import features, sklearn_source
from tests.servers import fleet_instances, process_server

ROW = ",".join(f"{v:.4f}" for v in features(1, 1, 4)[0]).encode()

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("instances", [1, 2], ids=["in-process", "fleet-of-2"])
def test_preloaded_models_answer_their_first_request_as_hits(
    tmp_path: Path, instances: int
) -> None:
    models = [f"m{i}/model.tar.gz" for i in range(8)]
    source = sklearn_source(tmp_path / "source", models, 4)
    preload = tmp_path / "preload.txt"
    preload.write_text("# the two hot customers\nm0/model.tar.gz\n\nm1/*  # a glob\nm7/*\n")
    wanted = {"m0/model.tar.gz", "m1/model.tar.gz", "m7/model.tar.gz", "m2/model.tar.gz"}
    args = ["--model-source", str(source), "--cache-dir", str(tmp_path / "cache")]
    args += ["--instances", str(instances), "--preload", str(preload), "--ready-after-preload"]
    args += ["--pin", "m2/model.tar.gz", "--pin", "m3*", "--log-level", "info"]
    with process_server(args, log=tmp_path / "server.log") as server:
        # /ping answered 200 (ProcessServer.start waited for it): the preload is done
        listed = fleet_instances(server)
        loaded = [m["name"] for i in listed for m in i["loaded"]]
        assert sorted(loaded) == sorted(wanted)  # each once, on one instance
        pinned = [m["name"] for i in listed for m in i["loaded"] if m["pinned"]]
        assert pinned == ["m2/model.tar.gz"]
        with httpx.Client(base_url=server.url, timeout=60) as http:
            for name in sorted(wanted):
                answer = http.post(
                    "/endpoints/default/invocations",
                    content=ROW,
                    headers={"X-Amzn-SageMaker-Target-Model": name, "Content-Type": "text/csv"},
                )
                assert answer.status_code == 200, answer.text
        after = fleet_instances(server)
        assert sum(i["misses"] for i in after) == 0
        assert sum(i["hits"] for i in after) == len(wanted)
    log = (tmp_path / "server.log").read_text()
    assert "default/AllTraffic: preloaded 4 models" in log

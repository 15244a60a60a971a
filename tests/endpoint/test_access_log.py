"""``--access-log FILE``: one line per invocation with where the model was, its bytes, the load
and download it waited for, and the status; rotated by size."""

from __future__ import annotations

from pathlib import Path

import httpx

from modelfleet.config import Settings
from modelfleet.endpoint.accesslog import COLUMNS, HEADER
from tests.artifacts import features, sklearn_source
from tests.servers import ThreadServer

ROW = ",".join(f"{v:.4f}" for v in features(1, 1, 4)[0]).encode()


def rows(path: Path) -> list[dict[str, str]]:
    lines = path.read_text().splitlines()
    assert lines[0] + "\n" == HEADER
    return [dict(zip(COLUMNS, line.split("\t"), strict=True)) for line in lines[1:]]


def invoke(http: httpx.Client, model: str, endpoint: str = "default") -> int:
    return http.post(
        f"/endpoints/{endpoint}/invocations",
        content=ROW,
        headers={"X-Amzn-SageMaker-Target-Model": model, "Content-Type": "text/csv"},
    ).status_code


def logging_settings(source: Path, tmp_path: Path, log: Path, **more: object) -> Settings:
    return Settings(
        model_source=str(source),
        cache_dir=tmp_path / "cache",
        port=0,
        admin_port=0,
        access_log=log,
        **more,  # type: ignore[arg-type]
    )


def test_each_invocation_is_a_line(tmp_path: Path) -> None:
    source = sklearn_source(tmp_path / "source", ["a/model.tar.gz", "b/model.tar.gz"], 4)
    log = tmp_path / "logs" / "access.tsv"
    server = ThreadServer(logging_settings(source, tmp_path, log)).start()
    try:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            statuses = [invoke(http, m) for m in ("a/model.tar.gz", "a/model.tar.gz")]
            statuses.append(invoke(http, "missing/model.tar.gz"))
            statuses.append(invoke(http, "b/model.tar.gz"))
            statuses.append(invoke(http, "b/model.tar.gz", endpoint="nope"))  # not logged
    finally:
        server.stop()  # the last lines are written at the stop
    assert statuses == [200, 200, 400, 200, 400]
    first, hit, missing, other = rows(log)
    assert (first["model"], first["tier"], first["status"]) == ("a/model.tar.gz", "source", "200")
    assert first["download_s"] != "-"  # its miss downloaded and loaded the model
    assert first["load_s"] != "-"
    assert float(first["download_s"]) >= 0
    assert float(first["load_s"]) >= 0
    assert int(first["memory_bytes"]) > 0
    assert int(first["artifact_bytes"]) > 0
    assert (hit["tier"], hit["load_s"], hit["download_s"]) == ("memory", "-", "-")
    assert hit["memory_bytes"] == first["memory_bytes"]
    assert (missing["model"], missing["status"], missing["tier"]) == (
        "missing/model.tar.gz",
        "400",
        "-",
    )
    assert (other["endpoint"], other["variant"], other["tier"]) == (
        "default",
        "AllTraffic",
        "source",
    )
    assert float(first["time"]) <= float(other["time"])


def test_the_log_is_rotated_by_size(tmp_path: Path) -> None:
    source = sklearn_source(tmp_path / "source", ["a/model.tar.gz"], 4)
    log = tmp_path / "access.tsv"
    settings = logging_settings(source, tmp_path, log, access_log_max_bytes=1000)
    server = ThreadServer(settings.model_copy(update={"access_log_backups": 2})).start()
    try:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            for _ in range(200):
                assert invoke(http, "a/model.tar.gz") == 200
    finally:
        server.stop()
    kept = sorted(p.name for p in tmp_path.glob("access.tsv*"))
    assert kept == ["access.tsv", "access.tsv.1", "access.tsv.2"]
    for path in tmp_path.glob("access.tsv*"):
        assert all(r["model"] == "a/model.tar.gz" for r in rows(path))
    assert log.stat().st_size < 1000 + 250 + 200  # its size, a quarter of it, a line

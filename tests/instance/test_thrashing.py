"""Thrashing: a budget far below the working set is reported (a warning a minute, a metric,
the instance's summary); an instance with room for its working set never is."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import httpx
import pytest

from modelfleet.instance.thrashing import MIN_RELOADS, Thrashing
from tests.artifacts import features, sklearn_source
from tests.servers import fleet_instances, metric, process_server, wait_until

ROW = ",".join(f"{v:.4f}" for v in features(1, 1, 4)[0]).encode()


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_reloads_and_waits_make_thrashing_and_a_warning_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    check = Thrashing(1000, clock=clock)
    hits = misses = 0
    verdict = check.check(hits, misses, [])
    for _ in range(4):  # four models in turn through a budget for two: each a reload
        for model in "abcd":
            clock.now += 1
            misses += 1
            check.loaded(model, 400)
            check.unloaded(model)
        hits += 4
    with caplog.at_level(logging.WARNING, logger="modelfleet.instance.thrashing"):
        verdict = check.check(hits, misses, [])
        again = check.check(hits, misses, [])  # within the minute: no second warning
    assert verdict.thrashing
    assert again.thrashing
    assert verdict.reloads >= MIN_RELOADS
    assert verdict.wait_share == 0.5
    assert verdict.working_set_bytes == 1600
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == [
        "thrashing: working set 1.6 KiB, memory budget 1000 B: 50% of requests wait on a load"
        " (12 models loaded again within 60 s of their unload in the last minute); raise"
        " --memory-limit, add instances, or pin fewer models"
    ]
    clock.now += 120  # a quiet minute
    assert not check.check(hits, misses, []).thrashing


def test_loads_without_reloads_are_not_thrashing() -> None:
    clock = Clock()
    check = Thrashing(10_000, clock=clock)
    check.check(0, 0, [])
    for index in range(50):  # 50 cold models, each loaded once: a cold start, not thrashing
        clock.now += 0.5
        check.loaded(f"m{index}", 100)
    verdict = check.check(0, 50, [])
    assert verdict.wait_share == 1.0
    assert not verdict.thrashing


def traffic(url: str, models: list[str], stop: threading.Event) -> None:
    with httpx.Client(base_url=url, timeout=60) as http:
        index = 0
        while not stop.is_set() and index < 100_000:
            http.post(
                "/endpoints/default/invocations",
                content=ROW,
                headers={
                    "X-Amzn-SageMaker-Target-Model": models[index % len(models)],
                    "Content-Type": "text/csv",
                },
            )
            index += 1


@pytest.mark.slow
@pytest.mark.parametrize("memory_limit", ["40KiB", "1GiB"], ids=["far-below", "room"])
def test_a_server_says_when_it_thrashes(tmp_path: Path, memory_limit: str) -> None:
    models = [f"m{i}/model.tar.gz" for i in range(15)]  # about 10-20 KiB each in memory
    source = sklearn_source(tmp_path / "source", models, 4)
    args = ["--model-source", str(source), "--cache-dir", str(tmp_path / "cache")]
    args += ["--memory-limit", memory_limit, "--log-level", "warning"]
    log = tmp_path / "server.log"
    with process_server(args, log=log) as server:
        stop = threading.Event()
        client = threading.Thread(target=traffic, args=(server.url, models, stop))
        client.start()
        try:
            if memory_limit == "40KiB":
                wait_until(
                    lambda: (
                        metric(
                            httpx.get(f"{server.admin_url}/metrics").text, "modelfleet_thrashing"
                        )
                        == 1.0
                    ),
                    "the thrashing metric",
                )
                wait_until(lambda: "thrashing: working set" in log.read_text(), "the warning")
            else:  # two checks that saw traffic, all of it loaded once
                wait_until(
                    lambda: fleet_instances(server)[0]["thrashing"]["requests_last_minute"] > 200,
                    "checks that saw traffic",
                )
        finally:
            stop.set()
            client.join(timeout=60)
        summary = fleet_instances(server)[0]["thrashing"]
        text = httpx.get(f"{server.admin_url}/metrics").text
    if memory_limit == "40KiB":
        assert summary["thrashing"] is True
        assert summary["working_set_bytes"] > 40 * 1024
        assert summary["load_wait_share"] >= 0.1
    else:
        assert summary["thrashing"] is False
        assert metric(text, "modelfleet_thrashing") == 0.0
        assert metric(text, "modelfleet_model_reloads_total") == 0.0
        assert "thrashing" not in log.read_text()

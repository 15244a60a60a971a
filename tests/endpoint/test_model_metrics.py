"""Per-model metrics with bounded cardinality (``--model-metrics-top N``), and
``GET /models/{name}/stats`` on the admin listener."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from modelfleet.endpoint.modelstats import OTHER, ModelStats
from tests.artifacts import features, sklearn_source
from tests.servers import process_server

ROW = ",".join(f"{v:.4f}" for v in features(1, 1, 4)[0]).encode()


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def model_labels(text: str, family: str) -> dict[str, float]:
    """Per model label value: the sample of ``family`` (summed over variants)."""
    values: dict[str, float] = {}
    for metric in text_string_to_metric_families(text):
        for sample in metric.samples:
            if sample.name == family:
                model = sample.labels["model"]
                values[model] = values.get(model, 0.0) + sample.value
    return values


def render(stats: ModelStats) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(stats)
    return generate_latest(registry).decode()


def test_ten_thousand_models_give_at_most_n_plus_one_label_values() -> None:
    clock = Clock()
    stats = ModelStats("e", 50, clock=clock)
    for i in range(10_000):  # once each, spread over 20 minutes
        clock.now = i * 0.12
        stats.record("v", f"cold-{i}", 200, hit=False, latency_s=0.001)
    for round_ in range(5):  # then 60 models with traffic now: ten of them the most
        clock.now += 1.0
        for i in range(60):
            for _ in range(5 if i < 10 else 1):
                stats.record("v", f"hot-{i}", 200, hit=True, latency_s=0.002)
        if round_ == 0:
            render(stats)  # a scrape ranks them
    text = render(stats)
    invocations = model_labels(text, "modelfleet_target_model_invocations_total")
    assert len(invocations) <= 51
    assert OTHER in invocations
    top = set(stats.top_models())
    assert {f"hot-{i}" for i in range(10)} <= top  # the most recent traffic
    assert not any(name.startswith("cold-") for name in top)
    # every request is counted once, in a top model's series or in __other__
    assert sum(invocations.values()) == 10_000 + 5 * (10 * 5 + 50)


def test_counters_stay_monotonic_as_models_enter_and_leave_the_top() -> None:
    clock = Clock()
    stats = ModelStats("e", 1, clock=clock)
    last: dict[str, float] = {}
    for leader in ("a", "b", "a", "b"):
        for _ in range(10):
            clock.now += 2.0
            stats.record("v", leader, 200)
            stats.record("v", "a" if leader == "b" else "b", 200)
            stats.record("v", leader, 200)
            clock.now += 11.0  # past a re-ranking
            seen = model_labels(render(stats), "modelfleet_target_model_invocations_total")
            assert len(seen) <= 2
            for model, value in seen.items():
                assert value >= last.get(model, 0.0), (model, value, last)
                last[model] = value


def test_the_tracked_models_are_bounded() -> None:
    clock = Clock()
    stats = ModelStats("e", 5, clock=clock, max_models=1_000)
    for i in range(5_000):
        clock.now += 0.01
        stats.record("v", f"m{i}", 404)
    assert len(stats._models) <= 1_000
    assert stats.stats("m4999") is not None  # the most recent stay


@pytest.mark.slow
def test_a_server_counts_per_model_and_answers_one_model_stats(tmp_path: Path) -> None:
    models = [f"m{i}/model.tar.gz" for i in range(3)]
    source = sklearn_source(tmp_path / "source", models, 4)
    args = ["--model-source", str(source), "--cache-dir", str(tmp_path / "cache")]
    args += ["--model-metrics-top", "5", "--log-level", "warning"]
    with process_server(args, log=tmp_path / "server.log") as server:

        def invoke(model: str) -> int:
            with httpx.Client(base_url=server.url, timeout=60) as http:
                return http.post(
                    "/endpoints/default/invocations",
                    content=ROW,
                    headers={"X-Amzn-SageMaker-Target-Model": model, "Content-Type": "text/csv"},
                ).status_code

        with ThreadPoolExecutor(8) as pool:  # 500 models the source does not hold
            statuses = list(pool.map(invoke, [f"missing-{i}/model.tar.gz" for i in range(500)]))
        assert set(statuses) == {400}
        for _ in range(3):
            assert {invoke(m) for m in models for _ in range(4)} == {200}
            httpx.get(f"{server.admin_url}/metrics", timeout=30)  # a scrape ranks them
        text = httpx.get(f"{server.admin_url}/metrics", timeout=30).text
        invocations = model_labels(text, "modelfleet_target_model_invocations_total")
        assert len(invocations) <= 6
        assert set(models) <= set(invocations)
        assert sum(invocations.values()) == 500 + 36

        answer = httpx.get(f"{server.admin_url}/models/m1/model.tar.gz/stats", timeout=30)
        assert answer.status_code == 200
        [counted] = answer.json()["endpoints"]
        assert counted["invocations"] == 12
        assert (counted["cache_hits"], counted["cache_misses"], counted["loads"]) == (11, 1, 1)
        assert counted["load_mean_s"] is not None  # the one load's time was reported
        assert counted["in_metrics"] is True
        missing = httpx.get(f"{server.admin_url}/models/never/stats", timeout=30)
        assert missing.status_code == 404
        assert missing.headers["x-amzn-errortype"] == "ModelNotFound"
        public = httpx.get(f"{server.url}/models/m1/model.tar.gz/stats", timeout=30)
        assert public.status_code == 404  # the admin listener's only

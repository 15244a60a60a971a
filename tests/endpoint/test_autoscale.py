"""Autoscaling a variant on invocations per instance per minute.

The decisions (rate over the window, cool-downs, one scale-in at a time, prewarming) are tested
on the :class:`Autoscaler` with a fake backend and an injected clock; one slow test checks the
whole loop with real instance processes, waiting on the instance count it reports.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelfleet.backends.remote import DRAINING, UP
from modelfleet.config import Settings
from modelfleet.endpoint.autoscale import Autoscaler
from modelfleet.endpoint.router import Router
from tests.artifacts import features, sklearn_artifact
from tests.servers import invoking, process_server, wait_until

ROW = ",".join(f"{v:.4f}" for v in features(1, 1, 4)[0]).encode()
MODELS = [f"m{i}/model.tar.gz" for i in range(6)]
VARIANT = "AllTraffic"


@dataclass
class FakeInstance:
    instance_id: str
    state: str = UP
    in_flight: int = 0
    prewarmed: list[str] = field(default_factory=list)

    def available(self) -> bool:
        return self.state == UP

    async def prewarm(self, models: list[str]) -> int:
        self.prewarmed += models
        return len(models)


class FakeBackend:
    """What the autoscaler uses of a ``LocalBackend``: settings, instances, add and remove."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.instances = [FakeInstance(str(i)) for i in range(settings.instances)]
        self._next_id = settings.instances

    async def add_instance(self) -> FakeInstance:
        instance = FakeInstance(str(self._next_id))
        self._next_id += 1
        self.instances.append(instance)
        return instance

    async def remove_instance(self, instance: FakeInstance) -> None:
        self.instances.remove(instance)


class Scaling:
    """An autoscaler over a fake backend, on a clock the test moves."""

    def __init__(self, **settings: Any) -> None:
        self.now = 1_000.0
        self.backend = FakeBackend(Settings(autoscale_target=300, **settings))
        self.router = Router({VARIANT: self.backend.instances})
        self.autoscaler = Autoscaler(
            self.router,
            VARIANT,
            self.backend,  # type: ignore[arg-type]
            clock=lambda: self.now,
        )

    def step(self, seconds: float, requests: int = 0) -> list[str]:
        """``requests`` served over the next ``seconds``, then one evaluation: the instances."""
        self.now += seconds
        self.router.served[VARIANT] += requests
        asyncio.run(self.autoscaler.evaluate())
        return [i.instance_id for i in self.backend.instances]


def test_the_rate_counts_from_the_start_until_a_window_has_passed() -> None:
    scaling = Scaling(instances=1, max_instances=4, autoscale_window=60)
    # 100 requests in the first 10 s: 600 a minute, twice the target
    assert scaling.step(10, requests=100) == ["0", "1"]


def test_scale_out_waits_for_its_cooldown() -> None:
    scaling = Scaling(instances=1, max_instances=4, autoscale_window=60, scale_out_cooldown=60)
    assert scaling.step(10, requests=100) == ["0", "1"]
    # 1,500 a minute over two instances: three times the target, but within the cooldown
    assert scaling.step(10, requests=400) == ["0", "1"]
    # 1,800 in the last minute: 900 per instance; six wanted, four at most
    assert scaling.step(50, requests=1_300) == ["0", "1", "2", "3"]


def test_scale_in_removes_the_newest_one_at_a_time_after_its_cooldown() -> None:
    scaling = Scaling(instances=3, min_instances=1, max_instances=3, scale_in_cooldown=30)
    assert scaling.step(10) == ["0", "1"]  # no traffic: one is enough, the newest goes first
    assert scaling.step(10) == ["0", "1"]  # 10 s after scaling: within the cooldown
    assert scaling.step(21) == ["0"]
    assert scaling.step(100) == ["0"]  # never below min_instances


def test_no_scale_in_within_the_cooldown_after_a_scale_out() -> None:
    scaling = Scaling(
        instances=1,
        max_instances=3,
        autoscale_window=10,
        scale_out_cooldown=0,
        scale_in_cooldown=60,
    )
    assert scaling.step(10, requests=100) == ["0", "1"]
    assert scaling.step(30) == ["0", "1"]  # the traffic stopped: still within the cooldown
    assert scaling.step(31) == ["0"]


def test_a_draining_instance_does_not_count() -> None:
    scaling = Scaling(instances=2, min_instances=1, max_instances=3, autoscale_window=10)
    scaling.backend.instances[1].state = DRAINING
    # 50 a second on the one active instance: 3,000 a minute, ten times the target
    assert scaling.step(10, requests=500) == ["0", "1", "2", "3"]


def test_a_new_instance_is_prewarmed_with_the_hot_models_routed_to_it() -> None:
    scaling = Scaling(instances=1, max_instances=2, autoscale_window=10)
    hot = {f"model-{i}": 100 - i for i in range(40)}  # model-0 is the hottest
    scaling.router.recent[VARIANT] = dict(hot)
    scaling.step(10, requests=sum(hot.values()))
    old, new = scaling.backend.instances
    instances = list(scaling.backend.instances)
    top = sorted(hot, key=hot.__getitem__, reverse=True)[:20]
    routed_to_new = [m for m in top if scaling.router.candidates(m, instances)[0] is new]
    assert routed_to_new  # about half of them
    assert new.prewarmed == routed_to_new
    assert old.prewarmed == []


def count(admin_url: str) -> tuple[int, int]:
    """(instances up, all instances) of the endpoint."""
    listed = httpx.get(f"{admin_url}/admin/instances").json()["instances"]
    return sum(1 for i in listed if i["state"] == "up"), len(listed)


@pytest.mark.slow
def test_a_load_step_scales_out_and_back_in_without_failures(tmp_path: Path) -> None:
    source = tmp_path / "source"
    for index, name in enumerate(MODELS):
        (source / name).parent.mkdir(parents=True)
        (source / name).write_bytes(sklearn_artifact(seed=index, n_features=4, n_trees=2))
    args = ["--model-source", str(source), "--cache-dir", str(tmp_path / "cache")]
    args += ["--instances", "1", "--min-instances", "1", "--max-instances", "3"]
    args += ["--autoscale-target", "300", "--scale-out-cooldown", "1"]
    args += ["--scale-in-cooldown", "1", "--log-level", "info"]
    env = {"MODELFLEET_AUTOSCALE_INTERVAL": "0.5", "MODELFLEET_AUTOSCALE_WINDOW": "2"}
    load: list[int] = []
    trickle: list[int] = []
    with process_server(args, env=env, log=tmp_path / "server.log") as server:
        assert count(server.admin_url) == (1, 1)
        # A load step: 4 clients without pause, far above 300 per instance per minute.
        with invoking(server.url, MODELS, ROW, load, clients=4):
            wait_until(lambda: count(server.admin_url) == (3, 3), "the scale-out to 3 instances")
        # A trickle (3 a second at most, 200 a minute): one instance is enough again, and the
        # trickle is served while the other two drain and afterwards.
        with invoking(server.url, MODELS, ROW, trickle, pause_s=0.3):
            wait_until(lambda: count(server.admin_url) == (1, 1), "the scale-in to 1 instance")
            scaled_in_after = len(trickle)
            wait_until(lambda: len(trickle) >= scaled_in_after + 3, "the trickle after scale-in")
    assert len(load) > 100
    assert set(load) == {200}, {s: load.count(s) for s in set(load)}
    assert set(trickle) == {200}, {s: trickle.count(s) for s in set(trickle)}


@pytest.mark.slow
def test_autoscaling_bounds_leave_the_instances_alone(tmp_path: Path) -> None:
    source = tmp_path / "source"
    (source / "m0").mkdir(parents=True)
    (source / MODELS[0]).write_bytes(sklearn_artifact(seed=0, n_features=4, n_trees=2))
    args = ["--model-source", str(source), "--cache-dir", str(tmp_path / "cache")]
    args += ["--instances", "2", "--min-instances", "2", "--max-instances", "3"]
    with process_server(args, log=tmp_path / "server.log") as server:
        assert count(server.admin_url) == (2, 2)  # each instance runs with min = max = 1 of its own
        response = httpx.post(
            f"{server.url}/endpoints/default/invocations",
            content=ROW,
            headers={"X-Amzn-SageMaker-Target-Model": MODELS[0], "Content-Type": "text/csv"},
        )
        assert response.status_code == 200

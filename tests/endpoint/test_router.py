"""Instance choice: a new model in rendezvous order past thrashing instances, a placed one on
its holders, copies only for hot models; failover."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

import modelfleet.endpoint.router as router_mod
from modelfleet.endpoint.router import Router, rendezvous_score
from modelfleet.errors import ServiceUnavailableError
from modelfleet.handlers.base import Prediction
from modelfleet.instance.state import InvokeResult


class Unreachable(ServiceUnavailableError):
    pass


@dataclass
class FakeInstance:
    instance_id: str
    in_flight: int = 0
    up: bool = True
    fail: bool = False
    hits: bool = True  # what it answers: a cache hit, or a miss
    served: list[str] = field(default_factory=list)

    def available(self) -> bool:
        return self.up

    async def invoke(self, target_model: str, body: bytes, **_: object) -> InvokeResult:
        if self.fail:
            raise Unreachable(f"{self.instance_id} is gone")
        self.served.append(target_model)
        return InvokeResult(Prediction(self.instance_id.encode(), "text/plain"), self.hits, 0.0)


def fleet(count: int) -> list[FakeInstance]:
    return [FakeInstance(str(i)) for i in range(count)]


def call(router: Router, model: str) -> str:
    routed = asyncio.run(
        router.invoke(
            model,
            b"",
            content_type=None,
            accept=None,
            custom_attributes=None,
            variant=router.pick_variant(None),
        )
    )
    return routed.instance_id


def test_rendezvous_order_is_shared_and_spreads_models() -> None:
    instances = fleet(4)
    a, b = Router({"v": list(instances)}), Router({"v": list(instances)})
    models = [f"model-{i}" for i in range(400)]
    firsts = [a.candidates(m, list(instances))[0].instance_id for m in models]
    assert firsts == [b.candidates(m, list(instances))[0].instance_id for m in models]
    counts = {i: firsts.count(i) for i in "0123"}
    assert min(counts.values()) > 60, counts  # about 100 each
    best = max(instances, key=lambda i: rendezvous_score("model-7", i.instance_id))
    assert firsts[7] == best.instance_id


def test_a_model_goes_back_to_its_home_after_a_failover() -> None:
    instances = fleet(3)
    router = Router({"v": list(instances)})
    home = router.candidates("m", list(instances))[0]
    assert call(router, "m") == home.instance_id
    home.up = False  # it dies: the model is served elsewhere
    stand_in = call(router, "m")
    assert stand_in != home.instance_id
    home.up = True  # restarted: both now hold "m", equally idle
    assert call(router, "m") == home.instance_id


def test_a_placed_model_stays_on_its_holder_however_busy() -> None:
    instances = fleet(3)
    router = Router({"v": list(instances)})
    home = router.candidates("m", list(instances))[0]
    assert call(router, "m") == home.instance_id
    home.in_flight = 10  # far over the bound, ceil(2 * 11 / 3) = 8: no copy for a busy moment
    order = router.candidates("m", list(instances))
    assert order[0] is home
    assert call(router, "m") == home.instance_id


@pytest.mark.parametrize("balance", [True, False])
def test_a_new_model_passes_over_a_thrashing_instance(balance: bool) -> None:
    instances = fleet(3)
    router = Router({"v": list(instances)}, balance=balance)
    models = [f"model-{i}" for i in range(60)]
    thrashing = instances[0]
    thrashing.hits = False
    for model in models:  # every model placed on the thrashing instance misses there
        if router.candidates(model, list(instances))[0] is thrashing:
            assert call(router, model) == thrashing.instance_id
    assert (
        len(thrashing.served) > 5
    )  # it missed lately (over 1 a second): the next new models go elsewhere
    fresh = [f"fresh-{i}" for i in range(30)]
    if not balance:  # several routers: the rendezvous order, whatever the misses
        assert any(router.candidates(m, list(instances))[0] is thrashing for m in fresh)
        return
    assert all(router.candidates(m, list(instances))[0] is not thrashing for m in fresh)
    others = {router.candidates(m, list(instances))[0].instance_id for m in fresh}
    assert others == {"1", "2"}  # neither missed: rendezvous order spreads them
    instances[1].in_flight = 10  # at the bound: passed over for a placement
    assert all(router.candidates(m, list(instances))[0] is instances[2] for m in fresh)


def test_down_and_failing_instances_are_skipped() -> None:
    instances = fleet(3)
    router = Router({"v": list(instances)}, retry_on=(Unreachable,))
    model = "m"
    first, second, third = router.candidates(model, list(instances))
    first.fail = True
    assert call(router, model) == second.instance_id  # failed over
    second.up = False
    assert call(router, model) == third.instance_id
    for instance in instances:
        instance.up = False
    with pytest.raises(ServiceUnavailableError, match="no instance running"):
        call(router, model)


def test_every_instance_failing_is_service_unavailable() -> None:
    instances = fleet(2)
    for instance in instances:
        instance.fail = True
    router = Router({"v": list(instances)}, retry_on=(Unreachable,))
    with pytest.raises(ServiceUnavailableError, match="could take the request"):
        call(router, "m")


def test_a_model_on_two_instances_gets_a_third_only_when_hot() -> None:
    from modelfleet.endpoint import router as module

    instances = fleet(3)
    router = Router({"v": list(instances)})
    first, second, third = router.candidates("m", list(instances))
    second.up = third.up = False
    call(router, "m")  # on `first`
    second.up = True
    first.up = False
    call(router, "m")  # on `second`: two holders now
    first.up = third.up = True
    first.in_flight = second.in_flight = 20  # both far over the bound
    order = router.candidates("m", list(instances))
    assert order[-1] is third  # not hot: the busy holders keep it
    assert {order[0].instance_id, order[1].instance_id} == {first.instance_id, second.instance_id}

    hot = module._Pressure()
    hot.queued = 1.0
    router._pressure["m"] = hot  # its requests queue for a slot at the holders
    assert router.candidates("m", list(instances))[0] is third


def failed_over(router: Router, instances: list[FakeInstance], model: str) -> str:
    """Serve ``model`` on its home, then on a stand-in while the home is down; the home is up
    again and both hold it. The stand-in's id."""
    home = router.candidates(model, list(instances))[0]
    assert call(router, model) == home.instance_id
    home.up = False
    stand_in = call(router, model)
    home.up = True
    return stand_in


def test_idle_copies_keep_the_latest_holder_and_old_entries_are_forgotten(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    instances = fleet(3)
    router = Router({"v": list(instances)})
    clock = {"now": 1_000.0}
    monkeypatch.setattr(router_mod.time, "monotonic", lambda: clock["now"])
    copy = failed_over(router, instances, "m")
    clock["now"] += 1
    home = call(router, "m")  # back home: the stand-in holds an idle copy
    assert home != copy
    call(router, "solo")  # one holder: never an idle copy
    assert router.idle_copies(idle_s=30) == []  # both copies served within the last 30 s
    clock["now"] += 31
    assert router.idle_copies(idle_s=30) == [("m", copy)]  # the home served last
    assert router.idle_copies(idle_s=30) == []  # forgotten once reported
    clock["now"] += router_mod._FORGET_AFTER_S + 1
    router.idle_copies(idle_s=30)
    assert all(not held for held in router._held.values())  # nothing used for an hour
    router.forget_instance(copy)
    assert copy not in router._held


def test_a_copy_idle_longer_than_the_forget_time_is_still_reported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--copy-idle-timeout may exceed the hour after which the router forgets unused models:
    an idle copy is reported (and unloaded) before it is forgotten."""
    instances = fleet(3)
    router = Router({"v": list(instances)})
    clock = {"now": 1_000.0}
    monkeypatch.setattr(router_mod.time, "monotonic", lambda: clock["now"])
    copy = failed_over(router, instances, "m")
    idle_s = 2 * router_mod._FORGET_AFTER_S
    reported = []
    for _ in range(40):  # the app checks every few seconds; here every 5 minutes
        clock["now"] += 300
        call(router, "m")  # the home keeps serving it
        reported += router.idle_copies(idle_s)
    assert reported == [("m", copy)]

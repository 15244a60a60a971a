"""Failover: while any instance is up, no request fails.

``modelfleet serve --instances 3`` with real instance subprocesses; two of them are killed with
SIGKILL at the same moment, in the middle of a load, and every request must still answer 200
with the right prediction, the survivor loading the models it did not hold. Then the router's
rule at its seam, with fake instances: a request that an instance dropped is tried once more,
on an instance that answers ``/ping`` (one dying with the first is skipped), and never a third
time, and one whose instance ended by its own hand is not retried at all;
:meth:`RemoteInstance.ping` gives up as soon as its instance is marked down; and a request a
:class:`RemoteInstance` drops is a :class:`RequestDroppedError` or, when its supervisor says
the process ended by its own hand, an :class:`InstanceEndedError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest

import modelfleet.backends.remote as remote
from modelfleet.backends.remote import DOWN, UP, InstanceUnreachableError, RemoteInstance
from modelfleet.endpoint.router import Router
from modelfleet.errors import InstanceEndedError, RequestDroppedError, ServiceUnavailableError
from modelfleet.handlers.base import Prediction
from modelfleet.instance.state import InvokeResult
from tests.artifacts import features, sklearn_source, train_sklearn
from tests.servers import ProcessServer
from tests.servers import fleet_instances as listed
from tests.servers import process_fleet as fleet
from tests.servers import process_gone as gone

N_FEATURES = 4
MODELS = [f"m{i}/model.tar.gz" for i in range(9)]
ROW = features(1, 1, N_FEATURES)
BODY = ",".join(repr(float(v)) for v in ROW[0]).encode()
REQUESTS = 2000
CONCURRENCY = 16
KILL_AFTER = 400  # answered requests before two instances are killed


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return sklearn_source(tmp_path / "source", MODELS, N_FEATURES)


def expected() -> dict[str, list[float]]:
    """Each model's prediction for ``ROW``, from the estimator itself."""
    return {
        name: train_sklearn(seed=index, n_features=N_FEATURES, n_trees=2).predict(ROW).tolist()
        for index, name in enumerate(MODELS)
    }


async def invoke(http: httpx.AsyncClient, model: str) -> httpx.Response:
    return await http.post(
        "/endpoints/default/invocations",
        content=BODY,
        headers={
            "X-Amzn-SageMaker-Target-Model": model,
            "Content-Type": "text/csv",
            "Accept": "application/json",
        },
    )


def call(server: ProcessServer, model: str) -> tuple[int, Any]:
    """One request: its status and its JSON answer (the error text if it failed)."""
    response = httpx.post(
        f"{server.url}/endpoints/default/invocations",
        content=BODY,
        headers={
            "X-Amzn-SageMaker-Target-Model": model,
            "Content-Type": "text/csv",
            "Accept": "application/json",
        },
        timeout=60,
    )
    if response.status_code != 200:
        return response.status_code, response.text
    return 200, json.loads(response.content)


def test_two_instances_killed_at_once_fail_no_request(source: Path, tmp_path: Path) -> None:
    right = expected()
    with fleet(source, tmp_path, 3) as (server, seen):
        for model in MODELS:  # each model goes home: the instances split them
            assert call(server, model) == (200, right[model]), model
        before = listed(server)
        assert [i["state"] for i in before] == ["up"] * 3
        held = {i["id"]: {m["name"] for m in i["loaded"]} for i in before}
        # the survivor is the instance holding the fewest models: after the kill it must load
        # the others' models, not answer 503
        survivor = min(before, key=lambda i: (len(held[i["id"]]), i["id"]))
        victims = [i for i in before if i is not survivor]
        assert set(MODELS) - held[survivor["id"]], "the survivor already holds every model"

        answers: list[tuple[int, Any]] = []
        failures: list[tuple[str, int, str]] = []

        async def drive() -> None:
            queue = [MODELS[i % len(MODELS)] for i in range(REQUESTS)]
            queue.reverse()
            limits = httpx.Limits(max_connections=CONCURRENCY)
            async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as http:

                async def worker() -> None:
                    while queue:
                        model = queue.pop()
                        response = await invoke(http, model)
                        if response.status_code == 200:
                            answers.append((200, response.json() == right[model]))
                        else:
                            answers.append((response.status_code, False))
                            failures.append((model, response.status_code, response.text))
                        if len(answers) == KILL_AFTER:  # two at once, by PID
                            for victim in victims:
                                os.kill(victim["pid"], signal.SIGKILL)

                await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))

        asyncio.run(drive())
        assert len(answers) == REQUESTS
        assert failures == [], f"{len(failures)} of {REQUESTS} failed: {failures[:5]}"
        assert all(ok for _, ok in answers), "a request answered with the wrong prediction"

        # the victims come back (new PIDs) and the fleet serves every model again
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            now = listed(server)
            seen.update(i["pid"] for i in now if i["pid"] is not None)
            back = {i["id"]: i for i in now}
            if all(
                back[v["id"]]["state"] == "up" and back[v["id"]]["pid"] != v["pid"] for v in victims
            ):
                break
            time.sleep(0.1)
        for victim in victims:
            assert gone(victim["pid"])
            assert back[victim["id"]]["state"] == "up"
            assert back[victim["id"]]["restarts"] == 1
        assert back[survivor["id"]]["pid"] == survivor["pid"]
        for model in MODELS:
            assert call(server, model) == (200, right[model]), model


class FakeInstance:
    """An instance that answers, or drops every request (dies while holding it; ``ends``: by
    its own hand, as its backend tells); ``alive``: whether it answers ``/ping``."""

    def __init__(self, instance_id: str) -> None:
        self.instance_id = instance_id
        self.in_flight = 0
        self.drops = False
        self.ends = False
        self.alive = True
        self.invoked = 0
        self.pinged = 0

    def available(self) -> bool:
        return True

    async def ping(self) -> bool:
        self.pinged += 1
        return self.alive

    async def invoke(self, target_model: str, body: bytes, **_: object) -> InvokeResult:
        self.invoked += 1
        if self.ends:
            raise InstanceEndedError(f"The model's code ended instance {self.instance_id}")
        if self.drops:
            raise RequestDroppedError(f"{self.instance_id} dropped it")
        return InvokeResult(Prediction(self.instance_id.encode(), "text/plain"), True, 0.0)


def route(router: Router) -> str:
    routed = asyncio.run(
        router.invoke(
            "m",
            b"",
            content_type=None,
            accept=None,
            custom_attributes=None,
            variant=router.pick_variant(None),
        )
    )
    return routed.instance_id


def test_a_retry_skips_an_instance_that_died_with_the_first() -> None:
    fleet_ = [FakeInstance(str(i)) for i in range(3)]
    router = Router({"v": fleet_}, retry_on=(InstanceUnreachableError,))
    first, second, third = router.candidates("m", fleet_)
    first.drops = second.drops = True  # both killed at once
    second.alive = False
    assert route(router) == third.instance_id
    assert (first.invoked, second.invoked, third.invoked) == (1, 0, 1)
    assert first.pinged == 0  # the first try is not delayed by a ping


def test_a_request_dropped_twice_is_not_tried_a_third_time() -> None:
    fleet_ = [FakeInstance(str(i)) for i in range(3)]
    router = Router({"v": fleet_}, retry_on=(InstanceUnreachableError,))
    first, second, third = router.candidates("m", fleet_)
    first.drops = second.drops = third.drops = True  # the request kills whoever serves it
    with pytest.raises(ServiceUnavailableError, match="could take the request"):
        route(router)
    assert (first.invoked, second.invoked, third.invoked) == (1, 1, 0)
    assert second.pinged == 1  # it answered /ping: the drop there was the request's doing


def test_a_request_whose_instance_ended_by_itself_is_not_retried() -> None:
    fleet_ = [FakeInstance(str(i)) for i in range(3)]
    router = Router({"v": fleet_}, retry_on=(InstanceUnreachableError,))
    first, second, third = router.candidates("m", fleet_)
    first.ends = second.ends = third.ends = True  # the request ends whoever serves it
    with pytest.raises(InstanceEndedError, match=f"ended instance {first.instance_id}"):
        route(router)
    assert (first.invoked, second.invoked, third.invoked) == (1, 0, 0)
    assert second.pinged == third.pinged == 0


async def test_a_ping_gives_up_when_its_instance_is_marked_down() -> None:
    accepted = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set()  # reads nothing, answers nothing: a process being killed
        await reader.read()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    instance = RemoteInstance("0", f"http://127.0.0.1:{port}")
    instance.state = UP
    async with server, aiohttp.ClientSession() as session:
        instance.session = session
        ping = asyncio.create_task(instance.ping())
        await accepted.wait()
        assert not ping.done()
        instance.state = DOWN  # its exit was seen, or it dropped another request
        assert await asyncio.wait_for(ping, 30) is False
        assert instance.state == DOWN


@contextlib.asynccontextmanager
async def dropping_instance() -> AsyncIterator[tuple[RemoteInstance, asyncio.Event]]:
    """A :class:`RemoteInstance` whose server reads each request and closes the connection
    without answering, as a process ending while it holds the request; the event is set once
    the connection is closed."""
    dropped = asyncio.Event()

    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")  # the request reached it
        writer.close()
        await writer.wait_closed()
        dropped.set()

    server = await asyncio.start_server(drop, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    instance = RemoteInstance("0", f"http://127.0.0.1:{port}")
    instance.state = UP
    async with server, aiohttp.ClientSession() as session:
        instance.session = session
        yield instance, dropped


async def invoke_remote(instance: RemoteInstance) -> InvokeResult:
    return await instance.invoke("m", b"x", content_type=None, accept=None, custom_attributes=None)


@pytest.mark.parametrize(
    ("how", "raised"),
    [
        ("exit status 7", InstanceEndedError),  # os._exit(7): the request's doing
        ("signal SIGSEGV", InstanceEndedError),  # a crash in native code
        (None, RequestDroppedError),  # SIGKILL, SIGTERM: from outside, retried
    ],
)
async def test_a_dropped_request_learns_how_its_process_ended(
    how: str | None, raised: type[Exception], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(remote, "EXIT_WAIT_S", 60.0)  # a loaded machine may reap it late
    async with dropping_instance() as (instance, dropped):
        instance.process_started()
        call = asyncio.create_task(invoke_remote(instance))
        await dropped.wait()  # the connection closed first, then the supervisor reaps it
        instance.process_ended(how)
        with pytest.raises(raised) as caught:
            await call
    if how is not None:  # a ModelError: 424, OriginalStatusCode 500 at the edge
        ended = caught.value
        assert isinstance(ended, InstanceEndedError)
        assert ended.original_status_code == 500
        assert ended.message == (
            f"The model's code ended instance 0 ({how}) while it served this request; the"
            " request is not retried on another instance."
        )


async def test_a_drop_is_retried_when_the_end_is_not_known_in_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(remote, "EXIT_WAIT_S", 0.05)
    async with dropping_instance() as (instance, _):
        instance.process_started()  # and never reaped (a stalled supervisor)
        with pytest.raises(RequestDroppedError):
            await invoke_remote(instance)
        # an end that was known before the request was sent is another process's
        instance.process_ended("exit status 7")
        with pytest.raises(RequestDroppedError):
            await invoke_remote(instance)


async def test_a_drop_without_a_supervisor_is_retried_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(remote, "EXIT_WAIT_S", 3600.0)  # a wait for an end would never end
    async with dropping_instance() as (instance, _):  # process_started never called
        with pytest.raises(RequestDroppedError):
            await asyncio.wait_for(invoke_remote(instance), 60)  # a guard against a hang

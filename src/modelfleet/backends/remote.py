"""An instance process as the router reaches it: over pooled keep-alive HTTP (aiohttp).

:class:`RemoteInstance` forwards modelfleet's whole-path ``POST /invocations`` of the instance
API and turns the instance's error answers back into modelfleet errors (the shapes of
:mod:`modelfleet.edge`), so the router re-renders them unchanged for the client. The router
retries :class:`InstanceUnreachableError` and :class:`InstanceFullError` on another instance.
aiohttp's C parser costs ~0.1 ms a request where httpx (pure-Python h11) cost ~1.4 ms and capped
a router at ~650 requests/s.

A request the instance received and dropped (the connection reset or closed mid-request) waits
up to :data:`EXIT_WAIT_S` to learn from the instance's supervisor how its process ended
(:meth:`RemoteInstance.process_ended`): by its own hand (a non-zero exit status, as from
``os._exit``, or a crash signal) it is :class:`~modelfleet.errors.InstanceEndedError`, a
ModelError the router does not retry; killed from outside (SIGKILL, SIGTERM), not seen to end
in time, or with no supervisor to say, it is :class:`~modelfleet.errors.RequestDroppedError`,
which the router tries once more elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import aiohttp

from modelfleet.backends.base import InstanceState
from modelfleet.config import Settings
from modelfleet.errors import (
    InstanceEndedError,
    ModelError,
    ModelNotReadyError,
    RequestDroppedError,
    ServiceUnavailableError,
    ValidationError,
)
from modelfleet.handlers.base import Prediction
from modelfleet.instance.state import InvokeResult

logger = logging.getLogger(__name__)

UP, STARTING, DOWN, DRAINING = (
    InstanceState.UP,
    InstanceState.STARTING,
    InstanceState.DOWN,
    InstanceState.DRAINING,
)
_PASSED_HEADERS = ("content-type", "accept", "x-amzn-sagemaker-custom-attributes")
#: a /ping not answered within this is a failed one (health watcher and failover alike)
PING_TIMEOUT = aiohttp.ClientTimeout(total=5.0)
#: how long a dropped request waits for the supervisor to say how the process ended; it is
#: reaped within milliseconds of its connections closing, so this bounds only a stalled router
EXIT_WAIT_S = 2.0
# Idle pooled connections are dropped before the instance's own keep-alive timeout (75 s,
# set by ``modelfleet instance``), so a request never meets a connection the instance closes.
KEEPALIVE_S = 60.0
_ASK_TIMEOUT = aiohttp.ClientTimeout(total=5.0)  # a question about its state, not a load


class InstanceUnreachableError(ServiceUnavailableError):
    """The instance could not be reached (the connection was refused): try another one."""


class InstanceFullError(ServiceUnavailableError):
    """The instance answered 507 (no room for the model even after evicting): try another."""


class RolloutError(ServiceUnavailableError):
    """A rolling update stopped: a new instance did not come up."""


class InternalInstanceError(Exception):
    """The instance answered InternalFailure: a bug there, reported as one here."""


class RemoteInstance:
    """An instance process reached over HTTP."""

    def __init__(self, instance_id: str, url: str) -> None:
        self.instance_id = instance_id
        self.url = url
        self._left_up = asyncio.Event()  # set while not up: a pending ping() gives up at once
        self._state = STARTING
        self.state = STARTING
        self.pid: int | None = None
        self.in_flight = 0
        self.restarts = 0
        self.node: str | None = None  # where it runs (a Ray node id); None on this machine
        self.session: aiohttp.ClientSession | None = None  # set by the supervisor
        # resolved when the process serving now ends: how, if by its own hand (else None)
        self._ended: asyncio.Future[str | None] | None = None

    @property
    def state(self) -> InstanceState:
        return self._state

    @state.setter
    def state(self, state: InstanceState) -> None:
        self._state = state
        if state == UP:
            self._left_up.clear()
        else:
            self._left_up.set()

    def available(self) -> bool:
        return self.state == UP

    def process_started(self) -> None:
        """A new process serves the instance (its supervisor says so at each start): a request
        it drops waits up to :data:`EXIT_WAIT_S` for :meth:`process_ended`."""
        self._ended = asyncio.get_running_loop().create_future()

    def process_ended(self, by_itself: str | None) -> None:
        """The supervisor reaped the process: ``by_itself`` says how it ended if by its own
        hand (``"exit status 7"``, ``"signal SIGSEGV"``), None if it was stopped or killed
        from outside (SIGTERM, SIGKILL: ``kill -9``, the OOM killer)."""
        if self._ended is not None and not self._ended.done():
            self._ended.set_result(by_itself)

    async def invoke(
        self,
        target_model: str,
        body: bytes,
        *,
        content_type: str | None,
        accept: str | None,
        custom_attributes: str | None,
    ) -> InvokeResult:
        headers = {"x-amzn-sagemaker-target-model": target_model}
        for name, value in zip(
            _PASSED_HEADERS, (content_type, accept, custom_attributes), strict=True
        ):
            if value is not None:
                headers[name] = value
        assert self.session is not None, "the backend was not started"
        ended = self._ended  # the end of the process this request goes to, if it runs
        if ended is not None and ended.done():
            ended = None
        dropped: aiohttp.ClientError | None = None
        self.in_flight += 1
        try:
            async with self.session.post(
                f"{self.url}/invocations", data=body, headers=headers
            ) as response:
                status, answer = response.status, await response.read()
                reply = response.headers
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            # refused (the process is gone) or no answer to connect (its machine is gone)
            self.state = DOWN  # until its /ping answers again (its supervisor watches)
            raise InstanceUnreachableError(
                f"Instance {self.instance_id} did not answer: {type(exc).__name__}"
            ) from exc
        except TimeoutError as exc:  # silent past the session's timeout: hung, not ended
            raise RequestDroppedError(
                f"Instance {self.instance_id} did not answer the request in time"
            ) from exc
        except aiohttp.ClientError as exc:  # reset or closed mid-request: it may have ended
            dropped = exc
        finally:
            self.in_flight -= 1
        if dropped is not None:
            raise await self._dropped(dropped, ended) from dropped
        if status == 200:
            prediction = Prediction(
                answer,
                reply.get("content-type", "application/octet-stream"),
                reply.get("x-amzn-sagemaker-custom-attributes"),
            )
            return InvokeResult(
                prediction,
                cache_hit=reply.get("x-modelfleet-cache-hit") == "1",
                model_latency_s=float(reply.get("x-modelfleet-model-latency", 0.0)),
                queued=reply.get("x-modelfleet-queued") == "1",
                load_s=_seconds(reply.get("x-modelfleet-load-seconds")),
                memory_bytes=_count(reply.get("x-modelfleet-model-bytes")),
                artifact_bytes=_count(reply.get("x-modelfleet-artifact-bytes")),
                tier=reply.get("x-modelfleet-tier", "memory"),
                download_s=_seconds(reply.get("x-modelfleet-download-seconds")),
            )
        raise _error_from(self.instance_id, status, answer, reply.get("x-amzn-errortype", ""))

    async def _dropped(
        self, exc: aiohttp.ClientError, ended: asyncio.Future[str | None] | None
    ) -> InstanceEndedError | RequestDroppedError:
        """The error for a request the instance dropped, from how its process ended."""
        how = None
        # Not seen to end in time (alive, or reaped late): the drop may not be the request's
        # doing. Shielded: the other requests it dropped wait on the same future.
        if ended is not None:
            with contextlib.suppress(TimeoutError):
                how = await asyncio.wait_for(asyncio.shield(ended), EXIT_WAIT_S)
        if how is None:
            return RequestDroppedError(
                f"Instance {self.instance_id} dropped the request: {type(exc).__name__}"
            )
        logger.warning(
            "instance %s ended by its own hand (%s) while serving a request; not retried",
            self.instance_id,
            how,
        )
        return InstanceEndedError(
            f"The model's code ended instance {self.instance_id} ({how}) while it served this"
            " request; the request is not retried on another instance."
        )

    async def ping(self) -> bool:
        """Whether the instance answers ``/ping`` now; one that does not is marked down (its
        health watcher marks it up again when it answers).

        The answer is False as soon as the instance is marked down meanwhile (its exit was
        seen): a ping sent to a process being killed can wait in the listening socket's
        backlog, which the router keeps open, until the replacement answers it seconds later.
        """
        answered = asyncio.ensure_future(self.answers_ping())
        left_up = asyncio.ensure_future(self._left_up.wait())
        try:
            await asyncio.wait((answered, left_up), return_when=asyncio.FIRST_COMPLETED)
        finally:
            answered.cancel()
            left_up.cancel()
        if answered.done() and not answered.cancelled() and answered.result():
            return True
        if self.state == UP:
            self.state = DOWN
        return False

    async def answers_ping(self) -> bool:
        """Whether ``/ping`` answers 200 now (its state left as it is)."""
        assert self.session is not None, "the backend was not started"
        try:
            async with self.session.get(f"{self.url}/ping", timeout=PING_TIMEOUT) as response:
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def loaded_models(self) -> list[str]:
        """The target models loaded on the instance now (empty if it cannot say)."""
        assert self.session is not None, "the backend was not started"
        try:
            url = f"{self.url}/admin/instance"
            async with self.session.get(url, timeout=_ASK_TIMEOUT) as response:
                if response.status != 200:
                    return []
                answer = await response.json()
                return [str(m["name"]) for m in answer.get("loaded", [])]
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError):
            return []

    async def prewarm(self, target_models: list[str]) -> int:
        """Have the instance fetch and load ``target_models``; how many it loaded."""
        assert self.session is not None, "the backend was not started"
        try:
            async with self.session.post(
                f"{self.url}/admin/prewarm", json={"models": target_models}
            ) as response:
                if response.status != 200:
                    return 0
                answer = await response.json()
                return int(answer.get("loaded", 0))
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return 0

    async def unload(self, target_model: str) -> bool:
        """UnloadModel on this instance; True if it was loaded there (404 is not an error)."""
        assert self.session is not None, "the backend was not started"
        url = f"{self.url}/models/{quote(target_model)}"
        try:
            async with self.session.delete(url) as response:
                await response.read()
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False


def new_session(settings: Settings) -> aiohttp.ClientSession:
    """The pooled keep-alive session a router (or a supervisor) reaches instances with."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=KEEPALIVE_S),
        # An instance answers 429 at invoke_timeout: one silent for much longer is hung.
        timeout=aiohttp.ClientTimeout(total=settings.invoke_timeout + 60.0, sock_connect=5.0),
        # No Content-Type of aiohttp's own: a request without one must reach the model
        # without one (CSV by default), as in process.
        skip_auto_headers=("User-Agent", "Content-Type"),
    )


async def fetch_metrics(
    session: aiohttp.ClientSession, instances: Sequence[RemoteInstance]
) -> list[str]:
    """The ``/metrics`` text of every instance that is up (one that fails is left out)."""

    async def one(instance: RemoteInstance) -> str | None:
        if instance.state != UP:
            return None
        try:
            url = f"{instance.url}/metrics"
            async with session.get(url, timeout=_ASK_TIMEOUT) as response:
                return await response.text() if response.status == 200 else None
        except (aiohttp.ClientError, TimeoutError):
            return None

    texts = await asyncio.gather(*(one(i) for i in instances))
    return [text for text in texts if text is not None]


def _error_from(instance_id: str, status: int, answer: bytes, error_type: str) -> Exception:
    """The modelfleet error an instance's error answer stands for (shapes of edge.py)."""
    try:
        body: dict[str, Any] = json.loads(answer)
    except ValueError:
        body = {}
    kind = body.get("__type") or error_type
    message = str(body.get("message", f"instance {instance_id} answered {status}"))
    if kind == "ModelError":
        return ModelError(
            str(body.get("OriginalMessage", message)),
            original_status_code=int(body.get("OriginalStatusCode", status)),
        )
    if kind == "ValidationError":
        return ValidationError(message)
    if kind == "ModelNotReadyException":
        return ModelNotReadyError(message)
    if kind == "InsufficientStorage" or status == 507:
        return InstanceFullError(message)
    if kind == "ServiceUnavailable":
        return ServiceUnavailableError(message)
    return InternalInstanceError(f"instance {instance_id}: {message}")


def _count(value: str | None) -> int:
    """A header's whole number, or 0 (absent or not one)."""
    try:
        return int(value) if value is not None else 0
    except ValueError:
        return 0


def _seconds(value: str | None) -> float | None:
    """A header's seconds, or None (absent or not a number)."""
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None

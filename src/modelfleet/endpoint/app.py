"""The endpoint's HTTP server: SageMaker's runtime API, the instance contract, ``/metrics``.

``POST /endpoints/{name}/invocations`` is wire-compatible with SageMaker InvokeEndpoint, so
``boto3.client("sagemaker-runtime", endpoint_url=...)`` works against it. With the ``inprocess``
backend the same port also serves the instance contract (``/models``...) of the one instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from modelfleet.backends.inprocess import InProcessBackend
from modelfleet.backends.local import InstanceFullError, InstanceUnreachableError, LocalBackend
from modelfleet.config import Settings
from modelfleet.edge import (
    RUNTIME_ERRORS,
    error_response,
    new_request_id,
    read_body,
    request_id_var,
    target_model_var,
)
from modelfleet.endpoint.router import DEFAULT_VARIANT, Router
from modelfleet.errors import UnknownEndpointError, ValidationError
from modelfleet.instance.app import instance_routes, ping_route
from modelfleet.metrics import CONTENT_TYPE, Metrics

logger = logging.getLogger(__name__)

_TARGET_MODEL_MAX = 1024


class EndpointServer:
    """One endpoint: its router, its backend, its metrics, and the Starlette app over them."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # With several instances the router's own series (invocations, errors, overhead) carry
        # instance="router"; each instance's carry its id.
        self.metrics = Metrics(
            endpoint=settings.endpoint_name, instance="router" if settings.instances > 1 else "0"
        )
        routes = [
            Route("/endpoints/{endpoint_name}/invocations", self.invocations, methods=["POST"]),
            Route("/metrics", self.metrics_endpoint, methods=["GET"]),
            Route("/admin/instances", self.admin_instances, methods=["GET"]),
        ]
        self.backend: InProcessBackend | LocalBackend
        if settings.instances == 1:
            self.backend = InProcessBackend(settings, self.metrics)
            self.router = Router({DEFAULT_VARIANT: list(self.backend.instances)})
            # One instance in this process: its container contract is served here too.
            routes += [ping_route(self.backend.manager), *instance_routes(self.backend.manager)]
        else:
            self.backend = LocalBackend(settings)
            self.router = Router(
                {DEFAULT_VARIANT: list(self.backend.instances)},
                retry_on=(InstanceUnreachableError, InstanceFullError),
                randomly=settings.routing == "random",
            )
            routes.append(Route("/ping", self.ping, methods=["GET"]))
        self.app = Starlette(routes=routes, lifespan=self._lifespan)

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        await self.backend.start()
        logger.info(
            "endpoint '%s' serving model source %s",
            self.settings.endpoint_name,
            self.settings.model_source,
        )
        retire = None
        if isinstance(self.backend, LocalBackend):
            retire = asyncio.create_task(self._retire_copies(self.backend))
        try:
            yield
        finally:
            if retire is not None:
                retire.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await retire
            await self.backend.stop()

    async def _retire_copies(self, backend: LocalBackend) -> None:
        """Unload the extra copies of models whose demand fell (Router.idle_copies)."""
        idle_s = self.settings.copy_idle_timeout
        by_id = {i.instance_id: i for i in backend.instances}
        while True:
            await asyncio.sleep(min(5.0, idle_s / 2))
            for model, instance_id in self.router.idle_copies(idle_s):
                if await by_id[instance_id].unload(model):
                    logger.info("unloaded idle copy of %s from instance %s", model, instance_id)

    async def invocations(self, request: Request) -> Response:
        started = time.perf_counter()
        request_id = new_request_id()
        request_id_var.set(request_id)
        metrics = self.metrics
        metrics.invocations.inc()
        try:
            name = request.path_params["endpoint_name"]
            if name != self.settings.endpoint_name:
                raise UnknownEndpointError(f"Endpoint '{name}' not found.")
            headers = request.headers
            target = headers.get("x-amzn-sagemaker-target-model")
            if target is None:
                raise ValidationError(
                    "This is a multi-model endpoint: the X-Amzn-SageMaker-Target-Model "
                    "header (TargetModel) is required."
                )
            if not 0 < len(target) <= _TARGET_MODEL_MAX:
                raise ValidationError("TargetModel must be 1 to 1024 characters.")
            target_model_var.set(target)
            body = await read_body(request, self.settings.max_body_size)
            routed = await self.router.invoke(
                target,
                body,
                content_type=headers.get("content-type"),
                accept=headers.get("accept"),
                custom_attributes=headers.get("x-amzn-sagemaker-custom-attributes"),
                target_variant=headers.get("x-amzn-sagemaker-target-variant"),
            )
        except Exception as exc:
            response = error_response(exc, RUNTIME_ERRORS, request_id=request_id)
            if response.status_code >= 500:
                metrics.invocation_5xx_errors.inc()
            else:
                metrics.invocation_4xx_errors.inc()
            return response
        if not isinstance(self.backend, LocalBackend):  # else counted by the instance itself
            metrics.invocations_per_instance.inc()
        prediction = routed.result.prediction
        response_headers = {
            "x-Amzn-Invoked-Production-Variant": routed.variant,
            "x-amzn-RequestId": request_id,
        }
        if prediction.custom_attributes is not None:
            response_headers["X-Amzn-SageMaker-Custom-Attributes"] = prediction.custom_attributes
        metrics.overhead_latency.observe(
            max(time.perf_counter() - started - routed.result.model_latency_s, 0.0)
        )
        return Response(
            prediction.body, media_type=prediction.content_type, headers=response_headers
        )

    async def ping(self, request: Request) -> Response:
        """200 while at least one instance is up (the router can serve), else 503."""
        up = any(i.available() for i in self.backend.instances)
        return Response(b"", status_code=200 if up else 503)

    async def admin_instances(self, request: Request) -> Response:
        """The instances behind this endpoint, as JSON (``modelfleet status`` prints it)."""
        if isinstance(self.backend, LocalBackend):
            instances = await self.backend.describe()
        else:
            instance = self.backend.instances[0]
            instances = [
                {
                    "id": instance.instance_id,
                    "url": None,
                    "pid": os.getpid(),
                    "state": "up",
                    "in_flight": instance.in_flight,
                    "restarts": 0,
                    **self.backend.manager.summary(),
                }
            ]
        return JSONResponse({"endpoint": self.settings.endpoint_name, "instances": instances})

    async def metrics_endpoint(self, request: Request) -> Response:
        if isinstance(self.backend, LocalBackend):  # the router's series and every instance's
            texts = await self.backend.metrics_texts()
            return Response(self.metrics.render_with(texts), media_type=CONTENT_TYPE)
        return Response(self.metrics.render(), media_type=CONTENT_TYPE)


def create_app(settings: Settings) -> Starlette:
    """The ASGI app of one endpoint served by one in-process instance."""
    return EndpointServer(settings).app

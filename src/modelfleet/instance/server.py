"""One instance as its own HTTP server: the process a ``local`` backend starts for each instance.

It serves the container contract and modelfleet's whole-path ``POST /invocations`` of
:mod:`modelfleet.instance.app`, plus ``/ping`` and ``/metrics`` (its own cache metrics). The
launcher that started it (:mod:`modelfleet.backends.local`, :mod:`modelfleet.backends.ray`)
gives it its settings as an object; the ``local`` one passes them as JSON on standard input and
the listening socket as an inherited file descriptor, so the address survives restarts.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from modelfleet.config import Settings
from modelfleet.instance.app import instance_routes, ping_route
from modelfleet.instance.manager import ModelManager
from modelfleet.metrics import CONTENT_TYPE, Metrics
from modelfleet.source import ModelSource

logger = logging.getLogger(__name__)


def create_instance_app(
    settings: Settings, *, instance_id: str = "0", variant: str = "AllTraffic"
) -> Starlette:
    """The ASGI app of one instance (its manager starts and stops with the app)."""
    metrics = Metrics(endpoint=settings.endpoint_name, variant=variant, instance=instance_id)
    source = ModelSource(
        settings.model_source,
        timeout_s=settings.source_timeout,
        retries=settings.source_retries,
        allow_http=settings.allow_http,
    )
    manager = ModelManager(settings, source=source, metrics=metrics)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await manager.start()
        logger.info("instance %s serving model source %s", instance_id, settings.model_source)
        try:
            yield
        finally:
            await manager.stop()

    async def metrics_endpoint(request: Request) -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    return Starlette(
        routes=[
            ping_route(manager),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
            *instance_routes(manager),
        ],
        lifespan=lifespan,
    )

"""The instance's HTTP API: the SageMaker multi-model container contract, plus the whole path.

=========== ============================== =================================================
LoadModel   ``POST /models``               200; 409 already loaded; 507 no room
ListModels  ``GET /models``                ``limit`` (<= 100) and ``next_page_token`` paging
GetModel    ``GET /models/{name}``         200; 404
UnloadModel ``DELETE /models/{name}``      200 once memory is freed; 404
InvokeModel ``POST /models/{name}/invoke`` the model's answer; 404 not loaded; 507
Invoke      ``POST /invocations``          modelfleet's own: fetch, load and invoke the target
                                           model named by ``X-Amzn-SageMaker-Target-Model``
Ping        ``GET /ping``                  200 when ready
Summary     ``GET /admin/instance``        modelfleet's own: loaded models and bytes, memory,
                                           hits, misses (for the router's admin view)
Prewarm     ``POST /admin/prewarm``        modelfleet's own: ``{"models": [...]}`` fetched and
                                           loaded, not invoked (autoscaling's new instances)
=========== ============================== =================================================

The handlers are thin: they parse, call :class:`~modelfleet.instance.manager.ModelManager`, and
let :mod:`modelfleet.edge` shape errors.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from modelfleet.edge import (
    INSTANCE_ERRORS,
    client_gone,
    error_response,
    new_request_id,
    read_body,
    request_id_var,
    target_model_var,
    utf8_header,
)
from modelfleet.errors import ModelfleetError, ModelTooLargeError, ValidationError
from modelfleet.instance.manager import ModelManager
from modelfleet.instance.state import InvokeResult, ModelInfo

_MAX_PAGE = 100
Handler = Callable[[Request], Awaitable[Response]]


def _contract(
    fn: Callable[[Request, ModelManager], Awaitable[Response]], manager: ModelManager
) -> Handler:
    async def endpoint(request: Request) -> Response:
        request_id = request.headers.get("x-amzn-requestid") or new_request_id()
        request_id_var.set(request_id)
        try:
            return await fn(request, manager)
        except ModelfleetError as exc:
            return error_response(
                exc, INSTANCE_ERRORS, request_id=request_id, redact=manager.redact
            )
        except ClientDisconnect:
            manager.metrics.client_disconnects.inc()
            return client_gone(request_id)
        except Exception as exc:
            return error_response(
                exc, INSTANCE_ERRORS, request_id=request_id, redact=manager.redact
            )

    return endpoint


def _model_json(info: ModelInfo, manager: ModelManager, *, extras: bool) -> dict[str, Any]:
    # modelUrl names the folder by its root: <cache>/..., <model-source>/... (docs/api.md)
    body: dict[str, Any] = {"modelName": info.name, "modelUrl": manager.redact(info.url)}
    if extras:
        body.update(
            state=str(info.state), bytes=info.size_bytes, hits=info.hits, handler=info.handler
        )
    return body


async def _load_model(request: Request, manager: ModelManager) -> Response:
    try:
        payload = json.loads(await request.body())
        name, url = payload["model_name"], payload["url"]
    except (ValueError, KeyError, TypeError):
        raise ValidationError(
            'LoadModel needs a JSON body {"model_name": ..., "url": ...}.'
        ) from None
    if not isinstance(name, str) or not name or not isinstance(url, str):
        raise ValidationError("model_name and url must be non-empty strings.")
    info = await manager.load_from_url(name, url)
    return JSONResponse(_model_json(info, manager, extras=True))


async def _list_models(request: Request, manager: ModelManager) -> Response:
    try:
        limit = min(int(request.query_params.get("limit", _MAX_PAGE)), _MAX_PAGE)
    except ValueError:
        raise ValidationError("limit must be an integer.") from None
    if limit < 1:
        raise ValidationError("limit must be at least 1.")
    models = manager.list_models()
    token = request.query_params.get("next_page_token")
    if token:
        try:
            after = base64.b64decode(token.encode(), altchars=b"-_", validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise ValidationError("next_page_token is not valid.") from None
        models = [m for m in models if m.name > after]
    page = models[:limit]
    body: dict[str, Any] = {"models": [_model_json(m, manager, extras=False) for m in page]}
    if len(models) > limit:
        body["nextPageToken"] = base64.urlsafe_b64encode(page[-1].name.encode()).decode()
    return JSONResponse(body)


async def _get_model(request: Request, manager: ModelManager) -> Response:
    return JSONResponse(
        _model_json(manager.describe(request.path_params["name"]), manager, extras=True)
    )


async def _unload_model(request: Request, manager: ModelManager) -> Response:
    await manager.unload(request.path_params["name"])
    return JSONResponse({})


def _prediction_response(result: InvokeResult) -> Response:
    headers = {}
    if result.prediction.custom_attributes is not None:
        headers["X-Amzn-SageMaker-Custom-Attributes"] = result.prediction.custom_attributes
    return Response(
        result.prediction.body, media_type=result.prediction.content_type, headers=headers
    )


async def _invoke_model(request: Request, manager: ModelManager) -> Response:
    body = await read_body(request, manager.settings.max_body_size)
    result = await manager.invoke_loaded(
        request.path_params["name"],
        body,
        content_type=request.headers.get("content-type"),
        accept=request.headers.get("accept"),
        custom_attributes=request.headers.get("x-amzn-sagemaker-custom-attributes"),
    )
    return _prediction_response(result)


async def _invoke(request: Request, manager: ModelManager) -> Response:
    target = request.headers.get("x-amzn-sagemaker-target-model")
    if not target:
        raise ValidationError("The X-Amzn-SageMaker-Target-Model header is required.")
    target = utf8_header(target, "X-Amzn-SageMaker-Target-Model")  # the router sends UTF-8
    target_model_var.set(target)
    body = await read_body(request, manager.settings.max_body_size)
    try:
        result = await manager.invoke(
            target,
            body,
            content_type=request.headers.get("content-type"),
            accept=request.headers.get("accept"),
            custom_attributes=request.headers.get("x-amzn-sagemaker-custom-attributes"),
        )
    except ModelTooLargeError as exc:
        # It can never fit any instance: a 400 for the caller, not a 507 the router retries.
        raise ValidationError(exc.message) from exc
    manager.metrics.invocations_per_instance.inc()  # the router's requests, counted here
    response = _prediction_response(result)
    response.headers["x-modelfleet-cache-hit"] = "1" if result.cache_hit else "0"
    response.headers["x-modelfleet-model-latency"] = f"{result.model_latency_s:.6f}"
    response.headers["x-modelfleet-queued"] = "1" if result.queued else "0"
    headers = response.headers
    headers["x-modelfleet-model-bytes"] = str(result.memory_bytes)
    headers["x-modelfleet-artifact-bytes"] = str(result.artifact_bytes)
    if result.load_s is not None:
        headers["x-modelfleet-load-seconds"] = f"{result.load_s:.6f}"
    if not result.cache_hit:
        headers["x-modelfleet-tier"] = result.tier
    if result.download_s is not None:
        headers["x-modelfleet-download-seconds"] = f"{result.download_s:.6f}"
    return response


async def _prewarm(request: Request, manager: ModelManager) -> Response:
    try:
        models = json.loads(await request.body())["models"]
    except (ValueError, KeyError, TypeError):
        raise ValidationError('Prewarm needs a JSON body {"models": [...]}.') from None
    if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
        raise ValidationError("models must be a list of target-model names.")
    return JSONResponse({"loaded": await manager.prewarm(models)})


async def _summary(request: Request, manager: ModelManager) -> Response:
    return JSONResponse(manager.summary())


async def _ping(request: Request, manager: ModelManager) -> Response:
    return Response(b"", status_code=200)


def instance_routes(manager: ModelManager) -> list[Route]:
    """The routes of the container contract bound to ``manager``."""
    return [
        Route("/models", _contract(_load_model, manager), methods=["POST"]),
        Route("/models", _contract(_list_models, manager), methods=["GET"]),
        Route("/models/{name:path}/invoke", _contract(_invoke_model, manager), methods=["POST"]),
        Route("/models/{name:path}", _contract(_get_model, manager), methods=["GET"]),
        Route("/models/{name:path}", _contract(_unload_model, manager), methods=["DELETE"]),
        Route("/invocations", _contract(_invoke, manager), methods=["POST"]),
        Route("/admin/instance", _contract(_summary, manager), methods=["GET"]),
        Route("/admin/prewarm", _contract(_prewarm, manager), methods=["POST"]),
    ]


def ping_route(manager: ModelManager) -> Route:
    return Route("/ping", _contract(_ping, manager), methods=["GET"])

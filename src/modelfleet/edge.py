"""The HTTP edge: the one place where errors become status codes and bodies.

Two tables, one per contract: the runtime API (SageMaker InvokeEndpoint, what boto3 parses)
and the instance API (the SageMaker MME container contract). Both answer a JSON body
``{"__type": code, "message": ...}`` with an ``x-amzn-ErrorType`` header, never an empty body.
Anything not in a table is a bug: logged with the request id, answered InternalFailure, no
traceback sent.
"""

from __future__ import annotations

import http
import json
import logging
import os
import sys
import uuid
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response

from modelfleet.auth import Refused
from modelfleet.errors import (
    CapacityError,
    ModelAlreadyLoadedError,
    ModelError,
    ModelfleetError,
    ModelNotLoadedError,
    ModelNotReadyError,
    ModelTooLargeError,
    ModelUrlNotFoundError,
    NoModelStatsError,
    ObjectNotFoundError,
    PayloadTooLargeError,
    ResourceInUseError,
    ResourceLimitExceededError,
    ResourceNotFoundError,
    SerializationError,
    ServiceUnavailableError,
    SourceError,
    UnknownOperationError,
    ValidationError,
)

logger = logging.getLogger(__name__)

request_id_var: ContextVar[str] = ContextVar("modelfleet_request_id", default="-")
target_model_var: ContextVar[str] = ContextVar("modelfleet_target_model", default="-")

# (error class, HTTP status, SageMaker error code); the first matching row wins.
RUNTIME_ERRORS: tuple[tuple[type[ModelfleetError], int, str], ...] = (
    (ValidationError, 400, "ValidationError"),
    (ModelError, 424, "ModelError"),
    (ModelNotReadyError, 429, "ModelNotReadyException"),
    (CapacityError, 503, "ServiceUnavailable"),
    (SourceError, 503, "ServiceUnavailable"),
    (ServiceUnavailableError, 503, "ServiceUnavailable"),
)

INSTANCE_ERRORS: tuple[tuple[type[ModelfleetError], int, str], ...] = (
    (ModelTooLargeError, 507, "InsufficientStorage"),
    (CapacityError, 507, "InsufficientStorage"),
    (ModelNotLoadedError, 404, "ModelNotFound"),
    (NoModelStatsError, 404, "ModelNotFound"),
    (ModelUrlNotFoundError, 404, "ModelNotFound"),
    (ModelAlreadyLoadedError, 409, "ModelAlreadyLoaded"),
    (ValidationError, 400, "ValidationError"),
    (ModelNotReadyError, 429, "ModelNotReadyException"),
    (SourceError, 503, "ServiceUnavailable"),
    (ServiceUnavailableError, 503, "ServiceUnavailable"),
)


# The control plane (awsJson1.1, modelfleet.controlplane): 400s with the service's codes.
CONTROL_ERRORS: tuple[tuple[type[ModelfleetError], int, str], ...] = (
    (ResourceInUseError, 400, "ResourceInUse"),
    (ResourceNotFoundError, 400, "ResourceNotFound"),
    (ResourceLimitExceededError, 400, "ResourceLimitExceeded"),
    (ObjectNotFoundError, 400, "ObjectNotFoundException"),
    (UnknownOperationError, 400, "UnknownOperationException"),
    (SerializationError, 400, "SerializationException"),
    (ValidationError, 400, "ValidationException"),
    (ServiceUnavailableError, 503, "ServiceUnavailable"),
)


# What the listener (modelfleet.listener) answers by itself, before any app sees the request:
# reason -> (HTTP status, SageMaker-style error code). The connection is closed after it.
LISTENER_ERRORS: dict[str, tuple[int, str]] = {
    "headers-too-large": (431, "ValidationError"),
    "timeout": (408, "RequestTimeout"),  # botocore retries this code
    "no-room": (503, "ServiceUnavailable"),
}


def new_request_id() -> str:
    return str(uuid.uuid4())


class PathRedactor:
    """Replaces the server's own folders in the text of answers with their names, so that no
    answer carries an absolute path of the server's disk (an error that quotes a file of the
    cache, a model's traceback that quotes the Python installation).

    ``folders`` maps a name (``cache``) to a folder; the Python installation
    (``sys.prefix``, ``sys.base_prefix``) and the working folder are added. A folder and its
    resolved form are both replaced; the longest match wins.
    """

    def __init__(self, folders: Iterable[tuple[str, Path]]) -> None:
        named = [*folders, ("python", Path(sys.prefix)), ("python", Path(sys.base_prefix))]
        named.append(("cwd", Path(os.getcwd())))
        self._pairs: list[tuple[str, str]] = []
        self.add(named)

    def add(self, folders: Iterable[tuple[str, Path]]) -> None:
        """Redact these folders too (an endpoint's, made after the server started)."""
        pairs = dict(self._pairs)
        for name, folder in folders:
            for form in {str(folder), str(folder.resolve())}:
                if form not in ("/", "") and form.rstrip("/") not in pairs:
                    pairs[form.rstrip("/")] = f"<{name}>"
        self._pairs = sorted(pairs.items(), key=lambda pair: len(pair[0]), reverse=True)

    def __call__(self, text: str) -> str:
        if "/" not in text:
            return text
        for folder, name in self._pairs:
            if folder in text:
                text = text.replace(folder, name)
        return text


def _as_is(text: str) -> str:
    return text


def error_response(
    exc: BaseException,
    table: tuple[tuple[type[ModelfleetError], int, str], ...],
    *,
    request_id: str,
    redact: Callable[[str], str] = _as_is,
) -> Response:
    """The response for ``exc`` under ``table`` (a bug becomes InternalFailure, 500); messages
    go through ``redact`` (a :class:`PathRedactor`)."""
    headers = {"x-amzn-RequestId": request_id}
    row = next((r for r in table if isinstance(exc, r[0])), None)
    if row is not None:
        status, code = row[1], row[2]
        message = exc.message if isinstance(exc, ModelfleetError) else str(exc)
    elif isinstance(exc, ModelError) and table is INSTANCE_ERRORS:
        # The container contract reports the model's own status; the router reads the type.
        status, code, message = exc.original_status_code, "ModelError", exc.message
    else:
        logger.error("internal failure (request %s)", request_id, exc_info=exc)
        status, code = 500, "InternalFailure"
        message = f"An internal error occurred; request id {request_id}."
    body: dict[str, object] = {"__type": code, "message": redact(message)}
    if isinstance(exc, ModelError):
        body["OriginalStatusCode"] = exc.original_status_code
        body["OriginalMessage"] = redact(exc.message)
        body["LogStreamArn"] = ""
    if isinstance(exc, ServiceUnavailableError):
        headers["Retry-After"] = str(exc.retry_after_s)
    elif status in (503, 429):
        headers["Retry-After"] = "1"
    headers["x-amzn-ErrorType"] = code
    return Response(
        json.dumps(body).encode(),
        status_code=status,
        headers=headers,
        media_type="application/json",
    )


def listener_error(reason: str, message: str) -> bytes:
    """A whole HTTP/1.1 error answer for ``reason`` of :data:`LISTENER_ERRORS`, in the shape of
    :func:`error_response` (JSON body, ``x-amzn-ErrorType``, a request id), with
    ``connection: close``."""
    status, code = LISTENER_ERRORS[reason]
    body = json.dumps({"__type": code, "message": message}).encode()
    head = [
        f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        f"x-amzn-ErrorType: {code}",
        f"x-amzn-RequestId: {new_request_id()}",
        "connection: close",
    ]
    if status == 503:
        head.append("Retry-After: 1")
    return ("\r\n".join(head) + "\r\n\r\n").encode("ascii") + body


def client_gone(request_id: str) -> Response:
    """What a handler returns when its client went away before the body was read, or was cut off
    by the listener's body timeout (Starlette's ``ClientDisconnect``): not a failure of the
    server, so logged at debug level without a traceback; the caller counts it apart
    (``client_disconnects``). The response is never sent."""
    logger.debug("client went away before its request body was read (request %s)", request_id)
    return Response(b"", status_code=499)  # nginx's "client closed request"


def utf8_header(value: str, name: str) -> str:
    """A header value read as UTF-8, as boto3 sends non-ASCII text (``café/model.tar.gz``);
    Starlette decodes header bytes as Latin-1. Bytes that are not UTF-8 are a ValidationError."""
    if value.isascii():
        return value
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeDecodeError:
        raise ValidationError(f"The {name} header is not valid UTF-8.") from None


async def read_body(request: Request, limit_bytes: int) -> bytes:
    """The request body, refused with PayloadTooLargeError past ``limit_bytes``."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit_bytes:
        raise PayloadTooLargeError(
            f"Request body of {declared} bytes exceeds the limit of {limit_bytes} bytes."
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit_bytes:
            raise PayloadTooLargeError(f"Request body exceeds the limit of {limit_bytes} bytes.")
        chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class ContextFilter(logging.Filter):
    """Adds ``request_id`` and ``target_model`` from context variables to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        record.target_model = target_model_var.get()
        return True


def refusal_response(refused: Refused) -> Response:
    """The answer to a request the authentication refused (as SageMaker answers it)."""
    request_id = new_request_id()
    body = {"__type": refused.code, "message": refused.message}
    headers = {"x-amzn-RequestId": request_id, "x-amzn-ErrorType": refused.code}
    return Response(
        json.dumps(body).encode(),
        status_code=refused.status,
        headers=headers,
        media_type="application/json",
    )

"""The ``context`` argument passed to ``inference.py`` functions that ask for one.

The SageMaker inference toolkit passes the model server's context as an extra last argument to a
handler function whose signature has one more parameter than the toolkit's call (for example
``input_fn(data, content_type, context)``). :class:`RequestContext` offers the parts of the Multi
Model Server / TorchServe context that user code reads:

* ``context.system_properties`` (``model_dir``, ``gpu_id`` = ``None``, ``batch_size`` = 1);
* ``context.request_processor[0].get_request_property(name)`` and
  ``context.get_request_header(0, name)`` for the request headers ``Content-Type``, ``Accept`` and
  ``X-Amzn-SageMaker-Custom-Attributes`` (names compare case-insensitively);
* ``context.set_response_header(0, name, value)`` (or the request processor's
  ``add_response_property``): setting ``X-Amzn-SageMaker-Custom-Attributes`` returns custom
  attributes to the caller; other response headers are ignored;
* ``context.custom_attributes``, a modelfleet shortcut for the request's custom attributes.

A new context is made for each request, so concurrent requests never see each other's headers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

CUSTOM_ATTRIBUTES_HEADER = "X-Amzn-SageMaker-Custom-Attributes"


class RequestProcessor:
    """Request headers in, response headers out, for one request."""

    def __init__(self, request_headers: dict[str, str]) -> None:
        self._request = request_headers
        self._lookup = {name.lower(): value for name, value in request_headers.items()}
        self._response: dict[str, str] = {}

    def get_request_property(self, key: str) -> str | None:
        return self._lookup.get(key.lower())

    def get_request_properties(self) -> dict[str, str]:
        return dict(self._request)

    def add_response_property(self, key: str, value: str) -> None:
        self._response[key] = value

    def get_response_header(self) -> dict[str, str]:
        return self._response

    def response_property(self, key: str) -> str | None:
        wanted = key.lower()
        for name, value in self._response.items():
            if name.lower() == wanted:
                return value
        return None


class RequestContext:
    """A Multi Model Server style context for one request (or for the load)."""

    def __init__(
        self,
        model_name: str,
        model_dir: Path,
        *,
        content_type: str | None = None,
        accept: str | None = None,
        custom_attributes: str | None = None,
    ) -> None:
        self.model_name = model_name
        self.custom_attributes = custom_attributes
        self.system_properties: dict[str, Any] = {
            "model_dir": str(model_dir),
            "gpu_id": None,
            "batch_size": 1,
            "server_name": "modelfleet",
        }
        headers: dict[str, str] = {}
        if content_type is not None:
            headers["Content-Type"] = content_type
        if accept is not None:
            headers["Accept"] = accept
        if custom_attributes is not None:
            headers[CUSTOM_ATTRIBUTES_HEADER] = custom_attributes
        self.request_processor = [RequestProcessor(headers)]
        self.request_ids: dict[int, str] = {}

    def get_request_id(self, idx: int = 0) -> str | None:
        return self.request_ids.get(idx)

    def get_request_header(self, idx: int, key: str) -> str | None:
        return self.request_processor[idx].get_request_property(key)

    def get_all_request_header(self, idx: int) -> dict[str, str]:
        return self.request_processor[idx].get_request_properties()

    def set_response_header(self, idx: int, key: str, value: str) -> None:
        self.request_processor[idx].add_response_property(key, value)

    def set_response_content_type(self, idx: int, value: str) -> None:
        self.request_processor[idx].add_response_property("Content-Type", value)

    def response_custom_attributes(self) -> str | None:
        """What the user code set as the response's custom attributes, if anything."""
        value = self.request_processor[0].response_property(CUSTOM_ATTRIBUTES_HEADER)
        return None if value is None else str(value)

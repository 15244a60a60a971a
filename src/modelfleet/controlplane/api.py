"""The control plane's HTTP face: ``POST /`` on the admin listener, AWS JSON 1.1.

botocore sends ``X-Amz-Target: SageMaker.<Operation>`` (or, for Application Auto Scaling,
``AnyScaleFrontendService.<Operation>``) with a JSON body
(``application/x-amz-json-1.1``); the answer is the operation's output as JSON, or an error as
``{"__type": code, "message": ...}`` with status 400 (``x-amzn-ErrorType`` too), which boto3
raises as ``ClientError`` with that code. The body is checked against botocore's model of the
operation before anything runs.

The state (:class:`~modelfleet.controlplane.state.StateStore`) is opened at start when its
file exists (to bring its endpoints back), otherwise at the first control-plane call: a server
that never uses the control plane writes nothing and locks nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from modelfleet.config import Settings
from modelfleet.controlplane import shapes
from modelfleet.controlplane.autoscaling import AutoscalingOperations
from modelfleet.controlplane.sagemaker import Fleet, SageMakerOperations
from modelfleet.controlplane.state import StateStore
from modelfleet.edge import CONTROL_ERRORS, client_gone, error_response, new_request_id, read_body
from modelfleet.errors import UnknownOperationError, ValidationError

logger = logging.getLogger(__name__)

CONTENT_TYPE = "application/x-amz-json-1.1"
#: members where modelfleet takes more than the service's pattern allows
WIDER_THAN_AWS = frozenset({"ModelDataUrl"})
STATE_FILE = "control.db"
#: X-Amz-Target prefix -> botocore's service name
SERVICES = {"SageMaker": "sagemaker", "AnyScaleFrontendService": "application-autoscaling"}


class ControlPlane:
    """The SageMaker control plane of one server."""

    def __init__(self, settings: Settings, fleet: Fleet, redact: Callable[[str], str]) -> None:
        self.settings = settings
        self.fleet = fleet
        self.redact = redact
        self.store: StateStore | None = None
        self.operations: SageMakerOperations | None = None
        self.autoscaling: AutoscalingOperations | None = None
        self._opening = asyncio.Lock()

    async def start(self) -> None:
        """Open the state and bring its endpoints back, if there is a state."""
        if (self.settings.state_dir / STATE_FILE).exists():
            await self._open()
            assert self.operations is not None
            await self.operations.restore()

    async def _open(self) -> SageMakerOperations:
        async with self._opening:
            if self.operations is None:
                self.store = await asyncio.to_thread(StateStore, self.settings.state_dir)
                self.operations = SageMakerOperations(self.settings, self.store, self.fleet)
                logger.info("control plane: state in %s", self.settings.state_dir)
            return self.operations

    def _autoscaling(self) -> AutoscalingOperations:
        assert self.store is not None
        assert self.operations is not None
        if self.autoscaling is None:
            self.autoscaling = AutoscalingOperations(
                self.store, self.operations, self.settings.auth_region, self.settings.account_id
            )
        return self.autoscaling

    async def stop(self) -> None:
        if self.operations is not None:
            await self.operations.close()
        if self.store is not None:
            await asyncio.to_thread(self.store.close)

    async def handle(self, request: Request) -> Response:
        request_id = new_request_id()
        try:
            target = request.headers.get("x-amz-target", "")
            prefix, _, name = target.partition(".")
            if prefix not in SERVICES or not name:
                raise UnknownOperationError(
                    f"Unknown operation {target or '(no X-Amz-Target header)'}: this listener"
                    " serves SageMaker's control plane (X-Amz-Target: SageMaker.<Operation>)"
                    " and Application Auto Scaling (AnyScaleFrontendService.<Operation>)."
                )
            try:
                service = await asyncio.to_thread(shapes.service_model, SERVICES[prefix])
            except ImportError:
                raise ValidationError(
                    "The control plane needs botocore: pip install 'modelfleet[aws]'."
                ) from None
            model = shapes.operation(service, name)
            operations = await self._open()
            handler = (
                operations.handler(name)
                if prefix == "SageMaker"
                else self._autoscaling().handler(name)
            )
            if model is None or handler is None:
                raise UnknownOperationError(
                    f"The operation {name} is not supported by this server"
                    " (docs/control-plane.md lists those that are)."
                )
            body = await read_body(request, self.settings.max_body_size)
            params = shapes.parse_body(body)
            shapes.check(model.input_shape, params, unchecked=WIDER_THAN_AWS)
            result = await handler(params)
            payload = shapes.encode(model.output_shape, result) or {}
        except ClientDisconnect:
            return client_gone(request_id)
        except Exception as exc:
            response = error_response(
                exc, CONTROL_ERRORS, request_id=request_id, redact=self.redact
            )
            if response.status_code < 500:
                logger.info("control plane: %s refused: %s", target, bytes(response.body)[:300])
            return response
        return Response(
            json.dumps(payload, separators=(",", ":")).encode(),
            media_type=CONTENT_TYPE,
            headers={"x-amzn-RequestId": request_id},
        )

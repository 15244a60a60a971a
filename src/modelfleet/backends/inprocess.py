"""The ``inprocess`` backend: one instance living inside the router's process.

The router calls the instance's :class:`~modelfleet.instance.manager.ModelManager` directly (no
HTTP hop); the same manager also answers the instance contract on the server's port.
"""

from __future__ import annotations

from modelfleet.config import Settings
from modelfleet.instance.manager import ModelManager
from modelfleet.instance.state import InvokeResult
from modelfleet.metrics import Metrics
from modelfleet.source import ModelSource


class InProcessInstance:
    """An instance the router reaches by a function call."""

    def __init__(self, instance_id: str, manager: ModelManager) -> None:
        self.instance_id = instance_id
        self.manager = manager
        self.in_flight = 0

    def available(self) -> bool:
        return True

    async def ping(self) -> bool:
        return True  # it lives as long as the router's process

    async def invoke(
        self,
        target_model: str,
        body: bytes,
        *,
        content_type: str | None,
        accept: str | None,
        custom_attributes: str | None,
    ) -> InvokeResult:
        self.in_flight += 1
        try:
            return await self.manager.invoke(
                target_model,
                body,
                content_type=content_type,
                accept=accept,
                custom_attributes=custom_attributes,
            )
        finally:
            self.in_flight -= 1


class InProcessBackend:
    """Starts and stops the single in-process instance."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        source = ModelSource(
            settings.model_source,
            timeout_s=settings.source_timeout,
            retries=settings.source_retries,
            allow_http=settings.allow_http,
        )
        self.manager = ModelManager(settings, source=source, metrics=metrics)
        self.instances = [InProcessInstance("0", self.manager)]

    async def start(self) -> None:
        await self.manager.start()

    async def stop(self) -> None:
        await self.manager.stop()

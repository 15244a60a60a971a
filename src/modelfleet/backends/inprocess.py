"""The ``inprocess`` backend: one instance living inside the router's process.

The router calls the instance's :class:`~modelfleet.instance.manager.ModelManager` directly (no
HTTP hop); the same manager also answers the instance contract on the server's port.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

from modelfleet.backends.base import Instance, InstanceState
from modelfleet.config import Settings
from modelfleet.errors import ModelNotLoadedError
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
        self.state = InstanceState.UP

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
            result = await self.manager.invoke(
                target_model,
                body,
                content_type=content_type,
                accept=accept,
                custom_attributes=custom_attributes,
            )
        finally:
            self.in_flight -= 1
        self.manager.metrics.invocations_per_instance.inc()
        return result

    async def unload(self, target_model: str) -> bool:
        try:
            await self.manager.unload(target_model)
        except ModelNotLoadedError:
            return False
        return True

    async def prewarm(self, target_models: list[str]) -> int:
        return await self.manager.prewarm(target_models)

    async def loaded_models(self) -> list[str]:
        return [info.name for info in self.manager.list_models()]


class InProcessBackend:
    """Starts and stops the single in-process instance (a
    :class:`~modelfleet.backends.base.Backend` that is not elastic: its one instance cannot be
    added to or removed)."""

    elastic = False

    def __init__(
        self, settings: Settings, metrics: Metrics, *, variant: str = "AllTraffic"
    ) -> None:
        self.settings = settings
        self.variant = variant
        self.scaling = asyncio.Lock()
        self.on_removed: list[Callable[[str], None]] = []
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

    async def add_instance(self) -> Instance:
        raise NotImplementedError("the in-process backend has exactly one instance")

    async def remove_instance(self, instance: Instance, *, drain_s: float = 60.0) -> None:
        raise NotImplementedError("the in-process backend has exactly one instance")

    async def resize(self, count: int) -> None:
        raise NotImplementedError("the in-process backend has exactly one instance")

    async def replace(self, settings: Settings) -> None:
        raise NotImplementedError("the in-process backend cannot be replaced while serving")

    async def describe(self) -> list[dict[str, Any]]:
        (instance,) = self.instances
        return [
            {
                "id": instance.instance_id,
                "url": None,
                "pid": os.getpid(),
                "node": None,
                "state": instance.state,
                "in_flight": instance.in_flight,
                "restarts": 0,
                **self.manager.summary(),
            }
        ]

    async def metrics_texts(self) -> list[str]:
        return []  # its series are the endpoint's own registry

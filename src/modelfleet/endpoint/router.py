"""The router: picks a variant and an instance for each invocation, and forwards it.

With the ``inprocess`` backend there is one variant (``AllTraffic``) holding one instance, so the
choice is trivial; the shape (variant choice honouring ``X-Amzn-SageMaker-Target-Variant``, then
instance choice) is the one the multi-instance router keeps.
"""

from __future__ import annotations

from dataclasses import dataclass

from modelfleet.backends.inprocess import InProcessInstance
from modelfleet.errors import ServiceUnavailableError, ValidationError
from modelfleet.instance.state import InvokeResult

DEFAULT_VARIANT = "AllTraffic"


@dataclass(frozen=True, slots=True)
class Routed:
    result: InvokeResult
    variant: str
    instance_id: str


class Router:
    """Routes invocations of one endpoint to its instances."""

    def __init__(self, variants: dict[str, list[InProcessInstance]]) -> None:
        if not variants:
            raise ValueError("an endpoint needs at least one variant")
        self.variants = variants
        self._default = next(iter(variants))

    def pick_variant(self, target_variant: str | None) -> str:
        if target_variant is None:
            return self._default
        if target_variant not in self.variants:
            raise ValidationError(
                f"Target variant '{target_variant}' does not exist; "
                f"variants: {', '.join(sorted(self.variants))}."
            )
        return target_variant

    async def invoke(
        self,
        target_model: str,
        body: bytes,
        *,
        content_type: str | None,
        accept: str | None,
        custom_attributes: str | None,
        target_variant: str | None,
    ) -> Routed:
        variant = self.pick_variant(target_variant)
        instances = self.variants[variant]
        if not instances:
            raise ServiceUnavailableError(f"Variant '{variant}' has no instance running.")
        instance = instances[0]
        result = await instance.invoke(
            target_model,
            body,
            content_type=content_type,
            accept=accept,
            custom_attributes=custom_attributes,
        )
        return Routed(result=result, variant=variant, instance_id=instance.instance_id)

"""Application Auto Scaling for SageMaker variants, driving modelfleet's own autoscaler.

``boto3.client("application-autoscaling", endpoint_url=<admin listener>)`` registers a variant
(``ServiceNamespace="sagemaker"``, ``ResourceId="endpoint/<name>/variant/<variant>"``,
``ScalableDimension="sagemaker:variant:DesiredInstanceCount"``) with its minimum and maximum
instance counts, and puts a target-tracking policy on it
(``SageMakerVariantInvocationsPerInstance``: invocations per instance per minute, with its
cool-downs and ``DisableScaleIn``). The variant's instances are then scaled by
:class:`~modelfleet.endpoint.autoscale.Autoscaler`, as a config file's ``autoscale_target``
would. Targets and policies live in the state, and the variant keeps its scaling across
restarts; deleting the policy (or deregistering the target) stops the scaling and leaves the
count where it is.

Step, predictive and custom-metric policies are refused by name.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Protocol

from modelfleet.controlplane.state import StateStore
from modelfleet.errors import ObjectNotFoundError, ValidationError

Document = dict[str, Any]

NAMESPACE = "sagemaker"
DIMENSION = "sagemaker:variant:DesiredInstanceCount"
METRIC = "SageMakerVariantInvocationsPerInstance"
#: Application Auto Scaling's defaults, in seconds, when a policy gives none
DEFAULT_SCALE_OUT_COOLDOWN = 300.0
DEFAULT_SCALE_IN_COOLDOWN = 300.0


class Scaling(Protocol):
    """What the autoscaling calls need of the SageMaker side (SageMakerOperations)."""

    async def variant_names(self, endpoint: str) -> list[str] | None: ...

    async def apply_scaling(
        self, endpoint: str, variant: str, scaling: Document | None
    ) -> None: ...


def parse_resource(resource_id: str) -> tuple[str, str]:
    """``endpoint/<name>/variant/<variant>`` as (name, variant); ValidationException else."""
    parts = resource_id.split("/")
    if len(parts) != 4 or parts[0] != "endpoint" or parts[2] != "variant" or "" in parts:
        raise ValidationError(
            f"Unsupported resource ID {resource_id}: this server scales SageMaker variants,"
            " endpoint/<endpoint name>/variant/<variant name>."
        )
    return parts[1], parts[3]


class AutoscalingOperations:
    """The Application Auto Scaling calls, for SageMaker variants."""

    def __init__(self, store: StateStore, sagemaker: Scaling, region: str, account: str) -> None:
        self.store = store
        self.sagemaker = sagemaker
        self.region = region
        self.account = account
        self._write = asyncio.Lock()

    def handler(self, operation: str) -> Any:
        name = "".join(f"_{c.lower()}" if c.isupper() else c for c in operation).lstrip("_")
        return getattr(self, name) if name in _OPERATIONS else None

    # -- helpers

    @staticmethod
    def _check_kind(params: Document) -> None:
        if params["ServiceNamespace"] != NAMESPACE:
            raise ValidationError(
                f"Unsupported service namespace {params['ServiceNamespace']}: this server"
                " scales SageMaker variants (ServiceNamespace sagemaker)."
            )
        dimension = params.get("ScalableDimension")
        if dimension is not None and dimension != DIMENSION:
            raise ValidationError(
                f"Unsupported scalable dimension {dimension}: this server scales {DIMENSION}."
            )

    def _target_arn(self, resource_id: str) -> str:
        key = resource_id.replace("/", "-")
        return f"arn:aws:application-autoscaling:{self.region}:{self.account}:scalable-target/{key}"

    def _policy_arn(self, resource_id: str, name: str) -> str:
        return (
            f"arn:aws:autoscaling:{self.region}:{self.account}:scalingPolicy:"
            f"{self._target_arn(resource_id).rsplit('/', 1)[1]}:resource/sagemaker/"
            f"{resource_id}:policyName/{name}"
        )

    async def _target(self, resource_id: str) -> Document | None:
        return await asyncio.to_thread(self.store.get, "scalable_targets", resource_id)

    async def _apply(self, resource_id: str) -> None:
        """Hand the variant its scaling as the state now says (none without a policy)."""
        endpoint, variant = parse_resource(resource_id)
        target = await self._target(resource_id)
        policies = [
            p
            for p in await asyncio.to_thread(self.store.all, "scaling_policies")
            if p["ResourceId"] == resource_id
        ]
        scaling = None
        if target is not None and policies:
            config = policies[-1]["TargetTrackingScalingPolicyConfiguration"]
            scaling = {
                "target": float(config["TargetValue"]),
                "min": int(target["MinCapacity"]),
                "max": int(target["MaxCapacity"]),
                "scale_out_cooldown": float(
                    config.get("ScaleOutCooldown", DEFAULT_SCALE_OUT_COOLDOWN)
                ),
                "scale_in_cooldown": float(
                    config.get("ScaleInCooldown", DEFAULT_SCALE_IN_COOLDOWN)
                ),
                "disable_scale_in": bool(config.get("DisableScaleIn", False)),
            }
        await self.sagemaker.apply_scaling(endpoint, variant, scaling)

    # -- operations

    async def register_scalable_target(self, params: Document) -> Document:
        self._check_kind(params)
        resource_id = params["ResourceId"]
        endpoint, variant = parse_resource(resource_id)
        async with self._write:
            variants = await self.sagemaker.variant_names(endpoint)
            if variants is None or variant not in variants:
                raise ValidationError(
                    f"Unable to register {resource_id}: endpoint {endpoint} has no variant"
                    f" {variant}."
                )
            current = await self._target(resource_id)
            low = params.get("MinCapacity", current["MinCapacity"] if current else None)
            high = params.get("MaxCapacity", current["MaxCapacity"] if current else None)
            if low is None or high is None:
                raise ValidationError(
                    "MinCapacity and MaxCapacity are required to register a new scalable target."
                )
            if low < 1 or high < low:
                raise ValidationError(
                    f"Invalid capacities: MinCapacity {low} must be at least 1 and at most"
                    f" MaxCapacity {high}."
                )
            document = {
                "ServiceNamespace": NAMESPACE,
                "ResourceId": resource_id,
                "ScalableDimension": DIMENSION,
                "MinCapacity": int(low),
                "MaxCapacity": int(high),
                "RoleARN": params.get("RoleARN")
                or (current or {}).get("RoleARN")
                or f"arn:aws:iam::{self.account}:role/aws-service-role/"
                "sagemaker.application-autoscaling.amazonaws.com/"
                "AWSServiceRoleForApplicationAutoScaling_SageMakerEndpoint",
                "CreationTime": (current or {}).get("CreationTime", time.time()),
                "ScalableTargetARN": self._target_arn(resource_id),
            }
            if params.get("SuspendedState"):
                document["SuspendedState"] = params["SuspendedState"]
            if current is None:
                await asyncio.to_thread(
                    self.store.insert, "scalable_targets", resource_id, document
                )
            else:
                await asyncio.to_thread(
                    self.store.update, "scalable_targets", resource_id, document
                )
            await self._apply(resource_id)
        return {"ScalableTargetARN": document["ScalableTargetARN"]}

    async def describe_scalable_targets(self, params: Document) -> Document:
        self._check_kind(params)
        wanted = set(params.get("ResourceIds") or [])
        targets = [
            t
            for t in await asyncio.to_thread(self.store.all, "scalable_targets")
            if not wanted or t["ResourceId"] in wanted
        ]
        return {"ScalableTargets": targets}

    async def deregister_scalable_target(self, params: Document) -> Document:
        self._check_kind(params)
        resource_id = params["ResourceId"]
        async with self._write:
            if await self._target(resource_id) is None:
                raise ObjectNotFoundError(
                    f"No scalable target registered for service namespace: {NAMESPACE},"
                    f" resource ID: {resource_id}, scalable dimension: {DIMENSION}"
                )
            for policy in await asyncio.to_thread(self.store.all, "scaling_policies"):
                if policy["ResourceId"] == resource_id:
                    await asyncio.to_thread(self.store.delete, "scaling_policies", policy["_key"])
            await asyncio.to_thread(self.store.delete, "scalable_targets", resource_id)
            await self._apply(resource_id)
        return {}

    async def put_scaling_policy(self, params: Document) -> Document:
        self._check_kind(params)
        resource_id, name = params["ResourceId"], params["PolicyName"]
        policy_type = params.get("PolicyType", "StepScaling")
        if policy_type != "TargetTrackingScaling":
            raise ValidationError(
                f"PolicyType {policy_type} is not supported by this server; use"
                f" TargetTrackingScaling with {METRIC}."
            )
        config = params.get("TargetTrackingScalingPolicyConfiguration")
        if not config:
            raise ValidationError(
                "TargetTrackingScalingPolicyConfiguration is required for TargetTrackingScaling."
            )
        metric = (config.get("PredefinedMetricSpecification") or {}).get("PredefinedMetricType")
        if metric != METRIC or config.get("CustomizedMetricSpecification"):
            raise ValidationError(
                f"This server tracks {METRIC} only (PredefinedMetricSpecification), not"
                f" {metric or 'a customized metric'}."
            )
        if config["TargetValue"] <= 0:
            raise ValidationError("TargetValue must be greater than 0.")
        async with self._write:
            if await self._target(resource_id) is None:
                raise ObjectNotFoundError(
                    f"No scalable target registered for service namespace: {NAMESPACE},"
                    f" resource ID: {resource_id}, scalable dimension: {DIMENSION}"
                )
            key = f"{resource_id}|{name}"
            existing = await asyncio.to_thread(self.store.get, "scaling_policies", key)
            others = [
                p
                for p in await asyncio.to_thread(self.store.all, "scaling_policies")
                if p["ResourceId"] == resource_id and p["PolicyName"] != name
            ]
            if others:
                raise ValidationError(
                    f"{resource_id} already has the policy {others[0]['PolicyName']}; this"
                    " server runs one target-tracking policy per variant (delete it first)."
                )
            document = {
                "_key": key,
                "PolicyARN": self._policy_arn(resource_id, name),
                "PolicyName": name,
                "ServiceNamespace": NAMESPACE,
                "ResourceId": resource_id,
                "ScalableDimension": DIMENSION,
                "PolicyType": "TargetTrackingScaling",
                "TargetTrackingScalingPolicyConfiguration": config,
                "Alarms": [],
                "CreationTime": (existing or {}).get("CreationTime", time.time()),
            }
            if existing is None:
                await asyncio.to_thread(self.store.insert, "scaling_policies", key, document)
            else:
                await asyncio.to_thread(self.store.update, "scaling_policies", key, document)
            await self._apply(resource_id)
        return {"PolicyARN": document["PolicyARN"], "Alarms": []}

    async def describe_scaling_policies(self, params: Document) -> Document:
        self._check_kind(params)
        names = set(params.get("PolicyNames") or [])
        resource = params.get("ResourceId")
        policies = [
            {k: v for k, v in p.items() if k != "_key"}
            for p in await asyncio.to_thread(self.store.all, "scaling_policies")
            if (not names or p["PolicyName"] in names)
            and (resource is None or p["ResourceId"] == resource)
        ]
        return {"ScalingPolicies": policies}

    async def delete_scaling_policy(self, params: Document) -> Document:
        self._check_kind(params)
        resource_id, name = params["ResourceId"], params["PolicyName"]
        async with self._write:
            if not await asyncio.to_thread(
                self.store.delete, "scaling_policies", f"{resource_id}|{name}"
            ):
                raise ObjectNotFoundError(
                    f"No scaling policy found for service namespace: {NAMESPACE}, resource ID:"
                    f" {resource_id}, scalable dimension: {DIMENSION}, policy name: {name}"
                )
            await self._apply(resource_id)
        return {}


_OPERATIONS = {
    "register_scalable_target",
    "describe_scalable_targets",
    "deregister_scalable_target",
    "put_scaling_policy",
    "describe_scaling_policies",
    "delete_scaling_policy",
}

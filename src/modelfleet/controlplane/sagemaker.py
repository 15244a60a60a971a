"""SageMaker's control-plane operations for multi-model endpoints, over this server's fleet.

``CreateModel`` records a container (its ``ModelDataUrl`` is the model source),
``CreateEndpointConfig`` production variants (model, instance type and count, weight),
``CreateEndpoint`` starts one variant's instances per production variant and answers
``Creating`` until they are up (then ``InService``, or ``Failed`` with the reason). Weights
and instance counts change at once (``UpdateEndpointWeightsAndCapacities``); ``DeleteEndpoint``
drains and stops the instances. Names compare case-insensitively, ARNs are lower case, and the
errors are the service's (``Could not find endpoint "arn:..."``, which boto3's
``endpoint_deleted`` waiter relies on).

What an operation takes and answers is checked against botocore's model of the service
(:mod:`modelfleet.controlplane.shapes`). Features this server does not have (serverless and
asynchronous inference, data capture, shadow variants, explainers) are refused by name rather
than ignored; fields with no meaning here (tags, roles, VPC, KMS keys) are kept and answered.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from modelfleet.config import ModelCacheSetting, Settings, reserved_variable
from modelfleet.controlplane.instance_types import GIB, InstanceSize, default_instance_types
from modelfleet.controlplane.state import StateStore, Table
from modelfleet.endpoint.variants import EndpointConfig, PipelineStep, VariantConfig
from modelfleet.errors import (
    ResourceInUseError,
    ResourceLimitExceededError,
    ValidationError,
)

logger = logging.getLogger(__name__)

Document = dict[str, Any]

_KINDS: dict[Table, tuple[str, str]] = {  # ARN resource kind, words in messages
    "models": ("model", "model"),
    "endpoint_configs": ("endpoint-config", "endpoint configuration"),
    "endpoints": ("endpoint", "endpoint"),
}
_BUSY = ("Creating", "Updating", "SystemUpdating", "RollingBack", "Deleting")
_UNSUPPORTED_CONFIG = {
    "DataCaptureConfig": "data capture",
    "AsyncInferenceConfig": "asynchronous inference",
    "ShadowProductionVariants": "shadow variants",
    "ExplainerConfig": "explainers",
}
_UNSUPPORTED_VARIANT = {
    "ServerlessConfig": "serverless inference",
    "InstancePools": "instance pools",
    "AcceleratorType": "Elastic Inference accelerators",
    "ManagedInstanceScaling": "managed instance scaling",
}
MAX_VARIANTS = 10
#: the EndpointConfigName answered for an endpoint of the server's flags or config file
DECLARED_CONFIG = "modelfleet-configuration"


class Fleet(Protocol):
    """What the control plane needs of the server (EndpointServer implements it)."""

    def serves(self, name: str) -> bool: ...

    async def start_endpoint(self, config: EndpointConfig, single_model: str | None) -> None: ...

    async def replace_endpoint(self, config: EndpointConfig, single_model: str | None) -> None: ...

    async def stop_endpoint(self, name: str) -> None: ...

    def set_weights(self, name: str, weights: dict[str, float]) -> None: ...

    async def resize(self, name: str, variant: str, count: int) -> None: ...

    def instance_counts(self, name: str) -> dict[str, tuple[int, int]]: ...

    def set_scaling(self, name: str, variant: str, fields: dict[str, Any]) -> None: ...

    @property
    def declared(self) -> frozenset[str]: ...

    def declared_view(self) -> list[dict[str, Any]]: ...


class SageMakerOperations:
    """The operations, by name (``CreateModel`` -> :meth:`create_model`)."""

    def __init__(self, settings: Settings, store: StateStore, fleet: Fleet) -> None:
        self.settings = settings
        self.store = store
        self.fleet = fleet
        self._write = asyncio.Lock()  # one change at a time: checks and writes agree
        self._tasks: set[asyncio.Task[None]] = set()
        self._instance_types: dict[str, InstanceSize] | None = None

    def handler(self, operation: str) -> Callable[[Document], Awaitable[Document]] | None:
        name = "".join(f"_{c.lower()}" if c.isupper() else c for c in operation).lstrip("_")
        method = getattr(self, name, None)
        return method if name in _OPERATIONS else None

    # -- state helpers

    def arn(self, table: Table, name: str) -> str:
        kind = _KINDS[table][0]
        region, account = self.settings.auth_region, self.settings.account_id
        return f"arn:aws:sagemaker:{region}:{account}:{kind}/{name.lower()}"

    def _missing(self, table: Table, name: str) -> ValidationError:
        return ValidationError(f'Could not find {_KINDS[table][1]} "{self.arn(table, name)}".')

    async def _get(self, table: Table, name: str) -> Document:
        found = await asyncio.to_thread(self.store.get, table, name)
        if found is None:
            raise self._missing(table, name)
        return found

    async def _insert(self, table: Table, name: str, document: Document) -> None:
        if not await asyncio.to_thread(self.store.insert, table, name, document):
            words = _KINDS[table][1]
            raise ValidationError(
                f'Cannot create already existing {words} "{self.arn(table, name)}".'
            )

    async def _save(self, name: str, document: Document) -> None:
        document["LastModifiedTime"] = time.time()
        await asyncio.to_thread(self.store.update, "endpoints", name, document)

    def _listing(
        self,
        documents: list[Document],
        params: Document,
        name_key: str,
        *,
        status_key: str | None = None,
        modified: bool = False,
    ) -> tuple[list[Document], str | None]:
        """Filtered, sorted and paged as the List calls are; the next page's token."""
        contains = params.get("NameContains")
        if contains:
            documents = [d for d in documents if contains.lower() in d[name_key].lower()]
        bounds = [("CreationTimeBefore", "CreationTime", False)]
        bounds += [("CreationTimeAfter", "CreationTime", True)]
        if modified:
            bounds += [("LastModifiedTimeBefore", "LastModifiedTime", False)]
            bounds += [("LastModifiedTimeAfter", "LastModifiedTime", True)]
        for param, field, after in bounds:
            if params.get(param) is not None:
                from modelfleet.controlplane.shapes import timestamp

                limit = timestamp(params[param])
                assert limit is not None
                edge = limit.timestamp()
                documents = [
                    d for d in documents if (d[field] > edge if after else d[field] < edge)
                ]
        if status_key and params.get("StatusEquals"):
            documents = [d for d in documents if d[status_key] == params["StatusEquals"]]
        sort_by = params.get("SortBy", "CreationTime")
        key: Callable[[Document], Any] = {
            "Name": lambda d: d[name_key].lower(),
            "Status": lambda d: d.get(status_key or "", ""),
        }.get(sort_by, lambda d: d["CreationTime"])
        documents.sort(key=key, reverse=params.get("SortOrder", "Descending") == "Descending")
        start = _page_start(params.get("NextToken"))
        size = int(params.get("MaxResults") or 10)
        page = documents[start : start + size]
        more = start + size < len(documents)
        token = base64.urlsafe_b64encode(str(start + size).encode()).decode() if more else None
        return page, token

    # -- models

    async def create_model(self, params: Document) -> Document:
        name = params["ModelName"]
        containers = params.get("Containers") or []
        primary = params.get("PrimaryContainer")
        if (primary is None) == (not containers):
            raise ValidationError("Provide exactly one of PrimaryContainer and Containers.")
        mode = (params.get("InferenceExecutionConfig") or {}).get("Mode", "Serial")
        if len(containers) > 1 and mode != "Serial":
            raise ValidationError(
                f"InferenceExecutionConfig Mode {mode} (direct invocation of one container) is"
                " not supported by this server; a model of several containers runs them as a"
                " serial inference pipeline (Mode Serial)."
            )
        if sum(c.get("Mode") == "MultiModel" for c in containers) > 1:
            raise ValidationError(
                "An inference pipeline may have one multi-model container at most."
            )
        for index, container in enumerate([primary] if primary else containers, start=1):
            where = "The container" if primary else f"Container {index}"
            if not container.get("ModelDataUrl"):
                raise ValidationError(
                    f"{where} needs a ModelDataUrl: the model source (MultiModel: the prefix the"
                    " target models are under; SingleModel: the artifact)."
                )
            for unsupported in (
                "ModelDataSource",
                "AdditionalModelDataSources",
                "ModelPackageName",
            ):
                if container.get(unsupported):
                    raise ValidationError(
                        f"{where}: {unsupported} is not supported by this server."
                    )
            _source(container)  # a SingleModel URL must name an artifact
            reserved = sorted(n for n in container.get("Environment") or {} if reserved_variable(n))
            if reserved:
                raise ValidationError(
                    f"{where}: Environment {', '.join(reserved)} would change how the instance"
                    " process runs (PATH, HOME, LD_*, PYTHON* and MODELFLEET_* are the server's)."
                )
        url = (primary or containers[0])["ModelDataUrl"]
        document = {k: v for k, v in params.items() if k != "Tags"}
        document.update(
            ModelArn=self.arn("models", name),
            CreationTime=time.time(),
            EnableNetworkIsolation=bool(params.get("EnableNetworkIsolation", False)),
            Tags=params.get("Tags") or [],
        )
        async with self._write:
            await self._insert("models", name, document)
        logger.info("control plane: created model %s (%s)", name, url)
        return {"ModelArn": document["ModelArn"]}

    async def describe_model(self, params: Document) -> Document:
        document = await self._get("models", params["ModelName"])
        document.pop("Tags", None)
        return document

    async def list_models(self, params: Document) -> Document:
        everything = await asyncio.to_thread(self.store.all, "models")
        page, token = self._listing(everything, params, "ModelName")
        models = [{k: d[k] for k in ("ModelName", "ModelArn", "CreationTime")} for d in page]
        return {"Models": models, "NextToken": token}

    async def delete_model(self, params: Document) -> Document:
        name = params["ModelName"]
        async with self._write:
            await self._get("models", name)
            users = [
                e["EndpointName"]
                for e in await asyncio.to_thread(self.store.all, "endpoints")
                if e["EndpointStatus"] != "Deleting"
                and any(n.lower() == name.lower() for n in e["deployed"]["models"])
            ]
            if users:
                raise ResourceInUseError(
                    f'Cannot delete model "{self.arn("models", name)}": endpoint(s) '
                    f"{', '.join(users)} run it; delete or update them first."
                )
            await asyncio.to_thread(self.store.delete, "models", name)
        return {}

    # -- endpoint configs

    async def create_endpoint_config(self, params: Document) -> Document:
        name = params["EndpointConfigName"]
        for key, what in _UNSUPPORTED_CONFIG.items():
            if params.get(key):
                raise ValidationError(f"{key}: {what} is not supported by this server.")
        variants = params["ProductionVariants"]
        if not variants:
            raise ValidationError("ProductionVariants needs at least one variant.")
        if len(variants) > MAX_VARIANTS:
            raise ResourceLimitExceededError(
                f"An endpoint configuration takes at most {MAX_VARIANTS} production variants."
            )
        names = [v["VariantName"].lower() for v in variants]
        if len(set(names)) != len(names):
            raise ValidationError("The production variants' names must be unique.")
        for variant in variants:
            for key, what in _UNSUPPORTED_VARIANT.items():
                if variant.get(key):
                    raise ValidationError(
                        f"Variant {variant['VariantName']}: {key} ({what}) is not supported by"
                        " this server."
                    )
            for required in ("ModelName", "InstanceType", "InitialInstanceCount"):
                if variant.get(required) is None:
                    raise ValidationError(
                        f"Variant {variant['VariantName']}: {required} is required (this server"
                        " runs instances; serverless variants are not supported)."
                    )
            self.instance_size(variant["InstanceType"])
            await self._get("models", variant["ModelName"])
        if sum(float(v.get("InitialVariantWeight", 1.0)) for v in variants) <= 0:
            raise ValidationError("The production variants' weights sum to 0.")
        document = {k: v for k, v in params.items() if k != "Tags"}
        document.update(
            EndpointConfigArn=self.arn("endpoint_configs", name),
            CreationTime=time.time(),
            Tags=params.get("Tags") or [],
        )
        async with self._write:
            await self._insert("endpoint_configs", name, document)
        return {"EndpointConfigArn": document["EndpointConfigArn"]}

    async def describe_endpoint_config(self, params: Document) -> Document:
        document = await self._get("endpoint_configs", params["EndpointConfigName"])
        document.pop("Tags", None)
        return document

    async def list_endpoint_configs(self, params: Document) -> Document:
        everything = await asyncio.to_thread(self.store.all, "endpoint_configs")
        page, token = self._listing(everything, params, "EndpointConfigName")
        keys = ("EndpointConfigName", "EndpointConfigArn", "CreationTime")
        return {"EndpointConfigs": [{k: d[k] for k in keys} for d in page], "NextToken": token}

    async def delete_endpoint_config(self, params: Document) -> Document:
        name = params["EndpointConfigName"]
        async with self._write:
            await self._get("endpoint_configs", name)
            await asyncio.to_thread(self.store.delete, "endpoint_configs", name)
        return {}

    # -- endpoints

    def instance_size(self, instance_type: str) -> InstanceSize:
        if self._instance_types is None:
            self._instance_types = {**default_instance_types(), **self.settings.instance_types}
        size = self._instance_types.get(instance_type)
        if size is None:
            raise ValidationError(
                f"InstanceType {instance_type} has no size on this server: add it to the"
                " instance_types table of the server's config (docs/control-plane.md)."
            )
        return size

    def endpoint_config(self, document: Document) -> tuple[EndpointConfig, str | None]:
        """The fleet to run for an endpoint ``document``, and its single model if it serves
        one (no TargetModel: a SingleModel container, or a pipeline with no multi-model
        step)."""
        name = document["EndpointName"]
        config = document["deployed"]["config"]
        models = {k.lower(): v for k, v in document["deployed"]["models"].items()}
        variants: list[VariantConfig] = []
        singles: set[str | None] = set()
        for variant in config["ProductionVariants"]:
            vname = variant["VariantName"]
            model = models[variant["ModelName"].lower()]
            current = document["variants"][vname]
            containers = (
                [model["PrimaryContainer"]]
                if model.get("PrimaryContainer")
                else model["Containers"]
            )
            steps = []
            for index, container in enumerate(containers, start=1):
                folder = vname if len(containers) == 1 else f"{vname}/step-{index}"
                settings = self._container_settings(name, folder, variant, current, container)
                accept = (container.get("Environment") or {}).get(
                    "SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT"
                )
                steps.append(PipelineStep(settings, accept))
            multi = [s for s in steps if s.settings.default_target_model is None]
            singles.add(None if multi else steps[-1].settings.default_target_model)
            pipeline = tuple(steps) if len(steps) > 1 else ()
            variants.append(VariantConfig(vname, current["weight"], steps[0].settings, pipeline))
        if len(singles) > 1:
            raise ValidationError(
                "The variants of one endpoint must all be multi-model (a TargetModel picks the"
                " model) or all serve one model each."
            )
        return EndpointConfig(name, tuple(variants)), singles.pop()

    def _container_settings(
        self, name: str, folder: str, variant: Document, current: Document, container: Document
    ) -> Settings:
        """The settings of the instances running one container of a production variant."""
        size = self.instance_size(variant["InstanceType"])
        source, target = _source(container)
        cache = (container.get("MultiModelConfig") or {}).get("ModelCacheSetting")
        fields = {
            **self.settings.model_dump(exclude={"instance_types"}),
            "endpoint_name": name,
            "model_source": source,
            "memory_limit": int(size.memory_limit),
            "disk_limit": int(variant.get("VolumeSizeInGB") or 0) * GIB or int(size.disk_limit),
            "ray_cpus_per_instance": size.cpus,
            "instances": current["instances"],
            "min_instances": None,
            "max_instances": None,
            **scaling_fields(current.get("scaling"), current["instances"]),
            "rss_high_water": None,
            "model_cache": ModelCacheSetting.DISABLED
            if cache == "Disabled"
            else ModelCacheSetting.ENABLED,
            "cache_dir": str(Path(self.settings.cache_dir) / "endpoints" / name / folder),
            "default_target_model": target,
            "environment": dict(container.get("Environment") or {}),
        }
        try:
            return Settings(**fields)
        except Exception as exc:  # pydantic's, worded for the caller
            raise ValidationError(f"Variant {variant['VariantName']}: {exc}") from None

    async def create_endpoint(self, params: Document) -> Document:
        name, config_name = params["EndpointName"], params["EndpointConfigName"]
        if params.get("DeploymentConfig"):
            raise ValidationError("DeploymentConfig is not supported by this server.")
        async with self._write:
            if self.fleet.serves(name):
                raise ValidationError(
                    f'Cannot create already existing endpoint "{self.arn("endpoints", name)}".'
                )
            config = await self._get("endpoint_configs", config_name)
            models = {}
            for variant in config["ProductionVariants"]:
                model = await self._get("models", variant["ModelName"])
                models[model["ModelName"]] = model
            now = time.time()
            document: Document = {
                "EndpointName": name,
                "EndpointArn": self.arn("endpoints", name),
                "EndpointConfigName": config["EndpointConfigName"],
                "EndpointStatus": "Creating",
                "CreationTime": now,
                "LastModifiedTime": now,
                "Tags": params.get("Tags") or [],
                "deployed": {"config": config, "models": models},
                "variants": {
                    v["VariantName"]: {
                        "weight": float(v.get("InitialVariantWeight", 1.0)),
                        "instances": int(v["InitialInstanceCount"]),
                    }
                    for v in config["ProductionVariants"]
                },
            }
            self.endpoint_config(document)  # every variant can be made, before anything runs
            await self._insert("endpoints", name, document)
        self._spawn(self._bring_up(document))
        logger.info("control plane: creating endpoint %s from config %s", name, config_name)
        return {"EndpointArn": document["EndpointArn"]}

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _bring_up(self, document: Document) -> None:
        """Start an endpoint's instances: InService once up, Failed (stopped) if they cannot."""
        name = document["EndpointName"]
        try:
            config, single = self.endpoint_config(document)
            await asyncio.to_thread(_probe_sources, config, single)
            await self.fleet.start_endpoint(config, single)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.warning("control plane: endpoint %s failed to start: %s", name, exc)
            with contextlib.suppress(Exception):
                await self.fleet.stop_endpoint(name)
            reason = getattr(exc, "message", None) or str(exc) or type(exc).__name__
            async with self._write:
                current = await asyncio.to_thread(self.store.get, "endpoints", name)
                if current is not None and current["EndpointStatus"] != "Deleting":
                    current.update(EndpointStatus="Failed", FailureReason=reason[:1024])
                    await self._save(name, current)
            return
        async with self._write:
            current = await asyncio.to_thread(self.store.get, "endpoints", name)
            if current is not None and current["EndpointStatus"] == "Creating":
                current["EndpointStatus"] = "InService"
                current.pop("FailureReason", None)
                await self._save(name, current)
        logger.info("control plane: endpoint %s is in service", name)

    async def restore(self) -> None:
        """At start: bring back every endpoint the state holds (Failed ones stay Failed,
        one being deleted is finished off)."""
        for document in await asyncio.to_thread(self.store.all, "endpoints"):
            name = document["EndpointName"]
            status = document["EndpointStatus"]
            if status == "Deleting":
                await asyncio.to_thread(self.store.delete, "endpoints", name)
                continue
            if status == "Failed":
                continue
            if self.fleet.serves(name):
                logger.warning(
                    "control plane: endpoint %s of the state is also in the config file; the"
                    " file's wins",
                    name,
                )
                continue
            document["EndpointStatus"] = "Creating"
            await self._save(name, document)
            self._spawn(self._bring_up(document))

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def describe_endpoint(self, params: Document) -> Document:
        for declared in self._declared_documents():
            if declared["EndpointName"].lower() == params["EndpointName"].lower():
                return declared
        document = await self._get("endpoints", params["EndpointName"])
        name = document["EndpointName"]
        running = self.fleet.serves(name) and document["EndpointStatus"] != "Creating"
        live = self.fleet.instance_counts(name) if running else {}
        variants = []
        for variant in document["deployed"]["config"]["ProductionVariants"]:
            vname = variant["VariantName"]
            desired = document["variants"][vname]
            up, active = live.get(vname, (0, 0))
            # with a scaling policy, the autoscaler decides the count
            wanted = active if desired.get("scaling") and vname in live else desired["instances"]
            variants.append(
                {
                    "VariantName": vname,
                    "CurrentWeight": desired["weight"],
                    "DesiredWeight": desired["weight"],
                    "CurrentInstanceCount": up,
                    "DesiredInstanceCount": wanted,
                }
            )
        answer = {k: v for k, v in document.items() if k not in ("deployed", "variants", "Tags")}
        answer["ProductionVariants"] = variants
        return answer

    async def list_endpoints(self, params: Document) -> Document:
        everything = await asyncio.to_thread(self.store.all, "endpoints")
        everything += self._declared_documents()
        page, token = self._listing(
            everything, params, "EndpointName", status_key="EndpointStatus", modified=True
        )
        keys = ("EndpointName", "EndpointArn", "CreationTime", "LastModifiedTime")
        endpoints = [
            {**{k: d[k] for k in keys}, "EndpointStatus": d["EndpointStatus"]} for d in page
        ]
        return {"Endpoints": endpoints, "NextToken": token}

    async def update_endpoint_weights_and_capacities(self, params: Document) -> Document:
        name = params["EndpointName"]
        self._not_declared(name)
        async with self._write:
            document = await self._get("endpoints", name)
            self._check_idle(document)
            desired = params["DesiredWeightsAndCapacities"]
            by_lower = {v.lower(): v for v in document["variants"]}
            unknown = [
                d["VariantName"] for d in desired if d["VariantName"].lower() not in by_lower
            ]
            if unknown:
                raise ValidationError(
                    f"The variant(s) {unknown} are not part of endpoint "
                    f'"{self.arn("endpoints", name)}".'
                )
            for change in desired:
                if (
                    change.get("DesiredWeight") is None
                    and change.get("DesiredInstanceCount") is None
                ):
                    raise ValidationError(
                        f"Variant {change['VariantName']}: give DesiredWeight,"
                        " DesiredInstanceCount or both."
                    )
            weights = {v: s["weight"] for v, s in document["variants"].items()}
            for change in desired:
                if change.get("DesiredWeight") is not None:
                    weights[by_lower[change["VariantName"].lower()]] = float(
                        change["DesiredWeight"]
                    )
            if sum(weights.values()) <= 0:
                raise ValidationError("The variants' weights would sum to 0.")
            for vname, weight in weights.items():
                document["variants"][vname]["weight"] = weight
            resizes = {
                by_lower[c["VariantName"].lower()]: int(c["DesiredInstanceCount"])
                for c in desired
                if c.get("DesiredInstanceCount") is not None
            }
            for vname, count in resizes.items():
                document["variants"][vname]["instances"] = count
            document["EndpointStatus"] = "Updating" if resizes else "InService"
            await self._save(name, document)
            self.fleet.set_weights(document["EndpointName"], weights)
        if resizes:
            self._spawn(self._resize(document["EndpointName"], resizes))
        return {"EndpointArn": document["EndpointArn"]}

    async def update_endpoint(self, params: Document) -> Document:
        """Blue/green to another config: status Updating while the new instances start
        beside the old ones, which serve until the switch; if the new ones cannot start, the
        endpoint serves on with its old config and says why in FailureReason."""
        name, config_name = params["EndpointName"], params["EndpointConfigName"]
        self._not_declared(name)
        for unsupported in ("DeploymentConfig", "ExcludeRetainedVariantProperties"):
            if params.get(unsupported):
                raise ValidationError(f"{unsupported} is not supported by this server.")
        async with self._write:
            document = await self._get("endpoints", name)
            self._check_idle(document)
            config = await self._get("endpoint_configs", config_name)
            models = {}
            for variant in config["ProductionVariants"]:
                model = await self._get("models", variant["ModelName"])
                models[model["ModelName"]] = model
            retain = bool(params.get("RetainAllVariantProperties"))
            variants = {}
            for variant in config["ProductionVariants"]:
                vname = variant["VariantName"]
                if retain and vname in document["variants"]:
                    variants[vname] = dict(document["variants"][vname])
                else:
                    variants[vname] = {
                        "weight": float(variant.get("InitialVariantWeight", 1.0)),
                        "instances": int(variant["InitialInstanceCount"]),
                    }
            proposed = {
                **document,
                "deployed": {"config": config, "models": models},
                "variants": variants,
            }
            self.endpoint_config(proposed)  # every variant can be made, before anything runs
            document["EndpointStatus"] = "Updating"
            document.pop("FailureReason", None)
            await self._save(name, document)
        self._spawn(self._switch(document["EndpointName"], proposed, config["EndpointConfigName"]))
        logger.info("control plane: updating endpoint %s to config %s", name, config_name)
        return {"EndpointArn": document["EndpointArn"]}

    async def _switch(self, name: str, proposed: Document, config_name: str) -> None:
        try:
            config, single = self.endpoint_config(proposed)
            await asyncio.to_thread(_probe_sources, config, single)
            await self.fleet.replace_endpoint(config, single)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            reason = getattr(exc, "message", None) or str(exc) or type(exc).__name__
            logger.warning("control plane: update of %s rolled back: %s", name, reason)
            async with self._write:
                current = await asyncio.to_thread(self.store.get, "endpoints", name)
                if current is not None and current["EndpointStatus"] == "Updating":
                    current["EndpointStatus"] = "InService"
                    current["FailureReason"] = (
                        f"The update to endpoint configuration {config_name} failed and was"
                        f" rolled back: {reason}"
                    )[:1024]
                    await self._save(name, current)
            return
        async with self._write:
            current = await asyncio.to_thread(self.store.get, "endpoints", name)
            if current is not None and current["EndpointStatus"] == "Updating":
                current.update(
                    EndpointStatus="InService",
                    EndpointConfigName=config_name,
                    deployed=proposed["deployed"],
                    variants=proposed["variants"],
                )
                current.pop("FailureReason", None)
                await self._save(name, current)
        logger.info("control plane: endpoint %s now runs config %s", name, config_name)

    async def _resize(self, name: str, counts: dict[str, int]) -> None:
        failure: str | None = None
        for vname, count in counts.items():
            try:
                await self.fleet.resize(name, vname, count)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failure = f"variant {vname}: {getattr(exc, 'message', None) or exc}"
                logger.warning("control plane: resizing %s failed: %s", name, failure)
        async with self._write:
            current = await asyncio.to_thread(self.store.get, "endpoints", name)
            if current is not None and current["EndpointStatus"] == "Updating":
                current["EndpointStatus"] = "InService"
                if failure:  # the endpoint serves on; the reason is shown until the next change
                    current["FailureReason"] = failure[:1024]
                else:
                    current.pop("FailureReason", None)
                await self._save(name, current)

    # -- for Application Auto Scaling (modelfleet.controlplane.autoscaling)

    async def variant_names(self, endpoint: str) -> list[str] | None:
        document = await asyncio.to_thread(self.store.get, "endpoints", endpoint)
        return None if document is None else list(document["variants"])

    async def apply_scaling(self, endpoint: str, variant: str, scaling: Document | None) -> None:
        """Keep a variant's scaling with its endpoint (it applies again when the endpoint
        starts or is updated) and hand it to the running variant."""
        async with self._write:
            document = await asyncio.to_thread(self.store.get, "endpoints", endpoint)
            if document is None or variant not in document["variants"]:
                return  # the endpoint went away: its targets and policies do nothing
            current = document["variants"][variant]
            if scaling is None:
                current.pop("scaling", None)
            else:
                current["scaling"] = scaling
                current["instances"] = min(
                    max(current["instances"], scaling["min"]), scaling["max"]
                )
            await self._save(document["EndpointName"], document)
            if self.fleet.serves(document["EndpointName"]):
                self.fleet.set_scaling(
                    document["EndpointName"], variant, scaling_fields(scaling, current["instances"])
                )

    def _not_declared(self, name: str) -> None:
        """The endpoints of the server's flags or config file are the file's to change."""
        if any(d.lower() == name.lower() for d in self.fleet.declared):
            raise ValidationError(
                f'Endpoint "{self.arn("endpoints", name)}" is declared in the server\'s'
                " configuration (its flags or config file), which decides it: change it"
                " there and reload (SIGHUP or POST /admin/reload)."
            )

    def _declared_documents(self) -> list[Document]:
        """The endpoints of the flags or config file, as DescribeEndpoint answers them."""
        documents = []
        for view in self.fleet.declared_view():
            variants = [
                {
                    "VariantName": variant,
                    "CurrentWeight": weight,
                    "DesiredWeight": weight,
                    "CurrentInstanceCount": up,
                    "DesiredInstanceCount": active,
                }
                for variant, (weight, up, active) in view["variants"].items()
            ]
            documents.append(
                {
                    "EndpointName": view["name"],
                    "EndpointArn": self.arn("endpoints", view["name"]),
                    "EndpointConfigName": DECLARED_CONFIG,
                    "EndpointStatus": "InService",
                    "CreationTime": view["since"],
                    "LastModifiedTime": view["since"],
                    "ProductionVariants": variants,
                }
            )
        return documents

    def _check_idle(self, document: Document) -> None:
        if document["EndpointStatus"] in _BUSY:
            raise ValidationError(
                f'Cannot update in-progress endpoint "{document["EndpointArn"]}".'
            )
        if document["EndpointStatus"] == "Failed":
            raise ValidationError(
                f'Cannot update failed endpoint "{document["EndpointArn"]}"; delete it.'
            )

    async def delete_endpoint(self, params: Document) -> Document:
        name = params["EndpointName"]
        self._not_declared(name)
        async with self._write:
            document = await self._get("endpoints", name)
            if document["EndpointStatus"] == "Deleting":
                return {}
            document["EndpointStatus"] = "Deleting"
            await self._save(name, document)
        self._spawn(self._tear_down(document["EndpointName"]))
        return {}

    async def _tear_down(self, name: str) -> None:
        try:
            await self.fleet.stop_endpoint(name)
        finally:
            async with self._write:
                await asyncio.to_thread(self.store.delete, "endpoints", name)
        logger.info("control plane: deleted endpoint %s", name)


_OPERATIONS = {
    "create_model",
    "describe_model",
    "list_models",
    "delete_model",
    "create_endpoint_config",
    "describe_endpoint_config",
    "list_endpoint_configs",
    "delete_endpoint_config",
    "create_endpoint",
    "describe_endpoint",
    "list_endpoints",
    "update_endpoint",
    "update_endpoint_weights_and_capacities",
    "delete_endpoint",
}


def scaling_fields(scaling: Document | None, instances: int) -> dict[str, Any]:
    """The variant settings a target-tracking policy means (none: no autoscaling)."""
    if not scaling:
        return {"autoscale_target": 0.0}
    return {
        "autoscale_target": scaling["target"],
        "min_instances": scaling["min"],
        "max_instances": scaling["max"],
        "instances": min(max(instances, scaling["min"]), scaling["max"]),
        "scale_out_cooldown": scaling["scale_out_cooldown"],
        "scale_in_cooldown": math.inf
        if scaling["disable_scale_in"]
        else scaling["scale_in_cooldown"],
    }


def _probe_sources(config: EndpointConfig, single_model: str | None = None) -> None:
    """Each variant's model source answers (its first object is listed; a single model is
    looked up), so an unreachable or missing source fails the endpoint with its reason
    instead of every request later."""
    from modelfleet.source import ModelSource

    for variant in config.variants:
        for step in variant.pipeline or (PipelineStep(variant.settings),):
            settings = step.settings
            try:
                source = ModelSource(
                    settings.model_source,
                    timeout_s=settings.source_timeout,
                    retries=0,
                    allow_http=settings.allow_http,
                )
                if settings.default_target_model is not None:
                    source.stat(settings.default_target_model)
                else:
                    next(iter(source.list()), None)
            except Exception as exc:
                message = getattr(exc, "message", None) or str(exc)
                raise ValidationError(
                    f"variant {variant.name}: the model source {settings.model_source} cannot"
                    f" be read: {message}"
                ) from None


def _page_start(token: str | None) -> int:
    if not token:
        return 0
    try:
        start = int(base64.urlsafe_b64decode(token.encode()).decode())
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ValidationError("Invalid pagination token.") from None
    if start < 0:
        raise ValidationError("Invalid pagination token.")
    return start


def _source(container: Document) -> tuple[str, str | None]:
    """The model source of a container, and the artifact a SingleModel container serves."""
    url: str = container["ModelDataUrl"]
    if container.get("Mode", "SingleModel") == "MultiModel":
        return url, None
    _, sep, rest = url.partition("://")
    path = rest.partition("/")[2] if sep else url  # what follows the bucket or host
    folder, _, artifact = url.rstrip("/").rpartition("/")
    if not path.strip("/") or not folder or not artifact:
        raise ValidationError(f"SingleModel ModelDataUrl {url} names no artifact.")
    return folder + "/", artifact

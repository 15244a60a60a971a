"""The endpoint's HTTP server: SageMaker's runtime API, the instance contract, ``/metrics``.

``POST /endpoints/{name}/invocations`` is wire-compatible with SageMaker InvokeEndpoint, so
``boto3.client("sagemaker-runtime", endpoint_url=...)`` works against it. With the ``inprocess``
backend the same port also serves the instance contract (``/models``...) of the one instance.
With a config file (:mod:`modelfleet.endpoint.variants`) one server routes several endpoints,
each with its production variants, each variant with its own instance processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from modelfleet.auth import AuthMiddleware, Caller, Refused, check, make_verifier
from modelfleet.backends.base import Backend, Instance, InstanceState
from modelfleet.backends.inprocess import InProcessBackend
from modelfleet.backends.local import LocalBackend
from modelfleet.backends.remote import InstanceFullError, InstanceUnreachableError
from modelfleet.config import Settings
from modelfleet.controlplane.api import ControlPlane
from modelfleet.edge import (
    INSTANCE_ERRORS,
    RUNTIME_ERRORS,
    PathRedactor,
    client_gone,
    error_response,
    new_request_id,
    read_body,
    refusal_response,
    request_id_var,
    target_model_var,
    utf8_header,
)
from modelfleet.endpoint.accesslog import AccessLog
from modelfleet.endpoint.autoscale import Autoscaler
from modelfleet.endpoint.dashboard import Dashboard
from modelfleet.endpoint.modelstats import ModelStats
from modelfleet.endpoint.preload import preload_variant
from modelfleet.endpoint.router import DEFAULT_VARIANT, Routed, Router
from modelfleet.endpoint.variants import (
    EndpointConfig,
    VariantConfig,
    load_config,
)
from modelfleet.errors import (
    CacheInUseError,
    NoModelStatsError,
    PayloadTooLargeError,
    ServiceUnavailableError,
    UnknownEndpointError,
    ValidationError,
)
from modelfleet.instance.app import instance_routes
from modelfleet.instance.loader import private_folders
from modelfleet.metrics import CONTENT_TYPE, Metrics
from modelfleet.source import validate_target_model

logger = logging.getLogger(__name__)


@dataclass
class _Endpoint:
    """One endpoint: its router, one backend per variant, the router's metrics per variant."""

    name: str
    router: Router
    backends: dict[str, Backend]
    metrics: dict[str, Metrics]
    stats: ModelStats  # per target model, counted by the router
    weights: dict[str, float] = field(default_factory=dict)
    single_model: str | None = None  # a single-model endpoint's one model (no header needed)
    # a serial pipeline variant's steps: (the step's backend, what its answer is asked in)
    pipelines: dict[str, list[tuple[str, str | None]]] = field(default_factory=dict)
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)  # its autoscalers, retirer

    def instances(self) -> list[Instance]:
        return [i for backend in self.backends.values() for i in backend.instances]


class EndpointServer:
    """The endpoints of one server, their routers and backends, and the Starlette app."""

    _redact: PathRedactor  # no answer shows the server's folders

    def __init__(
        self,
        settings: Settings,
        endpoints: list[EndpointConfig] | None = None,
        *,
        config_file: Path | None = None,
        overrides: dict[str, Any] | None = None,
        join: bool = False,
    ) -> None:
        self.settings = settings
        self._join = join  # a router of a Ray fleet that another server steers
        self._ray: Any = None  # the RayFleet of a ``ray`` backend, made on first use
        self._config_file = config_file
        self._overrides = dict(overrides or {})
        self._reloading: asyncio.Lock | None = None
        public = [
            Route("/endpoints/{endpoint_name}/invocations", self.invocations, methods=["POST"]),
        ]
        self.access_log: AccessLog | None = None
        if settings.access_log is not None:
            self.access_log = AccessLog(
                settings.access_log,
                max_bytes=int(settings.access_log_max_bytes),
                backups=settings.access_log_backups,
            )
        self.dashboard = Dashboard(
            self.fleet_view, lambda: {name: e.stats for name, e in self.endpoints.items()}
        )
        admin = [
            Route("/dashboard", self.dashboard.page, methods=["GET"]),
            Route("/dashboard/fragment", self.dashboard.fragment, methods=["GET"]),
            Route("/dashboard/data", self.dashboard.data, methods=["GET"]),
            Route("/models/{name:path}/stats", self.model_stats, methods=["GET"]),
            Route("/metrics", self.metrics_endpoint, methods=["GET"]),
            Route("/admin/instances", self.admin_instances, methods=["GET"]),
            Route("/admin/reload", self.admin_reload, methods=["POST"]),
        ]
        self.endpoints: dict[str, _Endpoint] = {}
        self.control: ControlPlane | None = None
        if not settings.sagemaker_container:  # SageMaker's own agent has no control plane
            self.control = ControlPlane(settings, self, lambda text: self._redact(text))
            admin.append(Route("/", self.control_plane, methods=["POST"]))
        if endpoints is None and settings.effective_max_instances == 1 and not self._ray_backed:
            backend = InProcessBackend(settings, Metrics(endpoint=settings.endpoint_name))
            self.endpoints[settings.endpoint_name] = _Endpoint(
                settings.endpoint_name,
                Router({DEFAULT_VARIANT: backend.instances}),
                {DEFAULT_VARIANT: backend},
                {DEFAULT_VARIANT: backend.manager.metrics},
                ModelStats(settings.endpoint_name, settings.model_metrics_top),
            )
            # One instance in this process: its container contract is served too (admin).
            admin += instance_routes(backend.manager)
        else:
            if settings.sagemaker_container:
                raise ValidationError(
                    "The SageMaker container mode serves one instance: it takes no --instances, "
                    "--backend ray or --config."
                )
            if endpoints is None:
                only = VariantConfig(DEFAULT_VARIANT, 1.0, settings)
                endpoints = [EndpointConfig(settings.endpoint_name, (only,))]
            for config in endpoints:
                self.endpoints[config.name] = self._fleet(config, endpoints)
        ping = Route("/ping", self.ping, methods=["GET"])
        self.preloaded = asyncio.Event()  # set once the preload at start is done
        # the endpoints of the flags or the config file; the control plane shows them and
        # leaves them to the file (docs/control-plane.md)
        self.declared = frozenset(self.endpoints)
        self._started_at = time.time()
        folders = private_folders(settings)
        for config in endpoints or ():
            folders += [f for v in config.variants for f in private_folders(v.settings)]
        self._redact = PathRedactor(folders)  # no answer shows these folders' paths
        # every path but /ping is authenticated (docs/security.md): the admin listener's
        # paths need an admin key or token (a middleware); on the public listener the
        # invocations check in their handler, after the one read of the body, and any other
        # path in the not-found handler, so the hot path has no middleware layer to go through
        self._verifier = make_verifier(
            settings.auth, settings.credentials_file, settings.auth_region
        )
        not_found = {404: _unknown_operation, 405: _unknown_operation}
        if settings.sagemaker_container:
            # SageMaker's agent calls the contract on the one port: nothing is served apart.
            self.app = Starlette(
                routes=[ping, *public, *admin],
                lifespan=self._lifespan,
                exception_handlers=not_found,
            )
            self.admin_app: Starlette | None = None
            guarded = [self.app]
        else:
            checked = {404: self._public_not_found, 405: self._public_not_found}
            self.app = Starlette(
                routes=[ping, *public], lifespan=self._lifespan, exception_handlers=checked
            )
            # served by the admin listener (cli.serve), whose lifespan is this app's
            self.admin_app = Starlette(routes=[ping, *admin], exception_handlers=not_found)
            guarded = [self.admin_app]
        if self._verifier is not None:
            for app in guarded:
                app.add_middleware(
                    AuthMiddleware,
                    verifier=self._verifier,
                    max_body_bytes=int(settings.max_body_size),
                    refuse=refusal_response,
                )

    @property
    def _ray_backed(self) -> bool:
        return self.settings.backend == "ray" or self._join

    def _fleet(
        self, config: EndpointConfig, every: list[EndpointConfig], deployment: str = ""
    ) -> _Endpoint:
        """An endpoint whose variants run instance processes (``local`` or ``ray``). A serial
        pipeline's variant runs one backend per step, named ``<variant>/<step>``. On ``ray``
        its instances belong to the fleet's ``deployment`` (default: the endpoint's name)."""
        backends: dict[str, Backend] = {}
        for name, settings in config.groups():
            if self._ray_backed:
                backends[name] = self._ray_fleet(every).backend(
                    settings, deployment or config.name, name
                )
                continue
            several = len(config.variants) > 1 or "/" in name  # a pipeline's step
            prefix = f"{name.replace('/', '-')}-" if several else ""
            backends[name] = LocalBackend(settings, variant=name, id_prefix=prefix)
        pipelines = {
            v.name: [(f"{v.name}/{i}", step) for i, step in enumerate(v.pipeline, 1)]
            for v in config.variants
            if v.pipeline
        }
        routed = {name: backend.instances for name, backend in backends.items()}  # live lists
        for name, steps in pipelines.items():
            routed[name] = backends[steps[0][0]].instances  # drawn by weight, run by steps
        router = Router(
            routed,
            retry_on=(InstanceUnreachableError, InstanceFullError),
            randomly=self.settings.routing == "random",
            weights={v.name: v.weight for v in config.variants},
            balance=not self._ray_backed,  # several routers must agree (see router.py)
        )
        for backend in backends.values():
            backend.on_removed.append(router.forget_instance)
        # The router's own series (invocations, errors, overhead) carry instance="router".
        metrics = {
            name: Metrics(endpoint=config.name, variant=name, instance="router") for name in routed
        }
        stats = ModelStats(config.name, self.settings.model_metrics_top)
        endpoint = _Endpoint(config.name, router, backends, metrics, stats)
        endpoint.pipelines = {
            name: [(step_name, step.accept) for step_name, step in steps]
            for name, steps in pipelines.items()
        }
        return endpoint

    def _ray_fleet(self, endpoints: list[EndpointConfig]) -> Any:
        if self._ray is None:
            from modelfleet.backends.rayfleet import RayFleet  # the ray extra, only when asked for

            self._ray = RayFleet(self.settings.ray_namespace, endpoints, own=not self._join)
        return self._ray

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        backends = [b for e in self.endpoints.values() for b in e.backends.values()]
        try:
            await asyncio.gather(*(b.start() for b in backends))
        except CacheInUseError as exc:  # the reason in one line, before the traceback
            logger.error("cannot start: %s", exc.args[0])
            raise
        for endpoint in self.endpoints.values():
            for name, backend in endpoint.backends.items():
                logger.info(
                    "endpoint '%s' variant '%s' serving model source %s",
                    endpoint.name,
                    name,
                    backend.settings.model_source,
                )
        for endpoint in self.endpoints.values():
            self._run_tasks(endpoint)
        preloading = asyncio.create_task(self._preload(list(self.endpoints.values())))
        sampling = asyncio.create_task(self.dashboard.run(), name="modelfleet-dashboard")
        logging_task = None
        if self.access_log is not None:
            logging_task = asyncio.create_task(self.access_log.run(), name="modelfleet-access")
        if self.control is not None:
            try:
                await self.control.start()
            except CacheInUseError as exc:
                logger.error("cannot start: %s", exc.args[0])
                await asyncio.gather(*(b.stop() for b in backends), return_exceptions=True)
                raise
        loop = asyncio.get_running_loop()
        reloads: set[asyncio.Task[Any]] = set()
        if self._config_file is not None:

            def on_sighup() -> None:
                task = asyncio.create_task(self.reload())
                reloads.add(task)
                task.add_done_callback(reloads.discard)

            loop.add_signal_handler(signal.SIGHUP, on_sighup)
        try:
            yield
        finally:
            if self._config_file is not None:
                loop.remove_signal_handler(signal.SIGHUP)
            preloading.cancel()
            sampling.cancel()
            await asyncio.gather(preloading, sampling, return_exceptions=True)
            if self.control is not None:
                await self.control.stop()
            tasks = [t for e in self.endpoints.values() for t in e.tasks]
            for task in (*reloads, *tasks):
                task.cancel()
            await asyncio.gather(*reloads, *tasks, return_exceptions=True)
            backends = [b for e in self.endpoints.values() for b in e.backends.values()]
            await asyncio.gather(*(b.stop() for b in backends))
            if logging_task is not None:  # the last requests' lines, once they have ended
                logging_task.cancel()
                await asyncio.gather(logging_task, return_exceptions=True)

    async def _preload(self, endpoints: list[_Endpoint]) -> None:
        """Load each variant's ``preload`` models and the ``pin`` names that are not globs,
        each on the instance its requests go to; then set :attr:`preloaded`."""
        try:
            await asyncio.gather(
                *(
                    preload_variant(endpoint.name, name, endpoint.router, backend.settings)
                    for endpoint in endpoints
                    for name, backend in endpoint.backends.items()
                    if name in endpoint.router.variants  # a pipeline's steps are not
                )
            )
        finally:
            self.preloaded.set()

    def _run_tasks(self, endpoint: _Endpoint) -> None:
        """Start an endpoint's background work: the retiring of idle model copies, and an
        autoscaler per elastic variant (it acts while its settings have an autoscale_target)."""
        if any(b.elastic for b in endpoint.backends.values()):
            endpoint.tasks.append(asyncio.create_task(self._retire_copies(endpoint)))
        endpoint.tasks += [
            asyncio.create_task(Autoscaler(endpoint.router, name, backend).run())
            for name, backend in endpoint.backends.items()
            if backend.elastic
        ]

    # -- the control plane's view of the fleet (modelfleet.controlplane.sagemaker.Fleet)

    def serves(self, name: str) -> bool:
        return any(n.lower() == name.lower() for n in self.endpoints)

    async def _start_fleet(self, config: EndpointConfig, single_model: str | None) -> _Endpoint:
        """``config``'s instances, started; an error (and nothing left running) unless every
        variant has an instance up. On ``ray`` they are a deployment of the fleet of their
        own, so that an update runs the new one beside the old."""
        if self._join:
            raise ValidationError(
                "This router joined a Ray fleet that another server steers: make endpoints"
                " through that server's control plane."
            )
        deployment = ""
        if self._ray_backed:
            deployment = self._deployment(config)
        endpoint = self._fleet(config, [config], deployment)
        endpoint.single_model = single_model
        backends = list(endpoint.backends.values())
        try:
            if deployment:
                await self._ray.add_endpoint(dataclasses.replace(config, name=deployment))
            await asyncio.gather(*(b.start() for b in backends))
            down = [
                name
                for name, backend in endpoint.backends.items()
                if not any(i.available() for i in backend.instances)
            ]
            if down:
                raise ServiceUnavailableError(
                    f"no instance of variant(s) {', '.join(down)} came up (see the server log)"
                )
        except BaseException:
            await asyncio.gather(*(b.stop() for b in backends), return_exceptions=True)
            raise
        self._redact.add(
            (f"{config.name}-{v.name}", Path(v.settings.cache_dir)) for v in config.variants
        )
        return endpoint

    def _deployment(self, config: EndpointConfig) -> str:
        """A name in the Ray fleet for ``config``'s instances: the endpoint's and a digest of
        its config (a server restarted beside a surviving fleet finds them again), made
        unique against the deployments running (an update to an identical config)."""
        digest = hashlib.sha256(repr(config).encode()).hexdigest()[:10]
        name, n = f"{config.name}.{digest}", 1
        while name in self._ray.added:
            n += 1
            name = f"{config.name}.{digest}.{n}"
        return name

    async def start_endpoint(self, config: EndpointConfig, single_model: str | None) -> None:
        """Start an endpoint made through the control plane; it takes requests once every
        variant has an instance up."""
        endpoint = await self._start_fleet(config, single_model)
        self.endpoints[config.name] = endpoint
        self._run_tasks(endpoint)

    async def replace_endpoint(self, config: EndpointConfig, single_model: str | None) -> None:
        """Blue/green: start ``config``'s instances beside the running ones, switch the
        endpoint's traffic to them once every variant has one up, then drain the old
        instances (requests in flight finish) and stop them. If the new ones cannot start,
        they are stopped and the endpoint serves on as it was (the error is raised)."""
        old = self.endpoints.get(config.name)
        if old is None:
            raise UnknownEndpointError(f"Endpoint '{config.name}' is not running.")
        new = await self._start_fleet(config, single_model)
        new.stats = old.stats  # the models' counts go on
        self.endpoints[config.name] = new  # new requests go to the new instances from here
        self._run_tasks(new)
        for task in old.tasks:
            task.cancel()
        await asyncio.gather(*old.tasks, return_exceptions=True)
        try:  # the update is done: a drain that fails only shortens the old instances' end
            for backend in old.backends.values():
                drained = await asyncio.gather(
                    *(backend.remove_instance(i) for i in list(backend.instances)),
                    return_exceptions=True,
                )
                for error in drained:
                    if isinstance(error, Exception):
                        logger.warning("%s: an old instance did not drain: %r", config.name, error)
        finally:  # cancelled (the server stops): the old instances stop all the same
            await _stop_all(list(old.backends.values()))

    async def stop_endpoint(self, name: str) -> None:
        """Take an endpoint out of service (new requests get "not found"), then stop it."""
        endpoint = self.endpoints.pop(name, None)
        if endpoint is None:
            return
        for task in endpoint.tasks:
            task.cancel()
        await asyncio.gather(*endpoint.tasks, return_exceptions=True)
        await _stop_all(list(endpoint.backends.values()))

    def set_weights(self, name: str, weights: dict[str, float]) -> None:
        endpoint = self.endpoints.get(name)
        if endpoint is not None:
            endpoint.router.set_weights(weights)

    async def resize(self, name: str, variant: str, count: int) -> None:
        endpoint = self.endpoints.get(name)
        if endpoint is None:
            raise UnknownEndpointError(f"Endpoint '{name}' is not running.")
        for step in self._backends_of(endpoint, variant):
            backend = endpoint.backends[step]
            backend.settings = backend.settings.model_copy(update={"instances": count})
            await backend.resize(count)

    def instance_counts(self, name: str) -> dict[str, tuple[int, int]]:
        """Per variant: the instances up, and those not draining (starting ones included)."""
        endpoint = self.endpoints.get(name)
        if endpoint is None:
            return {}
        counts = {
            variant: (
                sum(1 for i in backend.instances if i.available()),
                sum(1 for i in backend.instances if i.state != InstanceState.DRAINING),
            )
            for variant, backend in endpoint.backends.items()
        }
        for variant, steps in endpoint.pipelines.items():  # as many as its thinnest step
            counts[variant] = (
                min(counts[step][0] for step, _ in steps),
                min(counts[step][1] for step, _ in steps),
            )
        return counts

    def declared_view(self) -> list[dict[str, Any]]:
        """The endpoints of the flags or config file: name, start time, and per variant its
        weight and instances up and not draining."""
        view = []
        for name in sorted(self.declared):
            endpoint = self.endpoints[name]
            counts = self.instance_counts(name)
            weights = endpoint.router.weights
            view.append(
                {
                    "name": name,
                    "since": self._started_at,
                    "variants": {
                        v: (float(weights.get(v, 1.0)), *counts[v]) for v in endpoint.backends
                    },
                }
            )
        return view

    def set_scaling(self, name: str, variant: str, fields: dict[str, Any]) -> None:
        """A variant's autoscaling settings; its autoscaler reads them on its next tick."""
        endpoint = self.endpoints.get(name)
        if endpoint is None:
            return
        for step in self._backends_of(endpoint, variant):
            backend = endpoint.backends[step]
            changed = {"min_instances": None, "max_instances": None, **fields}
            changed.setdefault("instances", backend.settings.instances)
            backend.settings = backend.settings.model_copy(update=changed)

    @staticmethod
    def _backends_of(endpoint: _Endpoint, variant: str) -> list[str]:
        """A variant's backends: its own, or its pipeline's steps (each scaled alike)."""
        if variant in endpoint.pipelines:
            return [step for step, _ in endpoint.pipelines[variant]]
        return [variant] if variant in endpoint.backends else []

    async def control_plane(self, request: Request) -> Response:
        """``POST /`` on the admin listener: SageMaker's control plane (awsJson1.1)."""
        assert self.control is not None
        return await self.control.handle(request)

    async def _retire_copies(self, endpoint: _Endpoint) -> None:
        """Unload the extra copies of models whose demand fell (Router.idle_copies)."""
        idle_s = self.settings.copy_idle_timeout
        while True:
            await asyncio.sleep(min(5.0, idle_s / 2))
            by_id = {i.instance_id: i for i in endpoint.instances()}  # autoscaling changes it
            for model, instance_id in endpoint.router.idle_copies(idle_s):
                if instance_id in by_id and await by_id[instance_id].unload(model):
                    logger.info("unloaded idle copy of %s from instance %s", model, instance_id)

    async def invocations(self, request: Request) -> Response:
        started = time.perf_counter()
        request_id = new_request_id()
        request_id_var.set(request_id)
        endpoint = self.endpoints.get(request.path_params["endpoint_name"])
        # Counted on the variant that serves; before one is chosen, on the first variant.
        metrics = next(iter(endpoint.metrics.values())) if endpoint is not None else None
        variant: str | None = None
        body: bytes | None = None
        counted: str | None = None  # the target model, once it is a valid name
        caller: Caller | None = None
        try:
            if self._verifier is not None:  # before anything that would tell the caller more
                body = await read_body(request, self.settings.max_body_size)
                caller = check(
                    self._verifier,
                    request.scope,
                    body,
                    endpoint=request.path_params["endpoint_name"],
                )
            if endpoint is None:
                raise self._unknown_endpoint(request.path_params["endpoint_name"], caller)
            headers = request.headers
            target = headers.get("x-amzn-sagemaker-target-model")
            if endpoint.single_model is not None:
                if target is not None and target != endpoint.single_model:
                    raise ValidationError(
                        "This endpoint serves one model: send no TargetModel"
                        f" (X-Amzn-SageMaker-Target-Model), or {endpoint.single_model}."
                    )
                target = endpoint.single_model
            if target is None:
                raise ValidationError(
                    "This is a multi-model endpoint: the X-Amzn-SageMaker-Target-Model "
                    "header (TargetModel) is required."
                )
            # Checked up front: a name no source can hold is the client's error (400), never
            # a source failure (503) that clients would retry.
            target = validate_target_model(utf8_header(target, "X-Amzn-SageMaker-Target-Model"))
            target_model_var.set(target)
            counted = target
            if body is None:
                body = await read_body(request, self.settings.max_body_size)
            # Looked up again after the last wait: an update swaps the endpoint between
            # waits, and the instance is picked (and counted in flight, so a drain waits for
            # it) from the endpoint as it is now, with no wait in between.
            endpoint = self.endpoints.get(request.path_params["endpoint_name"])
            if endpoint is None:
                raise self._unknown_endpoint(request.path_params["endpoint_name"], caller)
            asked = headers.get("x-amzn-sagemaker-target-variant")
            if asked is not None and "/" in asked:  # a pipeline's step is no variant
                raise ValidationError(f"Target variant '{asked}' does not exist.")
            variant = endpoint.router.pick_variant(asked)
            steps = endpoint.pipelines.get(variant)
            if steps is None:
                routed = await endpoint.router.invoke(
                    target,
                    body,
                    content_type=headers.get("content-type"),
                    accept=headers.get("accept"),
                    custom_attributes=headers.get("x-amzn-sagemaker-custom-attributes"),
                    variant=variant,
                )
            else:
                routed = await self._through_pipeline(
                    endpoint, variant, steps, target, body, headers
                )
        except ClientDisconnect:
            if metrics is not None:
                metrics.client_disconnects.inc()
            return client_gone(request_id)
        except Refused as refused:
            return refusal_response(refused)
        except Exception as exc:
            response = error_response(
                exc, RUNTIME_ERRORS, request_id=request_id, redact=self._redact
            )
            if endpoint is not None and variant is not None:
                metrics = endpoint.metrics[variant]  # the variant that failed it
            if metrics is not None:
                metrics.invocations.inc()
                if response.status_code >= 500:
                    metrics.invocation_5xx_errors.inc()
                else:
                    metrics.invocation_4xx_errors.inc()
            if endpoint is not None:
                where = variant if variant is not None else next(iter(endpoint.metrics))
                if counted is not None:
                    endpoint.stats.record(where, counted, response.status_code)
                if self.access_log is not None:
                    model = counted or "-"
                    self.access_log.write(endpoint.name, where, model, response.status_code, None)
            return response
        result = routed.result
        if self.access_log is not None:
            self.access_log.write(endpoint.name, routed.variant, target, 200, result)
        endpoint.stats.record(
            routed.variant,
            target,
            200,
            hit=result.cache_hit,
            latency_s=result.model_latency_s,
            load_s=result.load_s,
        )
        metrics = endpoint.metrics[routed.variant]
        metrics.invocations.inc()  # invocations per instance: counted by the instance
        prediction = routed.result.prediction
        response_headers = {
            "x-Amzn-Invoked-Production-Variant": routed.variant,
            "x-amzn-RequestId": request_id,
        }
        if prediction.custom_attributes is not None:
            response_headers["X-Amzn-SageMaker-Custom-Attributes"] = prediction.custom_attributes
        metrics.overhead_latency.observe(
            max(time.perf_counter() - started - routed.result.model_latency_s, 0.0)
        )
        return Response(
            prediction.body, media_type=prediction.content_type, headers=response_headers
        )

    def _unknown_endpoint(self, name: str, caller: Caller | None) -> UnknownEndpointError:
        """The error for an endpoint not served here, naming those the caller may invoke."""
        known = sorted(n for n in self.endpoints if caller is None or caller.allows(n))
        served = f" Endpoints here: {', '.join(known)}." if known else ""
        return UnknownEndpointError(f"Endpoint '{name}' not found.{served}")

    @staticmethod
    async def _through_pipeline(
        endpoint: _Endpoint,
        variant: str,
        steps: list[tuple[str, str | None]],
        target: str,
        body: bytes,
        headers: Any,
    ) -> Routed:
        """A serial inference pipeline: each step's answer is the next step's request (in
        the type the step's container asks for, else the request's), the last answers in
        the request's Accept. The multi-model step serves the request's target model, the
        others their one model."""
        content_type = headers.get("content-type")
        attributes = headers.get("x-amzn-sagemaker-custom-attributes")
        latency = 0.0
        routed: Routed | None = None
        for index, (step, accept) in enumerate(steps):
            last = index == len(steps) - 1
            step_target = endpoint.backends[step].settings.default_target_model or target
            routed = await endpoint.router.invoke(
                step_target,
                body,
                content_type=content_type,
                accept=headers.get("accept") if last else accept or content_type,
                custom_attributes=attributes,
                variant=step,
            )
            latency += routed.result.model_latency_s
            body = routed.result.prediction.body
            content_type = routed.result.prediction.content_type
        assert routed is not None
        result = dataclasses.replace(routed.result, model_latency_s=latency)
        return Routed(result, variant, routed.instance_id)

    async def _public_not_found(self, request: Request, exc: Exception) -> Response:
        """A path or method the public listener does not serve: refused as any unsigned
        request is (with authentication), else 404 UnknownOperationException."""
        if self._verifier is not None:
            try:
                body = await read_body(request, self.settings.max_body_size)
                check(self._verifier, request.scope, body, endpoint=None)
            except ClientDisconnect:
                return client_gone(new_request_id())
            except Refused as refused:
                return refusal_response(refused)
            except PayloadTooLargeError as exc_:
                return refusal_response(Refused("ValidationError", exc_.message, status=413))
        return await _unknown_operation(request, exc)

    async def ping(self, request: Request) -> Response:
        """200 while every endpoint has an instance up (the router can serve), and, where a
        variant asks for it (``ready_after_preload``), once the preload is done; else 503."""
        if not self.preloaded.is_set() and any(
            b.settings.ready_after_preload
            for e in self.endpoints.values()
            for b in e.backends.values()
        ):
            return Response(b"", status_code=503)
        up = all(
            any(i.available() for i in endpoint.instances()) for endpoint in self.endpoints.values()
        )
        return Response(b"", status_code=200 if up else 503)

    async def reload(self) -> list[str]:
        """Re-read the config file and roll its changes out; what changed, as sentences.

        Changed settings or instance counts of a variant are rolled out one instance at a time
        (:meth:`~modelfleet.backends.base.Backend.replace`), new weights at once. Endpoints or
        variants added or removed need a restart: they are reported and left as they are.
        """
        if self._config_file is None:
            raise ValidationError("This server was not started with --config: nothing to reload.")
        if self._reloading is None:
            self._reloading = asyncio.Lock()
        async with self._reloading:
            _, endpoints = load_config(self._config_file, self._overrides)
            done: list[str] = []
            for config in endpoints:
                endpoint = self.endpoints.get(config.name)
                if endpoint is None:
                    done.append(f"endpoint {config.name} is new: restart to serve it")
                    continue
                endpoint.router.set_weights({v.name: v.weight for v in config.variants})
                for variant in config.variants:
                    backend = endpoint.backends.get(variant.name)
                    if backend is None or not backend.elastic:
                        done.append(f"{config.name}/{variant.name} is new: restart to serve it")
                        continue
                    new, old = variant.settings, backend.settings
                    counts = ("instances", "min_instances", "max_instances")
                    if new == old:
                        continue
                    if new.model_copy(update={k: getattr(old, k) for k in counts}) == old:
                        backend.settings = new  # only the count changed: no replacement
                        await backend.resize(new.instances)
                        done.append(f"{config.name}/{variant.name}: {new.instances} instances")
                    else:
                        await backend.replace(new)
                        done.append(f"{config.name}/{variant.name}: instances replaced")
            for line in done:
                logger.info("reload of %s: %s", self._config_file, line)
            return done

    async def admin_reload(self, request: Request) -> Response:
        """``POST /admin/reload``: the same as SIGHUP, answered when the rollout is done."""
        request_id = new_request_id()
        try:
            changes = await self.reload()
        except Exception as exc:
            return error_response(exc, RUNTIME_ERRORS, request_id=request_id, redact=self._redact)
        return JSONResponse({"changes": changes})

    async def fleet_view(self) -> dict[str, Any]:
        """Every instance of every endpoint (``/admin/instances``, the dashboard)."""
        instances: list[dict[str, Any]] = []
        for endpoint in list(self.endpoints.values()):
            for variant, backend in endpoint.backends.items():
                tag = {"endpoint": endpoint.name, "variant": variant}
                instances += [{**tag, **i} for i in await backend.describe()]
        return {"endpoints": list(self.endpoints), "instances": instances}

    async def admin_instances(self, request: Request) -> Response:
        """Every instance of every endpoint, as JSON (``modelfleet status`` prints it)."""
        return JSONResponse(await self.fleet_view())

    async def metrics_endpoint(self, request: Request) -> Response:
        registries = [m for e in self.endpoints.values() for m in e.metrics.values()]
        backends = [b for e in self.endpoints.values() for b in e.backends.values()]
        texts: list[str] = []
        for backend in backends:  # every instance's series of its own, merged in
            texts += await backend.metrics_texts()
        first, *others = registries
        stats = [e.stats for e in self.endpoints.values()]
        return Response(first.render_with(texts, others, stats), media_type=CONTENT_TYPE)

    async def model_stats(self, request: Request) -> Response:
        """``GET /models/{name}/stats``: what the router counted for one target model, per
        endpoint that served it (404 if none did)."""
        name = request.path_params["name"]
        found = [s for e in self.endpoints.values() if (s := e.stats.stats(name)) is not None]
        if not found:
            return error_response(
                NoModelStatsError(f"No invocation of model '{name}' was counted here."),
                INSTANCE_ERRORS,
                request_id=new_request_id(),
                redact=self._redact,
            )
        return JSONResponse({"model": name, "endpoints": found})


async def _stop_all(backends: list[Backend]) -> None:
    """Stop ``backends``, to the end even if the caller is cancelled meanwhile (a server
    stopping while an endpoint is being deleted): no instance process is left running."""
    stopping = asyncio.ensure_future(
        asyncio.gather(*(b.stop() for b in backends), return_exceptions=True)
    )
    try:
        await asyncio.shield(stopping)
    except asyncio.CancelledError:
        await stopping
        raise


async def _unknown_operation(request: Request, exc: Exception) -> Response:
    """What SageMaker answers for a path or method it does not serve (404, JSON)."""
    status = getattr(exc, "status_code", 404)
    return JSONResponse(
        {
            "__type": "UnknownOperationException",
            "message": f"{request.method} {request.url.path} is not an operation of this listener.",
        },
        status_code=status,
        headers={"x-amzn-ErrorType": "UnknownOperationException"},
    )

"""The ``modelfleet`` command: ``serve``, ``invoke``, ``status``, ``examples``.

Flags map one-to-one onto :class:`~modelfleet.config.Settings` fields; a flag left out falls back
to its ``MODELFLEET_*`` environment variable, then to the default. Only this module configures
logging handlers and exits the process.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import ssl
import sys
from pathlib import Path
from typing import Any

import click
import httpx
import pydantic

from modelfleet.cli_models import models, push
from modelfleet.cli_plan import plan
from modelfleet.config import ModelCacheSetting, Settings, format_size
from modelfleet.edge import ContextFilter

DEFAULT_SOURCE = Settings.model_fields["model_source"].default


def _configure_logging(level: str) -> None:
    handler = logging.StreamHandler()
    handler.addFilter(ContextFilter())
    handler.setFormatter(
        logging.Formatter(
            "%(asctime)s %(levelname)s %(name)s [%(request_id)s %(target_model)s] %(message)s"
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


@click.group()
@click.version_option(package_name="modelfleet")
def main() -> None:
    """modelfleet: many models behind one SageMaker-compatible endpoint."""


main.add_command(models)
main.add_command(push)
main.add_command(plan)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def _check_tls(settings: Settings) -> None:
    """Refuse to start with a certificate and key that do not load."""
    if settings.tls_cert is None or settings.tls_key is None:
        return
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
            settings.tls_cert, settings.tls_key
        )
    except (OSError, ssl.SSLError) as exc:
        raise click.UsageError(f"cannot serve HTTPS with --tls-cert/--tls-key: {exc}") from None


def _check_auth(settings: Settings) -> None:
    """Refuse to start open to the network, or with credentials that do not load."""
    if settings.auth == "none":
        if settings.sagemaker_container:
            return  # SageMaker's agent calls unauthenticated, inside the instance's network
        for flag, host in (("--host", settings.host), ("--admin-host", settings.admin_host)):
            if not settings.insecure and not _loopback(host):
                raise click.UsageError(
                    f"refusing to serve on {host} without authentication ({flag}): pass --auth"
                    " sigv4 or --auth token with --credentials-file, or --insecure to serve anyway."
                )
        return
    from modelfleet.auth import make_verifier

    try:
        make_verifier(settings.auth, settings.credentials_file, settings.auth_region)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


SAGEMAKER_DEFAULTS = {"host": "0.0.0.0", "port": 8080, "model_source": "/opt/ml/models"}
"""What the SageMaker container mode listens on and serves, where not given."""


def _sagemaker_defaults(given: dict[str, Any]) -> None:
    import os

    for name, value in SAGEMAKER_DEFAULTS.items():
        if name not in given and f"MODELFLEET_{name.upper()}" not in os.environ:
            given[name] = value


@main.command(
    short_help="Serve an endpoint from a model source (a folder of examples by default), or "
    "the endpoints of a config file."
)
@click.option("--model-source", help="Folder, file:// URI or s3://bucket/prefix/ of artifacts.")
@click.option("--endpoint-name", help="Endpoint name in /endpoints/{name}/invocations.")
@click.option("--host", help="Address to listen on (default 127.0.0.1).")
@click.option(
    "--auth",
    type=click.Choice(["none", "sigv4", "token"]),
    help="Who may call: none (default; loopback only unless --insecure), sigv4 (AWS SigV4, as "
    "boto3 signs) or token (Authorization: Bearer).",
)
@click.option(
    "--credentials-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="TOML file of the [[keys]] and [[tokens]] --auth accepts (docs/security.md).",
)
@click.option("--auth-region", help="Region SigV4 signatures are scoped to (us-east-1).")
@click.option(
    "--tls-cert",
    type=click.Path(dir_okay=False, path_type=Path),
    help="PEM certificate (chain): serve HTTPS. Needs --tls-key.",
)
@click.option(
    "--tls-key", type=click.Path(dir_okay=False, path_type=Path), help="PEM key of --tls-cert."
)
@click.option(
    "--insecure",
    is_flag=True,
    default=None,
    help="Serve without authentication on an address other than loopback.",
)
@click.option("--port", type=int, help="Port to listen on (default 8080; 0 picks a free one).")
@click.option(
    "--admin-host",
    help="Address of the admin listener: container contract, /admin/*, /metrics (127.0.0.1).",
)
@click.option(
    "--admin-port",
    type=int,
    help="Port of the admin listener (default: --port + 1; 0: a free one).",
)
@click.option(
    "--sagemaker-container",
    is_flag=True,
    default=None,
    help="Serve as SageMaker's multi-model container: /ping, /invocations and the container "
    "contract on one port (0.0.0.0:8080), unauthenticated, models under /opt/ml/models.",
)
@click.option("--memory-limit", help="Memory budget for loaded models, e.g. 2GiB.")
@click.option("--disk-limit", help="Disk budget for the artifact cache, e.g. 10GiB.")
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Disk cache folder.")
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False),
    help="The control plane's state folder (~/.local/state/modelfleet); one server each.",
)
@click.option("--account-id", help="The AWS account id in the control plane's ARNs.")
@click.option(
    "--model-cache",
    type=click.Choice([c.value for c in ModelCacheSetting]),
    help="'disabled' unloads and deletes each model after each call.",
)
@click.option("--invoke-timeout", type=float, help="Seconds to wait for a cold model (60).")
@click.option("--max-body-size", help="Largest request body, e.g. 6MiB.")
@click.option("--handler", help="Force one handler for every model (default: detect).")
@click.option(
    "--copy-idle-timeout",
    type=float,
    help="With several instances: seconds an extra copy of a model may idle before it is "
    "unloaded (30).",
)
@click.option(
    "--routing",
    type=click.Choice(["affinity", "random"]),
    help="Instance choice with several instances (default affinity; random is a baseline).",
)
@click.option(
    "--instances",
    type=int,
    help="Instance processes behind the router (default 1: served in the router's process).",
)
@click.option(
    "--autoscale-target",
    type=float,
    help="Target invocations per instance per minute; instances follow it (default 0: off).",
)
@click.option(
    "--backend",
    type=click.Choice(["local", "ray"]),
    help="What runs the instances: local (this machine, default) or ray (a Ray cluster).",
)
@click.option(
    "--ray-address",
    help="With --backend ray: the cluster to join (auto, HOST:PORT); default: start one here.",
)
@click.option("--ray-namespace", help="With --backend ray: the fleet's Ray namespace.")
@click.option(
    "--ray-cpus-per-instance", type=float, help="With --backend ray: CPUs each instance reserves."
)
@click.option(
    "--ray-memory-overhead",
    help="With --backend ray: memory an instance reserves beyond --memory-limit (512MiB).",
)
@click.option(
    "--ray-max-instances-per-node", type=int, help="With --backend ray: most instances a node."
)
@click.option("--min-instances", type=int, help="Fewest instances autoscaling keeps.")
@click.option("--max-instances", type=int, help="Most instances autoscaling starts.")
@click.option("--scale-out-cooldown", type=float, help="Seconds between scale-outs (60).")
@click.option(
    "--scale-in-cooldown", type=float, help="Seconds after scaling before a scale-in (300)."
)
@click.option(
    "--walk-trees/--no-walk-trees",
    default=None,
    help="Predict scikit-learn forests by walking their trees (default: on; same answers).",
)
@click.option(
    "--snapshots/--no-snapshots",
    default=None,
    help="Keep a fast-to-read pickle of loaded scikit-learn models in the disk cache "
    "(default: on).",
)
@click.option(
    "--model-requirements",
    type=click.Choice(["ignore", "install"]),
    help="A model's code/requirements.txt: ignore (default, as SageMaker MME) or install (an "
    "environment and a worker process per model; pip runs what the model source names).",
)
@click.option(
    "--model-requirements-timeout", type=float, help="Seconds pip may take per environment (600)."
)
@click.option("--pip-args", help="Extra pip arguments, e.g. '--no-index --find-links DIR'.")
@click.option("--eviction-policy", help="Eviction policy (lrfu; lru = SageMaker).")
@click.option(
    "--preload",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="File of target models (one a line, or globs) loaded at start, each on the "
    "instance its requests go to (default: none).",
)
@click.option(
    "--ready-after-preload",
    is_flag=True,
    default=None,
    help="/ping answers 503 until the preload is done (default: ready at once).",
)
@click.option(
    "--pin",
    multiple=True,
    help="A target model (or glob) never evicted once loaded; repeat for more. Its bytes "
    "count against --memory-limit (default: none).",
)
@click.option(
    "--access-log",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write one line per invocation to this file, for modelfleet plan (default: none).",
)
@click.option("--access-log-max-bytes", help="Rotate the access log past this size (100MiB).")
@click.option("--access-log-backups", type=int, help="Rotated access logs kept (5).")
@click.option(
    "--model-metrics-top",
    type=int,
    help="Per-model series in /metrics for this many models, by recent traffic; the rest "
    'under model="__other__" (default 50).',
)
@click.option(
    "--idle-ttl",
    type=float,
    help="Seconds a model may go unused before it is unloaded (default 0: never).",
)
@click.option("--max-header-size", help="Largest request line plus headers, e.g. 64KiB (431).")
@click.option("--max-header-count", type=int, help="Most headers in one request (100; 431).")
@click.option("--header-timeout", type=float, help="Seconds for a request's headers (10; 408).")
@click.option("--body-timeout", type=float, help="Seconds for a request's body (60; 408).")
@click.option("--keep-alive-timeout", type=float, help="Seconds an idle connection stays open (5).")
@click.option(
    "--max-connections",
    type=int,
    help="Most open connections; at the cap the longest idle is closed (default: ulimit -n "
    "less max(64, 1/8 of it)).",
)
@click.option(
    "--revalidate-interval",
    type=float,
    help="Seconds between checks of loaded models against the source (default 0: only when "
    "a model is loaded from the disk cache).",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="TOML file declaring endpoints and production variants (docs/fleet.md); flags given "
    "here override its top-level settings (default: none).",
)
@click.option("--log-level", default="info", show_default=True)
def serve(log_level: str, config_file: Path | None, **flags: Any) -> None:
    """Serve one endpoint from a model source (default: a local folder of examples), or the
    endpoints of a config file."""
    _configure_logging(log_level)
    given = {k: v for k, v in flags.items() if v is not None and v != ()}
    endpoints = None
    if config_file is not None:
        from modelfleet.endpoint.variants import ConfigError, load_config

        try:
            settings, endpoints = load_config(config_file, given)
        except ConfigError as exc:
            raise click.UsageError(exc.message) from None
    else:
        if given.get("sagemaker_container") or _env_flag("MODELFLEET_SAGEMAKER_CONTAINER"):
            _sagemaker_defaults(given)
        try:
            settings = Settings(**given)
        except pydantic.ValidationError as exc:
            raise click.UsageError(_settings_error(exc)) from None
        _ensure_examples(settings)
    _check_auth(settings)
    _check_tls(settings)
    _check_sources(settings, endpoints)
    _check_ports(settings)

    from modelfleet.endpoint.app import EndpointServer
    from modelfleet.errors import ModelfleetError

    if settings.sagemaker_container:
        logging.getLogger("modelfleet").warning(
            "SageMaker container mode: the container contract (LoadModel, UnloadModel, ...) "
            "is served on %s:%d without authentication, as SageMaker's agent calls it; never "
            "expose this port outside the instance.",
            settings.host,
            settings.port,
        )
    if settings.backend == "ray":
        _connect_ray(settings.ray_address, settings.ray_namespace)
    try:
        server = EndpointServer(settings, endpoints, config_file=config_file, overrides=given)
    except ModelfleetError as exc:
        raise click.UsageError(exc.message) from None
    _run(server, settings)


def _check_sources(settings: Settings, endpoints: list[Any] | None) -> None:
    """Each model source can be opened (a local folder exists; a URI parses): else one line
    and exit, before anything starts. No request is sent to an object store here."""
    from modelfleet.errors import ModelfleetError
    from modelfleet.source import ModelSource

    every = (
        [settings] if endpoints is None else [step for e in endpoints for name, step in e.groups()]
    )
    for one in every:
        try:
            ModelSource(one.model_source, retries=0, allow_http=one.allow_http)
        except ModelfleetError as exc:
            hint = ""
            if "://" not in one.model_source:
                hint = " Create it, or give another folder or URI with --model-source."
            raise click.UsageError(exc.message + hint) from None


def _check_ports(settings: Settings) -> None:
    """The listeners' ports are free: else one line naming the flag to change, and exit."""
    import errno
    import socket

    wanted = [("--port", settings.host, settings.port)]
    if not settings.sagemaker_container:
        wanted.append(("--admin-port", settings.admin_host, settings.effective_admin_port))
    for flag, host, port in wanted:
        if port == 0:
            continue
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise click.UsageError(
                        f"{host}:{port} is already in use (another server?): pick another"
                        f" port with {flag}."
                    ) from None
                raise click.UsageError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


_COMPUTED_DEFAULTS = {
    "cache_dir": "$XDG_CACHE_HOME/modelfleet (~/.cache/modelfleet)",
    "state_dir": "$XDG_STATE_HOME/modelfleet (~/.local/state/modelfleet)",
}


def _default_text(name: str, field: Any) -> str:
    """A settings field's default as ``--help`` shows it."""
    if name in _COMPUTED_DEFAULTS:
        return _COMPUTED_DEFAULTS[name]
    value = field.get_default(call_default_factory=True)
    if value is None or value in ((), {}):
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, int) and "size" in str(field.metadata) + str(field.annotation).lower():
        return format_size(value)
    return str(getattr(value, "value", value))


def _show_defaults(command: click.Command) -> None:
    """Have each option of ``command`` that sets a settings field show that field's default
    in ``--help`` (those whose help does not say it already)."""
    for param in command.params:
        if not isinstance(param, click.Option) or param.show_default or param.is_flag:
            continue
        field = Settings.model_fields.get(param.name or "")
        said = param.help or ""
        if field is None or "default" in said or re.search(r"\([^()]*\)\.?$", said):
            continue  # not a setting, or its help gives the default, as "(60)" at the end
        param.help = f"{said}  [default: {_default_text(param.name or '', field)}]"


_show_defaults(serve)


def _env_flag(name: str) -> bool:
    import os

    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _run(server: Any, settings: Settings) -> None:
    """Serve ``server``'s public app, and its admin app on the admin listener, until a signal."""
    import asyncio

    import uvicorn

    from modelfleet.instance.bootstrap import tune_process
    from modelfleet.listener import ClientLimits, Follower, listener_config, serve_listeners

    limits = ClientLimits.from_settings(settings)
    tls = settings.tls_options()
    public = listener_config(server.app, limits, host=settings.host, port=settings.port, **tls)
    leader = uvicorn.Server(public)
    admin = []
    if server.admin_app is not None:
        config = listener_config(
            server.admin_app,
            limits,
            host=settings.admin_host,
            port=settings.effective_admin_port,
            lifespan="off",
            **tls,
        )
        admin.append(Follower(config, leader))
    tune_process()
    with asyncio.Runner(loop_factory=public.get_loop_factory()) as runner:
        runner.run(serve_listeners(leader, admin))


def _connect_ray(address: str | None, namespace: str) -> None:
    """Join the Ray cluster at ``address`` (or start one on this machine, without its
    dashboard): a process-wide connection, made by the entry point."""
    try:
        import ray
    except ImportError:
        raise click.UsageError("--backend ray needs Ray: pip install 'modelfleet[ray]'") from None
    if address:
        ray.init(address=address, namespace=namespace, log_to_driver=False)
    else:
        ray.init(namespace=namespace, include_dashboard=False, log_to_driver=False)


@main.command(short_help="Run another router of a Ray fleet that `serve --backend ray` started.")
@click.option("--ray-address", required=True, help="The Ray cluster of the fleet (HOST:PORT).")
@click.option("--ray-namespace", default="modelfleet", show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=int, default=8080, show_default=True, help="Port (0: a free one).")
@click.option("--admin-host", default="127.0.0.1", show_default=True, help="Admin listener.")
@click.option("--admin-port", type=int, help="Admin listener's port (default: --port + 1).")
@click.option("--log-level", default="info", show_default=True)
def router(
    ray_address: str,
    ray_namespace: str,
    host: str,
    port: int,
    admin_host: str,
    admin_port: int | None,
    log_level: str,
) -> None:
    """Another router of a Ray fleet started by ``serve --backend ray``: it routes the fleet's
    endpoints to the same instances (rendezvous hashing over the controller's membership); the
    serve process alone scales and reloads."""
    _configure_logging(log_level)
    _connect_ray(ray_address, ray_namespace)
    import ray

    from modelfleet.backends.ray import CONTROLLER_NAME
    from modelfleet.endpoint.app import EndpointServer

    try:
        controller = ray.get_actor(CONTROLLER_NAME, namespace=ray_namespace)
    except ValueError:
        raise click.UsageError(
            f"no modelfleet fleet in Ray namespace {ray_namespace!r} at {ray_address}: start"
            " one with modelfleet serve --backend ray"
        ) from None
    endpoints = ray.get(controller.config.remote())
    first = endpoints[0].variants[0].settings
    update = {"host": host, "port": port, "backend": "ray", "admin_host": admin_host}
    settings = first.model_copy(update={**update, "admin_port": admin_port})
    _check_auth(settings)  # the fleet's --auth, and its credentials file at the same path here
    _check_tls(settings)  # and its certificate
    _run(EndpointServer(settings, endpoints, join=True), settings)


def _settings_error(exc: pydantic.ValidationError) -> str:
    lines = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "settings"
        lines.append(f"{where.replace('_', '-')}: {error['msg']}")
    return "invalid settings: " + "; ".join(lines)


def _ensure_examples(settings: Settings) -> None:
    """Create the embedded default: a folder of example models, when it is missing."""
    if settings.model_source != DEFAULT_SOURCE:
        return
    folder = Path(settings.model_source)
    if folder.exists() and any(folder.iterdir()):
        return
    from modelfleet.examples import create_examples

    folder.mkdir(parents=True, exist_ok=True)
    names = create_examples(folder)
    click.echo(f"created {len(names)} example models in {folder.resolve()}:", err=True)
    for name in names:
        click.echo(f"  {name}", err=True)


@main.command(short_help="Invoke a target model on a running endpoint and print its answer.")
@click.argument("target_model")
@click.option("--url", default="http://127.0.0.1:8080", show_default=True)
@click.option("--endpoint-name", default="default", show_default=True)
@click.option("--data", "-d", help="Request body as text (use --file for a file, - for stdin).")
@click.option(
    "--file", "-f", "file_", type=click.File("rb"), help="Read the body from a file (- for stdin)."
)
@click.option("--content-type", "-t", default="text/csv", show_default=True)
@click.option("--accept", "-a", default="application/json", show_default=True)
@click.option("--timeout", default=120.0, show_default=True, help="Seconds to wait.")
def invoke(
    target_model: str,
    url: str,
    endpoint_name: str,
    data: str | None,
    file_: Any,
    content_type: str,
    accept: str,
    timeout: float,
) -> None:
    """Invoke TARGET_MODEL on a running endpoint and print the answer."""
    if data is None and file_ is None:
        raise click.UsageError("give the request body with --data or --file")
    body = data.encode() if data is not None else file_.read()
    try:
        response = httpx.post(
            f"{url.rstrip('/')}/endpoints/{endpoint_name}/invocations",
            content=body,
            headers={
                "Content-Type": content_type,
                "Accept": accept,
                "X-Amzn-SageMaker-Target-Model": target_model,
            },
            timeout=timeout,
        )
    except httpx.HTTPError as exc:
        click.echo(f"error: cannot reach {url}: {exc}", err=True)
        sys.exit(2)
    if response.is_success:
        click.echo(response.text)
        return
    try:
        error = json.loads(response.content)
        click.echo(f"{error.get('__type', response.status_code)}: {error.get('message')}", err=True)
    except ValueError:
        click.echo(f"HTTP {response.status_code}: {response.text}", err=True)
    sys.exit(1)


@main.command(short_help="Show a running server's instances, their state, models and memory.")
@click.option(
    "--url", default="http://127.0.0.1:8081", show_default=True, help="The admin listener."
)
@click.option(
    "--token",
    envvar="MODELFLEET_TOKEN",
    help="An admin bearer token, for a server with --auth token ($MODELFLEET_TOKEN).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON of /admin/instances.")
def status(url: str, token: str | None, as_json: bool) -> None:
    """Show the instances of a running endpoint (GET /admin/instances) as a table."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = httpx.get(f"{url.rstrip('/')}/admin/instances", headers=headers, timeout=30)
    except httpx.HTTPError as exc:
        click.echo(f"error: cannot reach {url}: {exc}", err=True)
        sys.exit(2)
    if not response.is_success:
        click.echo(f"error: {url}/admin/instances answered {response.status_code}", err=True)
        sys.exit(1)
    view = response.json()
    if as_json:
        click.echo(json.dumps(view, indent=2))
        return
    from modelfleet.config import format_size

    header = ["endpoint", "variant", "instance", "state", "pid", "in flight", "models", "memory"]
    rows: list[tuple[str, ...]] = [(*header, "hit ratio", "restarts")]
    for i in view["instances"]:
        used, limit = i.get("memory_used_bytes"), i.get("memory_limit_bytes")
        memory = f"{format_size(used)} / {format_size(limit)}" if used is not None else "-"
        ratio = i.get("hit_ratio")
        rows.append(
            (
                str(i["endpoint"]),
                str(i["variant"]),
                str(i["id"]),
                str(i["state"]),
                str(i["pid"] or "-"),
                str(i["in_flight"]),
                str(len(i["loaded"])) if "loaded" in i else "-",
                memory,
                f"{ratio:.3f}" if ratio is not None else "-",
                str(i.get("restarts", 0)),
            )
        )
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))


@main.command(short_help="Write the example models into a folder.")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
def examples(folder: Path) -> None:
    """Write the example models into FOLDER."""
    from modelfleet.examples import create_examples

    folder.mkdir(parents=True, exist_ok=True)
    for name in create_examples(folder):
        click.echo(name)


@main.command(hidden=True)
@click.option("--fd", type=int, required=True, help="Listening socket inherited from the router.")
@click.option("--instance-id", default="0")
@click.option("--parent-pid", type=int, help="Exit when this process is gone.")
@click.option("--variant", default="AllTraffic", help="The production variant it serves.")
@click.option("--log-level", default="info", show_default=True)
def instance(
    fd: int, instance_id: str, parent_pid: int | None, variant: str, log_level: str
) -> None:
    """One instance of a ``local`` backend (started by ``serve --instances N``), which writes
    its settings as JSON to the instance's standard input."""
    import os
    import socket
    import threading
    import time

    import uvicorn

    from modelfleet.instance.bootstrap import tune_process
    from modelfleet.instance.server import create_instance_app
    from modelfleet.listener import ClientLimits, listener_config

    _configure_logging(log_level)
    raw = sys.stdin.read()
    if not raw.strip():
        raise click.UsageError("no settings on standard input: instances are started by a router")
    settings = Settings.model_validate_json(raw)
    if parent_pid is not None:

        def watch_parent() -> None:  # the router is gone (even by SIGKILL): do not linger
            while os.getppid() == parent_pid:
                time.sleep(0.5)
            os.kill(os.getpid(), 15)  # a graceful stop first
            time.sleep(15.0)
            os._exit(1)  # a stuck call or shutdown must not keep an orphan alive

        threading.Thread(target=watch_parent, name="modelfleet-parent-watch", daemon=True).start()
    app = create_instance_app(settings, instance_id=instance_id, variant=variant)
    # The client limits hold here too (only the router connects), except that idle router
    # connections are kept longer than the router keeps them (backends/local.py: 60 s).
    limits = ClientLimits.from_settings(settings).with_keep_alive(75.0)
    config = listener_config(app, limits)
    # Not uvicorn's ``fd=``: it takes the descriptor for a Unix socket, and the event loop then
    # leaves Nagle's algorithm on for these TCP connections (40 ms per request, measured).
    listener = socket.socket(fileno=fd)
    tune_process()
    uvicorn.Server(config).run(sockets=[listener])

"""Settings: read once at start (flags, ``MODELFLEET_*`` environment, defaults), then frozen.

Every ``modelfleet serve`` flag has a field here of the same name, and every field can be set by
the environment variable ``MODELFLEET_<FIELD>`` (``--memory-limit 2GiB`` is
``MODELFLEET_MEMORY_LIMIT=2GiB``). Flags win over the environment. Sizes take bytes or a unit:
``512MiB``, ``2GiB``, ``1.5GB``.
"""

from __future__ import annotations

import os
import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, PositiveFloat, PositiveInt, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from modelfleet.controlplane.instance_types import InstanceSize

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "t": 1000**4,
    "tb": 1000**4,
    "tib": 1024**4,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(value: Any) -> int:
    """Parse a byte size: an int, or a string such as ``"512MiB"``, ``"2GB"``, ``"1048576"``."""
    if isinstance(value, bool):
        raise ValueError("a size must be a number of bytes or a string like '512MiB'")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if isinstance(value, float):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return int(value)
    if not isinstance(value, str):
        raise ValueError("a size must be a number of bytes or a string like '512MiB'")
    match = _SIZE_RE.match(value)
    if match is None or match.group(2).lower() not in _UNITS:
        raise ValueError(f"invalid size {value!r}: use bytes or a unit such as 512MiB, 2GiB, 1GB")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def format_size(num_bytes: float) -> str:
    """Format bytes for people: ``1.5 GiB``."""
    size = float(num_bytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"  # pragma: no cover - loop always returns


ByteSize = Annotated[int, BeforeValidator(parse_size)]


class ModelCacheSetting(StrEnum):
    """SageMaker's ``ModelCacheSetting``."""

    ENABLED = "enabled"
    DISABLED = "disabled"


def _default_cache_dir() -> Path:
    return Path.home() / ".cache" / "modelfleet"


def reserved_variable(name: str) -> bool:
    """Whether an instance's ``environment`` may not set ``name`` (the process's own)."""
    upper = name.upper()
    return upper in ("PATH", "HOME") or upper.startswith(("LD_", "PYTHON", "MODELFLEET_"))


def _default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "modelfleet"


class Settings(BaseSettings):
    """All settings of one endpoint served by one process with one instance."""

    model_config = SettingsConfigDict(
        env_prefix="MODELFLEET_",
        frozen=True,
        extra="forbid",
        use_attribute_docstrings=True,
        case_sensitive=False,
    )

    model_source: str = "./modelfleet-models"
    """Where artifacts live: a folder, ``file://`` URI, or ``s3://bucket/prefix/``."""

    endpoint_name: str = Field(default="default", min_length=1, max_length=63)
    """The endpoint's name in ``/endpoints/{name}/invocations``; other names are rejected."""

    host: str = "127.0.0.1"
    """Address to listen on."""

    port: int = Field(default=8080, ge=0, le=65535)
    """Port to listen on (0 picks a free one)."""

    admin_host: str = "127.0.0.1"
    """Address of the admin listener: the container contract, ``/admin/*``, ``/metrics``."""

    admin_port: int | None = Field(default=None, ge=0, le=65535)
    """Port of the admin listener; default ``port`` + 1 (a free one when ``port`` is 0)."""

    sagemaker_container: bool = False
    """SageMaker's bring-your-own multi-model container: one listener (``host``:``port``, by
    default 0.0.0.0:8080) serves ``/ping``, ``/invocations`` and the container contract to
    SageMaker's agent, unauthenticated, as SageMaker expects; no admin listener."""

    memory_limit: ByteSize = Field(default=parse_size("2GiB"), gt=0)
    """Memory budget for loaded models (sum of their measured footprints)."""

    disk_limit: ByteSize = Field(default=parse_size("10GiB"), gt=0)
    """Disk budget for the artifact cache folder."""

    cache_dir: Path = Field(default_factory=_default_cache_dir)
    """Folder of the disk cache; reused (re-indexed) across restarts."""

    model_cache: ModelCacheSetting = ModelCacheSetting.ENABLED
    """``disabled`` unloads and deletes a model after each invocation (SageMaker semantics)."""

    invoke_timeout: PositiveFloat = 60.0
    """Seconds a request waits for a cold model before ModelNotReadyException (429)."""

    auth: Literal["none", "sigv4", "token"] = "none"
    """Who may call: ``none`` (only allowed on a loopback address unless ``insecure``),
    ``sigv4`` (AWS Signature Version 4, as boto3 signs) or ``token`` (``Authorization: Bearer``);
    the keys and tokens come from ``credentials_file`` (docs/security.md)."""

    credentials_file: Path | None = None
    """TOML file of the access keys (``[[keys]]``) and tokens (``[[tokens]]``) ``auth`` accepts,
    with the endpoints each may invoke."""

    auth_region: str = Field(default="us-east-1", min_length=1)
    """The region SigV4 signatures must be scoped to (the clients' ``region_name``)."""

    insecure: bool = False
    """Serve without authentication on an address other than loopback."""

    tls_cert: Path | None = None
    """PEM certificate (chain) to serve HTTPS with; needs ``tls_key``."""

    tls_key: Path | None = None
    """PEM private key of ``tls_cert``."""

    max_body_size: ByteSize = Field(default=parse_size("6MiB"), gt=0)
    """Largest accepted request body."""

    eviction_policy: str = "lrfu"
    """Memory eviction policy: ``lrfu`` (default, see docs/eviction.md), ``lru``, ``gdsf``..."""

    preload: Path | None = None
    """A file of target models to load at start, one a line (blank lines and ``#`` comments
    skipped; a line with ``*``, ``?`` or ``[`` is a glob over the model source's listing, ``*``
    crossing folders). Each model is loaded on the instance its requests go to."""

    ready_after_preload: bool = False
    """``/ping`` answers 503 until the preload (``preload``, and the ``pin`` names that are
    not globs) is done, so that a load balancer sends nothing before."""

    pin: tuple[str, ...] = ()
    """Target models (names or globs) that stay loaded once loaded: never evicted for room,
    memory pressure or ``idle_ttl``; only an explicit unload removes one. Their bytes count
    against ``memory_limit``: a model that cannot fit beside the pinned ones fails its load at
    once (507, naming the pinned bytes). The names that are not globs are preloaded."""

    access_log: Path | None = None
    """A file that gets one line per invocation (docs/metrics.md): time, endpoint, variant,
    target model, artifact and memory bytes, where the model was, load and download seconds,
    status. None: no access log."""

    access_log_max_bytes: ByteSize = Field(default=parse_size("100MiB"), gt=0)
    """Past this size the access log is rotated (``FILE.1``, ``FILE.2``, ...)."""

    access_log_backups: int = Field(default=5, ge=0, le=1000)
    """Rotated access logs kept."""

    model_metrics_top: int = Field(default=50, ge=0, le=10_000)
    """Per-model series in ``/metrics`` for this many models, those with the most recent
    traffic; every other model's requests are counted under ``model="__other__"``."""

    idle_ttl: float = Field(default=0.0, ge=0)
    """Seconds a loaded model may go unused before it is unloaded; 0: never (the eviction
    policy alone decides). Pinned models stay."""

    rss_high_water: ByteSize | None = None
    """Process RSS above which idle models are evicted; default: RSS at start + memory limit
    + max(64 MiB, 10% of it), raised by the RSS of framework imports."""

    load_concurrency: PositiveInt | None = None
    """Models loading at once; default 2 x CPUs (4 x CPUs with the model cache disabled). Loads
    in flight also reserve at most a quarter of the memory budget between them."""

    download_concurrency: PositiveInt | None = None
    """Artifacts downloading at once; default 4 x CPUs (8 x CPUs with the cache disabled)."""

    inference_concurrency: PositiveInt | None = None
    """Inference calls running at once; default max(4, 2 x CPUs)."""

    inline_inference_ms: float = Field(default=1.0, ge=0.0)
    """Models averaging at most this many ms per call run on the event loop (0: never)."""

    inline_load_ms: float = Field(default=5.0, ge=0.0)
    """Loads from a load snapshot of an artifact whose last load took at most this many ms
    run on the event loop when no other load is running (0: never)."""

    max_artifact_size: ByteSize = Field(default=parse_size("20GiB"), gt=0)
    """Largest total size an archive may unpack to."""

    max_artifact_files: PositiveInt = 100_000
    """Most files an archive may unpack to."""

    handler: str | None = None
    """Force one handler for every model (``sklearn``, ``xgboost``, ...); default: detect."""

    instances: PositiveInt = 1
    """Instances behind the router: 1 serves in the router's process (``inprocess``); N > 1
    starts N instance subprocesses (``local``), each with these budgets and its own cache
    folder ``<cache_dir>/instance-<i>``."""

    backend: Literal["local", "ray"] = "local"
    """What runs the instances: ``local`` (in this process when there is one instance, else
    subprocesses on this machine) or ``ray`` (Ray actors across a Ray cluster, see
    docs/ray.md)."""

    ray_address: str | None = None
    """With ``backend = "ray"``: the cluster to join (``auto``, ``HOST:PORT``); none starts a
    Ray of its own on this machine."""

    ray_namespace: str = Field(default="modelfleet", min_length=1)
    """With ``backend = "ray"``: the Ray namespace of the fleet's named actors (its controller,
    named ``controller``, and its instances); one fleet per namespace."""

    ray_cpus_per_instance: PositiveFloat = 1.0
    """With ``backend = "ray"``: the CPUs each instance actor reserves (``num_cpus``)."""

    ray_memory_overhead: ByteSize = Field(default=parse_size("512MiB"), ge=0)
    """With ``backend = "ray"``: memory an instance actor reserves on top of ``memory_limit``
    (the process, its libraries and requests in flight)."""

    ray_max_instances_per_node: PositiveInt | None = None
    """With ``backend = "ray"``: at most this many instances of the fleet on one node (none:
    no cap; instances are spread over nodes either way)."""

    autoscale_target: float = Field(default=0.0, ge=0.0)
    """With several instances: target invocations per instance per minute (SageMaker's
    ``SageMakerVariantInvocationsPerInstance`` target tracking); 0 turns autoscaling off."""

    min_instances: PositiveInt | None = None
    """Fewest instances autoscaling keeps (default: ``instances``)."""

    max_instances: PositiveInt | None = None
    """Most instances autoscaling starts (default: ``instances``)."""

    scale_out_cooldown: float = Field(default=60.0, ge=0.0)
    """Seconds after a scale-out before the next one."""

    scale_in_cooldown: float = Field(default=300.0, ge=0.0)
    """Seconds after any scaling before a scale-in (``inf``: never scale in)."""

    autoscale_interval: float = Field(default=10.0, gt=0.0, le=10.0)
    """Seconds between autoscaling evaluations (at most 10)."""

    autoscale_window: float = Field(default=60.0, gt=0.0)
    """Seconds of traffic the invocations-per-minute figure averages over."""

    hang_timeout: PositiveFloat = 30.0
    """With several instances: seconds an instance that was up may fail its health checks (its
    process alive) before the router kills it, to be restarted."""

    copy_idle_timeout: PositiveFloat = 30.0
    """With several instances: seconds an extra copy of a model (on more instances than its
    home) may serve nothing before the router unloads it."""

    routing: Literal["affinity", "random"] = "affinity"
    """How the router picks an instance: ``affinity`` (holders, then rendezvous hashing under a
    load bound; see docs/fleet.md) or ``random`` (a baseline for benchmarks)."""

    walk_trees: bool = True
    """Predict scikit-learn forests by walking their trees (same answers, ~15x less per row)."""

    snapshots: bool = True
    """Save a model loaded from a scikit-learn artifact as a pickle beside the artifact in the
    disk cache, read back ~6x faster than joblib when the model is loaded again."""

    model_requirements: Literal["ignore", "install"] = "ignore"
    """What a model's ``code/requirements.txt`` does: ``ignore`` (as SageMaker's multi-model
    containers; a missing module fails the load and names the file) or ``install`` (the model
    gets an environment of its own, built with pip, and a worker process: docs/handlers.md)."""

    model_requirements_timeout: PositiveFloat = 600.0
    """Seconds pip may take to build one model's environment before the load fails."""

    pip_args: str = ""
    """Extra arguments for pip when it builds a model's environment (shell words), e.g.
    ``--no-index --find-links /srv/wheels`` or ``--index-url https://pypi.internal/simple``."""

    source_timeout: PositiveFloat = 30.0
    """Seconds before one object-store request times out."""

    source_retries: int = Field(default=3, ge=0, le=20)
    """Retries of a failed object-store request (timeouts, 5xx, connection errors)."""

    allow_http: bool = False
    """Allow plain-http object-store endpoints that are not loopback."""

    revalidate_interval: float = Field(default=0.0, ge=0.0)
    """Seconds between checks of the loaded models against the model source (one metadata
    request each): a changed or deleted artifact leaves memory and the next request loads the
    new version. 0 (default): a model is checked only when it is loaded from the disk cache."""

    # -- client limits (modelfleet.listener; both the serve and the instance listeners)
    max_header_size: ByteSize = Field(default=parse_size("64KiB"), ge=1024)
    """Largest request line plus headers; past it the client gets 431 and is disconnected."""

    max_header_count: PositiveInt = 100
    """Most headers in one request; past it the client gets 431 and is disconnected."""

    header_timeout: PositiveFloat = 10.0
    """Seconds a request's headers may take from its first byte (408, then closed)."""

    body_timeout: PositiveFloat = 60.0
    """Seconds a request's whole body may take after its headers (408, then closed)."""

    keep_alive_timeout: PositiveFloat = 5.0
    """Seconds a connection with no request in progress stays open (a new one included)."""

    max_connections: PositiveInt | None = None
    """Most open client connections; at the cap a new one closes the longest idle. Default and
    ceiling: the descriptor limit (``ulimit -n``) less max(64, 1/8 of it)."""

    state_dir: Path = Field(default_factory=_default_state_dir)
    """The control plane's state (models, endpoint configs, endpoints made through the
    SageMaker API): a SQLite file, one server per folder. Default
    ``$XDG_STATE_HOME/modelfleet`` (``~/.local/state/modelfleet``)."""

    account_id: str = Field(default="000000000000", pattern=r"^\d{12}$")
    """The AWS account id in the ARNs the control plane answers."""

    instance_types: dict[str, InstanceSize] = Field(default_factory=dict)
    """Instance types added to, or changed in, the built-in table a production variant's
    ``InstanceType`` is looked up in (docs/control-plane.md); config file only."""

    environment: dict[str, str] = Field(default_factory=dict)
    """Environment variables of this variant's instance processes (the control plane sets a
    SageMaker container's ``Environment`` here): what a model's ``inference.py`` reads with
    ``os.environ``. Not for the process's own workings: ``PATH``, ``HOME``, ``LD_*``,
    ``PYTHON*`` and ``MODELFLEET_*`` are refused."""

    default_target_model: str | None = None
    """A single-model endpoint: requests name no target model and get this one (what the
    control plane sets for a ``SingleModel`` container); a request naming another is refused."""

    @model_validator(mode="after")
    def _check(self) -> Settings:
        reserved = [name for name in self.environment if reserved_variable(name)]
        if reserved:
            raise ValueError(
                f"environment: {', '.join(sorted(reserved))} would change how the instance"
                " process itself runs (PATH, HOME, LD_*, PYTHON* and MODELFLEET_* are the"
                " server's)"
            )
        if self.rss_high_water is not None and self.rss_high_water < self.memory_limit:
            raise ValueError("rss_high_water must be at least memory_limit")
        if not self.effective_min_instances <= self.instances <= self.effective_max_instances:
            raise ValueError("instances must lie between min_instances and max_instances")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        if self.admin_port is None and self.port == 65535:
            raise ValueError("admin_port: give one (the default, port + 1, is past 65535)")
        if self.admin_port is not None and self.admin_port == self.port != 0:
            raise ValueError("admin_port must differ from port")
        return self

    @property
    def effective_admin_port(self) -> int:
        """The admin listener's port (0: a free one)."""
        if self.admin_port is not None:
            return self.admin_port
        return self.port + 1 if self.port else 0

    def tls_options(self) -> dict[str, str]:
        """uvicorn's options for HTTPS (none without a certificate)."""
        if self.tls_cert is None or self.tls_key is None:
            return {}
        return {"ssl_certfile": str(self.tls_cert), "ssl_keyfile": str(self.tls_key)}

    @property
    def effective_min_instances(self) -> int:
        return self.instances if self.min_instances is None else self.min_instances

    @property
    def effective_max_instances(self) -> int:
        return self.instances if self.max_instances is None else self.max_instances

    @property
    def cpu_count(self) -> int:
        return os.cpu_count() or 1

    @property
    def effective_load_concurrency(self) -> int:
        if self.load_concurrency is not None:
            return self.load_concurrency
        factor = 4 if self.model_cache is ModelCacheSetting.DISABLED else 2
        return factor * self.cpu_count

    @property
    def effective_download_concurrency(self) -> int:
        if self.download_concurrency is not None:
            return self.download_concurrency
        factor = 8 if self.model_cache is ModelCacheSetting.DISABLED else 4
        return factor * self.cpu_count

    @property
    def effective_inference_concurrency(self) -> int:
        if self.inference_concurrency is not None:
            return self.inference_concurrency
        return max(4, 2 * self.cpu_count)

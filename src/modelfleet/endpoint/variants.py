"""Endpoints and production variants from a config file (``modelfleet serve --config FILE``).

The file is TOML. Its top-level keys are settings (any ``serve`` flag, snake_case) for the
router and defaults for every variant; each ``[[endpoints]]`` table names an endpoint, and each
of its ``[[endpoints.variants]]`` tables a variant: ``name``, ``weight`` (default 1: a variant's
traffic share is its weight over the sum of its endpoint's weights) and any setting that
applies to its instances (``instances``, ``model_source``, ``memory_limit``, ``disk_limit``,
``model_cache``, ``eviction_policy``...). A variant's cache folder defaults to
``<cache_dir>/<endpoint>/<variant>``. See docs/fleet.md for an example.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydantic

from modelfleet.config import Settings
from modelfleet.errors import ValidationError

_ROUTER_ONLY = {
    "host",
    "port",
    "endpoint_name",
    "routing",
    "copy_idle_timeout",
    "backend",
    "ray_address",
    "ray_namespace",
    "ray_max_instances_per_node",  # counted over the whole fleet
    "state_dir",  # the control plane's
    "account_id",
    "instance_types",
}
# SageMaker's rule for endpoint and variant names (they also name cache folders)
_NAME = re.compile(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}")
_NAME_RULE = "must be 1-63 letters, digits and hyphens, starting and ending with a letter or digit."
_MAX_WEIGHT = 1e6


@dataclass(frozen=True)
class PipelineStep:
    """One container of a serial inference pipeline: its instances' settings (its model
    source; a single-model step names its model in ``default_target_model``) and the type
    its answer is asked in when another step follows (None: the request's content type)."""

    settings: Settings
    accept: str | None = None


@dataclass(frozen=True)
class VariantConfig:
    name: str
    weight: float
    settings: Settings  # what its instances run with (a pipeline: those of its first step)
    pipeline: tuple[PipelineStep, ...] = ()  # a serial inference pipeline's steps, in order


@dataclass(frozen=True)
class EndpointConfig:
    name: str
    variants: tuple[VariantConfig, ...]

    def groups(self) -> list[tuple[str, Settings]]:
        """Each group of instances the endpoint runs, with its settings: one per variant, and
        one per step of a serial pipeline's variant, named ``<variant>/<step>`` from 1."""
        groups: list[tuple[str, Settings]] = []
        for variant in self.variants:
            if variant.pipeline:
                groups += [
                    (f"{variant.name}/{i}", step.settings)
                    for i, step in enumerate(variant.pipeline, 1)
                ]
            else:
                groups.append((variant.name, variant.settings))
        return groups


class ConfigError(ValidationError):
    """The config file is invalid (the message says where)."""


def load_config(path: Path, overrides: dict[str, Any]) -> tuple[Settings, list[EndpointConfig]]:
    """The router's settings and the endpoints declared in ``path``.

    ``overrides`` (flags given on the command line) win over the file's top-level settings.
    """
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"Cannot read config file {path}: {exc}") from exc
    endpoints = data.pop("endpoints", None)
    if not isinstance(endpoints, list) or not endpoints:
        raise ConfigError(f"{path}: declare at least one [[endpoints]] table.")
    base = {**data, **overrides}
    router = _settings(base, f"{path}: top level")
    declared: list[EndpointConfig] = []
    for index, table in enumerate(endpoints):
        where = f"{path}: endpoints[{index}]"
        if not isinstance(table, dict):
            raise ConfigError(f"{where} must be a table.")
        table = dict(table)
        name = table.pop("name", None)
        variants = table.pop("variants", None)
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ConfigError(f"{where}: name {name!r} {_NAME_RULE}")
        if table:
            raise ConfigError(f"{where} ({name}): unknown keys {sorted(table)}.")
        if not isinstance(variants, list) or not variants:
            raise ConfigError(f"{where} ({name}) needs at least one [[endpoints.variants]].")
        parsed = tuple(
            _variant(v, base, router, name, f"{where}.variants[{i}]")
            for i, v in enumerate(variants)
        )
        names = [v.name for v in parsed]
        if len(set(names)) != len(names):
            raise ConfigError(f"{where} ({name}): variant names repeat: {names}.")
        if sum(v.weight for v in parsed) <= 0:
            raise ConfigError(f"{where} ({name}): the variants' weights sum to 0.")
        declared.append(EndpointConfig(name, parsed))
    names = [e.name for e in declared]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: endpoint names repeat: {names}.")
    folders: dict[Path, str] = {}
    for endpoint in declared:
        for variant in endpoint.variants:
            folder = Path(variant.settings.cache_dir).resolve()
            other = folders.setdefault(folder, f"{endpoint.name}/{variant.name}")
            if other != f"{endpoint.name}/{variant.name}":
                raise ConfigError(
                    f"{path}: {other} and {endpoint.name}/{variant.name} share the cache folder"
                    f" {folder}; each variant needs its own."
                )
    return router, declared


def _variant(
    table: Any, base: dict[str, Any], router: Settings, endpoint: str, where: str
) -> VariantConfig:
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table.")
    table = dict(table)
    name = table.pop("name", None)
    weight = table.pop("weight", 1.0)
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(f"{where}: name {name!r} {_NAME_RULE}")
    if (
        isinstance(weight, bool)
        or not isinstance(weight, int | float)
        or not 0 <= weight <= _MAX_WEIGHT
    ):
        raise ConfigError(f"{where} ({name}): weight must be a number from 0 to {_MAX_WEIGHT}.")
    misplaced = sorted(_ROUTER_ONLY & set(table))
    if misplaced:
        raise ConfigError(f"{where} ({name}): {misplaced} are router settings (top level).")
    fields = {**base, **table, "endpoint_name": endpoint}
    fields.setdefault("cache_dir", str(Path(router.cache_dir) / endpoint / name))
    if "cache_dir" in base and "cache_dir" not in table:
        fields["cache_dir"] = str(Path(base["cache_dir"]) / endpoint / name)
    return VariantConfig(name, float(weight), _settings(fields, f"{where} ({name})"))


def _settings(fields: dict[str, Any], where: str) -> Settings:
    try:
        return Settings(**fields)
    except pydantic.ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"{where}: {problems}") from None


EXAMPLE = """\
# modelfleet serve --config fleet.toml
port = 8080
memory_limit = "2GiB"          # per instance, for every variant unless it says otherwise

[[endpoints]]
name = "recommendations"

[[endpoints.variants]]
name = "current"
weight = 3                     # 75% of the traffic
instances = 2
model_source = "s3://my-bucket/models/v1/"

[[endpoints.variants]]
name = "candidate"
weight = 1                     # 25%
instances = 1
model_source = "s3://my-bucket/models/v2/"
memory_limit = "1GiB"

[[endpoints]]
name = "fraud"

[[endpoints.variants]]
name = "AllTraffic"
instances = 2
model_source = "./fraud-models"
"""

"""AWS JSON wire shapes from botocore's own service models: input checks and output encoding.

botocore ships every service's model (members, types, lengths, patterns, enums) for its
clients; the server reads the same files, so what it accepts and answers is what boto3 sends
and parses, never a copy kept by hand. botocore's own ``ParamValidator`` checks only what a
client must (required members, types, minimums); a service also enforces maximums, patterns
and enums, so :func:`check` walks a shape itself and words its findings as the service does::

    2 validation errors detected: Value null at 'modelName' failed to satisfy constraint:
    Member must not be null; Value 'a b' at 'endpointName' failed to satisfy constraint: ...
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import json
import math
import re
from typing import TYPE_CHECKING, Any

from modelfleet.errors import SerializationError, ValidationError

if TYPE_CHECKING:
    from botocore.model import OperationModel, ServiceModel, Shape

_MAX_FINDINGS = 10  # the service lists at most this many in one message


@functools.cache
def service_model(name: str) -> ServiceModel:
    """botocore's model of ``name`` (``sagemaker``, ``application-autoscaling``); ImportError
    without botocore (the ``aws`` extra)."""
    import botocore.session

    return botocore.session.get_session().get_service_model(name)


def operation(service: ServiceModel, name: str) -> OperationModel | None:
    try:
        return service.operation_model(name)
    except Exception:  # botocore.exceptions.OperationNotFoundError
        return None


def parse_body(body: bytes) -> dict[str, Any]:
    """A request body: a JSON object (empty means ``{}``), else SerializationException."""
    if not body.strip():
        return {}
    try:
        value = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SerializationError(f"The request body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise SerializationError("The request body must be a JSON object.")
    return value


def check(shape: Shape | None, value: dict[str, Any], *, unchecked: frozenset[str]) -> None:
    """ValidationError listing what in ``value`` breaks ``shape`` (the first ten findings).

    ``unchecked``: member names whose pattern is not enforced (modelfleet takes more than the
    service there, such as a local folder as ``ModelDataUrl``).
    """
    if shape is None:
        return
    findings: list[str] = []
    _walk(shape, value, "", findings, unchecked, True)
    if findings:
        count = len(findings)
        noun = "error" if count == 1 else "errors"
        shown = "; ".join(findings[:_MAX_FINDINGS])
        raise ValidationError(f"{count} validation {noun} detected: {shown}")


def _camel(name: str) -> str:
    return name[:1].lower() + name[1:]


def _shown(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, str):
        return f"'{value}'"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return f"'{value}'"
    return "'" + json.dumps(value, separators=(",", ":"))[:200] + "'"


@functools.lru_cache(maxsize=512)
def _pattern(text: str) -> re.Pattern[str] | None:
    try:
        return re.compile(text)
    except re.error:  # a Java construct Python lacks: not enforced
        return None


def _walk(
    shape: Shape,
    value: Any,
    path: str,
    findings: list[str],
    unchecked: frozenset[str],
    patterns: bool,
) -> None:
    def fail(constraint: str) -> None:
        findings.append(
            f"Value {_shown(value)} at '{path}' failed to satisfy constraint: {constraint}"
        )

    kind = shape.type_name
    meta = shape.metadata
    if kind == "structure":
        if not isinstance(value, dict):
            fail("Member must be a structure")
            return
        for name in shape.required_members:
            if value.get(name) is None:
                where = f"{path}.{_camel(name)}" if path else _camel(name)
                findings.append(
                    f"Value null at '{where}' failed to satisfy constraint: Member must not be null"
                )
        for name, member in shape.members.items():
            if value.get(name) is None:
                continue
            where = f"{path}.{_camel(name)}" if path else _camel(name)
            checked = patterns and name not in unchecked
            _walk(member, value[name], where, findings, unchecked, checked)
        return
    if kind == "list":
        if not isinstance(value, list):
            fail("Member must be a list")
            return
        _length(value, meta, fail)
        for index, item in enumerate(value, start=1):
            _walk(shape.member, item, f"{path}.{index}.member", findings, unchecked, patterns)
        return
    if kind == "map":
        if not isinstance(value, dict):
            fail("Member must be a map")
            return
        _length(value, meta, fail)
        for key, item in value.items():
            _walk(shape.key, key, f"{path}.key", findings, unchecked, patterns)
            _walk(shape.value, item, f"{path}.{key}.value", findings, unchecked, patterns)
        return
    if kind == "string":
        if not isinstance(value, str):
            fail("Member must be a string")
            return
        if shape.enum and value not in shape.enum:
            fail(f"Member must satisfy enum value set: [{', '.join(shape.enum)}]")
            return
        _length(value, meta, fail)
        pattern = meta.get("pattern")
        if pattern and patterns:
            compiled = _pattern(pattern)
            if compiled is not None and not compiled.fullmatch(value):
                fail(f"Member must satisfy regular expression pattern: {pattern}")
        return
    if kind in ("integer", "long"):
        if isinstance(value, bool) or not isinstance(value, int):
            fail("Member must be an integer")
            return
        _range(value, meta, fail)
        return
    if kind in ("float", "double"):
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            fail("Member must be a number")
            return
        _range(value, meta, fail)
        return
    if kind == "boolean":
        if not isinstance(value, bool):
            fail("Member must be a boolean")
        return
    if kind == "timestamp":
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            fail("Member must be a timestamp")
        return
    if kind == "blob" and not isinstance(value, str):
        fail("Member must be base64 text")


def _length(value: Any, meta: dict[str, Any], fail: Any) -> None:
    size = len(value)
    if "min" in meta and size < meta["min"]:
        fail(f"Member must have length greater than or equal to {meta['min']}")
    if "max" in meta and size > meta["max"]:
        fail(f"Member must have length less than or equal to {meta['max']}")


def _range(value: float, meta: dict[str, Any], fail: Any) -> None:
    if "min" in meta and value < meta["min"]:
        fail(f"Member must have value greater than or equal to {meta['min']}")
    if "max" in meta and value > meta["max"]:
        fail(f"Member must have value less than or equal to {meta['max']}")


def timestamp(value: Any) -> dt.datetime | None:
    """An input timestamp (epoch seconds, or ISO 8601 text) as an aware datetime."""
    if value is None:
        return None
    if isinstance(value, int | float):
        return dt.datetime.fromtimestamp(value, dt.UTC)
    try:
        parsed = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise ValidationError(f"Value '{value}' is not a timestamp.") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def encode(shape: Shape | None, value: Any) -> Any:
    """``value`` (plain dicts and lists, datetimes) as the JSON ``shape`` answers: timestamps
    as epoch seconds, blobs as base64, members outside the shape and None left out."""
    if shape is None or value is None:
        return None
    kind = shape.type_name
    if kind == "structure":
        out = {}
        for name, member in shape.members.items():
            if name in value and value[name] is not None:
                out[name] = encode(member, value[name])
        return out
    if kind == "list":
        return [encode(shape.member, item) for item in value]
    if kind == "map":
        return {key: encode(shape.value, item) for key, item in value.items()}
    if kind == "timestamp":
        if isinstance(value, dt.datetime):
            return round(value.timestamp(), 3)
        return value
    if kind == "blob" and isinstance(value, bytes):
        return base64.b64encode(value).decode()
    return value

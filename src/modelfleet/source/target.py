"""Target-model names: validation and naming helpers.

A target model is a key relative to the model source (``customer-17/model.tar.gz``). Requests
choose it, so it is untrusted: :func:`validate_target_model` runs on the hot path of every
invocation, before anything touches a file or the network, and accepts only names that are

- 1 to 1024 characters long, every character printable (no NUL, tab, newline or other control
  character; spaces and non-ASCII letters are fine),
- relative: no leading ``/``, no Windows drive (``C:``), no backslash at all,
- normalized: segments separated by single ``/``, none of them empty (``a//b``, a trailing ``/``),
  ``.`` or ``..``,
- made of segments of at most 255 bytes in UTF-8, the longest file name of the usual file
  systems (``NAME_MAX``), which a folder source maps segments to.

A name past a length limit is the client's error (400): refused here, it never reaches the
source, which would fail with "file name too long" and be reported as an outage (503).

One name maps to one object or folder and to one cache entry: ``m`` and ``m/`` or ``./m`` are not
two spellings of the same model, only ``m`` is accepted.

The checks are pure string operations (no regular expression on the common path), so a valid
name costs a few hundred nanoseconds.
"""

from __future__ import annotations

from modelfleet.errors import InvalidTargetModelError

__all__ = [
    "ARCHIVE_SUFFIXES",
    "MAX_SEGMENT_BYTES",
    "MAX_TARGET_MODEL_LENGTH",
    "archive_mode",
    "is_archive",
    "validate_target_model",
]

MAX_TARGET_MODEL_LENGTH = 1024
"""Longest accepted target model, in characters (SageMaker's limit)."""

MAX_SEGMENT_BYTES = 255
"""Longest accepted segment (between two ``/``) of a target model, in UTF-8 bytes."""

ARCHIVE_SUFFIXES: dict[str, str] = {".tar.gz": "r|gz", ".tgz": "r|gz", ".tar": "r|"}
"""Key suffixes unpacked on fetch, with the tarfile stream mode each needs."""

_ASCII_LETTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _reject(name: str, reason: str) -> InvalidTargetModelError:
    shown = name if len(name) <= 80 else name[:77] + "..."
    return InvalidTargetModelError(f"Invalid target model {shown!r}: {reason}.")


def validate_target_model(name: str) -> str:
    """Return ``name`` if it is a safe, normalized target model; raise otherwise.

    Raises:
        InvalidTargetModelError: the name is empty, too long, not printable, absolute, or not
            normalized. The message says which rule failed.
    """
    if not isinstance(name, str):
        raise InvalidTargetModelError(
            f"Invalid target model: expected a string, got {type(name).__name__}."
        )
    if not name:
        raise InvalidTargetModelError("Invalid target model: it is empty.")
    if len(name) > MAX_TARGET_MODEL_LENGTH:
        raise _reject(
            name,
            f"it is {len(name)} characters long, the limit is {MAX_TARGET_MODEL_LENGTH}",
        )
    if not name.isprintable():
        # isprintable() is False for NUL, every other control character and line separators.
        raise _reject(name, "it contains a non-printable character (NUL, tab, newline, ...)")
    if "\\" in name:
        raise _reject(name, "it contains a backslash; separate folders with '/'")
    if name[0] == "/":
        raise _reject(name, "it must be relative to the model source, not start with '/'")
    if len(name) >= 2 and name[1] == ":" and name[0] in _ASCII_LETTERS:
        raise _reject(name, "it must be relative to the model source, not start with a drive")
    for segment in name.split("/"):
        if segment in ("", ".", ".."):
            raise _reject(name, _segment_reason(segment))
        # 4 bytes a character at most: only a segment this long can exceed the limit in bytes
        if len(segment) * 4 > MAX_SEGMENT_BYTES and len(segment.encode()) > MAX_SEGMENT_BYTES:
            raise _reject(
                name,
                f"a segment ('{segment[:20]}...') is {len(segment.encode())} bytes long in UTF-8,"
                f" the limit is {MAX_SEGMENT_BYTES}",
            )
    return name


def _segment_reason(segment: str) -> str:
    if segment == "..":
        return "'..' segments are not allowed"
    if segment == ".":
        return "'.' segments are not allowed; use the normalized name"
    return "empty segments ('a//b' or a trailing '/') are not allowed; use the normalized name"


def archive_mode(target_model: str) -> str | None:
    """Return the tarfile stream mode to unpack ``target_model`` with, or None if not an archive.

    ``.tar.gz`` and ``.tgz`` are gzip-compressed tar archives (SageMaker's ``model.tar.gz``),
    ``.tar`` is a plain tar archive. The match ignores case.
    """
    lowered = target_model.lower()
    for suffix, mode in ARCHIVE_SUFFIXES.items():
        if lowered.endswith(suffix):
            return mode
    return None


def is_archive(target_model: str) -> bool:
    """Whether fetching ``target_model`` unpacks it (``.tar.gz``, ``.tgz`` or ``.tar``)."""
    return archive_mode(target_model) is not None

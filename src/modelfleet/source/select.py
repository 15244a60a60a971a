"""Choosing target models by name or glob: ``--pin`` patterns and ``--preload`` files.

A pattern with ``*``, ``?`` or ``[`` is a glob (:func:`fnmatch.fnmatchcase`, where ``*``
crosses folders: ``customer-*`` matches ``customer-17/model.tar.gz``); any other is one
target model's name.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from pathlib import Path

from modelfleet.errors import ValidationError
from modelfleet.source.store import ModelSource

_GLOB = frozenset("*?[")
MAX_PRELOAD_LINES = 100_000


def is_glob(pattern: str) -> bool:
    return not _GLOB.isdisjoint(pattern)


def matches(name: str, patterns: Iterable[str]) -> bool:
    """Whether ``name`` is one of ``patterns`` or matches one of their globs."""
    return any(fnmatch.fnmatchcase(name, p) if is_glob(p) else name == p for p in patterns)


def read_preload(path: Path) -> list[str]:
    """The patterns of a preload file: one a line, blank lines and ``#`` comments skipped."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValidationError(f"Cannot read the preload file {path}: {exc}") from None
    patterns = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            patterns.append(line)
    if len(patterns) > MAX_PRELOAD_LINES:
        raise ValidationError(
            f"The preload file {path} has {len(patterns)} lines; at most {MAX_PRELOAD_LINES}."
        )
    return patterns


def expand(patterns: list[str], source: ModelSource) -> list[str]:
    """The target models ``patterns`` name, in their order, each once: names as given, globs
    by the source's listing (read once, and only if there is a glob)."""
    listed: list[str] | None = None
    chosen: dict[str, None] = {}
    for pattern in patterns:
        if not is_glob(pattern):
            chosen[pattern] = None
            continue
        if listed is None:
            listed = sorted(info.target_model for info in source.list())
        chosen.update((name, None) for name in listed if fnmatch.fnmatchcase(name, pattern))
    return list(chosen)

"""Loading one model in a worker thread, and measuring what it costs in memory.

A model's footprint is the largest of the process RSS growth during its load, the growth of the
bytes malloc has handed out (which sees memory the load took from heap pages an earlier unload
freed, where the RSS does not grow), the handler's own figure and the size of its files. The
growth figures are only trusted when they can be the model's: not when another load ran at the
same time, and not when the load imported a framework (that growth stays with the process after
the model goes; it is reported separately so the instance can raise its RSS high-water mark by
it).
"""

from __future__ import annotations

import itertools
import sys
import time
from pathlib import Path
from typing import NamedTuple

from modelfleet.cache.disk import tree_size
from modelfleet.errors import ModelError, ModelLoadError, ValidationError
from modelfleet.handlers import load_model
from modelfleet.handlers.base import LoadedModel
from modelfleet.handlers.isolation import ROOT_PACKAGE
from modelfleet.instance.pools import OverlapTracker, allocated_bytes, current_rss


class Loaded(NamedTuple):
    """What :meth:`Loader.load` measured."""

    model: LoadedModel
    size: int  # footprint charged to the memory budget, bytes
    load_s: float
    imported: int  # RSS growth of framework imports during the load (0: none)


class Loader:
    """Loads models with a handler (detected, or the one configured) and sizes them."""

    def __init__(self, *, handler: str | None, walk_trees: bool = True) -> None:
        self._handler = handler
        self._walk_trees = walk_trees
        self._overlaps = OverlapTracker()

    def load(self, name: str, url: Path, disk_bytes: int, snapshot: Path | None = None) -> Loaded:
        """Load ``url`` as ``name`` (blocking), from its ``snapshot`` if it has a usable one."""
        modules_before = len(sys.modules)
        with self._overlaps.track() as overlap:
            rss_before, allocated_before = current_rss(), allocated_bytes()
            started = time.perf_counter()
            try:
                model = load_model(
                    url,
                    model_id=name,
                    handler=self._handler,
                    walk_trees=self._walk_trees,
                    snapshot=snapshot,
                )
            except ModelError:
                raise
            except Exception as exc:
                raise ModelLoadError(f"Model '{name}' failed to load: {exc}") from exc
            load_s = time.perf_counter() - started
            grown = current_rss() - rss_before
            allocated = allocated_bytes() - allocated_before
        imported = 0
        if _imported_shared(modules_before):
            imported, grown, allocated = max(grown, 0), 0, 0
        elif overlap.happened:
            grown = allocated = 0  # other loads grew the process too: not this model's
        size = max(grown, allocated, model.size_bytes() or 0, disk_bytes, 1)
        return Loaded(model, size, load_s, imported)


def _imported_shared(before: int) -> bool:
    """Whether modules other than models' private code namespaces were imported since
    ``sys.modules`` held ``before`` names (new names come last: it is an insertion-ordered
    dict; a namespace dropped meanwhile shifts the window, which only blurs a load's size)."""
    return any(
        not name.startswith(ROOT_PACKAGE)
        for name in itertools.islice(list(sys.modules), before, None)
    )


def folder_size(path: Path) -> int:
    """Bytes under the LoadModel folder ``path``; ValidationError if it is not a folder."""
    if not path.is_dir():
        raise ValidationError(f"Model url '{path}' is not a folder on this instance.")
    return tree_size(path)

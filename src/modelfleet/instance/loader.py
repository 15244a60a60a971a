"""Loading one model in a worker thread, and measuring what it costs in memory.

A model's footprint is the largest of the process RSS growth during its load, the growth of the
bytes malloc has handed out (which sees memory the load took from heap pages an earlier unload
freed, where the RSS does not grow), the handler's own figure and the size of its files. The
growth figures are only trusted when they can be the model's: not when another load (or an
unload, which frees memory and allocates some, or a load snapshot's write, which allocates about
a model's size) ran at the same time, and not when the load
imported a framework (that growth stays with the process after the model goes; it is reported
separately so the instance can raise its RSS high-water mark by it).

Neither growth figure sees most of a small model: CPython serves objects of up to 512 bytes from
its own arenas, which malloc does not count and which an unload leaves mapped for the next load
to reuse. For models that measure under ``WALK_BELOW`` and whose handler gives no size of its
own, the loader therefore walks the model's object graph and adds the bytes of its small objects
(a 10-feature LogisticRegression is ~1 KB on disk and ~2.8 KB in memory, 2 KB of it in small
objects).

A load that fails gives its memory back before its error leaves the load thread: what the
failure shows of the model's code is logged, the frames of its traceback (whose locals hold what
the load had built, a 300 MB array for instance) are cleared and the exception chain is cut, and
a full collection and a heap trim follow (:func:`failed_load`). Otherwise the error's traceback,
held by the load's task in a reference cycle, kept that memory until the next full collection,
minutes later. Whatever the model's code raises, ``SystemExit`` and ``KeyboardInterrupt``
included, is its failure: a :class:`~modelfleet.errors.ModelLoadError` (424).
"""

from __future__ import annotations

import gc
import itertools
import logging
import sys
import time
import traceback
import types
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple, cast

from modelfleet.cache.disk import tree_size
from modelfleet.config import Settings
from modelfleet.errors import ModelError, ModelLoadError, ModelUrlNotFoundError, ValidationError
from modelfleet.handlers import load_model
from modelfleet.handlers.arraymodel import first_line
from modelfleet.handlers.base import LoadedModel
from modelfleet.handlers.environments import Environments
from modelfleet.handlers.isolation import ROOT_PACKAGE
from modelfleet.instance.pools import (
    OverlapTracker,
    allocated_bytes,
    current_rss,
    release_memory,
)
from modelfleet.source.uri import local_folder

logger = logging.getLogger(__name__)


class Loaded(NamedTuple):
    """What :meth:`Loader.load` measured."""

    model: LoadedModel
    size: int  # footprint charged to the memory budget, bytes
    load_s: float  # wall seconds
    imported: int  # RSS growth of framework imports during the load (0: none)
    cpu_s: float  # CPU seconds of the loading thread (what the load cost the machine)


class Loader:
    """Loads models with a handler (detected, or the one configured) and sizes them."""

    def __init__(
        self,
        *,
        handler: str | None,
        walk_trees: bool = True,
        environments: Environments | None = None,
    ) -> None:
        self._handler = handler
        self._walk_trees = walk_trees
        self._environments = environments
        # loads, unloads and snapshot writes (which free and allocate too)
        self.overlaps = OverlapTracker()

    def load(self, name: str, url: Path, disk_bytes: int, snapshot: Path | None = None) -> Loaded:
        """Load ``url`` as ``name`` (blocking), from its ``snapshot`` if it has a usable one."""
        modules_before = len(sys.modules)
        with self.overlaps.track() as overlap:
            rss_before, allocated_before = current_rss(), allocated_bytes()
            started = time.perf_counter()
            cpu_started = time.thread_time()
            failure: ModelError | None = None
            try:
                model = load_model(
                    url,
                    model_id=name,
                    handler=self._handler,
                    walk_trees=self._walk_trees,
                    snapshot=snapshot,
                    environments=self._environments,
                )
            except BaseException as exc:  # SystemExit too: it would stop the event loop
                failure = failed_load(name, exc)
            if failure is not None:  # raised outside the handler: no context to chain
                release_memory(collect=True)
                raise failure
            load_s = time.perf_counter() - started
            cpu_s = time.thread_time() - cpu_started
            grown = current_rss() - rss_before
            allocated = allocated_bytes() - allocated_before
        imported = 0
        if _imported_shared(modules_before):
            imported, grown, allocated = max(grown, 0), 0, 0
        elif overlap.happened:
            grown = allocated = 0  # other loads grew the process too: not this model's
        declared = model.size_bytes()
        size = max(grown, allocated, declared or 0, disk_bytes, 1)
        if declared is None and size < WALK_BELOW:
            size = max(size, max(allocated, 0) + small_object_bytes(model))
        return Loaded(model, size, load_s, imported, cpu_s)


def failed_load(name: str, exc: BaseException) -> ModelError:
    """The error for the failed load of ``name``, with the memory ``exc`` held let go.

    Logs the traceback of what failed (the model's code, or the framework) first; then clears
    the frames of every traceback in the exception's chain and cuts the chain, so that nothing
    the load built stays reachable from the error that propagates.
    """
    error = exc if isinstance(exc, ModelError) else None
    cause = exc if error is None else (exc.__cause__ or exc.__context__)
    if cause is not None:
        logger.info(
            "model %s failed to load:\n%s",
            name,
            "".join(traceback.format_exception(cause)).rstrip(),
        )
    release_frames(exc)
    if error is None:
        error = ModelLoadError(
            f"Model '{name}' failed to load: {type(exc).__name__}: {first_line(exc)}"
        )
    elif isinstance(error, ModelLoadError) and error.archives:
        # a folder of the source holding archives, asked for by the folder's name
        inside = " or ".join(f"'{name.rstrip('/')}/{a}'" for a in error.archives[:3])
        error = ModelLoadError(
            f"Model '{name}' is a folder holding {', '.join(error.archives[:3])}: invoke"
            f" {inside} as the target model."
        )
    error.__cause__ = error.__context__ = None
    return error


def release_frames(exc: BaseException) -> None:
    """Clear the locals of the finished frames in the tracebacks of ``exc`` and of the
    exceptions chained to it, and drop those tracebacks."""
    seen: set[int] = set()
    stack = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        traceback.clear_frames(current.__traceback__)  # skips the frames still running
        current.__traceback__ = None
        stack.extend(e for e in (current.__cause__, current.__context__) if e is not None)
        if isinstance(current, BaseExceptionGroup):
            stack.extend(current.exceptions)


WALK_BELOW = 256 * 1024  # bigger models: their small objects are ~1% of what they measure
_SMALL_OBJECT = 512  # CPython's small-object allocator serves requests up to this size
_MAX_VISITS = 5_000  # bounds the walk (~0.5 ms)


def small_object_bytes(root: object) -> int:
    """Bytes of the objects of at most 512 bytes reachable from ``root``, the model's own.

    Classes, modules, builtin functions, loggers and functions defined at the top of a module
    are shared, so the walk does not enter them; nor a function's globals (a closure's cells
    are walked), nor dict keys (attribute names, interned and shared). At most
    ``_MAX_VISITS`` objects are looked at, however wide the graph. An estimate: what goes
    wrong while walking (a dict another thread changes) ends the walk with what it has counted.
    """
    seen = {id(root)}
    stack = [root]
    total = 0
    try:
        while stack:
            obj = stack.pop()
            kind = type(obj)  # not obj.__class__, which a proxy may compute
            try:
                size = sys.getsizeof(obj, 0)
            except BaseException:  # a model's own __sizeof__ that fails (or calls sys.exit)
                size = 0
            if size <= _SMALL_OBJECT:
                total += size
            room = _MAX_VISITS - len(seen)
            if room <= 0:
                continue  # count what is queued, queue nothing more
            children: Iterable[object]
            if kind is dict:
                children = cast(dict[object, object], obj).values()
            elif kind is list or kind is tuple:
                children = cast(list[object], obj)  # iterated in place, not copied
            elif kind is types.FunctionType:
                cells = cast(types.FunctionType, obj).__closure__ or ()
                children = [cell.cell_contents for cell in cells if _filled(cell)]
            else:
                children = gc.get_referents(obj)
            for child in itertools.islice(children, room):
                if id(child) not in seen and not _shared(child):
                    seen.add(id(child))
                    stack.append(child)
    except BaseException:  # model code (a __sizeof__ or a proxy) may raise anything
        logger.debug("walking a model's objects stopped early", exc_info=True)
    return total


_SHARED = (type, types.ModuleType, types.BuiltinFunctionType, logging.Logger)


def _shared(obj: object) -> bool:
    """Whether ``obj`` belongs to the process rather than to one model: a class, a module, a
    builtin function, a logger, or a function defined at the top of an imported module (as
    ``print`` is when a library replaces it: Ray's workers do)."""
    kind = type(obj)
    if issubclass(kind, _SHARED):
        return True
    if kind is types.FunctionType:
        function = cast(types.FunctionType, obj)
        module = sys.modules.get(function.__module__)
        return getattr(module, function.__qualname__, None) is function
    return False


def _filled(cell: types.CellType) -> bool:
    try:
        cell.cell_contents  # noqa: B018 - raises ValueError while the cell is empty
    except ValueError:
        return False
    return True


def _imported_shared(before: int) -> bool:
    """Whether modules other than models' private code namespaces were imported since
    ``sys.modules`` held ``before`` names (new names come last: it is an insertion-ordered
    dict; a namespace dropped meanwhile shifts the window, which only blurs a load's size)."""
    if len(sys.modules) == before:
        return False  # the usual case, without copying the ~2,000 names (0.1 ms)
    return any(
        not name.startswith(ROOT_PACKAGE)
        for name in itertools.islice(list(sys.modules), before, None)
    )


def folder_size(path: Path) -> int:
    """Bytes under the LoadModel folder ``path``: ModelUrlNotFoundError if there is nothing
    there, ValidationError if it is not a folder."""
    if not path.exists():
        raise ModelUrlNotFoundError(str(path))
    if not path.is_dir():
        raise ValidationError(f"Model url '{path}' is not a folder on this instance.")
    return tree_size(path)


def private_folders(settings: Settings) -> list[tuple[str, Path]]:
    """The folders of ``settings`` whose paths answers never show, with the names shown for
    them: the cache folder and a local model source's folder."""
    folders = [("cache", Path(settings.cache_dir))]
    if (local := local_folder(settings.model_source)) is not None:
        folders.append(("model-source", local))
    return folders


def loadable(url: str, settings: Settings) -> Path:
    """LoadModel's ``url``, if it lies under the model source's folder or the cache folder
    (symbolic links resolved); anything else, ``/etc`` or ``../..`` included, is refused
    before the path is touched further."""
    roots = [folder.resolve() for _, folder in private_folders(settings)]
    path = Path(url)
    resolved = path.resolve() if path.is_absolute() else None
    if resolved is None or not any(resolved.is_relative_to(root) for root in roots):
        raise ValidationError(
            "LoadModel url must be an absolute path to a folder under the model source or "
            "the cache folder (--model-source, --cache-dir)."
        )
    return resolved

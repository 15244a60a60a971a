"""Per-model module namespaces for ``code/`` folders.

SageMaker puts one model's ``code/`` folder on ``sys.path``; a process that serves many models
cannot, since two models' ``helper.py`` would share one ``sys.modules["helper"]``. Instead each
loaded model gets a private package, ``_modelfleet_models.m<n>_<model id>``, whose ``__path__``
is the model's ``code/`` folder:

* a meta-path finder (installed once) finds ``_modelfleet_models.<model>.<name>`` in that folder
  and loads ``.py`` files with a loader that gives each module the model's own ``__builtins__``;
* those builtins carry a per-model ``__import__`` that turns an absolute ``import helper``,
  ``from helper import x`` or ``import pkg.sub`` into an import of the model's copy when
  ``helper``/``pkg`` is a module or package at the top of its ``code/`` folder; everything else
  (numpy, the standard library) goes to the normal import system, and relative imports work as
  usual inside the private package;
* :meth:`ModelNamespace.close` removes the model's modules from ``sys.modules``.

Limits: ``importlib.import_module("helper")`` and other imports that bypass ``__import__`` are not
redirected; packages in ``code/`` need an ``__init__.py`` to be seen as top-level names; C
extensions in ``code/`` load under the private name but the shared library is loaded once per
process; ``requirements.txt`` is not installed (``--model-requirements install`` serves such a model
from a worker process in an environment of its own instead: :mod:`.worker`); the loader never writes
``__pycache__`` into the artifact; process-wide state (logging configuration, environment variables,
monkeypatches of shared libraries) is not isolated.
"""

from __future__ import annotations

import builtins
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import itertools
import logging
import re
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing_extensions import Buffer

logger = logging.getLogger(__name__)

ROOT_PACKAGE = "_modelfleet_models"

_real_import = builtins.__import__
_counter = itertools.count(1)
_namespaces: dict[str, ModelNamespace] = {}
_install_lock = threading.Lock()


class _PackageLoader(importlib.abc.Loader):
    """Creates an empty package module (the root, a model's package, a folder without init)."""

    def __init__(self, model_builtins: dict[str, Any] | None) -> None:
        self._builtins = model_builtins

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return None

    def exec_module(self, module: ModuleType) -> None:
        if self._builtins is not None:
            module.__dict__["__builtins__"] = self._builtins


class _SourceLoader(importlib.machinery.SourceFileLoader):
    """Loads a ``.py`` file with the model's ``__builtins__`` and no bytecode writes."""

    def __init__(self, fullname: str, path: str, model_builtins: dict[str, Any]) -> None:
        super().__init__(fullname, path)
        self._builtins = model_builtins

    def exec_module(self, module: ModuleType) -> None:
        module.__dict__["__builtins__"] = self._builtins
        super().exec_module(module)

    def set_data(self, path: str, data: Buffer, *, _mode: int = 0o666) -> None:
        """Never write ``__pycache__`` into the artifact folder."""


class _ModelFinder(importlib.abc.MetaPathFinder):
    """Finds the root package, each model's package and the modules in its ``code/``."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname == ROOT_PACKAGE:
            spec = importlib.machinery.ModuleSpec(fullname, _PackageLoader(None), is_package=True)
            spec.submodule_search_locations = []
            return spec
        if not fullname.startswith(ROOT_PACKAGE + "."):
            return None
        parts = fullname.split(".")
        namespace = _namespaces.get(".".join(parts[:2]))
        if namespace is None:
            return None
        if len(parts) == 2:
            return namespace.package_spec()
        return namespace.find_spec(fullname, parts[-1], path or [])


_finder = _ModelFinder()


def _install_finder() -> None:
    with _install_lock:
        if _finder not in sys.meta_path:
            sys.meta_path.insert(0, _finder)


def _safe_name(model_id: str) -> str:
    return re.sub(r"\W", "_", model_id, flags=re.ASCII)[:48]


class ModelNamespace:
    """One model's private package over its ``code/`` folder."""

    def __init__(self, code_dir: Path, model_id: str) -> None:
        self.code_dir = code_dir
        self.model_id = model_id
        self.package = f"{ROOT_PACKAGE}.m{next(_counter)}_{_safe_name(model_id)}"
        self.builtins: dict[str, Any] = dict(builtins.__dict__)
        self.builtins["__import__"] = self._import
        self.top_level: frozenset[str] = frozenset()
        self._closed = False

    def open(self) -> None:
        """List the folder's top-level modules and make the package importable."""
        names = set()
        for entry in self.code_dir.iterdir():
            if entry.suffix == ".py" and entry.is_file() and entry.stem.isidentifier():
                names.add(entry.stem)
            elif entry.name.isidentifier() and (entry / "__init__.py").is_file():
                names.add(entry.name)
        self.top_level = frozenset(names)
        _install_finder()
        _namespaces[self.package] = self
        logger.debug("Opened namespace %s for %s", self.package, self.code_dir)

    def import_module(self, name: str) -> ModuleType:
        """Import ``name`` (a module of ``code/``) as this model's copy."""
        return importlib.import_module(f"{self.package}.{name}")

    def module_names(self) -> list[str]:
        """The names in ``sys.modules`` that belong to this model."""
        prefix = self.package + "."
        return [
            name for name in list(sys.modules) if name == self.package or name.startswith(prefix)
        ]

    def close(self) -> None:
        """Forget the model's modules: drop them from ``sys.modules`` and the root package."""
        if self._closed:
            return
        self._closed = True
        _namespaces.pop(self.package, None)
        for name in self.module_names():
            sys.modules.pop(name, None)
        root = sys.modules.get(ROOT_PACKAGE)
        if root is not None:
            root.__dict__.pop(self.package.rpartition(".")[2], None)
        logger.debug("Closed namespace %s", self.package)

    def package_spec(self) -> importlib.machinery.ModuleSpec:
        spec = importlib.machinery.ModuleSpec(
            self.package, _PackageLoader(self.builtins), is_package=True
        )
        spec.submodule_search_locations = [str(self.code_dir)]
        return spec

    def find_spec(
        self, fullname: str, tail: str, path: Sequence[str]
    ) -> importlib.machinery.ModuleSpec | None:
        for directory in path:
            folder = Path(directory) / tail
            init = folder / "__init__.py"
            if init.is_file():
                return importlib.util.spec_from_file_location(
                    fullname,
                    init,
                    loader=_SourceLoader(fullname, str(init), self.builtins),
                    submodule_search_locations=[str(folder)],
                )
            source = Path(directory) / f"{tail}.py"
            if source.is_file():
                return importlib.util.spec_from_file_location(
                    fullname, source, loader=_SourceLoader(fullname, str(source), self.builtins)
                )
            if folder.is_dir():
                spec = importlib.machinery.ModuleSpec(
                    fullname, _PackageLoader(self.builtins), is_package=True
                )
                spec.submodule_search_locations = [str(folder)]
                return spec
        return None  # e.g. a C extension: the path finder loads it, not isolated

    def _import(
        self,
        name: str,
        globals: Mapping[str, object] | None = None,
        locals: Mapping[str, object] | None = None,
        fromlist: Sequence[str] | None = (),
        level: int = 0,
    ) -> ModuleType:
        """``__import__`` for the model's code: its own top-level names come from ``code/``."""
        if level == 0:
            first = name.partition(".")[0]
            if first in self.top_level:
                module = _real_import(f"{self.package}.{name}", globals, locals, fromlist, 0)
                if fromlist:
                    return module
                return sys.modules[f"{self.package}.{first}"]
        return _real_import(name, globals, locals, fromlist, level)

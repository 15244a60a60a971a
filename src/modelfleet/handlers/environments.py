"""Per-model Python environments for ``code/requirements.txt`` (``--model-requirements install``).

SageMaker's multi-model containers ignore a model's ``code/requirements.txt``; so does modelfleet
by default. With ``model_requirements = "install"``, an ``inference.py`` model whose artifact
carries one is served by a worker process (:mod:`.worker`) running in an environment built for
that file:

* one environment per distinct file (its bytes, the pip arguments and the Python version,
  hashed), under ``<cache_dir>/envs/<hash>/``, shared by every model with the same file and kept
  across restarts;
* built with the standard library's ``venv`` (pip included) and ``python -m pip install -r
  requirements.txt`` run in the model's ``code/`` folder (relative paths in the file work), with
  ``pip_args`` appended (``--no-index --find-links /wheels`` for a server without an index) and a
  time limit; pip's output goes to the log at INFO;
* then the server's own packages are appended behind the environment's (a ``.pth`` file that
  calls ``site.addsitedir`` on the server's site-packages folders): what the file installs wins,
  and modelfleet itself and whatever the file does not name come from the server;
* built in a temporary folder and renamed into place when pip succeeded, under a file lock, so
  two loads of models with the same file build it once and a failed or interrupted build leaves
  nothing that looks ready.

The trust boundary moves with it: pip runs what the model source's ``requirements.txt`` names,
including build scripts of source distributions and packages from whatever index ``pip_args`` or
the file itself point at, with the server's user and network access. That is code execution by
whoever can write to the model source, as ``inference.py`` already is.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import venv
from dataclasses import dataclass
from pathlib import Path

from modelfleet.errors import ModelLoadError

logger = logging.getLogger(__name__)

READY = ".modelfleet-ready"
_FALLBACK_PTH = "_modelfleet_server.pth"
_KEEP_OUTPUT_LINES = 20


@dataclass(frozen=True)
class Environments:
    """Where environments are built and how pip runs."""

    root: Path
    timeout_s: float
    pip_args: tuple[str, ...] = ()

    def key(self, requirements: bytes) -> str:
        digest = hashlib.sha256()
        digest.update(sys.version.encode() + b"\0" + sys.executable.encode() + b"\0")
        digest.update("\0".join(self.pip_args).encode() + b"\0")
        digest.update(requirements)
        return digest.hexdigest()[:20]

    def python_for(self, requirements: Path) -> Path:
        """The interpreter of the environment for ``requirements`` (built if missing).

        Blocking: a build runs ``venv`` and pip (up to ``timeout_s``). Raises ModelLoadError
        when pip fails or runs out of time.
        """
        folder = self.root / self.key(requirements.read_bytes())
        if (folder / READY).is_file():
            return _python(folder)
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / f"{folder.name}.lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another load may be building the same one
            if not (folder / READY).is_file():
                self._build(folder, requirements)
        return _python(folder)

    def _build(self, folder: Path, requirements: Path) -> None:
        building = folder.with_name(f"{folder.name}.building")
        shutil.rmtree(building, ignore_errors=True)
        shutil.rmtree(folder, ignore_errors=True)
        logger.info("Building a Python environment for %s in %s", requirements, folder)
        try:
            venv.EnvBuilder(with_pip=True, symlinks=True).create(building)
            self._pip(_python(building), requirements)
            _add_server_packages(building)
            (building / READY).write_text("ready\n")
            building.rename(folder)
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)
            raise

    def _pip(self, python: Path, requirements: Path) -> None:
        command = [str(python), "-m", "pip", "install", "--disable-pip-version-check"]
        command += ["--no-input", "--requirement", requirements.name, *self.pip_args]
        try:
            done = subprocess.run(
                command,
                cwd=requirements.parent,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                timeout=self.timeout_s,
                check=False,
                env={**os.environ, "PIP_NO_INPUT": "1", "PYTHONNOUSERSITE": "1"},
            )
        except subprocess.TimeoutExpired as exc:
            _log_output(exc.stdout)
            raise ModelLoadError(
                f"pip did not install code/{requirements.name} within {self.timeout_s:g} s "
                "(model_requirements_timeout)"
            ) from exc
        lines = _log_output(done.stdout)
        if done.returncode != 0:
            tail = " | ".join(lines[-_KEEP_OUTPUT_LINES:])
            raise ModelLoadError(
                f"pip could not install code/{requirements.name} (exit status "
                f"{done.returncode}): {tail}"
            )


def _python(folder: Path) -> Path:
    return folder / "bin" / "python"


def _log_output(output: bytes | None) -> list[str]:
    lines = (output or b"").decode("utf-8", "replace").splitlines()
    for line in lines:
        if line.strip():
            logger.info("pip: %s", line)
    return [line for line in lines if line.strip()]


def _add_server_packages(folder: Path) -> None:
    """Put the server's site-packages behind the environment's own (see the module doc)."""
    server = [*site.getsitepackages(), sysconfig.get_paths()["purelib"]]
    own = folder / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
    lines = [f"import site; site.addsitedir({path!r})" for path in dict.fromkeys(server)]
    (own / _FALLBACK_PTH).write_text("\n".join(lines) + "\n")

"""Load snapshots: a loaded model saved beside its artifact in the form read back fastest.

A model evicted from memory but still on disk is loaded again from its artifact. For a
scikit-learn model that is ``joblib.load``, whose pure-Python unpickler costs ~6x what the C
unpickler takes for the same objects (1.0 ms against 0.15 ms for a 1 MB forest, 2.8 against
0.45 ms at 2.8 MB). After the first load of an artifact from the model source, the instance
writes the loaded model once, in the background, as a pickle (protocol 5) next to the artifact
in the disk cache (``models/<digest>/snapshot``), once the requests that waited for the load are
answered; later loads of that entry read the snapshot. Models above :data:`MAX_BYTES` get none
(when they are written: :mod:`modelfleet.instance.snapshots`).

A snapshot file is a header line then the handler's payload::

    modelfleet-snapshot 1 {"handler": "sklearn", "versions": {"python": "3.11.9", ...}}\\n

It is only read back by the same handler under the same versions of Python and of the packages
the handler names (``SNAPSHOT_PACKAGES``); anything else, or a payload that fails to load, and
the artifact is loaded instead (the snapshot is then deleted). Snapshots live and die with their
disk-cache entry: a new version of the artifact is a new entry, without one. Unpickling runs code
from the file, as loading the artifact does: both come from the same trusted source.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Any

MAGIC = b"modelfleet-snapshot 1 "
#: Models above this size (in memory, on disk, or pickled) get no snapshot. Their load time is
#: mostly copying arrays, where the C unpickler gains less (1.8x at 11 MB against 6x at 1 MB),
#: and it reads (and pickle writes) in one call that holds the GIL throughout: ~8 ms at 11 MB,
#: so a 100 MB model would stall every other request for most of 100 ms; joblib's unpickler
#: lets other threads in.
MAX_BYTES = 32 * 1024 * 1024
#: the snapshot file's name in a disk-cache entry (next to ``artifact/`` and ``meta.json``)
FILE_NAME = "snapshot"


def stamp(handler: str, packages: tuple[str, ...]) -> dict[str, Any]:
    """What a snapshot of ``handler`` must match to be read back."""
    versions = {"python": ".".join(map(str, sys.version_info[:3]))}
    for name in packages:
        module = sys.modules.get(name) or importlib.import_module(name)
        versions[name] = str(getattr(module, "__version__", "?"))
    return {"handler": handler, "versions": versions}


def header(handler: str, packages: tuple[str, ...]) -> bytes:
    """The header line of a snapshot of ``handler`` (the payload follows it)."""
    return MAGIC + json.dumps(stamp(handler, packages), sort_keys=True).encode() + b"\n"


def read(path: Path) -> tuple[dict[str, Any], memoryview]:
    """The header and the payload of the snapshot at ``path`` (one read of the whole file).

    Raises OSError if it can't be read and ValueError if it is not a snapshot.
    """
    with open(path, "rb") as file:
        data = file.read()
    if not data.startswith(MAGIC):
        raise ValueError(f"{path} is not a modelfleet snapshot")
    end = data.index(b"\n")
    header = json.loads(data[len(MAGIC) : end])
    if not isinstance(header, dict):
        raise ValueError(f"{path} has a malformed header")
    return header, memoryview(data)[end + 1 :]


def matches(header: dict[str, Any], handler: str, packages: tuple[str, ...]) -> bool:
    """Whether a snapshot with ``header`` was written by ``handler`` under today's versions."""
    return header == stamp(handler, packages)

"""The access log (``--access-log FILE``): one line per invocation, for sizing a fleet from its
own traffic (``modelfleet plan``) and for people.

Tab-separated, one header line naming the columns (``#`` first), then per invocation::

    time  endpoint  variant  model  artifact_bytes  memory_bytes  tier  load_s  download_s  status

``time`` is seconds since the epoch (milliseconds), ``tier`` where the model was when the
request came (``memory``: a hit; ``disk``: loaded from the disk cache; ``source``: downloaded
first; ``-``: the request failed before an instance said), ``load_s`` and ``download_s`` the
load and download this request started or joined (``-``: none), ``memory_bytes`` the model's
footprint in the memory budget and ``artifact_bytes`` its artifact on disk (``0``: unknown).
Target models hold no tab or newline (they are refused), nor do endpoint or variant names.

A request adds one tuple of its values to a list; every second (or every 2,000 requests) the
list is formatted into lines and written in one call, so a request pays for neither the
formatting nor a system call (formatted a request at a time, the log cost the warm path 4.4%
of its server CPU; ``bench.warm``). The file is rotated by size: past ``max_bytes`` it becomes
``FILE.1`` (``FILE.1`` becomes ``FILE.2``, ...; ``backups`` are kept) and a new file starts
with the header. Written by hand: :mod:`logging`'s rotating handler costs a record, a format
and a lock per line, several times this on the path every request takes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path

from modelfleet.instance.state import InvokeResult

logger = logging.getLogger(__name__)

COLUMNS = (
    "time",
    "endpoint",
    "variant",
    "model",
    "artifact_bytes",
    "memory_bytes",
    "tier",
    "load_s",
    "download_s",
    "status",
)
HEADER = "# modelfleet access log v1\t" + "\t".join(COLUMNS) + "\n"
_FLUSH_ROWS = 2000
_FLUSH_S = 1.0
_Row = tuple[float, str, str, str, int, int, int, str, float | None, float | None]


class AccessLog:
    """One server's access log (see the module doc)."""

    def __init__(self, path: Path, *, max_bytes: int, backups: int = 5) -> None:
        self.path = Path(path)
        self._max_bytes = max_bytes
        self._backups = backups
        self._rows: list[_Row] = []
        # written at least every quarter of the size (at 100 bytes a line), so a file ends
        # near its size
        self._flush_rows = max(1, min(_FLUSH_ROWS, max_bytes // 400))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")
        if self._file.tell() == 0:
            self._file.write(HEADER)
        self._size = self._file.tell()

    def write(
        self, endpoint: str, variant: str, model: str, status: int, result: InvokeResult | None
    ) -> None:
        """Note one invocation (``result``: what its instance answered, None if none did)."""
        rows = self._rows
        if result is None:
            rows.append((time.time(), endpoint, variant, model, status, 0, 0, "-", None, None))
        else:
            rows.append(
                (
                    time.time(),
                    endpoint,
                    variant,
                    model,
                    status,
                    result.artifact_bytes,
                    result.memory_bytes,
                    result.tier,
                    result.load_s,
                    result.download_s,
                )
            )
        if len(rows) >= self._flush_rows:
            self.flush()

    def flush(self) -> None:
        """Write the lines kept so far; rotate the file past its size."""
        if not self._rows:
            return
        rows, self._rows = self._rows, []
        text = "".join(
            f"{at:.3f}\t{endpoint}\t{variant}\t{model}\t{artifact}\t{memory}\t{tier}\t"
            f"{'-' if load is None else f'{load:.4f}'}\t"
            f"{'-' if download is None else f'{download:.4f}'}\t{status}\n"
            for at, endpoint, variant, model, status, artifact, memory, tier, load, download in rows
        )
        try:
            self._file.write(text)
            self._file.flush()
        except OSError as exc:  # a full disk must not fail requests: the lines are lost
            logger.warning("access log %s: %d bytes not written: %s", self.path, len(text), exc)
            return
        self._size += len(text.encode())
        if self._size >= self._max_bytes:
            self._rotate()

    def _rotate(self) -> None:
        self._file.close()
        for index in range(self._backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{index}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{index + 1}"))
        if self._backups > 0:
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink(missing_ok=True)
        self._file = self.path.open("a", encoding="utf-8")
        self._file.write(HEADER)
        self._size = self._file.tell()

    async def run(self) -> None:
        """Flush every second until cancelled; then flush and close."""
        try:
            while True:
                await asyncio.sleep(_FLUSH_S)
                self.flush()
        finally:
            with contextlib.suppress(OSError):
                self.flush()
                self._file.close()

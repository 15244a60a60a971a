"""Keeping cached models true to the source: revalidation of artifacts on disk and in memory.

A model found on disk but not in memory (after an eviction, UnloadModel or a restart) is checked
while it loads, and admitted only once the check allows it (the manager's gate): its files
against their manifest if the last server stopped uncleanly
(:meth:`~modelfleet.cache.disk.DiskCache.verify`), and its version against the source's with one
metadata request (a HEAD for an object, a listing for a folder), never one per request. A new
version is downloaded and loaded; a model gone from the source is gone from the cache too; a
source that cannot be reached leaves the cached copy in service (stale-if-error), counted in
``modelfleet_model_stale_serves_total``.

A check has a fallback (the cached copy), so it never waits as a download does: one try within
:data:`~modelfleet.source.store.PROBE_TIMEOUT_S`, no retries; and after a failed check the
source is not asked again for :data:`SOURCE_DOWN_S`, so a black-holed source costs one short
wait, not one per cold request.

With ``--revalidate-interval S`` the loaded models are checked too, every S seconds, on the
instance's small check pool (see :meth:`~modelfleet.instance.manager.ModelManager`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from enum import Enum

from modelfleet.cache.disk import DiskCache, DiskEntry
from modelfleet.errors import SourceError
from modelfleet.metrics import Metrics
from modelfleet.source import ModelSource

logger = logging.getLogger(__name__)

SOURCE_DOWN_S = 30.0
"""After a failed check, cached copies are trusted without asking the source for this long."""


class Verdict(Enum):
    """What a check of a cached artifact against the source found."""

    CURRENT = "current"  # the source still has this version
    CHANGED = "changed"  # the source has another version
    UNKNOWN = "unknown"  # the source could not be asked (down, timing out, denying access)


class Revalidator:
    """Checks cached artifacts of one instance against its model source (blocking calls)."""

    def __init__(
        self,
        *,
        source: ModelSource,
        disk: DiskCache,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._source = source
        self._disk = disk
        self._metrics = metrics
        self._clock = clock
        self._down_until = 0.0

    def loadable(self, target_model: str, entry: DiskEntry) -> bool:
        """Whether the cached ``entry`` may be loaded: whole, and the source's version, or the
        source could not be asked (a stale serve, counted). False: download it again.

        Raises:
            ModelNotFoundError: the source no longer has ``target_model``.
        """
        if not self._disk.verify(entry):
            return False
        verdict = self.check(target_model, entry)
        if verdict is Verdict.UNKNOWN:
            self._metrics.model_stale_serves.inc()
        return verdict is not Verdict.CHANGED

    def check(self, target_model: str, entry: DiskEntry) -> Verdict:
        """Compare ``entry``'s version with the source's (one metadata request at most).

        Raises:
            ModelNotFoundError: the source no longer has ``target_model``.
        """
        if self._clock() < self._down_until:
            return Verdict.UNKNOWN
        self._metrics.model_revalidations.inc()
        try:
            info = self._source.stat(target_model, probe=True)
        except SourceError as exc:
            self._down_until = self._clock() + SOURCE_DOWN_S
            logger.warning(
                "could not revalidate %s; cached copies are served without asking the source "
                "for %.0f s: %s",
                target_model,
                SOURCE_DOWN_S,
                exc,
            )
            return Verdict.UNKNOWN
        version = entry.version
        if version.matches(info.etag, info.size):
            return Verdict.CURRENT
        self._metrics.model_changed.inc()
        logger.info(
            "%s changed in the model source (ETag %s, %s bytes -> ETag %s, %d bytes): "
            "loading the new version",
            target_model,
            version.etag,
            version.size,
            info.etag,
            info.size,
        )
        return Verdict.CHANGED

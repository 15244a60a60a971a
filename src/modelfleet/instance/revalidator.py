"""Keeping cached models true to the source: revalidation of artifacts on disk and in memory.

A model found on disk but not in memory (after an eviction, UnloadModel or a restart) is checked
before it is loaded: its files against their manifest if the last server stopped uncleanly
(:meth:`~modelfleet.cache.disk.DiskCache.verify`), and its version against the source's with one
metadata request (a HEAD for an object, a listing for a folder), never one per request. A new
version is downloaded and loaded; a model gone from the source is gone from the cache too; a
source that cannot be reached leaves the cached copy in service (stale-if-error), counted in
``modelfleet_model_stale_serves_total``.

With ``--revalidate-interval S`` the loaded models are checked too, every S seconds, one at a
time on the download pool: a changed one leaves the memory tier at once (the next request loads
the new version) and is unloaded when the calls still running on it are done.
"""

from __future__ import annotations

import logging

from modelfleet.cache.disk import DiskCache, DiskEntry
from modelfleet.errors import SourceError
from modelfleet.metrics import Metrics
from modelfleet.source import ModelSource

logger = logging.getLogger(__name__)


class Revalidator:
    """Checks cached artifacts of one instance against its model source (blocking calls)."""

    def __init__(self, *, source: ModelSource, disk: DiskCache, metrics: Metrics) -> None:
        self._source = source
        self._disk = disk
        self._metrics = metrics

    def loadable(self, target_model: str, entry: DiskEntry) -> bool:
        """Whether the cached ``entry`` may be loaded: whole, and the source's version (or the
        source unreachable). False: download it again.

        Raises:
            ModelNotFoundError: the source no longer has ``target_model``.
        """
        return self._disk.verify(entry) and self.current(target_model, entry, stale_ok=True)

    def current(self, target_model: str, entry: DiskEntry, *, stale_ok: bool) -> bool:
        """Whether ``entry`` is still the source's version of ``target_model``.

        An unreachable source answers ``stale_ok`` (and a stale serve is counted when True).

        Raises:
            ModelNotFoundError: the source no longer has ``target_model``.
        """
        self._metrics.model_revalidations.inc()
        try:
            info = self._source.stat(target_model)
        except SourceError as exc:
            if stale_ok:
                self._metrics.model_stale_serves.inc()
                logger.warning(
                    "could not revalidate %s, serving the cached copy: %s", target_model, exc
                )
            return stale_ok
        version = entry.version
        if version.matches(info.etag, info.size):
            return True
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
        return False

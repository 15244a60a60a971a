"""Loading models at start (``--preload FILE``, and the ``--pin`` names that are not globs),
each on the instance the router sends its requests to, so that its first request is a hit.

Progress is logged every few seconds and at the end; a model that cannot be loaded is logged
and skipped, never fatal (the server serves on: a missing model answers as it would anyway).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

from modelfleet.config import Settings
from modelfleet.errors import ModelfleetError
from modelfleet.source import ModelSource
from modelfleet.source.select import expand, is_glob, read_preload

logger = logging.getLogger(__name__)

_PER_INSTANCE = 2  # loads asked of the variant at once, per instance
_PROGRESS_S = 5.0


class Preloads(Protocol):
    """What preloading needs of a router (:class:`~modelfleet.endpoint.router.Router`)."""

    def instance_count(self, variant: str) -> int: ...

    async def preload(self, variant: str, target_model: str) -> bool: ...


def preload_list(settings: Settings) -> list[str]:
    """The patterns a variant preloads: its ``preload`` file's, then its ``pin`` names."""
    patterns = read_preload(settings.preload) if settings.preload is not None else []
    return patterns + [p for p in settings.pin if not is_glob(p) and p not in patterns]


async def preload_variant(endpoint: str, variant: str, router: Preloads, settings: Settings) -> int:
    """Preload one variant's models; how many loaded."""
    where = f"{endpoint}/{variant}"
    try:
        patterns = preload_list(settings)
        if not patterns:
            return 0
        source = ModelSource(
            settings.model_source,
            timeout_s=settings.source_timeout,
            retries=settings.source_retries,
            allow_http=settings.allow_http,
        )
        names = await asyncio.to_thread(expand, patterns, source)
    except (ModelfleetError, OSError) as exc:
        logger.error("%s: preload skipped: %s", where, getattr(exc, "message", None) or exc)
        return 0
    logger.info("%s: preloading %d models", where, len(names))
    turns = asyncio.Semaphore(max(1, router.instance_count(variant)) * _PER_INSTANCE)
    done = loaded = 0
    said = time.monotonic()
    failed: list[str] = []

    async def one(name: str) -> None:
        nonlocal done, loaded, said
        async with turns:
            ok = await router.preload(variant, name)
        done += 1
        loaded += ok
        if not ok:
            failed.append(name)
        if time.monotonic() - said >= _PROGRESS_S and done < len(names):
            said = time.monotonic()
            logger.info("%s: preloaded %d of %d models", where, done, len(names))

    await asyncio.gather(*(one(name) for name in names))
    if failed:
        shown = ", ".join(failed[:5]) + (" ..." if len(failed) > 5 else "")
        logger.warning(
            "%s: preloaded %d of %d models; not loaded: %s", where, loaded, len(names), shown
        )
    else:
        logger.info("%s: preloaded %d models", where, loaded)
    return loaded

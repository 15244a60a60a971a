"""Autoscaling per variant: target tracking on invocations per instance per minute.

SageMaker's ``SageMakerVariantInvocationsPerInstance`` policy, on this machine: every
``autoscale_interval`` seconds (at most 10) the :class:`Autoscaler` takes the variant's
requests over the last ``autoscale_window`` seconds (a minute by default), divides by its
instances, and sets the instance count to ``ceil(instances x observed / target)``, within
``min_instances`` and ``max_instances``.
Scale-out waits ``scale_out_cooldown`` after the last scale-out; scale-in waits
``scale_in_cooldown`` after any scaling and removes one instance at a time (the newest),
draining it first: it takes no new requests and stops once those in flight have finished. A new
instance is prewarmed with the variant's hottest models (of the last minute) that the router
will send to it (those whose rendezvous order puts it first).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import time
from collections.abc import Callable

from modelfleet.backends.base import Backend, Instance, InstanceState
from modelfleet.config import Settings
from modelfleet.endpoint.router import Router, rendezvous_score

logger = logging.getLogger(__name__)

_PREWARM_MODELS = 20


class Autoscaler:
    """Scales one variant's instances (see the module doc)."""

    def __init__(
        self,
        router: Router,
        variant: str,
        backend: Backend,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.router = router
        self.variant = variant
        self.backend = backend
        self._samples: collections.deque[tuple[float, int, dict[str, int]]] = collections.deque()
        self._last_seen = 0
        self._scaled_out_at = -math.inf
        self._scaled_at = -math.inf
        self._clock = clock  # monotonic seconds; tests pass their own
        self._started = clock()

    @property
    def settings(self) -> Settings:
        return self.backend.settings  # a reload may change them

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.settings.autoscale_interval)
            if not self.settings.autoscale_target:
                self.router.track_recent = False
                continue
            self.router.track_recent = True
            try:
                async with self.backend.scaling:  # not beside a rolling update
                    await self.evaluate()
            except Exception:  # a failed step must not end autoscaling
                logger.exception("autoscaling variant %s failed", self.variant)

    def desired(self, now: float) -> tuple[int, int, float]:
        """(instances now, instances wanted, invocations per instance per minute observed)."""
        served = self.router.served[self.variant]
        models = self.router.recent[self.variant]
        self.router.recent[self.variant] = {}
        self._samples.append((now, served - self._last_seen, models))
        self._last_seen = served
        span = self.settings.autoscale_window
        while self._samples and self._samples[0][0] < now - span:
            self._samples.popleft()
        window = min(span, now - self._started)
        active = [i for i in self.backend.instances if i.state != InstanceState.DRAINING]
        count = max(len(active), 1)
        requests = sum(n for _, n, _ in self._samples)
        per_minute = requests / max(window, 1e-9) * 60.0 / count
        s = self.settings
        wanted = math.ceil(count * per_minute / s.autoscale_target) if s.autoscale_target else count
        wanted = max(s.effective_min_instances, min(s.effective_max_instances, wanted))
        return count, wanted, per_minute

    async def evaluate(self, now: float | None = None) -> None:
        now = self._clock() if now is None else now
        count, wanted, per_minute = self.desired(now)
        s = self.settings
        if wanted > count and now - self._scaled_out_at >= s.scale_out_cooldown:
            logger.info(
                "variant %s: %.0f invocations per instance per minute (target %.0f): %d -> %d",
                self.variant,
                per_minute,
                s.autoscale_target,
                count,
                wanted,
            )
            self._scaled_out_at = self._scaled_at = now
            added = await asyncio.gather(
                *(self.backend.add_instance() for _ in range(wanted - count))
            )
            await asyncio.gather(*(self._prewarm(i) for i in added))
        elif (
            wanted < count
            and math.isfinite(s.scale_in_cooldown)  # inf: never (DisableScaleIn)
            and now - self._scaled_at >= s.scale_in_cooldown
        ):
            newest = [i for i in self.backend.instances if i.state != InstanceState.DRAINING][-1]
            logger.info(
                "variant %s: %.0f invocations per instance per minute (target %.0f): %d -> %d,"
                " draining instance %s",
                self.variant,
                per_minute,
                s.autoscale_target,
                count,
                count - 1,
                newest.instance_id,
            )
            self._scaled_at = now
            await self.backend.remove_instance(newest)

    async def _prewarm(self, instance: Instance) -> None:
        totals: collections.Counter[str] = collections.Counter()
        for _, _, models in self._samples:
            totals.update(models)
        peers = [i for i in self.backend.instances if i.available() or i is instance]
        mine = [
            model
            for model, _ in totals.most_common(_PREWARM_MODELS)
            if max(peers, key=lambda i: rendezvous_score(model, i.instance_id)) is instance
        ]
        if mine:
            loaded = await instance.prewarm(mine)
            logger.info("prewarmed instance %s with %d models", instance.instance_id, loaded)

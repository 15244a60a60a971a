"""The router: picks a variant and an instance for each invocation, and forwards it.

Instance choice for a target model (DESIGN section 7), among the variant's instances that are up:

1. A model the router has not placed yet (no instance answered for it) goes to the first
   instance in rendezvous-hash order of (model, instance id), so that independent routers
   agree on where it goes without sharing state, except past instances that miss far more than
   the least missing one (over ``_PLACE_SLACK`` times its cache misses a second, and over
   ``_PLACE_FLOOR``; learned from the instances' answers, decaying with a half-life of
   ``_MISS_HALF_LIFE_S``); those come last, the least missing first, and instances at the load
   bound after the rest. An instance that misses far more is thrashing: the models the hash
   gave it are more than its cache holds, while another has room to spare. With the rendezvous
   order alone the instance that drew the hottest models thrashed (end-to-end Zipf benchmark,
   200 models, room for 20: the 2-instance fleet's hit ratio was 0.39 against one instance's
   0.53).
2. A placed model goes to the instances that hold it (that answered for it), the least busy
   first, even above the load bound: it is loaded nowhere else for a busy moment, since a copy
   would take cache room from other models and load it for nothing once the moment passes.
   The other instances follow in rendezvous order, for failover only.
3. A hot model (below) is the exception: its holders under the bound first, then the others
   under the bound, then the rest.

A model most of whose requests wait at their instance for an inference slot (the instances
say so: their pool was full, or the model serves one call at a time and was busy) is hot.
While its holders are busier than the next instance (more than twice its requests in flight,
plus one), it gets a copy: one request goes to the next instance in rendezvous order, which
loads the model and becomes a holder (one new copy per second at most). Copies that then serve
nothing for ``copy_idle_timeout`` are unloaded (:meth:`Router.idle_copies`).

Step 1's detour past thrashing instances (``balance``) is for a fleet with one router (the
``local`` backend): routers do not share what they placed, and two routers whose counts of an
instance's misses differ would place one model on two instances. With the ``ray`` backend,
whose routers run one per node, placement follows the rendezvous order alone, so they agree.

The load bound is ``ceil(2 x (in-flight + 1) / instances)``. A
request that finds its instance unreachable or full (507) moves to the next candidate;
inference is idempotent. A request that an instance dropped (:class:`RequestDroppedError`: it
got no answer, the instance was killed or hung while holding it) is tried once more, on the
next candidate that answers ``/ping`` (one killed at the same moment is skipped, so several
instances dying at once fail no request while one is up); dropped twice, it is what kills
instances, and it fails. A backend that can tell how the instance ended says so instead: one
that ended by its own hand (the ``local`` backend's non-zero exit status or crash signal) was
most likely ended by the request, which fails at once as a ModelError
(:class:`~modelfleet.errors.InstanceEndedError`), not retried. With the ``inprocess`` backend
there is one instance and the choice is trivial.
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from modelfleet.backends.base import Instance
from modelfleet.errors import RequestDroppedError, ServiceUnavailableError, ValidationError
from modelfleet.instance.state import InvokeResult

DEFAULT_VARIANT = "AllTraffic"
_LOAD_FACTOR = 2.0
_GROW_INTERVAL_S = 1.0  # one new copy of a model per second at most
_MISS_HALF_LIFE_S = 5.0  # how fast an instance's cache misses are forgotten
_PLACE_SLACK = 1.5  # instances missing up to this many times the least are placed on alike
_PLACE_FLOOR = 1.0  # misses a second under which every instance counts as missing little
_MAX_DROPPED = 1  # a request an instance dropped mid-way is retried once, not on every instance
_FORGET_AFTER_S = 3600.0  # what the router knows of a model unused this long is dropped


@dataclass(frozen=True, slots=True)
class Routed:
    result: InvokeResult
    variant: str
    instance_id: str


class _Pressure:
    """Per model: how often its requests had to wait for an inference slot at their instance.

    The instances say so with each answer (their pool was full, or the model serves one call
    at a time and was busy). A model most of whose requests wait gets one more copy, at most
    every ``_GROW_INTERVAL_S``: its demand exceeds what its holders serve. Decided from
    queueing, measured by the instances, not from a timeout.
    """

    __slots__ = ("grown_at", "queued")

    def __init__(self) -> None:
        self.queued = 0.0
        self.grown_at = 0.0

    def observe(self, queued: bool) -> None:
        self.queued = 0.9 * self.queued + 0.1 * queued

    def wants_copy(self) -> bool:
        now = time.monotonic()
        if self.queued < 0.5 or now - self.grown_at < _GROW_INTERVAL_S:
            return False
        self.grown_at = now
        return True

    def cooled(self) -> bool:
        return self.queued < 0.05 and time.monotonic() - self.grown_at > 60.0


class _Misses:
    """Cache misses per second at one instance, decaying with a half-life."""

    __slots__ = ("at", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.at = 0.0

    def rate(self, now: float) -> float:
        return self.value * math.exp2((self.at - now) / _MISS_HALF_LIFE_S)

    def add(self, now: float) -> None:
        self.value = self.rate(now) + 1.0 / _MISS_HALF_LIFE_S
        self.at = now


def rendezvous_score(target_model: str, instance_id: str) -> int:
    """Highest-random-weight hash of (model, instance): the same on every router."""
    digest = hashlib.blake2b(f"{instance_id}\0{target_model}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


class Router:
    """Routes invocations of one endpoint to its instances."""

    def __init__(
        self,
        variants: Mapping[str, Sequence[Instance]],
        *,
        retry_on: tuple[type[BaseException], ...] = (),
        randomly: bool = False,
        weights: dict[str, float] | None = None,
        balance: bool = True,
    ) -> None:
        if not variants:
            raise ValueError("an endpoint needs at least one variant")
        self.variants = variants
        self._default = next(iter(variants))
        weighted = {name: w for name, w in (weights or {}).items() if w > 0 and name in variants}
        self._names = list(weighted) or [self._default]
        self._weights = list(weighted.values()) or [1.0]
        self._retry_on = retry_on  # errors that move a request on (RequestDroppedError: once)
        self._randomly = randomly
        self._balance = balance  # place past thrashing instances (only where one router routes)
        # instance id -> {model: when the instance last served it (monotonic)}; by instance, so
        # a model costs one entry per holder (about 70 bytes) and not a dict of its own
        self._held: dict[str, dict[str, float]] = {}
        self._pressure: dict[str, _Pressure] = {}  # models whose requests queue at holders
        self._misses: dict[str, _Misses] = {}  # instance id -> its cache misses lately
        # per variant: requests served, and per model since the autoscaler last looked
        self.served: dict[str, int] = dict.fromkeys(variants, 0)
        self.recent: dict[str, dict[str, int]] = {name: {} for name in variants}
        self.track_recent = False  # per-model counts, kept only for an autoscaler's prewarm

    @property
    def weights(self) -> dict[str, float]:
        """Each variant's traffic weight (0: none)."""
        drawn = dict(zip(self._names, self._weights, strict=True))
        return {name: drawn.get(name, 0.0) for name in self.variants}

    def set_weights(self, weights: dict[str, float]) -> None:
        """New traffic shares (a config reload); variants left out or at 0 get no draws."""
        weighted = {n: w for n, w in weights.items() if w > 0 and n in self.variants}
        self._names = list(weighted) or [self._default]
        self._weights = list(weighted.values()) or [1.0]

    def pick_variant(self, target_variant: str | None) -> str:
        """``target_variant`` (X-Amzn-SageMaker-Target-Variant) if given, else a weighted draw."""
        if target_variant is None:
            if len(self._names) == 1:
                return self._names[0]
            return random.choices(self._names, self._weights)[0]
        if target_variant not in self.variants:
            raise ValidationError(
                f"Target variant '{target_variant}' does not exist; "
                f"variants: {', '.join(sorted(self.variants))}."
            )
        return target_variant

    def candidates(self, target_model: str, instances: Sequence[Instance]) -> list[Instance]:
        """The instances to try for ``target_model``, best first (see the module doc)."""
        up = [i for i in instances if i.available()]
        if len(up) <= 1:
            return up
        if self._randomly:  # the baseline the benchmarks compare affinity with
            return random.sample(up, len(up))
        bound = math.ceil(_LOAD_FACTOR * (sum(i.in_flight for i in up) + 1) / len(up))
        holders = {iid for iid, held in self._held.items() if target_model in held}
        ranked = sorted(up, key=lambda i: rendezvous_score(target_model, i.instance_id))
        ranked.reverse()
        if not any(i.instance_id in holders for i in ranked):
            order = self._placement(ranked)
            return [i for i in order if i.in_flight < bound] + [
                i for i in order if i.in_flight >= bound
            ]
        pressure = self._pressure.get(target_model)
        if pressure is None or pressure.queued < 0.5:  # not hot: only its holders serve it
            mine = sorted(
                (i for i in ranked if i.instance_id in holders), key=lambda i: i.in_flight
            )
            return mine + [i for i in ranked if i.instance_id not in holders]
        # hot: the least busy holder under the bound first, then the others under it
        held = sorted(
            (i for i in ranked if i.instance_id in holders and i.in_flight < bound),
            key=lambda i: i.in_flight,
        )
        chosen = {i.instance_id for i in held}
        spare = [i for i in ranked if i.instance_id not in chosen and i.in_flight < bound]
        chosen.update(i.instance_id for i in spare)
        rest = [i for i in ranked if i.instance_id not in chosen]
        if (
            held
            and spare
            # the holders are busy and the next instance is not: a copy adds capacity (when
            # every instance is busy the wait is the machine's, and a copy would only add loads)
            and min(i.in_flight for i in held) > 2 * spare[0].in_flight + 1
            and pressure.wants_copy()
        ):
            # Requests queue at the holders: this one goes to the next instance, which loads
            # a copy and becomes a holder (at most one new copy per _GROW_INTERVAL_S).
            return [spare[0], *held, *spare[1:], *rest]
        return held + spare + rest

    def _placement(self, ranked: list[Instance]) -> list[Instance]:
        """Where a model no instance answered for yet should go, best first: the rendezvous
        order (``ranked``), except that instances missing far more than the least missing one
        (over ``_PLACE_SLACK`` times its rate, and over ``_PLACE_FLOOR`` misses a second) go
        last, the least missing of them first (when ``balance``)."""
        if not self._balance:
            return ranked
        now = time.monotonic()
        idle = _Misses()  # an instance that never missed
        rates = {i.instance_id: self._misses.get(i.instance_id, idle).rate(now) for i in ranked}
        limit = max(_PLACE_SLACK * min(rates.values()), _PLACE_FLOOR)
        usual = [i for i in ranked if rates[i.instance_id] <= limit]
        thrashing = sorted(
            (i for i in ranked if rates[i.instance_id] > limit), key=lambda i: rates[i.instance_id]
        )
        return usual + thrashing

    def idle_copies(self, idle_s: float) -> list[tuple[str, str]]:
        """Extra copies of models that served nothing for ``idle_s``: (model, instance id).

        A model keeps the copy that served it last; the others it no longer needs (its demand
        fell back to what fewer instances serve: once it is not hot, requests go to the least
        busy holder, and the others go idle) are forgotten here, for the caller to
        unload.
        """
        now = time.monotonic()
        once: set[str] = set()
        shared: set[str] = set()  # models held by two instances or more
        for held in self._held.values():
            shared |= once & held.keys()
            once |= held.keys()
        holders: dict[str, list[tuple[float, str]]] = {model: [] for model in shared}
        for instance_id, held in self._held.items():
            for model in shared & held.keys():
                holders[model].append((held[model], instance_id))
        idle = []
        for model, uses in holders.items():
            latest = max(uses)[1]
            for used, instance_id in uses:
                if instance_id != latest and now - used > idle_s:
                    del self._held[instance_id][model]
                    idle.append((model, instance_id))
        # Bounded memory: what an instance has not served for long is forgotten (it evicted
        # the model by now anyway); never before an idle copy of it would have been reported.
        forget_after = max(_FORGET_AFTER_S, 2 * idle_s)
        for held in self._held.values():
            for model in [m for m, used in held.items() if now - used > forget_after]:
                del held[model]
        return idle

    def _note_queueing(self, target_model: str, result: InvokeResult) -> None:
        """Track how long requests for ``target_model`` wait at their instance for the model."""
        pressure = self._pressure.get(target_model)
        if pressure is None:
            if not result.queued:
                return  # most models never queue: keep no state for them
            pressure = self._pressure[target_model] = _Pressure()
        pressure.observe(result.queued)
        if pressure.cooled():
            del self._pressure[target_model]

    def instance_count(self, variant: str) -> int:
        return len(self.variants[variant])

    async def preload(self, variant: str, target_model: str) -> bool:
        """Load ``target_model`` on the instance of ``variant`` that its requests go to (the
        first candidate now), without invoking it; whether it loaded."""
        for instance in self.candidates(target_model, self.variants[variant])[:1]:
            if await instance.prewarm([target_model]) == 1:
                held = self._held.setdefault(instance.instance_id, {})
                held[target_model] = time.monotonic()
                return True
        return False

    def forget_instance(self, instance_id: str) -> None:
        """Drop what the router learned about ``instance_id`` (it was removed)."""
        self._held.pop(instance_id, None)
        self._misses.pop(instance_id, None)

    async def invoke(
        self,
        target_model: str,
        body: bytes,
        *,
        content_type: str | None,
        accept: str | None,
        custom_attributes: str | None,
        variant: str,
    ) -> Routed:
        """Invoke ``target_model`` on ``variant`` (chosen by :meth:`pick_variant`, so the caller
        knows which variant failed a request that raises)."""
        return await self._invoke(
            variant, target_model, body, content_type, accept, custom_attributes
        )

    async def _invoke(
        self,
        variant: str,
        target_model: str,
        body: bytes,
        content_type: str | None,
        accept: str | None,
        custom_attributes: str | None,
    ) -> Routed:
        candidates = self.candidates(target_model, self.variants[variant])
        if not candidates:
            raise ServiceUnavailableError(f"Variant '{variant}' has no instance running.")
        failure: BaseException | None = None
        dropped = 0  # requests that reached an instance and got no answer
        for instance in candidates:
            if failure is not None and not instance.available():
                continue  # went down or started draining meanwhile
            if dropped == _MAX_DROPPED and not await instance.ping():
                # A drop on this one would be the last: first make sure it is alive. One
                # killed at the same moment as the instance that dropped the request (or
                # dying of the same cause) answers nothing, and is skipped.
                continue
            try:
                result = await instance.invoke(
                    target_model,
                    body,
                    content_type=content_type,
                    accept=accept,
                    custom_attributes=custom_attributes,
                )
            except RequestDroppedError as exc:  # it reached the instance, which never answered
                failure = exc
                dropped += 1
                if dropped > _MAX_DROPPED:  # the request may be what kills instances
                    break
                continue
            except self._retry_on as exc:
                failure = exc
                continue
            held = self._held.get(instance.instance_id)
            if held is None:
                held = self._held[instance.instance_id] = {}
            now = held[target_model] = time.monotonic()
            if not result.cache_hit:
                misses = self._misses.get(instance.instance_id)
                if misses is None:
                    misses = self._misses[instance.instance_id] = _Misses()
                misses.add(now)
            self._note_queueing(target_model, result)
            self.served[variant] += 1
            if self.track_recent:
                recent = self.recent[variant]
                recent[target_model] = recent.get(target_model, 0) + 1
            return Routed(result=result, variant=variant, instance_id=instance.instance_id)
        raise ServiceUnavailableError(
            f"No instance of variant '{variant}' could take the request: {failure}"
        ) from failure

"""Where one inference call runs: on the event loop (inline) or on the inference pool.

Inference normally runs on the inference pool. A model whose calls average at most
``inline_inference_ms`` runs on the event loop instead, for bodies up to 64 KiB: for
sub-millisecond models the thread hop costs more than the model (about a quarter of the
throughput of a small forest), while the loop is held no longer than it would be by parsing the
request. A model that slows down, or that holds the loop longer than its CPU time showed (it
sleeps or waits), goes back to the pool (:meth:`~modelfleet.instance.state.Resident.observe`).

Either way, what the model raises that is not an :class:`Exception` (its code called
``sys.exit()``, or raised ``KeyboardInterrupt``) and got past its handler is the model's
failure, a :class:`~modelfleet.errors.ModelInvocationError` (424): on the event loop it would
stop the server, and from a pool thread the loop that awaits it (the pool's side of this is
:func:`~modelfleet.instance.pools.run_blocking`'s :class:`WorkerExitError`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from modelfleet.errors import ModelInvocationError
from modelfleet.handlers.base import Prediction
from modelfleet.instance.pools import Pools, WorkerExitError, run_blocking
from modelfleet.instance.state import Entry, History, InvokeResult, Resident
from modelfleet.metrics import Metrics

_INLINE_MAX_BODY_BYTES = 64 * 1024  # larger bodies always go to the pool


class Runner:
    """Runs inference on pinned entries and releases their pins (through ``release``)."""

    def __init__(
        self,
        *,
        inline_max_s: float,
        pools: Callable[[], Pools],
        release: Callable[[Entry], None],
        metrics: Metrics,
        history: History,
    ) -> None:
        self._inline_max_s = inline_max_s
        self._pools = pools
        self._release = release
        self._metrics = metrics
        self._on_pool = 0  # inference calls submitted to the pool and not finished
        self._history = history

    def remember(self, entry: Entry) -> None:
        """``entry`` is being unloaded: what its calls showed of its speed outlives it, so
        the same artifact loaded again (after an eviction) goes on from there (:meth:`resume`)
        instead of proving itself again over ``INLINE_AFTER_CALLS`` calls on the pool. On the
        end-to-end Zipf benchmark, where half the requests reload their model, a model was
        rarely resident for that many calls, and each pool call took 7.6 ms on average (the
        hop, and the GIL held by loads), against well under 1 ms inline."""
        resident = entry.value
        if resident.calls < 2:
            return  # no call measured (the first is warm-up)
        known = self._history.note(resident.url)
        known.latency_s, known.pool_calls = resident.latency_ewma_s, resident.pool_calls
        known.inline, known.measured = resident.inline, True

    def resume(self, resident: Resident) -> None:
        """A model was just loaded: it goes on from what its artifact's calls showed before."""
        known = self._history.get(resident.url)
        if known is not None and known.measured:
            resident.resume(known, self._inline_max_s)

    async def run(
        self,
        entry: Entry,
        body: bytes,
        content_type: str | None,
        accept: str | None,
        custom_attributes: str | None,
        hit: bool,
    ) -> InvokeResult:
        """Run inference on ``entry``, which the caller pinned; the pin is released here."""
        resident = entry.value
        started = time.perf_counter()
        # Never inline beside a pool call of the same model: a model that serialises its
        # calls (inference.py) would make the event loop wait for that call.
        inline = resident.inline and resident.on_pool == 0 and len(body) <= _INLINE_MAX_BODY_BYTES
        limit = resident.model.concurrency
        pools = self._pools()
        queued = not inline and (
            self._on_pool >= pools.inference_workers
            or (limit is not None and resident.on_pool >= limit)
        )
        if inline:
            try:
                prediction, cpu_s, wall_s = resident.timed_invoke(
                    body, content_type, accept, custom_attributes
                )
            except Exception:
                raise
            except BaseException as exc:  # SystemExit here would stop the event loop
                raise _exited(exc) from exc
            finally:
                self._release(entry)
        else:
            call = asyncio.ensure_future(
                run_blocking(
                    pools.inference,
                    resident.timed_invoke,
                    body,
                    content_type,
                    accept,
                    custom_attributes,
                )
            )
            resident.on_pool += 1
            self._on_pool += 1
            try:
                prediction, cpu_s, wall_s = await asyncio.shield(call)
            except asyncio.CancelledError:
                # The worker thread runs on: keep the pin until it returns.
                call.add_done_callback(lambda done: self._release_after(entry, done))
                raise
            except WorkerExitError as exc:  # the model's code exited on the pool thread
                self._off_pool(entry)
                cause = exc.__cause__ or exc
                raise _exited(cause) from cause
            except BaseException:
                self._off_pool(entry)
                raise
            self._off_pool(entry)
        latency = time.perf_counter() - started
        resident.observe(cpu_s, wall_s, self._inline_max_s, inline=inline)
        self._metrics.model_latency.observe(latency)
        disk = resident.disk
        return InvokeResult(
            prediction=prediction,
            cache_hit=hit,
            model_latency_s=latency,
            queued=queued,
            memory_bytes=entry.size_bytes,
            artifact_bytes=disk.artifact_bytes if disk is not None else 0,
        )

    def _off_pool(self, entry: Entry) -> None:
        entry.value.on_pool -= 1
        self._on_pool -= 1
        self._release(entry)

    def _release_after(
        self, entry: Entry, done: asyncio.Future[tuple[Prediction, float, float]]
    ) -> None:
        if not done.cancelled():
            done.exception()  # retrieved: the caller is gone
        self._off_pool(entry)


def _exited(exc: BaseException) -> ModelInvocationError:
    return ModelInvocationError(
        f"The model's code raised {type(exc).__name__} ({exc!r}) while serving a request."
    )

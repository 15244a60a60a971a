"""Sub-millisecond models run on the event loop after their first calls; others on the pool."""

from __future__ import annotations

import threading
from typing import Any

from tests.instance.fakes import FakeSource, Harness, invoke


async def test_fast_model_moves_to_the_event_loop(harness: Harness, make_manager: Any) -> None:
    # A generous threshold: every call qualifies, however loaded the machine is.
    manager = await make_manager(FakeSource({"fast": 10}), inline_inference_ms=10_000)
    for _ in range(12):
        await invoke(manager, "fast")
    threads = harness.models["fast"][0].threads
    loop_thread = threading.current_thread().name
    assert all(name.startswith("mf-infer") for name in threads[:9])  # measured on the pool
    assert threads[9:] == [loop_thread] * 3  # then inline


async def test_inline_disabled_keeps_every_call_on_the_pool(
    harness: Harness, make_manager: Any
) -> None:
    manager = await make_manager(FakeSource({"fast": 10}), inline_inference_ms=0)
    for _ in range(12):
        await invoke(manager, "fast")
    assert all(name.startswith("mf-infer") for name in harness.models["fast"][0].threads)


async def test_large_bodies_always_go_to_the_pool(harness: Harness, make_manager: Any) -> None:
    manager = await make_manager(FakeSource({"fast": 10}), inline_inference_ms=10_000)
    for _ in range(10):
        await invoke(manager, "fast")
    await manager.invoke("fast", b"1" * (65 * 1024), content_type="text/csv", accept=None)
    assert harness.models["fast"][0].threads[-1].startswith("mf-infer")


async def test_slow_model_stays_on_the_pool(harness: Harness, make_manager: Any) -> None:
    # A threshold no real call can meet: every call stays on the pool.
    manager = await make_manager(FakeSource({"slow": 10}), inline_inference_ms=0.000001)
    for _ in range(12):
        await invoke(manager, "slow")
    assert all(name.startswith("mf-infer") for name in harness.models["slow"][0].threads)


def test_a_model_that_waits_without_cpu_goes_back_to_the_pool() -> None:
    from pathlib import Path

    from modelfleet.instance.state import INLINE_AFTER_CALLS, Resident

    limit = 0.001
    resident = Resident(model=None, url=Path("."), from_source=True)  # type: ignore[arg-type]
    resident.observe(0.5, 0.5, limit, inline=False)  # the first call is left out
    for _ in range(INLINE_AFTER_CALLS):
        assert not resident.inline
        resident.observe(0.00001, 0.020, limit, inline=False)  # sleeps 20 ms: no CPU
    assert resident.inline  # its CPU time looks like a fast model's
    resident.observe(0.00001, 0.020, limit, inline=True)  # but it held the loop 20 ms
    assert not resident.inline
    for _ in range(4 * INLINE_AFTER_CALLS - 1):
        resident.observe(0.00001, 0.020, limit, inline=False)
        assert not resident.inline  # back on probation, four times longer
    resident.observe(0.00001, 0.020, limit, inline=False)
    assert resident.inline


def test_inline_calls_slower_on_average_than_twice_the_limit_go_back() -> None:
    from pathlib import Path

    from modelfleet.instance.state import INLINE_AFTER_CALLS, Resident

    limit = 0.001
    resident = Resident(model=None, url=Path("."), from_source=True)  # type: ignore[arg-type]
    for _ in range(INLINE_AFTER_CALLS + 1):
        resident.observe(0.0001, 0.0001, limit, inline=False)
    assert resident.inline
    for _ in range(3):
        resident.observe(0.0001, 0.003, limit, inline=True)  # 3 ms each: not a stall alone
        assert resident.inline
    resident.observe(0.0001, 0.003, limit, inline=True)  # four in: the average is 3 ms
    assert not resident.inline

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

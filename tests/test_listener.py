"""The listener's protocol at its seam: a fake transport and a loop whose clock the test moves.

The real-server behaviour (431, 408, the cap, the descriptor limit) is tested through TCP in
``tests/endpoint/test_hostile_clients.py``; these tests pin down what a real server cannot show
deterministically: what the sweep does after the server's own loop stalled, and a request whose
headers and body arrive in one read larger than the header allowance.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import uvicorn
from uvicorn.server import ServerState

from modelfleet.listener import ClientLimits, LimitedHttpToolsProtocol, protocol_class


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8080), "peername": ("127.0.0.1", 5555)}.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        pass


class Handle:
    """A timer handle or a task, as far as the protocol uses them."""

    def cancel(self) -> None:
        pass

    def add_done_callback(self, callback: Callable[..., None]) -> None:
        pass


class FakeLoop:
    """What the protocol asks of its loop: the time, timers, tasks (kept, never run)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.timers: list[tuple[float, Callable[..., None], tuple[Any, ...]]] = []
        self.tasks: list[Coroutine[Any, Any, None]] = []

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[..., None], *args: Any) -> Handle:
        self.timers.append((self.now + delay, callback, args))
        return Handle()

    def create_task(self, coro: Coroutine[Any, Any, None]) -> Handle:
        self.tasks.append(coro)
        return Handle()

    def run_timers_until(self, when: float) -> None:
        """Move the clock to ``when``, firing the timers that came due on the way."""
        while self.timers and min(t[0] for t in self.timers) <= when:
            due = min(self.timers, key=lambda t: t[0])
            self.timers.remove(due)
            self.now = max(self.now, due[0])
            due[1](*due[2])
        self.now = when

    def close(self) -> None:
        for coro in self.tasks:
            coro.close()


async def _app(scope: Any, receive: Any, send: Any) -> None:  # never run here
    raise AssertionError("not called")


def connection(limits: ClientLimits) -> tuple[LimitedHttpToolsProtocol, FakeTransport, FakeLoop]:
    loop = FakeLoop()
    config = uvicorn.Config(_app, lifespan="off", ws="none", log_config=None)
    config.load()
    cls = protocol_class(limits)
    proto = cls(config=config, server_state=ServerState(), app_state={}, _loop=loop)
    transport = FakeTransport()
    proto.connection_made(transport)
    return proto, transport, loop


def test_a_stall_of_the_servers_loop_is_not_blamed_on_the_client() -> None:
    limits = ClientLimits(header_timeout_s=1.0, keep_alive_timeout_s=60.0)
    proto, transport, loop = connection(limits)
    proto.data_received(b"GET /ping HTTP/1.1\r\nHost: test\r\n")  # headers begun
    start = loop.now
    loop.timers.clear()  # the loop stalls for 30 s: no sweep ran, the rest may be unread
    loop.now = start + 30.0
    proto.table._sweep(loop)  # type: ignore[arg-type]  # the first sweep after the stall
    assert not transport.closed
    assert transport.written == b""
    loop.run_timers_until(loop.now + 2 * limits.sweep_interval_s)  # nothing more came
    assert transport.written.startswith(b"HTTP/1.1 408 ")
    loop.close()


def test_headers_and_a_body_in_one_read_past_the_allowance_are_one_request() -> None:
    limits = ClientLimits(max_header_bytes=1024)
    proto, transport, loop = connection(limits)
    body = b"1," * 50_000  # one read: 100 KB, far past the 1 KiB allowance, headers in it
    head = b"POST /x HTTP/1.1\r\nHost: test\r\nContent-Length: %d\r\n\r\n" % len(body)
    proto.data_received(head + body)
    assert transport.written == b""
    assert not transport.closed
    assert len(loop.tasks) == 1  # the app was started for the request
    assert bytes(proto.cycle.body) == body
    loop.close()


def test_headers_past_the_allowance_are_refused_with_431() -> None:
    proto, transport, loop = connection(ClientLimits(max_header_bytes=1024))
    proto.data_received(b"GET /ping HTTP/1.1\r\nHost: test\r\nX-Big: " + b"a" * 5000)
    assert transport.written.startswith(b"HTTP/1.1 431 ")
    assert loop.tasks == []
    loop.close()

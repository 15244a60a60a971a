"""The HTTP listener: uvicorn's httptools protocol, with limits on what one client may hold.

Both listeners (``modelfleet serve`` and each ``modelfleet instance``) run uvicorn with
:func:`listener_config`, whose protocol class enforces :class:`ClientLimits`:

- **header size and count**: the request line and headers may take ``max_header_bytes`` and
  ``max_header_count`` headers; past either the client gets 431 and the connection is closed.
  httptools has no such limit, and it joins a header's pieces with ``+=`` as they arrive: a
  64 MiB header was read whole into memory (and copied over and over). So bytes are counted
  *before* they reach the parser, and the parser is fed no more than the allowance.
- **header timeout**: a request's headers must arrive within ``header_timeout_s`` of its first
  byte (408, closed): a client sending one header byte a second holds nothing for long.
- **body timeout**: the whole body must arrive within ``body_timeout_s`` of the headers (408,
  closed; the app sees the client gone).
- **keep-alive idle timeout**: a connection with no request in progress is closed after
  ``keep_alive_timeout_s``, counted from when it became idle, including a new connection that
  never sent a byte (uvicorn's ``timeout_keep_alive`` starts only after a first response, and
  any byte, a stray CRLF, restarts it).
- **open connections**: at most ``max_connections``, below the process's descriptor limit. A
  new connection at the cap closes the connection idle for longest; if none is idle, the new
  one gets 503 (``Retry-After: 1``) and is closed. Without a cap, 1,000 idle connections took
  every descriptor and locked out every other client (and the RSS watcher's ``/proc`` reads).

Why not a library: uvicorn offers ``h11_max_incomplete_event_size`` for h11 only (which caps the
size, not the count, and has no header or body timeout), ``timeout_keep_alive`` after responses
only, and ``limit_concurrency``, which answers 503 to new *requests* while idle connections keep
their descriptors. h11 also costs ~80 us a request more than httptools on this machine
(docs/benchmarks.md: bare 4,254 vs bare-fast 6,347 req/s). Hypercorn and granian have timeouts
but not the idle-first eviction, and would change the whole stack. So this subclasses uvicorn's
httptools protocol; the overrides are the parser callbacks and ``data_received``.

Timeouts are checked by one sweep per listener (every ``min(1 s, shortest timeout / 4)``; a
cut comes one to two sweeps after its deadline, never for a stall of the server's own loop)
instead of a timer per request: the hot path only stores a deadline and moves the connection
between two dicts (idle, reading). Measured with a fake transport (one keep-alive connection,
a 19-byte CSV POST with 6 headers, uvloop, 21 interleaved rounds of 20,000 requests, two runs
on a busy 2-core VM): uvicorn's protocol 15.1 and 18.3 us a request (medians), this one 17.7
and 21.5, so +2.7 to +3.2 us, against ~300 us or more of server CPU for a whole warm request.
The first version, with a per-header ``on_header`` count and ``super()`` calls, cost +6 us.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import math
import resource
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import httptools
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from modelfleet.config import Settings
from modelfleet.edge import listener_error

__all__ = [
    "ClientLimits",
    "Follower",
    "connection_cap",
    "listener_config",
    "protocol_class",
    "serve_listeners",
]

logger = logging.getLogger(__name__)

_LINGER_S = 2.0
"""After an error answer, how long unread request bytes are drained and dropped (so that the
client reads the answer instead of a reset) before the connection is closed."""

_MIN_RESERVE = 64


def connection_cap(requested: int | None) -> int:
    """The most open connections: ``requested`` (default: as many as fit) within the process's
    descriptor limit less a reserve of max(64, 1/8 of it) for files, pools and instances."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    room = max(1, soft - max(_MIN_RESERVE, soft // 8))
    if requested is None:
        return room
    if requested > room:
        logger.warning(
            "max connections %d lowered to %d: the descriptor limit is %d (ulimit -n)",
            requested,
            room,
            soft,
        )
        return room
    return requested


@dataclass(frozen=True)
class ClientLimits:
    """What one client may hold of a listener (see the module docstring)."""

    max_header_bytes: int = 64 * 1024
    max_header_count: int = 100
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    keep_alive_timeout_s: float = 5.0
    max_connections: int = 1024

    @classmethod
    def from_settings(cls, settings: Settings) -> ClientLimits:
        return cls(
            max_header_bytes=settings.max_header_size,
            max_header_count=settings.max_header_count,
            header_timeout_s=settings.header_timeout,
            body_timeout_s=settings.body_timeout,
            keep_alive_timeout_s=settings.keep_alive_timeout,
            max_connections=connection_cap(settings.max_connections),
        )

    def with_keep_alive(self, timeout_s: float) -> ClientLimits:
        return replace(self, keep_alive_timeout_s=timeout_s)

    @property
    def sweep_interval_s(self) -> float:
        shortest = min(self.header_timeout_s, self.body_timeout_s, self.keep_alive_timeout_s)
        return max(0.05, min(1.0, shortest / 4))


class _Phase(enum.Enum):
    BETWEEN = "between requests"  # nothing of the next request parsed yet
    HEADERS = "reading headers"
    BODY = "reading the body"
    REFUSED = "refused"  # an error was answered: input is dropped until the close


class _HeadersRefusedError(Exception):
    """Raised from a parser callback to stop parsing a request with too many headers."""


class ConnectionTable:
    """The open connections of one listener: which are idle (oldest first), which are reading
    a request (with a deadline), and the sweep that enforces the timeouts."""

    def __init__(self, limits: ClientLimits) -> None:
        self.limits = limits
        # The protocol updates these on its hot path, without a method call:
        self.open: set[LimitedHttpToolsProtocol] = set()
        self.idle_since: dict[LimitedHttpToolsProtocol, float] = {}  # oldest first
        self.reading: dict[LimitedHttpToolsProtocol, None] = {}  # deadline on the connection
        self._sweeper: asyncio.TimerHandle | None = None
        self._swept_at = 0.0

    def __len__(self) -> int:
        return len(self.open)

    def admit(self, conn: LimitedHttpToolsProtocol) -> bool:
        """Take a new connection, closing the longest-idle one at the cap; False: no room."""
        if len(self.open) >= self.limits.max_connections:
            if not self.idle_since:
                return False
            victim = next(iter(self.idle_since))
            logger.debug("at %d connections: closing the longest idle", len(self.open))
            self.forget(victim)
            victim.transport.close()
        self.open.add(conn)
        self.idle_since[conn] = conn.loop.time()
        if self._sweeper is None:
            self._swept_at = conn.loop.time()
            self._schedule(conn.loop)
        return True

    def forget(self, conn: LimitedHttpToolsProtocol) -> None:
        self.open.discard(conn)
        self.idle_since.pop(conn, None)
        self.reading.pop(conn, None)

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        self._sweeper = loop.call_later(self.limits.sweep_interval_s, self._sweep, loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        """Close what passed its deadline *before the previous sweep*: since then the loop has
        read every socket at least once, so a deadline missed while the server itself was
        stalled (a long GC, a starved CPU) is never blamed on the client, whose bytes may be
        waiting unread. A cut comes one to two sweep intervals after its deadline."""
        now, cutoff = loop.time(), self._swept_at
        idle_before = cutoff - self.limits.keep_alive_timeout_s
        expired = []
        for conn, since in self.idle_since.items():  # oldest first: stop at the first one in time
            if since > idle_before:
                break
            expired.append(conn)
        for conn in expired:
            self.forget(conn)
            conn.transport.close()
        for conn in [c for c in self.reading if c.overdue(cutoff)]:
            conn.timed_out()
        self._swept_at = now
        self._sweeper = None
        if self.open:
            self._schedule(loop)


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol under the :class:`ClientLimits` of its class's table
    (:func:`protocol_class` makes one class per listener)."""

    table: ClassVar[ConnectionTable]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._limits = self.table.limits
        self._phase = _Phase.BETWEEN
        self._deadline = math.inf
        self._header_bytes = 0  # fed to the parser since the last request's headers ended

    # -- connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if not self.table.admit(self):
            logger.debug("no room for a new connection (%d open)", len(self.table))
            self._phase = _Phase.REFUSED
            message = "The server holds its most connections, none idle; retry shortly."
            transport.write(listener_error("no-room", message))
            transport.close()  # no linger: lingering here would hold descriptors past the cap

    def connection_lost(self, exc: Exception | None) -> None:
        self.table.forget(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        phase = self._phase
        if phase is not _Phase.BODY:
            if phase is _Phase.REFUSED:
                return  # drained and dropped until the close
            room = self._limits.max_header_bytes - self._header_bytes
            if len(data) > room:
                self._past_allowance(data, room)
                return
            self._header_bytes += len(data)
        # uvicorn's data_received, inlined (this is the hot path), except for the answers to
        # a refusal (431, not 400) and the log level of an invalid request (clients can send
        # anything: debug).
        if self.timeout_keep_alive_task is not None:
            self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._parse_error(exc)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()

    def _past_allowance(self, data: bytes, room: int) -> None:
        """Feed what fits of the header allowance; the rest only if the headers ended in it."""
        limit = self._limits.max_header_bytes
        if room > 0:
            self.data_received(data[:room])  # fits: the count reaches the limit
        if self._phase is _Phase.REFUSED or self.transport.is_closing():
            return
        if self._header_bytes >= limit:  # not reset by on_headers_complete: still in headers
            self._refuse("headers-too-large", f"The request headers exceed {limit} bytes.")
        else:
            self.data_received(data[room:])

    def _parse_error(self, exc: httptools.HttpParserError) -> None:
        if isinstance(exc.__context__, _HeadersRefusedError):
            limit = self._limits.max_header_count
            self._refuse("headers-too-large", f"The request has more than {limit} headers.")
            return
        logger.debug("invalid HTTP request: %s", exc)
        self.send_400_response("Invalid HTTP request received.")

    # -- parser callbacks (each runs once a request: kept to a few attribute stores, and the
    # base class called directly, ~0.1 us less than super() on Python 3.11)

    def on_message_begin(self) -> None:
        HttpToolsProtocol.on_message_begin(self)
        self._phase = _Phase.HEADERS
        self._deadline = self.loop.time() + self._limits.header_timeout_s
        table = self.table
        table.idle_since.pop(self, None)
        table.reading[self] = None

    def on_headers_complete(self) -> None:
        # The count is checked here, not per header: the byte allowance already bounds what
        # the headers hold, and an override of on_header cost ~0.3 us a header.
        if len(self.headers) > self._limits.max_header_count:
            raise _HeadersRefusedError  # stops the parser; data_received answers 431
        self._phase = _Phase.BODY
        self._header_bytes = 0
        self._deadline = self.loop.time() + self._limits.body_timeout_s
        HttpToolsProtocol.on_headers_complete(self)

    def on_message_complete(self) -> None:
        self._phase = _Phase.BETWEEN
        self._deadline = math.inf
        self.table.reading.pop(self, None)
        HttpToolsProtocol.on_message_complete(self)
        if self.cycle.response_complete:  # answered before the body ended (say, too large)
            self._idle_if_done()

    def on_response_complete(self) -> None:
        HttpToolsProtocol.on_response_complete(self)
        self._idle_if_done()

    def _idle_if_done(self) -> None:
        """Idle: nothing being parsed, and the last request parsed is answered (so none is
        queued behind it)."""
        if (
            self._phase is _Phase.BETWEEN
            and self.cycle.response_complete
            and not self.transport.is_closing()
            and self in self.table.open
        ):
            idle = self.table.idle_since
            idle.pop(self, None)  # to the end: the dict's order is the order of going idle
            idle[self] = self.loop.time()

    # -- limits

    def overdue(self, cutoff: float) -> bool:
        """Past its deadline at ``cutoff``, and the client's fault: the server was not holding
        it back."""
        if cutoff < self._deadline:
            return False
        if self._phase is _Phase.REFUSED:
            return True
        if self.flow.read_paused:
            return False  # the app has not taken the body so far (or a pipelined request waits)
        if self._phase is _Phase.HEADERS and self.cycle is not None:
            return self.cycle.response_complete  # else pipelined behind a running request
        return True

    def timed_out(self) -> None:
        if self._phase is _Phase.REFUSED:
            self.transport.close()
            return
        if self._phase is _Phase.HEADERS:
            what, limit = "headers", self._limits.header_timeout_s
        else:
            what, limit = "body", self._limits.body_timeout_s
        logger.debug("request %s not received within %s s: closing", what, limit)
        cycle = self.cycle
        if self._phase is _Phase.BODY and cycle is not None:
            if not cycle.response_complete:
                # The app waits in receive(): it now gets http.disconnect; its answer is dropped.
                cycle.disconnected = True
                cycle.message_event.set()
            if cycle.response_started:  # an answer (maybe early, say 400) is out: no second one
                self.table.forget(self)
                self.transport.close()
                return
        self._refuse("timeout", f"The request {what} did not arrive within {limit:g} s.")

    def _refuse(self, reason: str, message: str) -> None:
        """Answer ``reason`` (edge.LISTENER_ERRORS), then drain input for a moment and close."""
        self._phase = _Phase.REFUSED
        self.table.idle_since.pop(self, None)
        self.table.reading[self] = None  # swept at the deadline below
        self._deadline = self.loop.time() + _LINGER_S
        if self.transport.is_closing():
            return
        self.transport.write(listener_error(reason, message))
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.flow.resume_reading()


def protocol_class(limits: ClientLimits) -> type[LimitedHttpToolsProtocol]:
    """A protocol class for one listener: its own connection table under ``limits``."""

    class ListenerProtocol(LimitedHttpToolsProtocol):
        table = ConnectionTable(limits)

    return ListenerProtocol


def listener_config(app: Any, limits: ClientLimits, **options: Any) -> uvicorn.Config:
    """A ``uvicorn.Config`` for ``app`` whose connections are held to ``limits`` (``options``
    are uvicorn's: host, port...)."""
    return uvicorn.Config(
        app,
        http=protocol_class(limits),
        ws="none",
        timeout_keep_alive=max(1, math.ceil(limits.keep_alive_timeout_s)),
        log_config=None,
        access_log=False,
        **options,
    )


class Follower(uvicorn.Server):
    """A listener that stops when its leader does; the leader alone takes the signals."""

    def __init__(self, config: uvicorn.Config, leader: uvicorn.Server) -> None:
        super().__init__(config)
        self._leader = leader

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def on_tick(self, counter: int) -> bool:
        if self._leader.should_exit:
            self.should_exit = True
        return await super().on_tick(counter)


async def serve_listeners(leader: uvicorn.Server, servers: list[Follower]) -> None:
    """Serve ``leader`` (whose app's lifespan starts and stops everything) and its followers
    (lifespan off) on this loop: the followers bind first, so a port in use stops the process
    before anything starts, and they close when the leader is told to stop (its signals, or
    ``should_exit``) or its serving ends."""
    tasks = [asyncio.create_task(server.serve()) for server in servers]
    try:
        for server, task in zip(servers, tasks, strict=True):
            while not server.started:  # bound, or failed (uvicorn exits the process)
                if task.done():
                    task.result()
                    raise RuntimeError("a listener stopped before it started")
                await asyncio.sleep(0.01)
        await leader.serve()
    finally:
        for server in servers:
            server.should_exit = True
        await asyncio.gather(*tasks, return_exceptions=True)

"""Loopback servers for model-source tests: moto's S3 server, and two misbehaving servers.

Every server listens on 127.0.0.1 on a free port (bound to port 0) and is stopped by whoever
started it; no test traffic leaves the machine.
"""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

from moto.server import ThreadedMotoServer

HOST = "127.0.0.1"


def free_port() -> int:
    """A port that was free a moment ago (bind to port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class MotoS3:
    """moto's S3-compatible server in a thread of the test process."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self._server = ThreadedMotoServer(ip_address=HOST, port=self.port, verbose=False)

    def start(self) -> MotoS3:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()


class _StatusHandler(BaseHTTPRequestHandler):
    server: StatusServer

    def _answer(self) -> None:
        self.server.requests += 1
        body = (
            b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>'
            + self.server.code.encode()
            + b"</Code><Message>refused by the test server</Message></Error>"
        )
        self.send_response(self.server.status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = do_PUT = _answer

    def log_message(self, format: str, *args: object) -> None:
        """Keep test output quiet."""


class StatusServer(ThreadingHTTPServer):
    """An HTTP server answering every request with one status and an S3-style error body."""

    daemon_threads = True

    def __init__(self, status: int, code: str) -> None:
        super().__init__((HOST, 0), _StatusHandler)
        self.status = status
        self.code = code
        self.requests = 0
        self.url = f"http://{HOST}:{self.server_address[1]}"
        self._thread = threading.Thread(target=self.serve_forever, name="status-server")

    def __enter__(self) -> StatusServer:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown()
        self._thread.join()
        self.server_close()


class SilentServer:
    """A server that accepts connections, counts them, and never answers nor closes them."""

    def __init__(self) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.bind((HOST, 0))
        self._socket.listen(64)
        self._socket.settimeout(0.05)  # how often the accepting thread looks at ``_stop``
        self.url = f"http://{HOST}:{self._socket.getsockname()[1]}"
        self.connections = 0
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="silent-server")

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._socket.accept()
            except TimeoutError:
                continue
            self._held.append(connection)
            self.connections += 1

    def __enter__(self) -> SilentServer:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()
        for connection in self._held:
            connection.close()
        self._socket.close()

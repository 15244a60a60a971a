"""A TCP proxy that gives a loopback S3 emulator the latency and per-stream bandwidth of S3.

moto on 127.0.0.1 answers in about a millisecond and streams at memory speed, so every cold
load it serves is CPU-bound, which S3 downloads are not: a GET from S3 waits tens of
milliseconds for its first byte and one stream moves tens of MB/s. Each request the proxy
forwards (each chunk from the client) waits ``--latency-ms`` first; each connection's response
bytes are paced at ``--mbps`` MB/s (10^6 bytes), from the moment its request was forwarded.

    python -m bench.shaper --port 9001 --target 127.0.0.1:9000 --latency-ms 30 --mbps 80

Loopback only: it listens on 127.0.0.1 and connects only to the target given (127.0.0.1).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

_CHUNK = 64 * 1024


class _Pace:
    """When a connection's response bytes may go out: ``bandwidth`` bytes/s from ``start``."""

    def __init__(self, bandwidth: float) -> None:
        self.bandwidth = bandwidth
        self.start = time.monotonic()
        self.sent = 0

    def restart(self) -> None:
        self.start, self.sent = time.monotonic(), 0

    async def send(self, count: int) -> None:
        self.sent += count
        delay = self.start + self.sent / self.bandwidth - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)


async def _upstream(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, latency_s: float, pace: _Pace
) -> None:
    while chunk := await reader.read(_CHUNK):
        await asyncio.sleep(latency_s)  # the request's round trip and time to first byte
        pace.restart()
        writer.write(chunk)
        await writer.drain()
    writer.write_eof()


async def _downstream(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pace: _Pace
) -> None:
    while chunk := await reader.read(_CHUNK):
        await pace.send(len(chunk))
        writer.write(chunk)
        await writer.drain()


async def serve(port: int, target: tuple[str, int], latency_s: float, bandwidth: float) -> None:
    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(*target)
        except OSError:
            client_w.close()
            return
        pace = _Pace(bandwidth)
        tasks = [
            asyncio.create_task(_upstream(client_r, server_w, latency_s, pace)),
            asyncio.create_task(_downstream(server_r, client_w, pace)),
        ]
        with contextlib.suppress(Exception):
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            await tasks[1]
        for task in tasks:
            task.cancel()
        for w in (client_w, server_w):
            w.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


@contextlib.contextmanager
def shaped(url: str, *, latency_ms: float, mbps: float) -> Iterator[str]:
    """Run the proxy in front of ``url`` (``http://127.0.0.1:PORT``); yield its URL; stop it."""
    target = url.removeprefix("http://").rstrip("/")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    argv = [sys.executable, "-m", "bench.shaper", "--port", str(port), "--target", target]
    argv += ["--latency-ms", str(latency_ms), "--mbps", str(mbps)]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the shaping proxy did not start")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--target", required=True, help="host:port of the server to shape")
    p.add_argument("--latency-ms", type=float, default=30.0)
    p.add_argument("--mbps", type=float, default=80.0, help="MB/s per connection")
    args = p.parse_args()
    host, _, port = args.target.rpartition(":")
    if host not in ("127.0.0.1", "localhost"):
        p.error("the target must be on loopback")
    asyncio.run(serve(args.port, (host, int(port)), args.latency_ms / 1000, args.mbps * 1e6))


if __name__ == "__main__":
    main()

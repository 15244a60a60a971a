"""Issue 11, section 4: clients cannot hold the server hostage.

Every test talks to a real ``modelfleet serve`` process over TCP on 127.0.0.1: raw sockets where
the client misbehaves on purpose (a header of 64 MiB, a header or a body sent a byte at a time,
idle connections by the thousand), boto3 where a real client is named. The limits are set
through ``MODELFLEET_*`` variables, so that the code before them starts the same server.

Time: a misbehaving client here is paced by ``select`` on its own socket (``POLL_S``), which
also sees the server's answer at once; the tests assert what happened (the answer, the cut, the
counters), never how long it took. Every wait is bounded in count and in time.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.artifacts import sklearn_artifact
from tests.servers import free_port, metric

ROW = b"0,1,2,3,4,5,6,7,8,9"
GOOD = "good/model.tar.gz"
CAFE = "café/model.tar.gz"
BOUND_S = 60.0  # the most any one wait below may take before the test fails
POLL_S = 0.05  # a trickling client's pace: one byte per poll of its socket
TIGHT = {  # the limits of the shared server: 1 s each
    "MODELFLEET_HEADER_TIMEOUT": "1",
    "MODELFLEET_BODY_TIMEOUT": "1",
    "MODELFLEET_KEEP_ALIVE_TIMEOUT": "1",
}
DISCONNECTS = "modelfleet_client_disconnects_total"
ERRORS_5XX = "modelfleet_invocation_5xx_errors_total"


class Server:
    """``python -m modelfleet serve`` in a child process, optionally under a descriptor limit."""

    def __init__(
        self,
        source: Path,
        folder: Path,
        env: dict[str, str],
        *,
        nofile: int | None = None,
        args: tuple[str, ...] = (),
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin_port = free_port()
        self.log = folder / "server.log"
        self._argv = [sys.executable, "-m", "modelfleet", "serve", "--host", "127.0.0.1"]
        self._argv += ["--port", str(self.port), "--admin-port", str(self.admin_port)]
        self._argv += ["--model-source", str(source)]
        self._argv += ["--cache-dir", str(folder / "cache"), "--log-level", "debug", *args]
        self._env = {**os.environ, **env}
        self._nofile = nofile
        self.proc: subprocess.Popen[bytes] | None = None

    def _limit_descriptors(self) -> None:  # runs in the child, before exec
        if self._nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (self._nofile, self._nofile))

    def start(self) -> Server:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                self._argv,
                env=self._env,
                stdout=log,
                stderr=log,
                preexec_fn=self._limit_descriptors,  # only setrlimit: safe before exec
            )
        deadline = time.monotonic() + BOUND_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log.read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/ping", timeout=1).status_code == 200:
                    return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"server did not start:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def metrics(self) -> str:
        return httpx.get(f"http://127.0.0.1:{self.admin_port}/metrics", timeout=30).text

    def memory(self, field: str) -> int:
        """A ``/proc/<pid>/status`` figure in bytes (VmRSS, VmHWM)."""
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise AssertionError(f"no {field} in /proc/{self.proc.pid}/status")

    def reset_peak_memory(self) -> None:
        """Start VmHWM again from the current RSS (Linux's clear_refs 5)."""
        assert self.proc is not None
        Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")


@contextlib.contextmanager
def serving(
    source: Path,
    folder: Path,
    env: dict[str, str],
    *,
    nofile: int | None = None,
    args: tuple[str, ...] = (),
) -> Iterator[Server]:
    folder.mkdir(parents=True, exist_ok=True)
    server = Server(source, folder, env, nofile=nofile, args=args).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("source")
    for name in (GOOD, CAFE):
        (root / name).parent.mkdir(parents=True)
        (root / name).write_bytes(sklearn_artifact(seed=0))
    return root


@pytest.fixture(scope="module")
def server(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the tests that leave it as they found it: 1 s timeouts."""
    with serving(source, tmp_path_factory.mktemp("tight"), TIGHT) as srv:
        assert invoke(srv.url, GOOD).status_code == 200  # loaded: nothing slow happens later
        yield srv


def invoke(url: str, target: str, body: bytes = ROW, content_type: str = "text/csv") -> Any:
    return httpx.post(
        f"{url}/endpoints/default/invocations",
        content=body,
        headers={"X-Amzn-SageMaker-Target-Model": target.encode(), "Content-Type": content_type},
        timeout=BOUND_S,
    )


def runtime_client(url: str) -> Any:
    return boto3.client(
        "sagemaker-runtime",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(retries={"total_max_attempts": 1, "mode": "standard"}, read_timeout=120),
    )


_OPENED: list[socket.socket] = []


@pytest.fixture(autouse=True)
def _close_sockets() -> Iterator[None]:
    """Every socket a test opened is closed, even when the test fails half-way."""
    yield
    while _OPENED:
        _OPENED.pop().close()


def connect(url: str) -> socket.socket:
    port = int(url.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port), timeout=BOUND_S)
    _OPENED.append(sock)
    return sock


def read_answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (bounded)."""
    sock.settimeout(BOUND_S)
    answer = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def trickle(sock: socket.socket, total: int) -> int:
    """Send ``total`` bytes one at a time, one per ``POLL_S``, until the server answers or
    closes; the number of bytes sent."""
    for sent in range(total):
        readable, _, _ = select.select([sock], [], [], POLL_S)
        if readable:
            return sent
        try:
            sock.send(b"1")
        except (BrokenPipeError, ConnectionResetError):
            return sent
    return total


def status_of(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    return int(answer.split(b" ", 2)[1])


def body_of(answer: bytes) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    return document


def request_head(target: str = GOOD, extra: bytes = b"") -> bytes:
    return (
        b"POST /endpoints/default/invocations HTTP/1.1\r\nHost: test\r\n"
        b"Content-Type: text/csv\r\nX-Amzn-SageMaker-Target-Model: "
        + target.encode()
        + b"\r\n"
        + extra
    )


def ping(sock: socket.socket) -> bytes:
    """GET /ping on an open keep-alive connection; the answer's head and (empty) body."""
    sock.sendall(b"GET /ping HTTP/1.1\r\nHost: test\r\n\r\n")
    sock.settimeout(BOUND_S)
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(65536)
        if not chunk:
            break
        answer += chunk
    return answer


def closed_by_server(sock: socket.socket) -> bool:
    """Wait (bounded) for the server to close ``sock``; whether it did."""
    sock.settimeout(BOUND_S)
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


# ---------------------------------------------------------------- header size and count


def test_a_64_mib_header_is_refused_without_reading_it(server: Server) -> None:
    server.reset_peak_memory()
    before = server.memory("VmRSS")
    sock = connect(server.url)
    sock.sendall(b"GET /ping HTTP/1.1\r\nHost: test\r\nX-Huge: ")
    chunk, sent = b"a" * 65536, 0
    while sent < 64 << 20:
        readable, writable, _ = select.select([sock], [sock], [], BOUND_S)
        assert readable or writable, "the server neither read nor answered"
        if readable:
            break  # answered (or closed) before the end of the header
        try:
            sent += sock.send(chunk)
        except (BrokenPipeError, ConnectionResetError):
            break
    else:
        sock.sendall(b"\r\n\r\n")
    answer = read_answer(sock)
    sock.close()
    assert status_of(answer) == 431
    assert body_of(answer)["__type"] == "ValidationError"
    assert sent < 64 << 20, "the whole header was read"
    grown = server.memory("VmHWM") - before
    assert grown < 8 << 20, f"the server's peak RSS grew by {grown / 2**20:.1f} MiB"
    assert invoke(server.url, GOOD).status_code == 200


def test_too_many_headers_are_refused(server: Server) -> None:
    sock = connect(server.url)
    headers = b"".join(b"X-Header-%d: %d\r\n" % (i, i) for i in range(200))
    sock.sendall(b"GET /ping HTTP/1.1\r\nHost: test\r\n" + headers + b"\r\n")
    answer = read_answer(sock)
    sock.close()
    assert status_of(answer) == 431
    assert "headers" in body_of(answer)["message"]
    assert invoke(server.url, GOOD).status_code == 200


# ---------------------------------------------------------------- timeouts


def test_headers_sent_a_byte_at_a_time_are_cut_off(server: Server) -> None:
    sock = connect(server.url)
    sock.sendall(b"POST /endpoints/default/invocations HTTP/1.1\r\nHost: test\r\nX-Slow: ")
    sent = trickle(sock, 400)  # 400 polls: many times the 1 s header timeout
    answer = read_answer(sock)
    sock.close()
    assert sent < 400, "the server waited for the whole header"
    assert status_of(answer) == 408
    assert body_of(answer)["__type"] == "RequestTimeout"
    assert invoke(server.url, GOOD).status_code == 200


def test_a_body_sent_a_byte_at_a_time_is_cut_off_and_counted_apart(server: Server) -> None:
    before = server.metrics()
    sock = connect(server.url)
    sock.sendall(request_head(extra=b"Content-Length: 400\r\n\r\n"))
    sent = trickle(sock, 400)  # 400 polls: many times the 1 s body timeout
    answer = read_answer(sock)
    sock.close()
    assert sent < 400, "the server waited for the whole body"
    assert status_of(answer) == 408
    assert "body" in body_of(answer)["message"]
    assert invoke(server.url, GOOD).status_code == 200
    after = server.metrics()
    assert metric(after, DISCONNECTS) == metric(before, DISCONNECTS) + 1
    assert metric(after, ERRORS_5XX) == metric(before, ERRORS_5XX)
    assert "Traceback" not in server.log.read_text()


def test_an_idle_connection_is_closed(server: Server) -> None:
    """A connection that never sends a byte (uvicorn's keep-alive timeout starts only after a
    first response)."""
    sock = connect(server.url)
    assert closed_by_server(sock)
    sock.close()


# ---------------------------------------------------------------- a client gone mid-body


def test_a_client_gone_mid_body_is_no_server_error(server: Server) -> None:
    before = server.metrics()
    sock = connect(server.url)
    sock.sendall(request_head(extra=b"Content-Length: 1000\r\n\r\n") + b"0,1,2,3")
    sock.close()
    deadline = time.monotonic() + BOUND_S
    after = server.metrics()
    while metric(after, DISCONNECTS) == metric(before, DISCONNECTS):
        assert time.monotonic() < deadline, "the disconnect was never counted"
        time.sleep(POLL_S)
        after = server.metrics()
    assert metric(after, DISCONNECTS) == metric(before, DISCONNECTS) + 1
    assert metric(after, ERRORS_5XX) == metric(before, ERRORS_5XX)
    log = server.log.read_text()
    assert "Traceback" not in log
    assert "internal failure" not in log
    assert "client went away" in log  # at debug level


# ---------------------------------------------------------------- bodies and names


def test_a_deeply_nested_json_body_is_a_400(server: Server) -> None:
    nested = b"[" * 100_000 + b"]" * 100_000  # 200 KB
    response = invoke(server.url, GOOD, nested, "application/json")
    assert response.status_code == 400, response.text
    assert response.headers["x-amzn-errortype"] == "ValidationError"
    assert "nested too deeply" in response.json()["message"]
    assert invoke(server.url, GOOD).status_code == 200


def test_a_non_ascii_target_model_from_boto3(server: Server) -> None:
    client = runtime_client(server.url)
    answer = client.invoke_endpoint(
        EndpointName="default", TargetModel=CAFE, ContentType="text/csv", Body=ROW
    )
    same_model = client.invoke_endpoint(
        EndpointName="default", TargetModel=GOOD, ContentType="text/csv", Body=ROW
    )
    assert answer["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert json.loads(answer["Body"].read()) == json.loads(same_model["Body"].read())


def test_a_non_ascii_target_model_through_the_router_to_an_instance(
    source: Path, tmp_path: Path
) -> None:
    """With ``--instances 2`` the router forwards the name (as UTF-8) to an instance process,
    whose listener decodes it again."""
    with serving(source, tmp_path, {}, args=("--instances", "2")) as srv:
        client = runtime_client(srv.url)
        answer = client.invoke_endpoint(
            EndpointName="default", TargetModel=CAFE, ContentType="text/csv", Body=ROW
        )
        assert answer["ResponseMetadata"]["HTTPStatusCode"] == 200
        assert len(json.loads(answer["Body"].read())) == 1


def test_a_target_model_that_is_not_utf8_is_a_400(server: Server) -> None:
    response = httpx.post(
        f"{server.url}/endpoints/default/invocations",
        content=ROW,
        headers={"X-Amzn-SageMaker-Target-Model": b"caf\xe9/model.tar.gz"},
        timeout=BOUND_S,
    )
    assert response.status_code == 400
    assert "UTF-8" in response.json()["message"]


@pytest.mark.parametrize(
    "target",
    [
        "x" * 1024,  # 1,024 characters, all in one file name
        "good/" + "y" * 256,  # one segment over 255 bytes, in a folder that exists
        "good/" + "é" * 128,  # 128 characters, 256 bytes in UTF-8
    ],
)
def test_too_long_target_models_are_validation_errors(server: Server, target: str) -> None:
    client = runtime_client(server.url)
    with pytest.raises(ClientError) as caught:
        client.invoke_endpoint(
            EndpointName="default", TargetModel=target, ContentType="text/csv", Body=ROW
        )
    error = caught.value.response
    assert error["Error"]["Code"] == "ValidationError"
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert "retry-after" not in error["ResponseMetadata"]["HTTPHeaders"]


# ---------------------------------------------------------------- the connection cap


def test_at_the_cap_the_longest_idle_connection_is_closed(source: Path, tmp_path: Path) -> None:
    env = {"MODELFLEET_MAX_CONNECTIONS": "4", "MODELFLEET_KEEP_ALIVE_TIMEOUT": "300"}
    with serving(source, tmp_path, env) as srv:
        socks = [connect(srv.url) for _ in range(4)]
        for sock in socks:  # each answered once, so idle in this order
            assert ping(sock).startswith(b"HTTP/1.1 200")
        newcomer = connect(srv.url)
        assert ping(newcomer).startswith(b"HTTP/1.1 200")
        assert closed_by_server(socks[0])
        for sock in socks[1:]:
            assert ping(sock).startswith(b"HTTP/1.1 200")
        for sock in [*socks, newcomer]:
            sock.close()


def test_at_the_cap_with_no_idle_connection_a_new_one_gets_503(
    source: Path, tmp_path: Path
) -> None:
    env = {"MODELFLEET_MAX_CONNECTIONS": "2", "MODELFLEET_KEEP_ALIVE_TIMEOUT": "300"}
    with serving(source, tmp_path, env) as srv:
        busy = [connect(srv.url) for _ in range(2)]
        for sock in busy:  # headers read, the app waits for the body: not idle
            sock.sendall(request_head(extra=b"Expect: 100-continue\r\nContent-Length: 19\r\n\r\n"))
            sock.settimeout(BOUND_S)
            assert sock.recv(65536).startswith(b"HTTP/1.1 100")
        refused = connect(srv.url)
        answer = read_answer(refused)
        refused.close()
        assert status_of(answer) == 503
        assert b"Retry-After: 1" in answer
        for sock in busy:  # the two held connections are served
            sock.sendall(ROW)
            assert read_until_body(sock).startswith(b"HTTP/1.1 200")
            sock.close()


def read_until_body(sock: socket.socket) -> bytes:
    sock.settimeout(BOUND_S)
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(65536)
        if not chunk:
            break
        answer += chunk
    return answer


def test_1100_idle_connections_under_a_1024_descriptor_limit(source: Path, tmp_path: Path) -> None:
    """The issue's acceptance: ``ulimit -n 1024`` on the server, 1,100 idle connections open,
    and a normal client is still served (the idle timeout is long: the cap does it)."""
    env = {"MODELFLEET_KEEP_ALIVE_TIMEOUT": "300"}
    with serving(source, tmp_path, env, nofile=1024) as srv:
        idle = [connect(srv.url) for _ in range(1100)]
        try:
            client = runtime_client(srv.url)
            for _ in range(3):
                answer = client.invoke_endpoint(
                    EndpointName="default", TargetModel=GOOD, ContentType="text/csv", Body=ROW
                )
                assert answer["ResponseMetadata"]["HTTPStatusCode"] == 200
            assert httpx.get(f"{srv.url}/ping", timeout=BOUND_S).status_code == 200
            poller = select.poll()  # not select(): these descriptors pass FD_SETSIZE
            for sock in idle:
                poller.register(sock, select.POLLIN)
            closed = poller.poll(0)  # those closed by the server are readable (EOF)
            assert len(closed) >= 1100 - 1024, "the server held more than its descriptors"
        finally:
            for sock in idle:
                sock.close()
        assert "Too many open files" not in srv.log.read_text()

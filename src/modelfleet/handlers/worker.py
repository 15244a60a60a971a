"""An ``inference.py`` model served by a worker process in its own environment.

The server side (:class:`WorkerModel`) starts ``<env>/bin/python -m modelfleet.handlers.worker``
(:mod:`.environments` built the environment), which loads the model with the ``inference.py``
handler and then answers one request at a time, as a SageMaker toolkit worker does. Messages
are a JSON line, then the body bytes it announces; nothing is pickled, so the server never
unpickles what the worker sends. The worker's own stdout is the channel: what the model's code
prints goes to its stderr, which the server logs line by line.

A worker that ends while loading fails the load (ModelLoadError); one that ends during a request
fails that request (ModelInvocationError, 500), and the next request starts a new worker, which
loads the model again. ``close()`` ends the worker.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Any

from modelfleet.errors import (
    ModelError,
    ModelInvocationError,
    ModelLoadError,
    UnsupportedContentTypeError,
)
from modelfleet.handlers.base import LoadedModel, Prediction
from modelfleet.handlers.detect import INFERENCE_PY

logger = logging.getLogger(__name__)

_STOP_WAIT_S = 5.0


def _send(stream: IO[bytes], header: dict[str, Any], body: bytes = b"") -> None:
    stream.write(json.dumps({**header, "body_bytes": len(body)}).encode() + b"\n" + body)
    stream.flush()


def _receive(stream: IO[bytes]) -> tuple[dict[str, Any], bytes] | None:
    line = stream.readline()
    if not line:
        return None
    header: dict[str, Any] = json.loads(line)
    size = int(header.pop("body_bytes", 0))
    body = stream.read(size) if size else b""
    if len(body) != size:
        return None
    return header, body


def _error_header(exc: BaseException) -> dict[str, Any]:
    status = exc.original_status_code if isinstance(exc, ModelError) else 500
    return {"error": type(exc).__name__, "message": str(exc), "status": status}


class WorkerModel(LoadedModel):
    """A model whose ``inference.py`` runs in a worker process."""

    handler_name = INFERENCE_PY
    concurrency = 1

    def __init__(self, model_id: str, model_dir: Path, python: Path) -> None:
        self.model_id = model_id
        self._model_dir = model_dir
        self._python = python
        self._lock = threading.Lock()
        self._start()

    def _start(self) -> None:
        """Start a worker and load the model in it; ModelLoadError if it cannot."""
        env = {**os.environ, "PYTHONNOUSERSITE": "1", "PYTHONDONTWRITEBYTECODE": "1"}
        self._process = subprocess.Popen(
            [str(self._python), "-m", "modelfleet.handlers.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        self._logging = threading.Thread(
            target=self._log_stderr,
            args=(self._process,),
            name=f"worker-log-{self.model_id}",
            daemon=True,
        )
        self._logging.start()
        load = {"op": "load", "model_dir": str(self._model_dir), "model_id": self.model_id}
        try:
            header, _ = self._call(load)
        except ModelError as exc:
            self.close()
            raise ModelLoadError(f"The worker of model {self.model_id} failed: {exc}") from exc
        if "error" in header:
            self.close()
            raise ModelLoadError(header["message"])
        self.pid = self._process.pid
        self.framework = header.get("framework")

    def _log_stderr(self, process: subprocess.Popen[bytes]) -> None:
        stream = process.stderr
        assert stream is not None
        with stream:
            for line in stream:
                text = line.decode("utf-8", "replace").rstrip()
                logger.info("model %s worker: %s", self.model_id, text)

    def _call(self, header: dict[str, Any], body: bytes = b"") -> tuple[dict[str, Any], bytes]:
        stdin, stdout = self._process.stdin, self._process.stdout
        assert stdin is not None
        assert stdout is not None
        try:
            _send(stdin, header, body)
            reply = _receive(stdout)
        except (OSError, ValueError):
            reply = None
        if reply is None:
            try:
                code = self._process.wait(timeout=_STOP_WAIT_S)
            except subprocess.TimeoutExpired:  # alive but its channel is broken
                self._process.kill()
                code = self._process.wait()
            raise ModelInvocationError(
                f"The worker process of model {self.model_id} ended (exit status {code})"
            )
        return reply

    def invoke(
        self,
        body: bytes,
        content_type: str | None,
        accept: str | None,
        custom_attributes: str | None = None,
    ) -> Prediction:
        request: dict[str, Any] = {"op": "invoke", "content_type": content_type}
        request |= {"accept": accept, "custom_attributes": custom_attributes}
        with self._lock:
            if self._process.poll() is not None:  # it ended during an earlier request
                logger.warning("Restarting the worker of model %s", self.model_id)
                self.close()  # its pipes and log thread
                try:
                    self._start()
                except ModelLoadError as exc:
                    raise ModelInvocationError(exc.message) from exc
            header, answer = self._call(request, body)
        if "error" in header:
            if header["error"] == UnsupportedContentTypeError.__name__:
                raise UnsupportedContentTypeError(header["message"])
            raise ModelInvocationError(header["message"], original_status_code=header["status"])
        return Prediction(
            body=answer,
            content_type=header["content_type"],
            custom_attributes=header.get("custom_attributes"),
        )

    def size_bytes(self) -> int | None:
        """The worker's resident memory: the model lives there, not in the server."""
        import psutil

        try:
            return int(psutil.Process(self._process.pid).memory_info().rss)
        except psutil.Error:
            return None

    def close(self) -> None:
        process = self._process
        if process.poll() is None:
            if process.stdin is not None:
                with contextlib.suppress(OSError):
                    process.stdin.close()  # the worker's loop ends at end of input
            try:
                process.wait(timeout=_STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        self._logging.join(timeout=_STOP_WAIT_S)  # it closes stderr at the worker's end


def main() -> None:
    """The worker: load the model named on stdin, then answer requests until stdin ends."""
    channel = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # the model's prints go to stderr, never into the channel
    sys.stdout = sys.stderr
    source = sys.stdin.buffer
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s")
    from modelfleet.handlers import toolkit

    message = _receive(source)
    if message is None:
        return
    try:
        model = toolkit.load(Path(message[0]["model_dir"]), model_id=message[0]["model_id"])
    except BaseException as exc:  # reported, then the worker ends
        _send(channel, _error_header(exc))
        return
    _send(channel, {"framework": model.functions.framework})
    while (message := _receive(source)) is not None:
        request, body = message
        try:
            prediction = model.invoke(
                body, request["content_type"], request["accept"], request["custom_attributes"]
            )
        except BaseException as exc:  # every failure is the request's, as in-process
            _send(channel, _error_header(exc))
            continue
        answer: dict[str, Any] = {"content_type": prediction.content_type}
        answer["custom_attributes"] = prediction.custom_attributes
        _send(channel, answer, prediction.body)
    model.close()


if __name__ == "__main__":
    main()

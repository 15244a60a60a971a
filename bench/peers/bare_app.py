"""The bare baseline: Starlette + uvicorn calling one scikit-learn model's ``predict``.

No serving framework: the model file is loaded once at start, each request's CSV body becomes a
2-D float array, ``predict`` runs on the event loop (or, with ``--threaded``, in a thread pool,
as a serving framework that keeps its loop free must) and the answer is JSON. This is the
near-limit of what a Python server on the same stack can do, and the baseline that every other
system's warm-path throughput is divided by.

``python -m bench.peers.bare_app --model FILE --port P [--loop uvloop --http httptools]``
serves ``POST /endpoints/{name}/invocations`` (the target-model header is accepted and ignored)
and ``GET /ping``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import numpy.typing as npt
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

JSON = "application/json"
Predict = Callable[[npt.NDArray[np.float64]], Any]


def parse_csv(body: bytes) -> npt.NDArray[np.float64]:
    """Rows of comma-separated numbers to a 2-D float array."""
    return np.array([line.split(b",") for line in body.splitlines() if line], dtype=np.float64)


def encode_json(prediction: Any) -> bytes:
    values = prediction.tolist() if hasattr(prediction, "tolist") else prediction
    return json.dumps(values).encode()


def error(status: int, message: str) -> Response:
    return Response(json.dumps({"message": message}), status_code=status, media_type=JSON)


def ping(request: Request) -> Response:
    return Response(b"", status_code=200)


def create_app(model_path: Path, *, threaded: bool = False) -> Starlette:
    """The bare app over the estimator in ``model_path``."""
    estimator = joblib.load(model_path)
    predict: Predict = estimator.predict
    pool = ThreadPoolExecutor(4, thread_name_prefix="bare-infer") if threaded else None

    async def invocations(request: Request) -> Response:
        body = await request.body()
        try:
            features = parse_csv(body)
        except ValueError as exc:
            return error(400, str(exc))
        if pool is None:
            prediction = predict(features)
        else:
            loop = asyncio.get_running_loop()
            prediction = await loop.run_in_executor(pool, predict, features)
        return Response(encode_json(prediction), media_type=JSON)

    return Starlette(
        routes=[
            Route("/endpoints/{endpoint_name}/invocations", invocations, methods=["POST"]),
            Route("/ping", ping, methods=["GET"]),
        ]
    )


def serve(app: Starlette, args: argparse.Namespace) -> None:
    """Run ``app`` on uvicorn with the loop and HTTP parser chosen on the command line."""
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=args.port,
        loop=args.loop,
        http=args.http,
        log_level="warning",
        access_log=False,
    )
    uvicorn.Server(config).run()


def arguments(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--loop", default="asyncio", choices=["asyncio", "uvloop", "auto"])
    p.add_argument("--http", default="h11", choices=["h11", "httptools", "auto"])
    return p


def main() -> None:
    p = arguments(__doc__ or "")
    p.add_argument("--model", type=Path, required=True, help="a joblib file")
    p.add_argument("--threaded", action="store_true", help="predict in a thread pool")
    args = p.parse_args()
    serve(create_app(args.model, threaded=args.threaded), args)


if __name__ == "__main__":
    main()

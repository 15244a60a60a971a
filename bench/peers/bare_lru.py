"""A bare multi-model server with a byte-budgeted LRU cache: the simplest thing that works.

Each request names its model in ``X-Amzn-SageMaker-Target-Model`` (a file under the model
folder). A hit predicts at once; a miss loads the joblib file in a thread (one load per model at
a time: concurrent misses of one model wait on the same load), then evicts least-recently-used
models until the file sizes of the resident ones fit the budget. It is what SageMaker's MME and
ModelMesh do (LRU by bytes), with no serving framework around it.

``python -m bench.peers.bare_lru --model-dir DIR --budget-bytes N --port P`` serves
``POST /endpoints/{name}/invocations``, ``GET /ping`` and ``GET /stats`` (hits, misses, loads,
evictions, resident bytes).
"""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict
from pathlib import Path
from typing import Any

import joblib
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bench.peers.bare_app import JSON, arguments, encode_json, error, parse_csv, ping, serve

TARGET_HEADER = "x-amzn-sagemaker-target-model"


class ByteLRU:
    """Loaded estimators keyed by file name, evicted least-recently-used past a byte budget."""

    def __init__(self, model_dir: Path, budget_bytes: int) -> None:
        self.model_dir = model_dir.resolve()
        self.budget_bytes = budget_bytes
        self.resident: OrderedDict[str, tuple[Any, int]] = OrderedDict()
        self.resident_bytes = 0
        self.pending: dict[str, asyncio.Task[Any]] = {}
        self.stats = {"hits": 0, "misses": 0, "loads": 0, "evictions": 0}

    async def get(self, key: str) -> Any:
        entry = self.resident.get(key)
        if entry is not None:
            self.resident.move_to_end(key)
            self.stats["hits"] += 1
            return entry[0]
        self.stats["misses"] += 1
        task = self.pending.get(key)
        if task is None:
            task = asyncio.create_task(self._load(key))
            self.pending[key] = task
            task.add_done_callback(lambda _: self.pending.pop(key, None))
        return await asyncio.shield(task)

    async def _load(self, key: str) -> Any:
        path = (self.model_dir / key).resolve()
        if not path.is_relative_to(self.model_dir) or not path.is_file():
            raise FileNotFoundError(key)
        size = path.stat().st_size
        estimator = await asyncio.to_thread(joblib.load, path)
        self.stats["loads"] += 1
        self.resident[key] = (estimator, size)
        self.resident_bytes += size
        while self.resident_bytes > self.budget_bytes and len(self.resident) > 1:
            _, (_, freed) = self.resident.popitem(last=False)
            self.resident_bytes -= freed
            self.stats["evictions"] += 1
        return estimator


def create_app(cache: ByteLRU) -> Starlette:
    async def invocations(request: Request) -> Response:
        key = request.headers.get(TARGET_HEADER)
        if not key:
            return error(400, "missing target model")
        body = await request.body()
        try:
            estimator = await cache.get(key)
        except FileNotFoundError:
            return error(400, f"no model {key}")
        try:
            features = parse_csv(body)
        except ValueError as exc:
            return error(400, str(exc))
        return Response(encode_json(estimator.predict(features)), media_type=JSON)

    async def stats(request: Request) -> Response:
        figures = {**cache.stats, "resident_bytes": cache.resident_bytes}
        return Response(json.dumps(figures), media_type=JSON)

    return Starlette(
        routes=[
            Route("/endpoints/{endpoint_name}/invocations", invocations, methods=["POST"]),
            Route("/ping", ping, methods=["GET"]),
            Route("/stats", stats, methods=["GET"]),
        ]
    )


def main() -> None:
    p = arguments(__doc__ or "")
    p.add_argument("--model-dir", type=Path, required=True)
    p.add_argument("--budget-bytes", type=int, required=True)
    args = p.parse_args()
    serve(create_app(ByteLRU(args.model_dir, args.budget_bytes)), args)


if __name__ == "__main__":
    main()

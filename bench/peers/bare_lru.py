"""A bare multi-model server with an LRU cache of loaded models: the simplest thing that works.

Each request names its model in ``X-Amzn-SageMaker-Target-Model`` (a file under the model
folder). A hit predicts at once; a miss loads the joblib file in a thread (one load per model at
a time: concurrent misses of one model wait on the same load), then evicts least-recently-used
models until the file sizes of the resident ones fit the budget. It is what SageMaker's MME and
ModelMesh do (LRU by bytes), with no serving framework around it.

``--budget-models N`` instead keeps at most N models whatever their sizes, and loads them with
``joblib.load`` on the event loop itself (no thread, so a load stops every other request): the
naive server a team writes first, and the baseline issue 13 measured against.

``python -m bench.peers.bare_lru --model-dir DIR (--budget-bytes N | --budget-models N) --port P``
serves ``POST /endpoints/{name}/invocations``, ``GET /ping`` and ``GET /stats`` (hits, misses,
loads, evictions, resident bytes).
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


class LRU:
    """Loaded estimators keyed by file name, evicted least-recently-used past a budget: of
    bytes (file sizes), or of models (``by_count``, loaded on the event loop)."""

    def __init__(self, model_dir: Path, budget: int, *, by_count: bool = False) -> None:
        self.model_dir = model_dir.resolve()
        self.budget = budget
        self.by_count = by_count
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
        if self.by_count:
            return self._admit(key, joblib.load(self._path(key)), 1)
        task = self.pending.get(key)
        if task is None:
            task = asyncio.create_task(self._load(key))
            self.pending[key] = task
            task.add_done_callback(lambda _: self.pending.pop(key, None))
        return await asyncio.shield(task)

    def _path(self, key: str) -> Path:
        path = (self.model_dir / key).resolve()
        if not path.is_relative_to(self.model_dir) or not path.is_file():
            raise FileNotFoundError(key)
        return path

    async def _load(self, key: str) -> Any:
        path = self._path(key)
        estimator = await asyncio.to_thread(joblib.load, path)
        return self._admit(key, estimator, path.stat().st_size)

    def _admit(self, key: str, estimator: Any, size: int) -> Any:
        self.stats["loads"] += 1
        self.resident[key] = (estimator, size)
        self.resident_bytes += size
        while self._over() and len(self.resident) > 1:
            _, (_, freed) = self.resident.popitem(last=False)
            self.resident_bytes -= freed
            self.stats["evictions"] += 1
        return estimator

    def _over(self) -> bool:
        if self.by_count:
            return len(self.resident) > self.budget
        return self.resident_bytes > self.budget


def create_app(cache: LRU) -> Starlette:
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
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--budget-bytes", type=int)
    budget.add_argument("--budget-models", type=int)
    args = p.parse_args()
    if args.budget_models is not None:
        cache = LRU(args.model_dir, args.budget_models, by_count=True)
    else:
        cache = LRU(args.model_dir, args.budget_bytes)
    serve(create_app(cache), args)


if __name__ == "__main__":
    main()

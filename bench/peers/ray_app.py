# mypy: ignore-errors
# Runs in bench/.venvs/ray (Ray is no project dependency), so it cannot be type-checked with
# the project's environment.
"""Ray Serve peer: one deployment whose models come through ``@serve.multiplexed``.

The model id is the ``X-Amzn-SageMaker-Target-Model`` header (a joblib file under the model
folder), or Ray's own ``serve_multiplexed_model_id`` header when that is set; with
``--model`` every request uses that one file. The multiplexed loader runs ``joblib.load`` in a
thread, so a load does not stall the replica's loop; ``predict`` runs on the replica's loop, as in
the bare app. Loads are counted and exposed at ``GET /stats`` (per replica; the benchmark asks
once per replica).

Start inside a loopback-only network namespace (Ray probes the cloud metadata address when it
starts): ``unshare --net bash -c 'ip link set lo up; python ray_app.py --port P ...'``. The
``RAY_SERVE_THROUGHPUT_OPTIMIZED`` and ``RAY_SERVE_ENABLE_HA_PROXY`` switches are environment
variables read when Ray starts; the benchmark sets them for the "best" configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import threading
from pathlib import Path

import joblib
import numpy as np
import ray
from ray import serve
from starlette.requests import Request
from starlette.responses import Response

TARGET_HEADER = "x-amzn-sagemaker-target-model"
JSON = "application/json"


def parse_csv(body: bytes):
    return np.array([line.split(b",") for line in body.splitlines() if line], dtype=np.float64)


def build(model_dir: str, fixed_model: str | None, max_models: int):
    @serve.deployment
    class Models:
        def __init__(self) -> None:
            self.model_dir = Path(model_dir).resolve()
            self.stats = {"requests": 0, "loads": 0}
            self.replica = os.getpid()

        @serve.multiplexed(max_num_models_per_replica=max_models)
        async def get_model(self, model_id: str):
            path = (self.model_dir / model_id).resolve()
            if not path.is_relative_to(self.model_dir) or not path.is_file():
                raise FileNotFoundError(model_id)
            estimator = await asyncio.to_thread(joblib.load, path)
            self.stats["loads"] += 1
            return estimator

        async def __call__(self, request: Request) -> Response:
            if request.url.path.endswith("/stats"):
                figures = {**self.stats, "replica": self.replica}
                return Response(json.dumps(figures), media_type=JSON)
            if request.method == "GET":
                return Response(b"", status_code=200)
            model_id = (
                fixed_model
                or request.headers.get(TARGET_HEADER)
                or serve.get_multiplexed_model_id()
            )
            body = await request.body()
            self.stats["requests"] += 1
            try:
                estimator = await self.get_model(model_id)
            except FileNotFoundError:
                return Response(b'{"message": "no such model"}', status_code=400)
            prediction = estimator.predict(parse_csv(body))
            return Response(json.dumps(prediction.tolist()).encode(), media_type=JSON)

    return Models


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--model-dir", required=True)
    p.add_argument("--model", default=None, help="serve this one file for every request")
    p.add_argument("--max-models", type=int, default=3)
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--max-ongoing", type=int, default=None, help="Ray's default when left out")
    p.add_argument("--num-cpus", type=int, default=2)
    args = p.parse_args()

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    ray.init(
        num_cpus=args.num_cpus,
        include_dashboard=False,
        object_store_memory=128 * 1024 * 1024,
        log_to_driver=False,
    )
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})
    options = {"num_replicas": args.replicas, "ray_actor_options": {"num_cpus": 0}}
    if args.max_ongoing is not None:
        options["max_ongoing_requests"] = args.max_ongoing
    deployment = build(args.model_dir, args.model, args.max_models).options(**options)
    serve.run(deployment.bind(), name="models", route_prefix="/", blocking=False)
    print("ray serve ready", flush=True)
    stop.wait(3600)
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()

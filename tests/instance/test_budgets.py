"""Acceptance: memory and disk budgets hold under a rotation of many models.

The server is a real ``modelfleet serve`` process so its RSS is its own. Each model is an
inference.py artifact whose weights file (random, so gzip cannot shrink it) is loaded into
memory: 4 MiB on disk, about 4 MiB in memory.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest

from tests.artifacts import inference_py_artifact
from tests.servers import metric, process_server

pytestmark = pytest.mark.slow  # real `modelfleet serve` processes

MIB = 1024 * 1024
WEIGHTS_MIB = 4
INFERENCE = """
import numpy as np
from pathlib import Path

def model_fn(model_dir):
    return np.load(Path(model_dir) / "weights.npy")

def predict_fn(data, model):
    return [float(model[:10] @ np.asarray(data, dtype=np.float64).ravel()[:10])]
"""


def weights_artifact(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    weights = rng.standard_normal(WEIGHTS_MIB * MIB // 8)
    import io

    buffer = io.BytesIO()
    np.save(buffer, weights)
    return inference_py_artifact(
        {"inference.py": INFERENCE}, extra_files={"weights.npy": buffer.getvalue()}
    )


@pytest.fixture(scope="module")
def thirty_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = tmp_path_factory.mktemp("source")
    for i in range(30):
        folder = source / f"m{i:02d}"
        folder.mkdir()
        (folder / "model.tar.gz").write_bytes(weights_artifact(i))
    return source


def invoke(url: str, target: str) -> httpx.Response:
    return httpx.post(
        f"{url}/endpoints/default/invocations",
        content=b"1,1,1,1,1,1,1,1,1,1",
        headers={"Content-Type": "text/csv", "X-Amzn-SageMaker-Target-Model": target},
        timeout=60,
    )


def test_memory_budget_holds_over_thirty_models(thirty_models: Path, tmp_path: Path) -> None:
    # Room for about 5 models of ~4.1 MiB each.
    limit = int(5.5 * WEIGHTS_MIB * MIB)
    args = [
        "--model-source",
        str(thirty_models),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--memory-limit",
        str(limit),
        "--disk-limit",
        "1GiB",
        "--log-level",
        "warning",
    ]
    with process_server(args, log=tmp_path / "server.log") as server:
        process = psutil.Process(server.pid)
        # Warm up: the first load imports the handler code paths (a one-time cost, not a
        # model's). Load and unload one model, then measure growth from there.
        assert invoke(server.url, "m29/model.tar.gz").status_code == 200
        assert httpx.delete(f"{server.admin_url}/models/m29/model.tar.gz").status_code == 200
        baseline = process.memory_info().rss
        peak_growth = 0
        max_loaded = 0
        for rounds in range(2):
            for i in range(30):
                response = invoke(server.url, f"m{i:02d}/model.tar.gz")
                assert response.status_code == 200, response.text
                text = httpx.get(f"{server.admin_url}/metrics").text
                loaded = metric(text, "modelfleet_loaded_model_count")
                max_loaded = max(max_loaded, int(loaded))
                assert metric(text, "modelfleet_memory_used_bytes") <= limit
                peak_growth = max(peak_growth, process.memory_info().rss - baseline)
            if rounds == 0:
                first_round = httpx.get(f"{server.admin_url}/metrics").text
        text = httpx.get(f"{server.admin_url}/metrics").text
    assert 1 <= max_loaded <= 5
    # Every model was downloaded once; the second round reloaded evicted models from disk.
    assert metric(first_round, "modelfleet_model_downloads_total") == 30
    assert metric(text, "modelfleet_model_downloads_total") == 30
    loads = metric(text, "modelfleet_model_loading_time_seconds_count")
    # Requests are sequential, so every miss is exactly one load (the warm-up included) ...
    assert loads == metric(text, "modelfleet_model_cache_miss_total")
    # ... most second-round requests reloaded an evicted model, from disk (no new download),
    assert loads - metric(first_round, "modelfleet_model_loading_time_seconds_count") >= 20
    # ... and every load beyond the 5 resident models was matched by an unload.
    assert metric(text, "modelfleet_model_unloading_time_seconds_count") >= loads - 5
    # RSS growth stays within the budget plus a margin for the allocator and imports
    # (the margin is reported by the test output, see -rP).
    margin = peak_growth - limit
    print(
        f"memory limit {limit / MIB:.1f} MiB, peak RSS growth {peak_growth / MIB:.1f} MiB, "
        f"margin {margin / MIB:+.1f} MiB"
    )
    assert peak_growth <= limit + 8 * MIB


def test_disk_budget_holds(thirty_models: Path, tmp_path: Path) -> None:
    # Room on disk for about 3 artifacts; memory for 2 models.
    disk_limit = int(3.5 * WEIGHTS_MIB * MIB)
    cache = tmp_path / "cache"
    args = [
        "--model-source",
        str(thirty_models),
        "--cache-dir",
        str(cache),
        "--memory-limit",
        str(int(2.5 * WEIGHTS_MIB * MIB)),
        "--disk-limit",
        str(disk_limit),
        "--log-level",
        "warning",
    ]
    with process_server(args, log=tmp_path / "server.log") as server:
        for i in range(12):
            response = invoke(server.url, f"m{i:02d}/model.tar.gz")
            assert response.status_code == 200, response.text
            used = sum(p.stat().st_size for p in (cache / "models").rglob("*") if p.is_file())
            assert used <= disk_limit
            text = httpx.get(f"{server.admin_url}/metrics").text
            assert metric(text, "modelfleet_disk_used_bytes") <= disk_limit

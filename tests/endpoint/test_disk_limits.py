"""The disk budget is a promise: the cache folder, sampled while the server works, never holds
more than ``--disk-limit`` (temporary files, metadata and the lock included), and a full
device is evicted from, then reported clearly (never a 500).

Real servers on loopback; the sampler walks the cache folder every few milliseconds.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import subprocess
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from modelfleet.cache.disk import tree_size
from modelfleet.config import Settings
from tests.servers import metric, thread_server

MiB = 1024 * 1024
CODE = {
    "inference.py": """
import os

def model_fn(model_dir):
    return sum(os.path.getsize(os.path.join(model_dir, n)) for n in os.listdir(model_dir))

def transform_fn(model, data, content_type, accept):
    return str(model), "text/plain"
"""
}


def model(size: int, seed: int, *, compressible: bool = False) -> bytes:
    """An artifact with ``size`` bytes of data, incompressible or (like most model files)
    about 6x compressible; it answers its folder's size."""
    if compressible:  # one bit of entropy a byte
        data = np.random.default_rng(seed).integers(97, 99, size, dtype=np.uint8).tobytes()
    else:
        data = random.Random(seed).randbytes(size)
    return fast_tar_gz({"code/inference.py": CODE["inference.py"].encode(), "data.bin": data})


def fast_tar_gz(files: dict[str, bytes]) -> bytes:
    """A ``.tar.gz`` at gzip level 1 (level 9 took minutes for the workload's 200 models)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz", compresslevel=1) as archive:
        for name, data in files.items():
            member = tarfile.TarInfo(name)
            member.size = len(data)
            archive.addfile(member, io.BytesIO(data))
    return out.getvalue()


def invoke(http: httpx.Client, target: str) -> httpx.Response:
    return http.post(
        "/endpoints/default/invocations",
        content=b"1",
        headers={"Content-Type": "text/csv", "X-Amzn-SageMaker-Target-Model": target},
    )


def folder_bytes(folder: Path) -> int:
    """Bytes of the regular files under ``folder`` that are all there at the end of the walk.

    A walk is not atomic. Each file (inode) is counted once, so an entry renamed between
    ``models/`` and ``tmp/`` while the walk runs is not seen twice; and a file deleted before the
    walk ends is not counted, so a file whose room was handed to a newer download while the
    walk ran is not added to that download's.
    """
    seen: dict[int, Path] = {}
    stack = [folder]
    while stack:
        with contextlib.suppress(FileNotFoundError), os.scandir(stack.pop()) as items:
            for item in items:
                with contextlib.suppress(FileNotFoundError):
                    if item.is_dir(follow_symlinks=False):
                        stack.append(Path(item.path))
                    elif item.is_file(follow_symlinks=False):
                        seen[item.inode()] = Path(item.path)
    total = 0
    for path in seen.values():
        with contextlib.suppress(FileNotFoundError):
            total += path.stat(follow_symlinks=False).st_size
    return total


class Sampler:
    """Measures the folder's bytes over and over on a thread; ``peak`` is the largest seen."""

    def __init__(self, folder: Path, counted: Callable[[], int] | None = None) -> None:
        self.folder = folder
        self.counted = counted  # the cache's own figure, read atomically
        self.peak_counted = 0
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="disk-sampler")

    def _run(self) -> None:
        while not self._stop.is_set() and self.samples < 1_000_000:
            if self.counted is not None:
                self.peak_counted = max(self.peak_counted, self.counted())
            if self.folder.exists():
                self.peak = max(self.peak, folder_bytes(self.folder))
                self.samples += 1
            time.sleep(0.01)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def test_a_gzip_bomb_never_takes_the_folder_past_the_limit(tmp_path: Path) -> None:
    source, cache = tmp_path / "source", tmp_path / "cache"
    source.mkdir()
    for i in range(3):
        (source / f"m{i}.tar.gz").write_bytes(model(10 * MiB, seed=i))
    zeros = b"\0" * (8 * MiB)
    bomb = fast_tar_gz(
        {"code/inference.py": CODE["inference.py"].encode()}
        | {f"zeros-{i}.bin": zeros for i in range(12)}
    )
    assert len(bomb) < MiB  # 96 MiB of zeros
    (source / "bomb.tar.gz").write_bytes(bomb)
    limit = 48 * MiB
    settings = Settings(model_source=str(source), cache_dir=cache, disk_limit=limit)
    with thread_server(settings) as server, httpx.Client(base_url=server.url, timeout=120) as http:
        with Sampler(cache) as sampler:
            for i in range(3):  # 30 MiB cached, the models loaded (idle)
                assert invoke(http, f"m{i}.tar.gz").status_code == 200
            response = invoke(http, "bomb.tar.gz")
            assert response.status_code in (424, 503), response.text
            assert invoke(http, "m0.tar.gz").status_code == 200
        assert sampler.samples > 10
        assert sampler.peak <= limit, f"the cache folder reached {sampler.peak} bytes"
        assert list((cache / "tmp").iterdir()) == []
        assert tree_size(cache) <= server.manager.disk.used_bytes <= limit


def test_a_mixed_workload_of_hundreds_of_models_stays_within_the_limit(tmp_path: Path) -> None:
    source, cache = tmp_path / "source", tmp_path / "cache"
    source.mkdir()
    sizes = random.Random(7)
    for i in range(200):
        size = sizes.randrange(20_000, 400_000)
        (source / f"m{i}.tar.gz").write_bytes(model(size, seed=i, compressible=True))
    limit = 6 * MiB
    settings = Settings(model_source=str(source), cache_dir=cache, disk_limit=limit)
    statuses: list[int] = []

    def client(seed: int) -> None:
        pick = random.Random(seed)
        weights = [1 / (i + 1) for i in range(200)]
        with httpx.Client(base_url=server.url, timeout=120) as http:
            for target in pick.choices(range(200), weights=weights, k=100):
                statuses.append(invoke(http, f"m{target}.tar.gz").status_code)

    with (
        thread_server(settings) as server,
        Sampler(cache, lambda: server.manager.disk.used_bytes) as sampler,
    ):
        threads = [threading.Thread(target=client, args=(seed,)) for seed in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=600)
        downloads = metric(
            httpx.get(f"{server.admin_url}/metrics").text, "modelfleet_model_downloads_total"
        )
    assert sampler.peak <= limit, f"the cache folder reached {sampler.peak} bytes"
    assert sampler.peak_counted <= limit
    assert len(statuses) == 400
    assert set(statuses) == {200}
    assert downloads > 50  # the budget held a fraction of the models: many were evicted


@pytest.fixture
def small_device(tmp_path: Path) -> Iterator[Path]:
    """A 12 MiB tmpfs: a disk that is really full long before a generous --disk-limit."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI and the dev machines run as root)")
    folder = tmp_path / "device"
    folder.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def test_a_full_device_evicts_then_answers_503_naming_the_folder(
    tmp_path: Path, small_device: Path
) -> None:
    source, cache = tmp_path / "source", small_device / "cache"
    source.mkdir()
    for i in range(5):
        (source / f"m{i}.tar.gz").write_bytes(model(3 * MiB, seed=i))
    (source / "huge.tar.gz").write_bytes(model(20 * MiB, seed=9))
    settings = Settings(model_source=str(source), cache_dir=cache, disk_limit=1024 * MiB)
    with thread_server(settings) as server, httpx.Client(base_url=server.url, timeout=120) as http:
        # 5 x 3 MiB on a 12 MiB device: a download runs out of space and evicts to fit.
        answers = [invoke(http, f"m{i}.tar.gz") for i in range(5)]
        assert [a.status_code for a in answers] == [200] * 5, answers[-1].text
        assert "m4.tar.gz" in server.manager.disk
        assert len(server.manager.disk) < 5  # idle models were unloaded and their files deleted
        huge = invoke(http, "huge.tar.gz")
        assert huge.status_code == 503
        assert huge.headers["x-amzn-ErrorType"] == "ServiceUnavailable"
        assert "Retry-After" in huge.headers
        message = huge.json()["message"]
        # the folder by its name: no answer carries a path of the server (docs/security.md)
        assert "No space left on the device of the disk cache <cache>" in message
        assert "bytes free" in message
        assert list((cache / "tmp").iterdir()) == []  # nothing half-written stays
        assert invoke(http, "m1.tar.gz").status_code == 200  # and it keeps serving

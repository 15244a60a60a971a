"""The SageMaker MME container contract on the instance port: codes 200/404/409/507, paging."""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import httpx
import pytest

from modelfleet.config import Settings
from tests.artifacts import sklearn_artifact
from tests.servers import ThreadServer, thread_server

ROW = b"0,1,2,3,4,5,6,7,8,9"


def unpack(artifact: bytes, dest: Path) -> Path:
    dest.mkdir(parents=True)
    with tarfile.open(fileobj=BytesIO(artifact), mode="r:gz") as tar:
        tar.extractall(dest, filter="data")
    return dest


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ThreadServer]:
    source = tmp_path / "source"
    source.mkdir(exist_ok=True)
    settings = Settings(
        model_source=str(source), cache_dir=tmp_path / "cache", memory_limit="64MiB"
    )
    with thread_server(settings) as srv:
        yield srv


@pytest.fixture
def model_dirs(tmp_path: Path) -> list[Path]:
    """Unpacked models in the source folder: LoadModel loads only from the source or cache."""
    return [unpack(sklearn_artifact(seed=i), tmp_path / "source" / f"dir{i}") for i in range(3)]


def test_load_get_invoke_unload(server: ThreadServer, model_dirs: list[Path]) -> None:
    with httpx.Client(base_url=server.admin_url) as http:
        loaded = http.post("/models", json={"model_name": "a", "url": str(model_dirs[0])})
        assert loaded.status_code == 200, loaded.text
        again = http.post("/models", json={"model_name": "a", "url": str(model_dirs[0])})
        assert again.status_code == 409

        got = http.get("/models/a")
        assert got.status_code == 200
        assert got.json()["modelName"] == "a"
        # the folder by its root, never an absolute path of the server (docs/api.md)
        assert got.json()["modelUrl"] == f"<model-source>/{model_dirs[0].name}"
        assert http.get("/models/missing").status_code == 404

        invoked = http.post("/models/a/invoke", content=ROW, headers={"Content-Type": "text/csv"})
        assert invoked.status_code == 200
        assert invoked.headers["content-type"].startswith("application/json")
        assert http.post("/models/missing/invoke", content=ROW).status_code == 404

        assert http.delete("/models/a").status_code == 200
        assert http.get("/models/a").status_code == 404
        assert http.delete("/models/a").status_code == 404
        assert http.post("/models/a/invoke", content=ROW).status_code == 404


def test_list_models_pages(server: ThreadServer, model_dirs: list[Path]) -> None:
    with httpx.Client(base_url=server.admin_url) as http:
        for i, folder in enumerate(model_dirs):
            assert http.post("/models", json={"model_name": f"m{i}", "url": str(folder)}).is_success
        first = http.get("/models", params={"limit": 2}).json()
        assert [m["modelName"] for m in first["models"]] == ["m0", "m1"]
        assert set(first["models"][0]) == {"modelName", "modelUrl"}
        second = http.get(
            "/models", params={"limit": 2, "next_page_token": first["nextPageToken"]}
        ).json()
        assert [m["modelName"] for m in second["models"]] == ["m2"]
        assert "nextPageToken" not in second
        assert http.get("/models", params={"limit": 0}).status_code == 400
        assert http.get("/models", params={"next_page_token": "%%%"}).status_code == 400


def test_load_model_that_cannot_fit_is_507(tmp_path: Path, model_dirs: list[Path]) -> None:
    source = tmp_path / "source"
    settings = Settings(model_source=str(source), cache_dir=tmp_path / "c", memory_limit=1024)
    with thread_server(settings) as srv, httpx.Client(base_url=srv.admin_url) as http:
        response = http.post("/models", json={"model_name": "big", "url": str(model_dirs[0])})
        assert response.status_code == 507
        assert "memory budget" in response.json()["message"]


def test_load_model_bad_requests(server: ThreadServer, tmp_path: Path) -> None:
    source = tmp_path / "source"
    with httpx.Client(base_url=server.admin_url) as http:
        assert http.post("/models", content=b"not json").status_code == 400
        # a url that does not exist: 404, as the inference toolkit's MME tests expect
        missing = http.post("/models", json={"model_name": "x", "url": str(source / "none")})
        assert missing.status_code == 404
        assert missing.headers["x-amzn-errortype"] == "ModelNotFound"
        assert "does not exist" in missing.json()["message"]
        a_file = source / "a-file"
        a_file.write_bytes(b"x")
        not_folder = http.post("/models", json={"model_name": "x", "url": str(a_file)})
        assert not_folder.status_code == 400
        assert "not a folder" in not_folder.json()["message"]
        empty = source / "empty-model"
        empty.mkdir()
        broken = http.post("/models", json={"model_name": "x", "url": str(empty)})
        assert broken.status_code >= 400
        assert broken.headers["x-amzn-errortype"] == "ModelError"
        assert http.get("/ping").status_code == 200


@pytest.mark.parametrize(
    "url",
    [
        "/etc",
        "../../",
        "{tmp}/source/../outside",  # .. out of the source
        "{tmp}/source/link-out",  # a symbolic link out of the source
        "{tmp}/outside",
    ],
)
def test_load_model_only_from_the_source_or_the_cache(
    server: ThreadServer, tmp_path: Path, url: str
) -> None:
    outside = tmp_path / "outside"
    unpack(sklearn_artifact(seed=9), outside)
    (tmp_path / "source" / "link-out").symlink_to(outside, target_is_directory=True)
    with httpx.Client(base_url=server.admin_url) as http:
        answer = http.post("/models", json={"model_name": "x", "url": url.format(tmp=tmp_path)})
        assert answer.status_code == 400
        assert "under the model source or the cache folder" in answer.json()["message"]
        assert http.get("/models/x").status_code == 404  # nothing was loaded

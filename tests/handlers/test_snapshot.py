"""Load snapshots: saved once, read back instead of the artifact, refused when out of date."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from modelfleet.handlers import load_model, take_snapshot
from modelfleet.handlers import snapshot as snapshots
from tests.artifacts import (
    features,
    sklearn_artifact,
    train_xgboost,
    unpack,
    xgboost_builtin_artifact,
)

CSV = "\n".join(",".join(f"{v:.6f}" for v in row) for row in features(7, 50, 10)).encode()


def saved(tmp_path: Path) -> tuple[Path, Path, bytes]:
    """An unpacked forest artifact, its snapshot, and the artifact model's answer to CSV."""
    model_dir = unpack(sklearn_artifact(seed=3), tmp_path / "artifact")
    model = load_model(model_dir, model_id="m")
    assert not model.restored
    assert model.snapshot_capable
    path = tmp_path / "snapshot"
    data = take_snapshot(model)
    assert data is not None
    path.write_bytes(b"".join(data))
    answer = model.invoke(CSV, "text/csv", "application/json").body
    model.close()
    return model_dir, path, answer


def test_a_snapshot_loads_the_same_model(tmp_path: Path) -> None:
    model_dir, path, answer = saved(tmp_path)
    model = load_model(model_dir, model_id="m", snapshot=path)
    assert model.restored
    assert model.invoke(CSV, "text/csv", "application/json").body == answer
    assert model.path == model_dir / "model.joblib"  # type: ignore[attr-defined]
    # the forest walk is built for a restored forest as for a loaded one
    assert model.walks_trees  # type: ignore[attr-defined]
    assert path.exists()


def test_no_snapshot_file_loads_the_artifact(tmp_path: Path) -> None:
    model_dir = unpack(sklearn_artifact(seed=3), tmp_path / "artifact")
    model = load_model(model_dir, model_id="m", snapshot=tmp_path / "absent")
    assert not model.restored


def rewrite_header(path: Path, change: dict[str, object]) -> None:
    data = path.read_bytes()
    end = data.index(b"\n")
    header = json.loads(data[len(snapshots.MAGIC) : end])
    header.update(change)
    path.write_bytes(snapshots.MAGIC + json.dumps(header).encode() + data[end:])


@pytest.mark.parametrize(
    "spoil",
    [
        pytest.param(lambda p: rewrite_header(p, {"versions": {"python": "3.0.0"}}), id="versions"),
        pytest.param(lambda p: rewrite_header(p, {"handler": "xgboost"}), id="handler"),
        pytest.param(lambda p: rewrite_header(p, {"handler": "nope"}), id="unknown-handler"),
        pytest.param(lambda p: p.write_bytes(p.read_bytes()[:-100]), id="truncated"),
        pytest.param(lambda p: p.write_bytes(b"not a snapshot"), id="foreign"),
    ],
)
def test_an_unusable_snapshot_is_deleted_and_the_artifact_loaded(
    tmp_path: Path, spoil: object, caplog: pytest.LogCaptureFixture
) -> None:
    model_dir, path, answer = saved(tmp_path)
    spoil(path)  # type: ignore[operator]
    with caplog.at_level(logging.WARNING, logger="modelfleet.handlers"):
        model = load_model(model_dir, model_id="m", snapshot=path)
    assert not model.restored
    assert model.invoke(CSV, "text/csv", "application/json").body == answer
    assert not path.exists()
    assert "Not using the load snapshot of m" in caplog.text


def test_a_configured_handler_must_match_the_snapshot(tmp_path: Path) -> None:
    model_dir, path, _ = saved(tmp_path)
    assert load_model(model_dir, model_id="m", handler="scikit-learn", snapshot=path).restored
    with pytest.raises(Exception, match="xgboost"):
        load_model(model_dir, model_id="m", handler="xgboost", snapshot=path)
    assert not path.exists()  # written by another handler than the configured one


def test_handlers_without_a_faster_form_save_nothing(tmp_path: Path) -> None:
    booster = train_xgboost()
    model_dir = unpack(xgboost_builtin_artifact(booster), tmp_path / "artifact")
    model = load_model(model_dir, model_id="x")
    assert not model.snapshot_capable
    assert take_snapshot(model) is None


def test_the_header_names_handler_and_versions(tmp_path: Path) -> None:
    _, path, _ = saved(tmp_path)
    header, payload = snapshots.read(path)
    assert header["handler"] == "sklearn"
    assert set(header["versions"]) == {"python", "numpy", "scipy", "sklearn", "joblib"}
    assert len(payload) > 1000
    assert np.__version__ == header["versions"]["numpy"]

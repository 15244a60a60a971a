"""XGBoost 1.x binary models, as the SageMaker built-in XGBoost containers 1.2-2 to 1.7-1 save them.

The fixtures in ``xgboost17/`` were made by XGBoost 1.7.6 (``xgboost17/make_fixtures.py`` says
how): each case's ``xgboost-model`` in the binary format, the JSON XGBoost 1.7.6 writes for it
once loaded, and the container's answers. Answers must equal the container's within 1e-6
(absolute; float32 predictions: identical on CSV rows when this was written, within 2e-7 on
LibSVM's sparse rows).
"""

from __future__ import annotations

import json
import shutil
import struct
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelfleet.config import Settings
from modelfleet.errors import ModelInvocationError, ModelLoadError
from modelfleet.handlers import load_model, take_snapshot
from modelfleet.handlers.xgboost_legacy import to_json_model
from tests.endpoint.test_boto3_s3 import runtime_client
from tests.servers import ThreadServer, thread_server

FIXTURES = Path(__file__).parent / "xgboost17"
EXPECTED: dict[str, Any] = json.loads((FIXTURES / "expected.json").read_text())
CASES = sorted(EXPECTED["cases"])
TOLERANCE = 1e-6


def _same_document(mine: Any, theirs: Any, where: str = "") -> None:
    """Equal JSON documents, floats compared as the float32 values XGBoost reads."""
    if isinstance(theirs, dict):
        assert isinstance(mine, dict), where
        assert mine.keys() == theirs.keys(), where
        for key in theirs:
            _same_document(mine[key], theirs[key], f"{where}/{key}")
    elif isinstance(theirs, list):
        assert isinstance(mine, list), where
        assert len(mine) == len(theirs), where
        for index, (a, b) in enumerate(zip(mine, theirs, strict=True)):
            _same_document(a, b, f"{where}[{index}]")
    elif isinstance(theirs, float):
        assert np.float32(mine) == np.float32(theirs), where
    else:
        assert mine == theirs, where


@pytest.mark.parametrize("case", CASES)
def test_the_conversion_is_the_json_xgboost_17_writes(case: str) -> None:
    document, saved_by = to_json_model((FIXTURES / case / "xgboost-model").read_bytes())
    assert saved_by == "1.7"
    _same_document(document, json.loads((FIXTURES / f"{case}.json").read_text()))


def _csv(rows: list[list[float]]) -> bytes:
    return "\n".join(",".join(repr(v) for v in row) for row in rows).encode()


@pytest.fixture
def model_dir(tmp_path: Path) -> Any:
    def copy(case: str) -> Path:
        folder = tmp_path / case
        shutil.copytree(FIXTURES / case, folder)
        return folder

    return copy


@pytest.mark.parametrize("case", CASES)
def test_binary_models_answer_as_the_17_container(case: str, model_dir: Any) -> None:
    expected = EXPECTED["cases"][case]
    model = load_model(model_dir(case), model_id=case)
    assert model.handler_name == "xgboost"
    answer = model.invoke(_csv(EXPECTED["rows"]), "text/csv", "application/json")
    assert answer.content_type == "application/json"
    np.testing.assert_allclose(json.loads(answer.body), expected["csv"], rtol=0, atol=TOLERANCE)
    answer = model.invoke(_csv(EXPECTED["rows"]), "text/csv", "text/csv")
    assert answer.content_type == "text/csv"
    got = [float(v) for v in answer.body.decode().replace("[", "").replace("]", "").split(",")]
    np.testing.assert_allclose(got, np.ravel(expected["csv"]), rtol=0, atol=TOLERANCE)
    for content_type in ("text/libsvm", "text/x-libsvm; charset=utf-8"):
        for body, key in (("libsvm_body", "libsvm"), ("libsvm_short_body", "libsvm_short")):
            answer = model.invoke(EXPECTED[body].encode(), content_type, "application/json")
            np.testing.assert_allclose(
                json.loads(answer.body), expected[key], rtol=0, atol=TOLERANCE
            )


def test_the_conversion_is_kept_as_the_load_snapshot(model_dir: Any, tmp_path: Path) -> None:
    folder = model_dir("binary-logistic-early-stopping")
    first = load_model(folder, model_id="m")
    assert first.snapshot_capable
    parts = take_snapshot(first)
    assert parts is not None
    snapshot = tmp_path / "snapshot"
    snapshot.write_bytes(b"".join(parts))
    (folder / "xgboost-model").write_bytes(b"binf" + b"\0" * 10)  # never read again
    again = load_model(folder, model_id="m", snapshot=snapshot)
    assert again.restored
    assert again.handler_name == "xgboost"
    body = _csv(EXPECTED["rows"])
    assert again.invoke(body, "text/csv", None).body == first.invoke(body, "text/csv", None).body


def test_native_models_keep_no_snapshot(model_dir: Any, tmp_path: Path) -> None:
    import xgboost

    booster = xgboost.Booster()
    booster.load_model(FIXTURES / "reg-squarederror.json")
    folder = tmp_path / "native"
    folder.mkdir()
    booster.save_model(folder / "xgboost-model.ubj")
    model = load_model(folder, model_id="n")
    assert not model.snapshot_capable
    assert take_snapshot(model) is None


def _patched(raw: bytes, offset: int, value: int) -> bytes:
    return raw[:offset] + struct.pack("<I", value) + raw[offset + 4 :]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda raw: raw[:300], "ends at byte 300, before its model does"),
        (lambda raw: _patched(raw, 4 + 20, 0), "saved by XGBoost before 1.0"),
        (lambda raw: raw.replace(b"gbtree", b"gbtrex", 1), "unknown booster 'gbtrex'"),
    ],
)
def test_a_broken_binary_model_says_what_is_wrong(
    model_dir: Any, change: Any, message: str
) -> None:
    folder = model_dir("reg-squarederror")
    path = folder / "xgboost-model"
    path.write_bytes(change(path.read_bytes()))
    with pytest.raises(ModelLoadError, match=r"as an XGBoost 1\.x binary model") as caught:
        load_model(folder, model_id="m")
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"0 1:x", "line 1: could not convert string to float"),
        (b"0 a:1.5", "line 1: invalid literal for int()"),
        (b"0 1.5 2.5", "no index:value pairs"),
        (b"0 -1:2.0", "negative feature index -1"),
    ],
)
def test_a_bad_libsvm_body_is_a_400(model_dir: Any, body: bytes, message: str) -> None:
    model = load_model(model_dir("reg-squarederror"), model_id="m")
    with pytest.raises(ModelInvocationError, match="not valid text/libsvm") as caught:
        model.invoke(body, "text/libsvm", None)
    assert caught.value.original_status_code == 400
    assert message in str(caught.value)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ThreadServer]:
    source = tmp_path / "source"
    source.mkdir()
    for case in ("multi-softprob", "dart"):
        with tarfile.open(source / f"{case}.tar.gz", "w:gz") as tar:
            tar.add(FIXTURES / case / "xgboost-model", arcname="xgboost-model")
    with thread_server(Settings(model_source=str(source), cache_dir=tmp_path / "cache")) as srv:
        yield srv


def test_boto3_invokes_binary_models_from_their_tarballs(server: ThreadServer) -> None:
    client = runtime_client(server.url)
    for case in ("multi-softprob", "dart"):
        for content_type, body, key in (
            ("text/csv", _csv(EXPECTED["rows"]), "csv"),
            ("text/libsvm", EXPECTED["libsvm_body"].encode(), "libsvm"),
        ):
            answer = client.invoke_endpoint(
                EndpointName="default",
                TargetModel=f"{case}.tar.gz",
                ContentType=content_type,
                Accept="application/json",
                Body=body,
            )
            assert answer["ContentType"] == "application/json"
            got = json.loads(answer["Body"].read())
            want = EXPECTED["cases"][case][key]
            np.testing.assert_allclose(got, want, rtol=0, atol=TOLERANCE)


async def test_the_instance_converts_once_and_reads_the_conversion_after(tmp_path: Path) -> None:
    from tests.instance.test_snapshots import manager_for, snapshots_written, unload

    source = tmp_path / "source"
    source.mkdir()
    with tarfile.open(source / "old.tar.gz", "w:gz") as tar:
        tar.add(FIXTURES / "multi-softprob" / "xgboost-model", arcname="xgboost-model")
    manager = await manager_for(source, tmp_path / "cache")
    body = _csv(EXPECTED["rows"])
    try:
        first = await manager.invoke("old.tar.gz", body, content_type="text/csv", accept=None)
        assert len(await snapshots_written(manager, 1)) == 1
        await unload(manager, "old.tar.gz")
        again = await manager.invoke("old.tar.gz", body, content_type="text/csv", accept=None)
        assert manager.metrics.snapshot_loads._value.get() == 1
        assert again.prediction.body == first.prediction.body
        got = json.loads(again.prediction.body)
        want = EXPECTED["cases"]["multi-softprob"]["csv"]
        np.testing.assert_allclose(got, want, rtol=0, atol=TOLERANCE)
    finally:
        await manager.stop()

"""Detection of an artifact folder's handler and model file."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from modelfleet.errors import ModelLoadError
from modelfleet.handlers import detect_handler
from modelfleet.handlers.detect import model_file
from tests.artifacts import FolderFactory, train_xgboost, xgboost_model_bytes

LIGHTGBM_TEXT = b"tree\nversion=v4\nnum_class=1\n"
XGBOOST_JSON = b'{"learner": {"attributes": {}}, "version": [3, 0, 0]}'


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"code/inference.py": b"", "model.joblib": b"x"}, "inference.py"),
        ({"xgboost-model": b"anything"}, "xgboost"),
        ({"model.json": XGBOOST_JSON}, "xgboost"),
        ({"model.ubj": b"{"}, "xgboost"),
        ({"model.bst": b"x"}, "xgboost"),
        ({"house.model": b"x"}, "xgboost"),
        ({"model.joblib": b"x"}, "sklearn"),
        ({"model.pkl": b"x", "README.md": b"notes"}, "sklearn"),
        ({"model.txt": LIGHTGBM_TEXT, "requirements.txt": b"numpy\n"}, "lightgbm"),
        ({"model.onnx": b"x", "config.json": b'{"labels": []}'}, "onnx"),
        ({"model.pt": b"x"}, "torch"),
        ({"model.pt2": b"x"}, "torch"),
    ],
)
def test_detects_each_layout(
    make_folder: FolderFactory, files: dict[str, bytes], expected: str
) -> None:
    assert detect_handler(make_folder(files)) == expected


@pytest.mark.parametrize("pickled", [False, True])
def test_builtin_xgboost_file_native_or_pickled(make_folder: FolderFactory, pickled: bool) -> None:
    raw = xgboost_model_bytes(train_xgboost(rounds=2), pickled=pickled)
    folder = make_folder({"xgboost-model": raw})
    assert detect_handler(folder) == "xgboost"
    assert model_file(folder, "xgboost").name == "xgboost-model"


@pytest.mark.parametrize("pickled", [False, True])
def test_booster_of_any_name_is_sniffed(make_folder: FolderFactory, pickled: bool) -> None:
    raw = xgboost_model_bytes(train_xgboost(rounds=2), pickled=pickled)
    folder = make_folder({"booster.bin": raw, "notes.md": b"# not a model"})
    assert detect_handler(folder) == "xgboost"
    assert model_file(folder, "xgboost").name == "booster.bin"


def test_json_that_is_not_xgboost_is_a_clear_error(make_folder: FolderFactory) -> None:
    folder = make_folder({"model.json": b'{"weights": [1, 2]}'})
    with pytest.raises(ModelLoadError, match=r'model.json: no "learner" key'):
        detect_handler(folder)


def test_txt_that_is_not_lightgbm_is_a_clear_error(make_folder: FolderFactory) -> None:
    with pytest.raises(ModelLoadError, match="first line is not 'tree'"):
        detect_handler(make_folder({"notes.txt": b"hello\n"}))


def test_two_frameworks_are_ambiguous(make_folder: FolderFactory) -> None:
    folder = make_folder({"model.onnx": b"x", "model.joblib": b"x"})
    with pytest.raises(ModelLoadError, match=r"Ambiguous.*onnx: model.onnx.*set the handler"):
        detect_handler(folder)


def test_unknown_files_are_listed_with_what_is_supported(make_folder: FolderFactory) -> None:
    folder = make_folder({"weights.h5": b"x", "code/helper.py": b""})
    with pytest.raises(ModelLoadError) as caught:
        detect_handler(folder)
    message = caught.value.message
    assert "weights.h5" in message
    assert "code/ folder without inference.py" in message
    assert "*.onnx" in message


def test_nested_model_files_are_pointed_out(make_folder: FolderFactory) -> None:
    with pytest.raises(ModelLoadError, match=r"folders model/ \(model files must be at the top"):
        detect_handler(make_folder({"model/model.joblib": b"x"}))


def test_empty_and_missing_folders(make_folder: FolderFactory, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no files"):
        detect_handler(make_folder({}))
    with pytest.raises(ModelLoadError, match="does not exist"):
        detect_handler(tmp_path / "absent")


def test_hidden_files_and_links_are_ignored(make_folder: FolderFactory) -> None:
    folder = make_folder({".model.onnx": b"x", "model.joblib": b"x"})
    (folder / "other.onnx").symlink_to(folder / "model.joblib")
    assert detect_handler(folder) == "sklearn"


def test_model_file_prefers_model_stem(make_folder: FolderFactory) -> None:
    folder = make_folder({"model.joblib": b"x", "scaler.joblib": b"x"})
    assert model_file(folder, "sklearn").name == "model.joblib"
    folder = make_folder({"a.joblib": b"x", "b.joblib": b"x"})
    with pytest.raises(ModelLoadError, match="Several sklearn model files"):
        model_file(folder, "sklearn")


def test_explicit_xgboost_takes_a_lone_file_of_any_name(make_folder: FolderFactory) -> None:
    raw = pickle.dumps(train_xgboost(rounds=2))
    folder = make_folder({"booster.bin": raw})
    assert model_file(folder, "xgboost").name == "booster.bin"
    with pytest.raises(ModelLoadError, match="No onnx model file"):
        model_file(folder, "onnx")

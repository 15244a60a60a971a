"""Framework handlers end to end: artifact files on disk -> load_model -> invoke."""

from __future__ import annotations

import io
import json
import pickle
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelfleet.errors import MissingExtraError, ModelInvocationError, ModelLoadError
from modelfleet.handlers import LoadedModel, load_model
from tests.artifacts import (
    FolderFactory,
    features,
    home_value_models,
    joblib_bytes,
    onnx_linear_bytes,
    sklearn_artifact,
    torchscript_model,
    train_lightgbm,
    train_sklearn,
    train_xgboost,
    unpack,
    xgboost_builtin_artifact,
    xgboost_model_bytes,
)

TORCHSCRIPT_DEPRECATED = pytest.mark.filterwarnings(
    "ignore:`torch.jit.load` is deprecated:DeprecationWarning"
)


def csv_body(rows: np.ndarray) -> bytes:
    return "\n".join(",".join(repr(float(v)) for v in row) for row in rows).encode()


def npy_body(rows: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, rows)
    return buffer.getvalue()


def json_answer(model: LoadedModel, body: bytes, content_type: str) -> np.ndarray:
    prediction = model.invoke(body, content_type, "application/json")
    assert prediction.content_type == "application/json"
    assert prediction.custom_attributes is None
    return np.array(json.loads(prediction.body))


def hammer(model: LoadedModel, body: bytes, expected: bytes, threads: int = 8) -> None:
    """Invoke from several threads at once; every answer must be the single-thread answer."""

    def call(_: int) -> bytes:
        return model.invoke(body, "text/csv", "text/csv").body

    with ThreadPoolExecutor(threads) as pool:
        assert set(pool.map(call, range(threads * 25))) == {expected}


# ------------------------------------------------------------------ scikit-learn


def test_sklearn_joblib_artifact(tmp_path: Path) -> None:
    folder = unpack(sklearn_artifact(seed=3, n_features=5, n_trees=4), tmp_path / "m")
    model = load_model(folder, model_id="forest")
    estimator = train_sklearn(seed=3, n_features=5, n_trees=4)
    rows = features(9, 7, 5)
    expected = estimator.predict(rows)
    assert model.handler_name == "sklearn"
    np.testing.assert_allclose(json_answer(model, csv_body(rows), "text/csv"), expected)
    np.testing.assert_allclose(json_answer(model, npy_body(rows), "application/x-npy"), expected)
    as_json = json.dumps(rows.tolist()).encode()
    np.testing.assert_allclose(json_answer(model, as_json, "application/json"), expected)
    assert model.size_bytes() is None
    hammer(model, csv_body(rows[:2]), model.invoke(csv_body(rows[:2]), None, "text/csv").body)
    model.close()


def test_sklearn_classifier_answers_labels_not_probabilities(make_folder: FolderFactory) -> None:
    from sklearn.tree import DecisionTreeClassifier

    rows = features(1, 40, 3)
    labels = (rows[:, 0] > 0).astype(int)
    tree = DecisionTreeClassifier(random_state=0).fit(rows, labels)
    model = load_model(make_folder({"model.pkl": joblib_bytes(tree)}), model_id="tree")
    answer = model.invoke(csv_body(rows[:3]), "text/csv", "text/csv")
    assert answer.body.decode().split() == [str(label) for label in tree.predict(rows[:3])]


FORESTS = [
    f"{kind}{task}"
    for kind in ("RandomForest", "ExtraTrees")
    for task in ("Regressor", "Classifier")
]


@pytest.mark.parametrize("name", FORESTS)
def test_forests_are_walked_directly_with_predicts_exact_answers(name: str) -> None:
    from sklearn import ensemble

    from modelfleet.handlers.sklearn import SklearnModel, tree_walker

    rows = features(4, 300, 6)
    target = rows @ np.linspace(-1.0, 2.0, 6)
    labels = np.array(["low", "mid", "high"])[np.digitize(target, [-0.5, 0.5])]
    forest = getattr(ensemble, name)(n_estimators=7, random_state=1)
    forest.fit(rows, labels if name.endswith("Classifier") else target)
    walker = tree_walker(forest)
    assert walker is not None
    probe = features(5, 2_000, 6) * 1.5  # wider than the training range: every leaf side
    assert np.array_equal(walker(probe), forest.predict(probe))  # bit for bit, same dtype
    assert walker(probe).dtype == forest.predict(probe).dtype
    assert np.array_equal(walker(probe[:1].astype(np.float32)), forest.predict(probe[:1]))
    model = SklearnModel("f", Path("model.pkl"), forest)
    answer = model.invoke(csv_body(probe[:3]), "text/csv", "text/csv").body
    assert answer.decode().split() == [str(v) for v in forest.predict(probe[:3])]


def test_walk_trees_off_keeps_scikit_learns_predict(tmp_path: Path) -> None:
    folder = unpack(sklearn_artifact(seed=3, n_features=5, n_trees=4), tmp_path / "m")
    walked = load_model(folder, model_id="forest")
    plain = load_model(folder, model_id="forest", walk_trees=False)
    assert getattr(walked, "walks_trees", None) is True
    assert getattr(plain, "walks_trees", None) is False
    body = csv_body(features(9, 20, 5))
    assert walked.invoke(body, "text/csv", "text/csv") == plain.invoke(body, "text/csv", "text/csv")


def test_forest_walk_hands_odd_inputs_to_scikit_learn() -> None:
    from modelfleet.handlers.sklearn import tree_walker

    forest = train_sklearn(seed=2, n_features=4, n_trees=3)
    walker = tree_walker(forest)
    assert walker is not None
    with_nan = features(1, 5, 4)
    with_nan[2, 1] = np.nan
    assert np.array_equal(walker(with_nan), forest.predict(with_nan))  # scikit-learn's NaN rules
    with pytest.raises(ValueError, match="4 features"):
        walker(features(1, 2, 3))  # scikit-learn's own message for the wrong width
    listed = features(1, 2, 4).tolist()
    assert np.array_equal(walker(listed), forest.predict(listed))


def test_forest_walk_keeps_scikit_learns_errors_and_threads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sklearn.ensemble import RandomForestRegressor

    from modelfleet.handlers import sklearn as handler
    from modelfleet.handlers.sklearn import SklearnModel, tree_walker

    forest = train_sklearn(seed=2, n_features=4, n_trees=4)
    model = SklearnModel("f", Path("model.pkl"), forest)
    assert model.walks_trees
    with pytest.raises(ModelInvocationError, match="0 sample"):  # as predict() refuses it
        model.invoke(npy_body(np.zeros((0, 4))), "application/x-npy", "application/json")

    calls: list[int] = []
    original = RandomForestRegressor.predict

    def spy(self: Any, x: Any) -> Any:
        calls.append(len(x))
        return original(self, x)

    monkeypatch.setattr(handler, "_checked", {RandomForestRegressor: True})
    monkeypatch.setattr(RandomForestRegressor, "predict", spy)
    monkeypatch.setattr(handler, "_PARALLEL_WORK", 40)  # 10 rows x 4 trees
    threaded = train_sklearn(seed=2, n_features=4, n_trees=4).set_params(n_jobs=2)
    walker = tree_walker(threaded)
    assert walker is not None
    walker(features(1, 10, 4))
    assert calls == []  # small batches are walked
    walker(features(1, 11, 4))
    assert calls == [11]  # big ones keep scikit-learn's threads
    sequential = tree_walker(forest)
    assert sequential is not None
    sequential(features(1, 500, 4))
    assert calls == [11]


def test_forest_walk_is_refused_when_it_would_answer_differently(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from sklearn.ensemble import (
        GradientBoostingRegressor,
        RandomForestClassifier,
        RandomForestRegressor,
    )
    from sklearn.tree import DecisionTreeRegressor

    from modelfleet.handlers import sklearn as handler
    from modelfleet.handlers.sklearn import tree_walker

    rows = features(3, 100, 4)
    forest = train_sklearn(seed=3, n_features=4, n_trees=3)
    assert tree_walker(forest) is not None
    # a scikit-learn whose forest predict rounds differently: found by the once-per-class check
    monkeypatch.setattr(handler, "_checked", {})
    original = RandomForestRegressor.predict
    monkeypatch.setattr(RandomForestRegressor, "predict", lambda s, x: original(s, x) + 1e-12)
    assert tree_walker(forest) is None
    assert "no longer matches" in caplog.text
    monkeypatch.undo()

    shifted = forest.predict
    forest.predict = lambda x: shifted(x) + 1e-12  # an instance with its own predict
    assert tree_walker(forest) is None
    classifier = RandomForestClassifier(n_estimators=2).fit(rows, rows[:, 0] > 0)
    assert tree_walker(classifier) is not None
    classifier.predict_proba = lambda x: x  # scikit-learn's predict would call this one
    assert tree_walker(classifier) is None

    class Tree(DecisionTreeRegressor):
        pass

    odd = RandomForestRegressor(n_estimators=2).fit(rows, rows[:, 0])
    odd.estimators_[1].__class__ = Tree
    assert tree_walker(odd) is None  # trees of a subclass

    class Tweaked(RandomForestRegressor):
        pass

    assert tree_walker(Tweaked(n_estimators=2).fit(rows, rows[:, 0])) is None  # subclasses
    assert tree_walker(GradientBoostingRegressor(n_estimators=2).fit(rows, rows[:, 0])) is None
    two_outputs = RandomForestRegressor(n_estimators=2).fit(rows, rows[:, :2])
    assert tree_walker(two_outputs) is None


def test_sklearn_file_without_predict(make_folder: FolderFactory) -> None:
    folder = make_folder({"model.pkl": pickle.dumps({"weights": [1, 2]})})
    with pytest.raises(ModelLoadError, match="holds a dict, which has no predict"):
        load_model(folder, model_id="m")


# ------------------------------------------------------------------ XGBoost


@pytest.mark.parametrize("pickled", [False, True])
def test_xgboost_builtin_layout(tmp_path: Path, pickled: bool) -> None:
    import xgboost

    booster = train_xgboost(seed=2)
    folder = unpack(xgboost_builtin_artifact(booster, pickled=pickled), tmp_path / "m")
    model = load_model(folder, model_id="xgb")
    rows = features(5, 4, 6)
    expected = booster.predict(xgboost.DMatrix(rows))
    csv_answer = model.invoke(csv_body(rows), "text/csv", "text/csv")
    # The container's answer: ",".join(map(str, predictions.tolist())), no newline.
    assert csv_answer.body == ",".join(map(str, expected.tolist())).encode()
    assert csv_answer.content_type == "text/csv"
    np.testing.assert_array_equal(json_answer(model, csv_body(rows), "text/csv"), expected)
    assert model.invoke(csv_body(rows), "text/csv", None).content_type == "application/json"
    # The footprint is measured by the manager (RSS growth, file size): no costly re-serialise.
    assert model.size_bytes() is None
    hammer(model, csv_body(rows[:1]), ",".join(map(str, expected[:1].tolist())).encode())


@pytest.mark.parametrize(("name", "fmt"), [("model.json", "json"), ("model.ubj", "ubj")])
def test_xgboost_native_files(make_folder: FolderFactory, name: str, fmt: str) -> None:
    import xgboost

    booster = train_xgboost(seed=4)
    folder = make_folder({name: xgboost_model_bytes(booster, fmt=fmt)})
    model = load_model(folder, model_id="xgb")
    rows = features(6, 3, 6)
    expected = booster.predict(xgboost.DMatrix(rows))
    np.testing.assert_array_equal(json_answer(model, csv_body(rows), "text/csv"), expected)


def test_xgboost_explicit_handler_wins_over_detection(make_folder: FolderFactory) -> None:
    import xgboost

    booster = train_xgboost(seed=5, objective="binary:logistic")
    folder = make_folder({"model.pkl": pickle.dumps(booster)})  # would detect as sklearn
    model = load_model(folder, model_id="xgb", handler="XGBoost")
    assert model.handler_name == "xgboost"
    rows = features(7, 3, 6)
    np.testing.assert_array_equal(
        json_answer(model, csv_body(rows), "text/csv"), booster.predict(xgboost.DMatrix(rows))
    )


def test_xgboost_uses_best_iteration_and_gblinear(make_folder: FolderFactory) -> None:
    import xgboost

    rows = features(8, 300, 4)
    labels = rows @ np.array([1.0, 2.0, 3.0, 4.0])
    train, valid = xgboost.DMatrix(rows[:200], label=labels[:200]), xgboost.DMatrix(rows[200:])
    valid.set_label(labels[200:])
    stopped = xgboost.train(
        {"nthread": 1, "eta": 0.5},
        train,
        200,
        evals=[(valid, "valid")],
        early_stopping_rounds=2,
        verbose_eval=False,
    )
    assert stopped.num_boosted_rounds() > stopped.best_iteration + 1
    model = load_model(make_folder({"xgboost-model": xgboost_model_bytes(stopped)}), model_id="a")
    best = stopped.predict(
        xgboost.DMatrix(rows[:3]), iteration_range=(0, stopped.best_iteration + 1)
    )
    np.testing.assert_array_equal(json_answer(model, csv_body(rows[:3]), "text/csv"), best)

    linear = xgboost.train({"booster": "gblinear", "nthread": 1}, train, 5)
    model = load_model(
        make_folder({"model.json": xgboost_model_bytes(linear, fmt="json")}), model_id="b"
    )
    expected = linear.predict(xgboost.DMatrix(rows[:3]))
    np.testing.assert_allclose(json_answer(model, csv_body(rows[:3]), "text/csv"), expected)
    hammer(model, csv_body(rows[:1]), model.invoke(csv_body(rows[:1]), None, "text/csv").body)


def test_xgboost_predicts_on_one_thread(make_folder: FolderFactory) -> None:
    model = load_model(
        make_folder({"xgboost-model": xgboost_model_bytes(train_xgboost())}), model_id="m"
    )
    config = json.loads(model.booster.save_config())  # type: ignore[attr-defined]
    assert config["learner"]["generic_param"]["nthread"] == "1"


def test_xgboost_wrong_feature_count_is_a_400(make_folder: FolderFactory) -> None:
    model = load_model(
        make_folder({"xgboost-model": xgboost_model_bytes(train_xgboost())}), model_id="m"
    )
    with pytest.raises(ModelInvocationError, match="xgboost prediction failed") as caught:
        model.invoke(b"1,2,3", "text/csv", None)
    assert caught.value.original_status_code == 400
    assert "Stack trace" not in caught.value.message


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "empty"),
        (b"not a model at all", "could not load xgboost-model"),
        (pickle.dumps([1, 2, 3]), "pickle of list, not an XGBoost Booster"),
    ],
)
def test_xgboost_bad_files(make_folder: FolderFactory, raw: bytes, message: str) -> None:
    with pytest.raises(ModelLoadError, match=message):
        load_model(make_folder({"xgboost-model": raw}), model_id="m")


def test_home_value_models_answer_per_city(tmp_path: Path) -> None:
    models = home_value_models(n_rows=200, rounds=5)
    assert list(models) == ["NewYork_NY", "LosAngeles_CA", "Chicago_IL", "Houston_TX"]
    answers = {}
    for city, trained in models.items():
        model = load_model(unpack(trained.artifact, tmp_path / city), model_id=trained.target_model)
        answer = model.invoke(csv_body(trained.sample[:1]), "text/csv", "text/csv").body
        assert float(answer) == pytest.approx(
            float(trained.booster.inplace_predict(trained.sample[:1])[0])
        )
        answers[city] = float(answer)
    assert answers["NewYork_NY"] > answers["Houston_TX"] > 0


# ------------------------------------------------------------------ LightGBM, ONNX, PyTorch


def test_lightgbm_text_model(make_folder: FolderFactory) -> None:
    booster = train_lightgbm(seed=1)
    model = load_model(make_folder({"model.txt": booster.model_to_string().encode()}), model_id="l")
    rows = features(2, 5, 6)
    assert model.handler_name == "lightgbm"
    np.testing.assert_allclose(
        json_answer(model, csv_body(rows), "text/csv"), booster.predict(rows)
    )
    hammer(model, csv_body(rows[:1]), model.invoke(csv_body(rows[:1]), None, "text/csv").body)


def test_onnx_linear_model(make_folder: FolderFactory) -> None:
    weights = np.array([[0.5], [-1.0], [2.0]])
    model = load_model(make_folder({"model.onnx": onnx_linear_bytes(weights, 1.5)}), model_id="o")
    rows = features(3, 4, 3)
    expected = (rows.astype(np.float32) @ weights.astype(np.float32)) + np.float32(1.5)
    np.testing.assert_allclose(json_answer(model, csv_body(rows), "text/csv"), expected, rtol=1e-6)
    one_row = json_answer(model, b"[1, 2, 3]", "application/json")  # batch dimension added
    np.testing.assert_allclose(one_row, [[6.0]])  # 0.5 - 2 + 6 + 1.5
    hammer(model, csv_body(rows[:1]), model.invoke(csv_body(rows[:1]), None, "text/csv").body)
    with pytest.raises(ModelInvocationError, match="onnx prediction failed"):
        model.invoke(b"1,2", "text/csv", None)


@TORCHSCRIPT_DEPRECATED
def test_torchscript_model(make_folder: FolderFactory) -> None:
    import torch

    network, raw = torchscript_model(seed=2, n_features=4)
    model = load_model(make_folder({"model.pt": raw}), model_id="t")
    rows = features(4, 3, 4)
    with torch.inference_mode():
        expected = network(torch.from_numpy(rows.astype(np.float32))).numpy()
    np.testing.assert_allclose(
        json_answer(model, npy_body(rows), "application/x-npy"), expected, rtol=1e-6
    )
    params = sum(p.numel() * p.element_size() for p in network.parameters())
    assert model.size_bytes() == params
    hammer(model, csv_body(rows[:1]), model.invoke(csv_body(rows[:1]), None, "text/csv").body)


def test_torch_export_program(make_folder: FolderFactory, tmp_path: Path) -> None:
    import torch

    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Linear(3, 2)).eval()
    batch = torch.export.Dim("batch")
    program = torch.export.export(network, (torch.zeros(2, 3),), dynamic_shapes=({0: batch},))
    torch.export.save(program, tmp_path / "model.pt2")
    model = load_model(
        make_folder({"model.pt2": (tmp_path / "model.pt2").read_bytes()}), model_id="e"
    )
    rows = features(5, 4, 3)
    with torch.inference_mode():
        expected = network(torch.from_numpy(rows.astype(np.float32))).numpy()
    np.testing.assert_allclose(json_answer(model, csv_body(rows), "text/csv"), expected, rtol=1e-6)


# ------------------------------------------------------------------ load errors


@pytest.mark.parametrize(
    ("files", "module", "extra"),
    [
        ({"model.joblib": b"x"}, "sklearn", "sklearn"),
        ({"xgboost-model": b"x"}, "xgboost", "xgboost"),
        ({"model.txt": b"tree\n"}, "lightgbm", "lightgbm"),
        ({"model.onnx": b"x"}, "onnxruntime", "onnx"),
        ({"model.pt": b"x"}, "torch", "torch"),
    ],
)
def test_missing_framework_names_the_extra(
    make_folder: FolderFactory,
    monkeypatch: pytest.MonkeyPatch,
    files: dict[str, bytes],
    module: str,
    extra: str,
) -> None:
    folder = make_folder(files)
    monkeypatch.setitem(sys.modules, module, None)  # makes `import <module>` raise ImportError
    with pytest.raises(MissingExtraError) as caught:
        load_model(folder, model_id="m")
    assert caught.value.extra == extra
    assert f"modelfleet[{extra}]" in caught.value.message


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"model.onnx": b"not onnx"}, "onnx handler could not load model.onnx"),
        ({"model.txt": b"tree\nnonsense"}, "lightgbm handler could not load model.txt"),
        ({"model.joblib": b"garbage"}, "sklearn handler could not load model.joblib"),
    ],
)
def test_corrupt_files_are_load_errors(
    make_folder: FolderFactory, files: dict[str, Any], message: str
) -> None:
    with pytest.raises(ModelLoadError, match=message):
        load_model(make_folder(files), model_id="m")


@TORCHSCRIPT_DEPRECATED
def test_model_pth_is_torchscript_as_model_pt_is(make_folder: FolderFactory) -> None:
    import torch

    network, raw = torchscript_model(seed=3, n_features=4)
    model = load_model(make_folder({"model.pth": raw}), model_id="t")
    assert model.handler_name == "torch"
    rows = features(5, 2, 4)
    with torch.inference_mode():
        expected = network(torch.from_numpy(rows.astype(np.float32))).numpy()
    np.testing.assert_allclose(json_answer(model, csv_body(rows), "text/csv"), expected, rtol=1e-6)


@TORCHSCRIPT_DEPRECATED
@pytest.mark.parametrize("whole", [False, True])
def test_a_state_dict_pth_says_to_use_inference_py(make_folder: FolderFactory, whole: bool) -> None:
    import torch

    network = torch.nn.Linear(3, 1)
    buffer = io.BytesIO()
    torch.save(network if whole else network.state_dict(), buffer)
    with pytest.raises(ModelLoadError, match="it is not TorchScript") as caught:
        load_model(make_folder({"model.pth": buffer.getvalue()}), model_id="m")
    assert "code/inference.py whose model_fn builds the module" in str(caught.value)


@TORCHSCRIPT_DEPRECATED
def test_corrupt_torchscript_is_a_load_error(make_folder: FolderFactory) -> None:
    with pytest.raises(ModelLoadError, match=r"torch handler could not load model\.pt"):
        load_model(make_folder({"model.pt": b"garbage"}), model_id="m")


def test_unknown_handler_name(make_folder: FolderFactory) -> None:
    with pytest.raises(ModelLoadError, match="Unknown handler 'tensorflow'; choose one of"):
        load_model(make_folder({"model.pt": b"x"}), model_id="m", handler="tensorflow")

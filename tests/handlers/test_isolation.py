"""Per-model module namespaces: same-named helpers in two models stay apart."""

from __future__ import annotations

import json
import sys
import textwrap
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelfleet.errors import ModelInvocationError, ModelLoadError
from modelfleet.handlers import LoadedModel, load_model
from modelfleet.handlers.isolation import ROOT_PACKAGE
from modelfleet.handlers.toolkit import ToolkitModel
from tests.artifacts import inference_py_artifact, unpack

INFERENCE = """
    import json as stdlib_json
    import helper
    import pkg.sub
    from helper import VALUE
    from pkg import sub as sub_module
    from pkg.sub import describe

    import numpy

    def model_fn(model_dir):
        return None

    def predict_fn(data, model):
        import helper as late  # an import at call time resolves the same way
        return {
            "value": VALUE,
            "helper": helper.VALUE,
            "late": late.VALUE,
            "sub": pkg.sub.NAME,
            "sub_module": sub_module.NAME,
            "describe": describe(),
            "numpy_is_global": numpy is __import__("sys").modules["numpy"],
            "json": stdlib_json.dumps is not None,
            "shadow": __import__("string_tools").SHADOW,
        }
"""


def code_for(tag: str) -> dict[str, str]:
    return {
        "inference.py": textwrap.dedent(INFERENCE),
        "helper.py": f"VALUE = {tag!r}\n",
        "string_tools.py": f"SHADOW = {tag!r}\n",
        "pkg/__init__.py": "",
        "pkg/sub.py": f"from . import names\nNAME = names.PREFIX + {tag!r}\n"
        "def describe():\n    from .names import PREFIX\n    return PREFIX + NAME\n",
        "pkg/names.py": "PREFIX = 'pkg-'\n",
    }


def load_tagged(tmp_path: Path, tag: str) -> LoadedModel:
    folder = unpack(inference_py_artifact(code_for(tag)), tmp_path / tag)
    return load_model(folder, model_id=f"model/{tag}")


def answer(model: LoadedModel) -> dict[str, object]:
    return dict(json.loads(model.invoke(b"[1]", "application/json", None).body))


def modules_of(model: LoadedModel) -> list[str]:
    assert isinstance(model, ToolkitModel)
    return model.namespace.module_names()


@pytest.fixture
def loaded() -> Iterator[list[LoadedModel]]:
    """Models a test loads; closed at the end so no test leaves modules behind."""
    models: list[LoadedModel] = []
    yield models
    for model in models:
        model.close()


def test_two_models_with_same_helper_names_each_get_their_own(
    tmp_path: Path, loaded: list[LoadedModel]
) -> None:
    first, second = load_tagged(tmp_path, "a"), load_tagged(tmp_path, "b")
    loaded += [first, second]
    assert answer(first) == {
        "value": "a",
        "helper": "a",
        "late": "a",
        "sub": "pkg-a",
        "sub_module": "pkg-a",
        "describe": "pkg-pkg-a",
        "numpy_is_global": True,
        "json": True,
        "shadow": "a",
    }
    assert answer(second)["helper"] == "b"
    assert answer(second)["describe"] == "pkg-pkg-b"
    for name in ("helper", "pkg", "pkg.sub", "inference", "string_tools"):
        assert name not in sys.modules
    assert set(modules_of(first)).isdisjoint(modules_of(second))


def test_close_removes_the_models_modules_only(tmp_path: Path) -> None:
    first, second = load_tagged(tmp_path, "a"), load_tagged(tmp_path, "b")
    first_modules = modules_of(first)
    assert any(name.endswith(".helper") for name in first_modules)
    assert any(name.endswith(".pkg.sub") for name in first_modules)
    first.close()
    assert not any(name in sys.modules for name in first_modules)
    assert answer(second)["helper"] == "b"
    first.close()  # twice is harmless
    second_modules = modules_of(second)
    second.close()
    assert not any(name in sys.modules for name in second_modules)
    assert second_modules[0].startswith(ROOT_PACKAGE + ".")


def test_same_model_id_loaded_twice_gets_two_namespaces(tmp_path: Path) -> None:
    folder = unpack(inference_py_artifact(code_for("x")), tmp_path / "x")
    once = load_model(folder, model_id="same")
    again = load_model(folder, model_id="same")
    assert isinstance(once, ToolkitModel)
    assert isinstance(again, ToolkitModel)
    assert once.namespace.package != again.namespace.package
    once.close()
    assert answer(again)["value"] == "x"
    again.close()


def test_code_folder_stays_free_of_bytecode(tmp_path: Path) -> None:
    model = load_tagged(tmp_path, "c")
    assert not list((tmp_path / "c" / "code").rglob("__pycache__"))
    model.close()


def test_tracebacks_show_the_model_source(tmp_path: Path) -> None:
    code = {
        "inference.py": "from helper import fail\n"
        "def model_fn(d):\n    return None\n"
        "def predict_fn(data, model):\n    return fail()\n",
        "helper.py": "def fail():\n    raise ValueError('from the helper')\n",
    }
    model = load_model(unpack(inference_py_artifact(code), tmp_path / "t"), model_id="t")
    with pytest.raises(ModelInvocationError, match="from the helper") as caught:
        model.invoke(b"[1]", "application/json", None)
    cause = caught.value.__cause__
    assert cause is not None
    last = traceback.extract_tb(cause.__traceback__)[-1]
    assert last.filename == str(tmp_path / "t" / "code" / "helper.py")
    assert last.line == "raise ValueError('from the helper')"
    model.close()


def test_pickles_naming_a_code_module_get_a_hint_and_a_workaround(tmp_path: Path) -> None:
    import pickle

    helper = "class Scaler:\n    def __init__(self, k):\n        self.k = k\n"
    scaler = type("Scaler", (), {"__module__": "helper"})
    trained = scaler()
    trained.k = 3
    sys.modules["helper"] = type(sys)("helper")  # as at training time, for pickle.dumps only
    try:
        sys.modules["helper"].Scaler = scaler  # type: ignore[attr-defined]
        raw = pickle.dumps(trained)
    finally:
        del sys.modules["helper"]
    plain = textwrap.dedent(
        """
        import os, pickle
        def model_fn(model_dir):
            with open(os.path.join(model_dir, "s.pkl"), "rb") as stream:
                return pickle.load(stream)
        def predict_fn(data, model):
            return model.k
        """
    )
    artifact = inference_py_artifact({"inference.py": plain, "helper.py": helper}, {"s.pkl": raw})
    with pytest.raises(ModelLoadError, match="refers to the module 'helper' of code/"):
        load_model(unpack(artifact, tmp_path / "plain"), model_id="plain")
    mapped = plain.replace(
        "return pickle.load(stream)",
        "return Unpickler(stream).load()",
    ) + textwrap.dedent(
        """
        import helper
        class Unpickler(pickle.Unpickler):
            def find_class(self, module, name):
                if module == "helper":
                    return getattr(helper, name)
                return super().find_class(module, name)
        """
    )
    artifact = inference_py_artifact({"inference.py": mapped, "helper.py": helper}, {"s.pkl": raw})
    model = load_model(unpack(artifact, tmp_path / "mapped"), model_id="mapped")
    assert model.invoke(b"[1]", "application/json", None).body == b"3"
    model.close()

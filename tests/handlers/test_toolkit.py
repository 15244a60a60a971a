"""The SageMaker inference toolkit contract (code/inference.py)."""

from __future__ import annotations

import io
import json
import sys
import textwrap
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from modelfleet.errors import (
    ModelInvocationError,
    ModelLoadError,
    UnsupportedContentTypeError,
)
from modelfleet.handlers import LoadedModel, load_model
from modelfleet.handlers.isolation import ROOT_PACKAGE
from tests.artifacts import inference_py_artifact, unpack

_loaded: list[LoadedModel] = []


@pytest.fixture(autouse=True)
def _close_models() -> Iterator[None]:
    yield
    while _loaded:
        _loaded.pop().close()


def load_code(tmp_path: Path, source: str, extra: dict[str, bytes] | None = None) -> LoadedModel:
    artifact = inference_py_artifact({"inference.py": textwrap.dedent(source)}, extra)
    folder = unpack(artifact, tmp_path / f"m{len(list(tmp_path.iterdir()))}")
    model = load_model(folder, model_id="toolkit-model")
    _loaded.append(model)
    return model


def private_modules() -> list[str]:
    return [name for name in sys.modules if name.startswith(ROOT_PACKAGE + ".")]


DOUBLER = """
    import numpy as np

    def model_fn(model_dir):
        return 2.0

    def predict_fn(data, model):
        return np.asarray(data) * model
"""


def test_defaults_decode_and_encode(tmp_path: Path) -> None:
    model = load_code(tmp_path, DOUBLER)
    assert model.handler_name == "inference.py"
    answer = model.invoke(b"[[1, 2], [3, 4]]", "application/json", None)
    assert (answer.body, answer.content_type) == (b"[[2.0, 4.0], [6.0, 8.0]]", "application/json")
    answer = model.invoke(b"1,2\n3,4", "text/csv; charset=utf-8", "text/csv")
    assert (answer.body, answer.content_type) == (b"2.0,4.0\n6.0,8.0\n", "text/csv")
    buffer = io.BytesIO()
    np.save(buffer, np.array([1.5]))
    answer = model.invoke(buffer.getvalue(), "application/x-npy", "application/x-npy")
    np.testing.assert_array_equal(np.load(io.BytesIO(answer.body)), [3.0])
    assert answer.custom_attributes is None


def test_default_codecs_refuse_unknown_types(tmp_path: Path) -> None:
    model = load_code(tmp_path, DOUBLER)
    with pytest.raises(UnsupportedContentTypeError):
        model.invoke(b"x", "image/png", None)
    with pytest.raises(UnsupportedContentTypeError):
        model.invoke(b"x", None, None)
    with pytest.raises(UnsupportedContentTypeError, match="image/png"):
        model.invoke(b"[1]", "application/json", "image/png")


def test_all_four_functions_see_what_the_toolkit_passes(tmp_path: Path) -> None:
    model = load_code(
        tmp_path,
        """
        import json, os

        def model_fn(model_dir):
            with open(os.path.join(model_dir, "config.json")) as stream:
                return json.load(stream)

        def input_fn(data, content_type):
            return {"type": type(data).__name__, "content_type": content_type, "data": data}

        def predict_fn(data, model):
            return dict(data, factor=model["factor"])

        def output_fn(prediction, accept):
            prediction["accept"] = accept
            return json.dumps(prediction, default=repr)
        """,
        {"config.json": b'{"factor": 3}'},
    )
    seen = json.loads(model.invoke(b"1,2", "text/csv; charset=utf-8", "*/*").body)
    assert seen == {
        "type": "str",
        "content_type": "text/csv; charset=utf-8",
        "data": "1,2",
        "factor": 3,
        "accept": "application/json",
    }
    answer = model.invoke(b"\x00\x01", "application/octet-stream", "text/plain")
    assert json.loads(answer.body)["type"] == "bytes"
    assert answer.content_type == "text/plain"


def test_transform_fn_alone_and_tuple_answers(tmp_path: Path) -> None:
    model = load_code(
        tmp_path,
        """
        def model_fn(model_dir):
            return "m"

        def transform_fn(model, data, content_type, accept):
            return f"{model}:{data}:{content_type}:{accept}", "text/plain"
        """,
    )
    answer = model.invoke(b'{"a": 1}', "application/json", None)
    assert answer.body == b'm:{"a": 1}:application/json:application/json'
    assert answer.content_type == "text/plain"


def test_output_objects_are_json_encoded(tmp_path: Path) -> None:
    model = load_code(
        tmp_path,
        """
        def model_fn(model_dir):
            return None

        def predict_fn(data, model):
            return data

        def output_fn(prediction, accept):
            return {"echo": prediction.tolist()} if prediction.ndim else object()
        """,
    )
    assert json.loads(model.invoke(b"[1, 2]", "application/json", None).body) == {"echo": [1, 2]}
    with pytest.raises(ModelInvocationError, match="neither bytes nor str"):
        model.invoke(b"1", "application/json", None)


def test_context_carries_custom_attributes_both_ways(tmp_path: Path) -> None:
    model = load_code(
        tmp_path,
        """
        def model_fn(model_dir, context):
            return context.system_properties["model_dir"]

        def predict_fn(data, model, context):
            incoming = context.get_request_header(0, "x-amzn-sagemaker-custom-attributes")
            context.set_response_header(0, "X-Amzn-SageMaker-Custom-Attributes", f"seen={incoming}")
            return [model.endswith("m0"), context.custom_attributes]
        """,
    )
    answer = model.invoke(b"[1]", "application/json", None, "trace=7")
    assert json.loads(answer.body) == [True, "trace=7"]
    assert answer.custom_attributes == "seen=trace=7"


def test_pre_model_and_warmup_hooks(tmp_path: Path) -> None:
    model = load_code(
        tmp_path,
        """
        calls = []

        def pre_model_fn(model_dir):
            calls.append("pre")

        def model_fn(model_dir):
            calls.append("model")
            return calls

        def model_warmup_fn(model_dir, model):
            calls.append("warmup")

        def predict_fn(data, model):
            return model
        """,
    )
    assert json.loads(model.invoke(b"1", "application/json", None).body) == [
        "pre",
        "model",
        "warmup",
    ]


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("def predict_fn(data, model): return data", "must define model_fn"),
        ("def model_fn(model_dir): return 1", "must define predict_fn"),
        (
            "def model_fn(d): return 1\ndef transform_fn(m, d, c, a): return d\n"
            "def input_fn(d, c): return d",
            "cannot define transform_fn together with input_fn",
        ),
        ("def model_fn(a, b, c): return 1\ndef predict_fn(d, m): return d", "takes 3 arguments"),
        ("model_fn = 3\ndef predict_fn(d, m): return d", "model_fn is a int"),
        (
            "def model_fn(d): raise RuntimeError('no weights here')\n"
            "def predict_fn(d, m): return d",
            "model_fn failed: RuntimeError: no weights here",
        ),
        ("import not_a_module_anywhere", "ModuleNotFoundError"),
        ("def broken(:", "SyntaxError"),
    ],
)
def test_load_errors_are_clear_and_leave_nothing_behind(
    tmp_path: Path, source: str, message: str
) -> None:
    before = private_modules()
    with pytest.raises(ModelLoadError, match=message):
        load_code(tmp_path, source)
    assert private_modules() == before


def test_user_errors_become_invocation_errors(tmp_path: Path) -> None:
    model = load_code(
        tmp_path,
        """
        class BadRequest(Exception):
            status_code = 400

        def model_fn(model_dir):
            return None

        def predict_fn(data, model):
            if data.size == 1:
                raise BadRequest("need two values")
            raise KeyError("boom")
        """,
    )
    with pytest.raises(
        ModelInvocationError, match="predict_fn failed: BadRequest: need two"
    ) as caught:
        model.invoke(b"[1]", "application/json", None)
    assert caught.value.original_status_code == 400
    with pytest.raises(ModelInvocationError, match="KeyError") as caught:
        model.invoke(b"[1, 2]", "application/json", None)
    assert caught.value.original_status_code == 500


SERIAL = """
    import threading, time

    state = {"now": 0, "peak": 0}
    lock = threading.Lock()

    def model_fn(model_dir):
        return state

    def predict_fn(data, model):
        with lock:
            model["now"] += 1
            model["peak"] = max(model["peak"], model["now"])
        time.sleep(0.02)  # room for another call to come in, were calls not serialized
        with lock:
            model["now"] -= 1
        return model["peak"]
"""


def test_user_code_is_serialized_unless_it_says_thread_safe(tmp_path: Path) -> None:
    model = load_code(tmp_path, SERIAL)
    with ThreadPoolExecutor(4) as pool:
        peaks = list(pool.map(lambda _: model.invoke(b"1", "application/json", None), range(8)))
    assert {p.body for p in peaks} == {b"1"}


PARALLEL = """
    import threading

    both_in = threading.Barrier(2, timeout=60)  # a bound on a hang, never reached when parallel

    MODELFLEET_THREAD_SAFE = True

    def model_fn(model_dir):
        return None

    def predict_fn(data, model):
        both_in.wait()  # returns only once two calls are inside predict_fn at the same time
        return 2
"""


def test_thread_safe_user_code_runs_calls_at_once(tmp_path: Path) -> None:
    model = load_code(tmp_path, PARALLEL)
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda _: model.invoke(b"1", "application/json", None), range(2)))
    assert [a.body for a in answers] == [b"2", b"2"]


MISSING_IMPORT = """
    import modelfleet_test_absent_package.sub

    def model_fn(model_dir):
        return None
"""

MISSING_AT_LOAD = """
    def model_fn(model_dir):
        import modelfleet_test_absent_package
        return modelfleet_test_absent_package

    def predict_fn(data, model):
        return data
"""


@pytest.mark.parametrize("source", [MISSING_IMPORT, MISSING_AT_LOAD])
def test_a_missing_module_names_it_and_the_models_requirements_txt(
    tmp_path: Path, source: str
) -> None:
    requirements = {"code/requirements.txt": b"modelfleet-test-absent-package==1.0\n"}
    with pytest.raises(ModelLoadError) as caught:
        load_code(tmp_path, source, requirements)
    message = str(caught.value)
    assert "No module named 'modelfleet_test_absent_package" in message
    assert "the module 'modelfleet_test_absent_package' is not installed" in message
    assert "code/requirements.txt lists its requirements" in message
    with pytest.raises(ModelLoadError) as caught:
        load_code(tmp_path, source)
    assert "the model has no code/requirements.txt" in str(caught.value)

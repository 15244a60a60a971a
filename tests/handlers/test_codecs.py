"""The default codecs: the SageMaker inference toolkit's decoders and encoders."""

from __future__ import annotations

import io
import json
import warnings

import numpy as np
import pytest

from modelfleet.errors import ModelInvocationError, UnsupportedContentTypeError
from modelfleet.handlers import codecs


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "value",
    ["text/csv", "TEXT/CSV", "text/csv; charset=utf-8", " text/csv ;header=absent"],
)
def test_media_type_drops_parameters_and_case(value: str) -> None:
    assert codecs.media_type(value) == "text/csv"


def test_csv_rows_decode_to_floats() -> None:
    array = codecs.decode(b"1,2,3\n4,5.5,6\n", "text/csv; charset=utf-8")
    assert array.dtype == np.float64
    np.testing.assert_array_equal(array, [[1, 2, 3], [4, 5.5, 6]])


def test_csv_one_row_is_one_dimensional_like_genfromtxt() -> None:
    np.testing.assert_array_equal(codecs.decode("1,2,3", "text/csv"), [1, 2, 3])
    np.testing.assert_array_equal(
        codecs.decode("1,2,3", "text/csv"), np.genfromtxt(io.StringIO("1,2,3"), delimiter=",")
    )


# Bodies the inference toolkit's decoder turns into arrays of many kinds: what an inference.py
# model's default input_fn hands on. Each must decode here exactly as there.
TOOLKIT_CSV = [
    "1,2,3\n4,5,6",  # integers stay integers
    "1.5,2.5\n3.5,4.5",
    "7",  # a single value: a 0-d array
    "1\n2\n3",  # one column: 1-D
    "1,2,3",  # one row: 1-D
    "a,b,c\n1,2,3",  # a header row: strings
    '"x","y"\n"1","2"',  # quoted fields: strings, quotes kept
    "1,,3\n\n4,5,6\r\n",  # an empty field in an integer column, a blank line, CRLF
    "1.5,,3.5\n4.5,5.5,6.5",  # an empty field in a float column: NaN
    "-1e3,2E-2,+3.0",
    "true,false",
    "",
]


@pytest.mark.parametrize("body", TOOLKIT_CSV)
def test_csv_decodes_as_the_inference_toolkit_does(body: str) -> None:
    from sagemaker_inference import decoder

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # genfromtxt: "Empty input file"
        theirs = decoder.decode(body, "text/csv")
    mine = codecs.decode(body, "text/csv")
    assert mine.dtype == theirs.dtype
    assert mine.shape == theirs.shape
    np.testing.assert_array_equal(mine, theirs)


@pytest.mark.parametrize(
    ("body", "expected"),
    [("1,2.5", [1.0, 2.5]), ("1,2.5\n3,4", [[1.0, 2.5], [3.0, 4.0]])],
)
def test_mixed_integer_and_float_columns_are_floats_not_a_structured_array(
    body: str, expected: list[float]
) -> None:
    from sagemaker_inference import decoder

    assert decoder.decode(body, "text/csv").dtype.names is not None  # what no model takes
    mine = codecs.decode(body, "text/csv")
    assert mine.dtype == np.float64
    np.testing.assert_array_equal(mine, expected)


@pytest.mark.parametrize(
    "body", [b"[[1, 2], [3, 4]]", b"[1.5, 2]", b"7", b'["a", "b"]', b"[[1, 2], [3]]"]
)
def test_json_decodes_as_the_inference_toolkit_does(body: bytes) -> None:
    from sagemaker_inference import decoder

    try:
        theirs = decoder.decode(body.decode(), "application/json")
    except ValueError:  # ragged rows: numpy refuses them
        with pytest.raises(ModelInvocationError, match="not valid application/json"):
            codecs.decode(body, "application/json")
        return
    mine = codecs.decode(body, "application/json")
    assert mine.dtype == theirs.dtype
    np.testing.assert_array_equal(mine, theirs)


def test_npz_decodes_to_the_sparse_matrix_the_toolkit_gives() -> None:
    import scipy.sparse
    from sagemaker_inference import decoder

    buffer = io.BytesIO()
    scipy.sparse.save_npz(buffer, scipy.sparse.csr_matrix(np.array([[0, 1.5], [2.0, 0]])))
    theirs = decoder.decode(buffer.getvalue(), "application/x-npz")
    mine = codecs.decode(buffer.getvalue(), "application/x-npz")
    assert (mine != theirs).nnz == 0
    with pytest.raises(ModelInvocationError, match="not valid application/x-npz"):
        codecs.decode(b"not a zip", "application/x-npz")


def test_csv_matrix_keeps_one_row_two_dimensional() -> None:
    assert codecs.decode_matrix(b"1,2,3", "text/csv").shape == (1, 3)


def test_large_csv_takes_the_vectorized_path() -> None:
    rows = np.arange(30_000.0).reshape(-1, 6)
    body = "\n".join(",".join(map(str, row)) for row in rows).encode()
    np.testing.assert_array_equal(codecs.decode_matrix(body, "text/csv"), rows)
    with_gap = body.replace(b"6.0,", b",", 1)  # a missing value: falls back to the slow path
    assert np.isnan(codecs.decode_matrix(with_gap, "text/csv")[1, 0])


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"1,2\n3", "line 2 has 1 values, expected 2"),
        (b"1,abc", "line 1"),
        (b"\n \n", "no rows"),
        (b"\xff\xfe", "not valid text/csv"),
    ],
)
def test_bad_csv_rows_are_a_clear_400(body: bytes, message: str) -> None:
    with pytest.raises(ModelInvocationError, match=message) as caught:
        codecs.decode_matrix(body, "text/csv")
    assert caught.value.original_status_code == 400


@pytest.mark.parametrize(
    ("body", "message"),
    [(b"1,2\n3", "Line #2 \\(got 1 columns instead of 2\\)"), (b"\xff\xfe", "not valid text/csv")],
)
def test_csv_the_toolkit_cannot_read_is_a_clear_400(body: bytes, message: str) -> None:
    with pytest.raises(ModelInvocationError, match=message) as caught:
        codecs.decode(body, "text/csv")
    assert caught.value.original_status_code == 400


def test_json_decodes_like_the_toolkit() -> None:
    array = codecs.decode(b"[[1, 2], [3, 4]]", "application/json")
    np.testing.assert_array_equal(array, np.array(json.loads("[[1, 2], [3, 4]]")))
    assert codecs.decode_matrix(b"[1, 2, 3]", "application/json").shape == (1, 3)


@pytest.mark.parametrize("body", [b"{not json", b"[[1, 2], [3]]", b'[["a", "b"]]'])
def test_bad_json_is_a_clear_400(body: bytes) -> None:
    with pytest.raises(ModelInvocationError, match="application/json") as caught:
        codecs.decode_matrix(body, "application/json")
    assert caught.value.original_status_code == 400


def test_npy_round_trip_including_fortran_order() -> None:
    array = np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4))
    decoded = codecs.decode(npy(array), "application/x-npy")
    np.testing.assert_array_equal(decoded, array)
    assert decoded.flags.writeable
    body, content_type = codecs.encode(decoded, "application/x-npy")
    assert content_type == "application/x-npy"
    np.testing.assert_array_equal(np.load(io.BytesIO(body)), array)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (npy(np.array([{"a": 1}], dtype=object)), "object arrays"),
        (b"NUMPY not really", "magic"),
        (npy(np.ones(4))[:-8], "expected 4 values"),
    ],
)
def test_bad_npy_is_refused_without_unpickling(body: bytes, message: str) -> None:
    with pytest.raises(ModelInvocationError, match=message):
        codecs.decode(body, "application/x-npy")


@pytest.mark.parametrize("content_type", [None, "", "image/png", "application/x-parquet"])
def test_unknown_content_type_is_415(content_type: str | None) -> None:
    with pytest.raises(UnsupportedContentTypeError) as caught:
        codecs.decode(b"1", content_type)
    assert caught.value.original_status_code == 415


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, "application/json"),
        ("", "application/json"),
        ("*/*", "application/json"),
        ("text/csv", "text/csv"),
        ("Text/CSV; charset=utf-8", "text/csv"),
        ("image/png, application/x-npy", "application/x-npy"),
        ("text/*", "text/csv"),
        ("image/png, */*;q=0.1", "application/json"),
    ],
)
def test_accept_choice(accept: str | None, expected: str) -> None:
    assert codecs.choose_accept(accept) == expected


def test_unknown_accept_is_415() -> None:
    with pytest.raises(UnsupportedContentTypeError, match="image/png"):
        codecs.encode([1], "image/png")


def test_encoders_match_the_toolkit() -> None:
    prediction = np.array([[1.5, 2.0], [3.0, 4.25]])
    body, content_type = codecs.encode(prediction, None)
    assert (body, content_type) == (b"[[1.5, 2.0], [3.0, 4.25]]", "application/json")
    expected = io.StringIO()
    np.savetxt(expected, prediction, delimiter=",", fmt="%s")
    assert codecs.encode(prediction, "text/csv")[0] == expected.getvalue().encode()
    single = np.array([0.1, 0.2], dtype=np.float32)
    expected = io.StringIO()
    np.savetxt(expected, single, delimiter=",", fmt="%s")
    assert codecs.encode(single, "text/csv")[0] == expected.getvalue().encode() == b"0.1\n0.2\n"


def test_json_encodes_numpy_inside_containers() -> None:
    body = codecs.encode_json({"scores": np.array([1, 2]), "top": np.float32(0.5)})
    assert json.loads(body) == {"scores": [1, 2], "top": 0.5}


def test_csv_refuses_three_dimensions() -> None:
    with pytest.raises(ModelInvocationError, match="1 or 2 dimensions"):
        codecs.encode(np.zeros((1, 1, 1)), "text/csv")

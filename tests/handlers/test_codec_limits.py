"""Bodies built to break a decoder: nested past its depth, or an ``.npy`` header built to make
``ast.literal_eval`` recurse. Each is the client's error (ValidationError, 400), never a
RecursionError or MemoryError (500), and never a model error."""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from modelfleet.errors import ModelError, ValidationError
from modelfleet.handlers import codecs

NESTED_JSON = b"[" * 100_000 + b"]" * 100_000  # 200 KB, the body


def npy_with_header(header: str) -> bytes:
    """A version 1.0 ``.npy`` file with ``header`` as its (unchecked) header text."""
    text = header.encode("latin1")
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text


@pytest.mark.parametrize("decode", [codecs.decode, codecs.decode_matrix, codecs.decode_tensor])
@pytest.mark.parametrize("body", [NESTED_JSON, NESTED_JSON.decode(), b'{"a":' * 50_000])
def test_json_nested_past_the_recursion_limit_is_a_validation_error(
    decode: Callable[[bytes | str, str | None], Any], body: bytes | str
) -> None:
    with pytest.raises(ValidationError, match="nested too deeply"):
        decode(body, "application/json")


def test_json_nested_within_the_limit_still_decodes() -> None:
    np.testing.assert_array_equal(
        codecs.decode(b"[" * 20 + b"1" + b"]" * 20, "application/json").reshape(-1), [1]
    )


@pytest.mark.parametrize(
    "header",
    [
        "{'descr': " + "1+" * 4990 + "1}",  # RecursionError in ast construction
        "{'descr': " + "-" * 9980 + "1}",  # MemoryError from the parser's stack
    ],
)
def test_npy_header_nested_past_the_parser_is_a_validation_error(header: str) -> None:
    with pytest.raises(ValidationError, match="nested too deeply"):
        codecs.decode(npy_with_header(header), "application/x-npy")


def test_npy_header_over_numpys_limit_is_refused_before_parsing() -> None:
    with pytest.raises(ModelError, match="header of 60000 bytes"):
        codecs.decode(npy_with_header(" " * 60_000), "application/x-npy")

"""Request and response codecs: ``text/csv``, ``application/json`` and ``application/x-npy``.

The defaults follow the SageMaker inference toolkit's ``default_input_fn`` and
``default_output_fn`` (its ``decoder`` and ``encoder`` modules):

* ``text/csv`` decodes, for ``inference.py`` models (:func:`decode`), with the toolkit's own
  ``np.genfromtxt(..., dtype=None, delimiter=",")`` (see :func:`decode` for what that gives and
  the two differences); for the framework handlers (:func:`decode_matrix`), into rows of floats
  (empty fields NaN, as the SageMaker XGBoost container reads them; integers become floats; a
  header row or quoted field is a 400), parsed without genfromtxt for speed. It encodes like
  ``np.savetxt(..., delimiter=",", fmt="%s")`` (one line per row, one value per line for a 1-D
  array);
* ``application/json`` decodes with ``np.array(json.loads(body))`` and encodes with ``json.dumps``
  (arrays through ``tolist()``);
* ``application/x-npy`` decodes with the ``.npy`` format and encodes with ``np.save``. Unlike the
  toolkit, object arrays are refused on both sides (``allow_pickle=False``): a request must never
  make the server unpickle.

A body nested too deeply to decode (``[[[[...]]]]``: JSON past the interpreter's recursion
limit, ~1,000 levels; an ``.npy`` header whose expression nests past the parser's limits) is the
client's error, a :class:`~modelfleet.errors.ValidationError` (400) whatever the model, never a
RecursionError (500). ``.npy`` headers are limited to 10,000 bytes, as numpy limits them.

Media types are compared without their parameters (``text/csv; charset=utf-8`` is ``text/csv``)
and case-insensitively. A missing ``Accept`` or ``*/*`` answers JSON. These functions are on the
hot path: small CSV payloads are parsed in pure Python (``np.genfromtxt`` costs ~30 µs for one row)
and ``.npy`` headers are parsed once per distinct header.
"""

from __future__ import annotations

import ast
import io
import json
import math
import warnings
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt
from numpy.lib.recfunctions import structured_to_unstructured

from modelfleet.errors import ModelInvocationError, UnsupportedContentTypeError, ValidationError

CSV = "text/csv"
JSON = "application/json"
NPY = "application/x-npy"
NPZ = "application/x-npz"
ANY = "*/*"

#: media types the default codecs decode and encode
SUPPORTED = (CSV, JSON, NPY)
#: the answer's type when the request has no Accept, or ``*/*``
DEFAULT_ACCEPT = JSON
#: text types whose body the inference toolkit hands to ``input_fn`` as ``str``
UTF8_TYPES = frozenset({CSV, JSON})

_WILDCARDS = {ANY: JSON, "application/*": JSON, "text/*": CSV}
_NPY_MAGIC = b"\x93NUMPY"
_LARGE_CSV_BYTES = 64 * 1024
_MAX_NPY_HEADER_BYTES = 10_000  # numpy.lib.format's own limit on what it will parse
_NAN = math.nan

Array = npt.NDArray[Any]


@lru_cache(maxsize=256)
def media_type(value: str) -> str:
    """The bare media type of a header value: parameters dropped, lower case, trimmed."""
    return value.split(";", 1)[0].strip().lower()


def bad_payload(content_type: str, exc: BaseException | str) -> ModelInvocationError:
    """The error for a body that does not parse as its declared content type (400 inside)."""
    return ModelInvocationError(
        f"The request body is not valid {content_type}: {exc}", original_status_code=400
    )


def too_deep(content_type: str) -> ValidationError:
    """The error for a body nested deeper than its decoder can go (400, not a model error)."""
    return ValidationError(
        f"The request body is nested too deeply to decode as {content_type}: arrays or objects "
        "inside one another for about a thousand levels or more. Send flat rows of features."
    )


def unsupported_content_type(content_type: str | None) -> UnsupportedContentTypeError:
    """The error for a request content type the default codecs cannot decode."""
    shown = content_type if content_type else "(none)"
    return UnsupportedContentTypeError(
        f"Unsupported content type {shown}; supported: {', '.join(SUPPORTED)}"
    )


# ---------------------------------------------------------------- decoding


def decode(data: bytes | str, content_type: str | None) -> Any:
    """Decode a request as the inference toolkit's ``decoder.decode`` does (the default
    ``input_fn`` of ``inference.py`` models): CSV through ``np.genfromtxt(dtype=None,
    delimiter=",")`` itself, so integers stay integers, a single value is a 0-d array, a header
    row or a quoted field gives strings, and an empty field is what genfromtxt fills in. Two
    differences, on purpose: rows mixing integer and float columns, which genfromtxt turns into a
    structured array no model takes, are plain float64; and a body genfromtxt cannot read is a 400
    (the toolkit's error is a 500). ``application/x-npz`` is a SciPy sparse matrix, as in the
    toolkit."""
    kind = media_type(content_type) if content_type else ""
    if kind == CSV:
        return _genfromtxt(_text(data, CSV))
    if kind == NPZ:
        return _npz_matrix(data)
    if kind == JSON:
        return _json_array(data)
    if kind == NPY:
        return _npy_array(data)
    raise unsupported_content_type(content_type)


def decode_matrix(data: bytes | str, content_type: str | None) -> Array:
    """Decode a request into a 2-D numeric array (rows of features) for tabular handlers.

    A 1-D JSON or ``.npy`` array is one row; CSV is always rows of floats.
    """
    array = decode_tensor(data, content_type)
    if array.ndim != 2:
        kind = media_type(content_type or "")
        raise bad_payload(
            kind, f"expected rows of features (2 dimensions), got shape {array.shape}"
        )
    return array


def decode_tensor(data: bytes | str, content_type: str | None) -> Array:
    """Decode a request into a numeric array of any rank (CSV gives rows of floats).

    A 1-D array is one row, as in :func:`decode_matrix`; higher ranks are kept.
    """
    kind = media_type(content_type) if content_type else ""
    if kind == CSV:
        return _csv_matrix(data)
    if kind not in (JSON, NPY):
        raise unsupported_content_type(content_type)
    array = _json_array(data) if kind == JSON else _npy_array(data)
    if array.ndim < 2:
        array = array.reshape(1, -1)
    if array.dtype.kind not in "biuf":
        try:
            array = array.astype(np.float64)
        except (TypeError, ValueError) as exc:
            raise bad_payload(kind, f"values must be numbers ({exc})") from exc
    return array


def _text(data: bytes | str, content_type: str) -> str:
    if isinstance(data, str):
        return data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise bad_payload(content_type, exc) from exc


def _genfromtxt(text: str) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Empty input file" for an empty body
        try:
            array = np.genfromtxt(io.StringIO(text), dtype=None, delimiter=",")
        except ValueError as exc:  # rows of different lengths
            raise bad_payload(CSV, _one_line(exc)) from exc
    fields = array.dtype.fields
    if fields and all(np.dtype(f[0]).kind in "biuf" for f in fields.values()):
        array = structured_to_unstructured(array, dtype=np.float64)
    return array


def _npz_matrix(data: bytes | str) -> Any:
    import scipy.sparse  # the toolkit's dependency for .npz; the frameworks bring it here

    raw = data.encode() if isinstance(data, str) else data
    try:
        return scipy.sparse.load_npz(io.BytesIO(raw))  # allow_pickle=False inside
    except (ValueError, OSError, KeyError) as exc:
        raise bad_payload(NPZ, exc) from exc


def _one_line(exc: BaseException) -> str:
    """An exception's message on one line (genfromtxt's spans several)."""
    text = str(exc).strip()
    return " ".join(text.split()) if text else type(exc).__name__


def _csv_matrix(data: bytes | str) -> Array:
    """Rows of comma-separated floats; blank lines skipped, empty fields NaN."""
    text = _text(data, CSV)
    if len(text) > _LARGE_CSV_BYTES:
        try:
            return np.loadtxt(io.StringIO(text), delimiter=",", ndmin=2, dtype=np.float64)
        except ValueError:
            pass  # missing values or a ragged row: the slow path explains which
    rows: list[list[float]] = []
    width = -1
    for number, line in enumerate(text.splitlines(), start=1):
        if not line or line.isspace():
            continue
        try:
            row = [float(field) if field.strip() else _NAN for field in line.split(",")]
        except ValueError as exc:
            raise bad_payload(CSV, f"line {number}: {exc}") from exc
        if width < 0:
            width = len(row)
        elif len(row) != width:
            raise bad_payload(CSV, f"line {number} has {len(row)} values, expected {width}")
        rows.append(row)
    if not rows:
        raise bad_payload(CSV, "no rows")
    return np.array(rows, dtype=np.float64)


def _json_array(data: bytes | str) -> Array:
    try:
        return np.array(json.loads(data))
    except (ValueError, TypeError) as exc:
        raise bad_payload(JSON, exc) from exc
    except RecursionError:  # json's C scanner counts nesting against the recursion limit
        raise too_deep(JSON) from None


@lru_cache(maxsize=256)
def _npy_header(header: bytes) -> tuple[np.dtype[Any], bool, tuple[int, ...]]:
    fields = ast.literal_eval(header.decode("latin1"))
    if not isinstance(fields, dict) or set(fields) != {"descr", "fortran_order", "shape"}:
        raise ValueError(f"bad header {header!r}")
    dtype = np.lib.format.descr_to_dtype(fields["descr"])
    shape = fields["shape"]
    if not isinstance(shape, tuple) or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise ValueError(f"bad shape {shape!r}")
    return dtype, bool(fields["fortran_order"]), shape


def _npy_array(data: bytes | str) -> Array:
    raw = data.encode("latin1") if isinstance(data, str) else data
    if raw[:6] != _NPY_MAGIC or len(raw) < 10:
        raise bad_payload(NPY, "missing the .npy magic string")
    major = raw[6]
    if major == 1:
        size, start = int.from_bytes(raw[8:10], "little"), 10
    elif major in (2, 3):
        size, start = int.from_bytes(raw[8:12], "little"), 12
    else:
        raise bad_payload(NPY, f"unknown .npy format version {major}")
    if size > _MAX_NPY_HEADER_BYTES:
        raise bad_payload(NPY, f"a header of {size} bytes (the limit is {_MAX_NPY_HEADER_BYTES})")
    try:
        dtype, fortran, shape = _npy_header(raw[start : start + size])
    except (ValueError, SyntaxError, TypeError) as exc:
        raise bad_payload(NPY, exc) from exc
    except (RecursionError, MemoryError):  # ast's parser on a deeply nested expression
        raise too_deep(NPY) from None
    if dtype.hasobject:
        raise bad_payload(NPY, "object arrays are refused (they would need pickle)")
    count = math.prod(shape)
    offset = start + size
    if len(raw) - offset != count * dtype.itemsize:
        raise bad_payload(NPY, f"expected {count} values of {dtype} after the header")
    flat = np.frombuffer(raw, dtype=dtype, count=count, offset=offset)
    return flat.reshape(shape, order="F" if fortran else "C").copy()


# ---------------------------------------------------------------- encoding


def choose_accept(accept: str | None, supported: tuple[str, ...] = SUPPORTED) -> str:
    """The media type to answer with: the first of ``accept``'s list that ``supported`` has.

    ``None``, empty or ``*/*`` choose JSON (``text/*`` chooses CSV). Quality values are ignored;
    the list order decides, as in the inference toolkit.
    """
    if not accept:
        return DEFAULT_ACCEPT if DEFAULT_ACCEPT in supported else supported[0]
    for item in accept.split(","):
        kind = media_type(item)
        if kind in supported:
            return kind
        wildcard = _WILDCARDS.get(kind)
        if wildcard is not None and wildcard in supported:
            return wildcard
    raise UnsupportedContentTypeError(
        f"Unsupported accept {accept}; supported: {', '.join(supported)}"
    )


def encode(prediction: object, accept: str | None) -> tuple[bytes, str]:
    """Encode like the inference toolkit's ``default_output_fn``: ``(body, content_type)``."""
    kind = choose_accept(accept)
    try:
        if kind == JSON:
            return encode_json(prediction), JSON
        if kind == CSV:
            return encode_csv(prediction), CSV
        return encode_npy(prediction), NPY
    except (TypeError, ValueError) as exc:
        raise ModelInvocationError(f"Could not encode the prediction as {kind}: {exc}") from exc


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def encode_json(prediction: object) -> bytes:
    """``json.dumps`` with numpy arrays and scalars turned into lists and numbers."""
    if isinstance(prediction, np.ndarray):
        prediction = prediction.tolist()
    return json.dumps(prediction, default=_jsonable).encode()


def _cells(row: Array) -> list[str]:
    # str() of numpy scalars is what np.savetxt(fmt="%s") writes (float32 1.1 -> "1.1");
    # tolist() is faster and writes the same for the types where Python's str agrees.
    if row.dtype.kind in "biu" or row.dtype == np.float64:
        return [str(value) for value in row.tolist()]
    return [str(value) for value in row]


def encode_csv(prediction: object) -> bytes:
    """Like ``np.savetxt(delimiter=",", fmt="%s")``: a line per row, a value per line in 1-D."""
    array = np.asarray(prediction)
    if array.ndim == 0:
        array = array.reshape(1)
    if array.ndim == 1:
        return ("\n".join(_cells(array)) + "\n").encode()
    if array.ndim == 2:
        return "".join(",".join(_cells(row)) + "\n" for row in array).encode()
    raise ValueError(f"text/csv holds 1 or 2 dimensions, the prediction has {array.ndim}")


def encode_npy(prediction: object) -> bytes:
    """``np.save`` of the prediction, refusing object arrays."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(prediction), allow_pickle=False)
    return buffer.getvalue()

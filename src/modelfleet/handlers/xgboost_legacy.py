"""XGBoost's old binary model format, read into the JSON model XGBoost 3 loads.

The SageMaker built-in XGBoost containers 1.2-2 to 1.7-1 save ``xgboost-model`` with
``Booster.save_model`` and no file extension, which XGBoost 1.x writes in its binary format
(``binf`` then packed C structs). XGBoost 3 removed that reader ("Unknown construct"), and no
maintained library turns the format into one XGBoost 3 reads: XGBoost 2.x can, but cannot be
installed beside XGBoost 3, and treelite reads it into its own model, served by its own
predictor, not by XGBoost. The format is frozen (XGBoost stopped writing it in 3.0), so it is
read here, by hand, into the JSON document XGBoost 1.7.6 writes for the same model
(``Booster.save_model("m.json")`` after loading the binary file); XGBoost 3 loads that document
and predicts as XGBoost does. The tests check the document field by field against XGBoost
1.7.6's own, and the answers against XGBoost 1.7.6's (``tests/handlers/xgboost17/``).

Layout (little-endian, as XGBoost wrote it on x86 and ARM; ``src/learner.cc``,
``src/gbm/gbtree_model.cc``, ``src/tree/tree_model.cc`` of XGBoost 1.7):

* ``binf``; the learner's parameters (136 bytes: base score, features, classes, whether
  attributes follow, the writing version ...); the objective's and the booster's names
  (each a ``uint64`` length and the bytes);
* ``gbtree`` and ``dart``: the booster's parameters (160 bytes), then each tree (its parameters,
  148 bytes; its nodes, 20 bytes each; their statistics, 16 bytes each), the trees' output
  groups (``int32`` each) and, for ``dart``, the trees' weights (``uint64`` count, ``float32``
  each); ``gblinear``: its parameters (136 bytes) and the weights;
* the attributes (``uint64`` count, then key and value strings), among them ``objective``:
  the objective's configuration as JSON, and ``best_iteration`` for early stopping.

Models saved by XGBoost before 1.0 (stored base score already transformed, no objective
configuration) are refused with a clear error rather than guessed at.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np

from modelfleet.errors import ModelLoadError

MAGIC = b"binf"
#: the XGBoost release whose JSON model this module writes (XGBoost 3 loads it as saved by it)
AS_SAVED_BY = (1, 7, 6)

_LEARNER = struct.Struct("<fIiiiIIIi25i")  # LearnerModelParamLegacy, 136 bytes
_GBTREE = struct.Struct("<iiiiqii32i")  # GBTreeModelParam, 160 bytes
_TREE = struct.Struct("<iiiiIi31i")  # TreeParam, 148 bytes
_GBLINEAR = struct.Struct("<Ii32i")  # DeprecatedGBLinearModelParam, 136 bytes
_NODE = np.dtype(
    [("parent", "<i4"), ("left", "<i4"), ("right", "<i4"), ("index", "<u4"), ("value", "<f4")]
)
_STAT = np.dtype([("loss", "<f4"), ("hessian", "<f4"), ("weight", "<f4"), ("leaf_children", "<i4")])
_LOW_31 = 0x7FFFFFFF
#: attributes the binary format uses for what JSON keeps elsewhere (XGBoost drops them on load)
_NOT_ATTRIBUTES = frozenset({"objective", "metrics", "count_poisson_max_delta_step"})


def is_legacy_binary(head: bytes | bytearray | memoryview) -> bool:
    """Whether a model file starting with ``head`` is in XGBoost's old binary format."""
    return bytes(head[:4]) == MAGIC


class _Reader:
    """Reads the format's values from a buffer, failing clearly where it ends early."""

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self.data = memoryview(data)
        self.at = 0

    def take(self, size: int) -> memoryview:
        if size < 0 or self.at + size > len(self.data):
            raise ValueError(f"the file ends at byte {len(self.data)}, before its model does")
        chunk = self.data[self.at : self.at + size]
        self.at += size
        return chunk

    def unpack(self, layout: struct.Struct) -> tuple[Any, ...]:
        return layout.unpack(self.take(layout.size))

    def count(self) -> int:
        (value,) = struct.unpack("<Q", self.take(8))
        return int(value)

    def string(self) -> str:
        return bytes(self.take(self.count())).decode("utf-8")

    def array(self, dtype: np.dtype[Any] | str, n: int) -> np.ndarray[Any, Any]:
        kind = np.dtype(dtype)
        return np.frombuffer(self.take(n * kind.itemsize), dtype=kind, count=n)


def _floats(values: np.ndarray[Any, Any]) -> list[float]:
    """float32 values as Python floats (exact): each prints as a decimal that reads back as the
    same float32."""
    result: list[float] = values.astype(np.float64).tolist()
    return result


def _tree(reader: _Reader, tree_id: int) -> dict[str, Any]:
    _, num_nodes, num_deleted, _, num_feature, size_leaf_vector, *_ = reader.unpack(_TREE)
    if num_nodes <= 0:
        raise ValueError(f"tree {tree_id} has {num_nodes} nodes")
    nodes = reader.array(_NODE, num_nodes)
    stats = reader.array(_STAT, num_nodes)
    index = nodes["index"]
    return {
        "base_weights": _floats(stats["weight"]),
        "categories": [],
        "categories_nodes": [],
        "categories_segments": [],
        "categories_sizes": [],
        "default_left": (index >> 31).astype(int).tolist(),
        "id": tree_id,
        "left_children": nodes["left"].tolist(),
        "loss_changes": _floats(stats["loss"]),
        "parents": (nodes["parent"].view("<u4") & _LOW_31).astype(int).tolist(),
        "right_children": nodes["right"].tolist(),
        "split_conditions": _floats(nodes["value"]),
        "split_indices": (index & _LOW_31).astype(int).tolist(),
        "split_type": [0] * num_nodes,
        "sum_hessian": _floats(stats["hessian"]),
        "tree_param": {
            "num_deleted": str(num_deleted),
            "num_feature": str(num_feature),
            "num_nodes": str(num_nodes),
            "size_leaf_vector": str(size_leaf_vector),
        },
    }


def _gbtree(reader: _Reader) -> dict[str, Any]:
    num_trees, num_parallel_tree, _, _, _, _, size_leaf_vector, *_ = reader.unpack(_GBTREE)
    if num_trees < 0:
        raise ValueError(f"the booster has {num_trees} trees")
    trees = [_tree(reader, t) for t in range(num_trees)]
    tree_info = reader.array("<i4", num_trees).tolist() if num_trees else []
    return {
        "gbtree_model_param": {
            "num_parallel_tree": str(num_parallel_tree),
            "num_trees": str(num_trees),
            "size_leaf_vector": str(size_leaf_vector),
        },
        "tree_info": tree_info,
        "trees": trees,
    }


def _booster(reader: _Reader, name: str) -> dict[str, Any]:
    if name == "gbtree":
        return {"model": _gbtree(reader), "name": "gbtree"}
    if name == "dart":
        model = _gbtree(reader)
        trees = int(model["gbtree_model_param"]["num_trees"])
        weights = _floats(reader.array("<f4", reader.count())) if trees else []
        return {
            "gbtree": {"model": model, "name": "gbtree"},
            "name": "dart",
            "weight_drop": weights,
        }
    if name == "gblinear":
        reader.unpack(_GBLINEAR)
        weights = _floats(reader.array("<f4", reader.count()))
        return {"model": {"boosted_rounds": 0, "weights": weights}, "name": "gblinear"}
    raise ValueError(f"unknown booster {name!r}")


def _float_text(value: float) -> str:
    """A float32 as XGBoost writes parameters: the shortest decimal that reads back the same."""
    mantissa, exponent = np.format_float_scientific(np.float32(value), unique=True, trim="-").split(
        "e"
    )
    return f"{mantissa}E{int(exponent)}"


def to_json_model(data: bytes | bytearray | memoryview) -> tuple[dict[str, Any], str]:
    """The JSON model XGBoost 1.7.6 saves for the binary model ``data``, and the XGBoost
    version that wrote ``data`` (``"1.3"``).

    Raises :class:`ValueError` saying what is wrong with a file that is not such a model.
    """
    reader = _Reader(data)
    if bytes(reader.take(4)) != MAGIC:
        raise ValueError("it does not start with 'binf'")
    (base_score, num_feature, num_class, has_attributes, _, major, minor, num_target,
     boost_from_average, *_) = reader.unpack(_LEARNER)  # fmt: skip
    if major < 1:
        raise ValueError(
            "it was saved by XGBoost before 1.0, whose binary models this server does not read;"
            " load it with XGBoost 1.x and save it as JSON (model.json)"
        )
    objective_name = reader.string()
    booster = _booster(reader, reader.string())
    attributes: dict[str, str] = {}
    if has_attributes:
        for _ in range(reader.count()):
            key = reader.string()
            attributes[key] = reader.string()
    if "objective" not in attributes:
        raise ValueError("it has no objective configuration (saved by XGBoost before 1.0?)")
    objective = json.loads(attributes["objective"])
    if objective.get("name") != objective_name:
        raise ValueError(f"its objective {objective_name!r} disagrees with its configuration")
    document = {
        "learner": {
            "attributes": {k: v for k, v in attributes.items() if k not in _NOT_ATTRIBUTES},
            "feature_names": [],
            "feature_types": [],
            "gradient_booster": booster,
            "learner_model_param": {
                "base_score": _float_text(base_score),
                "boost_from_average": str(boost_from_average),
                "num_class": str(num_class),
                "num_feature": str(num_feature),
                "num_target": str(num_target or 1),
            },
            "objective": objective,
        },
        "version": list(AS_SAVED_BY),
    }
    return document, f"{major}.{minor}"


def convert(data: bytes | bytearray | memoryview, file_name: str) -> tuple[bytes, str]:
    """``data`` (a binary model) as the JSON bytes XGBoost 3 loads, and the version that saved
    it; :class:`ModelLoadError` if it can't be read."""
    try:
        document, saved_by = to_json_model(data)
    except (ValueError, UnicodeDecodeError, struct.error, json.JSONDecodeError) as exc:
        raise ModelLoadError(
            f"The xgboost handler could not read {file_name} as an XGBoost 1.x binary model: {exc}"
        ) from exc
    return json.dumps(document, separators=(",", ":")).encode(), saved_by

"""Target-model validation: what a request may name, decided before anything is touched."""

from __future__ import annotations

import posixpath
import random
import string

import pytest

from modelfleet.errors import InvalidTargetModelError, ValidationError
from modelfleet.source import MAX_TARGET_MODEL_LENGTH, archive_mode, is_archive
from modelfleet.source import validate_target_model as validate
from modelfleet.source.target import MAX_SEGMENT_BYTES

GOOD = [
    "model.tar.gz",
    "customer-17/model.tar.gz",
    "a",
    ("a" * 200 + "/") * 4 + "a" * 220,  # 1,024 characters in segments of at most 220
    "a" * MAX_SEGMENT_BYTES,
    "é" * (MAX_SEGMENT_BYTES // 2),  # 254 bytes in UTF-8
    "x/" + "模" * (MAX_SEGMENT_BYTES // 3),  # 255 bytes in UTF-8
    "a/b/c/d/e/f.onnx",
    "with space.pkl",
    " leading and trailing ",
    ".hidden",
    "a/.b",
    "..a",
    "a..",
    "...",
    "a/.../b",
    "ab:c",
    "models/x:y",
    "ünïcödé/модель.onnx",
    "emoji-🙂.joblib",
    "~/not-a-home",
    "a%2F..%2Fb",
    "q?x=1#frag",
]

BAD = [
    ("", "empty"),
    ("a" * (MAX_TARGET_MODEL_LENGTH + 1), "1025 characters"),
    ("a" * MAX_TARGET_MODEL_LENGTH, "1024 bytes long"),
    ("a" * (MAX_SEGMENT_BYTES + 1), "256 bytes long"),
    ("ok/" + "é" * 128 + "/m.tar.gz", "256 bytes long"),
    ("🙂" * 64, "256 bytes long"),
    ("/abs/model.tar.gz", "relative"),
    ("/", "relative"),
    ("a//b", "empty segments"),
    ("a/", "empty segments"),
    ("./a", "'.' segments"),
    ("a/./b", "'.' segments"),
    (".", "'.' segments"),
    ("..", "'..'"),
    ("../a", "'..'"),
    ("a/../b", "'..'"),
    ("a/..", "'..'"),
    ("a\\b", "backslash"),
    ("..\\a", "backslash"),
    ("C:\\models\\m", "backslash"),
    ("C:/models/m", "drive"),
    ("d:", "drive"),
    ("z:model", "drive"),
    ("a\x00b", "non-printable"),
    ("a\nb", "non-printable"),
    ("a\tb", "non-printable"),
    ("a\rb", "non-printable"),
    ("\x7f", "non-printable"),
    ("a\x1bb", "non-printable"),
    ("a\u2028b", "non-printable"),
]


@pytest.mark.parametrize("name", GOOD)
def test_valid_names_are_returned_unchanged(name: str) -> None:
    assert validate(name) is name


@pytest.mark.parametrize(("name", "reason"), BAD)
def test_invalid_names_are_rejected_with_the_rule(name: str, reason: str) -> None:
    with pytest.raises(InvalidTargetModelError) as caught:
        validate(name)
    assert reason in caught.value.message
    assert isinstance(caught.value, ValidationError)


def test_long_names_are_shortened_in_the_message() -> None:
    with pytest.raises(InvalidTargetModelError) as caught:
        validate("x" * 5000)
    assert len(caught.value.message) < 200


def test_non_string_is_rejected() -> None:
    with pytest.raises(InvalidTargetModelError, match="expected a string"):
        validate(b"model.tar.gz")  # type: ignore[arg-type]


def _reference(name: str) -> bool:
    """An independent statement of the rules, through posixpath."""
    if not 1 <= len(name) <= MAX_TARGET_MODEL_LENGTH or not name.isprintable():
        return False
    if "\\" in name or name.startswith("/"):
        return False
    if len(name) >= 2 and name[1] == ":" and name[0] in string.ascii_letters:
        return False
    segments = name.split("/")
    if any(len(segment.encode()) > MAX_SEGMENT_BYTES for segment in segments):
        return False
    return posixpath.normpath(name) == name and ".." not in segments and "." not in segments


def test_agrees_with_a_reference_on_random_names() -> None:
    rng = random.Random(20261125)
    alphabet = ["a", "B", "z", "/", "/", ".", ".", "\\", ":", " ", "\x00", "\n", "é", "-", "_"]
    for _ in range(20_000):
        name = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 8)))
        try:
            validate(name)
        except InvalidTargetModelError:
            accepted = False
        else:
            accepted = True
        assert accepted == _reference(name), repr(name)


def test_lengths_agree_with_the_reference_on_long_names() -> None:
    """Names near the limits: 1 to 4 bytes a character, segments around 255 bytes."""
    rng = random.Random(20261203)
    for _ in range(2_000):
        segments = [
            "".join(rng.choice(["a", "é", "模", "🙂"]) for _ in range(rng.randint(1, 270)))
            for _ in range(rng.randint(1, 6))
        ]
        name = "/".join(segments)[: rng.randint(1, MAX_TARGET_MODEL_LENGTH + 5)].strip("/")
        if not name or "//" in name:
            continue
        try:
            validate(name)
        except InvalidTargetModelError:
            accepted = False
        else:
            accepted = True
        assert accepted == _reference(name), repr(name)


@pytest.mark.parametrize(
    ("name", "mode"),
    [
        ("model.tar.gz", "r|gz"),
        ("a/MODEL.TAR.GZ", "r|gz"),
        ("m.tgz", "r|gz"),
        ("m.tar", "r|"),
        ("model.joblib", None),
        ("model.gz", None),
        ("tar.gz.onnx", None),
        ("folder", None),
    ],
)
def test_archive_mode_by_suffix(name: str, mode: str | None) -> None:
    assert archive_mode(name) == mode
    assert is_archive(name) is (mode is not None)

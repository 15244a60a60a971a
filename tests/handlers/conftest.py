"""Helpers for handler tests: write a model folder from a mapping of files."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.artifacts import FolderFactory


@pytest.fixture
def make_folder(tmp_path: Path) -> FolderFactory:
    """Write ``files`` (relative name -> bytes) into a new folder and return it."""
    counter = iter(range(1_000_000))

    def make(files: dict[str, bytes]) -> Path:
        folder = tmp_path / f"model{next(counter)}"
        folder.mkdir()
        for name, content in files.items():
            path = folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        return folder

    return make

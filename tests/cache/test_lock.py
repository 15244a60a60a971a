"""FolderLock: one live owner per folder, the PID while it runs, a mark after."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from modelfleet.cache.lock import FolderLock
from modelfleet.errors import CacheInUseError


def test_a_second_owner_is_refused_with_the_folder_and_the_pid(tmp_path: Path) -> None:
    first = FolderLock(tmp_path / "cache")
    assert first.acquire() == ""  # a new folder: nothing before
    second = FolderLock(tmp_path / "cache")
    with pytest.raises(
        CacheInUseError, match=rf"{tmp_path / 'cache'} is in use .*PID {os.getpid()}"
    ):
        second.acquire()
    first.release("clean\n")
    assert second.acquire() == "clean\n"  # what the last owner left
    assert (tmp_path / "cache" / "lock").read_text() == f"{os.getpid()}\n"
    second.release()  # no mark: the PID stays, so the next owner knows this one did not finish
    third = FolderLock(tmp_path / "cache")
    assert third.acquire() == f"{os.getpid()}\n"
    third.release()

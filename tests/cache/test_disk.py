"""The disk tier: atomic publish, budget, pins, re-index on restart, orphan sweep."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelfleet.cache.disk import DiskCache, DiskEntry, tree_size
from modelfleet.errors import DiskFullError

LOCK_BYTES = 32  # what the cache counts for its lock file


def download(cache: DiskCache, key: str, size: int, *, etag: str = "e1") -> Path:
    cache.reserve(key, size)
    staging = cache.staging_dir()
    (staging / "artifact" / "model.bin").write_bytes(b"x" * size)
    entry = cache.commit(key, staging, etag=etag)
    cache.unpin(entry)
    return entry.model_dir


def test_commit_publishes_and_counts(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, 1000)
    cache.start()
    model_dir = download(cache, "a/model.tar.gz", 300)
    assert (model_dir / "model.bin").stat().st_size == 300
    # The budget counts every byte of the entry, metadata included.
    on_disk = tree_size(tmp_path)  # the lock file included
    assert 300 < on_disk <= cache.used_bytes < 300 + 300
    assert list((tmp_path / "tmp").iterdir()) == []


def test_lru_unpinned_entries_are_deleted_to_stay_in_budget(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, 1000)
    cache.start()
    first = download(cache, "a", 300)
    download(cache, "b", 300)
    cache.get("a")  # a is now more recent than b
    download(cache, "c", 300)
    assert sorted(cache.keys()) == ["a", "c"]
    assert first.exists()
    assert tree_size(tmp_path / "models") <= 1000


def test_pinned_entries_survive_and_full_disk_is_a_clear_error(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, 1000)
    cache.start()
    download(cache, "a", 500)
    pinned = cache.pin("a")
    assert pinned is not None
    with pytest.raises(DiskFullError, match="held by models in use"):
        cache.reserve("b", 600)
    assert "a" in cache
    cache.unpin(pinned)
    cache.reserve("b", 600)
    assert "a" not in cache


def test_artifact_larger_than_budget(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, 100)
    cache.start()
    with pytest.raises(DiskFullError, match="budget is 100 bytes"):
        cache.reserve("big", 101)


def test_restart_reindexes_and_sweeps_orphans(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, 1000)
    cache.start()
    download(cache, "a", 100, etag="etag-a")
    download(cache, "b", 200)
    orphan = cache.staging_dir()  # a download interrupted by a crash
    (orphan / "artifact" / "half").write_bytes(b"x" * 50)
    junk = tmp_path / "models" / "not-an-entry"
    junk.mkdir()

    cache.close()

    again = DiskCache(tmp_path, 1000)
    again.start()
    assert sorted(again.keys()) == ["a", "b"]
    assert again.used_bytes == cache.used_bytes
    entry = again.get("a")
    assert entry is not None
    assert entry.etag == "etag-a"
    assert list((tmp_path / "tmp").iterdir()) == []
    assert not junk.exists()


def test_remove_respects_pins(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, 1000)
    cache.start()
    model_dir = download(cache, "a", 10)
    pinned = cache.pin("a")
    assert pinned is not None
    assert cache.remove("a") is False
    cache.unpin(pinned)
    assert cache.remove("a") is True
    assert not model_dir.exists()
    assert cache.used_bytes == LOCK_BYTES


def test_recommit_replaces_the_old_entry(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, 1000)
    cache.start()
    download(cache, "a", 100, etag="v1")
    download(cache, "a", 200, etag="v2")
    entry = cache.get("a")
    assert entry is not None
    assert entry.etag == "v2"
    assert cache.used_bytes == entry.size_bytes + LOCK_BYTES
    assert entry.size_bytes >= 200
    assert len(cache) == 1


def on_disk(root: Path, cache: DiskCache) -> int:
    """What the cache should count for the files under ``root``: 32 bytes of slack an entry,
    and the lock file."""
    return tree_size(root / "models") + 32 * len(cache) + LOCK_BYTES


def one_entry(root: Path, budget: int, size: int) -> tuple[DiskCache, DiskEntry]:
    """A started cache of ``budget`` bytes holding entry ``a`` of ``size`` bytes."""
    cache = DiskCache(root, budget)
    cache.start()
    download(cache, "a", size)
    entry = cache.get("a")
    assert entry is not None
    return cache, entry


def writer(size: int) -> list[bytes]:
    """Snapshot parts of ``size`` bytes in all."""
    return [b"h" * 10, b"s" * (size - 10)]


def test_a_snapshot_takes_free_room_only_and_goes_with_its_entry(tmp_path: Path) -> None:
    cache, entry = one_entry(tmp_path, 1200, 300)
    used = cache.used_bytes
    assert cache.add_snapshot(entry, writer(200))
    assert entry.snapshot_path.read_bytes() == b"h" * 10 + b"s" * 190
    assert cache.used_bytes == used + 200
    assert entry.artifact_bytes == entry.size_bytes - 200
    assert not cache.add_snapshot(entry, writer(200))  # one per entry
    download(cache, "b", 300)
    # No room for b's snapshot without evicting a: it is not written, a stays.
    entry_b = cache.get("b")
    assert entry_b is not None
    assert not cache.add_snapshot(entry_b, writer(1200 - cache.used_bytes + 1))
    assert sorted(cache.keys()) == ["a", "b"]
    assert not entry_b.snapshot_path.exists()
    assert list((tmp_path / "tmp").iterdir()) == []
    # Evicting a frees its snapshot's bytes too.
    download(cache, "c", 300)
    assert sorted(cache.keys()) == ["b", "c"]
    assert cache.used_bytes == on_disk(tmp_path, cache)


def test_a_snapshot_never_lands_beside_a_newer_artifact(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, 10_000)
    cache.start()
    download(cache, "a", 300, etag="v1")
    old = cache.get("a")
    assert old is not None
    download(cache, "a", 300, etag="v2")  # a new version replaces the entry meanwhile
    assert not cache.add_snapshot(old, writer(100))
    new = cache.get("a")
    assert new is not None
    assert new.etag == "v2"
    assert not new.snapshot_path.exists()
    assert cache.used_bytes == on_disk(tmp_path, cache)


def test_snapshots_are_reindexed_and_can_be_dropped(tmp_path: Path) -> None:
    cache, entry = one_entry(tmp_path, 10_000, 300)
    assert cache.add_snapshot(entry, writer(200))
    used = cache.used_bytes
    cache.close()
    again = DiskCache(tmp_path, 10_000)
    again.start()
    reindexed = again.get("a")
    assert reindexed is not None
    assert (reindexed.snapshot_bytes, again.used_bytes) == (200, used)
    again.drop_snapshot(reindexed)
    assert not reindexed.snapshot_path.exists()
    assert again.used_bytes == used - 200 == on_disk(tmp_path, again)


def test_an_instance_without_snapshots_deletes_them_at_start(tmp_path: Path) -> None:
    """--no-snapshots: a previous run's snapshots are not read, so they leave the budget."""
    cache, entry = one_entry(tmp_path, 10_000, 300)
    assert cache.add_snapshot(entry, writer(200))
    used = cache.used_bytes
    cache.close()
    again = DiskCache(tmp_path, 10_000)
    again.start(keep_snapshots=False)
    reindexed = again.get("a")
    assert reindexed is not None
    assert reindexed.snapshot_bytes == 0
    assert not reindexed.snapshot_path.exists()
    assert again.used_bytes == used - 200 == on_disk(tmp_path, again)


def test_a_snapshot_holds_its_room_while_it_is_written(tmp_path: Path) -> None:
    cache, entry = one_entry(tmp_path, 1000, 300)
    before = cache.used_bytes
    seen: list[int] = []

    class Parts(list[bytes]):
        def __iter__(self):  # type: ignore[no-untyped-def]
            seen.append(cache.used_bytes)  # summed first, then written
            return super().__iter__()

    assert cache.add_snapshot(entry, Parts(writer(200)))
    assert seen == [before, before + 200]  # reserved before the first byte was written
    assert cache.used_bytes == before + 200  # and counted once after


def test_a_snapshot_that_cannot_be_deleted_still_leaves_the_budget(tmp_path: Path) -> None:
    cache, entry = one_entry(tmp_path, 10_000, 300)
    used = cache.used_bytes
    assert cache.add_snapshot(entry, writer(200))
    entry.snapshot_path.unlink()
    entry.snapshot_path.mkdir()  # unlink() now raises IsADirectoryError, an OSError
    cache.drop_snapshot(entry)
    assert (entry.snapshot_bytes, cache.used_bytes) == (0, used)


def crash(cache: DiskCache) -> None:
    """What a SIGKILL leaves: the lock dropped by the kernel, the PID still in the file."""
    cache._folder_lock.release()


def torn(root: Path, key: str) -> DiskCache:
    """A cache whose entry ``key`` was cut short by a crash, started again (unclean)."""
    cache = DiskCache(root, 10_000, source="file:///src")
    cache.start()
    model_dir = download(cache, key, 100)
    (model_dir / "model.bin").write_bytes(b"\0" * 100)  # same size, zero-filled pages
    crash(cache)
    again = DiskCache(root, 10_000, source="file:///src")
    again.start()
    return again


def test_a_torn_entry_leaves_the_index_even_if_its_download_then_fails(tmp_path: Path) -> None:
    cache = torn(tmp_path, "m")
    entry = cache.pin("m")
    assert entry is not None
    assert cache.verify(entry) is False  # the manager unpins it and downloads again ...
    cache.unpin(entry)
    cache.empty_trash()
    # ... and if that download fails, the torn files are not there to be trusted next time.
    assert cache.pin("m") is None
    assert cache.used_bytes == on_disk(tmp_path, cache)


def test_entries_left_unverified_stay_suspect_after_a_clean_stop(tmp_path: Path) -> None:
    cache = torn(tmp_path, "m")
    cache.close()  # this run never loaded "m": it stops without calling it clean
    again = DiskCache(tmp_path, 10_000, source="file:///src")
    again.start()
    entry = again.pin("m")
    assert entry is not None
    assert again.verify(entry) is False


def test_a_whole_entry_passes_verification_once_and_the_stop_is_clean(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, 10_000, source="file:///src")
    cache.start()
    download(cache, "m", 100)
    crash(cache)
    again = DiskCache(tmp_path, 10_000, source="file:///src")
    again.start()
    entry = again.pin("m")
    assert entry is not None
    assert again.verify(entry) is True
    again.unpin(entry)
    again.close()
    assert (tmp_path / "lock").read_text() == "clean\n"


def test_a_restart_with_a_lower_budget_trims_the_folder_at_once(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, 10_000)
    cache.start()
    for key in ("a", "b", "c"):
        download(cache, key, 1000)
    cache.close()
    smaller = DiskCache(tmp_path, 2_000)
    smaller.start()
    assert smaller.keys() == ["c"]  # the least recently used went first
    assert tree_size(tmp_path) <= smaller.used_bytes <= 2_000


def test_a_download_that_outlives_close_does_not_land(tmp_path: Path) -> None:
    """A download thread still running at shutdown must not publish after the folder was
    marked clean."""
    cache = DiskCache(tmp_path, 10_000)
    cache.start()
    cache.reserve("late", 100)
    staging = cache.staging_dir()
    (staging / "artifact" / "model.bin").write_bytes(b"x" * 100)
    cache.close()
    with pytest.raises(RuntimeError, match="is closed"):
        cache.commit("late", staging, etag="e1")
    assert list((tmp_path / "models").iterdir()) == []
    assert (tmp_path / "lock").read_text() == "clean\n"

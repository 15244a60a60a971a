"""One contract suite run against every eviction policy, plus LRU's own order."""

from __future__ import annotations

import pytest

from modelfleet.cache.policy import POLICIES, EvictionPolicy, LRUPolicy, make_policy


@pytest.fixture(params=sorted(POLICIES))
def policy(request: pytest.FixtureRequest) -> EvictionPolicy:
    return make_policy(request.param)


def test_victims_are_exactly_the_admitted_entries(policy: EvictionPolicy) -> None:
    for i in range(5):
        policy.on_insert(f"m{i}", 100 * (i + 1), 0.1)
    policy.on_access("m2")
    assert sorted(policy.victims()) == [f"m{i}" for i in range(5)]


def test_removed_entries_are_never_victims(policy: EvictionPolicy) -> None:
    for i in range(3):
        policy.on_insert(f"m{i}", 10, 0.1)
    policy.on_remove("m1")
    policy.on_remove("unknown")  # removing what is not there is harmless
    assert sorted(policy.victims()) == ["m0", "m2"]


def test_access_to_unknown_key_is_ignored(policy: EvictionPolicy) -> None:
    policy.on_access("never-inserted")
    assert list(policy.victims()) == []


def test_victims_can_be_iterated_while_removing(policy: EvictionPolicy) -> None:
    for i in range(4):
        policy.on_insert(f"m{i}", 10, 0.1)
    for key in policy.victims():
        policy.on_remove(key)
    assert list(policy.victims()) == []


def test_lru_order_follows_use() -> None:
    lru = LRUPolicy()
    for key in ("a", "b", "c"):
        lru.on_insert(key, 1, 0.0)
    lru.on_access("a")
    assert list(lru.victims()) == ["b", "c", "a"]


def test_unknown_policy_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="known: lru"):
        make_policy("nope")

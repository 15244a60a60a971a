"""One contract suite run against every eviction policy, then each policy's own behaviour."""

from __future__ import annotations

import pytest

from modelfleet.cache.memory import MemoryCache
from modelfleet.cache.policies import (
    GDSFPolicy,
    LRFUPolicy,
    S3FIFOPolicy,
    UseCounter,
    WTinyLFUPolicy,
)
from modelfleet.cache.policy import POLICIES, EvictionPolicy, LRUPolicy, make_policy
from modelfleet.plan.sim import Catalogue, simulate, zipf_trace

DEFAULT = "lrfu"  # what bench/eviction.py recommends; see docs/eviction.md
MB = 1_000_000


@pytest.fixture(params=sorted(POLICIES))
def policy(request: pytest.FixtureRequest) -> EvictionPolicy:
    return make_policy(request.param)


def served(policy: EvictionPolicy, key: str, size: int, cost_s: float, uses: int = 1) -> None:
    """Load ``key`` as the manager does (insert, then the loading request's get), then use it."""
    policy.on_insert(key, size, cost_s)
    for _ in range(uses):
        policy.on_access(key)


# -- the contract ----------------------------------------------------------------------------
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


def test_skipped_victims_are_offered_again(policy: EvictionPolicy) -> None:
    for i in range(4):
        served(policy, f"m{i}", 10, 0.1)
    first = next(iter(policy.victims()))  # looked at, then skipped: it was pinned
    walk = list(policy.victims())
    assert walk[0] == first
    assert sorted(walk) == [f"m{i}" for i in range(4)]


def test_reinserting_a_present_key_keeps_one_entry(policy: EvictionPolicy) -> None:
    policy.on_insert("a", 10, 0.1)
    next(iter(policy.victims()))
    policy.on_insert("a", 20, 0.2)
    assert list(policy.victims()) == ["a"]


def test_pinned_entries_are_skipped_through_the_cache(policy: EvictionPolicy) -> None:
    cache: MemoryCache[str] = MemoryCache(300, policy, clock=lambda: 0.0)
    for key in ("a", "b", "c"):
        cache.reserve(key, 100)
        cache.admit(key, key, 100, cost_s=0.1)
        cache.get(key)
    for key in ("a", "b", "c"):
        cache.pin(key)
    cache.unpin("b")
    evicted = cache.reserve("d", 100)
    assert [e.key for e in evicted] == ["b"]
    cache.admit("d", "d", 100, cost_s=0.1)
    for key in ("a", "c"):
        cache.unpin(key)
    evicted = cache.reserve("e", 100)  # the skipped ones are still known to the policy
    assert len(evicted) == 1
    assert sorted(cache) == sorted({"a", "c", "d"} - {evicted[0].key})


def test_unknown_policy_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"known: gdsf, .*lru"):
        make_policy("nope")


# -- each policy's own behaviour -------------------------------------------------------------
def test_lru_order_follows_use() -> None:
    lru = LRUPolicy()
    for key in ("a", "b", "c"):
        lru.on_insert(key, 1, 0.0)
    lru.on_access("a")
    assert list(lru.victims()) == ["b", "c", "a"]


def test_gdsf_evicts_large_cheap_cold_entries_first() -> None:
    gdsf = GDSFPolicy()
    served(gdsf, "big-cheap", 100 * MB, 0.5)
    served(gdsf, "small-costly", 2 * MB, 0.5)
    served(gdsf, "big-hot", 100 * MB, 0.5, uses=20)
    assert list(gdsf.victims()) == ["big-cheap", "big-hot", "small-costly"]


def test_gdsf_ages_the_survivors_of_an_eviction() -> None:
    gdsf = GDSFPolicy()
    served(gdsf, "old", MB, 1.0, uses=3)  # F = 4: H = 4 per MB
    served(gdsf, "gone", MB, 1.0, uses=2)  # H = 3
    gdsf.on_remove(next(iter(gdsf.victims())))  # evicting "gone" raises L to 3
    served(gdsf, "new", MB, 1.0, uses=1)  # H = L + 2 = 5 per MB: above "old"
    assert list(gdsf.victims()) == ["old", "new"]


def test_s3fifo_one_hit_wonders_leave_first() -> None:
    s3 = S3FIFOPolicy()
    served(s3, "reused", 10, 0.1, uses=2)  # loaded, then used again
    for i in range(5):
        served(s3, f"once{i}", 10, 0.1)  # only the loading request
    victims = list(s3.victims())
    assert victims[:5] == [f"once{i}" for i in range(5)]
    assert victims[5] == "reused"


def test_s3fifo_ghosts_go_straight_to_main() -> None:
    s3 = S3FIFOPolicy()
    for i in range(10):
        served(s3, f"m{i}", 10, 0.1, uses=2)
    walk = iter(s3.victims())
    for _ in range(10):
        s3.on_remove(next(walk))  # the small queue drains into main; then main evicts
    served(s3, "x", 10, 0.1)
    served(s3, "x-again", 10, 0.1)
    s3.on_remove(next(iter(s3.victims())))  # "x" leaves the small queue into the ghost
    served(s3, "x", 10, 0.1)  # back: admitted into main, behind the small queue
    assert next(iter(s3.victims())) == "x-again"


def test_wtinylfu_admits_a_candidate_only_if_used_more_than_its_victim() -> None:
    tiny = WTinyLFUPolicy()
    for key in ("a", "b", "c", "d"):
        served(tiny, key, 10, 0.1, uses=3)  # fills the window, then probation
    served(tiny, "cold", 10, 0.1)  # one use: loses to the main cache's victim
    assert next(iter(tiny.victims())) == "cold"
    tiny = WTinyLFUPolicy()
    for key in ("a", "b", "c", "d"):
        served(tiny, key, 10, 0.1)
    served(tiny, "hot", 10, 0.1, uses=5)  # used more: the main cache's victim goes instead
    assert next(iter(tiny.victims())) != "hot"


def test_use_counter_halves_every_period() -> None:
    counter = UseCounter(cap=15, min_period=8)
    for _ in range(7):
        counter.record("a")
    assert counter.estimate("a") == 7
    counter.record("b")  # the eighth use ends the period
    assert (counter.estimate("a"), counter.estimate("b")) == (3, 0)


def test_lrfu_prefers_frequent_and_costly_per_byte() -> None:
    lrfu = LRFUPolicy(adaptive=False)
    served(lrfu, "frequent", 10 * MB, 0.1, uses=5)
    served(lrfu, "rare", 10 * MB, 0.1)
    served(lrfu, "rare-costly", 10 * MB, 5.0)
    assert list(lrfu.victims()) == ["rare", "frequent", "rare-costly"]


def test_lrfu_history_outlives_residency() -> None:
    lrfu = LRFUPolicy(adaptive=False)
    served(lrfu, "popular", MB, 0.1, uses=6)
    lrfu.on_remove("popular")  # unloaded explicitly
    served(lrfu, "newcomer", MB, 0.1, uses=1)
    served(lrfu, "popular", MB, 0.1)  # back with its history
    assert next(iter(lrfu.victims())) == "newcomer"


@pytest.mark.parametrize(("shift_every", "moves"), [(None, "up"), (300, "down")])
def test_lrfu_decay_follows_the_workload(shift_every: int | None, moves: str) -> None:
    catalogue = Catalogue.build(200, cost_a=0.002, cost_b=0.001, seed=3)
    trace = zipf_trace(200, 20_000, 1.0, seed=4, shift_every=shift_every)
    lrfu = LRFUPolicy(decay=8.0)
    simulate(trace.requests, catalogue, catalogue.total_bytes // 10, lrfu)
    assert lrfu.decay > 8.0 if moves == "up" else lrfu.decay < 8.0


def test_default_spends_fewer_load_seconds_than_lru() -> None:
    catalogue = Catalogue.build(300, cost_a=0.002, cost_b=0.001, seed=5)
    trace = zipf_trace(300, 15_000, 1.0, seed=6)
    budget = catalogue.total_bytes // 10
    lru = simulate(trace.requests, catalogue, budget, make_policy("lru"))
    default = simulate(trace.requests, catalogue, budget, make_policy(DEFAULT))
    assert default.load_s < 0.9 * lru.load_s
    assert default.hit_ratio > lru.hit_ratio

"""Eviction policies for the memory tier, chosen by name.

A policy keeps only ordering bookkeeping and proposes victims; the cache owns sizes, pins and
the entries themselves (the split cachetools makes). Policies are pure Python with no clock or
I/O, so the benchmark simulator (``python -m bench.eviction``) drives the very classes the server
runs. The implementations live in :mod:`modelfleet.cache.policies`, one module each; the
interface and how the cache drives it are described in :mod:`modelfleet.cache.policies.base`.
See ``docs/eviction.md`` for how they compare.
"""

from __future__ import annotations

from modelfleet.cache.policies import (
    EvictionPolicy,
    FixedLRFUPolicy,
    GDSFPolicy,
    GDSFSketchPolicy,
    LRFUPolicy,
    LRUPolicy,
    S3FIFOPolicy,
    WTinyLFUPolicy,
)

__all__ = ["POLICIES", "EvictionPolicy", "LRUPolicy", "make_policy"]

POLICIES: dict[str, type[EvictionPolicy]] = {
    policy.name: policy
    for policy in (
        LRUPolicy,
        GDSFPolicy,
        GDSFSketchPolicy,
        S3FIFOPolicy,
        WTinyLFUPolicy,
        LRFUPolicy,
        FixedLRFUPolicy,
    )
}


def make_policy(name: str) -> EvictionPolicy:
    """Build the policy registered under ``name``."""
    try:
        return POLICIES[name.lower()]()
    except KeyError:
        known = ", ".join(sorted(POLICIES))
        raise ValueError(f"unknown eviction policy {name!r}; known: {known}") from None

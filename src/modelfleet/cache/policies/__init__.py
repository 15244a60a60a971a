"""Eviction policies for the memory tier, one module each; chosen by name in :mod:`..policy`."""

from modelfleet.cache.policies.base import EvictionPolicy, Residency, UseCounter
from modelfleet.cache.policies.gdsf import GDSFPolicy, GDSFSketchPolicy
from modelfleet.cache.policies.lrfu import FixedLRFUPolicy, LRFUPolicy
from modelfleet.cache.policies.lru import LRUPolicy
from modelfleet.cache.policies.s3fifo import S3FIFOPolicy
from modelfleet.cache.policies.tinylfu import WTinyLFUPolicy

__all__ = [
    "EvictionPolicy",
    "FixedLRFUPolicy",
    "GDSFPolicy",
    "GDSFSketchPolicy",
    "LRFUPolicy",
    "LRUPolicy",
    "Residency",
    "S3FIFOPolicy",
    "UseCounter",
    "WTinyLFUPolicy",
]

"""Sizing a fleet from its own traffic: the simulator, and ``modelfleet plan``."""

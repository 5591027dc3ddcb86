"""Hypothesis settings for every unit test: no per-example deadline, since a loaded CI machine
can make any example slow without anything being wrong."""

from hypothesis import HealthCheck, settings

settings.register_profile("broker", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("broker")

"""Fixtures for the orchestrator tests (helpers that are not fixtures are in orch_helpers.py)."""

from __future__ import annotations

import pytest


@pytest.fixture
def no_ray(monkeypatch):
    """Ray is never started: ray.init fails the test, even with a shared Ray running."""
    import ray

    def refuse(*args, **kwargs):
        raise AssertionError("ray.init was called: the input was refused after Ray started")

    monkeypatch.setattr(ray, "init", refuse)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)

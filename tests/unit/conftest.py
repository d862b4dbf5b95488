"""Fixtures for every unit test: unit tests run without a Ray cluster.

The autouse fixture below makes ``ray.init`` raise, so a unit test that reaches for Ray
(directly or through a module under test) fails loudly instead of quietly starting a
local cluster. Tests that need Ray belong in ``tests/integration``.
"""

from __future__ import annotations

import importlib.util

import pytest

_RAY_INIT_MESSAGE = "Unit tests should not depend on Ray being initialized."


def _forbidden_ray_init(*args: object, **kwargs: object) -> None:
    raise RuntimeError(_RAY_INIT_MESSAGE)


@pytest.fixture(autouse=True)
def _no_ray_init(monkeypatch: pytest.MonkeyPatch) -> None:
    """``ray.init`` raises for the duration of every unit test (when Ray is installed)."""
    if importlib.util.find_spec("ray") is None:
        return
    import ray

    monkeypatch.setattr(ray, "init", _forbidden_ray_init)

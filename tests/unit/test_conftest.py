"""Tests for the unit-test guard in ``tests/unit/conftest.py``."""

from __future__ import annotations

import pytest


def test_ray_init_is_forbidden_in_unit_tests() -> None:
    """Calling ray.init from a unit test raises instead of starting a local cluster."""
    ray = pytest.importorskip("ray")
    with pytest.raises(
        RuntimeError, match=r"Unit tests should not depend on Ray being initialized\."
    ):
        ray.init()

"""Shared fixtures for the planner tests: the Solomon data shipped next to the repository."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from planners.solomon import SolomonInstance, read_solomon

SOLOMON_DIR = Path(__file__).resolve().parents[4] / "shared" / "data" / "solomon"


@pytest.fixture(scope="session")
def solomon_dir() -> Path:
    """``../shared/data/solomon`` of the checkout; tests that need it skip without it."""
    if not (SOLOMON_DIR / "bks.csv").is_file():
        pytest.skip(f"Solomon data not found at {SOLOMON_DIR}")
    return SOLOMON_DIR


@pytest.fixture(scope="session")
def c101(solomon_dir: Path) -> SolomonInstance:
    """Solomon C101: 100 clustered customers, 25 vehicles of capacity 200, tight windows."""
    return read_solomon(solomon_dir / "txt" / "C101.txt")


@pytest.fixture(scope="session", autouse=True)
def _shut_down_solver_pool() -> Iterator[None]:
    """Stop the worker process that ``solve_async`` may have started, once all tests ran."""
    yield
    from planners import routing

    if routing._default_executor.cache_info().currsize:
        routing._default_executor().shutdown()
        routing._default_executor.cache_clear()

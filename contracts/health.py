"""Scored health over time: the rows the model job records and the trends it reads back.

Twin shards produce the rows (one per scored battery), :mod:`store.health_history` keeps them
in PostgreSQL and computes the trends, and the model job reports them.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["HealthPoint", "HealthRow", "HealthTrend"]


@dataclass(frozen=True)
class HealthRow:
    """One battery's scored health at one run."""

    battery_id: str
    cohort: str
    soh_pct: float
    health_score: float
    efc: float
    model_version: int


@dataclass(frozen=True)
class HealthTrend:
    """SOH trend of a battery or a cohort: slope (None with fewer than two points)."""

    key: str
    slope_pct_per_30d: float | None
    points: int
    mean_soh_pct: float


@dataclass(frozen=True)
class HealthPoint:
    """One battery's scored health at one run, as read back for its history."""

    scored_at_s: float
    soh_pct: float
    health_score: float
    efc: float
    model_version: int

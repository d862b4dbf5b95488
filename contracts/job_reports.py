"""What one run of each scheduled model task did (:mod:`models.batch_job`).

They come back from the model job actor over a Ray call and are kept as the job's last
status, so they are frozen records rather than dicts.
"""

from __future__ import annotations

from dataclasses import dataclass

from contracts.health import HealthTrend

__all__ = ["DemandForecastReport", "RescoreReport", "RetrainReport"]


@dataclass(frozen=True)
class DemandForecastReport:
    """One zone-demand forecast: how many zones, from which hour, how many rides in 24 h.

    ``reason`` says why nothing was forecast (``zones`` is then 0).
    """

    at_s: float
    zones: int
    start_s: int | None = None
    rides_next_24h: float | None = None
    reason: str | None = None


@dataclass(frozen=True)
class RescoreReport:
    """One fleet rescoring: twins scored, models that failed, health rows and SOH trends."""

    at_s: float
    twins_scored: int
    model_errors: tuple[str, ...]
    health_rows: int
    fastest_fading: tuple[HealthTrend, ...]
    cohorts: tuple[HealthTrend, ...]


@dataclass(frozen=True)
class RetrainReport:
    """One retraining attempt: the version registered as a candidate, or why none was.

    ``registered_version`` is None when the fleet's ride history was too short
    (``reason`` says how short).
    """

    at_s: float
    model: str
    registered_version: int | None
    hours: int
    zones: int = 0
    reason: str | None = None

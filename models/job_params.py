"""Periods and windows of the scheduled model job (:mod:`models.batch_job`).

Its own module, free of model code, so the settings (and the CLI that reads them) can take
the defaults from here without loading torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from contracts.ride_history import DEMAND_HORIZON_HOURS

__all__ = ["JobParams"]


@dataclass(frozen=True)
class JobParams:
    """Periods and windows of the job.

    Parameters
    ----------
    demand_interval_s, rescore_interval_s, retrain_interval_s
        Periods of the three tasks.
    history_hours
        Ride history the demand model reads (its ``history_hours``).
    trend_window_days
        Look-back of the SOH trends.
    min_retrain_hours
        Ride history needed before the demand model is refit from the fleet.
    lat, lon
        Where the weather is asked for (the fleet's centre).
    """

    demand_interval_s: float = 3600.0
    rescore_interval_s: float = 3600.0
    retrain_interval_s: float = 86_400.0
    history_hours: int = 168
    trend_window_days: float = 90.0
    min_retrain_hours: int = 14 * 24
    lat: float = 52.52
    lon: float = 13.405

    def __post_init__(self) -> None:
        if min(self.demand_interval_s, self.rescore_interval_s, self.retrain_interval_s) <= 0:
            raise ValueError("Expected positive job periods, got "
                             f"{self.demand_interval_s}, {self.rescore_interval_s}, {self.retrain_interval_s}.")
        if self.history_hours < 24 or self.min_retrain_hours < self.history_hours + DEMAND_HORIZON_HOURS:
            raise ValueError(
                f"Expected history_hours >= 24 and min_retrain_hours >= history_hours + 24, got "
                f"{self.history_hours} and {self.min_retrain_hours}."
            )

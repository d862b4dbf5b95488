"""What a twin shard reports to the planner about one battery: a swap candidate.

Shards build these from their scored twins (the planner's periodic pull, and the urgent push
of new anomalies); the planner's job queue turns them into jobs. They cross a Ray call, so
they are plain frozen records with units in their names.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Candidate"]


@dataclass(frozen=True)
class Candidate:
    """One battery as a shard reports it to the planner."""

    battery_id: str
    vehicle_id: str | None
    lat: float
    lon: float
    soc_pct: float
    priority: float
    lost_rides_6h: float
    hours_to_empty: float
    health_score: float
    anomaly_flags: int
    charging: bool
    #: The kind of a firing critical alert on the battery (``pack_overtemp``...), sent by the
    #: alert manager: the planner makes it an urgent replacement job.
    critical_alert: str | None = None

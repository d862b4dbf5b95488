"""The policy seam: which batteries the planner is asked to swap, and what each is worth.

Production asks the twins' Random Forest (:class:`PriorityModelPolicy`: the candidates as
the shards scored them). A what-if scenario may replace that one decision, and nothing
else, to compare it with production on the same city and seeds: :class:`ThresholdPolicy`
swaps every vehicle below a fixed charge, all of equal value, the rule many operators
start with. Replacement and inspection jobs (health score, anomaly flags) are left as the
models set them: the policy decides swaps only.

A policy rewrites candidates before the planner's job queue sees them, so the queue, the
router and the work-order state machine are production's own.

``soft_anomaly_inspections``: whether the soft anomaly flags (voltage residual, LSTM
sequence error) raise inspection jobs, as in production. What-if runs turn them off by
default: those detectors were calibrated on telemetry sampled every few seconds, and on a
what-if's coarse telemetry (a sample a minute while riding, an hour while parked) they flag
most of the fleet (measured: 672 sequence-error and 92 voltage-residual events on 500
healthy simulated vehicles in a day), which would have the technicians inspect artefacts of
the simulation instead of swapping batteries. The critical flags always count.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from contracts.anomaly_kinds import AnomalyKind
from contracts.candidates import Candidate

__all__ = ["SOFT_ANOMALIES", "PriorityModelPolicy", "SwapPolicy", "ThresholdPolicy"]

#: Flags that make an inspection job (the job queue's soft anomalies).
# A sensor fault needs a technician to look, not a fresh battery.
SOFT_ANOMALIES = int(AnomalyKind.VOLTAGE_RESIDUAL | AnomalyKind.SEQUENCE_ERROR | AnomalyKind.SENSOR_FAULT)


def _soft_off(c: Candidate, keep: bool) -> Candidate:
    if keep or not c.anomaly_flags & SOFT_ANOMALIES:
        return c
    return replace(c, anomaly_flags=c.anomaly_flags & ~SOFT_ANOMALIES)


class SwapPolicy(Protocol):
    @property
    def needs_all_twins(self) -> bool:
        """True when the policy needs every twin, not only the shards' top-scored ones."""
        ...

    def apply(self, candidates: Sequence[Candidate]) -> list[Candidate]:
        """The candidates the planner's job queue should see."""
        ...


@dataclass(frozen=True)
class PriorityModelPolicy:
    """Production: the priority model's expected lost rides decide (no rewrite)."""

    soft_anomaly_inspections: bool = True
    needs_all_twins: bool = False

    def apply(self, candidates: Sequence[Candidate]) -> list[Candidate]:
        return [_soft_off(c, self.soft_anomaly_inspections) for c in candidates]


@dataclass(frozen=True)
class ThresholdPolicy:
    """Swap every battery below ``threshold_soc_pct``; each swap is worth ``rides_per_swap``
    rides (the queue's value per ride applies), whatever the models say.

    Priorities are set to 100 below the threshold and 0 above, so the job queue's swap rule
    (priority at least its minimum) selects exactly the batteries below it.
    """

    threshold_soc_pct: float
    rides_per_swap: float = 3.0
    soft_anomaly_inspections: bool = True
    needs_all_twins: bool = True

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold_soc_pct < 100.0 or not self.rides_per_swap > 0.0:
            raise ValueError(
                f"Expected threshold_soc_pct in (0, 100) and rides_per_swap > 0, got "
                f"{self.threshold_soc_pct} and {self.rides_per_swap}."
            )

    def apply(self, candidates: Sequence[Candidate]) -> list[Candidate]:
        out = []
        for c in candidates:
            low = math.isfinite(c.soc_pct) and c.soc_pct < self.threshold_soc_pct
            c = _soft_off(c, self.soft_anomaly_inspections)
            out.append(
                replace(c, priority=100.0 if low else 0.0, lost_rides_6h=self.rides_per_swap)
            )
        return out

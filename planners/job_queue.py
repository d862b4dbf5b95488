"""The planner's job queue: what the twins' scores ask technicians to do.

Shards report *candidates* (their most urgent batteries, with the model outputs); the queue
turns each into at most one open job per battery, by rules an operator can read:

* **battery replacement** when a critical anomaly is flagged (temperature rise, voltage
  sag, cell imbalance), a critical alert fires on the battery (a pack at 80 °C: the alert
  manager pushes it), or the health score is below ``replace_below_health``;
* **inspection** for the softer anomaly signals (voltage residual, LSTM sequence error);
* **battery swap** when the swap priority (expected lost rides) is at least
  ``swap_min_priority``.

A job's value, what the routing objective earns by serving it, is in euros: a swap is
worth its expected lost rides times the revenue of a ride (``value_per_ride``), a
replacement or inspection a fixed amount (the cost of a failing pack in the field), times
``critical_multiplier`` for a critical anomaly (a safety issue). A swap's time window closes
when the vehicle is predicted to become unrentable. A battery whose job is already with a
technician (work order en route) is not re-queued until that order ends.

A restarted planner rebuilds the queue from the open work orders (:meth:`JobQueue.restore`):
one job per order, carrying its id, so the next plan re-uses the order instead of creating
a second one for the battery.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from contracts.anomaly_kinds import AnomalyKind, flag_names
from contracts.candidates import Candidate
from contracts.work_orders import OPEN_STATES, WorkOrder, WorkOrderKind, WorkOrderState

__all__ = ["JobQueue", "JobRules", "QueuedJob", "Severity"]

_CRITICAL_FLAGS = int(AnomalyKind.TEMP_RISE | AnomalyKind.VOLTAGE_SAG | AnomalyKind.CELL_IMBALANCE)
_SOFT_FLAGS = int(AnomalyKind.VOLTAGE_RESIDUAL | AnomalyKind.SEQUENCE_ERROR | AnomalyKind.SENSOR_FAULT)


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


class Severity(StrEnum):
    NORMAL = "normal"
    CRITICAL = "critical"


@dataclass(frozen=True)
class JobRules:
    """Thresholds and values of the queue rules (see the module docstring)."""

    swap_min_priority: float = 30.0
    replace_below_health: float = 35.0
    value_per_ride: float = 3.5
    replacement_value: float = 40.0
    inspection_value: float = 15.0
    critical_multiplier: float = 4.0
    swap_service_s: int = 6 * 60
    replacement_service_s: int = 15 * 60
    inspection_service_s: int = 20 * 60

    def __post_init__(self) -> None:
        if not 0 <= self.swap_min_priority <= 100 or not 0 <= self.replace_below_health <= 100:
            raise ValueError(
                f"Expected swap_min_priority and replace_below_health in [0, 100], got "
                f"{self.swap_min_priority} and {self.replace_below_health}."
            )
        if min(self.value_per_ride, self.replacement_value, self.inspection_value) <= 0:
            raise ValueError("Expected positive job values.")

    def service_and_skill(self, kind: WorkOrderKind) -> tuple[int, str]:
        """How long a job of ``kind`` takes on site (seconds) and the skill it needs."""
        kind = WorkOrderKind(kind)
        if kind is WorkOrderKind.BATTERY_REPLACEMENT:
            return self.replacement_service_s, "replace"
        if kind is WorkOrderKind.INSPECTION:
            return self.inspection_service_s, "inspect"
        return self.swap_service_s, "swap"


@dataclass(frozen=True)
class QueuedJob:
    """An open job: where, what, until when, and what it is worth."""

    battery_id: str
    vehicle_id: str
    kind: WorkOrderKind
    lat: float
    lon: float
    value: float
    priority: float
    service_s: int
    batteries_needed: int
    skill: str
    deadline_s: float | None
    severity: Severity
    queued_at_s: float
    work_order_id: int | None = None
    #: The battery as its shard last reported it (None: not known), for the technician.
    soc_pct: float | None = None
    health_score: float | None = None
    anomaly_flags: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "battery_id": self.battery_id, "vehicle_id": self.vehicle_id, "kind": self.kind.value,
            "lat": self.lat, "lon": self.lon, "value": self.value, "priority": self.priority,
            "service_s": self.service_s, "batteries_needed": self.batteries_needed,
            "skill": self.skill, "deadline_s": self.deadline_s, "severity": self.severity.value,
            "queued_at_s": self.queued_at_s, "work_order_id": self.work_order_id,
            "soc_pct": self.soc_pct, "health_score": self.health_score,
            "anomaly_flags": list(self.anomaly_flags),
        }  # fmt: skip


@dataclass
class JobQueue:
    """Open jobs by battery id."""

    rules: JobRules = field(default_factory=JobRules)
    jobs: dict[str, QueuedJob] = field(default_factory=dict)
    #: Batteries whose job is with a technician (en route): not re-queued meanwhile.
    in_progress: set[str] = field(default_factory=set)
    #: Who is driving to each battery of :attr:`in_progress` (its en-route order's
    #: technician): the one route that battery's stop stays locked on.
    en_route_by: dict[str, str] = field(default_factory=dict)

    def mark_en_route(self, battery_id: str, technician_id: str | None) -> None:
        """The battery's order went en route with ``technician_id``: its job is under way."""
        self.in_progress.add(battery_id)
        if technician_id is not None:
            self.en_route_by[battery_id] = technician_id

    def release(self, battery_id: str) -> None:
        """The battery's job is no longer under way (its visit failed, or it left the queue)."""
        self.in_progress.discard(battery_id)
        self.en_route_by.pop(battery_id, None)

    def job_for(self, c: Candidate, now_s: float) -> QueuedJob | None:
        """The job a candidate calls for, or ``None`` (nothing to do, or no vehicle to visit)."""
        r = self.rules
        if c.vehicle_id is None or c.charging or not (math.isfinite(c.lat) and math.isfinite(c.lon)):
            return None
        critical = bool(c.anomaly_flags & _CRITICAL_FLAGS) or c.critical_alert is not None
        severity = Severity.CRITICAL if critical else Severity.NORMAL
        if critical or (math.isfinite(c.health_score) and c.health_score < r.replace_below_health):
            kind, value, deadline = WorkOrderKind.BATTERY_REPLACEMENT, r.replacement_value, None
        elif c.anomaly_flags & _SOFT_FLAGS:
            kind, value, deadline = WorkOrderKind.INSPECTION, r.inspection_value, None
        elif math.isfinite(c.priority) and c.priority >= r.swap_min_priority:
            kind = WorkOrderKind.BATTERY_SWAP
            value = max(c.lost_rides_6h, 0.1) * r.value_per_ride
            # The window closes when the vehicle is predicted to stop being rentable.
            deadline = now_s + max(c.hours_to_empty, 0.0) * 3600.0 if math.isfinite(c.hours_to_empty) else None
        else:
            return None
        if critical:
            value *= r.critical_multiplier
        service, skill = r.service_and_skill(kind)
        return QueuedJob(
            battery_id=c.battery_id, vehicle_id=c.vehicle_id, kind=kind, lat=c.lat, lon=c.lon,
            value=float(value), priority=float(c.priority) if math.isfinite(c.priority) else 0.0,
            service_s=service, batteries_needed=0 if kind is WorkOrderKind.INSPECTION else 1,
            skill=skill, deadline_s=deadline, severity=severity, queued_at_s=now_s,
            soc_pct=_finite(c.soc_pct), health_score=_finite(c.health_score),
            anomaly_flags=tuple(flag_names(c.anomaly_flags)),
        )  # fmt: skip

    def update(self, candidates: list[Candidate], now_s: float) -> list[QueuedJob]:
        """Merge candidates; returns the jobs that are new or became critical."""
        escalated = []
        for c in candidates:
            if c.battery_id in self.in_progress:
                continue
            job = self.job_for(c, now_s)
            old = self.jobs.get(c.battery_id)
            if job is None:
                continue
            if old is not None:
                # Keep the order and the queue time; a more severe kind or more value wins.
                job = replace(job, work_order_id=old.work_order_id, queued_at_s=old.queued_at_s)
                if old.kind is not WorkOrderKind.BATTERY_SWAP and job.kind is WorkOrderKind.BATTERY_SWAP:
                    job = replace(
                        old, value=max(old.value, job.value), soc_pct=job.soc_pct,
                        health_score=job.health_score, anomaly_flags=job.anomaly_flags,
                    )  # fmt: skip
            if old is None or (job.severity is Severity.CRITICAL and old.severity is not Severity.CRITICAL):
                escalated.append(job)
            self.jobs[c.battery_id] = job
        return escalated

    def job_for_order(self, order: WorkOrder) -> QueuedJob:
        """The job an open work order stands for, as a restarted planner re-queues it.

        What the order records (kind, vehicle, battery, position, priority, value, id) is
        kept; service time and skill follow from the kind. What only the shard's report
        knew is unknown until the battery's next candidate refreshes it (:meth:`update`
        keeps the order id): no deadline, no battery facts. The severity is inferred, as
        only a critical anomaly makes a replacement worth ``critical_multiplier`` times its
        value.
        """
        r = self.rules
        service, skill = r.service_and_skill(order.kind)
        critical = (
            order.kind is WorkOrderKind.BATTERY_REPLACEMENT
            and order.value >= r.replacement_value * r.critical_multiplier
        )
        return QueuedJob(
            battery_id=order.battery_id, vehicle_id=order.vehicle_id, kind=order.kind,
            lat=order.lat, lon=order.lon, value=float(order.value), priority=float(order.priority),
            service_s=service, batteries_needed=0 if order.kind is WorkOrderKind.INSPECTION else 1,
            skill=skill, deadline_s=None, severity=Severity.CRITICAL if critical else Severity.NORMAL,
            queued_at_s=order.created_at_s, work_order_id=order.id,
        )  # fmt: skip

    def restore(self, orders: Iterable[WorkOrder]) -> int:
        """Re-queue the open work orders a restarted planner finds; returns how many.

        One job per order, with its ``work_order_id``; an en-route order's battery goes
        into :attr:`in_progress` with its technician (:meth:`mark_en_route`), as the
        technician's ``en_route`` report put it there. A battery
        already queued (a shard pushed it before the restore) keeps its fresher job and
        takes the order's id. Idempotent: restoring the same orders twice changes nothing.

        Raises
        ------
        ValueError
            An order is not open (done, failed or cancelled orders are not work to do),
            or two orders are open for one battery (the store keeps at most one).
        """
        seen: dict[str, int] = {}
        for order in orders:
            if order.state not in OPEN_STATES:
                raise ValueError(
                    f"Expected open work orders ({', '.join(sorted(OPEN_STATES))}) to restore, "
                    f"got work order {order.id} in state {order.state.value}."
                )
            if order.battery_id in seen:
                raise ValueError(
                    f"Expected at most one open work order per battery, got {seen[order.battery_id]} "
                    f"and {order.id} for battery {order.battery_id!r}."
                )
            seen[order.battery_id] = order.id
            old = self.jobs.get(order.battery_id)
            if old is None:
                self.jobs[order.battery_id] = self.job_for_order(order)
            else:
                self.jobs[order.battery_id] = replace(old, work_order_id=order.id)
            if order.state is WorkOrderState.EN_ROUTE:
                self.mark_en_route(order.battery_id, order.technician_id)
        return len(seen)

    def remove(self, battery_id: str) -> QueuedJob | None:
        self.release(battery_id)
        return self.jobs.pop(battery_id, None)

    def open_jobs(self) -> list[QueuedJob]:
        """Jobs in a stable order (by battery id), so plans are reproducible."""
        return [self.jobs[b] for b in sorted(self.jobs)]

"""The policy seam: what each swap policy hands the planner's job queue."""

from __future__ import annotations

from contracts.anomaly_kinds import AnomalyKind
from contracts.candidates import Candidate
from contracts.work_orders import WorkOrderKind
from planners.job_queue import JobQueue
from planners.swap_policy import PriorityModelPolicy, ThresholdPolicy


def _c(soc: float, priority: float = 10.0, flags: int = 0) -> Candidate:
    return Candidate("b1", "v1", 52.5, 13.4, soc, priority, 0.5, 3.0, 80.0, flags, False)


def _kind(c: Candidate) -> WorkOrderKind | None:
    job = JobQueue().job_for(c, 0.0)
    return None if job is None else job.kind


def test_threshold_swaps_exactly_the_batteries_below_it_whatever_the_model_says() -> None:
    p = ThresholdPolicy(25.0)
    assert _kind(p.apply([_c(20.0, priority=1.0)])[0]) is WorkOrderKind.BATTERY_SWAP
    assert _kind(p.apply([_c(30.0, priority=99.0)])[0]) is None
    a, b = p.apply([_c(10.0, priority=5.0), _c(20.0, priority=90.0)])
    assert JobQueue().job_for(a, 0.0).value == JobQueue().job_for(b, 0.0).value  # type: ignore[union-attr]


def test_priority_model_policy_keeps_the_models_decision() -> None:
    c = _c(50.0, priority=80.0)
    assert PriorityModelPolicy().apply([c]) == [c]


def test_soft_anomalies_make_inspections_only_when_asked() -> None:
    soft = int(AnomalyKind.SEQUENCE_ERROR)
    critical = int(AnomalyKind.TEMP_RISE)
    for policy in (
        PriorityModelPolicy(soft_anomaly_inspections=False),
        ThresholdPolicy(25.0, soft_anomaly_inspections=False),
    ):
        assert (
            _kind(policy.apply([_c(20.0, priority=80.0, flags=soft)])[0])
            is WorkOrderKind.BATTERY_SWAP
        )
        assert (
            _kind(policy.apply([_c(60.0, priority=80.0, flags=critical)])[0])
            is WorkOrderKind.BATTERY_REPLACEMENT
        )
    for policy in (PriorityModelPolicy(), ThresholdPolicy(25.0)):
        assert (
            _kind(policy.apply([_c(20.0, priority=80.0, flags=soft)])[0])
            is WorkOrderKind.INSPECTION
        )

"""What-if simulation jobs as the API sees them: state, progress and outcome.

A job is queued and run by the ``bms-simulations`` actor (:mod:`runtime.simulations`) and
read by the HTTP API (:mod:`serve.http.simulations`), so it crosses a process boundary as a
frozen record. Its outcome is plain JSON-ready data: the runs' KPIs (per day and in total,
without the per-battery arrays), the per-scenario means (:func:`sim.compare.summarise`) and,
with a baseline, the paired differences (:func:`sim.compare.compare`).

::

    SimulationQueueFull (also RuntimeError)   the queue holds as many waiting jobs as it takes
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from typing import Any

__all__ = [
    "SimulationJob",
    "SimulationProgress",
    "SimulationQueueFull",
    "SimulationState",
]


class SimulationState(enum.StrEnum):
    """Where a job is: waiting, running, or one of the three ends."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (SimulationState.DONE, SimulationState.FAILED, SimulationState.CANCELLED)


class SimulationQueueFull(RuntimeError):
    """A job was submitted while ``max_queued`` jobs were already waiting (the API: 429)."""


@dataclass(frozen=True)
class SimulationProgress:
    """How far a job is: ``overall`` over all its runs, ``run_fraction`` of the current run
    (scenario ``scenario``, seed ``seed``, number ``run_index`` of ``runs``, from 0)."""

    overall: float = 0.0
    run_index: int = 0
    runs: int = 0
    run_fraction: float = 0.0
    scenario: str | None = None
    seed: int | None = None


@dataclass(frozen=True)
class SimulationJob:
    """One what-if request: every scenario over the same seeds, run one after the other.

    ``runs`` holds one mapping per (scenario, seed) once done: ``scenario``, ``seed``,
    ``total`` and ``days`` (the :data:`sim.kpis.DAY_KPIS`), ``availability_by_hour_pct``,
    ``soh_end`` (a summary: ``batteries``, ``mean``, ``min``, ``p10``, ``p50``, ``p90``), the
    counts of ``technicians`` and ``zones``, and ``run`` (the runner's scalar facts).
    ``summary`` is ``{scenario: {kpi: {"mean", "sd", "seeds"}}}``; ``comparison`` one mapping
    per :class:`sim.compare.KpiDifference` (empty without a ``baseline``).
    ``queue_position`` is 1 for the next job to run, ``None`` unless queued.
    """

    job_id: str
    state: SimulationState
    submitted_by: str
    submitted_at_s: float
    scenarios: tuple[str, ...]
    seeds: tuple[int, ...]
    baseline: str | None = None
    started_at_s: float | None = None
    finished_at_s: float | None = None
    progress: SimulationProgress = field(default_factory=SimulationProgress)
    error: str | None = None
    queue_position: int | None = None
    runs: tuple[dict[str, Any], ...] = ()
    summary: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    comparison: tuple[dict[str, Any], ...] = ()

    def brief(self) -> SimulationJob:
        """The job without its outcome (what a list of jobs shows)."""
        return replace(self, runs=(), summary={}, comparison=())

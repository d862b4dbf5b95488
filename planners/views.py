"""What a running planner shows its readers, beyond the plans: the queue and the roster.

The planner actor answers with these frozen records instead of dicts, so the HTTP edge
converts typed values into its response models, and a renamed field is a type error rather
than a blank column on the dashboard.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from planners.job_queue import QueuedJob
from planners.resources import Depot, Technician

if TYPE_CHECKING:
    from planners.planner import Planner

__all__ = ["QueueEntry", "Roster", "queue_entries", "roster_of"]


@dataclass(frozen=True)
class QueueEntry:
    """One open job, and whether its technician is already on the way (work order en route)."""

    job: QueuedJob
    in_progress: bool


@dataclass(frozen=True)
class Roster:
    """The technicians and depots the planner routes with."""

    technicians: tuple[Technician, ...]
    depots: tuple[Depot, ...]


def queue_entries(planner: Planner) -> list[QueueEntry]:
    """The planner's open jobs, most valuable first (ties keep the queue's order)."""
    queue = planner.queue
    jobs = sorted(queue.jobs.values(), key=lambda j: -j.value)
    return [QueueEntry(job, job.battery_id in queue.in_progress) for job in jobs]


def roster_of(planner: Planner) -> Roster:
    """The planner's technicians and depots, in the order it was given them."""
    return Roster(tuple(planner.technicians.values()), tuple(planner.depots.values()))

"""Planning rounds asked for over the API, run in the background and polled as jobs.

A re-plan takes seconds to tens of seconds (the solver's time limit), longer than an HTTP
request should be held. :class:`PlanJobs` starts the round as a task and answers at once
with a :class:`PlanJob`; callers poll it. While a round asked for this way is running, a
second request joins it instead of queueing another solve of the same inputs.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from planners.planner import PlanRecord

__all__ = ["JobState", "PlanJob", "PlanJobs"]

log = logging.getLogger(__name__)


class JobState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(frozen=True)
class PlanJob:
    """One requested planning round."""

    job_id: str
    state: JobState
    reason: str
    requested_by: str
    created_at_s: float
    started_at_s: float | None = None
    finished_at_s: float | None = None
    #: The plan it produced, once it succeeded.
    plan_id: int | None = None
    #: What went wrong, once it failed.
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.state in (JobState.SUCCEEDED, JobState.FAILED)


class PlanJobs:
    """The jobs of one planner: start, join and look up.

    Parameters
    ----------
    plan
        Runs one planning round for a reason (the planner's ``plan``).
    keep
        Finished jobs remembered for polling; older ones are forgotten first.
    clock
        Wall-clock seconds (tests pass a fake).
    """

    def __init__(
        self,
        plan: Callable[[str], Awaitable[PlanRecord]],
        *,
        keep: int = 200,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if keep < 1:
            raise ValueError(f"Expected keep >= 1, got {keep}.")
        self._plan, self._keep, self._clock = plan, keep, clock
        self._jobs: OrderedDict[str, PlanJob] = OrderedDict()
        self._running: str | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # Unique across planner restarts (a poll must not find another life's job) and
        # ordered within one, for reading logs.
        self._prefix = f"plan-{uuid.uuid4().hex[:8]}"
        self._counter = itertools.count(1)

    def submit(self, reason: str, requested_by: str) -> PlanJob:
        """Start a round (or return the one running: it plans from the same inputs)."""
        if self._running is not None:
            return self._jobs[self._running]
        loop = asyncio.get_running_loop()  # first: without a loop, nothing is recorded
        job = PlanJob(
            job_id=f"{self._prefix}-{next(self._counter)}",
            state=JobState.QUEUED,
            reason=reason,
            requested_by=requested_by,
            created_at_s=self._clock(),
        )
        self._store(job)
        self._running = job.job_id
        task = loop.create_task(self._run(job.job_id))
        self._tasks.add(task)  # a task nobody references may be garbage-collected mid-run
        task.add_done_callback(self._tasks.discard)
        return job

    def get(self, job_id: str) -> PlanJob:
        """The job; ``KeyError`` when unknown (never made, or forgotten)."""
        try:
            return self._jobs[job_id]
        except KeyError:
            raise KeyError(f"No planning job {job_id!r} (unknown, or older than the last {self._keep}).") from None

    async def _run(self, job_id: str) -> None:
        job = replace(self._jobs[job_id], state=JobState.RUNNING, started_at_s=self._clock())
        self._store(job)
        try:
            record = await self._plan(f"{job.reason} ({job.requested_by})")
        except asyncio.CancelledError:
            # The planner is stopping: a poller must see the end, not "running" forever.
            self._finish(replace(job, state=JobState.FAILED, finished_at_s=self._clock(), error="cancelled: the planner stopped"))
            raise
        except Exception as err:  # the job reports any failure; the planner keeps running
            log.warning("Planning job %s failed: %s", job_id, err)
            self._finish(replace(job, state=JobState.FAILED, finished_at_s=self._clock(), error=f"{type(err).__name__}: {err}"))
        else:
            self._finish(replace(job, state=JobState.SUCCEEDED, finished_at_s=self._clock(), plan_id=record.plan_id))

    def _finish(self, job: PlanJob) -> None:
        self._running = None
        self._store(job)

    def _store(self, job: PlanJob) -> None:
        self._jobs[job.job_id] = job
        self._jobs.move_to_end(job.job_id)
        while len(self._jobs) > self._keep:
            oldest = next(iter(self._jobs))
            if oldest == self._running:
                break
            del self._jobs[oldest]

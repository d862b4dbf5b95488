"""In-memory :class:`serve.http.deps.SimulationAccess` for the HTTP unit and page tests.

* :class:`MemorySimulations` keeps jobs in a dict and runs nothing: a submit records the
  scenarios and answers a queued job (or :class:`SimulationQueueFull` when ``full``);
  tests put finished jobs in with :meth:`MemorySimulations.add`.
* :class:`QueuedSimulations` is the real :class:`runtime.simulations.SimulationQueue` over
  the fake runner of :mod:`tests.unit.runtime.fake_whatif`, for the browser tests: jobs
  queue, run with progress, finish with a comparison and can be cancelled, on the server's
  event loop.
* :func:`done_job` runs one job through the real queue and answers it finished.
"""

from __future__ import annotations

import asyncio
import builtins
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from contracts.simulations import (
    SimulationJob,
    SimulationProgress,
    SimulationQueueFull,
    SimulationState,
)
from sim.scenario import Scenario

from ...runtime.fake_whatif import FakeRunner, scenario

NOW_S = 1_795_700_000.0


@dataclass
class MemorySimulations:
    """Jobs in a dict; nothing runs."""

    jobs: dict[str, SimulationJob] = field(default_factory=dict)
    submitted: list[tuple[list[Scenario], str | None, str]] = field(default_factory=list)
    full: bool = False
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def add(self, job: SimulationJob) -> SimulationJob:
        self.jobs[job.job_id] = job
        return job

    async def submit(
        self, scenarios: Sequence[Scenario], baseline: str | None, submitted_by: str
    ) -> SimulationJob:
        if self.full:
            raise SimulationQueueFull("The simulation queue is full: 8 jobs wait (at most 8).")
        self.submitted.append((list(scenarios), baseline, submitted_by))
        runs = sum(len(s.seeds) for s in scenarios)
        return self.add(SimulationJob(
            job_id=f"sim-abcdef-{next(self._ids)}", state=SimulationState.QUEUED, submitted_by=submitted_by,
            submitted_at_s=NOW_S, scenarios=tuple(s.name for s in scenarios), seeds=tuple(scenarios[-1].seeds),
            baseline=baseline, progress=SimulationProgress(runs=runs), queue_position=1,
        ))  # fmt: skip

    async def list(self) -> builtins.list[SimulationJob]:
        return [j.brief() for j in reversed(self.jobs.values())]

    async def get(self, job_id: str) -> SimulationJob:
        try:
            return self.jobs[job_id]
        except KeyError:
            raise KeyError(f"No simulation {job_id!r}.") from None

    async def cancel(self, job_id: str, actor: str) -> SimulationJob:
        job = await self.get(job_id)
        if job.state.finished:
            raise ValueError(f"Simulation {job_id} is {job.state.value} already.")
        return self.add(
            replace(
                job,
                state=SimulationState.CANCELLED,
                error=f"cancelled by {actor}",
                queue_position=None,
            )
        )


class QueuedSimulations:
    """The real queue over a fake runner (created lazily: it needs the server's loop)."""

    def __init__(self, runner: FakeRunner, max_queued: int = 8) -> None:
        from runtime.simulations import SimulationQueue  # here: the HTTP tests load no Ray

        self.runner = runner
        self.queue = SimulationQueue(runner, max_queued=max_queued)

    async def submit(
        self, scenarios: Sequence[Scenario], baseline: str | None, submitted_by: str
    ) -> SimulationJob:
        return self.queue.submit(scenarios, submitted_by=submitted_by, baseline=baseline)

    async def list(self) -> builtins.list[SimulationJob]:
        return self.queue.jobs()

    async def get(self, job_id: str) -> SimulationJob:
        return self.queue.get(job_id)

    async def cancel(self, job_id: str, actor: str) -> SimulationJob:
        return await self.queue.cancel(job_id, actor)


async def _run_to_the_end(scenarios: Sequence[Scenario], baseline: str | None) -> SimulationJob:
    from runtime.simulations import SimulationQueue  # here: the HTTP tests load no Ray

    q = SimulationQueue(FakeRunner())
    job = q.submit(scenarios, submitted_by="manager-1", baseline=baseline)
    async with asyncio.timeout(10):
        while not q.get(job.job_id).state.finished:
            await asyncio.sleep(0)
    return q.get(job.job_id)


def done_job(seeds: Sequence[int] = (1, 2, 3), *, with_baseline: bool = True) -> SimulationJob:
    """A finished job of ``heatwave`` (twice the baseline's demand) over ``seeds``, with the
    baseline's comparison when ``with_baseline``."""
    heat = scenario("heatwave", seeds, demand={"multiplier": 2.0})
    scenarios = [scenario("baseline", seeds), heat] if with_baseline else [heat]
    return asyncio.run(_run_to_the_end(scenarios, "baseline" if with_baseline else None))

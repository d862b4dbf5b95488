"""What-if simulations as queued jobs: :class:`SimulationQueue` and the ``bms-simulations`` actor.

A what-if (:func:`runtime.whatif.run_whatif`) runs a closed loop of the simulated fleet, the
models and the planner for every scenario and seed: minutes of work that take the cores of
a small machine. So the API never runs one in a request: ``POST /api/v1/simulations``
queues a job here and answers at once, and clients poll it.

* :class:`SimulationQueue` is plain asyncio (no Ray: unit-tested with a fake runner). One
  job runs at a time (two runs at once would only halve each one's share of 2 cores); at
  most ``max_queued`` wait, and one more is refused with
  :class:`contracts.simulations.SimulationQueueFull`. Finished jobs are kept for polling,
  the ``keep_finished`` most recently finished ones. A queued job is cancelled by leaving
  the queue, a running one by cancelling its task (the runner stops its actors).
* The actor (``bms-simulations``, :func:`start_simulations`) owns one queue whose runner is
  :func:`runtime.whatif.run_whatif` on the system's Serve app, imported when the first job
  runs. Jobs live in its memory: a restart forgets them.

A done job keeps the KPIs of each run (per day and in total) and their summaries, not the
per-battery and per-zone arrays: 50 jobs of 20 runs of 20,000 batteries would hold
hundreds of MB for a figure the comparison does not use.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np
import ray

from contracts.simulations import (
    SimulationJob,
    SimulationProgress,
    SimulationQueueFull,
    SimulationState,
)
from runtime.names import SERVE_APP_NAME, SIMULATIONS_NAME
from runtime.options import actor_options
from sim.compare import compare, summarise
from sim.kpis import RunResult
from sim.scenario import Scenario

__all__ = [
    "DEFAULT_KEEP_FINISHED",
    "DEFAULT_MAX_QUEUED",
    "RunProgress",
    "SimulationQueue",
    "SimulationsSpec",
    "WhatIfRunner",
    "start_simulations",
]

log = logging.getLogger(__name__)

#: Jobs that may wait behind the running one.
DEFAULT_MAX_QUEUED = 8
#: Finished jobs kept for polling.
DEFAULT_KEEP_FINISHED = 50
#: Longest error text kept (a failed scenario's message can quote a whole mapping).
_MAX_ERROR_CHARS = 2000


class RunProgress(Protocol):
    """What the runner reports as it goes (:class:`runtime.whatif.WhatIfProgress`)."""

    @property
    def scenario(self) -> str: ...

    @property
    def seed(self) -> int: ...

    @property
    def run_index(self) -> int: ...

    @property
    def runs(self) -> int: ...

    @property
    def run_fraction(self) -> float: ...

    @property
    def overall(self) -> float: ...


class WhatIfRunner(Protocol):
    """Runs every scenario over its seeds, reporting progress: :func:`runtime.whatif.run_whatif`
    with its Serve app bound. Cancelling the awaiting task cancels the run."""

    def __call__(
        self,
        scenarios: Sequence[Scenario],
        *,
        progress: Callable[[RunProgress], None] | None = None,
    ) -> Awaitable[list[RunResult]]: ...


class SimulationQueue:
    """What-if jobs: queue, run one at a time, cancel, look up.

    Parameters
    ----------
    runner
        Runs a job's scenarios (a fake in unit tests).
    max_queued
        Jobs that may wait; one more is :class:`SimulationQueueFull`.
    keep_finished
        Finished jobs remembered; the one that finished longest ago is forgotten first.
    clock
        Wall-clock seconds (tests pass a fake).
    cancel_wait_s
        How long :meth:`cancel` waits for a running job's runner to stop.
    """

    def __init__(
        self,
        runner: WhatIfRunner,
        *,
        max_queued: int = DEFAULT_MAX_QUEUED,
        keep_finished: int = DEFAULT_KEEP_FINISHED,
        clock: Callable[[], float] = time.time,
        cancel_wait_s: float = 30.0,
    ) -> None:
        if max_queued < 1 or keep_finished < 1:
            raise ValueError(
                f"Expected max_queued >= 1 and keep_finished >= 1, got {max_queued} and {keep_finished}."
            )
        if not cancel_wait_s > 0:
            raise ValueError(f"Expected cancel_wait_s > 0, got {cancel_wait_s}.")
        self._runner = runner
        self.max_queued, self.keep_finished = max_queued, keep_finished
        self._clock, self._cancel_wait_s = clock, cancel_wait_s
        self._jobs: dict[str, SimulationJob] = {}  # in submission order
        self._waiting: deque[str] = deque()
        self._scenarios: dict[str, tuple[Scenario, ...]] = {}  # of the waiting jobs
        self._finished: deque[str] = deque()  # in the order they finished
        self._running: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._cancelled_by: dict[str, str] = {}
        self._closed = False
        # Unique across restarts of the actor (a poll must not find another life's job).
        self._prefix = uuid.uuid4().hex[:6]
        self._counter = itertools.count(1)

    # ------------------------------------------------------------------ reads
    def get(self, job_id: str) -> SimulationJob:
        """The job with its outcome; ``KeyError`` when unknown (never made, or forgotten)."""
        try:
            job = self._jobs[job_id]
        except KeyError:
            raise KeyError(
                f"No simulation {job_id!r} (unknown, or older than the last {self.keep_finished} finished)."
            ) from None
        return self._positioned(job)

    def jobs(self) -> list[SimulationJob]:
        """Every known job, newest first, without outcomes (:meth:`SimulationJob.brief`)."""
        return [self._positioned(j).brief() for j in reversed(self._jobs.values())]

    @property
    def running(self) -> str | None:
        """The id of the job running now."""
        return self._running

    def _positioned(self, job: SimulationJob) -> SimulationJob:
        if job.state is not SimulationState.QUEUED:
            return job
        return replace(job, queue_position=self._waiting.index(job.job_id) + 1)

    # ------------------------------------------------------------------ changes
    def submit(
        self, scenarios: Sequence[Scenario], *, submitted_by: str, baseline: str | None = None
    ) -> SimulationJob:
        """Queue the scenarios as one job (it starts at once when nothing runs).

        Raises
        ------
        SimulationQueueFull
            ``max_queued`` jobs are waiting already.
        ValueError
            No scenario, two with one name, or a ``baseline`` that is not among them.
        RuntimeError
            The queue was closed.
        """
        if self._closed:
            raise RuntimeError("The simulation queue is closed (the service is stopping).")
        names = [s.name for s in scenarios]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"Expected one or more scenarios with distinct names, got {names}.")
        if baseline is not None and baseline not in names:
            raise ValueError(
                f"Expected the baseline among the scenarios {names}, got {baseline!r}."
            )
        if len(self._waiting) >= self.max_queued:
            running = f" behind {self._running}" if self._running else ""
            raise SimulationQueueFull(
                f"The simulation queue is full: {len(self._waiting)} jobs wait{running} (at most "
                f"{self.max_queued}); cancel one or retry when one has finished."
            )
        loop = asyncio.get_running_loop()  # first: without a loop nothing is recorded
        seeds = tuple(dict.fromkeys(seed for s in scenarios for seed in s.seeds))
        runs = sum(len(s.seeds) for s in scenarios)
        job = SimulationJob(
            job_id=f"sim-{self._prefix}-{next(self._counter)}", state=SimulationState.QUEUED,
            submitted_by=submitted_by, submitted_at_s=self._clock(), scenarios=tuple(names),
            seeds=seeds, baseline=baseline, progress=SimulationProgress(runs=runs),
        )  # fmt: skip
        self._jobs[job.job_id] = job
        self._scenarios[job.job_id] = tuple(scenarios)
        self._waiting.append(job.job_id)
        self._start_next(loop)
        return self.get(job.job_id)

    async def cancel(self, job_id: str, actor: str) -> SimulationJob:
        """Cancel a queued job (it leaves the queue) or the running one (its run is cancelled).

        Waits up to ``cancel_wait_s`` for a running job's runner to stop, and answers the job
        as it is then (``cancelled``, or still ``running`` if its runner takes longer).

        Raises
        ------
        KeyError
            No such job.
        ValueError
            The job has finished already.
        """
        job = self.get(job_id)
        if job.state.finished:
            raise ValueError(
                f"Simulation {job_id} is {job.state.value} already; only a queued or running one can be cancelled."
            )
        if job.state is SimulationState.QUEUED:
            self._waiting.remove(job_id)
            del self._scenarios[job_id]
            self._finish(
                job_id, SimulationState.CANCELLED, error=f"cancelled by {actor} while queued"
            )
            return self.get(job_id)
        self._cancelled_by[job_id] = actor
        task = self._task
        assert task is not None and self._running == job_id
        task.cancel()
        await asyncio.wait({task}, timeout=self._cancel_wait_s)
        return self.get(job_id)

    async def aclose(self) -> None:
        """Cancel every waiting job and the running one; nothing runs afterwards."""
        self._closed = True
        while self._waiting:
            job_id = self._waiting.popleft()
            del self._scenarios[job_id]
            self._finish(
                job_id, SimulationState.CANCELLED, error="cancelled: the simulation service stopped"
            )
        task = self._task
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # ------------------------------------------------------------------ running
    def _start_next(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._running is not None or not self._waiting or self._closed:
            return
        job_id = self._waiting.popleft()
        scenarios = self._scenarios.pop(job_id)
        self._running = job_id
        self._update(job_id, state=SimulationState.RUNNING, started_at_s=self._clock())
        self._task = loop.create_task(self._run(job_id, scenarios), name=f"simulation {job_id}")
        self._task.add_done_callback(lambda _: self._ended(job_id, loop))

    async def _run(self, job_id: str, scenarios: tuple[Scenario, ...]) -> None:
        baseline = self._jobs[job_id].baseline
        try:
            results = await self._runner(scenarios, progress=lambda p: self._progress(job_id, p))
            outcome = _outcome(results, baseline)
        except Exception as err:  # the job reports any failure; the queue goes on
            log.warning("simulation %s failed: %r", job_id, err)
            self._finish(job_id, SimulationState.FAILED, error=_error_text(err))
        else:
            done = replace(self._jobs[job_id].progress, overall=1.0, run_fraction=1.0)
            self._finish(job_id, SimulationState.DONE, progress=done, **outcome)
        # A cancellation (CancelledError) passes through: _ended records it.

    def _ended(self, job_id: str, loop: asyncio.AbstractEventLoop) -> None:
        """The running job's task is over, whichever way (also cancelled before it started)."""
        job = self._jobs[job_id]
        if not job.state.finished:
            actor = self._cancelled_by.pop(job_id, None)
            why = (
                "cancelled: the simulation service stopped"
                if actor is None
                else f"cancelled by {actor} while running"
            )
            self._finish(job_id, SimulationState.CANCELLED, error=why)
        self._cancelled_by.pop(job_id, None)
        self._running = None
        self._task = None
        self._start_next(loop)

    def _progress(self, job_id: str, p: RunProgress) -> None:
        job = self._jobs.get(job_id)
        if job is None or job.state is not SimulationState.RUNNING:
            return  # a late report of a job that has ended says nothing new
        self._update(job_id, progress=SimulationProgress(
            overall=_fraction(p.overall), run_index=int(p.run_index), runs=int(p.runs),
            run_fraction=_fraction(p.run_fraction), scenario=str(p.scenario), seed=int(p.seed),
        ))  # fmt: skip

    def _update(self, job_id: str, **changes: Any) -> None:
        self._jobs[job_id] = replace(self._jobs[job_id], **changes)

    def _finish(self, job_id: str, state: SimulationState, **changes: Any) -> None:
        self._update(job_id, state=state, finished_at_s=self._clock(), **changes)
        self._finished.append(job_id)
        while len(self._finished) > self.keep_finished:
            del self._jobs[self._finished.popleft()]


def _fraction(x: float) -> float:
    x = float(x)
    return min(1.0, max(0.0, x)) if x == x else 0.0  # NaN: nothing known yet


def _error_text(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}"
    return text if len(text) <= _MAX_ERROR_CHARS else text[: _MAX_ERROR_CHARS - 1] + "…"


def _outcome(results: Sequence[RunResult], baseline: str | None) -> dict[str, Any]:
    """What a done job keeps: compact runs, the per-scenario summary and the comparison."""
    summary = {
        name: {kpi: {"mean": mean, "sd": sd, "seeds": n} for kpi, (mean, sd, n) in kpis.items()}
        for name, kpis in summarise(results).items()
    }
    comparison = (
        () if baseline is None else tuple(dataclasses.asdict(d) for d in compare(results, baseline))
    )
    return {
        "runs": tuple(_compact(r) for r in results),
        "summary": summary,
        "comparison": comparison,
    }


def _compact(r: RunResult) -> dict[str, Any]:
    soh = np.asarray(r.soh_end, dtype=float)
    soh = soh[np.isfinite(soh)]
    if soh.size:
        p10, p50, p90 = (float(v) for v in np.percentile(soh, [10, 50, 90]))
        soh_end: dict[str, Any] = {"batteries": int(soh.size), "mean": float(soh.mean()),
                                   "min": float(soh.min()), "p10": p10, "p50": p50, "p90": p90}  # fmt: skip
    else:
        soh_end = {"batteries": 0, "mean": None, "min": None, "p10": None, "p50": None, "p90": None}
    return {
        "scenario": r.scenario, "seed": r.seed, "total": dict(r.total), "days": [dict(d) for d in r.days],
        "availability_by_hour_pct": list(r.availability_by_hour_pct), "soh_end": soh_end,
        "technicians": len(r.technicians), "zones": len(r.zones),
        "run": {k: v for k, v in r.run.items() if v is None or isinstance(v, (bool, int, float, str))},
    }  # fmt: skip


# ---------------------------------------------------------------------- the actor
@dataclass(frozen=True)
class SimulationsSpec:
    """What the ``bms-simulations`` actor is started with (plain values: it crosses into Ray)."""

    namespace: str
    serve_app_name: str = SERVE_APP_NAME
    max_queued: int = DEFAULT_MAX_QUEUED
    keep_finished: int = DEFAULT_KEEP_FINISHED


class _SimulationsActor:
    """Async Ray actor: the queue runs its jobs on this actor's event loop."""

    def __init__(self, spec: SimulationsSpec) -> None:
        self.spec = spec
        self._queue = SimulationQueue(
            self._run_whatif, max_queued=spec.max_queued, keep_finished=spec.keep_finished
        )

    async def _run_whatif(
        self,
        scenarios: Sequence[Scenario],
        *,
        progress: Callable[[RunProgress], None] | None = None,
    ) -> list[RunResult]:
        # Imported here: the runner brings the simulator's loop, the planner and its own
        # actors, none of which the API's client of this actor needs.
        from runtime.whatif import run_whatif

        results: list[RunResult] = await run_whatif(
            scenarios, app_name=self.spec.serve_app_name, progress=progress
        )
        return results

    async def ping(self) -> None:
        """Answers once the actor is up."""

    async def submit(
        self, scenarios: Sequence[Scenario], baseline: str | None, submitted_by: str
    ) -> SimulationJob:
        return self._queue.submit(scenarios, submitted_by=submitted_by, baseline=baseline)

    async def jobs(self) -> list[SimulationJob]:
        return self._queue.jobs()

    async def get(self, job_id: str) -> SimulationJob:
        return self._queue.get(job_id)

    async def cancel(self, job_id: str, actor: str) -> SimulationJob:
        return await self._queue.cancel(job_id, actor)

    async def aclose(self) -> None:
        await self._queue.aclose()


def start_simulations(spec: SimulationsSpec) -> Any:
    """Start (or find) the named, detached simulations actor and wait until it answers."""
    options = actor_options("simulations", SIMULATIONS_NAME, spec.namespace)
    handle = ray.remote(_SimulationsActor).options(**options).remote(spec)
    ray.get(handle.ping.remote())  # type: ignore[attr-defined]
    return handle

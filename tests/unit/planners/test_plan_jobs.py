"""Tests for :mod:`planners.plan_jobs`: re-plan jobs started in the background and polled.

Pure asyncio: the planning round is a coroutine the test controls with an event, and the
clock is a counter, so every state and timestamp is checked exactly.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import replace

import pytest

from planners.plan_jobs import JobState, PlanJob, PlanJobs
from planners.planner import PlanRecord

#: The job id pattern the HTTP route accepts (serve.http.planner.JobId).
JOB_ID = re.compile(r"^plan-[0-9a-f]{8}-[0-9]{1,9}$")


def record(plan_id: int) -> PlanRecord:
    return PlanRecord(
        plan_id=plan_id, reason="manual", created_at_s=0.0, routes=(), dropped=(), jobs=0,
        value_collected=0.0, value_dropped=0.0, distance_m=0, solve_time_s=0.0,
        warm_started=False,
    )  # fmt: skip


class Clock:
    """1.0, 2.0, 3.0, ... one tick a reading."""

    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        self.now_s += 1.0
        return self.now_s


class Planner:
    """A planning round that waits for ``release`` and then answers (or raises ``error``)."""

    def __init__(self, error: Exception | None = None, gated: bool = True) -> None:
        self.release = asyncio.Event()
        if not gated:
            self.release.set()
        self.error = error
        self.reasons: list[str] = []

    async def plan(self, reason: str) -> PlanRecord:
        self.reasons.append(reason)
        await self.release.wait()
        if self.error is not None:
            raise self.error
        return record(len(self.reasons))


async def settle() -> None:
    """Let the jobs' tasks run until they wait (or finish)."""
    for _ in range(5):
        await asyncio.sleep(0)


async def finish(jobs: PlanJobs, job: PlanJob) -> PlanJob:
    for _ in range(100):
        await asyncio.sleep(0)
        if jobs.get(job.job_id).finished:
            return jobs.get(job.job_id)
    raise AssertionError(f"job {job.job_id} never finished: {jobs.get(job.job_id)}")


async def test_a_job_goes_queued_running_succeeded() -> None:
    """submit answers a queued job at once; its task makes it running, then succeeded with
    the plan's id, each step stamped by the clock; the round's reason names who asked."""
    planner = Planner()
    jobs = PlanJobs(planner.plan, clock=Clock())
    job = jobs.submit("manual", "manager-1")
    assert job.state is JobState.QUEUED and not job.finished
    assert job.reason == "manual" and job.requested_by == "manager-1"
    assert job.created_at_s == 1.0 and job.started_at_s is None and job.plan_id is None
    assert JOB_ID.fullmatch(job.job_id)
    assert jobs.get(job.job_id) == job

    await settle()
    running = jobs.get(job.job_id)
    assert running.state is JobState.RUNNING and running.started_at_s == 2.0
    assert running.finished_at_s is None and not running.finished
    assert planner.reasons == ["manual (manager-1)"]

    planner.release.set()
    done = await finish(jobs, job)
    assert done.state is JobState.SUCCEEDED and done.finished
    assert done.plan_id == 1 and done.error is None and done.finished_at_s == 3.0
    assert replace(done, state=job.state, started_at_s=None, finished_at_s=None, plan_id=None) == job


async def test_a_failing_round_is_a_failed_job_and_the_next_one_runs() -> None:
    """A round that raises leaves the job failed with the error's type and message and no
    plan; the jobs go on: the next submit starts a new job."""
    jobs = PlanJobs(Planner(RuntimeError("solver crashed"), gated=False).plan)
    failed = await finish(jobs, jobs.submit("manual", "manager-1"))
    assert failed.state is JobState.FAILED and failed.finished
    assert failed.error == "RuntimeError: solver crashed" and failed.plan_id is None
    assert failed.finished_at_s is not None
    again = jobs.submit("manual", "manager-1")
    assert again.job_id != failed.job_id and again.state is JobState.QUEUED


async def test_a_second_submit_while_one_runs_joins_it() -> None:
    """While a job is queued or running, submit answers that job (whoever asks, for
    whatever reason) and starts no second round; once it finished, submit starts a new one."""
    planner = Planner()
    jobs = PlanJobs(planner.plan)
    first = jobs.submit("manual", "manager-1")
    assert jobs.submit("urgent", "manager-2").job_id == first.job_id  # still queued
    await settle()
    joined = jobs.submit("manual", "manager-2")
    assert joined.job_id == first.job_id and joined.state is JobState.RUNNING
    assert joined.requested_by == "manager-1"
    planner.release.set()
    await finish(jobs, first)
    assert planner.reasons == ["manual (manager-1)"]

    second = jobs.submit("manual", "manager-2")
    assert second.job_id != first.job_id and JOB_ID.fullmatch(second.job_id)
    assert (await finish(jobs, second)).plan_id == 2
    # One prefix per PlanJobs, then a counter: ids of one planner sort by submission.
    assert first.job_id.rsplit("-", 1) == [second.job_id.rsplit("-", 1)[0], "1"]
    assert second.job_id.endswith("-2")


async def test_an_unknown_job_is_a_key_error() -> None:
    """get of an id never made is a KeyError naming it; another PlanJobs' ids are unknown
    too (a restarted planner does not answer the previous one's jobs)."""
    jobs = PlanJobs(Planner(gated=False).plan)
    with pytest.raises(KeyError, match="plan-0123abcd-1"):
        jobs.get("plan-0123abcd-1")
    job = await finish(jobs, jobs.submit("manual", "m"))
    other = PlanJobs(Planner(gated=False).plan)
    with pytest.raises(KeyError):
        other.get(job.job_id)


async def test_the_oldest_finished_jobs_are_forgotten_first() -> None:
    """With keep=2, a third job makes the first unknown; the two newest stay pollable."""
    jobs = PlanJobs(Planner(gated=False).plan, keep=2)
    done = [await finish(jobs, jobs.submit("manual", f"m{k}")) for k in range(3)]
    with pytest.raises(KeyError):
        jobs.get(done[0].job_id)
    assert [jobs.get(j.job_id).plan_id for j in done[1:]] == [2, 3]


async def test_the_running_job_is_never_forgotten() -> None:
    """With keep=1, a new job pushes out the finished one but stays pollable itself through
    queued, running and finished."""
    planner = Planner()
    jobs = PlanJobs(planner.plan, keep=1)
    planner.release.set()
    first = await finish(jobs, jobs.submit("manual", "m"))
    planner.release.clear()
    second = jobs.submit("manual", "m")
    with pytest.raises(KeyError):
        jobs.get(first.job_id)
    await settle()
    assert jobs.get(second.job_id).state is JobState.RUNNING
    planner.release.set()
    assert (await finish(jobs, second)).state is JobState.SUCCEEDED


def test_keep_must_be_positive() -> None:
    """keep < 1 could not even hold the running job: a ValueError."""
    with pytest.raises(ValueError, match="keep >= 1, got 0"):
        PlanJobs(Planner(gated=False).plan, keep=0)


def test_submit_needs_a_running_loop() -> None:
    """submit starts a task, so it is called from the planner's event loop."""
    jobs = PlanJobs(Planner(gated=False).plan)
    with pytest.raises(RuntimeError):
        jobs.submit("manual", "m")


async def test_a_cancelled_round_ends_its_job_and_frees_the_next() -> None:
    """The planner stopping mid-round cancels the task: the job reads failed (not running
    forever) and a later submit starts a new round."""
    planner = Planner()
    jobs = PlanJobs(planner.plan, clock=Clock())
    first = jobs.submit("manual", "m-1")
    await settle()
    (task,) = jobs._tasks
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    done = jobs.get(first.job_id)
    assert done.state is JobState.FAILED and done.error is not None and "cancelled" in done.error
    assert jobs.submit("manual", "m-1").job_id != first.job_id

"""Tests for :class:`runtime.simulations.SimulationQueue` with a fake what-if runner (no Ray).

One job runs at a time in submission order; progress and outcome (compact runs, summary,
paired comparison) are recorded; the queue refuses a job past ``max_queued``; queued and
running jobs are cancelled; a failing run fails its job with its message and the queue goes
on; finished jobs are kept up to ``keep_finished``.
"""

from __future__ import annotations

import asyncio

import pytest

from contracts.simulations import SimulationQueueFull, SimulationState
from runtime.names import SIMULATIONS_NAME
from runtime.options import actor_options
from runtime.simulations import SimulationQueue
from sim.kpis import DAY_KPIS

from .fake_whatif import FakeRunner, scenario

NOW_S = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now_s = NOW_S

    def __call__(self) -> float:
        self.now_s += 1.0
        return self.now_s


async def _until(predicate: object, timeout_s: float = 5.0) -> None:
    """Let the loop run until ``predicate()`` holds."""
    assert callable(predicate)
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0)


def _idle(q: SimulationQueue) -> bool:
    return q.running is None and all(j.state.finished for j in q.jobs())


async def test_jobs_run_one_at_a_time_in_submission_order() -> None:
    """Three jobs: the first runs, the others wait with their place in line; released, they
    run one after the other in the order they came, never two at once."""
    runner = FakeRunner(hold=asyncio.Event())
    q = SimulationQueue(runner, clock=Clock())
    a = q.submit([scenario("a")], submitted_by="m-1")
    b = q.submit([scenario("b")], submitted_by="m-2")
    c = q.submit([scenario("c")], submitted_by="m-1")
    assert a.state is SimulationState.RUNNING and a.started_at_s is not None
    assert (b.state, b.queue_position, c.queue_position) == (SimulationState.QUEUED, 1, 2)
    await _until(lambda: runner.calls == [["a"]])
    assert [j.job_id for j in q.jobs()] == [c.job_id, b.job_id, a.job_id]  # newest first
    assert q.get(a.job_id).progress.scenario == "a" and q.get(a.job_id).progress.runs == 2
    assert runner.hold is not None
    runner.hold.set()
    await _until(lambda: _idle(q))
    assert runner.calls == [["a"], ["b"], ["c"]] and runner.most_at_once == 1
    assert [q.get(j.job_id).state for j in (a, b, c)] == [SimulationState.DONE] * 3
    assert q.get(b.job_id).submitted_by == "m-2" and q.get(b.job_id).queue_position is None


async def test_a_done_job_keeps_its_summary_comparison_and_compact_runs() -> None:
    """With a baseline, the job's comparison pairs the scenario with it on every KPI and
    seed; the summary has each scenario's means; runs keep totals and days, summarise the
    SOH instead of listing it, and keep only scalar facts of the run; progress ends at 1."""
    runner = FakeRunner()
    q = SimulationQueue(runner)
    more = scenario(
        "more_techs",
        seeds=[1, 2, 3],
        shifts=[{"name": "day", "start_h": 8, "end_h": 16, "technicians": 4}],
    )
    job = q.submit(
        [scenario("baseline", seeds=[1, 2, 3]), more], submitted_by="m-1", baseline="baseline"
    )
    assert (
        job.seeds == (1, 2, 3)
        and job.scenarios == ("baseline", "more_techs")
        and job.progress.runs == 6
    )
    await _until(lambda: _idle(q))
    done = q.get(job.job_id)
    assert done.state is SimulationState.DONE and done.error is None
    assert done.progress.overall == 1.0 and done.progress.run_fraction == 1.0
    assert list(done.summary) == ["baseline", "more_techs"]
    assert done.summary["baseline"]["rides_served"]["seeds"] == 3
    assert [d["kpi"] for d in done.comparison] == list(DAY_KPIS)
    served = next(d for d in done.comparison if d["kpi"] == "rides_served")
    assert served["scenario"] == "more_techs" and served["mean_difference"] == pytest.approx(
        6.0
    )  # 2 more x 3
    assert served["ci95_low"] == pytest.approx(6.0) and tuple(served["seeds"]) == (1, 2, 3)
    assert len(done.runs) == 6
    run = done.runs[0]
    assert (
        set(run["total"]) == set(DAY_KPIS)
        and len(run["days"]) == 1
        and len(run["availability_by_hour_pct"]) == 24
    )
    assert run["soh_end"]["batteries"] == 50 and 0.8 <= run["soh_end"]["p50"] <= 0.9
    assert (
        run["run"] == {"wall_s": 1.5, "plans": 3} and run["technicians"] == 2 and run["zones"] == 1
    )
    assert "soh_end" not in str(q.jobs()[0].runs) and q.jobs()[0].summary == {}  # the list is brief


async def test_without_a_baseline_there_is_a_summary_and_no_comparison() -> None:
    q = SimulationQueue(FakeRunner())
    job = q.submit([scenario("solo", seeds=[4])], submitted_by="m-1")
    await _until(lambda: _idle(q))
    done = q.get(job.job_id)
    assert done.comparison == () and done.summary["solo"]["availability_pct"]["sd"] == 0.0


async def test_a_full_queue_refuses_with_a_clear_message() -> None:
    """With two jobs waiting behind the running one, a third is refused (saying the queue is
    full and how many wait); once one leaves the queue, a new one is taken."""
    runner = FakeRunner(hold=asyncio.Event())
    q = SimulationQueue(runner, max_queued=2)
    running = q.submit([scenario("a")], submitted_by="m")
    waiting = [q.submit([scenario(n)], submitted_by="m") for n in ("b", "c")]
    with pytest.raises(
        SimulationQueueFull, match=r"queue is full: 2 jobs wait behind .* \(at most 2\)"
    ):
        q.submit([scenario("d")], submitted_by="m")
    assert len(q.jobs()) == 3
    await q.cancel(waiting[0].job_id, "m")
    assert q.submit([scenario("d")], submitted_by="m").queue_position == 2
    assert q.get(running.job_id).state is SimulationState.RUNNING
    await q.aclose()


async def test_a_queued_job_is_cancelled_and_never_runs() -> None:
    runner = FakeRunner(hold=asyncio.Event())
    q = SimulationQueue(runner)
    a = q.submit([scenario("a")], submitted_by="m")
    b = q.submit([scenario("b")], submitted_by="m")
    c = q.submit([scenario("c")], submitted_by="m")
    out = await q.cancel(b.job_id, "manager-2")
    assert (
        out.state is SimulationState.CANCELLED
        and out.error == "cancelled by manager-2 while queued"
    )
    assert out.finished_at_s is not None and q.get(c.job_id).queue_position == 1
    assert runner.hold is not None
    runner.hold.set()
    await _until(lambda: _idle(q))
    assert runner.calls == [["a"], ["c"]]
    assert q.get(a.job_id).state is SimulationState.DONE


async def test_the_running_job_is_cancelled_and_the_next_one_starts() -> None:
    """Cancelling the running job cancels its runner (which sees CancelledError) and answers
    the cancelled job; the next job starts at once."""
    runner = FakeRunner(hold=asyncio.Event())
    q = SimulationQueue(runner)
    a = q.submit([scenario("a")], submitted_by="m")
    b = q.submit([scenario("b")], submitted_by="m")
    await _until(lambda: runner.calls == [["a"]])
    out = await q.cancel(a.job_id, "manager-1")
    assert (
        out.state is SimulationState.CANCELLED
        and out.error == "cancelled by manager-1 while running"
    )
    assert runner.cancelled == [["a"]] and out.runs == ()
    assert q.running == b.job_id and q.get(b.job_id).state is SimulationState.RUNNING
    await q.aclose()
    assert q.get(b.job_id).state is SimulationState.CANCELLED
    assert q.get(b.job_id).error == "cancelled: the simulation service stopped"


async def test_a_job_cancelled_before_its_task_ran_is_cancelled() -> None:
    """Cancelled in the same loop step it was submitted in, the job never reaches the runner."""
    runner = FakeRunner()
    q = SimulationQueue(runner)
    a = q.submit([scenario("a")], submitted_by="m")
    out = await q.cancel(a.job_id, "m")
    assert out.state is SimulationState.CANCELLED and runner.calls == [] and q.running is None


async def test_cancelling_a_finished_or_unknown_job_is_refused() -> None:
    q = SimulationQueue(FakeRunner())
    a = q.submit([scenario("a")], submitted_by="m")
    await _until(lambda: _idle(q))
    with pytest.raises(ValueError, match="is done already"):
        await q.cancel(a.job_id, "m")
    with pytest.raises(KeyError, match="No simulation 'sim-000000-9'"):
        await q.cancel("sim-000000-9", "m")
    with pytest.raises(KeyError):
        q.get("nope")


async def test_a_failed_run_fails_its_job_with_the_message_and_the_queue_goes_on() -> None:
    runner = FakeRunner(fail_on="broken")
    q = SimulationQueue(runner)
    bad = q.submit([scenario("broken")], submitted_by="m")
    good = q.submit([scenario("fine")], submitted_by="m")
    await _until(lambda: _idle(q))
    failed = q.get(bad.job_id)
    assert failed.state is SimulationState.FAILED and failed.finished_at_s is not None
    assert failed.error == "ValueError: scenario 'broken': the loop diverged at seed 1"
    assert failed.runs == () and q.get(good.job_id).state is SimulationState.DONE


async def test_an_analysis_that_fails_fails_the_job() -> None:
    """A baseline that shares no seed with the scenario cannot be compared: the job fails
    with compare's message instead of the queue breaking."""
    q = SimulationQueue(FakeRunner())
    job = q.submit(
        [scenario("baseline", seeds=[1]), scenario("x", seeds=[2])],
        submitted_by="m",
        baseline="baseline",
    )
    await _until(lambda: _idle(q))
    failed = q.get(job.job_id)
    assert failed.state is SimulationState.FAILED and "expected seeds shared with baseline" in (
        failed.error or ""
    )


async def test_only_the_most_recently_finished_jobs_are_kept() -> None:
    q = SimulationQueue(FakeRunner(), keep_finished=2)
    ids = [q.submit([scenario(f"s{i}")], submitted_by="m").job_id for i in range(4)]
    await _until(lambda: _idle(q))
    assert [j.job_id for j in q.jobs()] == [ids[3], ids[2]]
    with pytest.raises(KeyError, match="older than the last 2 finished"):
        q.get(ids[0])


async def test_submit_refuses_what_cannot_run() -> None:
    q = SimulationQueue(FakeRunner())
    with pytest.raises(ValueError, match="distinct names"):
        q.submit([], submitted_by="m")
    with pytest.raises(ValueError, match="distinct names"):
        q.submit([scenario("a"), scenario("a")], submitted_by="m")
    with pytest.raises(ValueError, match="baseline among the scenarios"):
        q.submit([scenario("a")], submitted_by="m", baseline="baseline")
    await q.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        q.submit([scenario("a")], submitted_by="m")
    with pytest.raises(ValueError, match="max_queued >= 1"):
        SimulationQueue(FakeRunner(), max_queued=0)


async def test_closing_cancels_every_waiting_and_running_job() -> None:
    runner = FakeRunner(hold=asyncio.Event())
    q = SimulationQueue(runner)
    jobs = [q.submit([scenario(n)], submitted_by="m") for n in ("a", "b")]
    await _until(lambda: runner.calls == [["a"]])
    await q.aclose()
    assert [q.get(j.job_id).state for j in jobs] == [SimulationState.CANCELLED] * 2
    assert runner.cancelled == [["a"]] and q.running is None


def test_the_actor_is_named_and_restartable() -> None:
    """The simulations actor is found by name and comes back after a crash (empty)."""
    opts = actor_options("simulations", SIMULATIONS_NAME, "bms")
    assert opts["name"] == "bms-simulations" and opts["max_restarts"] == -1
    assert "max_task_retries" not in opts  # a retried submit would queue a job twice

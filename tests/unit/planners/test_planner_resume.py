"""A planner killed and started again: it resumes from the work orders and the saved plan.

Issue 12, fault 7: the previous plan and work orders stay in force, and the new planner
makes no second order for a battery. The in-memory book stands for PostgreSQL's work orders
and a JSON-round-tripping plan store for the ``plans`` table, so no database or Ray is needed.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from typing import Any

import pytest

from contracts.candidates import Candidate
from contracts.work_orders import OPEN_STATES, SwapRecord, WorkOrderKind, WorkOrderState
from planners.job_queue import JobQueue, Severity
from planners.planner import Planner, PlannerParams, PlanRecord
from planners.resources import Depot, Technician
from planners.work_order_book import WorkOrderBook

from .test_planner import CENTRE, _candidate

# 2025-11-26 10:00 local (09:00 UTC): everyone's shift is on.
NOW_S = 1_764_147_600.0
S = WorkOrderState


class MemoryPlans:
    """The ``plans`` table in memory: what is saved comes back as JSON would bring it."""

    def __init__(self) -> None:
        self.rows: list[tuple[float, str, str]] = []
        self.fail = False

    async def save(self, made_at_s: float, reason: str, record: Mapping[str, Any]) -> int:
        if self.fail:
            raise ConnectionError("the database went away")
        self.rows.append((made_at_s, reason, json.dumps(dict(record), allow_nan=False)))
        return len(self.rows)

    async def latest(self) -> dict[str, Any] | None:
        if not self.rows:
            return None
        out: dict[str, Any] = json.loads(self.rows[-1][2])
        return out


CANDIDATES = [_candidate(k) for k in range(6)]


def _planner(
    book: WorkOrderBook, plans: MemoryPlans | None, cands: list[Candidate] = CANDIDATES
) -> Planner:
    """A planner over ``book`` and ``plans``: what a restarted actor builds over PostgreSQL."""
    depots = [Depot(id="north", lat=CENTRE[0] + 0.02, lon=CENTRE[1], charged_stock=20)]
    roster = [
        Technician(id=f"t{k}", depot_id="north", shift_start_h=7, shift_end_h=15, van_capacity=10,
                   skills=frozenset({"swap", "replace", "inspect"}))
        for k in range(2)
    ]  # fmt: skip

    async def source(n: int) -> list[Candidate]:
        return cands[:n]

    async def apply(swap: SwapRecord) -> None:
        return None

    return Planner(
        roster, depots, book, source, apply, PlannerParams(solve_time_limit_s=1.0),
        now_s=lambda: NOW_S, plan_store=plans,
    )  # fmt: skip


def _open_per_battery(book: WorkOrderBook) -> Counter[str]:
    return Counter(o.battery_id for o in book.orders.values() if o.state in OPEN_STATES)


def _stops(rec: PlanRecord) -> dict[str, tuple[str, int | None]]:
    """battery -> (technician, work order) of every stop in ``rec``."""
    return {s.battery_id: (r.technician_id, s.work_order_id) for r in rec.routes for s in r.stops}


class AskingBook(WorkOrderBook):
    """The book, noting every battery a create was asked for: the book would hand back an
    open order anyway (the database guard), so only this shows the planner asked again."""

    def __init__(self) -> None:
        super().__init__(lambda: NOW_S)
        self.asked: list[str] = []

    async def create(self, kind, vehicle_id, battery_id, lat, lon, priority, value, actor):  # type: ignore[no-untyped-def]
        self.asked.append(battery_id)
        return await super().create(kind, vehicle_id, battery_id, lat, lon, priority, value, actor)


@pytest.fixture
def book() -> AskingBook:
    """Work orders in memory, on the frozen clock."""
    return AskingBook()


# -- the restart ----------------------------------------------------------------------------


@pytest.mark.parametrize("saved", [True, False], ids=["plan-saved", "no-plan-store"])
async def test_a_restarted_planner_reuses_every_open_order(book: AskingBook, saved: bool) -> None:
    """A planner plans, dies; a new one over the same orders plans again: every battery keeps
    its one order (the same id), and no order is created twice, with or without a saved plan;
    the new planner does not even ask for one."""
    plans = MemoryPlans() if saved else None
    first = _planner(book, plans)
    await first.pull()
    before = await first.plan()
    orders_before = {b: oid for b, (_, oid) in _stops(before).items()}
    assert orders_before and len(book.orders) == len(orders_before)
    del first  # the process is gone, and its memory with it

    book.asked.clear()
    again = _planner(book, plans)
    await again.pull()
    after = await again.plan()
    assert not set(book.asked) & set(orders_before)
    created = Counter(oid for oid, state, _ in book.events if state is S.PLANNED)
    assert set(created.values()) == {1}  # one creation event per order
    assert max(_open_per_battery(book).values()) == 1
    for battery, (_, oid) in _stops(after).items():
        assert oid == orders_before.get(battery, oid)
    assert set(orders_before) <= set(_stops(after)) | set(after.dropped)


async def test_latest_and_routes_answer_from_the_saved_plan_right_after_a_restart(
    book: WorkOrderBook,
) -> None:
    """Before any new plan, the resumed planner's latest plan and each technician's route
    are the ones in force when it died; plan ids continue after it."""
    plans = MemoryPlans()
    first = _planner(book, plans)
    await first.pull()
    await first.plan("scheduled")
    last = await first.plan("urgent")
    again = _planner(book, plans)
    assert again.latest() is None  # nothing before the resume
    assert await again.resume() is True
    assert again.latest() == last
    for tech in ("t0", "t1"):
        assert again.route_of(tech) == first.route_of(tech)
    assert await again.resume() is False and len(again.plans) == 1  # once only
    await again.pull()
    assert (await again.plan()).plan_id == last.plan_id + 1


async def test_assigned_orders_are_reassigned_through_the_state_machine(book: AskingBook) -> None:
    """Orders the dead planner assigned are reused by the new plan: kept with their
    technician, or moved through planned -> assigned, never duplicated."""
    plans = MemoryPlans()
    first = _planner(book, plans)
    await first.pull()
    await first.plan()
    book.asked.clear()
    again = _planner(book, plans)
    await again.pull()
    rec = await again.plan()
    for tech, oid in _stops(rec).values():
        order = book.orders[oid]  # type: ignore[index]
        assert order.state is S.ASSIGNED and order.technician_id == tech
    for oid, state, _ in book.events:
        assert state is not S.CANCELLED, f"order {oid} was cancelled"
    assert book.asked == []


@pytest.mark.parametrize("saved", [True, False], ids=["plan-saved", "no-plan-store"])
async def test_an_en_route_order_stays_with_its_technician(book: WorkOrderBook, saved: bool) -> None:
    """A stop under way when the planner died is known to be under way after the restart:
    it stays first on its technician's route, on its order, and on no other route."""
    plans = MemoryPlans() if saved else None
    first = _planner(book, plans)
    await first.pull()
    rec = await first.plan()
    route = next(r for r in rec.routes if len(r.stops) >= 2)
    stop = route.stops[-1]  # not already first: the lock must move it there
    assert stop.work_order_id is not None
    await first.report(stop.work_order_id, S.EN_ROUTE, route.technician_id)

    again = _planner(book, plans)
    await again.resume()
    assert stop.battery_id in again.queue.in_progress
    assert again.queue.en_route_by[stop.battery_id] == route.technician_id
    await again.pull()
    after = await again.plan()
    mine = next(r for r in after.routes if r.technician_id == route.technician_id)
    assert mine.stops[0].battery_id == stop.battery_id
    assert mine.stops[0].work_order_id == stop.work_order_id
    others = [s.battery_id for r in after.routes if r is not mine for s in r.stops]
    assert stop.battery_id not in others
    order = book.orders[stop.work_order_id]
    assert order.state is S.EN_ROUTE and order.technician_id == route.technician_id
    # The technician finishes it through the new planner, as through the old one.
    swap = SwapRecord(stop.vehicle_id, stop.battery_id, "spare-1")
    await again.report(stop.work_order_id, S.DONE, route.technician_id, swap=swap)
    assert stop.battery_id not in again.queue.jobs and stop.battery_id not in again.queue.en_route_by


async def test_an_order_moved_after_the_saved_plan_follows_the_order(book: AskingBook) -> None:
    """Killed between moving orders and saving the plan that moved them: the saved plan
    routes a stop to one technician, its order went en route with another. The order wins,
    so only the technician actually driving there has it on the route."""
    plans = MemoryPlans()
    first = _planner(book, plans)
    await first.pull()
    rec = await first.plan()
    route = next(r for r in rec.routes if r.stops)
    stop = route.stops[0]
    oid = stop.work_order_id
    assert oid is not None
    other = "t1" if route.technician_id == "t0" else "t0"
    await book.transition(oid, S.PLANNED, "planner", note="re-planned")
    await book.transition(oid, S.ASSIGNED, "planner", technician_id=other)
    await book.transition(oid, S.EN_ROUTE, other)

    again = _planner(book, plans)
    await again.pull()
    after = await again.plan()
    theirs = next(r for r in after.routes if r.technician_id == other)
    assert theirs.stops[0].battery_id == stop.battery_id
    assert all(
        s.battery_id != stop.battery_id for r in after.routes if r is not theirs for s in r.stops
    )
    assert book.orders[oid].state is S.EN_ROUTE and book.orders[oid].technician_id == other


async def test_candidates_arriving_around_the_resume_keep_the_order_id(book: WorkOrderBook) -> None:
    """A shard's push before the resume and a pull after it both leave the battery's job on
    its existing order: the candidate refreshes the job, the order id stays."""
    plans = MemoryPlans()
    first = _planner(book, plans)
    await first.pull()
    rec = await first.plan()
    battery, (_, oid) = next(iter(_stops(rec).items()))
    k = int(battery[1:])

    again = _planner(book, plans)
    again.push([_candidate(k, lost_rides_6h=9.0)])  # before the resume: no order id yet
    assert again.queue.jobs[battery].work_order_id is None
    await again.resume()
    job = again.queue.jobs[battery]
    assert job.work_order_id == oid and job.value == pytest.approx(9.0 * 3.5)
    await again.pull()
    assert again.queue.jobs[battery].work_order_id == oid


async def test_van_loads_continue_from_the_saved_plan(book: WorkOrderBook) -> None:
    """The vans are not loaded afresh mid-shift: each starts from what the saved plan
    counted in it."""
    plans = MemoryPlans()
    first = _planner(book, plans)
    await first.pull()
    rec = await first.plan()
    again = _planner(book, plans)
    await again.resume()
    for route in rec.routes:
        assert again._shifts[route.technician_id].loaded == route.batteries_loaded


async def test_a_plan_that_cannot_be_saved_stays_in_force(
    book: WorkOrderBook, caplog: pytest.LogCaptureFixture
) -> None:
    """A failed save is logged; the plan and its work orders are in force all the same, and
    a restart then resumes from the orders and the plan saved before."""
    plans = MemoryPlans()
    first = _planner(book, plans)
    await first.pull()
    saved = await first.plan()
    plans.fail = True
    newer = await first.plan()
    assert first.latest() == newer and "could not be saved" in caplog.text
    plans.fail = False
    again = _planner(book, plans)
    await again.resume()
    assert again.latest() == saved


async def test_an_unreadable_saved_plan_resumes_from_the_orders_alone(
    book: WorkOrderBook, caplog: pytest.LogCaptureFixture
) -> None:
    """A saved plan another version wrote (an unknown field) is logged and skipped; the open
    orders are re-queued all the same."""
    plans = MemoryPlans()
    first = _planner(book, plans)
    await first.pull()
    await first.plan()
    made_at, reason, text = plans.rows[-1]
    plans.rows[-1] = (made_at, reason, json.dumps({**json.loads(text), "surprise": 1}))
    again = _planner(book, plans)
    await again.resume()
    assert again.latest() is None and "cannot be read back" in caplog.text
    assert {j.work_order_id for j in again.queue.jobs.values()} == {
        o.id for o in book.orders.values() if o.state in OPEN_STATES
    }


# -- the pieces ----------------------------------------------------------------------------


async def test_plan_record_survives_a_json_round_trip(book: WorkOrderBook) -> None:
    """from_dict(to_dict) is the record again, after JSON too; a foreign dict is refused."""
    first = _planner(book, None, [_candidate(k, anomaly_flags=1) for k in range(3)] + CANDIDATES[3:])
    await first.pull()
    rec = await first.plan()
    assert any(s.anomaly_flags for r in rec.routes for s in r.stops)
    assert PlanRecord.from_dict(json.loads(json.dumps(rec.to_dict()))) == rec
    with pytest.raises(ValueError, match=r"Expected a plan record as PlanRecord\.to_dict writes it"):
        PlanRecord.from_dict({"plan_id": 1})


async def test_the_book_keeps_one_open_order_per_battery(book: WorkOrderBook) -> None:
    """create is idempotent for a battery with an open order (no second order, no event);
    once that order is closed, a new one is made; open_orders lists only open ones."""
    first = await book.create(WorkOrderKind.BATTERY_SWAP, "v1", "b1", 52.5, 13.4, 50.0, 10.0, "planner")
    again = await book.create(WorkOrderKind.INSPECTION, "v1", "b1", 52.5, 13.4, 1.0, 1.0, "planner")
    assert again == first and len(book.orders) == 1 and len(book.events) == 1
    await book.transition(first.id, S.CANCELLED, "operator")
    fresh = await book.create(WorkOrderKind.BATTERY_SWAP, "v1", "b1", 52.5, 13.4, 50.0, 10.0, "planner")
    assert fresh.id != first.id
    other = await book.create(WorkOrderKind.INSPECTION, "v2", "b2", 52.5, 13.4, 1.0, 1.0, "planner")
    assert [o.id for o in await book.open_orders()] == [fresh.id, other.id]


async def test_restore_rebuilds_jobs_from_orders(book: WorkOrderBook) -> None:
    """Each open order becomes its job (kind, place, value, id; a critical replacement stays
    critical); en route goes under way with its technician; restoring twice is a no-op;
    a closed order or two open orders for one battery are refused."""
    rep = await book.create(WorkOrderKind.BATTERY_REPLACEMENT, "v1", "b1", 52.5, 13.4, 90.0, 160.0, "p")
    swap = await book.create(WorkOrderKind.BATTERY_SWAP, "v2", "b2", 52.6, 13.5, 70.0, 17.5, "p")
    await book.transition(swap.id, S.ASSIGNED, "p", technician_id="t1")
    swap = await book.transition(swap.id, S.EN_ROUTE, "t1")
    queue = JobQueue()
    assert queue.restore(await book.open_orders()) == 2
    j1, j2 = queue.jobs["b1"], queue.jobs["b2"]
    assert (j1.kind, j1.skill, j1.severity, j1.work_order_id) == (
        WorkOrderKind.BATTERY_REPLACEMENT, "replace", Severity.CRITICAL, rep.id,
    )
    assert (j2.lat, j2.lon, j2.value, j2.priority, j2.batteries_needed) == (52.6, 13.5, 17.5, 70.0, 1)
    assert queue.in_progress == {"b2"} and queue.en_route_by == {"b2": "t1"}
    snapshot = dict(queue.jobs)
    queue.restore(await book.open_orders())
    assert queue.jobs == snapshot
    done = await book.transition(swap.id, S.DONE, "t1", swap=SwapRecord("v2", "b2", "b9"))
    with pytest.raises(ValueError, match=f"work order {swap.id} in state done"):
        JobQueue().restore([done])
    with pytest.raises(ValueError, match="at most one open work order per battery"):
        JobQueue().restore([rep, rep])

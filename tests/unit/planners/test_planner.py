"""The planner actor's logic without Ray: queue rules, plans, work orders, urgent re-plans."""

from __future__ import annotations

import asyncio
import itertools
import math
from dataclasses import replace

import pytest

from contracts.candidates import Candidate
from contracts.work_orders import (
    OPEN_STATES,
    SwapRecord,
    WorkOrder,
    WorkOrderError,
    WorkOrderKind,
    WorkOrderState,
    check_change,
)
from planners.job_queue import JobQueue, JobRules
from planners.planner import Planner, PlannerParams
from planners.resources import Depot, Technician
from planners.views import queue_entries, roster_of

# 2025-11-26 10:00 local (09:00 UTC): everyone's shift is on.
NOW_S = 1_764_147_600.0
CENTRE = (52.52, 13.405)


class MemoryOrders:
    """Work orders in memory, with the store's state-machine checks."""

    def __init__(self) -> None:
        self.orders: dict[int, WorkOrder] = {}
        self.events: list[tuple[int, str, str]] = []
        self._ids = itertools.count(1)

    async def create(self, kind, vehicle_id, battery_id, lat, lon, priority, value, actor) -> WorkOrder:  # type: ignore[no-untyped-def]
        # Like the store: a battery's open order is returned, not doubled.
        for o in self.orders.values():
            if o.battery_id == battery_id and o.state in OPEN_STATES:
                return o
        oid = next(self._ids)
        o = WorkOrder(oid, WorkOrderKind(kind), WorkOrderState.PLANNED, vehicle_id, battery_id, lat, lon,
                      priority, value, NOW_S, None, NOW_S)
        self.orders[oid] = o
        self.events.append((oid, "planned", actor))
        return o

    async def transition(self, order_id, new_state, actor, *, technician_id=None, swap=None, note=None, assigned_to=None) -> WorkOrder:  # type: ignore[no-untyped-def]
        o = self.orders[order_id]
        if assigned_to is not None and o.technician_id != assigned_to:
            raise WorkOrderError(f"order {order_id} is not assigned to {assigned_to}")
        check_change(o, WorkOrderState(new_state), technician_id=technician_id, swap=swap)
        tech = technician_id if new_state is WorkOrderState.ASSIGNED else (None if new_state is WorkOrderState.PLANNED else o.technician_id)
        o = replace(o, state=WorkOrderState(new_state), technician_id=tech)
        self.orders[order_id] = o
        self.events.append((order_id, str(new_state), actor))
        return o

    async def get(self, order_id: int) -> WorkOrder:
        return self.orders[order_id]

    async def open_orders(self) -> list[WorkOrder]:
        return [o for _, o in sorted(self.orders.items()) if o.state in OPEN_STATES]


def _candidate(k: int, **over: object) -> Candidate:
    angle = 2 * math.pi * k / 12
    base = dict(
        battery_id=f"b{k:03d}", vehicle_id=f"v{k:03d}",
        lat=CENTRE[0] + 0.02 * math.sin(angle), lon=CENTRE[1] + 0.03 * math.cos(angle),
        soc_pct=12.0, priority=80.0, lost_rides_6h=5.0, hours_to_empty=3.0,
        health_score=80.0, anomaly_flags=0, charging=False,
    )  # fmt: skip
    base.update(over)
    return Candidate(**base)  # type: ignore[arg-type]


def _planner(cands: list[Candidate], stock: int = 20, techs: int = 2, **params: object) -> tuple[Planner, MemoryOrders, list[SwapRecord]]:
    depots = [Depot(id="north", lat=CENTRE[0] + 0.02, lon=CENTRE[1], charged_stock=stock)]
    roster = [
        Technician(id=f"t{k}", depot_id="north", shift_start_h=7, shift_end_h=15, van_capacity=10,
                   skills=frozenset({"swap", "replace", "inspect"}))
        for k in range(techs)
    ]
    orders = MemoryOrders()
    swaps: list[SwapRecord] = []

    async def source(n: int) -> list[Candidate]:
        return cands[:n]

    async def apply(swap: SwapRecord) -> None:
        swaps.append(swap)

    p = Planner(roster, depots, orders, source, apply,
                PlannerParams(solve_time_limit_s=1.0, urgent_delay_s=0.05, **params),  # type: ignore[arg-type]
                now_s=lambda: NOW_S)
    return p, orders, swaps


def test_queue_rules_pick_the_job_kind() -> None:
    """Critical anomaly or poor health: replacement; soft anomaly: inspection; urgency: swap."""
    q = JobQueue(JobRules())
    assert q.job_for(_candidate(0, anomaly_flags=2), NOW_S).kind is WorkOrderKind.BATTERY_REPLACEMENT  # type: ignore[union-attr]
    assert q.job_for(_candidate(0, health_score=20.0), NOW_S).kind is WorkOrderKind.BATTERY_REPLACEMENT  # type: ignore[union-attr]
    assert q.job_for(_candidate(0, anomaly_flags=1), NOW_S).kind is WorkOrderKind.INSPECTION  # type: ignore[union-attr]
    swap = q.job_for(_candidate(0), NOW_S)
    assert swap is not None and swap.kind is WorkOrderKind.BATTERY_SWAP
    assert swap.deadline_s == pytest.approx(NOW_S + 3 * 3600)
    assert q.job_for(_candidate(0, priority=5.0), NOW_S) is None
    assert q.job_for(_candidate(0, charging=True), NOW_S) is None
    assert q.job_for(_candidate(0, vehicle_id=None), NOW_S) is None


async def test_plan_routes_jobs_and_creates_assigned_work_orders() -> None:
    """A pull and a plan: every served job gets an order assigned to its technician, with ETAs."""
    p, orders, _ = _planner([_candidate(k) for k in range(8)])
    assert await p.pull() == 8
    rec = await p.plan()
    served = [s for r in rec.routes for s in r.stops]
    assert len(served) + len(rec.dropped) == 8 and len(served) >= 6
    for r in rec.routes:
        last = r.depart_s
        for s in r.stops:
            assert s.eta_s >= last and s.service_start_s >= s.eta_s
            last = s.service_start_s + s.service_s
            o = orders.orders[s.work_order_id]  # type: ignore[index]
            assert o.state is WorkOrderState.ASSIGNED and o.technician_id == r.technician_id
    assert p.route_of(rec.routes[0].technician_id) == rec.routes[0]


async def test_van_stock_limits_swaps_and_drops_least_valuable() -> None:
    """With 3 charged batteries in the depot, only the 3 most valuable swaps are planned."""
    cands = [_candidate(k, lost_rides_6h=float(k + 1)) for k in range(8)]
    p, _, _ = _planner(cands, stock=3, techs=1)
    await p.pull()
    rec = await p.plan()
    served = sorted(s.battery_id for r in rec.routes for s in r.stops)
    assert served == ["b005", "b006", "b007"]
    assert rec.value_dropped > 0


async def test_done_swap_updates_twins_and_failed_visit_replans_urgently() -> None:
    """done with a swap record reaches the twins and frees the queue; failed re-queues urgently."""
    p, _, swaps = _planner([_candidate(k) for k in range(4)])
    await p.pull()
    rec = await p.plan()
    stop = rec.routes[0].stops[0] if rec.routes[0].stops else rec.routes[1].stops[0]
    oid = stop.work_order_id
    assert oid is not None
    await p.report(oid, WorkOrderState.EN_ROUTE, "tech")
    assert stop.battery_id in p.queue.in_progress
    swap = SwapRecord(stop.vehicle_id, stop.battery_id, "spare-1")
    await p.report(oid, WorkOrderState.DONE, "tech", swap=swap)
    assert swaps == [swap] and stop.battery_id not in p.queue.jobs

    other = next(s for r in rec.routes for s in r.stops if s.battery_id != stop.battery_id)
    await p.report(other.work_order_id, WorkOrderState.EN_ROUTE, "tech")  # type: ignore[arg-type]
    await p.report(other.work_order_id, WorkOrderState.FAILED, "tech", note="vehicle not found")  # type: ignore[arg-type]
    assert other.battery_id in p.queue.jobs and p.queue.jobs[other.battery_id].work_order_id is None
    assert p._urgent.is_set()


async def test_critical_push_triggers_an_urgent_replan_in_the_loop() -> None:
    """A shard pushing a critical anomaly gets it planned within seconds, not at the next period."""
    p, _, _ = _planner([_candidate(k) for k in range(3)], plan_interval_s=3600.0)
    task = asyncio.create_task(p.run_forever())
    try:
        for _ in range(100):
            if p.plans:
                break
            await asyncio.sleep(0.1)
        assert p.plans and p.plans[-1].reason == "scheduled"
        p.push([_candidate(9, anomaly_flags=2)])
        for _ in range(100):
            if any(r.reason == "urgent" for r in p.plans):
                break
            await asyncio.sleep(0.1)
        rec = next(r for r in reversed(p.plans) if r.reason == "urgent")
        assert "b009" in [s.battery_id for r in rec.routes for s in r.stops]
        assert rec.warm_started
        # A full round follows the urgent one in the background, warm-started from it.
        for _ in range(100):
            if p.plans[-1].reason == "follow-up":
                break
            await asyncio.sleep(0.1)
        assert p.plans[-1].reason == "follow-up"
        assert "b009" in [s.battery_id for r in p.plans[-1].routes for s in r.stops]
    finally:
        task.cancel()


async def test_an_urgent_round_inserts_into_the_plan_in_force() -> None:
    """plan_urgent keeps the routes in force (stops under way first on their technician's
    route) and adds the new critical job, without a full solve."""
    p, orders, _ = _planner([_candidate(k) for k in range(6)])
    await p.pull()
    first = await p.plan()
    route = next(r for r in first.routes if r.stops)
    stop = route.stops[0]
    await p.report(stop.work_order_id, WorkOrderState.EN_ROUTE, "tech")  # type: ignore[arg-type]
    p.push([_candidate(7, anomaly_flags=2)])
    rec = await p.plan_urgent()
    assert rec.reason == "urgent" and rec.warm_started
    mine = next(r for r in rec.routes if r.technician_id == route.technician_id)
    assert mine.stops[0].battery_id == stop.battery_id
    new = next(s for r in rec.routes for s in r.stops if s.battery_id == "b007")
    assert orders.orders[new.work_order_id].state is WorkOrderState.ASSIGNED  # type: ignore[index]
    # Everything the first plan served is still served.
    served = {s.battery_id for r in rec.routes for s in r.stops}
    assert {s.battery_id for r in first.routes for s in r.stops} <= served


async def test_a_full_round_that_went_stale_while_solving_is_brought_up_to_date() -> None:
    """A critical job pushed while a full solve searches is in the plan that solve commits
    (an insertion pass on a fresh snapshot), and a job done meanwhile is not."""
    p, _, _ = _planner([_candidate(k) for k in range(6)])
    await p.pull()
    first = await p.plan()
    done = next(s for r in first.routes for s in r.stops)
    solving = asyncio.create_task(p.plan("scheduled"))
    await asyncio.sleep(0.3)  # the solve is under way (1 s budget)
    assert not solving.done()
    p.push([_candidate(8, anomaly_flags=2)])
    await p.report(done.work_order_id, WorkOrderState.EN_ROUTE, "tech")  # type: ignore[arg-type]
    swap = SwapRecord(done.vehicle_id, done.battery_id, "spare-1")
    await p.report(done.work_order_id, WorkOrderState.DONE, "tech", swap=swap)  # type: ignore[arg-type]
    rec = await solving
    served = [s.battery_id for r in rec.routes for s in r.stops]
    assert "b008" in served and done.battery_id not in served
    assert done.battery_id not in rec.dropped


async def test_stops_under_way_stay_with_their_technician() -> None:
    """An en-route stop is locked: the re-plan keeps it first on the same technician's route."""
    p, _, _ = _planner([_candidate(k) for k in range(6)])
    await p.pull()
    first = await p.plan()
    route = next(r for r in first.routes if r.stops)
    stop = route.stops[-1]
    await p.report(stop.work_order_id, WorkOrderState.EN_ROUTE, "tech")  # type: ignore[arg-type]
    again = await p.plan()
    mine = next(r for r in again.routes if r.technician_id == route.technician_id)
    assert mine.stops[0].battery_id == stop.battery_id


async def test_read_views_answer_the_queue_and_roster_as_records() -> None:
    """What the actor answers readers: open jobs most valuable first, each flagged once its
    order is en route, and the roster as given (technicians, depots)."""
    cands = [_candidate(k, lost_rides_6h=float(k + 1)) for k in range(3)]
    p, _, _ = _planner(cands)
    await p.pull()
    rec = await p.plan()
    stop = next(s for r in rec.routes for s in r.stops)
    assert stop.work_order_id is not None
    await p.report(stop.work_order_id, WorkOrderState.EN_ROUTE, "tech")
    entries = queue_entries(p)
    assert [e.job.battery_id for e in entries] == ["b002", "b001", "b000"]
    assert {e.job.battery_id for e in entries if e.in_progress} == {stop.battery_id}
    roster = roster_of(p)
    assert [t.id for t in roster.technicians] == ["t0", "t1"] and [d.id for d in roster.depots] == ["north"]


def test_a_critical_alert_is_an_urgent_replacement_job() -> None:
    """A candidate the alert manager pushes for a firing critical alert (no anomaly flag, a
    healthy score) becomes a critical battery replacement and asks for an urgent re-plan."""
    p, _, _ = _planner([])
    assert p.push([_candidate(5, priority=0.0, critical_alert="pack_overtemp")]) == 1
    job = p.queue.jobs["b005"]
    assert job.kind is WorkOrderKind.BATTERY_REPLACEMENT and job.severity.value == "critical"
    assert p._urgent.is_set()


async def test_a_stop_under_way_stays_feasible_with_an_empty_van_and_a_passed_deadline() -> None:
    """A committed stop is kept even when the planner's estimate of the van is empty and the
    job's deadline passed: before, the locked stop made the whole problem infeasible and no
    plan came back at all (found by the what-if loop)."""
    p, _, _ = _planner([_candidate(k, hours_to_empty=0.01) for k in range(4)], stock=4, techs=1)
    await p.pull()
    first = await p.plan()
    stop = first.routes[0].stops[-1]  # the last stop: reached after its 36 s deadline
    await p.report(stop.work_order_id, WorkOrderState.EN_ROUTE, "tech")  # type: ignore[arg-type]
    p._shifts[first.routes[0].technician_id] = replace(p._shifts[first.routes[0].technician_id], used=99)
    again = await p.plan()
    assert again.routes[0].stops[0].battery_id == stop.battery_id


async def test_a_stop_under_way_with_a_technician_off_shift_goes_to_no_one_else() -> None:
    """An en-route job whose technician left the shift is not routed to another technician."""
    p, _, _ = _planner([_candidate(k) for k in range(6)], techs=2)
    await p.pull()
    first = await p.plan()
    route = next(r for r in first.routes if r.stops)
    stop = route.stops[0]
    await p.report(stop.work_order_id, WorkOrderState.EN_ROUTE, "tech")  # type: ignore[arg-type]
    del p.technicians[route.technician_id]  # off shift from now on
    again = await p.plan()
    assert all(s.battery_id != stop.battery_id for r in again.routes for s in r.stops)
    assert stop.battery_id not in again.dropped


def test_no_solution_error_crosses_a_process_boundary() -> None:
    """Solves run in a worker process: the error must unpickle (it broke the pool before)."""
    import pickle

    from planners.errors import NoSolutionError

    err = pickle.loads(pickle.dumps(NoSolutionError("no plan", "ROUTING_FAIL")))
    assert isinstance(err, NoSolutionError) and err.status == "ROUTING_FAIL" and str(err) == "no plan"


async def test_a_round_routes_at_most_max_jobs_the_most_valuable() -> None:
    """max_jobs_per_round keeps the critical and most valuable jobs; the rest stay queued."""
    cands = [_candidate(k, lost_rides_6h=float(k + 1)) for k in range(8)] + [_candidate(8, anomaly_flags=2)]
    p, _, _ = _planner(cands, max_jobs_per_round=3)
    await p.pull()
    rec = await p.plan()
    routed = {s.battery_id for r in rec.routes for s in r.stops} | set(rec.dropped)
    assert routed == {"b008", "b007", "b006"} and rec.jobs == 3
    assert len(p.queue.jobs) == 9


async def test_a_reported_van_stock_bounds_the_next_plan() -> None:
    """report_van_stock replaces the planner's estimate of a van's charged batteries."""
    p, _, _ = _planner([_candidate(k, lost_rides_6h=float(k + 1)) for k in range(8)], stock=20, techs=1)
    await p.pull()
    assert sum(len(r.stops) for r in (await p.plan()).routes) > 2
    p.report_van_stock("t0", 2)
    rec = await p.plan()
    assert sorted(s.battery_id for r in rec.routes for s in r.stops) == ["b006", "b007"]
    with pytest.raises(KeyError):
        p.report_van_stock("nobody", 1)

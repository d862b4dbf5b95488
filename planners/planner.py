"""The planner: fleet-wide priorities in, technicians' routes and work orders out.

Plain asyncio with injected seams (where candidates come from, where work orders live, how
a done swap reaches the twins), so it is tested without Ray; :mod:`runtime.planner` runs it
as a named, detached Ray actor.

One planning round (:meth:`Planner.plan`):

1. the open jobs of the :class:`~planners.job_queue.JobQueue` and the technicians on shift now
   become a :class:`~planners.problem.RoutingProblem`: depots and job sites as locations,
   haversine (or OSRM) travel, each van's capacity the charged batteries it carries (its
   share of its depot's stock, at most ``van_capacity``), each job's drop penalty its value;
2. stops already under way (work order en route) are locked at the head of their route, and
   the previous plan warm-starts the search;
3. the solve runs in a worker process (:func:`~planners.routing.solve_async`), never on the
   event loop;
4. work orders follow the plan: new ones are created and assigned, moved ones re-assigned,
   dropped ones un-assigned.

Re-plans run every ``plan_interval_s`` and, within ``urgent_delay_s``, after an urgent event
(a critical anomaly pushed by a shard, a technician reporting a failed visit).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np

from contracts.candidates import Candidate
from contracts.work_orders import SwapRecord, WorkOrder, WorkOrderKind, WorkOrderState
from planners.job_queue import JobQueue, QueuedJob, Severity
from planners.plan import Plan
from planners.problem import Job, RoutingProblem, Vehicle
from planners.resources import Depot, Technician, shift_window_s
from planners.routing import solve_async
from planners.routing_params import RoutingParams
from planners.travel import HaversineTravel, TravelMatrixSource

__all__ = [
    "PlanRecord",
    "PlannedStop",
    "Planner",
    "PlannerParams",
    "TechnicianRoute",
    "WorkOrderSink",
]

log = logging.getLogger(__name__)
_ACTOR = "planner"


class WorkOrderSink(Protocol):
    """What the planner needs of :class:`store.work_order_store.WorkOrderStore`."""

    async def create(
        self, kind: WorkOrderKind, vehicle_id: str, battery_id: str, lat: float, lon: float,
        priority: float, value: float, actor: str,
    ) -> WorkOrder: ...  # fmt: skip

    async def transition(
        self, order_id: int, new_state: WorkOrderState, actor: str, *,
        technician_id: str | None = None, swap: SwapRecord | None = None, note: str | None = None,
        assigned_to: str | None = None,
    ) -> WorkOrder: ...  # fmt: skip

    async def get(self, order_id: int) -> WorkOrder: ...


@dataclass(frozen=True)
class PlannerParams:
    """Knobs of the planner.

    Parameters
    ----------
    plan_interval_s
        Period of scheduled re-plans (each pulls fresh candidates first).
    urgent_delay_s
        An urgent event re-plans after this long (events arriving together share a round).
    solve_time_limit_s
        Guided-local-search budget of one round.
    candidates_per_shard
        How many top-priority batteries each shard reports per pull.
    penalty_per_value
        Drop penalty (metres of driving) per euro of job value. A technician-hour and a van
        cost about 1.8 EUR per km driven at city speed, so 500 m per euro: a swap saving
        three rides (10.5 EUR) is worth a 5 km detour.
    utc_offset_h
        Local time of the roster's shifts.
    """

    plan_interval_s: float = 900.0
    urgent_delay_s: float = 2.0
    solve_time_limit_s: float = 20.0
    candidates_per_shard: int = 300
    penalty_per_value: int = 500
    utc_offset_h: float = 1.0

    def __post_init__(self) -> None:
        if min(self.plan_interval_s, self.solve_time_limit_s) <= 0 or self.urgent_delay_s < 0:
            raise ValueError(
                f"Expected positive plan_interval_s and solve_time_limit_s and urgent_delay_s >= 0, "
                f"got {self.plan_interval_s}, {self.solve_time_limit_s}, {self.urgent_delay_s}."
            )
        if self.candidates_per_shard < 1 or self.penalty_per_value < 1:
            raise ValueError(
                f"Expected candidates_per_shard >= 1 and penalty_per_value >= 1, got "
                f"{self.candidates_per_shard} and {self.penalty_per_value}."
            )


@dataclass(frozen=True)
class PlannedStop:
    """One visit of a technician's route, with its expected arrival."""

    battery_id: str
    vehicle_id: str
    kind: str
    lat: float
    lon: float
    eta_s: float
    service_start_s: float
    service_s: int
    value: float
    work_order_id: int | None
    #: The battery's facts when it was queued (from its shard's report), for the technician.
    soc_pct: float | None = None
    health_score: float | None = None
    anomaly_flags: tuple[str, ...] = ()


@dataclass(frozen=True)
class TechnicianRoute:
    """A technician's day as planned: depart, stops with ETAs, return."""

    technician_id: str
    depot_id: str
    depart_s: float
    return_s: float
    distance_m: int
    batteries_loaded: int
    stops: tuple[PlannedStop, ...]


@dataclass(frozen=True)
class PlanRecord:
    """One planning round's result."""

    plan_id: int
    reason: str
    created_at_s: float
    routes: tuple[TechnicianRoute, ...]
    dropped: tuple[str, ...]
    jobs: int
    value_collected: float
    value_dropped: float
    distance_m: int
    solve_time_s: float
    warm_started: bool

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["routes"] = [
            {**r.__dict__, "stops": [s.__dict__ for s in r.stops]} for r in self.routes
        ]
        out["dropped"] = list(self.dropped)
        return out


CandidateSource = Callable[[int], Awaitable[list[Candidate]]]
SwapApplier = Callable[[SwapRecord], Awaitable[None]]


@dataclass
class _Shift:
    """A technician's van for the current shift: batteries loaded and used so far."""

    start_s: float
    loaded: int
    used: int = 0


class Planner:
    """Keeps the job queue and the technicians' plans (see the module docstring).

    Parameters
    ----------
    technicians, depots
        The roster and the yards.
    orders
        Where work orders live.
    candidates
        ``await candidates(n)``: the top ``n`` batteries of every shard.
    apply_swap
        Tells the twins which battery is now in which vehicle.
    params
        Planner knobs; ``routing`` the solver's.
    travel
        Travel-matrix source (haversine by default).
    """

    def __init__(
        self,
        technicians: Sequence[Technician],
        depots: Sequence[Depot],
        orders: WorkOrderSink,
        candidates: CandidateSource,
        apply_swap: SwapApplier,
        params: PlannerParams = PlannerParams(),
        routing: RoutingParams | None = None,
        travel: TravelMatrixSource | None = None,
        queue: JobQueue | None = None,
        now_s: Callable[[], float] = time.time,
    ) -> None:
        self.technicians = {t.id: t for t in technicians}
        self.depots = {d.id: d for d in depots}
        missing = sorted({t.depot_id for t in technicians} - set(self.depots))
        if missing:
            raise ValueError(f"Expected every technician's depot among {sorted(self.depots)}, missing {missing}.")
        self.orders = orders
        self.candidates = candidates
        self.apply_swap = apply_swap
        self.params = params
        self.routing = routing or RoutingParams(time_limit_s=params.solve_time_limit_s)
        self.travel: TravelMatrixSource = travel or HaversineTravel(detour_factor=1.3, speed_kmh=20.0)
        self.queue = queue or JobQueue()
        self.now_s = now_s
        self.plans: deque[PlanRecord] = deque(maxlen=20)
        self._shifts: dict[str, _Shift] = {}
        self._lock = asyncio.Lock()
        self._urgent = asyncio.Event()
        self._plan_count = 0

    # ------------------------------------------------------------------ inputs
    async def pull(self) -> int:
        """Scheduled pull: the shards' top candidates into the queue; returns how many came."""
        cands = await self.candidates(self.params.candidates_per_shard)
        self.queue.update(cands, self.now_s())
        return len(cands)

    def push(self, candidates: Sequence[Candidate]) -> int:
        """Shards push urgent candidates between pulls; a new critical job triggers a re-plan."""
        escalated = self.queue.update(list(candidates), self.now_s())
        critical = [j for j in escalated if j.severity is Severity.CRITICAL]
        if critical:
            log.info("urgent re-plan: %d critical job(s), e.g. %s", len(critical), critical[0].battery_id)
            self._urgent.set()
        return len(critical)

    async def report(
        self,
        order_id: int,
        state: WorkOrderState,
        actor: str,
        *,
        technician_id: str | None = None,
        swap: SwapRecord | None = None,
        note: str | None = None,
        assigned_to: str | None = None,
    ) -> WorkOrder:
        """A technician's (or operator's) change to a work order, with its consequences.

        ``en_route`` locks the stop in later plans; ``done`` takes the job off the queue and,
        for a swap, moves the batteries in the twins and counts the battery off the van;
        ``failed`` puts the job back and re-plans urgently; ``cancelled`` drops the job.
        With ``assigned_to``, only an order assigned to that technician may change.
        """
        order = await self.orders.transition(
            order_id, WorkOrderState(state), actor, technician_id=technician_id, swap=swap,
            note=note, assigned_to=assigned_to,
        )  # fmt: skip
        battery = order.battery_id
        if order.state is WorkOrderState.EN_ROUTE:
            self.queue.in_progress.add(battery)
        elif order.state is WorkOrderState.DONE:
            self.queue.remove(battery)
            if swap is not None:
                await self.apply_swap(swap)
                if order.technician_id in self._shifts:
                    self._shifts[order.technician_id].used += 1
        elif order.state is WorkOrderState.FAILED:
            self.queue.in_progress.discard(battery)
            job = self.queue.jobs.get(battery)
            if job is not None:
                self.queue.jobs[battery] = replace(job, work_order_id=None)
            self._urgent.set()
        elif order.state is WorkOrderState.CANCELLED:
            self.queue.remove(battery)
        return order

    # ------------------------------------------------------------------ planning
    def _on_shift(self, now: float) -> list[tuple[Technician, float, float]]:
        out = []
        for t in sorted(self.technicians.values(), key=lambda t: t.id):
            window = shift_window_s(t, now, self.params.utc_offset_h)
            if window is not None:
                out.append((t, max(window[0], now), window[1]))
        return out

    def _van_loads(self, techs: list[tuple[Technician, float, float]]) -> dict[str, int]:
        """Batteries left in each van: its share of the depot stock, loaded once per shift."""
        per_depot: dict[str, int] = {}
        for t, _, _ in techs:
            per_depot[t.depot_id] = per_depot.get(t.depot_id, 0) + 1
        loads = {}
        for t, start, _ in techs:
            shift = self._shifts.get(t.id)
            # A new shift (not seen, or its start is half a day after the one on record)
            # loads the van afresh; within a shift, done swaps count the load down.
            if shift is None or start > shift.start_s + 12 * 3600:
                share = self.depots[t.depot_id].charged_stock // per_depot[t.depot_id]
                shift = _Shift(start_s=start, loaded=min(t.van_capacity, share))
                self._shifts[t.id] = shift
            loads[t.id] = max(0, shift.loaded - shift.used)
        return loads

    async def plan(self, reason: str = "manual") -> PlanRecord:
        """One planning round (see the module docstring); serialised."""
        async with self._lock:
            return await self._plan(reason)

    async def _plan(self, reason: str) -> PlanRecord:
        now = self.now_s()
        t0 = math.floor(now)
        jobs = self.queue.open_jobs()
        techs = self._on_shift(now)
        self._plan_count += 1
        if not jobs or not techs:
            rec = PlanRecord(self._plan_count, reason, now, (), tuple(j.battery_id for j in jobs),
                             len(jobs), 0.0, sum(j.value for j in jobs), 0, 0.0, False)  # fmt: skip
            self.plans.append(rec)
            return rec
        depot_ids = sorted({t.depot_id for t, _, _ in techs})
        depot_node = {d: k for k, d in enumerate(depot_ids)}
        points = np.array(
            [[self.depots[d].lat, self.depots[d].lon] for d in depot_ids] + [[j.lat, j.lon] for j in jobs]
        )
        travel = await asyncio.to_thread(self.travel.matrices, points)
        loads = self._van_loads(techs)
        vehicles = [
            Vehicle(
                start_node=depot_node[t.depot_id], shift_start_s=int(start - t0), shift_end_s=int(end - t0),
                capacity=loads[t.id], fixed_cost=t.fixed_cost_m, skills=t.skills, name=t.id,
            )
            for t, start, end in techs
        ]
        nd = len(depot_ids)
        routing_jobs = [
            Job(
                node=nd + k, demand=j.batteries_needed, service_s=j.service_s,
                latest_s=None if j.deadline_s is None or j.deadline_s <= now else int(j.deadline_s - t0),
                drop_penalty=max(1, round(j.value * self.params.penalty_per_value)),
                required_skills=frozenset({j.skill}), name=j.battery_id,
            )
            for k, j in enumerate(jobs)
        ]
        problem = RoutingProblem(travel.duration_s, travel.distance_m, tuple(vehicles), tuple(routing_jobs))
        job_index = {j.battery_id: k for k, j in enumerate(jobs)}
        tech_index = {t.id: k for k, (t, _, _) in enumerate(techs)}
        locked, initial = self._locked_and_initial(jobs, job_index, tech_index)
        result = await solve_async(problem, self.routing, initial_routes=initial, locked=locked)
        record = self._record(reason, now, t0, result, jobs, techs, loads, depot_ids)
        record = await self._sync_orders(record, jobs, result, techs)
        self.plans.append(record)
        log.info(
            "plan %d (%s): %d/%d jobs, value %.0f, %.1f km, %.1f s",
            record.plan_id, reason, len(jobs) - len(record.dropped), len(jobs),
            record.value_collected, record.distance_m / 1000, record.solve_time_s,
        )
        return record

    def _locked_and_initial(
        self, jobs: list[QueuedJob], job_index: dict[str, int], tech_index: dict[str, int]
    ) -> tuple[dict[int, list[int]], list[list[int]] | None]:
        """Stops under way stay first on their route; the last plan warm-starts the search."""
        locked: dict[int, list[int]] = {}
        last = self.plans[-1] if self.plans else None
        initial: list[list[int]] | None = None
        if last is not None:
            initial = [[] for _ in tech_index]
            for route in last.routes:
                k = tech_index.get(route.technician_id)
                if k is None:
                    continue
                for stop in route.stops:
                    j = job_index.get(stop.battery_id)
                    if j is None:
                        continue
                    if stop.battery_id in self.queue.in_progress:
                        locked.setdefault(k, []).append(j)
                    else:
                        initial[k].append(j)
            # The solver wants each warm-start route to begin with that vehicle's locked stops.
            initial = [locked.get(k, []) + r for k, r in enumerate(initial)]
            if not any(initial):
                initial = None
        return locked, initial

    def _record(
        self, reason: str, now: float, t0: int, plan: Plan, jobs: list[QueuedJob],
        techs: list[tuple[Technician, float, float]], loads: dict[str, int], depot_ids: list[str],
    ) -> PlanRecord:  # fmt: skip
        routes = []
        for route in plan.routes:
            tech = techs[route.vehicle][0]
            stops = tuple(
                PlannedStop(
                    battery_id=jobs[s.job].battery_id, vehicle_id=jobs[s.job].vehicle_id,
                    kind=jobs[s.job].kind.value, lat=jobs[s.job].lat, lon=jobs[s.job].lon,
                    eta_s=t0 + s.arrival_s, service_start_s=t0 + s.start_s,
                    service_s=jobs[s.job].service_s, value=jobs[s.job].value,
                    work_order_id=jobs[s.job].work_order_id, soc_pct=jobs[s.job].soc_pct,
                    health_score=jobs[s.job].health_score, anomaly_flags=jobs[s.job].anomaly_flags,
                )
                for s in route.stops
            )
            routes.append(TechnicianRoute(
                technician_id=tech.id, depot_id=tech.depot_id, depart_s=t0 + route.start_s,
                return_s=t0 + route.end_s, distance_m=route.distance, batteries_loaded=loads[tech.id],
                stops=stops,
            ))  # fmt: skip
        dropped = tuple(jobs[j].battery_id for j in plan.dropped)
        value_dropped = sum(jobs[j].value for j in plan.dropped)
        return PlanRecord(
            self._plan_count, reason, now, tuple(routes), dropped, len(jobs),
            sum(j.value for j in jobs) - value_dropped, value_dropped, plan.total_distance,
            plan.solve_time_s, plan.warm_started,
        )  # fmt: skip

    async def _sync_orders(
        self, record: PlanRecord, jobs: list[QueuedJob], plan: Plan, techs: list[tuple[Technician, float, float]]
    ) -> PlanRecord:
        """Make the work orders match the plan; fill the order ids into the record."""
        by_battery = {j.battery_id: j for j in jobs}
        ids: dict[str, int] = {}
        for route in record.routes:
            for stop in route.stops:
                job = by_battery[stop.battery_id]
                if stop.battery_id in self.queue.in_progress and job.work_order_id is not None:
                    ids[stop.battery_id] = job.work_order_id
                    continue
                order_id = job.work_order_id
                if order_id is None:
                    order = await self.orders.create(
                        job.kind, job.vehicle_id, job.battery_id, job.lat, job.lon, job.priority, job.value, _ACTOR
                    )
                    order_id = order.id
                else:
                    order = await self.orders.get(order_id)
                if order.state is WorkOrderState.ASSIGNED and order.technician_id != route.technician_id:
                    order = await self.orders.transition(order_id, WorkOrderState.PLANNED, _ACTOR, note="re-planned")
                if order.state is WorkOrderState.PLANNED:
                    await self.orders.transition(
                        order_id, WorkOrderState.ASSIGNED, _ACTOR, technician_id=route.technician_id
                    )
                ids[stop.battery_id] = order_id
                self.queue.jobs[stop.battery_id] = replace(job, work_order_id=order_id)
        for battery in record.dropped:
            job = by_battery[battery]
            if job.work_order_id is not None:
                order = await self.orders.get(job.work_order_id)
                if order.state is WorkOrderState.ASSIGNED:
                    await self.orders.transition(
                        order.id, WorkOrderState.PLANNED, _ACTOR, note="dropped from the plan"
                    )
        routes = tuple(
            replace(r, stops=tuple(replace(s, work_order_id=ids.get(s.battery_id)) for s in r.stops))
            for r in record.routes
        )
        return replace(record, routes=routes)

    # ------------------------------------------------------------------ reads
    def route_of(self, technician_id: str) -> TechnicianRoute | None:
        """The technician's route in the latest plan (``None`` if not in it)."""
        if technician_id not in self.technicians:
            raise KeyError(f"No technician {technician_id!r}; have {sorted(self.technicians)}.")
        if not self.plans:
            return None
        return next((r for r in self.plans[-1].routes if r.technician_id == technician_id), None)

    def latest(self) -> PlanRecord | None:
        return self.plans[-1] if self.plans else None

    # ------------------------------------------------------------------ loop
    async def run_forever(self) -> None:
        """Pull and plan every ``plan_interval_s``; urgent events re-plan within seconds."""
        p = self.params
        next_scheduled = 0.0
        while True:
            now = time.monotonic()
            try:
                if now >= next_scheduled:
                    next_scheduled = now + p.plan_interval_s
                    await self.pull()
                    await self.plan("scheduled")
                elif self._urgent.is_set():
                    await asyncio.sleep(p.urgent_delay_s)  # let events that come together gather
                    self._urgent.clear()
                    await self.plan("urgent")
            except Exception:
                log.exception("planning round failed; retrying next period")
            # Sleep until the next scheduled round, or less if an urgent event arrives.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._urgent.wait(), max(0.0, next_scheduled - time.monotonic()))


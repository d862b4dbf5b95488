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

Restarts (:meth:`Planner.resume`, run once before the first plan or report): the planner's
memory is rebuilt from what it persisted. The open work orders become the job queue again,
each job carrying its order's id and en-route ones marked under way, so the next plan re-uses
every order and never makes a second one for a battery; the newest saved plan (with a
:class:`PlanSink`) is the plan in force again, so technicians keep their routes and stops
under way stay locked to their technician.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np

from contracts.candidates import Candidate
from contracts.work_orders import SwapRecord, WorkOrder, WorkOrderKind, WorkOrderState
from planners.insertion import solve_urgent_async, warm_up_async
from planners.job_queue import JobQueue, QueuedJob, Severity
from planners.plan import Plan
from planners.problem import Job, RoutingProblem, Vehicle
from planners.resources import Depot, Technician, shift_window_s
from planners.routing import solve_async
from planners.routing_params import ENGINES, RoutingParams
from planners.travel import HaversineTravel, TravelMatrixSource

__all__ = [
    "DEFAULT_MAX_JOBS_PER_ROUND",
    "PlanRecord",
    "PlanSink",
    "PlannedStop",
    "Planner",
    "PlannerParams",
    "TechnicianRoute",
    "WorkOrderSink",
]

log = logging.getLogger(__name__)
_ACTOR = "planner"
#: How far a technician's shift may run over to finish a stop already under way.
LOCKED_OVERTIME_S = 3600
#: Production's cap on the jobs one round routes (:attr:`PlannerParams.max_jobs_per_round`
#: says why 600): the most swaps 20 vans of 30 batteries carry in a day.
DEFAULT_MAX_JOBS_PER_ROUND = 600


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

    async def open_orders(self) -> list[WorkOrder]:
        """Every planned, assigned or en-route order (at most one per battery)."""
        ...


class PlanSink(Protocol):
    """Where plans are kept across restarts (:class:`store.plan_store.PlanStore`).

    A plan travels as :meth:`PlanRecord.to_dict` makes it, a plain JSON object, so the
    store needs to know nothing of the planner.
    """

    async def save(self, made_at_s: float, reason: str, record: Mapping[str, Any]) -> int: ...

    async def latest(self) -> dict[str, Any] | None: ...


@dataclass(frozen=True)
class PlannerParams:
    """Knobs of the planner.

    Parameters
    ----------
    plan_interval_s
        Period of scheduled re-plans (each pulls fresh candidates first).
    urgent_delay_s
        An urgent event re-plans after this long (events arriving together share a round).
    urgent_improve_s
        Search budget of an urgent round after its insertion pass
        (:func:`~planners.insertion.solve_urgent`); a full round follows in the background.
    solve_time_limit_s
        Search budget of one round.
    routing_engine
        The routing engine (:attr:`~planners.routing_params.RoutingParams.engine`):
        ``"pyvrp"`` (the default: it collected more value than OR-Tools on every measured
        day, BENCHMARKS.md) or ``"ortools"``.
    candidates_per_shard
        How many top-priority batteries each shard reports per pull.
    penalty_per_value
        Drop penalty (metres of driving) per euro of job value. A technician-hour and a van
        cost about 1.8 EUR per km driven at city speed, so 500 m per euro: a swap saving
        three rides (10.5 EUR) is worth a 5 km detour.
    utc_offset_h
        Local time of the roster's shifts.
    max_jobs_per_round
        Most jobs one round routes (``None``: all): stops under way first, then the
        critical ones, then by value; the rest stay queued for the next round. Solve time
        grows faster than linearly with the jobs, and the round's travel matrices (n x n,
        pickled to the solver process) quadratically: 4,046 jobs took the planner actor to
        3.1 GB and its solver to 3.7 GB. The default, 600, is the most swaps 20 vans of 30
        batteries carry in a day (``bms bench plan``'s day, where the search served 557-584
        of 1,000 candidates): a roster up to that size is still offered about a day's work,
        while a fleet with thousands of flagged twins costs a round no more than that day.
        A bigger roster wants it raised (``[planner] max_jobs_per_round``).
    """

    plan_interval_s: float = 900.0
    urgent_delay_s: float = 2.0
    urgent_improve_s: float = 1.0
    solve_time_limit_s: float = 20.0
    routing_engine: str = "pyvrp"
    candidates_per_shard: int = 300
    penalty_per_value: int = 500
    utc_offset_h: float = 1.0
    max_jobs_per_round: int | None = DEFAULT_MAX_JOBS_PER_ROUND

    def __post_init__(self) -> None:
        if min(self.plan_interval_s, self.solve_time_limit_s) <= 0 or self.urgent_delay_s < 0:
            raise ValueError(
                f"Expected positive plan_interval_s and solve_time_limit_s and urgent_delay_s >= 0, "
                f"got {self.plan_interval_s}, {self.solve_time_limit_s}, {self.urgent_delay_s}."
            )
        if not self.urgent_improve_s >= 0:
            raise ValueError(f"Expected urgent_improve_s >= 0, got {self.urgent_improve_s}.")
        if self.routing_engine not in ENGINES:
            raise ValueError(f"Expected routing_engine in {list(ENGINES)}, got {self.routing_engine!r}.")
        if self.max_jobs_per_round is not None and self.max_jobs_per_round < 1:
            raise ValueError(f"Expected max_jobs_per_round >= 1 or None, got {self.max_jobs_per_round}.")
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
        """The record as JSON values (tuples as lists); :meth:`from_dict` reads it back."""
        out = dict(self.__dict__)
        out["routes"] = [
            {
                **r.__dict__,
                "stops": [{**s.__dict__, "anomaly_flags": list(s.anomaly_flags)} for s in r.stops],
            }
            for r in self.routes
        ]
        out["dropped"] = list(self.dropped)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PlanRecord:
        """The record :meth:`to_dict` made, also after a JSON round trip.

        Raises
        ------
        ValueError
            ``data`` lacks a field, or has one the record does not know (a plan saved by
            another version of the planner).
        """
        try:
            routes = tuple(
                TechnicianRoute(**{
                    **r,
                    "stops": tuple(
                        PlannedStop(**{**s, "anomaly_flags": tuple(s.get("anomaly_flags", ()))})
                        for s in r["stops"]
                    ),
                })
                for r in data["routes"]
            )  # fmt: skip
            return cls(**{**data, "routes": routes, "dropped": tuple(data["dropped"])})
        except (KeyError, TypeError) as err:
            raise ValueError(
                f"Expected a plan record as PlanRecord.to_dict writes it, got one with keys "
                f"{sorted(data)}: {err!r}"
            ) from err


CandidateSource = Callable[[int], Awaitable[list[Candidate]]]
SwapApplier = Callable[[SwapRecord], Awaitable[None]]


@dataclass
class _Shift:
    """A technician's van for the current shift: batteries loaded and used so far."""

    start_s: float
    loaded: int
    used: int = 0


@dataclass(frozen=True, eq=False)
class _Round:
    """One round's snapshot: when, who is on shift, which jobs, and the problem they make
    (``None`` when there is nothing to route)."""

    now: float
    t0: int
    techs: list[tuple[Technician, float, float]]
    jobs: list[QueuedJob]
    loads: dict[str, int]
    depot_ids: list[str]
    problem: RoutingProblem | None
    locked: dict[int, list[int]]
    initial: list[list[int]] | None


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
    plan_store
        Where each plan is saved and the newest is read back on :meth:`resume`; ``None``
        (what-if runs, tests) keeps plans in memory only.
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
        plan_store: PlanSink | None = None,
    ) -> None:
        self.technicians = {t.id: t for t in technicians}
        self.depots = {d.id: d for d in depots}
        missing = sorted({t.depot_id for t in technicians} - set(self.depots))
        if missing:
            raise ValueError(
                f"Expected every technician's depot among {sorted(self.depots)}, missing {missing}."
            )
        self.orders = orders
        self.candidates = candidates
        self.apply_swap = apply_swap
        self.params = params
        self.routing = routing or RoutingParams(
            time_limit_s=params.solve_time_limit_s, engine=params.routing_engine  # type: ignore[arg-type]
        )
        self.travel: TravelMatrixSource = travel or HaversineTravel(
            detour_factor=1.3, speed_kmh=20.0
        )
        self.queue = queue or JobQueue()
        self.now_s = now_s
        self.plans: deque[PlanRecord] = deque(maxlen=20)
        self._shifts: dict[str, _Shift] = {}
        # _lock guards the queue, the orders and the plans; _full_lock lets one full solve
        # run at a time without holding _lock while it searches.
        self._lock = asyncio.Lock()
        self._full_lock = asyncio.Lock()
        # Counts changes to what a round snapshots (queue, vans, plans): a full solve whose
        # snapshot went stale while it searched is brought up to date before it commits.
        self._version = 0
        self._full_task: asyncio.Task[None] | None = None
        self._full_again: str | None = None
        self._urgent = asyncio.Event()
        self._plan_count = 0
        self.plan_store = plan_store
        self._resumed = False

    # ------------------------------------------------------------------ inputs
    async def pull(self) -> int:
        """Scheduled pull: the shards' top candidates into the queue; returns how many came."""
        cands = await self.candidates(self.params.candidates_per_shard)
        self.queue.update(cands, self.now_s())
        self._version += 1
        return len(cands)

    def push(self, candidates: Sequence[Candidate]) -> int:
        """Shards push urgent candidates between pulls; a new critical job triggers a re-plan."""
        escalated = self.queue.update(list(candidates), self.now_s())
        self._version += 1
        critical = [j for j in escalated if j.severity is Severity.CRITICAL]
        if critical:
            log.info(
                "urgent re-plan: %d critical job(s), e.g. %s", len(critical), critical[0].battery_id
            )
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
        self._version += 1
        if order.state is WorkOrderState.EN_ROUTE:
            self.queue.mark_en_route(battery, order.technician_id)
        elif order.state is WorkOrderState.DONE:
            self.queue.remove(battery)
            if swap is not None:
                await self.apply_swap(swap)
                if order.technician_id in self._shifts:
                    self._shifts[order.technician_id].used += 1
        elif order.state is WorkOrderState.FAILED:
            self.queue.release(battery)
            job = self.queue.jobs.get(battery)
            if job is not None:
                self.queue.jobs[battery] = replace(job, work_order_id=None)
            self._urgent.set()
        elif order.state is WorkOrderState.CANCELLED:
            self.queue.remove(battery)
        return order

    def report_van_stock(self, technician_id: str, charged_batteries: int) -> None:
        """A technician's count of the charged batteries in their van now (scanned in the
        app, or told by a simulation): the next plans start from it instead of from the
        estimate (depot share at the shift's start, minus swaps done)."""
        if technician_id not in self.technicians:
            raise KeyError(f"No technician {technician_id!r}; have {sorted(self.technicians)}.")
        if charged_batteries < 0:
            raise ValueError(f"Expected charged_batteries >= 0, got {charged_batteries}.")
        now = self.now_s()
        window = shift_window_s(self.technicians[technician_id], now, self.params.utc_offset_h)
        start = now if window is None else max(window[0], now)
        shift = self._shifts.get(technician_id)
        if shift is None or start > shift.start_s + 12 * 3600:
            shift = _Shift(start_s=start, loaded=charged_batteries)
        self._shifts[technician_id] = replace(shift, loaded=charged_batteries, used=0)
        self._version += 1

    # ------------------------------------------------------------------ restarts
    async def resume(self) -> bool:
        """Rebuild what a restart lost from the order store and the plan store, once.

        The open work orders are re-queued (:meth:`JobQueue.restore`: one job per order,
        with its id; en-route ones under way), so the next plan re-uses them instead of
        creating second orders. The newest saved plan becomes the plan in force: ``latest``
        and ``route_of`` answer from it, it locks the stops under way to their technician
        and warm-starts the next solve, plan ids continue after it, and each van's load
        restarts from what that plan counted in it. :meth:`plan` calls this first; the
        runtime calls it before the schedule starts, so reads answer from the restored plan.
        A report before it is safe: the orders it changes are restored as they now are.

        Returns
        -------
        bool
            ``True`` if this call resumed, ``False`` if an earlier one already had.

        Raises
        ------
        Exception
            Whatever reading the stores raised; nothing is marked resumed, so the next
            call (or plan) tries again.
        """
        async with self._lock:
            return await self._resume()

    async def _resume(self) -> bool:
        if self._resumed:
            return False
        orders = await self.orders.open_orders()
        saved = await self.plan_store.latest() if self.plan_store is not None else None
        restored = self.queue.restore(orders)
        record = None
        if saved is not None:
            try:
                record = PlanRecord.from_dict(saved)
            except ValueError:
                # The orders are the truth and are restored; without the old plan only the
                # routes shown and the warm start wait for the next plan.
                log.exception("the saved plan cannot be read back; resuming without it")
        if record is not None:
            self.plans.append(record)
            self._plan_count = max(self._plan_count, record.plan_id)
            self._restore_shifts(record)
        self._resumed = True
        log.info(
            "resumed: %d open work order(s), %d under way; plan in force: %s",
            restored, len(self.queue.in_progress),
            "none" if record is None else f"{record.plan_id} ({record.reason})",
        )  # fmt: skip
        return True

    def _restore_shifts(self, record: PlanRecord) -> None:
        """Each van's load as ``record`` counted it, so a restart does not load the vans
        afresh mid-shift; swaps done between that plan and the restart are not counted off."""
        for route in record.routes:
            tech = self.technicians.get(route.technician_id)
            # A technician's own count (report_van_stock) is truer than the plan's estimate.
            if tech is None or tech.id in self._shifts:
                continue
            window = shift_window_s(tech, record.created_at_s, self.params.utc_offset_h)
            start = record.created_at_s if window is None else max(window[0], record.created_at_s)
            self._shifts[tech.id] = _Shift(start_s=start, loaded=route.batteries_loaded)

    async def _keep(self, record: PlanRecord) -> None:
        """Put ``record`` in force, and save it for a restart when there is a plan store."""
        self.plans.append(record)
        if self.plan_store is None:
            return
        try:
            await self.plan_store.save(record.created_at_s, record.reason, record.to_dict())
        except Exception:
            # The plan is in force and its work orders are written; a restart before the
            # next save resumes from the orders and the previous plan, which is stale but
            # consistent with them. Failing the round would not make the plan less made.
            log.exception("plan %d could not be saved; it is in force in memory only", record.plan_id)

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
        """One full planning round (see the module docstring).

        Full rounds run one at a time. The solve itself holds no lock, so reports, pushes
        and urgent rounds go on meanwhile; if any of them changed the queue, the solved
        routes are brought up to date by an insertion pass on a fresh snapshot before they
        are put in force (:func:`~planners.insertion.solve_urgent` without improvement).
        """
        async with self._full_lock:
            async with self._lock:
                await self._resume()
                rnd = await self._build(self.latest())
                version = self._version
            if rnd.problem is None:
                async with self._lock:
                    return await self._commit(reason, rnd, None)
            result = await solve_async(rnd.problem, self.routing, initial_routes=rnd.initial, locked=rnd.locked)
            async with self._lock:
                if self._version != version:
                    provisional = self._record(reason, rnd, result)
                    rnd = await self._build(provisional)
                    if rnd.problem is None:
                        return await self._commit(reason, rnd, None)
                    rebased = await solve_urgent_async(
                        rnd.problem, self.routing, rnd.initial, rnd.locked, improve_s=0.0,
                        may_eject=self._critical(rnd),
                    )  # fmt: skip
                    result = replace(rebased, solve_time_s=result.solve_time_s + rebased.solve_time_s)
                return await self._commit(reason, rnd, result)

    async def plan_urgent(self, reason: str = "urgent") -> PlanRecord:
        """An urgent round: the jobs not on the routes in force are inserted into them, then
        the engine improves the result for ``urgent_improve_s``
        (:func:`~planners.insertion.solve_urgent`); seconds, not a full solve. The loop runs
        a full round in the background afterwards."""
        async with self._lock:
            await self._resume()
            rnd = await self._build(self.latest())
            if rnd.problem is None:
                return await self._commit(reason, rnd, None)
            result = await solve_urgent_async(
                rnd.problem, self.routing, rnd.initial, rnd.locked, improve_s=self.params.urgent_improve_s,
                may_eject=self._critical(rnd),
            )  # fmt: skip
            return await self._commit(reason, rnd, result)

    @staticmethod
    def _critical(rnd: _Round) -> list[int]:
        """The round's critical jobs: an urgent insertion may displace a routine stop for them."""
        return [k for k, j in enumerate(rnd.jobs) if j.severity is Severity.CRITICAL]

    async def _build(self, last: PlanRecord | None) -> _Round:
        """Snapshot the queue and the roster now into a routing problem; ``last`` (the plan
        in force, or a solved one being brought up to date) locks the stops under way and
        warm-starts the search."""
        now = self.now_s()
        t0 = math.floor(now)
        techs = self._on_shift(now)
        jobs = self._routable_jobs({t.id for t, _, _ in techs})
        if not jobs or not techs:
            return _Round(now, t0, techs, jobs, {}, [], None, {}, None)
        depot_ids = sorted({t.depot_id for t, _, _ in techs})
        depot_node = {d: k for k, d in enumerate(depot_ids)}
        points = np.array(
            [[self.depots[d].lat, self.depots[d].lon] for d in depot_ids]
            + [[j.lat, j.lon] for j in jobs]
        )
        travel = await asyncio.to_thread(self.travel.matrices, points)
        loads = self._van_loads(techs)
        job_index = {j.battery_id: k for k, j in enumerate(jobs)}
        tech_index = {t.id: k for k, (t, _, _) in enumerate(techs)}
        locked, initial = self._locked_and_initial(jobs, job_index, tech_index, last)
        # A stop under way is committed: the plan must keep it feasible, or no plan at all
        # comes back. Its van holds the battery it needs (the estimate of the van's load may
        # be short of the truth), its deadline no longer binds (the technician is on the
        # way), and its shift may run over by up to LOCKED_OVERTIME_S to finish it.
        locked_jobs = {j for stops in locked.values() for j in stops}
        vehicles = []
        for k, (t, start, end) in enumerate(techs):
            head = locked.get(k, [])
            vehicles.append(Vehicle(
                start_node=depot_node[t.depot_id], shift_start_s=int(start - t0),
                shift_end_s=int(end - t0) + (LOCKED_OVERTIME_S if head else 0),
                capacity=max(loads[t.id], sum(jobs[j].batteries_needed for j in head)),
                fixed_cost=t.fixed_cost_m, skills=t.skills, name=t.id,
            ))  # fmt: skip
        nd = len(depot_ids)
        routing_jobs = [
            Job(
                node=nd + k, demand=j.batteries_needed, service_s=j.service_s,
                latest_s=(
                    None if k in locked_jobs or j.deadline_s is None or j.deadline_s <= now
                    else int(j.deadline_s - t0)
                ),
                drop_penalty=max(1, round(j.value * self.params.penalty_per_value)),
                required_skills=frozenset({j.skill}), name=j.battery_id,
            )
            for k, j in enumerate(jobs)
        ]  # fmt: skip
        problem = RoutingProblem(
            travel.duration_s, travel.distance_m, tuple(vehicles), tuple(routing_jobs)
        )
        return _Round(now, t0, techs, jobs, loads, depot_ids, problem, locked, initial)

    async def _commit(self, reason: str, rnd: _Round, result: Plan | None) -> PlanRecord:
        """Put a round's plan in force: number it, make the work orders match, keep it."""
        self._plan_count += 1
        self._version += 1
        if result is None:
            jobs = rnd.jobs
            rec = PlanRecord(self._plan_count, reason, rnd.now, (), tuple(j.battery_id for j in jobs),
                             len(jobs), 0.0, sum(j.value for j in jobs), 0, 0.0, False)  # fmt: skip
            await self._keep(rec)
            return rec
        record = self._record(reason, rnd, result)
        record = await self._sync_orders(record, rnd.jobs, result, rnd.techs)
        await self._keep(record)
        log.info(
            "plan %d (%s): %d/%d jobs, value %.0f, %.1f km, %.1f s",
            record.plan_id,
            reason,
            len(rnd.jobs) - len(record.dropped),
            len(rnd.jobs),
            record.value_collected,
            record.distance_m / 1000,
            record.solve_time_s,
        )
        return record

    def _routable_jobs(self, on_shift: set[str]) -> list[QueuedJob]:
        """The open jobs this round may route.

        A job under way (work order en route) belongs to the technician driving it: it is
        routed only as that technician's locked first stop. If that technician is no longer
        on shift (finishing it after hours), the job stays out of the plan until their
        report ends it; routing it to someone else would send two vans to one vehicle.
        """
        committed = self._under_way_by()
        jobs = [
            j for j in self.queue.open_jobs()
            if j.battery_id not in self.queue.in_progress or committed.get(j.battery_id) in on_shift
        ]  # fmt: skip
        cap = self.params.max_jobs_per_round
        if cap is None or len(jobs) <= cap:
            return jobs
        ranked = sorted(
            jobs,
            key=lambda j: (j.battery_id not in self.queue.in_progress, j.severity is not Severity.CRITICAL, -j.value),
        )
        keep = {j.battery_id for j in ranked[:cap]}
        return [j for j in jobs if j.battery_id in keep]  # open_jobs' stable order

    def _under_way_by(self) -> dict[str, str]:
        """Battery under way -> the technician driving to it.

        The en-route order's technician where the queue knows it (every report and a
        resume record it); else the one the last plan routed it to. They agree unless the
        planner restarted after moving an order it had not yet saved a plan for: then the
        order is the truth, as the technician's app went by it.
        """
        last = self.plans[-1] if self.plans else None
        planned = {s.battery_id: r.technician_id for r in last.routes for s in r.stops} if last else {}
        by = {b: planned[b] for b in self.queue.in_progress if b in planned}
        by.update((b, t) for b, t in self.queue.en_route_by.items() if b in self.queue.in_progress)
        return by

    def _locked_and_initial(
        self, jobs: list[QueuedJob], job_index: dict[str, int], tech_index: dict[str, int],
        last: PlanRecord | None,
    ) -> tuple[dict[int, list[int]], list[list[int]] | None]:  # fmt: skip
        """Stops under way stay first on their technician's route, in ``last``'s order;
        ``last`` warm-starts the search."""
        locked: dict[int, list[int]] = {}
        under_way = self._under_way_by()
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
                    if stop.battery_id not in self.queue.in_progress:
                        initial[k].append(j)
                    elif under_way.get(stop.battery_id) == route.technician_id:
                        locked.setdefault(k, []).append(j)
        # Under way but not on its technician's route in the last plan (no plan was saved
        # before a restart, or the order moved after it): locked on that technician's route.
        placed = {j for head in locked.values() for j in head}
        for battery in sorted(under_way):
            j, k = job_index.get(battery), tech_index.get(under_way[battery])
            if j is not None and k is not None and j not in placed:
                locked.setdefault(k, []).append(j)
        if initial is not None:
            # The solver wants each warm-start route to begin with that vehicle's locked stops.
            initial = [locked.get(k, []) + r for k, r in enumerate(initial)]
            if not any(initial):
                initial = None
        return locked, initial

    def _record(self, reason: str, rnd: _Round, plan: Plan) -> PlanRecord:
        now, t0, jobs, techs, loads = rnd.now, rnd.t0, rnd.jobs, rnd.techs, rnd.loads
        routes = []
        for route in plan.routes:
            tech = techs[route.vehicle][0]
            stops = tuple(
                PlannedStop(
                    battery_id=jobs[s.job].battery_id,
                    vehicle_id=jobs[s.job].vehicle_id,
                    kind=jobs[s.job].kind.value,
                    lat=jobs[s.job].lat,
                    lon=jobs[s.job].lon,
                    eta_s=t0 + s.arrival_s,
                    service_start_s=t0 + s.start_s,
                    service_s=jobs[s.job].service_s,
                    value=jobs[s.job].value,
                    work_order_id=jobs[s.job].work_order_id,
                    soc_pct=jobs[s.job].soc_pct,
                    health_score=jobs[s.job].health_score,
                    anomaly_flags=jobs[s.job].anomaly_flags,
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
        self,
        record: PlanRecord,
        jobs: list[QueuedJob],
        plan: Plan,
        techs: list[tuple[Technician, float, float]],
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
                        job.kind,
                        job.vehicle_id,
                        job.battery_id,
                        job.lat,
                        job.lon,
                        job.priority,
                        job.value,
                        _ACTOR,
                    )
                    order_id = order.id
                else:
                    order = await self.orders.get(order_id)
                if (
                    order.state is WorkOrderState.ASSIGNED
                    and order.technician_id != route.technician_id
                ):
                    order = await self.orders.transition(
                        order_id, WorkOrderState.PLANNED, _ACTOR, note="re-planned"
                    )
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
            replace(
                r, stops=tuple(replace(s, work_order_id=ids.get(s.battery_id)) for s in r.stops)
            )
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
        """Pull and plan every ``plan_interval_s``; urgent events re-plan within seconds.

        Full rounds (scheduled, and the one following each urgent round) run as a background
        task, so an urgent event never waits for a full solve to finish.
        """
        next_scheduled = 0.0
        try:
            await warm_up_async()  # the urgent solver's process, started before it is needed
        except Exception:
            log.exception("the urgent solver could not be started; urgent rounds will start it")
        try:
            await self._loop(next_scheduled)
        finally:
            if self._full_task is not None:
                self._full_task.cancel()

    async def _loop(self, next_scheduled: float) -> None:
        p = self.params
        while True:
            now = time.monotonic()
            try:
                if now >= next_scheduled:
                    next_scheduled = now + p.plan_interval_s
                    await self.pull()
                    self._start_full("scheduled")
                elif self._urgent.is_set():
                    await asyncio.sleep(p.urgent_delay_s)  # let events that come together gather
                    self._urgent.clear()
                    await self.plan_urgent()
                    self._start_full("follow-up")
            except Exception:
                log.exception("planning round failed; retrying next period")
            # Sleep until the next scheduled round, or less if an urgent event arrives.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._urgent.wait(), max(0.0, next_scheduled - time.monotonic())
                )

    def _start_full(self, reason: str) -> None:
        """Start a full round in the background; while one runs, one more is queued."""
        if self._full_task is not None and not self._full_task.done():
            self._full_again = reason
            return
        self._full_task = asyncio.get_running_loop().create_task(self._full_rounds(reason))

    async def _full_rounds(self, reason: str | None) -> None:
        while reason is not None:
            try:
                await self.plan(reason)
            except Exception:
                log.exception("full planning round (%s) failed; the plan in force stands", reason)
            reason, self._full_again = self._full_again, None

"""Urgent re-plans: insert jobs into the live routes in milliseconds, then improve briefly.

A full solve of a city's day takes tens of seconds; a critical battery or a failed visit
should be on a technician's route within seconds. :func:`solve_urgent` therefore does not
solve from scratch. It

1. *repairs* the routes in force (the last plan's, with the stops under way locked at their
   heads): a stop that can no longer be reached in its window, or that breaks the shift's
   end or the van's load, leaves its route;
2. *inserts* every job not on a route (the urgent ones, what the repair took out, what the
   last plan dropped), most valuable first, at its cheapest feasible position over all
   routes, when that detour costs less than dropping the job: cheapest insertion, checked
   in O(1) per position with each route's latest feasible service starts, and vectorised
   over all positions of all routes at once. An urgent job that fits nowhere may displace
   less valuable stops: one stop taken off a route, or the stops it makes late when pushed
   in (whichever lowers the cost); the displaced stops are then offered to other routes;
3. hands the result to the configured engine as a warm start for a bounded improvement
   (``improve_s``), and keeps whichever of the two plans is better.

The planner then runs a full re-plan in the background, warm-started from this plan.
"""

from __future__ import annotations

import asyncio
import functools
import multiprocessing
import time
import warnings
from collections.abc import Collection, Mapping, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from planners.errors import NoSolutionError, PlannerWarning, ProblemError
from planners.plan import Plan, Route, Stop
from planners.problem import RoutingProblem
from planners.routing import solve
from planners.routing_params import RoutingParams

__all__ = ["insert_jobs", "plan_from_routes", "solve_urgent", "solve_urgent_async", "warm_up_async"]

_STATUS = "INSERTION"


@dataclass(frozen=True, eq=False)
class _Jobs:
    """The problem's jobs as columns, so one insertion test runs over every position at once."""

    node: npt.NDArray[np.int64]
    demand: npt.NDArray[np.int64]
    service: npt.NDArray[np.int64]
    earliest: npt.NDArray[np.int64]
    latest: npt.NDArray[np.int64]
    penalty: npt.NDArray[np.float64]  # inf for a mandatory job
    # able[j, k]: vehicle k has job j's skills.
    able: npt.NDArray[np.bool_]

    @classmethod
    def of(cls, problem: RoutingProblem) -> _Jobs:
        jobs, vehicles = problem.jobs, problem.vehicles
        horizon = problem.horizon_s
        by_skills: dict[frozenset[str], npt.NDArray[np.bool_]] = {}
        able = np.zeros((len(jobs), len(vehicles)), dtype=bool)
        for j, job in enumerate(jobs):
            row = by_skills.get(job.required_skills)
            if row is None:
                row = np.array([job.required_skills <= v.skills for v in vehicles], dtype=bool)
                by_skills[job.required_skills] = row
            able[j] = row
        return cls(
            node=np.array([j.node for j in jobs], dtype=np.int64),
            demand=np.array([j.demand for j in jobs], dtype=np.int64),
            service=np.array([j.service_s for j in jobs], dtype=np.int64),
            earliest=np.array([j.earliest_s for j in jobs], dtype=np.int64),
            latest=np.array([horizon if j.latest_s is None else min(j.latest_s, horizon) for j in jobs], dtype=np.int64),
            penalty=np.array([np.inf if j.drop_penalty is None else j.drop_penalty for j in jobs], dtype=np.float64),
            able=able,
        )  # fmt: skip


@dataclass(eq=False)
class _Positions:
    """Every place a job could go on one route: before stop ``p`` (or before the return).

    ``prev_node``/``next_node`` are the locations either side, ``ready`` when the vehicle can
    leave ``prev_node``, ``latest_next`` the latest arrival at ``next_node`` that keeps the
    rest of the route (windows and the shift's end) feasible.
    """

    index: npt.NDArray[np.int64]
    prev_node: npt.NDArray[np.int64]
    next_node: npt.NDArray[np.int64]
    ready: npt.NDArray[np.int64]
    latest_next: npt.NDArray[np.int64]


def _schedule(problem: RoutingProblem, cols: _Jobs, k: int, route: Sequence[int]) -> tuple[list[int], int]:
    """Service starts of ``route`` on vehicle ``k``, leaving as early as possible, and the
    time it is back."""
    v = problem.vehicles[k]
    dur = problem.duration_matrix
    node, t = v.start_node, v.shift_start_s
    starts = []
    for j in route:
        start = max(t + int(dur[node, cols.node[j]]), int(cols.earliest[j]))
        starts.append(start)
        node, t = int(cols.node[j]), start + int(cols.service[j])
    return starts, t + int(dur[node, v.end])


def _repair(
    problem: RoutingProblem, cols: _Jobs, k: int, route: list[int], head: int
) -> tuple[list[int], list[int]]:
    """``route`` less the stops it can no longer serve; the stops taken out.

    Walking forward, a stop past its window, beyond the van's load, or outside the
    vehicle's skills leaves; then stops leave from the tail until the vehicle is back by the
    end of its shift. The first ``head`` stops are locked: they stay whatever they break.
    """
    v = problem.vehicles[k]
    dur = problem.duration_matrix
    kept, removed = list(route[:head]), []
    node, t, load = v.start_node, v.shift_start_s, 0
    for j in route[:head]:
        t = max(t + int(dur[node, cols.node[j]]), int(cols.earliest[j])) + int(cols.service[j])
        node, load = int(cols.node[j]), load + int(cols.demand[j])
    for j in route[head:]:
        start = max(t + int(dur[node, cols.node[j]]), int(cols.earliest[j]))
        if start > cols.latest[j] or load + cols.demand[j] > v.capacity or not cols.able[j, k]:
            removed.append(j)
            continue
        kept.append(j)
        node, t, load = int(cols.node[j]), start + int(cols.service[j]), load + int(cols.demand[j])
    # Dropping a stop never makes the later ones later when travel times obey the triangle
    # inequality; matrices that do not (some road networks) are re-checked by scheduling.
    while len(kept) > head:
        starts, back = _schedule(problem, cols, k, kept)
        if back <= v.shift_end_s and all(s <= cols.latest[j] for s, j in zip(starts[head:], kept[head:], strict=True)):
            break
        removed.append(kept.pop())
    return kept, removed


def _route_distance(problem: RoutingProblem, cols: _Jobs, k: int, route: Sequence[int]) -> float:
    """Distance of vehicle ``k`` driving ``route`` and back (0 for an empty route)."""
    if not route:
        return 0.0
    v = problem.vehicles[k]
    nodes = np.array([v.start_node, *(int(cols.node[j]) for j in route), v.end], dtype=np.int64)
    return float(problem.distance_matrix[nodes[:-1], nodes[1:]].sum())


def _positions(problem: RoutingProblem, cols: _Jobs, k: int, route: Sequence[int], head: int) -> _Positions:
    v = problem.vehicles[k]
    dur = problem.duration_matrix
    nodes = np.array([v.start_node, *(int(cols.node[j]) for j in route), v.end], dtype=np.int64)
    starts, _ = _schedule(problem, cols, k, route)
    # ready[i]: when the vehicle can leave nodes[i] (the start, then each stop).
    ready = np.array([v.shift_start_s, *(s + int(cols.service[j]) for s, j in zip(starts, route, strict=True))], dtype=np.int64)
    # latest[i]: latest start of service at route stop i (i = len: the arrival back).
    latest = np.empty(len(route) + 1, dtype=np.int64)
    latest[-1] = v.shift_end_s
    for i in range(len(route) - 1, -1, -1):
        j = route[i]
        latest[i] = min(int(cols.latest[j]), int(latest[i + 1] - dur[nodes[i + 1], nodes[i + 2]] - cols.service[j]))
    p = np.arange(head, len(route) + 1)
    return _Positions(index=p, prev_node=nodes[p], next_node=nodes[p + 1], ready=ready[p], latest_next=latest[p])


class _Inserter:
    """Routes under construction, with every insertion position of every route as columns."""

    def __init__(self, problem: RoutingProblem, cols: _Jobs, routes: list[list[int]], heads: list[int]) -> None:
        self.problem, self.cols, self.routes, self.heads = problem, cols, routes, heads
        self.capacity = np.array([v.capacity for v in problem.vehicles], dtype=np.int64)
        self.fixed = np.array([v.fixed_cost for v in problem.vehicles], dtype=np.float64)
        self.loads = np.array([int(cols.demand[r].sum()) if r else 0 for r in routes], dtype=np.int64)
        self.empty = np.array([not r for r in routes], dtype=bool)
        self.per_route = [_positions(problem, cols, k, r, heads[k]) for k, r in enumerate(routes)]
        self._stack()

    def _stack(self) -> None:
        p = self.per_route
        self.vehicle = np.concatenate([np.full(len(x.index), k, dtype=np.int64) for k, x in enumerate(p)])
        self.index = np.concatenate([x.index for x in p])
        self.prev_node = np.concatenate([x.prev_node for x in p])
        self.next_node = np.concatenate([x.next_node for x in p])
        self.ready = np.concatenate([x.ready for x in p])
        self.latest_next = np.concatenate([x.latest_next for x in p])
        self.direct = self.problem.distance_matrix[self.prev_node, self.next_node].astype(np.float64)

    def _deltas(
        self, j: int, vehicle: npt.NDArray[np.int64], prev_node: npt.NDArray[np.int64],
        next_node: npt.NDArray[np.int64], ready: npt.NDArray[np.int64], latest_next: npt.NDArray[np.int64],
        direct: npt.NDArray[np.float64], load: npt.NDArray[np.int64],
    ) -> npt.NDArray[np.float64]:  # fmt: skip
        """Added cost of ``j`` at each position given as columns; inf where it does not fit."""
        cols, dur, dist = self.cols, self.problem.duration_matrix, self.problem.distance_matrix
        n = int(cols.node[j])
        start = np.maximum(ready + dur[prev_node, n], cols.earliest[j])
        ok = (
            cols.able[j, vehicle]
            & (start <= cols.latest[j])
            & (start + cols.service[j] + dur[n, next_node] <= latest_next)
            & (load + cols.demand[j] <= self.capacity[vehicle])
        )
        delta = dist[prev_node, n] + dist[n, next_node] - direct
        # A vehicle not yet used pays its fixed cost for its first job.
        delta = delta + np.where(self.empty[vehicle], self.fixed[vehicle], 0.0)
        return np.where(ok, delta, np.inf)

    def insert(self, j: int) -> bool:
        """Put ``j`` where it adds least, if that is less than its drop penalty."""
        delta = self._deltas(
            j, self.vehicle, self.prev_node, self.next_node, self.ready, self.latest_next, self.direct,
            self.loads[self.vehicle],
        )  # fmt: skip
        best = int(np.argmin(delta)) if len(delta) else -1
        if best < 0 or not delta[best] < self.cols.penalty[j]:
            return False
        self._put(int(self.vehicle[best]), self.routes[int(self.vehicle[best])][:], int(self.index[best]), j)
        return True

    def _put(self, k: int, route: list[int], p: int, j: int) -> None:
        route.insert(p, j)
        self.routes[k] = route
        self.loads[k] = int(self.cols.demand[route].sum())
        self.empty[k] = not route
        self.per_route[k] = _positions(self.problem, self.cols, k, route, self.heads[k])
        self._stack()

    def eject_for(self, j: int) -> list[int] | None:
        """Make room for ``j`` by taking one less valuable stop off a route: the exchange
        that lowers the cost most (``j``'s penalty saved, less the ejected stop's penalty
        and the change in distance). Returns the ejected job (a list of one), or None if
        no exchange pays."""
        cols, dist = self.cols, self.problem.distance_matrix
        best: tuple[float, int, int, int] | None = None  # (cost change, vehicle, ejected position, insert position)
        for k in np.flatnonzero(cols.able[j]).tolist():
            route, head = self.routes[k], self.heads[k]
            v = self.problem.vehicles[k]
            nodes = [v.start_node, *(int(cols.node[x]) for x in route), v.end]
            for r in range(head, len(route)):
                e = route[r]
                if not cols.penalty[e] < cols.penalty[j]:
                    continue
                trial = route[:r] + route[r + 1 :]
                load = int(cols.demand[trial].sum()) if trial else 0
                if load + cols.demand[j] > v.capacity:
                    continue
                saved = int(dist[nodes[r], nodes[r + 1]] + dist[nodes[r + 1], nodes[r + 2]] - dist[nodes[r], nodes[r + 2]])
                pos = _positions(self.problem, cols, k, trial, head)
                m = len(pos.index)
                delta = self._deltas(
                    j, np.full(m, k, dtype=np.int64), pos.prev_node, pos.next_node, pos.ready, pos.latest_next,
                    dist[pos.prev_node, pos.next_node].astype(np.float64), np.full(m, load, dtype=np.int64),
                )  # fmt: skip
                p = int(np.argmin(delta))
                change = float(delta[p]) - saved + float(cols.penalty[e]) - float(cols.penalty[j])
                if np.isfinite(delta[p]) and change < 0 and (best is None or change < best[0]):
                    best = (change, k, r, int(pos.index[p]))
        if best is None:
            return None
        _, k, r, p = best
        route = self.routes[k][:]
        ejected = route.pop(r)
        self._put(k, route, p, j)
        return [ejected]

    def push_in(self, j: int) -> list[int] | None:
        """Put ``j`` at the place where it costs least once the stops it makes late leave
        the route (the route's repair after the insertion): the move for an urgent job
        whose window sits where a route is already full, which no single ejection frees.
        Returns the stops that left, or None if no place pays."""
        cols = self.cols
        best: tuple[float, int, list[int], list[int]] | None = None  # (cost change, vehicle, route, removed)
        for k in np.flatnonzero(cols.able[j]).tolist():
            route, head = self.routes[k], self.heads[k]
            before = _route_distance(self.problem, cols, k, route)
            for p in range(head, len(route) + 1):
                trial, removed = _repair(self.problem, cols, k, [*route[:p], j, *route[p:]], head)
                if j not in trial or any(not cols.penalty[x] < cols.penalty[j] for x in removed):
                    continue
                change = (
                    _route_distance(self.problem, cols, k, trial) - before
                    + float(sum(cols.penalty[x] for x in removed)) - float(cols.penalty[j])
                    + (self.fixed[k] if not route else 0.0)  # a vehicle not yet used
                )  # fmt: skip
                if change < 0 and (best is None or change < best[0]):
                    best = (change, k, trial, removed)
        if best is None:
            return None
        _, k, trial, removed = best
        self.routes[k] = trial
        self.loads[k] = int(cols.demand[trial].sum())
        self.empty[k] = not trial
        self.per_route[k] = _positions(self.problem, cols, k, trial, self.heads[k])
        self._stack()
        return removed


def insert_jobs(
    problem: RoutingProblem,
    routes: Sequence[Sequence[int]],
    locked: Mapping[int, Sequence[int]] | None = None,
    *,
    may_eject: Collection[int] | None = None,
) -> list[list[int]]:
    """Repair ``routes`` and insert every job not on them where it is cheapest (module docstring).

    Parameters
    ----------
    problem
        The problem now: shifts starting now, windows as they are now.
    routes
        One job sequence per vehicle (the plan in force), each starting with that vehicle's
        locked stops.
    locked
        ``locked[k]``: the head of vehicle ``k``'s route that must stay as it is.
    may_eject
        Jobs that, fitting nowhere, may take the place of one less valuable stop (which is
        then offered to the other routes): the urgent ones. ``None``: the mandatory jobs.

    Returns
    -------
    list of list of int
        Feasible routes, one per vehicle. A mandatory job that fits nowhere is left out:
        :func:`plan_from_routes` then reports it.
    """
    locked = dict(locked or {})
    if len(routes) != len(problem.vehicles):
        raise ProblemError(f"Expected routes for {len(problem.vehicles)} vehicles, got {len(routes)}.")
    cols = _Jobs.of(problem)
    heads = [len(locked.get(k, ())) for k in range(len(routes))]
    out: list[list[int]] = []
    for k, route in enumerate(routes):
        if list(route[: heads[k]]) != list(locked.get(k, ())):
            raise ProblemError(f"Expected routes[{k}] to start with its locked stops {list(locked[k])}, got {list(route)}.")
        kept, _ = _repair(problem, cols, k, list(route), heads[k])
        out.append(kept)
    on_route = {j for r in out for j in r}
    todo = [j for j in range(len(problem.jobs)) if j not in on_route]
    if not todo:
        return out
    eject = {j for j in todo if problem.jobs[j].mandatory} if may_eject is None else set(may_eject)
    # Mandatory first, then by value (drop penalty), then by index for a stable order.
    todo.sort(key=lambda j: (-cols.penalty[j], j))
    work = _Inserter(problem, cols, out, heads)
    ejected: list[int] = []
    for j in todo:
        if not work.insert(j) and j in eject:
            # One stop out anywhere on the route, or the stops made late by pushing j in:
            # whichever pays more.
            moved = work.eject_for(j)
            if moved is None:
                moved = work.push_in(j)
            ejected.extend(moved or ())
    for e in ejected:  # each may still fit elsewhere
        work.insert(e)
    return work.routes


def plan_from_routes(
    problem: RoutingProblem, routes: Sequence[Sequence[int]], *, solve_time_s: float = 0.0, status: str = _STATUS
) -> Plan:
    """The :class:`~planners.plan.Plan` of feasible ``routes``: each vehicle leaves at the
    start of its shift and serves each stop as early as its window allows.

    Raises
    ------
    NoSolutionError
        If a route breaks a window, a load, a skill or a shift's end, or a mandatory job is
        on no route.
    """
    cols = _Jobs.of(problem)
    dist = problem.distance_matrix
    dur = problem.duration_matrix
    out_routes = []
    objective = 0
    for k, route in enumerate(routes):
        v = problem.vehicles[k]
        starts, back = _schedule(problem, cols, k, route)
        node, t, load, distance = v.start_node, v.shift_start_s, 0, 0
        stops = []
        for j, start in zip(route, starts, strict=True):
            arrival = t + int(dur[node, cols.node[j]])
            load += int(cols.demand[j])
            if start > cols.latest[j]:
                why = f"starts at {start}, after its window closes at {cols.latest[j]}"
            elif load > v.capacity:
                why = f"brings the load to {load}, over the capacity of {v.capacity}"
            elif not cols.able[j, k]:
                why = f"needs skills {sorted(problem.jobs[j].required_skills)}"
            else:
                why = ""
            if why:
                raise NoSolutionError(f"Expected feasible routes, got job {j} on vehicle {k}: it {why}.", _STATUS)
            distance += int(dist[node, cols.node[j]])
            stops.append(Stop(job=j, arrival_s=arrival, start_s=start, load=load))
            node, t = int(cols.node[j]), start + int(cols.service[j])
        if back > v.shift_end_s:
            raise NoSolutionError(f"Expected vehicle {k} back by {v.shift_end_s}, got {back}.", _STATUS)
        if stops:
            distance += int(dist[node, v.end])
            objective += distance + v.fixed_cost
        out_routes.append(Route(vehicle=k, stops=tuple(stops), start_s=v.shift_start_s,
                                end_s=back if stops else v.shift_start_s, distance=distance))  # fmt: skip
    served = {j for r in routes for j in r}
    missing = [j for j, job in enumerate(problem.jobs) if job.mandatory and j not in served]
    if missing:
        raise NoSolutionError(f"Expected every mandatory job on a route, got {len(missing)} left out, e.g. {missing[0]}.", _STATUS)
    dropped = tuple(j for j in range(len(problem.jobs)) if j not in served)
    objective += sum(problem.jobs[j].drop_penalty or 0 for j in dropped)
    return Plan(routes=tuple(out_routes), dropped=dropped, objective=objective, solve_time_s=solve_time_s, status=status)


def _cost(problem: RoutingProblem, plan: Plan) -> int:
    """Distance, fixed costs of the vehicles used and drop penalties: the one yardstick for
    the inserted plan and the engine's (whose own objectives count slightly differently)."""
    used = sum(problem.vehicles[r.vehicle].fixed_cost for r in plan.routes if r.stops)
    return plan.total_distance + used + sum(problem.jobs[j].drop_penalty or 0 for j in plan.dropped)


def solve_urgent(
    problem: RoutingProblem,
    params: RoutingParams,
    initial_routes: Sequence[Sequence[int]] | None,
    locked: Mapping[int, Sequence[int]] | None = None,
    *,
    improve_s: float = 1.0,
    may_eject: Collection[int] | None = None,
) -> Plan:
    """Insert, then improve for at most ``improve_s`` with ``params.engine``; the better plan.

    Parameters
    ----------
    problem, locked
        As for :func:`planners.routing.solve`.
    params
        The engine and its settings; its time limit is replaced by ``improve_s``.
    initial_routes
        The routes in force (``None``: no plan yet, every vehicle starts empty).
    improve_s
        Search budget of the improvement; 0 keeps the inserted plan.
    may_eject
        As for :func:`insert_jobs`: the urgent jobs, which may displace less valuable stops.

    Returns
    -------
    Plan
        ``warm_started`` is true; ``solve_time_s`` covers insertion and improvement;
        ``status`` is ``"INSERTION"`` when the improvement found nothing better.
    """
    started = time.perf_counter()
    heads: dict[int, list[int]] = {k: list(v) for k, v in (locked or {}).items()}
    routes = [list(r) for r in initial_routes] if initial_routes is not None else [[] for _ in problem.vehicles]
    for k, head in heads.items():
        if routes[k][: len(head)] != head:
            routes[k] = head + [j for j in routes[k] if j not in head]
    inserted = insert_jobs(problem, routes, heads, may_eject=may_eject)
    plan = plan_from_routes(problem, inserted)
    if improve_s > 0:
        better: Plan | None
        try:
            with warnings.catch_warnings():
                # A warm start the engine refuses would make it plan from scratch in a budget
                # meant for polishing; the inserted plan is then the better answer.
                warnings.simplefilter("error", PlannerWarning)
                better = solve(problem, replace(params, time_limit_s=improve_s), inserted, heads)
        except (NoSolutionError, PlannerWarning):
            better = None  # nothing usable within the budget: the inserted plan stands
        if better is not None and _cost(problem, better) < _cost(problem, plan):
            plan = better
    return replace(plan, solve_time_s=time.perf_counter() - started, warm_started=True)


@functools.cache
def _urgent_executor() -> Executor:
    # A process of its own: the full solve may be busy in planners.routing's worker for tens
    # of seconds, and an urgent round must not queue behind it. "spawn" for the same reason
    # as there (the caller is an event loop with threads).
    return ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))


def _ready() -> bool:
    # Importing the engines is most of a cold start (about a second); done once, ahead.
    import planners.routing_pyvrp  # noqa: F401

    return True


async def warm_up_async(executor: Executor | None = None) -> None:
    """Start the urgent solver's process and import the engines in it, so the first urgent
    round does not pay for a process start."""
    await asyncio.get_running_loop().run_in_executor(executor or _urgent_executor(), _ready)


async def solve_urgent_async(
    problem: RoutingProblem,
    params: RoutingParams,
    initial_routes: Sequence[Sequence[int]] | None,
    locked: Mapping[int, Sequence[int]] | None = None,
    *,
    improve_s: float = 1.0,
    may_eject: Collection[int] | None = None,
    executor: Executor | None = None,
) -> Plan:
    """:func:`solve_urgent` in a worker process of its own (the engines hold the GIL)."""
    call = functools.partial(
        solve_urgent,
        problem,
        params,
        None if initial_routes is None else [list(r) for r in initial_routes],
        None if locked is None else {k: list(v) for k, v in locked.items()},
        improve_s=improve_s,
        may_eject=None if may_eject is None else list(may_eject),
    )
    return await asyncio.get_running_loop().run_in_executor(executor or _urgent_executor(), call)

"""Solve a :class:`~planners.problem.RoutingProblem` with PyVRP's hybrid genetic search.

The second engine behind :func:`planners.routing.solve` (``RoutingParams(engine="pyvrp")``).
Every feature of the problem model maps onto PyVRP 0.14's data model:

- *Locations*: one per job (two jobs may share a place, but skills are per job) and one per
  distinct vehicle start or end location; the matrices are the problem's, re-indexed.
- *Time*: a job's window bounds the start of its service, as in PyVRP; a vehicle's shift is
  its vehicle type's ``[tw_early, tw_late]``; a job without a latest start gets the horizon.
- *Capacity*: one load dimension (``delivery``).
- *Optional jobs*: ``required=False`` with the drop penalty as the prize: PyVRP's objective
  counts uncollected prizes, which is the drop penalty.
- *Skills*: one routing profile per distinct skill set of the vehicles, in which every arc
  into a job the profile may not serve is prohibitive (:data:`_FORBIDDEN`), so a feasible
  solution never gives a job to a vehicle without its skills.
- *Fixed costs* and the hierarchical objective's vehicle cost: the vehicle type's
  ``fixed_cost``.
- *Locked stops*: the technician's committed position becomes the route's start: the locked
  prefix is scheduled here, and the vehicle then starts, with what capacity is left, at its
  last locked stop when that service ends.
- *Warm start*: the given routes (less their locked prefixes) are PyVRP's initial solution.

Vehicles that differ in nothing become one vehicle type with ``num_available`` > 1. What
PyVRP cannot express is refused when the model is built (:class:`ProblemError`), never
ignored; every feature of :class:`~planners.problem.RoutingProblem` is expressible today.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pyvrp import Client, Depot, Location, ProblemData, Solution, VehicleType
from pyvrp import Route as PyvrpRoute
from pyvrp import solve as pyvrp_solve
from pyvrp.exceptions import PenaltyBoundWarning
from pyvrp.stop import MaxIterations, MaxRuntime, MultipleCriteria, StoppingCriterion

from planners.errors import NoSolutionError, ProblemError, WarmStartWarning
from planners.plan import Plan, Route, Stop
from planners.problem import RoutingProblem
from planners.routing_params import RoutingParams

__all__ = ["solve_pyvrp"]

#: The travel distance and time of an arc into a job the vehicle may not serve: far beyond any
#: shift (time warp) and any objective, yet summing safely in 64 bits.
_FORBIDDEN = 10**12
_STATUS = "PYVRP_FEASIBLE"


@dataclass(frozen=True)
class _Start:
    """Where and when a vehicle's free part of the route begins (after its locked stops)."""

    node: int
    time_s: int
    load: int
    distance: int
    stops: tuple[Stop, ...]


def _locked_prefix(problem: RoutingProblem, k: int, jobs: Sequence[int]) -> _Start:
    """Schedule vehicle ``k``'s locked stops from its shift start, as OR-Tools would."""
    v = problem.vehicles[k]
    node, t, load, distance = v.start_node, v.shift_start_s, 0, 0
    stops = []
    for j in jobs:
        job = problem.jobs[j]
        arrival = t + int(problem.duration_matrix[node, job.node])
        start = max(arrival, job.earliest_s)
        latest = problem.horizon_s if job.latest_s is None else job.latest_s
        load += job.demand
        if start > latest or load > v.capacity:
            raise NoSolutionError(
                f"No feasible plan: vehicle {k}'s locked stop {j} cannot be served "
                f"({'its window has closed' if start > latest else 'the van is full'}).",
                "PYVRP_INFEASIBLE",
            )
        distance += int(problem.distance_matrix[node, job.node])
        stops.append(Stop(job=j, arrival_s=arrival, start_s=start, load=load))
        node, t = job.node, start + job.service_s
    return _Start(node, t, load, distance, tuple(stops))


def _vehicle_cost(problem: RoutingProblem, params: RoutingParams) -> int:
    """The hierarchical objective's cost of one more vehicle, as the OR-Tools engine sets it:
    more than any distance one more vehicle could save."""
    if params.objective != "hierarchical":
        return 0
    if params.vehicle_cost is not None:
        return params.vehicle_cost
    terminals = sorted({n for v in problem.vehicles for n in (v.start_node, v.end)})
    loc = np.array([job.node for job in problem.jobs] + terminals, dtype=np.int64)
    arcs = len(loc) + len(problem.vehicles)
    return 1 + arcs * int(problem.distance_matrix[np.ix_(loc, loc)].max(initial=0))


def solve_pyvrp(
    problem: RoutingProblem,
    params: RoutingParams,
    initial_routes: Sequence[Sequence[int]] | None,
    locked: Mapping[int, Sequence[int]],
) -> Plan:
    """The PyVRP engine of :func:`planners.routing.solve` (inputs already checked there)."""
    jobs, vehicles = problem.jobs, problem.vehicles
    horizon = problem.horizon_s
    locked_jobs = {j for seq in locked.values() for j in seq}
    starts = {k: _locked_prefix(problem, k, seq) for k, seq in locked.items() if seq}

    # Clients: every job not locked that some vehicle can serve in some shift.
    client_jobs: list[int] = []
    for j, job in enumerate(jobs):
        if j in locked_jobs:
            continue
        latest = horizon if job.latest_s is None else min(job.latest_s, horizon)
        why = None
        if job.earliest_s > latest:
            why = f"its window opens at {job.earliest_s}, after every shift ends"
        elif not problem.eligible_vehicles(j):
            why = "no vehicle has its skills"
        if why is not None:
            if job.mandatory:
                raise ProblemError(f"Expected mandatory jobs[{j}] to be servable, but {why}.")
            continue
        client_jobs.append(j)

    # Locations: the start and end places first (one each), then one per client.
    start_node = [starts[k].node if k in starts else v.start_node for k, v in enumerate(vehicles)]
    depot_nodes = sorted({*start_node, *(v.end for v in vehicles)})
    depot_of = {node: d for d, node in enumerate(depot_nodes)}
    nodes = np.array(depot_nodes + [jobs[j].node for j in client_jobs], dtype=np.int64)
    n_depots = len(depot_nodes)
    distance = problem.distance_matrix[np.ix_(nodes, nodes)]
    duration = problem.duration_matrix[np.ix_(nodes, nodes)]

    # Profiles: one per distinct skill set of the vehicles, when any job needs a skill.
    skill_sets = sorted({v.skills for v in vehicles}, key=sorted)
    profile_of = {s: p for p, s in enumerate(skill_sets)} if any(jobs[j].required_skills for j in client_jobs) else {}
    distances: list[Any] = []  # PyVRP's stubs name matrices ndarray[int]
    durations: list[Any] = []
    for skills in skill_sets if profile_of else [frozenset()]:
        dist, dur = distance.copy(), duration.copy()
        if profile_of:
            barred = np.array([not jobs[j].required_skills <= skills for j in client_jobs], dtype=bool)
            cols = n_depots + np.flatnonzero(barred)
            dist[:, cols] = _FORBIDDEN
            dur[:, cols] = _FORBIDDEN
            np.fill_diagonal(dist, 0)
            np.fill_diagonal(dur, 0)
        distances.append(dist)
        durations.append(dur)

    extra = _vehicle_cost(problem, params)
    # Vehicle types: identical vehicles share one (num_available), in first-seen order.
    type_of_vehicle: list[int] = []
    # (start depot, end depot, shift start, shift end, capacity, fixed cost, profile, owner)
    type_keys: dict[tuple[int, int, int, int, int, int, int, int], int] = {}
    type_members: list[list[int]] = []
    for k, v in enumerate(vehicles):
        s = starts.get(k)
        key = (
            depot_of[start_node[k]], depot_of[v.end], s.time_s if s else v.shift_start_s, v.shift_end_s,
            v.capacity - (s.load if s else 0),
            # A vehicle with locked stops is used whatever the plan: its fixed cost is sunk.
            0 if s else v.fixed_cost + extra,
            profile_of.get(v.skills, 0), k if s else -1,
        )  # fmt: skip
        t = type_keys.setdefault(key, len(type_keys))
        if t == len(type_members):
            type_members.append([])
        type_members[t].append(k)
        type_of_vehicle.append(t)
    vehicle_types = [
        VehicleType(
            num_available=len(type_members[t]), capacity=[key[4]], start_depot=key[0], end_depot=key[1],
            fixed_cost=key[5], tw_early=key[2], tw_late=key[3], profile=key[6],
        )
        for key, t in type_keys.items()
    ]
    clients: list[Client] = []
    for j in client_jobs:
        job = jobs[j]
        latest = horizon if job.latest_s is None else min(job.latest_s, horizon)
        clients.append(Client(
            location=n_depots + len(clients), delivery=[job.demand], service_duration=job.service_s,
            tw_early=job.earliest_s, tw_late=latest, prize=job.drop_penalty or 0, required=job.mandatory,
        ))  # fmt: skip
    data = ProblemData(
        locations=[Location(0.0, 0.0) for _ in nodes], clients=clients,
        depots=[Depot(location=d) for d in range(n_depots)], vehicle_types=vehicle_types,
        distance_matrices=distances, duration_matrices=durations,
    )  # fmt: skip

    client_of = {j: c for c, j in enumerate(client_jobs)}
    initial = None
    if initial_routes is not None:
        initial = _initial_solution(data, initial_routes, locked, client_of, type_of_vehicle)

    stop: StoppingCriterion = MaxRuntime(params.time_limit_s)
    if params.solution_limit is not None:
        stop = MultipleCriteria([stop, MaxIterations(params.solution_limit)])
    started = time.perf_counter()
    with warnings.catch_warnings():
        # PyVRP warns when its penalties stop helping it towards feasibility; an infeasible
        # result is reported below, as NoSolutionError, like the OR-Tools engine's.
        warnings.simplefilter("ignore", PenaltyBoundWarning)
        result = pyvrp_solve(data, stop=stop, seed=params.seed, display=False, initial_solution=initial)
    elapsed = time.perf_counter() - started
    best = result.best
    if not best.is_feasible():
        raise NoSolutionError(
            f"No feasible plan found within {params.time_limit_s} s (PyVRP); make jobs optional "
            "with a drop_penalty, or allow more time.",
            "PYVRP_INFEASIBLE",
        )
    return _plan(problem, best, client_jobs, type_members, starts, extra, elapsed, initial is not None)


def _initial_solution(
    data: ProblemData, routes: Sequence[Sequence[int]], locked: Mapping[int, Sequence[int]],
    client_of: Mapping[int, int], type_of_vehicle: Sequence[int],
) -> Solution | None:  # fmt: skip
    """The given routes (less their locked heads and jobs no vehicle can take) as a PyVRP
    solution; None, with a warning, where they break the problem's constraints."""
    pv_routes = []
    for k, route in enumerate(routes):
        free = [client_of[j] for j in route[len(locked.get(k, ())) :] if j in client_of]
        if free:
            pv_routes.append(PyvrpRoute(data, free, type_of_vehicle[k]))
    solution = Solution(data, pv_routes)
    if solution.has_excess_load() or solution.has_time_warp() or solution.distance() >= _FORBIDDEN:
        warnings.warn(
            "The initial routes are infeasible for this problem; planning from scratch.",
            WarmStartWarning,
            stacklevel=4,
        )
        return None
    return solution


def _plan(
    problem: RoutingProblem, best: Solution, client_jobs: Sequence[int], type_members: Sequence[Sequence[int]],
    starts: Mapping[int, _Start], extra: int, elapsed: float, warm: bool,
) -> Plan:  # fmt: skip
    """Read a plan (routes in the problem's vehicle order) out of PyVRP's solution."""
    jobs, vehicles = problem.jobs, problem.vehicles
    d, t = problem.distance_matrix, problem.duration_matrix
    free: dict[int, list[int]] = {}  # vehicle -> its client visits
    times: dict[int, tuple[int, int, list[int]]] = {}
    unused = [list(m) for m in type_members]
    for r in best.routes():
        k = unused[r.vehicle_type()].pop(0)
        visits = [a for a in r.schedule() if a.is_client()]
        free[k] = [client_jobs[a.idx] for a in visits]
        times[k] = (int(r.start_time()), int(r.end_time()), [int(a.start_time) for a in visits])
    routes = []
    objective = 0
    for k, v in enumerate(vehicles):
        head = starts.get(k)
        stops = list(head.stops) if head else []
        node = head.node if head else v.start_node
        dist = head.distance if head else 0
        load = head.load if head else 0
        depart, _, service_starts = times.get(k, (head.time_s if head else v.shift_start_s, 0, []))
        # After locked stops the vehicle is ready when the last one's service ends; any later
        # start PyVRP chose is a wait, which shows in the next stop's start.
        done = head.time_s if head else depart
        for j, start in zip(free.get(k, []), service_starts, strict=True):
            job = jobs[j]
            arrival = done + int(t[node, job.node])
            load += job.demand
            stops.append(Stop(job=j, arrival_s=arrival, start_s=max(start, arrival), load=load))
            dist += int(d[node, job.node])
            node, done = job.node, max(start, arrival) + job.service_s
        used = bool(stops)
        end = done + int(t[node, v.end])
        if used:
            dist += int(d[node, v.end])
            objective += dist + v.fixed_cost + extra
        departure = v.shift_start_s if head else depart
        routes.append(Route(vehicle=k, stops=tuple(stops), start_s=departure if used else v.shift_start_s,
                            end_s=end if used else v.shift_start_s, distance=dist if used else 0))  # fmt: skip
    served = {s.job for r in routes for s in r.stops}
    dropped = tuple(j for j in range(len(jobs)) if j not in served)
    objective += sum(jobs[j].drop_penalty or 0 for j in dropped)
    return Plan(
        routes=tuple(routes), dropped=dropped, objective=objective, solve_time_s=elapsed, status=_STATUS,
        warm_started=warm,
    )  # fmt: skip

"""Solve a :class:`~planners.problem.RoutingProblem`: the routing-engine seam, and the
OR-Tools engine.

:func:`solve` checks the inputs every engine shares (locked stops, warm start) and hands the
problem to the engine ``params.engine`` names: OR-Tools' routing library (this module) or
PyVRP's hybrid genetic search (:mod:`planners.routing_pyvrp`). Both return the same
:class:`~planners.plan.Plan`, judged by the same checkers.

The model
---------
OR-Tools needs one node per visit, so every job gets its own node (two jobs may share a
location) and every distinct start or end location of a vehicle gets a terminal node.
Travel costs and times are handed over as matrices (``RegisterTransitMatrix``), not as
Python callbacks: the search then never calls back into Python, which is several times
faster.

- *Capacity*: a ``"load"`` dimension over job demands, one capacity per vehicle.
- *Time*: a ``"time"`` dimension whose transit from ``i`` to ``j`` is the service time at
  ``i`` plus the travel time; slack lets vehicles wait for windows. Job windows bound the
  start of service, shift windows bound the vehicle's start and end.
- *Optional jobs*: a one-node disjunction whose penalty is the job's drop penalty.
- *Skills*: each job may only be given to the vehicles holding its skills.
- *Locked stops* (already started): pinned at the head of their vehicle's route by fixing
  the ``next`` variables, so local search cannot move them.

The search
----------
A first solution by the configured strategy (parallel cheapest insertion by default),
then either one of OR-Tools' metaheuristics (guided local search by default) or OR-Tools'
iterated local search (ruin and recreate), until the time or solution limit. A warm start
reads the given routes into an assignment and improves it; what the routes leave out is
inserted first.
"""

from __future__ import annotations

import asyncio
import functools
import multiprocessing
import time
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor

import numpy as np
from ortools.constraint_solver import pywrapcp, routing_enums_pb2, routing_ils_pb2
from ortools.util import optional_boolean_pb2

from planners.errors import NoSolutionError, ProblemError, WarmStartWarning
from planners.plan import Plan, Route, Stop
from planners.problem import RoutingProblem
from planners.routing_params import ITERATED_LOCAL_SEARCH, RoutingParams

__all__ = ["solve", "solve_async"]

_STATUS = {v: k for k, v in routing_enums_pb2.RoutingSearchStatus.Value.items()}


class _Model:
    """The OR-Tools objects built for one solve, and the node layout behind them."""

    def __init__(self, problem: RoutingProblem, params: RoutingParams) -> None:
        self.problem = problem
        # Optional jobs no vehicle can serve: deactivated once the model is closed.
        self._forced_out: list[int] = []
        # Jobs only some vehicles may serve (skills), by OR-Tools index.
        self._restricted: dict[int, tuple[int, ...]] = {}
        jobs, vehicles = problem.jobs, problem.vehicles
        num_jobs = len(jobs)

        # Node layout: jobs first (node j is job j), then one terminal per distinct location
        # used as a vehicle start or end.
        terminal_of: dict[int, int] = {}
        for v in vehicles:
            for loc in (v.start_node, v.end):
                terminal_of.setdefault(loc, num_jobs + len(terminal_of))
        self.location = np.array(
            [job.node for job in jobs] + list(terminal_of), dtype=np.int64
        )
        service = np.array([job.service_s for job in jobs] + [0] * len(terminal_of), dtype=np.int64)
        self.distance = problem.distance_matrix[np.ix_(self.location, self.location)]
        self.travel = problem.duration_matrix[np.ix_(self.location, self.location)]
        transit_time = self.travel + service[:, None]

        self.manager = pywrapcp.RoutingIndexManager(
            len(self.location),
            len(vehicles),
            [terminal_of[v.start_node] for v in vehicles],
            [terminal_of[v.end] for v in vehicles],
        )
        self.routing = pywrapcp.RoutingModel(self.manager)
        routing = self.routing

        cost = routing.RegisterTransitMatrix(self.distance.tolist())
        routing.SetArcCostEvaluatorOfAllVehicles(cost)

        demand = [job.demand for job in jobs] + [0] * len(terminal_of)
        load = routing.RegisterUnaryTransitVector(demand)
        routing.AddDimensionWithVehicleCapacity(
            load, 0, [v.capacity for v in vehicles], True, "load"
        )
        self.load = routing.GetDimensionOrDie("load")

        horizon = problem.horizon_s
        duration = routing.RegisterTransitMatrix(transit_time.tolist())
        # Slack up to the horizon: a vehicle may wait anywhere for a window to open.
        routing.AddDimension(duration, horizon, horizon, False, "time")
        self.time = routing.GetDimensionOrDie("time")

        vehicle_cost = self._vehicle_cost(params)
        for k, v in enumerate(vehicles):
            routing.SetFixedCostOfVehicle(v.fixed_cost + vehicle_cost, k)
            self.time.CumulVar(routing.Start(k)).SetRange(v.shift_start_s, v.shift_end_s)
            self.time.CumulVar(routing.End(k)).SetRange(v.shift_start_s, v.shift_end_s)
        # Finalizers run in the order added: first finish each route as early as possible,
        # then leave as late as that allows, so reported schedules are tight instead of
        # whatever values propagation happened to leave.
        for k in range(len(vehicles)):
            routing.AddVariableMinimizedByFinalizer(self.time.CumulVar(routing.End(k)))
        for k in range(len(vehicles)):
            routing.AddVariableMaximizedByFinalizer(self.time.CumulVar(routing.Start(k)))

        for j, job in enumerate(jobs):
            index = self.manager.NodeToIndex(j)
            if job.drop_penalty is not None:
                routing.AddDisjunction([index], job.drop_penalty)
            latest = horizon if job.latest_s is None else min(job.latest_s, horizon)
            if job.earliest_s > latest:
                self._unservable(j, f"its window opens at {job.earliest_s}, after every shift ends")
                continue
            self.time.CumulVar(index).SetRange(job.earliest_s, latest)
            able = problem.eligible_vehicles(j)
            if not able:
                self._unservable(j, "no vehicle has its skills")
            elif len(able) < len(vehicles):
                self._restricted[index] = able

    def _unservable(self, j: int, why: str) -> None:
        if self.problem.jobs[j].mandatory:
            raise ProblemError(f"Expected mandatory jobs[{j}] to be servable, but {why}.")
        self._forced_out.append(j)

    def _vehicle_cost(self, params: RoutingParams) -> int:
        if params.objective != "hierarchical":
            return 0
        if params.vehicle_cost is not None:
            return params.vehicle_cost
        # Every plan travels at most one arc per node plus one return per vehicle, each no
        # longer than the longest arc: one vehicle more then always costs more than any
        # distance saving it could buy.
        arcs = len(self.location) + len(self.problem.vehicles)
        return 1 + arcs * int(self.distance.max(initial=0))

    def close(self, search: pywrapcp.RoutingSearchParameters) -> None:
        """Close the model, then apply what can only be set on a closed model."""
        self.routing.CloseModelWithParameters(search)
        for j in self._forced_out:
            self.routing.ActiveVar(self.manager.NodeToIndex(j)).SetValue(0)
        for index, able in self._restricted.items():
            # -1 is the vehicle of an unperformed visit; keeping it lets optional jobs drop.
            self.routing.VehicleVar(index).SetValues([-1, *able])

    def lock(self, locked: Mapping[int, Sequence[int]]) -> None:
        """Pin ``locked[k]`` at the head of vehicle ``k``'s route, in order."""
        routing = self.routing
        for k, jobs in locked.items():
            previous = routing.Start(k)
            for j in jobs:
                index = self.manager.NodeToIndex(j)
                # Fixing domains (not posting constraints) means every operator sees the
                # stops as immovable, and propagation rejects moves that touch them.
                routing.NextVar(previous).SetValue(index)
                routing.VehicleVar(index).SetValue(k)
                routing.ActiveVar(index).SetValue(1)
                previous = index

    def job_indices(self, routes: Sequence[Sequence[int]]) -> list[list[int]]:
        """OR-Tools indices of per-vehicle job sequences."""
        return [[self.manager.NodeToIndex(j) for j in route] for route in routes]

    def plan(self, solution: pywrapcp.Assignment, solve_time_s: float, warm: bool) -> Plan:
        """Read a plan out of an OR-Tools solution."""
        routing, problem = self.routing, self.problem
        routes = []
        for k in range(len(problem.vehicles)):
            index = routing.Start(k)
            node = self.manager.IndexToNode(index)
            departure = solution.Min(self.time.CumulVar(index))
            previous_done = departure
            stops: list[Stop] = []
            distance = 0
            load = 0
            while True:
                nxt = solution.Value(routing.NextVar(index))
                nxt_node = self.manager.IndexToNode(nxt)
                distance += int(self.distance[node, nxt_node])
                arrival = previous_done + int(self.travel[node, nxt_node])
                start = max(arrival, solution.Min(self.time.CumulVar(nxt)))
                if routing.IsEnd(nxt):
                    end = start
                    break
                load += problem.jobs[nxt_node].demand
                stops.append(Stop(job=nxt_node, arrival_s=arrival, start_s=start, load=load))
                previous_done = start + problem.jobs[nxt_node].service_s
                index, node = nxt, nxt_node
            routes.append(
                Route(
                    vehicle=k,
                    stops=tuple(stops),
                    start_s=departure,
                    end_s=end if stops else departure,
                    distance=distance,
                )
            )
        served = {s.job for r in routes for s in r.stops}
        return Plan(
            routes=tuple(routes),
            dropped=tuple(j for j in range(len(problem.jobs)) if j not in served),
            objective=solution.ObjectiveValue(),
            solve_time_s=solve_time_s,
            status=_STATUS.get(routing.status(), str(routing.status())),
            warm_started=warm,
        )


def _search_parameters(params: RoutingParams) -> pywrapcp.RoutingSearchParameters:
    search = pywrapcp.DefaultRoutingSearchParameters()
    search.first_solution_strategy = routing_enums_pb2.FirstSolutionStrategy.Value.Value(
        params.first_solution_strategy
    )
    if params.local_search_metaheuristic == ITERATED_LOCAL_SEARCH:
        _use_iterated_local_search(search)
    else:
        search.local_search_metaheuristic = (
            routing_enums_pb2.LocalSearchMetaheuristic.Value.Value(params.local_search_metaheuristic)
        )
    search.guided_local_search_lambda_coefficient = params.guided_local_search_lambda_coefficient
    search.time_limit.FromMilliseconds(max(1, round(params.time_limit_s * 1000)))
    if params.solution_limit is not None:
        search.solution_limit = params.solution_limit
    search.log_search = params.log_search
    return search


_SLOW_OPERATORS_FOR_ITERATED_LOCAL_SEARCH = (
    "use_relocate_expensive_chain",
    "use_global_cheapest_insertion_path_lns",
    "use_local_cheapest_insertion_path_lns",
    "use_relocate_path_global_cheapest_insertion_insert_unperformed",
    "use_exchange_subtrip",
    "use_relocate_subtrip",
    "use_global_cheapest_insertion_visit_types_lns",
    "use_local_cheapest_insertion_visit_types_lns",
)


def _use_iterated_local_search(search: pywrapcp.RoutingSearchParameters) -> None:
    search.use_iterated_local_search = True
    # Between perturbations only a descent: a metaheuristic there would never hand back.
    search.local_search_metaheuristic = routing_enums_pb2.LocalSearchMetaheuristic.GREEDY_DESCENT
    ils = search.iterated_local_search_parameters
    ils.perturbation_strategy = routing_ils_pb2.PerturbationStrategy.RUIN_AND_RECREATE
    ils.improve_perturbed_solution = True
    ruin_recreate = ils.ruin_recreate_parameters
    del ruin_recreate.ruin_strategies[:]
    # SISR with the settings of Christiaens & Vanden Berghe (2020): strings of up to 10
    # visits, 10 removed on average, rare bypasses.
    sisr = ruin_recreate.ruin_strategies.add().sisr
    sisr.max_removed_sequence_size = 10
    sisr.avg_num_removed_visits = 10
    sisr.bypass_factor = 0.01
    # Parallel cheapest insertion recreates markedly better than the default local
    # cheapest insertion on tight windows (Solomon RC101 at 10 s: +1.7 % against +2.2 to
    # +4.0 % over three runs).
    ruin_recreate.recreate_strategy.heuristic = (
        routing_enums_pb2.FirstSolutionStrategy.PARALLEL_CHEAPEST_INSERTION
    )
    # The descent after each recreate is most of an iteration's cost. These operators
    # are slow and, between perturbations, of little use: without them iterations run
    # several times faster, and the mean gap of Solomon R101, R105, RC101, RC105 and C101
    # at 10 s fell from +1.7 % to +1.0 % (R201 and RC201 improved too). Lin-Kernighan
    # stays: dropping it as well cost R201 and RC201 one to two points. The subtrip and
    # visit-type operators serve model features this planner does not use.
    operators = search.local_search_operators
    for name in _SLOW_OPERATORS_FOR_ITERATED_LOCAL_SEARCH:
        setattr(operators, name, optional_boolean_pb2.BOOL_FALSE)
    annealing = ils.reference_solution_acceptance_strategy.simulated_annealing
    annealing.cooling_schedule_strategy = routing_ils_pb2.CoolingScheduleStrategy.EXPONENTIAL
    annealing.automatic_temperatures = True
    ils.best_solution_acceptance_strategy.greedy_descent.SetInParent()


def _guided(search: pywrapcp.RoutingSearchParameters) -> pywrapcp.RoutingSearchParameters:
    """``search`` with guided local search (and its default operators) instead of ILS."""
    guided = pywrapcp.DefaultRoutingSearchParameters()
    guided.CopyFrom(search)
    guided.local_search_operators.CopyFrom(
        pywrapcp.DefaultRoutingSearchParameters().local_search_operators
    )
    guided.use_iterated_local_search = False
    guided.local_search_metaheuristic = (
        routing_enums_pb2.LocalSearchMetaheuristic.GUIDED_LOCAL_SEARCH
    )
    return guided


def _check_job_lists(
    problem: RoutingProblem, name: str, routes: Mapping[int, Sequence[int]]
) -> None:
    seen: dict[int, int] = {}
    for k, jobs in routes.items():
        if not 0 <= k < len(problem.vehicles):
            raise ProblemError(f"Expected {name} vehicles in [0, {len(problem.vehicles)}), got {k}.")
        for j in jobs:
            if not 0 <= j < len(problem.jobs):
                raise ProblemError(f"Expected {name} jobs in [0, {len(problem.jobs)}), got {j}.")
            if j in seen:
                raise ProblemError(
                    f"Expected each job at most once in {name}, got job {j} on vehicles "
                    f"{seen[j]} and {k}."
                )
            seen[j] = k
            if k not in problem.eligible_vehicles(j):
                raise ProblemError(
                    f"Expected {name} to give job {j} to a vehicle with skills "
                    f"{sorted(problem.jobs[j].required_skills)}, got vehicle {k}."
                )


def solve(
    problem: RoutingProblem,
    params: RoutingParams | None = None,
    initial_routes: Sequence[Sequence[int]] | None = None,
    locked: Mapping[int, Sequence[int]] | None = None,
) -> Plan:
    """Route the fleet of ``problem``.

    Parameters
    ----------
    problem
        What to route.
    params
        How to search; defaults to :class:`RoutingParams` ``()``.
    initial_routes
        Warm start: one job sequence per vehicle (e.g. ``previous_plan.job_routes()``),
        the plan the search improves on. Jobs missing from it are inserted by the search.
        If these routes violate the problem's constraints (say a window has since
        closed), a :class:`~planners.errors.WarmStartWarning` is issued and the solve
        starts from scratch.
    locked
        Stops already started or committed: ``locked[k]`` is a job sequence that stays, in
        this order, at the head of vehicle ``k``'s route. A re-plan typically moves each
        vehicle's ``shift_start_s`` to now as well.

    Returns
    -------
    Plan
        The best plan found within the limits of ``params``. Warm-started, its objective is
        no worse than that of ``initial_routes``.

    Raises
    ------
    ProblemError
        If ``initial_routes`` or ``locked`` name unknown vehicles or jobs, repeat a job,
        disagree with each other, or break a skill requirement.
    NoSolutionError
        If no feasible plan was found: make jobs optional (``drop_penalty``) or allow
        more time.

    Notes
    -----
    A search stopped by its time limit is not deterministic: how far it gets depends on
    the machine and its load (iterated local search draws from a fixed-seed generator, so
    it too repeats only if it runs the same number of iterations). For reproducible plans
    set ``params.solution_limit`` with a generous ``time_limit_s``.

    OR-Tools holds the GIL for the whole search; call :func:`solve_async` from async code.
    """
    params = params or RoutingParams()
    locked = dict(locked or {})
    _check_job_lists(problem, "locked", locked)
    if initial_routes is not None:
        initial_routes = [list(r) for r in initial_routes]
        if len(initial_routes) != len(problem.vehicles):
            raise ProblemError(
                f"Expected initial_routes for {len(problem.vehicles)} vehicles, "
                f"got {len(initial_routes)}."
            )
        _check_job_lists(problem, "initial_routes", dict(enumerate(initial_routes)))
        for k, head in locked.items():
            if initial_routes[k][: len(head)] != list(head):
                raise ProblemError(
                    f"Expected initial_routes[{k}] to start with its locked stops {list(head)}, "
                    f"got {initial_routes[k]}."
                )
    if params.engine == "pyvrp":
        # Imported here: a planner on OR-Tools never loads PyVRP.
        from planners.routing_pyvrp import solve_pyvrp

        return solve_pyvrp(problem, params, initial_routes, locked)

    model = _Model(problem, params)
    search = _search_parameters(params)
    model.close(search)
    model.lock(locked)

    started = time.perf_counter()
    solution = None
    warm = False
    if initial_routes is not None:
        # OR-Tools' iterated local search cannot start from given routes: improve them
        # with guided local search instead.
        warm_search = _guided(search) if search.use_iterated_local_search else search
        solution, warm = _solve_warm(model, warm_search, initial_routes)
    if solution is None and search.use_iterated_local_search:
        solution = model.routing.SolveWithIteratedLocalSearch(search)
    elif solution is None:
        solution = model.routing.SolveWithParameters(search)
    elapsed = time.perf_counter() - started
    if solution is None:
        status = _STATUS.get(model.routing.status(), str(model.routing.status()))
        raise NoSolutionError(
            f"No feasible plan found within {params.time_limit_s} s ({status}); make jobs "
            "optional with a drop_penalty, or allow more time.",
            status,
        )
    return model.plan(solution, elapsed, warm)


def _solve_warm(
    model: _Model, search: pywrapcp.RoutingSearchParameters, routes: Sequence[Sequence[int]]
) -> tuple[pywrapcp.Assignment | None, bool]:
    routing = model.routing
    indices = model.job_indices(routes)
    mandatory_missing = {
        j for j, job in enumerate(model.problem.jobs) if job.mandatory
    } - {j for r in routes for j in r}
    if not mandatory_missing:
        assignment = routing.ReadAssignmentFromRoutes(indices, True)
        if assignment is not None:
            return routing.SolveFromAssignmentWithParameters(assignment, search), True
    else:
        # A complete assignment cannot leave a mandatory job out: lock the given routes as
        # a partial first solution instead and let the first-solution strategy insert the
        # rest; local search may then move everything not locked.
        if routing.ApplyLocksToAllVehicles(indices, False):
            solution = routing.SolveFromAssignmentWithParameters(routing.PreAssignment(), search)
            if solution is not None:
                return solution, True
    warnings.warn(
        "The initial routes are infeasible for this problem; planning from scratch.",
        WarmStartWarning,
        stacklevel=3,
    )
    return None, False


@functools.cache
def _default_executor() -> Executor:
    # "spawn" because the caller is typically an event loop with threads, where fork is
    # unsafe; one worker because the machine's cores belong to the rest of the system.
    return ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))


async def solve_async(
    problem: RoutingProblem,
    params: RoutingParams | None = None,
    initial_routes: Sequence[Sequence[int]] | None = None,
    locked: Mapping[int, Sequence[int]] | None = None,
    *,
    executor: Executor | None = None,
) -> Plan:
    """:func:`solve` without blocking the event loop.

    OR-Tools' Python wrapper keeps the GIL for the whole search, so a solve in
    ``asyncio.to_thread`` would still freeze every other coroutine. The solve therefore
    runs in a worker process (a shared one-process pool by default); problem and plan
    travel by pickling.

    Parameters
    ----------
    problem, params, initial_routes, locked
        As for :func:`solve`.
    executor
        Where to run the solve; pass a ``ThreadPoolExecutor`` only if blocking the loop for
        the duration of the solve is acceptable.

    Notes
    -----
    Cancelling the awaiting task does not stop a solve already running in the worker; it
    runs until its time limit.
    """
    loop = asyncio.get_running_loop()
    call = functools.partial(
        solve,
        problem,
        params,
        None if initial_routes is None else [list(r) for r in initial_routes],
        None if locked is None else {k: list(v) for k, v in locked.items()},
    )
    return await loop.run_in_executor(executor or _default_executor(), call)

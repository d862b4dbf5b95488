"""Tiny hand-made routing problems: points on a line, so every distance is obvious."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from planners import Job, Plan, RoutingParams, RoutingProblem, Vehicle

#: Metres per unit of position on the line, and seconds to drive it.
METRES_PER_UNIT = 100
SECONDS_PER_UNIT = 60

#: Enough search for problems of a handful of jobs. A solution count stops it, so results
#: do not depend on how loaded the machine is; problems too small to produce that many
#: solutions are solved long before the one-second limit stops them.
QUICK = RoutingParams(time_limit_s=1.0, solution_limit=200)


def line_matrices(positions: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """``(duration_s, distance_m)`` between points at ``positions`` on a line."""
    p = np.asarray(positions)
    gap = np.abs(p[:, None] - p[None, :])
    return gap * SECONDS_PER_UNIT, gap * METRES_PER_UNIT


def line_problem(
    positions: Sequence[int], vehicles: Sequence[Vehicle], jobs: Sequence[Job]
) -> RoutingProblem:
    """A problem whose locations lie at ``positions`` on a line (location 0 is the depot)."""
    duration, distance = line_matrices(positions)
    return RoutingProblem(
        duration_matrix=duration, distance_matrix=distance, vehicles=tuple(vehicles), jobs=tuple(jobs)
    )


def route_cost(problem: RoutingProblem, routes: Sequence[Sequence[int]]) -> int:
    """Distance of per-vehicle job sequences plus the penalties of the jobs they leave out."""
    total = 0
    for k, route in enumerate(routes):
        if not route:
            continue
        v = problem.vehicles[k]
        path = [v.start_node, *(problem.jobs[j].node for j in route), v.end]
        total += int(sum(problem.distance_matrix[a, b] for a, b in itertools.pairwise(path)))
        total += v.fixed_cost
    served = {j for r in routes for j in r}
    total += sum(job.drop_penalty or 0 for j, job in enumerate(problem.jobs) if j not in served)
    return total


def assert_schedule_consistent(problem: RoutingProblem, plan: Plan) -> None:
    """Each stop's times follow from the previous one, within windows, shifts and capacity."""
    for route in plan.routes:
        v = problem.vehicles[route.vehicle]
        assert v.shift_start_s <= route.start_s <= route.end_s <= v.shift_end_s
        node, ready, load = v.start_node, route.start_s, 0
        for stop in route.stops:
            job = problem.jobs[stop.job]
            assert stop.arrival_s == ready + problem.duration_matrix[node, job.node]
            assert stop.start_s >= stop.arrival_s
            assert job.earliest_s <= stop.start_s
            assert job.latest_s is None or stop.start_s <= job.latest_s
            load += job.demand
            assert stop.load == load <= v.capacity
            node, ready = job.node, stop.start_s + job.service_s
        if route.stops:
            assert route.end_s >= ready + problem.duration_matrix[node, v.end]

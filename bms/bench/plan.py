"""`bms bench plan`: plan one realistic technician day with the routing model, against a greedy.

A seeded day in Berlin (centre 52.52 N, 13.405 E, radius 6 km at 1,000 jobs, growing with
the day: :func:`city_scale`): two depots (one per 10 technicians on bigger days), technicians on
8-hour shifts starting at 07:00 or 09:00, vans carrying charged batteries, and candidate
jobs (battery swaps, battery replacements, inspections), each with a value the plan earns
by serving it. The day is over-subscribed on purpose: the planner must choose.

The day is routed by :func:`planners.routing.solve` (with each engine asked for: OR-Tools,
PyVRP) and by a greedy baseline ("nearest highest-priority first"); every plan is then
re-checked by :func:`check_routes`, which shares no code with any of them.

Times are seconds since midnight; "now" is 07:00, the start of the first shifts.
"""

from __future__ import annotations

import heapq
import itertools
import math
import resource
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from planners.errors import NoSolutionError
from planners.problem import Job, RoutingProblem, Vehicle
from planners.routing import solve
from planners.routing_params import RoutingParams
from planners.travel import HaversineTravel

__all__ = [
    "CENTRE_DEG",
    "NOW_S",
    "PENALTY_PER_VALUE",
    "RADIUS_M",
    "Day",
    "build_day",
    "check_routes",
    "city_scale",
    "greedy_routes",
    "main_plan",
    "route_distance_m",
]

CENTRE_DEG = (52.52, 13.405)
RADIUS_M = 6_000.0
NOW_S = 7 * 3600
SHIFT_S = 8 * 3600
SHIFT_STARTS_S = (7 * 3600, 9 * 3600)
#: Drop penalty per point of job value, in metres (the objective's unit). A value of
#: ``round(1000 * priority)`` alone would weigh a whole job like 1 km of driving, so the
#: model would drop valuable jobs to save distance; at 100 m per point value comes first
#: (a job worth 10 points justifies a 1 km detour) and distance breaks ties.
PENALTY_PER_VALUE = 100

SWAP, REPLACE, INSPECT = "swap", "replace", "inspect"
#: kind: (share of jobs, batteries, service seconds, required skill)
_KINDS = {
    SWAP: (0.8, 1, 6 * 60, SWAP),
    REPLACE: (0.1, 1, 15 * 60, REPLACE),
    INSPECT: (0.1, 0, 20 * 60, INSPECT),
}
_M_PER_DEG_LAT = 111_320.0


@dataclass(frozen=True, eq=False)
class Day:
    """One generated day: the routing problem, job values and kinds, and the points."""

    problem: RoutingProblem
    values: tuple[int, ...]
    kinds: tuple[str, ...]
    points_deg: np.ndarray[Any, np.dtype[np.float64]]


def _offsets_to_deg(dx_m: np.ndarray[Any, Any], dy_m: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    lat0, lon0 = CENTRE_DEG
    lat = lat0 + dy_m / _M_PER_DEG_LAT
    lon = lon0 + dx_m / (_M_PER_DEG_LAT * math.cos(math.radians(lat0)))
    return np.column_stack([lat, lon])


def city_scale(jobs: int, technicians: int) -> tuple[int, float]:
    """Depots and city radius of a day of this size: the 1,000-job day's density of jobs
    and of technicians per depot, kept as the day grows (one depot per 10 technicians, at
    least 2; the radius grows with the square root of the jobs).

    1,000 jobs and 20 technicians: 2 depots, 6 km; 3,000 and 60: 6, 10.4 km; 10,000 and
    200: 20, 19 km.
    """
    return max(2, technicians // 10), RADIUS_M * math.sqrt(max(jobs, 1) / 1000)


def build_day(
    jobs: int = 1000,
    technicians: int = 20,
    van_capacity: int = 30,
    seed: int = 7,
    *,
    penalty_per_value: int = PENALTY_PER_VALUE,
    depots: int = 2,
    radius_m: float = RADIUS_M,
) -> Day:
    """A seeded day: the same arguments always give the same problem.

    Locations ``0 .. depots - 1`` are the depots, location ``depots + j`` is job ``j``.
    Technician ``k`` works from depot ``k % depots``, starts at 07:00 or 09:00 (alternating
    in pairs, so the depots get both shifts), and every third technician (``k % 3 == 0``)
    can also replace batteries and inspect vehicles. Jobs lie uniformly on a disc of
    ``radius_m``; the depots evenly round a ring a third to two thirds of the way out.
    """
    if depots < 1:
        raise ValueError(f"Expected depots >= 1, got {depots}.")
    if not radius_m > 0:
        raise ValueError(f"Expected radius_m > 0, got {radius_m}.")
    rng = np.random.default_rng(seed)
    # Depots: yards evenly round the centre, 2-4 km out in the 6 km city (two: opposite sides).
    angle0 = rng.uniform(0, 2 * math.pi)
    depot_r = rng.uniform(2_000, 4_000, size=depots) * (radius_m / RADIUS_M)
    depot_a = angle0 + 2 * math.pi * np.arange(depots) / depots
    depot_points = _offsets_to_deg(depot_r * np.cos(depot_a), depot_r * np.sin(depot_a))
    # Jobs uniform over the disc.
    r = radius_m * np.sqrt(rng.uniform(0, 1, size=jobs))
    a = rng.uniform(0, 2 * math.pi, size=jobs)
    points = np.vstack([depot_points, _offsets_to_deg(r * np.cos(a), r * np.sin(a))])
    kind_names = list(_KINDS)
    kinds = rng.choice(len(kind_names), size=jobs, p=[_KINDS[k][0] for k in kind_names])
    priority = rng.uniform(0, 1, size=jobs)
    # Swaps: the vehicle becomes unrentable (battery too low) 1 to 10 hours from now.
    unrentable_s = NOW_S + rng.integers(3600, 10 * 3600, endpoint=True, size=jobs)

    travel = HaversineTravel(detour_factor=1.3, speed_kmh=20.0).matrices(points)
    vehicles = []
    for k in range(technicians):
        start = SHIFT_STARTS_S[(k // 2) % 2]
        skilled = k % 3 == 0
        vehicles.append(Vehicle(
            start_node=k % depots,
            shift_start_s=start,
            shift_end_s=start + SHIFT_S,
            capacity=van_capacity,
            skills=frozenset({SWAP, REPLACE, INSPECT} if skilled else {SWAP}),
            name=f"tech-{k:02d}",
        ))
    job_list, values, kind_list = [], [], []
    for j in range(jobs):
        kind = kind_names[int(kinds[j])]
        _, demand, service_s, skill = _KINDS[kind]
        value = round(1000 * float(priority[j]))
        job_list.append(Job(
            node=depots + j,
            demand=demand,
            service_s=service_s,
            earliest_s=NOW_S,
            latest_s=int(unrentable_s[j]) if kind == SWAP else None,
            drop_penalty=value * penalty_per_value,
            required_skills=frozenset({skill}),
            name=f"{kind}-{j:04d}",
        ))
        values.append(value)
        kind_list.append(kind)
    problem = RoutingProblem(
        duration_matrix=travel.duration_s,
        distance_matrix=travel.distance_m,
        vehicles=tuple(vehicles),
        jobs=tuple(job_list),
    )
    return Day(problem=problem, values=tuple(values), kinds=tuple(kind_list), points_deg=points)


def check_routes(problem: RoutingProblem, routes: Sequence[Sequence[int]]) -> list[str]:
    """Violations of ``routes`` (one job sequence per vehicle); empty when feasible.

    Independent of the solver: each vehicle leaves its start at the start of its shift,
    drives the matrix durations, waits for windows to open, and must start each service
    by the job's ``latest_s`` and be back by the end of its shift. Leaving as early as
    possible is never worse, so this is exact. Also checks capacity, skills, and that no
    job is served twice.
    """
    out: list[str] = []
    if len(routes) != len(problem.vehicles):
        return [f"expected {len(problem.vehicles)} routes, got {len(routes)}"]
    dur = problem.duration_matrix
    seen: set[int] = set()
    for k, (vehicle, route) in enumerate(zip(problem.vehicles, routes, strict=True)):
        t, here, load = vehicle.shift_start_s, vehicle.start_node, 0
        for j in route:
            if not 0 <= j < len(problem.jobs):
                out.append(f"vehicle {k}: unknown job {j}")
                continue
            if j in seen:
                out.append(f"vehicle {k}: job {j} served more than once")
            seen.add(j)
            job = problem.jobs[j]
            if not job.required_skills <= vehicle.skills:
                out.append(f"vehicle {k}: lacks skills {sorted(job.required_skills - vehicle.skills)} for job {j}")
            load += job.demand
            start = max(t + int(dur[here, job.node]), job.earliest_s)
            if job.latest_s is not None and start > job.latest_s:
                out.append(f"vehicle {k}: job {j} starts at {start}, after its window closes at {job.latest_s}")
            t, here = start + job.service_s, job.node
        if load > vehicle.capacity:
            out.append(f"vehicle {k}: load {load} exceeds capacity {vehicle.capacity}")
        end = t + int(dur[here, vehicle.end])
        if end > vehicle.shift_end_s:
            out.append(f"vehicle {k}: back at {end}, after its shift ends at {vehicle.shift_end_s}")
    return out


def route_distance_m(problem: RoutingProblem, routes: Sequence[Sequence[int]]) -> int:
    """Distance of ``routes``, return legs included, from the problem's distance matrix."""
    dist = problem.distance_matrix
    total = 0
    for vehicle, route in zip(problem.vehicles, routes, strict=True):
        if not route:
            continue
        nodes = [vehicle.start_node, *(problem.jobs[j].node for j in route), vehicle.end]
        total += sum(int(dist[a, b]) for a, b in itertools.pairwise(nodes))
    return total


def greedy_routes(problem: RoutingProblem, values: Sequence[int]) -> list[list[int]]:
    """"Nearest highest-priority first": all technicians in parallel by earliest free time.

    The technician free soonest takes, among the jobs it can still do (skill, van load,
    service starting within the window, back at its end depot before its shift ends),
    the one with the most value per second of travel, waiting and service; a technician
    with nothing left worth doing goes home.
    """
    jobs = problem.jobs
    n = len(jobs)
    dur = problem.duration_matrix
    node = np.array([job.node for job in jobs], dtype=np.int64)
    demand = np.array([job.demand for job in jobs], dtype=np.int64)
    service = np.array([job.service_s for job in jobs], dtype=np.int64)
    earliest = np.array([job.earliest_s for job in jobs], dtype=np.int64)
    latest = np.array(
        [np.iinfo(np.int64).max if job.latest_s is None else job.latest_s for job in jobs], dtype=np.int64
    )
    value = np.asarray(values, dtype=np.float64)
    open_ = value > 0  # a worthless job is not worth the drive
    able = [
        np.array([job.required_skills <= v.skills for job in jobs], dtype=bool) for v in problem.vehicles
    ]
    routes: list[list[int]] = [[] for _ in problem.vehicles]
    state = [(v.start_node, 0) for v in problem.vehicles]  # (location, load)
    heap = [(v.shift_start_s, k) for k, v in enumerate(problem.vehicles)]
    heapq.heapify(heap)
    while heap and n:
        t, k = heapq.heappop(heap)
        vehicle = problem.vehicles[k]
        here, load = state[k]
        start = np.maximum(t + dur[here, node], earliest)
        done = start + service
        ok = (
            open_ & able[k] & (load + demand <= vehicle.capacity) & (start <= latest)
            & (done + dur[node, vehicle.end] <= vehicle.shift_end_s)
        )
        if not ok.any():
            continue  # goes home
        score = np.where(ok, value / np.maximum(done - t, 1), -1.0)
        j = int(np.argmax(score))
        routes[k].append(j)
        open_[j] = False
        state[k] = (int(node[j]), load + int(demand[j]))
        heapq.heappush(heap, (int(done[j]), k))
    return routes


def _summary(
    problem: RoutingProblem, values: Sequence[int], routes: Sequence[Sequence[int]]
) -> tuple[int, int, float, list[str]]:
    violations = check_routes(problem, routes)
    served = sum(len(r) for r in routes)
    collected = sum(values[j] for r in routes for j in r)
    return served, collected, round(route_distance_m(problem, routes) / 1000, 2), violations


def _peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux.
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def main_plan(
    jobs: int = 1000,
    technicians: int = 20,
    van_capacity: int = 30,
    time_limit_s: float = 60.0,
    seed: int = 7,
    engines: Sequence[str] = ("ortools",),
    *,
    depots: int | None = None,
    radius_m: float | None = None,
) -> dict[str, Any]:
    """Plan one day with the routing model (each engine of ``engines``) and with the greedy;
    report all.

    ``depots`` and ``radius_m`` default to :func:`city_scale` of the day's size.

    Returns
    -------
    dict
        ``jobs, technicians, van_capacity, time_limit_s, depots, radius_km``; the travel
        matrices' ``matrix_build_s`` and ``matrix_mb``; for the first engine of ``engines``
        (``engine``): ``replan_time_s, served, value_collected, value_total, distance_km,
        feasible``; for the greedy: ``greedy_served, greedy_value_collected,
        greedy_distance_km, greedy_feasible, greedy_time_s``; ``value_ratio`` (model over
        greedy value); with more than one engine, ``engines`` holds each engine's
        ``replan_time_s, served, value_collected, distance_km, feasible, value_ratio`` (or
        its ``error`` when it found no plan). ``violations`` / ``greedy_violations`` list
        the first few problems the checker found, when a plan is infeasible;
        ``peak_rss_mb`` is the process's peak resident memory.
    """
    if not engines:
        raise ValueError("Expected at least one engine, got none.")
    auto_depots, auto_radius = city_scale(jobs, technicians)
    depots = auto_depots if depots is None else depots
    radius_m = auto_radius if radius_m is None else radius_m
    started = time.perf_counter()
    day = build_day(jobs, technicians, van_capacity, seed, depots=depots, radius_m=radius_m)
    build_s = time.perf_counter() - started
    problem = day.problem

    started = time.perf_counter()
    greedy = greedy_routes(problem, day.values)
    greedy_time_s = time.perf_counter() - started
    g_served, g_collected, g_km, g_violations = _summary(problem, day.values, greedy)

    per_engine: dict[str, dict[str, Any]] = {}
    for engine in engines:
        started = time.perf_counter()
        try:
            plan = solve(problem, RoutingParams(time_limit_s=time_limit_s, engine=engine))  # type: ignore[arg-type]
        except NoSolutionError as err:
            per_engine[engine] = {"replan_time_s": round(time.perf_counter() - started, 2), "error": str(err)}
            continue
        replan_time_s = time.perf_counter() - started
        served, collected, km, violations = _summary(problem, day.values, [list(r) for r in plan.job_routes()])
        per_engine[engine] = {
            "replan_time_s": round(replan_time_s, 2), "served": served, "value_collected": collected,
            "distance_km": km, "feasible": not violations, "status": plan.status,
            "value_ratio": round(collected / g_collected, 4) if g_collected else None,
            **({"violations": violations[:5]} if violations else {}),
        }  # fmt: skip
    first = per_engine[engines[0]]
    result: dict[str, Any] = {
        "jobs": jobs,
        "technicians": technicians,
        "van_capacity": van_capacity,
        "time_limit_s": time_limit_s,
        "depots": depots,
        "radius_km": round(radius_m / 1000, 2),
        "day_build_s": round(build_s, 2),
        "matrix_mb": round((problem.distance_matrix.nbytes + problem.duration_matrix.nbytes) / 2**20, 1),
        "engine": engines[0],
        "replan_time_s": first["replan_time_s"],
        "served": first.get("served"),
        "value_collected": first.get("value_collected"),
        "value_total": sum(day.values),
        "distance_km": first.get("distance_km"),
        "feasible": first.get("feasible", False),
        "greedy_served": g_served,
        "greedy_value_collected": g_collected,
        "greedy_distance_km": g_km,
        "greedy_feasible": not g_violations,
        "greedy_time_s": round(greedy_time_s, 3),
        "value_ratio": first.get("value_ratio"),
    }
    if len(engines) > 1:
        result["engines"] = per_engine
    if "violations" in first:
        result["violations"] = first["violations"]
    if "error" in first:
        result["error"] = first["error"]
    if g_violations:
        result["greedy_violations"] = g_violations[:5]
    result["peak_rss_mb"] = _peak_rss_mb()
    return result

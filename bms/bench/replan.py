"""`bms bench replan`: how fast an urgent job gets onto a live plan, and what a full re-plan buys.

A seeded day (:func:`bms.bench.plan.build_day`, scaled by :func:`~bms.bench.plan.city_scale`)
is solved once per engine: that is the plan in force, with each technician's first stop under
way (locked). Then ``events`` urgent jobs arrive, one at a time, each against that same live
plan, and each goes through exactly what the planner's urgent round does
(:meth:`planners.planner.Planner.plan_urgent`): travel matrices for the round's points, the
routing problem, then :func:`planners.insertion.solve_urgent_async` in its own warm worker
process (pickling included). The latency is all of that, per event.

Last, a full re-plan warm-started from the first urgent plan runs at each budget of
``replan_budgets_s``: the value it collects against the time it takes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import multiprocessing
import statistics
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np

from bms.bench.plan import (
    NOW_S,
    PENALTY_PER_VALUE,
    build_day,
    check_routes,
    city_scale,
    route_distance_m,
)
from planners.insertion import solve_urgent_async, warm_up_async
from planners.problem import RoutingProblem
from planners.routing import solve
from planners.routing_params import RoutingParams
from planners.travel import HaversineTravel

__all__ = ["main_replan"]

#: An urgent job's value, in the bench day's units (``round(1000 * priority)``): the top of
#: the scale, as a critical battery outranks every routine swap.
URGENT_VALUE = 1000
#: Urgent jobs must start within this long: a critical battery waits no longer.
URGENT_WINDOW_S = 2 * 3600


def _value(values: Sequence[int], routes: Sequence[Sequence[int]]) -> int:
    return sum(values[j] for r in routes for j in r)


def _pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


async def _urgent_events(
    live: RoutingProblem, points: np.ndarray[Any, Any], urgent: Sequence[Any], values: list[int],
    routes: list[list[int]], locked: dict[int, list[int]], params: RoutingParams, improve_s: float,
    executor: ProcessPoolExecutor,
) -> tuple[dict[str, Any], list[list[int]]]:  # fmt: skip
    travel = HaversineTravel(detour_factor=1.3, speed_kmh=20.0)
    latencies, matrix_s, inserted, feasible = [], [], 0, 0
    first_routes: list[list[int]] = []
    for i, job in enumerate(urgent):
        started = time.perf_counter()
        # The round's points: the live day's, plus the urgent job's site.
        m = travel.matrices(np.vstack([points[: live.num_locations], points[job.node]]))
        matrix_s.append(time.perf_counter() - started)
        new = dataclasses.replace(job, node=live.num_locations)
        problem = RoutingProblem(m.duration_s, m.distance_m, live.vehicles, (*live.jobs, new))
        plan = await solve_urgent_async(
            problem, params, routes, locked, improve_s=improve_s, may_eject=[len(live.jobs)], executor=executor
        )
        latencies.append(time.perf_counter() - started)
        got = plan.job_routes()
        inserted += any(len(live.jobs) in r for r in got)
        feasible += not check_routes(problem, got)
        if i == 0:
            first_routes = got
    return {
        "improve_s": improve_s,
        "events": len(urgent),
        "latency_median_s": round(statistics.median(latencies), 3),
        "latency_p95_s": round(_pct(latencies, 95), 3),
        "latency_max_s": round(max(latencies), 3),
        "matrix_median_s": round(statistics.median(matrix_s), 3),
        "inserted": inserted,
        "feasible": feasible,
    }, first_routes


def main_replan(
    jobs: int = 1600,
    technicians: int = 32,
    *,
    engines: Sequence[str] = ("ortools", "pyvrp"),
    live_time_limit_s: float = 60.0,
    events: int = 20,
    improve_s: Sequence[float] = (0.0, 1.0),
    replan_budgets_s: Sequence[float] = (5.0, 20.0, 60.0),
    seed: int = 7,
) -> dict[str, Any]:
    """Urgent-insertion latency on a live plan, and full re-plan value against time, per engine.

    The defaults give a live plan of about 1,000 jobs (1,600 candidates, 32 technicians).

    Returns
    -------
    dict
        ``jobs, technicians, events``; per engine under ``engines``: ``live`` (the plan in
        force: ``planned_jobs, value, solve_s``), ``urgent`` (one entry per ``improve_s``:
        latency median, p95 and max, the median time of the round's travel matrices, how
        many urgent jobs were inserted, how many plans the independent checker passed) and
        ``full_replan`` (per budget: ``value, served, distance_km, time_s, feasible``).
    """
    depots, radius_m = city_scale(jobs, technicians)
    day = build_day(jobs + events, technicians, seed=seed, depots=depots, radius_m=radius_m)
    full = day.problem
    live = dataclasses.replace(full, jobs=full.jobs[:jobs])
    # The urgent jobs: the day's last sites, made critical (must start within two hours).
    urgent = [
        dataclasses.replace(j, drop_penalty=URGENT_VALUE * PENALTY_PER_VALUE, latest_s=NOW_S + URGENT_WINDOW_S, earliest_s=NOW_S)
        for j in full.jobs[jobs:]
    ]  # fmt: skip
    values = [*day.values[:jobs], URGENT_VALUE]
    executor = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
    out: dict[str, Any] = {"benchmark": "replan", "jobs": jobs, "technicians": technicians, "events": events}
    per_engine: dict[str, Any] = {}
    try:
        asyncio.run(warm_up_async(executor))
        for engine in engines:
            params = RoutingParams(time_limit_s=live_time_limit_s, engine=engine)  # type: ignore[arg-type]
            started = time.perf_counter()
            plan = solve(live, params)
            live_s = time.perf_counter() - started
            routes = plan.job_routes()
            locked = {k: r[:1] for k, r in enumerate(routes) if r}
            row: dict[str, Any] = {
                "live": {"planned_jobs": plan.served, "value": _value(values, routes), "solve_s": round(live_s, 2)},
                "urgent": [],
            }
            first: list[list[int]] = []
            for budget in improve_s:
                stats, got = asyncio.run(
                    _urgent_events(live, day.points_deg, urgent, values, routes, locked, params, budget, executor)
                )
                row["urgent"].append(stats)
                first = got or first
            # Full re-plans of the first event's problem, warm-started from its urgent plan.
            m = HaversineTravel(detour_factor=1.3, speed_kmh=20.0).matrices(
                np.vstack([day.points_deg[: live.num_locations], day.points_deg[urgent[0].node]])
            )
            problem = RoutingProblem(
                m.duration_s, m.distance_m, live.vehicles,
                (*live.jobs, dataclasses.replace(urgent[0], node=live.num_locations)),
            )  # fmt: skip
            row["full_replan"] = []
            for budget in replan_budgets_s:
                started = time.perf_counter()
                again = solve(problem, dataclasses.replace(params, time_limit_s=budget), first, locked)
                took = time.perf_counter() - started
                got = again.job_routes()
                row["full_replan"].append({
                    "budget_s": budget, "time_s": round(took, 2), "value": _value(values, got),
                    "served": again.served, "distance_km": round(route_distance_m(problem, got) / 1000, 1),
                    "feasible": not check_routes(problem, got),
                })  # fmt: skip
            row["urgent_plan_value"] = _value(values, first)
            per_engine[engine] = row
    finally:
        executor.shutdown()
    out["engines"] = per_engine
    return out

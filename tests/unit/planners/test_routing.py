"""Tests for :mod:`planners.routing`: constraints, drops, skills, locks and warm starts."""

from __future__ import annotations

import dataclasses

import pytest

from planners import (
    Job,
    NoSolutionError,
    ProblemError,
    RoutingParams,
    Vehicle,
    WarmStartWarning,
    solve,
)

from .factories import QUICK, assert_schedule_consistent, line_problem, route_cost

DAY_S = 8 * 3600


@pytest.fixture(params=["GUIDED_LOCAL_SEARCH", "ITERATED_LOCAL_SEARCH", "pyvrp"])
def quick(request: pytest.FixtureRequest) -> RoutingParams:
    """:data:`QUICK` with each engine and search the planner offers: OR-Tools' two, PyVRP."""
    if request.param == "pyvrp":
        return dataclasses.replace(QUICK, engine="pyvrp")
    return dataclasses.replace(QUICK, local_search_metaheuristic=request.param)


@pytest.fixture(params=["ortools", "pyvrp"])
def engine(request: pytest.FixtureRequest) -> RoutingParams:
    """:data:`QUICK` on each engine (OR-Tools with its default search)."""
    return dataclasses.replace(QUICK, engine=request.param)


def van(**overrides: object) -> Vehicle:
    """A vehicle at the depot (location 0) with a day shift and room for 10 batteries."""
    fields: dict[str, object] = {"start_node": 0, "shift_end_s": DAY_S, "capacity": 10}
    fields.update(overrides)
    return Vehicle(**fields)  # type: ignore[arg-type]


def test_capacity_is_respected(quick: RoutingParams) -> None:
    """Four jobs of 5 batteries and vans of 10: two vans, two jobs each, all served."""
    problem = line_problem(
        [0, 1, 2, 3, 4], [van(), van(), van()], [Job(node=n, demand=5) for n in (1, 2, 3, 4)]
    )
    plan = solve(problem, quick)
    assert plan.dropped == ()
    assert sorted(r.load for r in plan.routes if r.used) == [10, 10]
    assert_schedule_consistent(problem, plan)


def test_time_windows_are_respected(quick: RoutingParams) -> None:
    """The far job's window closes first, so the route visits it first despite the detour."""
    jobs = [
        Job(node=1, service_s=300, earliest_s=0, latest_s=DAY_S),
        Job(node=2, service_s=300, earliest_s=0, latest_s=400),
    ]
    problem = line_problem([0, 1, 5], [van()], jobs)
    plan = solve(problem, quick)
    assert plan.routes[0].jobs == (1, 0)
    assert plan.routes[0].stops[0].start_s <= 400
    assert_schedule_consistent(problem, plan)


def test_waiting_for_a_window_is_allowed(quick: RoutingParams) -> None:
    """A vehicle arriving before a window opens waits; the stop reports arrival and start."""
    problem = line_problem([0, 1], [van()], [Job(node=1, earliest_s=3600, latest_s=4000)])
    plan = solve(problem, quick)
    stop = plan.routes[0].stops[0]
    assert stop.start_s == 3600
    assert stop.arrival_s <= stop.start_s
    assert_schedule_consistent(problem, plan)


def test_shifts_are_respected(quick: RoutingParams) -> None:
    """A short shift cannot reach the far job, so the long-shift vehicle takes it."""
    short = van(shift_start_s=0, shift_end_s=10 * 60)
    long = van(shift_start_s=3600, shift_end_s=DAY_S)
    problem = line_problem([0, 1, 20], [short, long], [Job(node=2), Job(node=1)])
    plan = solve(problem, quick)
    assert 0 in plan.routes[1].jobs
    assert plan.routes[1].start_s >= 3600
    assert plan.routes[0].end_s <= 10 * 60
    assert_schedule_consistent(problem, plan)


def test_an_overloaded_day_drops_the_least_valuable_jobs(quick: RoutingParams) -> None:
    """Room for 3 of 5 jobs: the two of least value are dropped, the plan still succeeds."""
    values = [10_000, 50_000, 20_000, 40_000, 30_000]
    jobs = [Job(node=1 + j, demand=1, drop_penalty=v) for j, v in enumerate(values)]
    problem = line_problem([0, 1, 2, 3, 4, 5], [van(capacity=3)], jobs)
    plan = solve(problem, quick)
    assert plan.dropped == (0, 2)
    assert plan.served == 3
    assert plan.objective == route_cost(problem, plan.job_routes())


def test_skills_are_respected(quick: RoutingParams) -> None:
    """A high-voltage job goes to the only certified van; a job nobody can do is dropped."""
    jobs = [
        Job(node=1, required_skills={"high_voltage"}),
        Job(node=1),
        Job(node=2, required_skills={"welding"}, drop_penalty=1),
    ]
    vans = [van(), van(start_node=3, skills={"high_voltage"})]
    problem = line_problem([0, 1, 2, 50], vans, jobs)
    plan = solve(problem, quick)
    assert 0 in plan.routes[1].jobs
    assert 0 not in plan.routes[0].jobs
    assert plan.dropped == (2,)


def test_mandatory_job_without_a_skilled_vehicle_is_rejected() -> None:
    """A mandatory job no vehicle can do is a problem error, not a solver failure."""
    with pytest.raises(ProblemError, match="Expected a vehicle with skills \\['welding'\\]"):
        line_problem([0, 1], [van()], [Job(node=1, required_skills={"welding"})])


def test_locked_stops_stay_first_and_in_order(quick: RoutingParams) -> None:
    """Started stops keep their vehicle and order at the head of the route, however costly."""
    jobs = [Job(node=n) for n in (1, 2, 3, 4)]
    problem = line_problem([0, 1, 2, 3, 4], [van(), van()], jobs)
    plan = solve(problem, quick, locked={1: [3, 0]})
    assert plan.routes[1].jobs[:2] == (3, 0)
    assert plan.dropped == ()
    assert_schedule_consistent(problem, plan)


def test_locked_stops_must_be_consistent() -> None:
    """A job locked on two vehicles, or to a vehicle without its skills, is rejected."""
    problem = line_problem(
        [0, 1, 2], [van(), van()], [Job(node=1), Job(node=2, required_skills={"hv"}, drop_penalty=5)]
    )
    with pytest.raises(ProblemError, match="job 0 on vehicles 0 and 1"):
        solve(problem, QUICK, locked={0: [0], 1: [0]})
    with pytest.raises(ProblemError, match="Expected locked to give job 1 to a vehicle"):
        solve(problem, QUICK, locked={0: [1]})
    with pytest.raises(ProblemError, match="Expected locked vehicles in \\[0, 2\\), got 5"):
        solve(problem, QUICK, locked={5: [0]})


def test_warm_start_is_at_least_as_good_as_the_initial_routes(quick: RoutingParams) -> None:
    """Improving a deliberately poor plan never makes it worse, and says it started warm."""
    jobs = [Job(node=n, demand=1) for n in range(1, 9)]
    problem = line_problem(list(range(9)), [van(), van()], jobs)
    poor = [[7, 0, 5, 2], [1, 6, 3, 4]]
    plan = solve(problem, dataclasses.replace(quick, solution_limit=5), initial_routes=poor)
    assert plan.warm_started
    assert plan.objective <= route_cost(problem, poor)
    assert plan.objective == route_cost(problem, plan.job_routes())
    assert plan.dropped == ()


def test_warm_start_inserts_jobs_missing_from_the_initial_routes(quick: RoutingParams) -> None:
    """A job that arrived since the last plan is inserted into the warm-started plan."""
    jobs = [Job(node=n) for n in (1, 2, 3, 4)]
    problem = line_problem([0, 1, 2, 3, 4], [van()], jobs)
    plan = solve(problem, quick, initial_routes=[[0, 1, 2]])
    assert plan.warm_started
    assert plan.dropped == ()


def test_infeasible_warm_start_falls_back_with_a_warning(engine: RoutingParams) -> None:
    """Initial routes breaking a window (it has since closed) warn and are replanned."""
    jobs = [Job(node=1, service_s=600), Job(node=2, latest_s=400)]
    problem = line_problem([0, 1, 5], [van()], jobs)
    with pytest.warns(WarmStartWarning, match="infeasible"):
        plan = solve(problem, engine, initial_routes=[[0, 1]])
    assert not plan.warm_started
    assert plan.routes[0].jobs == (1, 0)


def test_warm_start_must_keep_locked_stops_first() -> None:
    """Initial routes that contradict the locked stops are rejected before solving."""
    problem = line_problem([0, 1, 2], [van()], [Job(node=1), Job(node=2)])
    with pytest.raises(ProblemError, match="start with its locked stops \\[1\\]"):
        solve(problem, QUICK, initial_routes=[[0, 1]], locked={0: [1]})


def test_no_solution_raises(engine: RoutingParams) -> None:
    """A mandatory job whose window closes before anyone can get there cannot be planned."""
    problem = line_problem([0, 100], [van()], [Job(node=1, latest_s=60)])
    with pytest.raises(NoSolutionError, match="make jobs optional") as info:
        solve(problem, dataclasses.replace(engine, solution_limit=None))
    assert info.value.status.startswith({"ortools": "ROUTING_", "pyvrp": "PYVRP_"}[engine.engine])


def test_an_unreachable_locked_stop_has_no_solution(engine: RoutingParams) -> None:
    """A stop locked on a route that can no longer reach it in its window: no plan."""
    problem = line_problem([0, 100], [van()], [Job(node=1, latest_s=60, drop_penalty=5)])
    with pytest.raises(NoSolutionError):
        solve(problem, dataclasses.replace(engine, solution_limit=None), locked={0: [0]})


def test_solution_limit_makes_solves_repeatable(engine: RoutingParams) -> None:
    """With a solution limit instead of a binding time limit, two solves agree exactly."""
    jobs = [Job(node=n, demand=1 + n % 3, earliest_s=60 * (n % 4)) for n in range(1, 13)]
    problem = line_problem([0, *(n * 7 % 13 for n in range(1, 13))], [van(), van(), van()], jobs)
    params = dataclasses.replace(engine, time_limit_s=30.0, solution_limit=40)
    first, second = solve(problem, params), solve(problem, params)
    assert first.job_routes() == second.job_routes()
    assert first.objective == second.objective


def test_hierarchical_objective_uses_fewer_vehicles(quick: RoutingParams) -> None:
    """Vehicles first: one van does everything even though two would drive much less."""
    jobs = [Job(node=1), Job(node=2)]
    vans = [van(start_node=0), van(start_node=3)]
    problem = line_problem([0, 1, 19, 20], vans, jobs)
    distance = solve(problem, dataclasses.replace(quick, objective="distance"))
    vehicles = solve(problem, dataclasses.replace(quick, objective="hierarchical"))
    assert (distance.vehicles_used, distance.total_distance) == (2, 400)
    assert (vehicles.vehicles_used, vehicles.total_distance) == (1, 3800)


def test_jobs_opening_after_every_shift(engine: RoutingParams) -> None:
    """An optional job whose window opens after all shifts end is dropped; a mandatory one is an error."""
    late = van(shift_end_s=100)
    problem = line_problem([0, 1], [late], [Job(node=1, earliest_s=200, drop_penalty=5)])
    assert solve(problem, engine).dropped == (0,)
    problem = line_problem([0, 1], [late], [Job(node=1, earliest_s=200)])
    with pytest.raises(ProblemError, match="window opens at 200, after every shift ends"):
        solve(problem, engine)


def test_a_day_without_jobs_plans_empty_routes(engine: RoutingParams) -> None:
    """No jobs: every vehicle gets an empty route and nothing is dropped."""
    plan = solve(line_problem([0], [van(), van()], []), engine)
    assert [r.used for r in plan.routes] == [False, False]
    assert (plan.dropped, plan.total_distance, plan.objective) == ((), 0, 0)

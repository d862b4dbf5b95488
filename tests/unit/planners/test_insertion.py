"""Tests for :mod:`planners.insertion`: the urgent re-plan's repair, insertion and improvement."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from bms.bench.plan import build_day, check_routes
from planners import Job, NoSolutionError, ProblemError, RoutingProblem, Vehicle
from planners.insertion import insert_jobs, plan_from_routes, solve_urgent

from .factories import QUICK, assert_schedule_consistent, line_problem, route_cost

DAY_S = 8 * 3600


def van(**overrides: object) -> Vehicle:
    """A vehicle at the depot (location 0) with a day shift and room for 10 batteries."""
    fields: dict[str, object] = {"start_node": 0, "shift_end_s": DAY_S, "capacity": 10}
    fields.update(overrides)
    return Vehicle(**fields)  # type: ignore[arg-type]


def test_a_new_job_goes_where_the_detour_is_smallest() -> None:
    """Job at 3 between the stops at 2 and 4 of one route: no detour there, so it goes there
    and not to the other van's route out at -5."""
    problem = line_problem(
        [0, 2, 4, -5, 3],
        [van(), van()],
        [Job(node=n, drop_penalty=10_000) for n in (1, 2, 3, 4)],
    )
    routes = insert_jobs(problem, [[0, 1], [2]])
    assert routes == [[0, 3, 1], [2]]
    plan = plan_from_routes(problem, routes)
    assert plan.dropped == () and plan.status == "INSERTION"
    assert_schedule_consistent(problem, plan)


def test_a_job_worth_less_than_its_detour_stays_dropped() -> None:
    """A drop penalty below the detour's distance: leaving it out is cheaper."""
    problem = line_problem([0, 50], [van()], [Job(node=1, drop_penalty=100)])
    assert insert_jobs(problem, [[]]) == [[]]
    problem = line_problem([0, 50], [van()], [Job(node=1, drop_penalty=10_001)])
    assert insert_jobs(problem, [[]]) == [[0]]


def test_the_repair_drops_stops_whose_window_has_closed_but_keeps_locked_ones() -> None:
    """The route in force visits 1 then 2; by now 2's window is shut: it leaves the route.
    A locked stop stays even though its window has also shut."""
    jobs = [
        Job(node=1, latest_s=None, drop_penalty=10_000),
        Job(node=2, latest_s=100, drop_penalty=10_000),
        Job(node=3, latest_s=50, drop_penalty=10_000),
    ]
    problem = line_problem([0, 1, 2, 3], [van(shift_start_s=60)], jobs)
    assert insert_jobs(problem, [[0, 1]]) == [[0]]
    locked_late = line_problem([0, 1, 2, 3], [van(shift_start_s=60)], jobs)
    assert insert_jobs(locked_late, [[2, 0, 1]], {0: [2]}) == [[2, 0]]


def test_insertion_respects_skills_capacity_and_the_shift() -> None:
    """A replacement only the skilled van may do; a full van; a shift too short for a stop."""
    skilled = van(skills=frozenset({"swap", "replace"}), capacity=1)
    plain = van(skills=frozenset({"swap"}), capacity=1)
    short = van(skills=frozenset({"swap"}), capacity=5, shift_end_s=10 * 60)
    problem = line_problem(
        [0, 1, 2, 30],
        [plain, skilled, short],
        [
            Job(node=1, demand=1, drop_penalty=10_000, required_skills=frozenset({"replace"})),
            Job(node=2, demand=1, drop_penalty=10_000, required_skills=frozenset({"swap"})),
            Job(node=3, demand=1, drop_penalty=100_000, required_skills=frozenset({"swap"})),
        ],
    )
    routes = insert_jobs(problem, [[], [], []])
    # Job 2 (most valuable) goes to the plain van (the short shift cannot reach 30 and back,
    # the skilled van could but costs the same; ties go to the first position); job 0 needs
    # the skilled van; job 1 fits only the short shift's van, as the others are full.
    assert routes == [[2], [0], [1]]
    assert check_routes(problem, routes) == []


def test_a_mandatory_job_that_fits_nowhere_is_reported() -> None:
    """plan_from_routes refuses routes that leave a mandatory job out, or that break a window."""
    problem = line_problem([0, 1], [van(shift_end_s=30)], [Job(node=1)])
    routes = insert_jobs(problem, [[]])
    assert routes == [[]]
    with pytest.raises(NoSolutionError, match="mandatory"):
        plan_from_routes(problem, routes)
    with pytest.raises(NoSolutionError, match="after its window closes"):
        plan_from_routes(problem, [[0]])
    late = line_problem([0, 1], [van(shift_end_s=100)], [Job(node=1, service_s=60)])
    with pytest.raises(NoSolutionError, match="back by 100"):
        plan_from_routes(late, [[0]])


def test_routes_must_start_with_their_locked_stops() -> None:
    """A locked head that the routes do not start with is a caller's mistake, said so."""
    problem = line_problem([0, 1, 2], [van()], [Job(node=1, drop_penalty=1), Job(node=2, drop_penalty=1)])
    with pytest.raises(ProblemError, match="locked stops"):
        insert_jobs(problem, [[0, 1]], {0: [1]})


@pytest.mark.parametrize("seed", range(8))
def test_one_insertion_is_the_cheapest_feasible_position_by_brute_force(seed: int) -> None:
    """On random small problems, the position chosen for one new job is the cheapest of all
    positions an independent checker accepts (and no feasible position is missed)."""
    rng = np.random.default_rng(seed)
    n = 9
    points = rng.uniform(-20, 20, size=n + 1).round().astype(int)
    points[0] = 0
    vehicles = [van(capacity=4, shift_end_s=int(rng.integers(40, 120)) * 60) for _ in range(3)]
    jobs = [
        Job(
            node=i + 1, demand=1, service_s=120, earliest_s=int(rng.integers(0, 30)) * 60,
            latest_s=int(rng.integers(40, 120)) * 60, drop_penalty=50_000,
        )
        for i in range(n)
    ]  # fmt: skip
    problem = line_problem(list(points), vehicles, jobs)
    # A live plan of the first n - 1 jobs, made feasible by the repair itself.
    base = insert_jobs(dataclasses.replace(problem, jobs=(*jobs[:-1], dataclasses.replace(jobs[-1], drop_penalty=0))), [[], [], []])
    new = n - 1
    assert all(new not in r for r in base)
    best = None
    for k, route in enumerate(base):
        for p in range(len(route) + 1):
            candidate = [list(r) for r in base]
            candidate[k].insert(p, new)
            if check_routes(problem, candidate) == []:
                cost = route_cost(problem, candidate)
                best = cost if best is None else min(best, cost)
    got = insert_jobs(problem, base)
    assert [[j for j in r if j != new] for r in got] == base
    if best is None:
        assert all(new not in r for r in got)
    else:
        assert any(new in r for r in got)
        assert route_cost(problem, got) == best


@pytest.mark.parametrize("engine", ["ortools", "pyvrp"])
def test_solve_urgent_inserts_keeps_locks_and_is_never_worse_than_insertion(engine: str) -> None:
    """An urgent round on a 60-job day: the locked heads stay, the new critical job is served,
    the plan is feasible, and the improvement never costs more than insertion alone."""
    day = build_day(jobs=60, technicians=3, seed=3)
    problem = day.problem
    # The plan in force: everything but the last job, by insertion alone.
    urgent = len(problem.jobs) - 1
    jobs = list(problem.jobs)
    live = insert_jobs(dataclasses.replace(problem, jobs=(*jobs[:-1], dataclasses.replace(jobs[-1], drop_penalty=0))), [[], [], []])
    assert all(urgent not in r for r in live)
    critical = dataclasses.replace(jobs[-1], drop_penalty=10**9, latest_s=None)
    now = dataclasses.replace(problem, jobs=(*jobs[:-1], critical))
    locked = {k: r[:1] for k, r in enumerate(live) if r}
    params = dataclasses.replace(QUICK, engine=engine)  # type: ignore[arg-type]
    inserted_only = solve_urgent(now, params, live, locked, improve_s=0.0)
    improved = solve_urgent(now, params, live, locked, improve_s=0.5)
    for plan in (inserted_only, improved):
        routes = plan.job_routes()
        assert check_routes(now, routes) == []
        assert any(urgent in r for r in routes)
        assert all(routes[k][:1] == head for k, head in locked.items())
        assert plan.warm_started
    assert route_cost(now, improved.job_routes()) <= route_cost(now, inserted_only.job_routes())
    assert inserted_only.status == "INSERTION"


def test_solve_urgent_without_a_plan_builds_one_from_nothing() -> None:
    """No plan in force yet: insertion from empty routes is a plan on its own."""
    problem = line_problem([0, 1, 2, 3], [van(), van()], [Job(node=n, drop_penalty=10_000) for n in (1, 2, 3)])
    plan = solve_urgent(problem, QUICK, None, improve_s=0.0)
    assert plan.dropped == () and plan.served == 3
    assert_schedule_consistent(problem, plan)


def test_plan_from_routes_matches_the_independent_checker_on_a_day() -> None:
    """Insertion from scratch on a seeded 200-job day: feasible by the bench's checker, and the
    plan's distance is the checker's."""
    from bms.bench.plan import route_distance_m

    day = build_day(jobs=200, technicians=5, seed=11)
    routes = insert_jobs(day.problem, [[] for _ in day.problem.vehicles])
    assert check_routes(day.problem, routes) == []
    plan = plan_from_routes(day.problem, routes)
    assert plan.total_distance == route_distance_m(day.problem, routes)
    assert sum(len(r) for r in routes) > 100
    served = {j for r in routes for j in r}
    assert sorted(set(range(200)) - served) == list(plan.dropped)
    assert isinstance(day.problem, RoutingProblem)
    assert list(itertools.chain.from_iterable(plan.job_routes())) == [j for r in routes for j in r]


def test_an_urgent_job_takes_the_place_of_a_less_valuable_stop() -> None:
    """A van whose shift is full: the urgent job fits only instead of a routine stop. Plain
    insertion leaves it out; allowed to eject, it replaces the least valuable stop whose place
    makes room, and the ejected job is offered to the other routes (here: none has room)."""
    jobs = [
        Job(node=1, service_s=1800, drop_penalty=500),
        Job(node=2, service_s=1800, drop_penalty=100),
        Job(node=3, service_s=1800, drop_penalty=90_000),  # urgent
    ]
    problem = line_problem([0, 1, 2, 2], [van(shift_end_s=3600 + 4 * 60)], jobs)
    assert insert_jobs(problem, [[0, 1]]) == [[0, 1]]
    routes = insert_jobs(problem, [[0, 1]], may_eject=[2])
    assert sorted(routes[0]) == [0, 2]  # job 1 (worth least) made room; the order is a tie
    assert check_routes(problem, routes) == []
    # Not for a job worth less than every stop it could replace.
    cheap = dataclasses.replace(problem, jobs=(*jobs[:2], dataclasses.replace(jobs[2], drop_penalty=50)))
    assert insert_jobs(cheap, [[0, 1]], may_eject=[2]) == [[0, 1]]


def test_an_urgent_job_pushes_out_the_stops_it_makes_late() -> None:
    """The urgent job must be served first; doing so makes the two routine stops after it
    miss their windows. No single ejection frees enough time, so the job goes in and both
    late stops leave (their penalties together are less than the urgent job's)."""
    jobs = [
        Job(node=1, service_s=600, latest_s=11 * 60, drop_penalty=300),
        Job(node=2, service_s=600, latest_s=22 * 60, drop_penalty=300),
        Job(node=3, service_s=1200, latest_s=5 * 60, drop_penalty=90_000),  # urgent
    ]
    problem = line_problem([0, 1, 2, 3], [van()], jobs)
    assert insert_jobs(problem, [[0, 1]]) == [[0, 1]]
    routes = insert_jobs(problem, [[0, 1]], may_eject=[2])
    assert routes == [[2]]
    assert check_routes(problem, routes) == []

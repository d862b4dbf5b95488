"""Tests for :mod:`planners.solomon`: parsing, modelling and the independent checker."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from planners import SolomonFormatError, solve
from planners.solomon import (
    SolomonInstance,
    check_feasibility,
    parse_solomon,
    read_bks,
    read_solution,
    routes_of,
    to_routing_problem,
    total_distance,
)

from .factories import QUICK

# Three customers east of the depot, with blank lines, tabs and CRLF line ends.
TINY = (
    "tiny3\r\n\r\n"
    "VEHICLE\r\nNUMBER     CAPACITY\r\n   2\t 10\r\n\r\n"
    "CUSTOMER\r\n"
    "CUST NO.  XCOORD.   YCOORD.    DEMAND   READY TIME  DUE DATE   SERVICE   TIME\r\n"
    " \r\n"
    "    0      0   0    0     0   100    0\r\n"
    "    1      3   4    6     0    19    5\r\n"
    "\r\n"
    "    2      6   8    4    10    30    5   \r\n"
    "    3      0   5    5     0    50    5\r\n"
)


@pytest.fixture
def tiny() -> SolomonInstance:
    """A 3-customer instance: 2 vehicles of capacity 10, horizon 100."""
    return parse_solomon(TINY)


def test_parser_reads_a_hand_written_instance(tiny: SolomonInstance) -> None:
    """Blank lines, tabs and CRLF do not matter; row 0 is the depot."""
    assert tiny.name == "tiny3"
    assert (tiny.num_vehicles, tiny.capacity, tiny.num_customers) == (2, 10, 3)
    np.testing.assert_array_equal(tiny.x, [0, 3, 6, 0])
    np.testing.assert_array_equal(tiny.demand, [0, 6, 4, 5])
    np.testing.assert_array_equal(tiny.ready, [0, 0, 10, 0])
    np.testing.assert_array_equal(tiny.due, [100, 19, 30, 50])
    np.testing.assert_array_equal(tiny.service, [0, 5, 5, 5])


def test_parser_reads_c101(c101: SolomonInstance) -> None:
    """C101 has 100 customers and 25 vehicles of capacity 200; spot-check two rows."""
    assert c101.name == "C101"
    assert (c101.num_customers, c101.num_vehicles, c101.capacity) == (100, 25, 200)
    assert (c101.x[0], c101.y[0], c101.due[0]) == (40, 50, 1236)
    assert (c101.x[1], c101.y[1], c101.demand[1], c101.ready[1], c101.due[1], c101.service[1]) == (
        45, 68, 10, 912, 967, 90,
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty text"),
        ("x\n0 0 0 0 0 10 0\n1 1 1 1 0 10 0\n", "Expected a 'NUMBER CAPACITY' line"),
        ("x\n2 10\n0 0 0 0 0 10 0\n", "at least one customer"),
        ("x\n2 10\n0 0 0 0 0 10 0\n2 1 1 1 0 10 0\n", "numbered 0..1 in order, got 2 at row 1"),
        ("x\n2 10\n0 0 0 0 0 10 0\n1 1 1 1 0 10\n", "Expected 2 numbers .* or 7 .* on line 4, got 6"),
        ("x\n2 10\n0 0 0 0 0 10 0\n1 1 1 1 9 5 0\n", "ready time <= due date, got \\(9, 5\\)"),
    ],
)
def test_parser_rejects_malformed_files(text: str, message: str) -> None:
    """Each malformed file is rejected with a message naming what was wrong."""
    with pytest.raises(SolomonFormatError, match=message):
        parse_solomon(text)


def test_distance_model_is_dimacs_tenths(c101: SolomonInstance) -> None:
    """Distance objective: truncated tenths, travel time equal to distance, times x10."""
    problem = to_routing_problem(c101, "distance")
    # Depot (40, 50) to customer 1 (45, 68): sqrt(349) = 18.681 -> 18.6 -> 186 tenths.
    assert problem.distance_matrix[0, 1] == problem.duration_matrix[0, 1] == 186
    job = problem.jobs[0]
    assert (job.node, job.earliest_s, job.latest_s, job.service_s) == (1, 9120, 9670, 900)
    assert len(problem.vehicles) == 25
    assert all(j.mandatory for j in problem.jobs)


def test_hierarchical_model_rounds_time_up(c101: SolomonInstance) -> None:
    """Hierarchical objective: thousandths; travel times rounded up so integer-feasible is feasible."""
    problem = to_routing_problem(c101, "hierarchical")
    assert problem.distance_matrix[0, 1] == 18682  # 18681.55 rounded
    assert problem.duration_matrix[0, 1] == 18682  # rounded up
    assert problem.duration_matrix[0, 2] == 20616  # sqrt(425) = 20.6155 -> up
    assert problem.distance_matrix[0, 2] == 20616


FEASIBLE = [[1, 2], [3]]


def test_checker_accepts_a_feasible_solution(tiny: SolomonInstance) -> None:
    """Two routes serving everyone on time: no violations, distance from coordinates."""
    assert check_feasibility(tiny, FEASIBLE) == []
    assert total_distance(tiny, FEASIBLE) == pytest.approx(5 + 5 + 10 + 5 + 5)


@pytest.mark.parametrize(
    ("routes", "message"),
    [
        ([[1, 2], [3, 1]], "customer 1 served 2 times"),
        ([[1, 2]], "1 customers not served: \\[3\\]"),
        ([[1, 2], [3, 7]], "unknown customer 7"),
        ([[1], [2], [3]], "3 vehicles used, fleet has 2"),
        ([[1, 3], [2]], "route 1: load 11 exceeds capacity 10"),
        ([[2, 1], [3]], "route 1: service at customer 1 starts at 20.00, after its due date 19"),
    ],
)
def test_checker_catches_each_violation(
    tiny: SolomonInstance, routes: list[list[int]], message: str
) -> None:
    """Each kind of violation is reported in words."""
    problems = check_feasibility(tiny, routes)
    assert any(re.search(message, p) for p in problems), problems


def test_checker_catches_a_late_return() -> None:
    """A vehicle must be back before the depot closes."""
    late = parse_solomon(TINY.replace("0     0   100    0", "0     0   24    0"))
    assert check_feasibility(late, [[1], [2, 3]])[-1].startswith(
        "route 2: returns to the depot at 31.71, after it closes at 24"
    )


def test_checker_truncates_under_dimacs() -> None:
    """DIMACS travel times are truncated to one decimal: 1.49 arrives as 1.4, within a 1.4 due date."""
    text = "t\n1 10\n0 0 0 0 0 100 0\n1 1.49 0 1 0 1.4 0\n"
    inst = parse_solomon(text)
    assert check_feasibility(inst, [[1]], dimacs=True) == []
    assert "after its due date" in check_feasibility(inst, [[1]])[0]
    assert total_distance(inst, [[1]], dimacs=True) == pytest.approx(2.8)


def test_sintef_reference_solutions_check_out(solomon_dir: Path) -> None:
    """Every SINTEF reference solution is feasible and reproduces its BKS (vehicles, distance +-0.01)."""
    bks = read_bks(solomon_dir / "bks.csv")
    files = sorted((solomon_dir / "sintef_solutions").glob("*.sol.txt"))
    assert len(files) >= 40
    for path in files:
        name = path.name.split(".")[0]
        instance = parse_solomon((solomon_dir / "txt" / f"{name}.txt").read_text())
        routes = read_solution(path)
        entry = bks[name.upper()]
        assert check_feasibility(instance, routes) == [], name
        assert len(routes) == entry.hier_vehicles, name
        assert total_distance(instance, routes) == pytest.approx(entry.hier_distance, abs=0.01), name


def test_read_solution_rejects_files_without_routes(tmp_path: Path) -> None:
    """A file with no 'Route N :' line is not a solution."""
    path = tmp_path / "empty.sol.txt"
    path.write_text("Solution\n")
    with pytest.raises(SolomonFormatError, match=re.escape("Expected 'Route N : ...' lines")):
        read_solution(path)


def test_solved_tiny_instance_passes_the_checker(tiny: SolomonInstance) -> None:
    """The planner's plan for the tiny instance is feasible by the independent checker."""
    for objective in ("distance", "hierarchical"):
        plan = solve(to_routing_problem(tiny, objective), QUICK)
        routes = routes_of(plan)
        assert check_feasibility(tiny, routes, dimacs=objective == "distance") == []

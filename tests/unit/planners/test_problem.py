"""Tests for :mod:`planners.problem`: validation of vehicles, jobs and problems."""

from __future__ import annotations

import numpy as np
import pytest

from planners import Job, ProblemError, RoutingProblem, Vehicle

from .factories import line_matrices


def test_vehicle_defaults_and_normalisation() -> None:
    """end_node defaults to start_node and skills become a frozenset."""
    v = Vehicle(start_node=2, capacity=5, skills=["hv", "hv"])
    assert v.end == 2
    assert v.skills == frozenset({"hv"})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"start_node": -1, "capacity": 1}, "Expected start_node >= 0, got -1"),
        ({"start_node": 0, "capacity": 1.5}, "Expected capacity to be an int, got 1.5"),
        ({"start_node": 0, "capacity": True}, "Expected capacity to be an int, got True"),
        (
            {"start_node": 0, "capacity": 1, "shift_start_s": 10, "shift_end_s": 5},
            "Expected shift_start_s <= shift_end_s, got \\(10, 5\\)",
        ),
        ({"start_node": 0, "capacity": 1, "skills": "hv"}, "collection of skill names, got 'hv'"),
    ],
)
def test_vehicle_validation(kwargs: dict[str, object], message: str) -> None:
    """Each bad vehicle field is named with the value that arrived."""
    with pytest.raises(ProblemError, match=message):
        Vehicle(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"node": 1, "earliest_s": 10, "latest_s": 5}, "Expected earliest_s <= latest_s, got \\(10, 5\\)"),
        ({"node": 1, "demand": -2}, "Expected demand >= 0, got -2"),
        ({"node": 1, "drop_penalty": -1}, "Expected drop_penalty >= 0, got -1"),
        ({"node": 1, "required_skills": [""]}, "non-empty strings"),
    ],
)
def test_job_validation(kwargs: dict[str, object], message: str) -> None:
    """Each bad job field is named with the value that arrived."""
    with pytest.raises(ProblemError, match=message):
        Job(**kwargs)  # type: ignore[arg-type]


def test_job_is_mandatory_without_drop_penalty() -> None:
    """drop_penalty=None means the job must be served."""
    assert Job(node=1).mandatory
    assert not Job(node=1, drop_penalty=0).mandatory


def _problem(**overrides: object) -> RoutingProblem:
    duration, distance = line_matrices([0, 1, 2])
    fields: dict[str, object] = {
        "duration_matrix": duration,
        "distance_matrix": distance,
        "vehicles": [Vehicle(start_node=0, capacity=5)],
        "jobs": [Job(node=1), Job(node=2, demand=3)],
    }
    fields.update(overrides)
    return RoutingProblem(**fields)  # type: ignore[arg-type]


def test_problem_freezes_its_matrices() -> None:
    """Matrices are copied into read-only int64 arrays; lists become tuples."""
    source, _ = line_matrices([0, 1, 2])
    problem = _problem(duration_matrix=source)
    source[0, 1] = 999
    assert problem.duration_matrix[0, 1] == 60
    assert problem.duration_matrix.dtype == np.int64
    assert not problem.duration_matrix.flags.writeable
    assert isinstance(problem.jobs, tuple)
    assert problem.horizon_s == 24 * 3600


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"duration_matrix": np.zeros((3, 2), dtype=int)}, "non-empty square matrix, got shape \\(3, 2\\)"),
        ({"duration_matrix": np.zeros((3, 3))}, "Expected an integer duration_matrix, got dtype float64"),
        ({"distance_matrix": -np.ones((3, 3), dtype=int)}, "Expected distance_matrix >= 0, got -1 at \\(0, 0\\)"),
        ({"distance_matrix": np.zeros((2, 2), dtype=int)}, "same shape, got duration \\(3, 3\\) and distance \\(2, 2\\)"),
        ({"vehicles": []}, "Expected at least one vehicle, got none"),
        ({"jobs": [Job(node=3)]}, "Expected jobs\\[0\\].node in \\[0, 3\\), got 3"),
        ({"vehicles": [Vehicle(start_node=0, end_node=7, capacity=5)]}, "vehicles\\[0\\].end_node in \\[0, 3\\), got 7"),
        ({"jobs": [Job(node=1, demand=9)]}, "capacity >= 9 for mandatory jobs\\[0\\], got at most 5"),
    ],
)
def test_problem_validation(overrides: dict[str, object], message: str) -> None:
    """Each malformed problem is rejected with what was expected and what arrived."""
    with pytest.raises(ProblemError, match=message):
        _problem(**overrides)


def test_optional_jobs_may_exceed_every_capacity() -> None:
    """An optional job nobody can carry is allowed: the solver will drop it."""
    problem = _problem(jobs=[Job(node=1, demand=9, drop_penalty=10)])
    assert problem.eligible_vehicles(0) == (0,)

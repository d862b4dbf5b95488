"""The routing problem: locations, vehicles with shifts, jobs with windows, and travel matrices.

Everything here is solver-agnostic and validated on construction, so that
:func:`planners.routing.solve` only ever sees a well-formed problem.

Units
-----
All times (``*_s`` fields and the duration matrix) are integers in one unit, called seconds
here because that is what the technician planner uses. Adapters may pick a finer or coarser
unit as long as every time in the problem uses it: the Solomon adapter, for instance, uses
tenths of a Solomon time unit. Distances and drop penalties are integers in the unit of the
distance matrix (metres for the planner), which is also the unit of the objective.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from planners.errors import ProblemError

__all__ = ["Job", "RoutingProblem", "Vehicle"]

#: Default end of a shift when none is given: one day.
_DAY_S = 24 * 3600


def _check_int(name: str, value: object, *, minimum: int | None = 0) -> None:
    # bool is an int subclass; a True capacity is always a mistake.
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ProblemError(f"Expected {name} to be an int, got {value!r}.")
    if minimum is not None and value < minimum:
        raise ProblemError(f"Expected {name} >= {minimum}, got {value}.")


def _skills(name: str, value: Iterable[str]) -> frozenset[str]:
    if isinstance(value, str):
        # A bare string would silently become a set of characters.
        raise ProblemError(f"Expected {name} to be a collection of skill names, got {value!r}.")
    skills = frozenset(value)
    bad = [s for s in skills if not isinstance(s, str) or not s]
    if bad:
        raise ProblemError(f"Expected {name} to hold non-empty strings, got {sorted(map(repr, bad))}.")
    return skills


@dataclass(frozen=True, kw_only=True)
class Vehicle:
    """A technician's vehicle and its shift.

    Parameters
    ----------
    start_node
        Location (row of the matrices) where the shift starts.
    end_node
        Location where the shift ends; ``None`` means back at ``start_node``.
    shift_start_s, shift_end_s
        The vehicle leaves ``start_node`` no earlier than ``shift_start_s`` and reaches
        ``end_node`` no later than ``shift_end_s``.
    capacity
        Load the vehicle carries (e.g. charged batteries); the sum of the demands of its
        jobs may not exceed it.
    fixed_cost
        Cost of using the vehicle at all, in objective units (distance-matrix units).
    skills
        What the technician can do; a job is only given to a vehicle holding all of the
        job's ``required_skills``.
    name
        Free-form label, carried into the plan.
    """

    start_node: int
    end_node: int | None = None
    shift_start_s: int = 0
    shift_end_s: int = _DAY_S
    capacity: int
    fixed_cost: int = 0
    skills: frozenset[str] = field(default_factory=frozenset)
    name: str = ""

    def __post_init__(self) -> None:
        _check_int("start_node", self.start_node)
        if self.end_node is None:
            object.__setattr__(self, "end_node", self.start_node)
        _check_int("end_node", self.end_node)
        _check_int("shift_start_s", self.shift_start_s)
        _check_int("shift_end_s", self.shift_end_s)
        if self.shift_end_s < self.shift_start_s:
            raise ProblemError(
                f"Expected shift_start_s <= shift_end_s, got ({self.shift_start_s}, {self.shift_end_s})."
            )
        _check_int("capacity", self.capacity)
        _check_int("fixed_cost", self.fixed_cost)
        object.__setattr__(self, "skills", _skills("skills", self.skills))

    @property
    def end(self) -> int:
        """The end location, resolved (never ``None``)."""
        assert self.end_node is not None  # resolved in __post_init__
        return self.end_node


@dataclass(frozen=True, kw_only=True)
class Job:
    """A visit: one location, a demand, a service time and a time window.

    Parameters
    ----------
    node
        Location (row of the matrices) of the job.
    demand
        Load the job consumes from its vehicle's capacity.
    service_s
        Time spent on site.
    earliest_s, latest_s
        Service must *start* within ``[earliest_s, latest_s]``; arriving earlier means
        waiting. ``latest_s=None`` means no upper bound other than the shift.
    drop_penalty
        Cost of leaving the job undone, in objective units. ``None`` makes the job
        mandatory: the solve fails rather than drop it. Derive it from the job's value so
        that an overloaded day drops the least valuable jobs.
    required_skills
        Skills a vehicle needs to take the job.
    name
        Free-form label, carried into the plan.
    """

    node: int
    demand: int = 0
    service_s: int = 0
    earliest_s: int = 0
    latest_s: int | None = None
    drop_penalty: int | None = None
    required_skills: frozenset[str] = field(default_factory=frozenset)
    name: str = ""

    def __post_init__(self) -> None:
        _check_int("node", self.node)
        _check_int("demand", self.demand)
        _check_int("service_s", self.service_s)
        _check_int("earliest_s", self.earliest_s)
        if self.latest_s is not None:
            _check_int("latest_s", self.latest_s)
            if self.latest_s < self.earliest_s:
                raise ProblemError(
                    f"Expected earliest_s <= latest_s, got ({self.earliest_s}, {self.latest_s})."
                )
        if self.drop_penalty is not None:
            _check_int("drop_penalty", self.drop_penalty)
        object.__setattr__(self, "required_skills", _skills("required_skills", self.required_skills))

    @property
    def mandatory(self) -> bool:
        """Whether the job must be served (it has no drop penalty)."""
        return self.drop_penalty is None


def _matrix(name: str, value: npt.ArrayLike) -> npt.NDArray[np.int64]:
    array = np.asarray(value)
    if array.ndim != 2 or array.shape[0] != array.shape[1] or array.shape[0] == 0:
        raise ProblemError(f"Expected {name} to be a non-empty square matrix, got shape {array.shape}.")
    if not np.issubdtype(array.dtype, np.integer):
        # Rounding is the caller's choice (DIMACS truncates, others round): never guess it.
        raise ProblemError(f"Expected an integer {name}, got dtype {array.dtype}.")
    if (array < 0).any():
        i, j = np.argwhere(array < 0)[0]
        raise ProblemError(f"Expected {name} >= 0, got {array[i, j]} at ({i}, {j}).")
    if array.dtype == np.int64 and not array.flags.writeable:
        # Already frozen (the travel sources hand theirs over read-only): no copy, which at
        # 10,000 jobs would be 1.6 GB more.
        return array
    out = array.astype(np.int64, copy=True)
    out.flags.writeable = False
    return out


@dataclass(frozen=True, eq=False)
class RoutingProblem:
    """A capacitated vehicle-routing problem with time windows, shifts, skills and optional jobs.

    Parameters
    ----------
    duration_matrix
        ``duration_matrix[i, j]`` is the travel time from location ``i`` to ``j``.
    distance_matrix
        ``distance_matrix[i, j]`` is the travel cost from ``i`` to ``j``, the unit of the
        objective. Same shape as ``duration_matrix``.
    vehicles
        The fleet; plans list routes in this order.
    jobs
        The visits; plans refer to jobs by their position here.

    Raises
    ------
    ProblemError
        If a matrix is not a square non-negative integer array, a node is out of range,
        or a mandatory job has no vehicle with its skills and capacity.
    """

    duration_matrix: npt.NDArray[np.int64]
    distance_matrix: npt.NDArray[np.int64]
    vehicles: tuple[Vehicle, ...]
    jobs: tuple[Job, ...]

    def __post_init__(self) -> None:
        duration = _matrix("duration_matrix", self.duration_matrix)
        distance = _matrix("distance_matrix", self.distance_matrix)
        if duration.shape != distance.shape:
            raise ProblemError(
                f"Expected matrices of the same shape, got duration {duration.shape} "
                f"and distance {distance.shape}."
            )
        object.__setattr__(self, "duration_matrix", duration)
        object.__setattr__(self, "distance_matrix", distance)
        object.__setattr__(self, "vehicles", tuple(self.vehicles))
        object.__setattr__(self, "jobs", tuple(self.jobs))
        if not self.vehicles:
            raise ProblemError("Expected at least one vehicle, got none.")
        for k, vehicle in enumerate(self.vehicles):
            if not isinstance(vehicle, Vehicle):
                raise ProblemError(f"Expected vehicles[{k}] to be a Vehicle, got {vehicle!r}.")
            for name, node in (("start_node", vehicle.start_node), ("end_node", vehicle.end)):
                self._check_node(f"vehicles[{k}].{name}", node)
        for j, job in enumerate(self.jobs):
            if not isinstance(job, Job):
                raise ProblemError(f"Expected jobs[{j}] to be a Job, got {job!r}.")
            self._check_node(f"jobs[{j}].node", job.node)
            if job.mandatory:
                self._check_servable(j, job)

    def _check_node(self, name: str, node: int) -> None:
        if not 0 <= node < self.num_locations:
            raise ProblemError(f"Expected {name} in [0, {self.num_locations}), got {node}.")

    def _check_servable(self, j: int, job: Job) -> None:
        # Only the cheap, certain impossibilities: the solver finds the rest.
        able = self.eligible_vehicles(j)
        if not able:
            raise ProblemError(
                f"Expected a vehicle with skills {sorted(job.required_skills)} for mandatory "
                f"jobs[{j}], got none."
            )
        if all(self.vehicles[k].capacity < job.demand for k in able):
            raise ProblemError(
                f"Expected a vehicle with capacity >= {job.demand} for mandatory jobs[{j}], "
                f"got at most {max(self.vehicles[k].capacity for k in able)}."
            )

    @property
    def num_locations(self) -> int:
        """Number of rows (and columns) of the matrices."""
        return int(self.duration_matrix.shape[0])

    @property
    def horizon_s(self) -> int:
        """Latest end of any shift: no time in a plan exceeds it."""
        return max(v.shift_end_s for v in self.vehicles)

    def eligible_vehicles(self, job: int) -> tuple[int, ...]:
        """Vehicles whose skills cover job ``job``'s required skills."""
        needed = self.jobs[job].required_skills
        return tuple(k for k, v in enumerate(self.vehicles) if needed <= v.skills)

"""Solomon and Gehring-Homberger VRPTW instances: reading, modelling, and independent checking.

The format (one instance per file)::

    C101

    VEHICLE
    NUMBER     CAPACITY
      25         200

    CUSTOMER
    CUST NO.  XCOORD.   YCOORD.    DEMAND   READY TIME  DUE DATE   SERVICE   TIME
        0      40         50          0          0       1236          0
        1      45         68         10        912        967         90

Customer 0 is the depot; its window is the planning horizon. Distance is Euclidean and
travel time equals distance. Two conventions exist, one per objective (see
``shared/data/solomon/BKS.md``):

- ``"distance"`` (DIMACS, as PyVRP and CVRPLIB): distances and travel times are truncated
  to one decimal. The model works in integer tenths, so it is exact.
- ``"hierarchical"`` (vehicles first, then distance; the classic literature table): double
  precision. The model works in thousandths, travel times rounded *up* so that every plan
  feasible in integers is feasible in exact arithmetic.

:func:`check_feasibility` re-checks a route set in floating point straight from the
coordinates, sharing no code with the routing model.
"""

from __future__ import annotations

import csv
import itertools
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from planners.errors import SolomonFormatError
from planners.plan import Plan
from planners.problem import Job, RoutingProblem, Vehicle
from planners.routing_params import Objective

__all__ = [
    "BksEntry",
    "SolomonInstance",
    "check_feasibility",
    "parse_solomon",
    "read_bks",
    "read_solomon",
    "read_solution",
    "routes_of",
    "to_routing_problem",
    "total_distance",
]

#: Integer units per Solomon unit in the routing model, per objective.
SCALE: dict[str, int] = {"distance": 10, "hierarchical": 1000}
# Comparisons in floating point tolerate this much; the data are integers or tenths.
_EPS = 1e-6
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_ROUTE = re.compile(r"^\s*route\s+\d+\s*:(.*)$", re.IGNORECASE)


@dataclass(frozen=True, eq=False)
class SolomonInstance:
    """A VRPTW instance; row 0 of every array is the depot.

    Parameters
    ----------
    name
        Instance name from the file's first line, e.g. ``"C101"``.
    num_vehicles, capacity
        Fleet size and the capacity of each (identical) vehicle.
    x, y
        Coordinates.
    demand
        Demand per customer (0 at the depot).
    ready, due
        Window for the start of service; the depot's is the horizon.
    service
        Service time per customer.
    """

    name: str
    num_vehicles: int
    capacity: int
    x: npt.NDArray[np.float64]
    y: npt.NDArray[np.float64]
    demand: npt.NDArray[np.int64]
    ready: npt.NDArray[np.float64]
    due: npt.NDArray[np.float64]
    service: npt.NDArray[np.float64]

    @property
    def num_customers(self) -> int:
        """Number of customers (the depot excluded)."""
        return len(self.x) - 1

    def euclidean(self) -> npt.NDArray[np.float64]:
        """Exact distance matrix between all points, depot included."""
        return np.hypot(self.x[:, None] - self.x[None, :], self.y[:, None] - self.y[None, :])


@dataclass(frozen=True)
class BksEntry:
    """Best-known solutions of one instance (a row of ``bks.csv``)."""

    instance: str
    customers: int
    dimacs_vehicles: int
    dimacs_distance: float
    hier_vehicles: int
    hier_distance: float

    def for_objective(self, objective: Objective) -> tuple[int, float]:
        """``(vehicles, distance)`` of the BKS under ``objective``."""
        if objective == "distance":
            return self.dimacs_vehicles, self.dimacs_distance
        return self.hier_vehicles, self.hier_distance


def _numbers(line: str) -> list[float] | None:
    tokens = line.split()
    if not tokens or not all(_NUMBER.match(t) for t in tokens):
        return None
    return [float(t) for t in tokens]


def parse_solomon(text: str, name: str | None = None) -> SolomonInstance:
    """Parse the text of a Solomon-format file.

    The parser keys on content, not on line positions: blank lines, CRLF endings, extra
    spaces and any number of customers are fine. The first non-blank line is the name
    (unless ``name`` is given), the first line of exactly two numbers is the fleet, and
    every line of exactly seven numbers is a customer.

    Raises
    ------
    SolomonFormatError
        If the fleet line or the customers are missing, or customers are not numbered
        ``0, 1, 2, ...`` in order.
    """
    lines = text.splitlines()
    first = next((ln.strip() for ln in lines if ln.strip()), None)
    if first is None:
        raise SolomonFormatError("Expected a Solomon instance, got an empty text.")
    fleet: list[float] | None = None
    rows: list[list[float]] = []
    for number, line in enumerate(lines, start=1):
        values = _numbers(line)
        if values is None:
            continue
        if len(values) == 2 and fleet is None and not rows:
            fleet = values
        elif len(values) == 7:
            rows.append(values)
        else:
            raise SolomonFormatError(
                f"Expected 2 numbers (fleet) or 7 (customer) on line {number}, got {len(values)}: "
                f"{line.strip()!r}."
            )
    if fleet is None:
        raise SolomonFormatError("Expected a 'NUMBER CAPACITY' line of two numbers, got none.")
    if len(rows) < 2:
        raise SolomonFormatError(f"Expected the depot and at least one customer, got {len(rows)} rows.")
    data = np.array(rows)
    ids = data[:, 0]
    if not np.array_equal(ids, np.arange(len(rows))):
        bad = int(np.argmax(ids != np.arange(len(rows))))
        raise SolomonFormatError(
            f"Expected customers numbered 0..{len(rows) - 1} in order, got {ids[bad]:g} at row {bad}."
        )
    if (data[:, 4] > data[:, 5]).any():
        bad = int(np.argmax(data[:, 4] > data[:, 5]))
        raise SolomonFormatError(
            f"Expected ready time <= due date, got ({data[bad, 4]:g}, {data[bad, 5]:g}) for customer {bad}."
        )
    return SolomonInstance(
        name=name if name is not None else first.split()[0],
        num_vehicles=int(fleet[0]),
        capacity=int(fleet[1]),
        x=data[:, 1].copy(),
        y=data[:, 2].copy(),
        demand=data[:, 3].astype(np.int64),
        ready=data[:, 4].copy(),
        due=data[:, 5].copy(),
        service=data[:, 6].copy(),
    )


def read_solomon(path: Path | str) -> SolomonInstance:
    """Read a Solomon-format file (see :func:`parse_solomon`)."""
    return parse_solomon(Path(path).read_text())


def _travel(instance: SolomonInstance, dimacs: bool) -> npt.NDArray[np.float64]:
    exact = instance.euclidean()
    # The epsilon keeps 2.3 (stored as 2.29999...) from truncating to 2.2.
    return np.floor(exact * 10 + 1e-9) / 10 if dimacs else exact


def to_routing_problem(instance: SolomonInstance, objective: Objective) -> RoutingProblem:
    """The instance as a :class:`RoutingProblem`, every visit mandatory, whole fleet available.

    Times and distances are integers in ``1 / SCALE[objective]`` Solomon units. Job ``j``
    is customer ``j + 1``; location 0 is the depot. The vehicles-first part of the
    hierarchical objective is a solve parameter (``RoutingParams(objective=...)``), not part
    of the problem.
    """
    scale = SCALE[objective]
    exact = instance.euclidean()
    if objective == "distance":
        # DIMACS: truncate to one decimal, so integer tenths are exact, and time = distance.
        distance = np.floor(exact * scale + 1e-9).astype(np.int64)
        duration = distance
    else:
        distance = np.rint(exact * scale).astype(np.int64)
        # Rounded up: integer-feasible then implies feasible in exact arithmetic.
        duration = np.ceil(exact * scale - 1e-9).astype(np.int64)

    def units(value: float) -> int:
        return round(value * scale)

    vehicles = tuple(
        Vehicle(
            start_node=0,
            shift_start_s=units(instance.ready[0]),
            shift_end_s=units(instance.due[0]),
            capacity=instance.capacity,
            name=f"vehicle {k + 1}",
        )
        for k in range(instance.num_vehicles)
    )
    jobs = tuple(
        Job(
            node=c,
            demand=int(instance.demand[c]),
            service_s=units(instance.service[c]),
            earliest_s=units(instance.ready[c]),
            latest_s=units(instance.due[c]),
            name=str(c),
        )
        for c in range(1, instance.num_customers + 1)
    )
    return RoutingProblem(
        duration_matrix=duration, distance_matrix=distance, vehicles=vehicles, jobs=jobs
    )


def routes_of(plan: Plan) -> list[list[int]]:
    """Customer numbers of each used route of a plan built by :func:`to_routing_problem`."""
    return [[j + 1 for j in route.jobs] for route in plan.routes if route.used]


def total_distance(
    instance: SolomonInstance, routes: Sequence[Sequence[int]], *, dimacs: bool = False
) -> float:
    """Distance of a route set (customer numbers, depot implied at both ends)."""
    travel = _travel(instance, dimacs)
    total = 0.0
    for route in routes:
        if route:
            path = [0, *route, 0]
            total += float(sum(travel[a, b] for a, b in itertools.pairwise(path)))
    return total


def check_feasibility(
    instance: SolomonInstance, routes: Sequence[Sequence[int]], *, dimacs: bool = False
) -> list[str]:
    """Every way a route set breaks the instance's rules; empty if it is feasible.

    Checks that each customer is served exactly once, no more vehicles are used than the
    fleet has, loads fit the capacity, service starts within each window (waiting allowed)
    and every vehicle is back by the depot's due date. Computed in floating point from the
    coordinates; ``dimacs=True`` truncates travel times to one decimal.

    Parameters
    ----------
    instance
        The instance.
    routes
        Customer numbers (1-based) per vehicle, depot implied at both ends.
    dimacs
        Use the DIMACS (distance objective) convention instead of exact distances.
    """
    n = instance.num_customers
    travel = _travel(instance, dimacs)
    problems: list[str] = []
    counts = Counter(c for route in routes for c in route)
    for c in sorted(counts):
        if not isinstance(c, int | np.integer) or not 1 <= c <= n:
            problems.append(f"unknown customer {c!r}")
        elif counts[c] > 1:
            problems.append(f"customer {c} served {counts[c]} times")
    missing = [c for c in range(1, n + 1) if c not in counts]
    if missing:
        problems.append(f"{len(missing)} customers not served: {missing[:10]}")
    used = sum(1 for route in routes if route)
    if used > instance.num_vehicles:
        problems.append(f"{used} vehicles used, fleet has {instance.num_vehicles}")
    for k, route in enumerate(routes, start=1):
        route = [c for c in route if isinstance(c, int | np.integer) and 1 <= c <= n]
        if not route:
            continue
        load = int(instance.demand[route].sum())
        if load > instance.capacity:
            problems.append(f"route {k}: load {load} exceeds capacity {instance.capacity}")
        t = float(instance.ready[0])
        previous = 0
        for c in route:
            start = max(t + travel[previous, c], float(instance.ready[c]))
            if start > instance.due[c] + _EPS:
                problems.append(
                    f"route {k}: service at customer {c} starts at {start:.2f}, "
                    f"after its due date {instance.due[c]:g}"
                )
            t = start + float(instance.service[c])
            previous = c
        back = t + travel[previous, 0]
        if back > instance.due[0] + _EPS:
            problems.append(
                f"route {k}: returns to the depot at {back:.2f}, after it closes at {instance.due[0]:g}"
            )
    return problems


def read_bks(path: Path | str) -> dict[str, BksEntry]:
    """Best-known solutions by upper-case instance name, from a ``bks.csv`` file."""
    with Path(path).open(newline="") as f:
        return {
            row["instance"].strip().upper(): BksEntry(
                instance=row["instance"].strip(),
                customers=int(row["customers"]),
                dimacs_vehicles=int(row["bks_dimacs_vehicles"]),
                dimacs_distance=float(row["bks_dimacs_distance"]),
                hier_vehicles=int(row["bks_hier_vehicles"]),
                hier_distance=float(row["bks_hier_distance"]),
            )
            for row in csv.DictReader(f)
        }


def read_solution(path: Path | str) -> list[list[int]]:
    """Routes of a SINTEF-style solution file (``Route 1 : 5 3 7 ...`` lines).

    Raises
    ------
    SolomonFormatError
        If the file holds no route lines or a route holds a non-integer.
    """
    routes: list[list[int]] = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        match = _ROUTE.match(line)
        if match is None:
            continue
        try:
            routes.append([int(t) for t in match.group(1).split()])
        except ValueError:
            raise SolomonFormatError(
                f"Expected customer numbers on line {number}, got {line.strip()!r}."
            ) from None
    if not routes:
        raise SolomonFormatError(f"Expected 'Route N : ...' lines in {path}, got none.")
    return routes

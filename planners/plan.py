"""The result of a routing solve: one route per vehicle, and the jobs left undone."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Plan", "Route", "Stop"]


@dataclass(frozen=True, kw_only=True)
class Stop:
    """One visit of a route.

    Parameters
    ----------
    job
        Position of the job in :attr:`RoutingProblem.jobs`.
    arrival_s
        When the vehicle arrives (leaving the previous stop as soon as service there ends).
    start_s
        When service starts: ``arrival_s`` plus any wait for the window to open.
    load
        Load delivered so far on the route, this stop included.
    """

    job: int
    arrival_s: int
    start_s: int
    load: int

    @property
    def wait_s(self) -> int:
        """Time spent waiting for the window to open."""
        return self.start_s - self.arrival_s


@dataclass(frozen=True, kw_only=True)
class Route:
    """The ordered stops of one vehicle.

    Parameters
    ----------
    vehicle
        Position of the vehicle in :attr:`RoutingProblem.vehicles`.
    stops
        Visits in order; empty when the vehicle stays home.
    start_s, end_s
        When the vehicle leaves its start and reaches its end location.
    distance
        Distance travelled, return included, in distance-matrix units.
    """

    vehicle: int
    stops: tuple[Stop, ...]
    start_s: int
    end_s: int
    distance: int

    @property
    def used(self) -> bool:
        """Whether the vehicle serves at least one job."""
        return bool(self.stops)

    @property
    def jobs(self) -> tuple[int, ...]:
        """The jobs of the route, in order."""
        return tuple(s.job for s in self.stops)

    @property
    def load(self) -> int:
        """Total load delivered on the route."""
        return self.stops[-1].load if self.stops else 0


@dataclass(frozen=True, kw_only=True)
class Plan:
    """A solved routing problem.

    Parameters
    ----------
    routes
        One route per vehicle, in the problem's vehicle order (empty routes included).
    dropped
        Optional jobs left undone, ascending.
    objective
        OR-Tools' objective value: distance, fixed costs of used vehicles (and the
        hierarchical vehicle cost), and drop penalties.
    solve_time_s
        Wall-clock time of the search.
    status
        OR-Tools' routing status name, e.g. ``"ROUTING_SUCCESS"``.
    warm_started
        Whether the search started from the given initial routes.
    """

    routes: tuple[Route, ...]
    dropped: tuple[int, ...]
    objective: int
    solve_time_s: float
    status: str
    warm_started: bool = False

    @property
    def total_distance(self) -> int:
        """Distance of all routes, in distance-matrix units."""
        return sum(r.distance for r in self.routes)

    @property
    def vehicles_used(self) -> int:
        """Number of non-empty routes."""
        return sum(r.used for r in self.routes)

    @property
    def served(self) -> int:
        """Number of jobs served."""
        return sum(len(r.stops) for r in self.routes)

    def job_routes(self) -> list[list[int]]:
        """Job sequences per vehicle: the ``initial_routes`` of a warm-started re-plan."""
        return [list(r.jobs) for r in self.routes]

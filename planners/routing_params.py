"""Parameters of a routing solve, validated in one frozen object."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ortools.constraint_solver import routing_enums_pb2

from planners.errors import ProblemError

__all__ = ["ENGINES", "ITERATED_LOCAL_SEARCH", "Engine", "Objective", "RoutingParams"]

Objective = Literal["distance", "hierarchical"]
Engine = Literal["ortools", "pyvrp"]
#: The routing engines :func:`planners.routing.solve` can use.
ENGINES: tuple[str, ...] = ("ortools", "pyvrp")
_OBJECTIVES = ("distance", "hierarchical")
_FIRST_SOLUTION = tuple(
    n for n in routing_enums_pb2.FirstSolutionStrategy.Value.keys() if n not in ("UNSET",)
)
#: OR-Tools' metaheuristics, plus its iterated local search, which OR-Tools runs through a
#: separate entry point rather than as a ``LocalSearchMetaheuristic``.
ITERATED_LOCAL_SEARCH = "ITERATED_LOCAL_SEARCH"
_METAHEURISTICS = (
    *(n for n in routing_enums_pb2.LocalSearchMetaheuristic.Value.keys() if n not in ("UNSET",)),
    ITERATED_LOCAL_SEARCH,
)


@dataclass(frozen=True, kw_only=True)
class RoutingParams:
    """How :func:`planners.routing.solve` searches.

    Parameters
    ----------
    time_limit_s
        Wall-clock budget of the whole search (first solution and local search).
    solution_limit
        Stop after this many improving solutions, or ``None`` for no such limit.
        Guided local search stopped by ``time_limit_s`` depends on machine speed and load,
        so two runs may return different plans; a solution limit (with a generous time
        limit) stops at the same point on every machine, which is what tests want.
    first_solution_strategy
        Name of an OR-Tools ``FirstSolutionStrategy``. The default inserts every visit
        into parallel routes by cheapest feasible insertion: with mandatory visits and
        tight windows, ``PATH_CHEAPEST_ARC`` found no solution in 30 s on Solomon R101 and
        RC101 (OR-Tools 9.15), whereas this strategy reached +1.28 % and +3.85 %.
    local_search_metaheuristic
        Name of an OR-Tools ``LocalSearchMetaheuristic``, or ``"ITERATED_LOCAL_SEARCH"``.
        Guided local search escapes local optima by penalising the arcs that recur in
        them. Iterated local search repeatedly removes strings of nearby visits (SISR),
        reinserts them by parallel cheapest insertion, descends greedily and accepts the
        result by simulated annealing. On Solomon instances it keeps improving where
        guided local search stalls (10 s, OR-Tools 9.15, mean gap to the best known
        distance over C101, R101, R105, RC101 and RC105: +1.0 % against +3.2 %), but
        it is randomised (see ``solution_limit``), and a warm start always uses guided
        local search, since OR-Tools' iterated local search cannot start from given
        routes.
    engine
        The solver behind :func:`planners.routing.solve`: ``"ortools"`` (OR-Tools' routing
        library; the search fields above are its settings) or ``"pyvrp"`` (PyVRP's hybrid
        genetic search, :mod:`planners.routing_pyvrp`; it reads ``time_limit_s``,
        ``solution_limit`` as its iteration limit, ``seed``, ``objective`` and
        ``vehicle_cost``).
    seed
        PyVRP's random seed (OR-Tools' iterated local search has a fixed one).
    objective
        ``"distance"`` minimises distance (plus vehicle fixed costs and drop penalties).
        ``"hierarchical"`` minimises the number of vehicles first, then distance: each
        vehicle also costs ``vehicle_cost`` (by default more than any set of routes can
        travel).
    vehicle_cost
        Cost per used vehicle under ``"hierarchical"``; ``None`` picks one that dominates
        any total distance. Drop penalties below it make dropping a job preferable to
        using one more vehicle for it.
    guided_local_search_lambda_coefficient
        Weight of guided local search's arc penalties relative to the mean arc cost.
    log_search
        Let OR-Tools log each solution to stderr.

    Raises
    ------
    ProblemError
        If a value is out of range or a strategy name is unknown.
    """

    time_limit_s: float = 10.0
    solution_limit: int | None = None
    engine: Engine = "ortools"
    seed: int = 0
    first_solution_strategy: str = "PARALLEL_CHEAPEST_INSERTION"
    local_search_metaheuristic: str = "GUIDED_LOCAL_SEARCH"
    objective: Objective = "distance"
    vehicle_cost: int | None = None
    guided_local_search_lambda_coefficient: float = 0.1
    log_search: bool = False

    def __post_init__(self) -> None:
        if not self.time_limit_s > 0:
            raise ProblemError(f"Expected time_limit_s > 0, got {self.time_limit_s}.")
        if self.solution_limit is not None and (
            isinstance(self.solution_limit, bool) or not isinstance(self.solution_limit, int)
            or self.solution_limit < 1
        ):
            raise ProblemError(f"Expected solution_limit >= 1 or None, got {self.solution_limit!r}.")
        if self.first_solution_strategy not in _FIRST_SOLUTION:
            raise ProblemError(
                f"Expected first_solution_strategy in {list(_FIRST_SOLUTION)}, "
                f"got {self.first_solution_strategy!r}."
            )
        if self.local_search_metaheuristic not in _METAHEURISTICS:
            raise ProblemError(
                f"Expected local_search_metaheuristic in {list(_METAHEURISTICS)}, "
                f"got {self.local_search_metaheuristic!r}."
            )
        if self.engine not in ENGINES:
            raise ProblemError(f"Expected engine in {list(ENGINES)}, got {self.engine!r}.")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ProblemError(f"Expected seed >= 0, got {self.seed!r}.")
        if self.objective not in _OBJECTIVES:
            raise ProblemError(f"Expected objective in {list(_OBJECTIVES)}, got {self.objective!r}.")
        if self.vehicle_cost is not None and (
            isinstance(self.vehicle_cost, bool) or not isinstance(self.vehicle_cost, int)
            or self.vehicle_cost < 0
        ):
            raise ProblemError(f"Expected vehicle_cost >= 0 or None, got {self.vehicle_cost!r}.")
        if not self.guided_local_search_lambda_coefficient > 0:
            raise ProblemError(
                "Expected guided_local_search_lambda_coefficient > 0, "
                f"got {self.guided_local_search_lambda_coefficient}."
            )

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> RoutingParams:
        """Build params from a config section (e.g. ``[planner.routing]`` of a TOML file).

        Missing keys keep their defaults; unknown keys are an error, so a typo does not
        silently fall back to a default.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ProblemError(f"Expected routing params among {sorted(known)}, got unknown {unknown}.")
        return cls(**dict(data))

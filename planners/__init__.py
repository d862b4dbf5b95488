"""Technician routing: the problem, its OR-Tools solver, travel matrices and Solomon benchmarks."""

from planners.errors import (
    NoSolutionError,
    PlannerError,
    PlannerWarning,
    ProblemError,
    SolomonFormatError,
    TravelMatrixError,
    WarmStartWarning,
)
from planners.plan import Plan, Route, Stop
from planners.problem import Job, RoutingProblem, Vehicle
from planners.routing import solve, solve_async
from planners.routing_params import Objective, RoutingParams
from planners.travel import HaversineTravel, OsrmTravel, TravelMatrices, TravelMatrixSource

__all__ = [
    "HaversineTravel",
    "Job",
    "NoSolutionError",
    "Objective",
    "OsrmTravel",
    "Plan",
    "PlannerError",
    "PlannerWarning",
    "ProblemError",
    "Route",
    "RoutingParams",
    "RoutingProblem",
    "SolomonFormatError",
    "Stop",
    "TravelMatrices",
    "TravelMatrixError",
    "TravelMatrixSource",
    "Vehicle",
    "WarmStartWarning",
    "solve",
    "solve_async",
]

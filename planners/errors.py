"""Exceptions and warnings of the :mod:`planners` package.

::

    PlannerError
    ├── ProblemError (also a ValueError)   a problem, params or input that cannot be solved as stated
    │   └── SolomonFormatError             a Solomon/Gehring-Homberger file that cannot be parsed
    ├── NoSolutionError                    the solver found no feasible plan within its limits
    └── TravelMatrixError                  a travel-matrix source failed or answered nonsense

    PlannerWarning (UserWarning)
    └── WarmStartWarning                   initial routes could not be used; solved from scratch
"""

from __future__ import annotations

__all__ = [
    "NoSolutionError",
    "PlannerError",
    "PlannerWarning",
    "ProblemError",
    "SolomonFormatError",
    "TravelMatrixError",
    "WarmStartWarning",
]


class PlannerError(Exception):
    """Base class of every error raised by :mod:`planners`."""


class ProblemError(PlannerError, ValueError):
    """A routing problem, its parameters or a solve input is invalid."""


class SolomonFormatError(ProblemError):
    """A Solomon-format instance or solution file cannot be parsed."""


class NoSolutionError(PlannerError):
    """The solver stopped without a feasible plan.

    Parameters
    ----------
    status
        Name of OR-Tools' routing status, e.g. ``"ROUTING_FAIL_TIMEOUT"``.
    """

    def __init__(self, message: str, status: str) -> None:
        super().__init__(message)
        self.status = status

    def __reduce__(self) -> tuple[type[NoSolutionError], tuple[str, str]]:
        # Solves run in a worker process (routing.solve_async): the error must cross back
        # by pickle, which calls __init__ with self.args (the message only) unless told.
        return type(self), (str(self), self.status)


class TravelMatrixError(PlannerError):
    """A travel-matrix source could not produce a matrix."""


class PlannerWarning(UserWarning):
    """Base class of the warnings of :mod:`planners`: degraded but valid results."""


class WarmStartWarning(PlannerWarning):
    """The initial routes of a re-plan were infeasible; the plan was built from scratch."""

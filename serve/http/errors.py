"""Exceptions of the HTTP edge, and how routes turn errors into HTTP statuses.

::

    ServiceUnavailable (also RuntimeError)   a service a route needs is not running (503)
    └── PlannerNotRunning                     the planner actor is not started

The protocols of :mod:`serve.http.deps` raise these; the runtime's Ray-backed
implementations translate "no such actor" into them, so the routes never see Ray.

Errors of the layers below keep their own types and map as follows: ``KeyError`` and
``LookupError`` (unknown battery, order, technician, model or version) to 404,
:class:`contracts.errors.WorkOrderError` and other registry refusals to 409, and bad
parameters to 422 in FastAPI's validation-error shape (``{"detail": [{"loc", "msg",
"type"}]}``), so every 422 matches the schema the OpenAPI document declares.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "BAD_BODY_RESPONSE",
    "ERROR_RESPONSES",
    "ErrorBody",
    "PlannerNotRunning",
    "ServiceUnavailable",
    "invalid_parameter",
]


class ServiceUnavailable(RuntimeError):
    """A service that a route needs is not running; the route answers 503."""


class PlannerNotRunning(ServiceUnavailable):
    """The planner actor is not running (``[planner]`` disabled, or models off)."""

    def __init__(
        self, message: str = "The planner is not running (needs [planner] enabled and the models)."
    ) -> None:
        super().__init__(message)


class ErrorBody(BaseModel):
    """The body of every 404, 409 and 503 answer (FastAPI's ``HTTPException`` shape)."""

    model_config = ConfigDict(extra="forbid")
    detail: str = Field(description="What was expected and what arrived")


def _described(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


#: ``responses=`` entries for the error statuses the routes answer with.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: _described("Not found: the message names what was looked up"),
    409: _described("Refused: the change conflicts with the current state"),
    503: _described("A service the route needs is not running"),
}

#: ``responses=`` entries of every route that reads a JSON body: a body that is not JSON (or
#: not UTF-8) is refused with a 400, one over the size limit with a 413, before the route runs.
BAD_BODY_RESPONSE: dict[int | str, dict[str, Any]] = {
    400: _described("The body is not valid JSON (or not UTF-8)"),
    413: _described("The body is larger than the API takes (64 KiB)"),
}


def invalid_parameter(loc: Sequence[str | int], msg: str) -> RequestValidationError:
    """A 422 for a parameter the route checks itself, in FastAPI's declared error shape.

    Parameters
    ----------
    loc
        Where the bad value is, e.g. ``("query", "by")``.
    msg
        What was expected and what arrived.
    """
    return RequestValidationError([{"loc": tuple(loc), "msg": msg, "type": "value_error"}])

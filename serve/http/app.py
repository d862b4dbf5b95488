"""The HTTP API as a FastAPI app, built from its dependencies (no Ray in sight).

:func:`create_api` includes one router per area (:mod:`serve.http.fleet`,
:mod:`~serve.http.batteries`, :mod:`~serve.http.models`, :mod:`~serve.http.planner`,
:mod:`~serve.http.work_orders`, :mod:`~serve.http.system`); :mod:`runtime.ingress` serves
it from a Ray Serve deployment, and unit tests call it through FastAPI's ``TestClient``.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.types import Lifespan

from serve.http import batteries, fleet, models, planner, system, work_orders
from serve.http.deps import ApiDeps
from serve.http.errors import ServiceUnavailable

__all__ = ["create_api"]


async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=503)


def create_api(deps: ApiDeps, *, lifespan: Lifespan[FastAPI] | None = None) -> FastAPI:
    """The API over ``deps``.

    Parameters
    ----------
    deps
        What the routes call.
    lifespan
        Opens and closes what ``deps`` hold (connection pools), if anything.
    """
    api = FastAPI(
        title="Battery fleet twin API",
        version="1",
        description="Live digital twins of a shared e-scooter fleet's swappable batteries.",
        lifespan=lifespan,
    )
    api.state.deps = deps
    # Any route may need a service that is not running (the planner): 503, never a 500.
    api.add_exception_handler(ServiceUnavailable, _unavailable)
    for area in (system, batteries, fleet, models, planner, work_orders):
        api.include_router(area.router)
    return api

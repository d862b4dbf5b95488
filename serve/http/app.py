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

from serve.http import (
    alerts,
    batteries,
    battery_history,
    fleet,
    models,
    planner,
    simulations,
    system,
    tokens,
    vehicles,
    webhooks,
    work_orders,
)
from serve.http.auth import BodySizeLimit, RateLimiter
from serve.http.deps import ApiDeps
from serve.http.errors import ServiceUnavailable

__all__ = ["MAX_BODY_BYTES", "create_api"]


async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=503)


#: Largest request body any route takes: the bodies are a few hundred bytes of JSON.
MAX_BODY_BYTES = 64 * 1024


def create_api(
    deps: ApiDeps,
    *,
    lifespan: Lifespan[FastAPI] | None = None,
    rate_limiter: RateLimiter | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> FastAPI:
    """The API over ``deps``.

    Parameters
    ----------
    deps
        What the routes call.
    lifespan
        Opens and closes what ``deps`` hold (connection pools), if anything.
    rate_limiter
        Per-token buckets of the rate-limited routes (tests pass one with a fake clock).
    max_body_bytes
        Larger request bodies get a 413 before any route reads them.
    """
    api = FastAPI(
        title="Battery fleet twin API",
        version="1",
        description="Live digital twins of a shared e-scooter fleet's swappable batteries.",
        lifespan=lifespan,
    )
    api.state.deps = deps
    api.state.rate_limiter = rate_limiter or RateLimiter()
    api.add_middleware(BodySizeLimit, max_bytes=max_body_bytes)
    # Any route may need a service that is not running (the planner): 503, never a 500.
    api.add_exception_handler(ServiceUnavailable, _unavailable)
    areas = (
        system, batteries, battery_history, fleet, vehicles, models, planner, work_orders, alerts, webhooks,
        tokens, simulations,
    )  # fmt: skip
    for area in areas:
        api.include_router(area.router)
    api.include_router(fleet.map_router)  # fleet managers and ops, unlike the rest of fleet
    return api

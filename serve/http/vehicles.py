"""What a rider sees: rentable vehicles near a point, with their charge and range.

::

    GET /api/v1/availability?lat=&lon=&radius_m=&limit=   nearest rentable vehicles

For ``customer`` tokens (and fleet managers). The answer names vehicles only: no battery
id, health, anomaly or internal reading leaves through this route. It comes from this
replica's read snapshot (:mod:`serve.http.read_snapshot`) and says how old it is.
(``GET /api/v1/vehicles/available``, its first path, is gone: the dashboard calls this one.)
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import Response
from pydantic import Field

from serve.http.auth import AUTH_RESPONSES, Riders
from serve.http.deps import Deps
from serve.http.response_model import ApiModel

__all__ = ["AvailabilityResponse", "AvailableVehicleOut", "router"]

router = APIRouter(tags=["vehicles"], responses=AUTH_RESPONSES)


class AvailableVehicleOut(ApiModel):
    """A rentable vehicle (:class:`twins.fleet_query.AvailableVehicle`)."""

    vehicle_id: str
    lat: float
    lon: float
    distance_m: float = Field(description="Great-circle distance from the asked point")
    soc_pct: float = Field(description="State of charge of its battery")
    est_range_km: float = Field(
        description="How far it can ride: the charge above the reserve, times the battery's "
        "estimated capacity (rated until estimated) and pack voltage, at the fleet's mean "
        "consumption"
    )


class AvailabilityResponse(ApiModel):
    as_of_s: float = Field(description="Unix time of the fleet state answered")
    staleness_s: float = Field(description="Seconds between as_of_s and this answer", ge=0)
    vehicles: list[AvailableVehicleOut] = Field(description="Nearest first")


@router.get("/api/v1/availability", response_model=AvailabilityResponse)
async def availability(
    deps: Deps,
    who: Riders,
    lat: Annotated[float, Query(ge=-90, le=90, description="Latitude of the rider, degrees")],
    lon: Annotated[float, Query(ge=-180, le=180, description="Longitude of the rider, degrees")],
    radius_m: Annotated[float, Query(gt=0, le=20_000, description="Search radius, metres")] = 1000.0,
    limit: Annotated[int, Query(ge=1, le=200, description="Most vehicles answered")] = 20,
) -> Response:
    """Rentable vehicles within ``radius_m`` of (``lat``, ``lon``), nearest first, with their
    charge and estimated range."""
    reads = deps.reads
    snapshot = await reads.get()
    # Serialised straight from the query's rows: validating the response model cost about
    # as much as the query (tests hold the body to AvailabilityResponse).
    body = snapshot.availability_json(lat, lon, radius_m, limit, now_s=reads.clock())
    return Response(body, media_type="application/json")

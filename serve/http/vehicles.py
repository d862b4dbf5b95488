"""What a rider sees: rentable vehicles near a point, with their charge and range.

::

    GET /api/v1/vehicles/available?lat=&lon=&radius_m=&limit=   nearest rentable vehicles

For ``customer`` tokens (and fleet managers). The answer names vehicles only: no battery
id, health, anomaly or internal reading leaves through this route.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
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
    est_range_km: float = Field(description="How far it can ride, at the fleet's mean consumption")


class AvailabilityResponse(ApiModel):
    vehicles: list[AvailableVehicleOut] = Field(description="Nearest first")


@router.get("/api/v1/vehicles/available", response_model=AvailabilityResponse)
async def available_vehicles(
    deps: Deps,
    who: Riders,
    lat: Annotated[float, Query(ge=-90, le=90)],
    lon: Annotated[float, Query(ge=-180, le=180)],
    radius_m: Annotated[float, Query(gt=0, le=20_000)] = 1000.0,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
) -> AvailabilityResponse:
    """Rentable vehicles within ``radius_m`` of (``lat``, ``lon``), nearest first."""
    rows = await deps.fleet.available_vehicles(lat, lon, radius_m, limit)
    return AvailabilityResponse(
        vehicles=[AvailableVehicleOut.model_validate(r, from_attributes=True) for r in rows]
    )

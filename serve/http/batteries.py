"""One battery: its twin's state, its rolling window, and its telemetry history.

::

    GET /api/v1/batteries/{id}                              twin state (from the read snapshot)
    GET /api/v1/batteries/{id}/window                       rolling window of recent samples
    GET /api/v1/batteries/{id}/telemetry?from=&to=&limit=   history from PostgreSQL

The twin's state is answered from this replica's read snapshot
(:mod:`serve.http.read_snapshot`), with ``as_of_s`` and ``staleness_s``; a battery the
snapshot does not have yet (new since its last refresh), or one this replica just changed,
is read from its shard.
"""

from __future__ import annotations

import re
from dataclasses import asdict
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Query
from fastapi.responses import Response
from pydantic import Field

from contracts.access import Role
from serve.http.auth import AUTH_RESPONSES, Allow
from serve.http.deps import Deps
from serve.http.errors import ERROR_RESPONSES, invalid_parameter
from serve.http.response_model import ApiModel

__all__ = [
    "BATTERY_ID_PATTERN",
    "BatteryId",
    "BatteryRead",
    "TelemetryResponse",
    "TwinState",
    "WindowResponse",
    "parse_time",
    "router",
]

router = APIRouter(
    tags=["batteries"],
    dependencies=[Depends(Allow(Role.FLEET_MANAGER))],
    responses=AUTH_RESPONSES,
)

#: Battery (and technician) ids in paths: what the MQTT topic contract allows.
BATTERY_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
BatteryId = Annotated[str, Path(pattern=BATTERY_ID_PATTERN, description="Battery id")]

_NUMBER_RE = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


class TwinState(ApiModel):
    """Everything a twin knows (:class:`twins.battery_twin.TwinSnapshot`); null = not known."""

    battery_id: str
    vehicle_id: str | None = Field(description="The vehicle the battery is in, if any")
    last_ts: float | None = Field(description="Unix time of the newest sample")
    updated_at_s: float | None = Field(description="Unix time the twin last applied a sample")
    samples_total: int
    pack_voltage_v: float | None
    current_a: float | None
    temp_c: float | None
    soc_pct: float | None
    speed_kmh: float | None
    odometer_km: float | None
    cell_min_v: float | None
    cell_max_v: float | None
    lat: float | None
    lon: float | None
    zone: str
    charging: bool
    efc: float = Field(description="Equivalent full cycles")
    ah_discharged_ah: float
    ah_charged_ah: float
    time_hot_s: float
    max_temp_c: float | None
    dod_histogram: dict[str, int] = Field(description="Cycles per depth-of-discharge bin")
    cycles_completed: int
    rated_capacity_ah: float
    capacity_est_ah: float | None
    capacity_estimates: int
    soh_pct_est: float | None = Field(description="State of health from the capacity estimate")
    health_band: str
    resistance_est_ohm: float | None
    resistance_samples: int
    lstm_steps: int
    soh_model_pct: float | None = Field(description="State of health from the health model")
    health_score: float | None
    health_model_version: int
    anomaly_flags: list[str]
    anomaly_score: float | None
    rul_cycles_to_80pct: dict[str, float | None] = Field(description="p10/p50/p90 cycles")
    rul_cycles_to_70pct: dict[str, float | None] = Field(description="p10/p50/p90 cycles")
    rul_days_to_80pct: dict[str, float | None] = Field(description="p10/p50/p90 days at the battery's own usage rate")
    rul_days_to_70pct: dict[str, float | None] = Field(description="p10/p50/p90 days at the battery's own usage rate")
    priority: float | None = Field(description="Swap priority, 0-100")
    lost_rides_6h: float | None
    idle_h: float | None
    scored_at_s: float | None = Field(
        description="Unix time of the oldest of the models' last successful scores of this "
        "twin (models that never scored it left out): every model output here is at least "
        "this fresh; null before any model scored it"
    )
    score_age_s: dict[str, float | None] = Field(
        description="Per model (health, anomaly, degradation, priority): seconds since it last "
        "scored this twin successfully, measured when the state was taken (as_of_s); null for "
        "a model that never scored it. A failing model leaves its outputs as they were, and "
        "their age grows"
    )
    scores_stale: bool = Field(
        description="True when a model that has scored this twin has not succeeded for longer "
        "than the stale threshold (3 scoring intervals by default): some model outputs here "
        "are kept from before an outage"
    )


class BatteryRead(TwinState):
    """A twin's state as answered, and how old it is."""

    as_of_s: float = Field(
        description="Unix time the state was taken from the twin's shard (the read snapshot's time)"
    )
    staleness_s: float = Field(description="Seconds between as_of_s and this answer", ge=0)


class WindowResponse(ApiModel):
    battery_id: str
    samples: dict[str, list[float | None]] = Field(
        description="One list per sample column (ts first), oldest first"
    )


class TelemetryResponse(ApiModel):
    battery_id: str
    count: int = Field(description="Rows returned")
    columns: dict[str, list[float | int | str | None]] = Field(
        description="One list per history column (ts, vehicle_id, seq, readings), oldest first"
    )


def parse_time(value: str | None, name: str) -> float | None:
    """Unix seconds from ``value`` (Unix seconds or ISO 8601 with a timezone); 422 otherwise."""
    if value is None or value == "":
        return None
    if _NUMBER_RE.fullmatch(value):
        return float(value)
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise invalid_parameter(
            ("query", name),
            f"Expected {name} as Unix seconds or ISO 8601 (2026-11-26T12:00:00Z), got {value!r}.",
        ) from None
    if dt.tzinfo is None:
        raise invalid_parameter(
            ("query", name), f"Expected a timezone in {name} (e.g. 'Z'), got {value!r}."
        )
    return dt.timestamp()


@router.get(
    "/api/v1/batteries/{battery_id}",
    response_model=BatteryRead,
    responses={404: ERROR_RESPONSES[404]},
)
async def battery(deps: Deps, battery_id: BatteryId) -> Response | BatteryRead:
    """The twin's state: latest readings, estimates and model outputs, as of ``as_of_s``
    (the replica's read snapshot, refreshed about every second)."""
    reads = deps.reads
    snapshot = await reads.get()
    if reads.serves(snapshot, battery_id):
        # Serialised straight from the snapshot's columns: validating the model per read
        # cost more than the read (tests hold the body to BatteryRead).
        body = snapshot.battery_json(battery_id, reads.clock())
        if body is not None:
            return Response(body, media_type="application/json")
    live = await deps.fleet.get(battery_id)
    if live is None:
        raise HTTPException(
            404, f"No twin for battery {battery_id!r}: it has sent no accepted telemetry."
        )
    return BatteryRead(**asdict(live), as_of_s=reads.clock(), staleness_s=0.0)


@router.get(
    "/api/v1/batteries/{battery_id}/window",
    response_model=WindowResponse,
    responses={404: ERROR_RESPONSES[404]},
)
async def battery_window(deps: Deps, battery_id: BatteryId) -> WindowResponse:
    """The twin's rolling window of recent samples."""
    window = await deps.fleet.window(battery_id)
    if window is None:
        raise HTTPException(404, f"No twin for battery {battery_id!r}.")
    return WindowResponse(battery_id=battery_id, samples=window)


@router.get("/api/v1/batteries/{battery_id}/telemetry", response_model=TelemetryResponse)
async def battery_telemetry(
    deps: Deps,
    battery_id: BatteryId,
    from_: Annotated[str | None, Query(alias="from", description="Unix s or ISO 8601")] = None,
    to: Annotated[str | None, Query(description="Unix s or ISO 8601")] = None,
    limit: Annotated[int, Query(ge=1, le=1_000_000)] = 1000,
) -> TelemetryResponse:
    """History from PostgreSQL: the newest ``limit`` samples in the range, oldest first."""
    t0, t1 = parse_time(from_, "from"), parse_time(to, "to")
    if t0 is not None and t1 is not None and t1 < t0:
        raise invalid_parameter(
            ("query", "to"), f"Expected from <= to, got from={from_!r} to={to!r}."
        )
    async with deps.stores.history() as store:
        rows = await store.history(battery_id, t0, t1, min(limit, deps.max_history_rows))
    return TelemetryResponse(battery_id=battery_id, count=len(rows["ts"]), columns=rows)

"""Fleet-wide reads: the summary, top-N, grouped aggregates and the newest anomaly events.

::

    GET /api/v1/fleet/summary                               counts and means by health band
    GET /api/v1/fleet/top?by=&n=&order=&filter=             top-N twins by any numeric field
    GET /api/v1/fleet/groups?group_by=&fields=&filter=      grouped aggregates
    GET /api/v1/anomalies?battery_id=&limit=                newest anomaly events of the twins
    GET /api/v1/fleet/map                                   every twin for the map (columnar)

The map is for fleet managers and ops (``map_router``); the rest for fleet managers.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response
from pydantic import ConfigDict, Field

from contracts.access import Role
from serve.http.auth import AUTH_RESPONSES, Allow
from serve.http.batteries import BATTERY_ID_PATTERN
from serve.http.deps import Deps
from serve.http.errors import invalid_parameter
from serve.http.response_model import ApiModel
from twins.fleet_query import CATEGORICAL_FIELDS, NUMERIC_FIELDS, Filter, GroupStats

__all__ = [
    "AnomaliesResponse",
    "AnomalyEventOut",
    "FieldStats",
    "FleetMap",
    "FleetSummary",
    "GroupSummary",
    "GroupsResponse",
    "TopResponse",
    "TopRow",
    "map_router",
    "parse_filters",
    "router",
]

router = APIRouter(
    tags=["fleet"],
    dependencies=[Depends(Allow(Role.FLEET_MANAGER))],
    responses=AUTH_RESPONSES,
)

_SUMMARY_FIELDS = ("soc_pct", "temp_c", "soh_pct_est", "efc", "staleness_s")
_LOW_SOC_PCT = 20.0
_MAX_EVENTS = 5000
_HOT_C = 45.0


class FieldStats(ApiModel):
    """One numeric field over a group; null where no twin has a value."""

    mean: float | None
    min: float | None
    max: float | None
    n: int = Field(description="Twins with a value")


class GroupSummary(ApiModel):
    """A group's twin count, and one :class:`FieldStats` per requested field (by name)."""

    model_config = ConfigDict(extra="allow")
    # The requested fields are the keys next to "count": {"count": 3, "soc_pct": {...}}.
    __pydantic_extra__: dict[str, FieldStats] = Field(init=False)
    count: int = Field(description="Twins in the group")

    @classmethod
    def of(cls, stats: GroupStats) -> GroupSummary:
        return cls.model_validate(stats.to_dict())


class FleetSummary(ApiModel):
    generated_at_s: float = Field(description="Unix time of this summary")
    batteries: int
    overall: GroupSummary
    by_health_band: dict[str, GroupSummary]
    charging: int = Field(description="Twins charging now")
    low_soc_lt_20pct: int
    hot_gt_45c: int
    shards: int


class TopRow(ApiModel):
    battery_id: str
    value: float | None = Field(description="The ranked field's value")
    vehicle_id: str | None
    zone: str
    soc_pct: float | None
    health_band: str


class TopResponse(ApiModel):
    by: str
    order: Literal["asc", "desc"]
    rows: list[TopRow]


class GroupsResponse(ApiModel):
    group_by: str
    groups: dict[str, GroupSummary]


class AnomalyEventOut(ApiModel):
    battery_id: str
    kind: str = Field(description="Anomaly kind, e.g. temp_rise")
    score: float | None
    at_s: float = Field(description="Unix time the flag switched on")


class AnomaliesResponse(ApiModel):
    events: list[AnomalyEventOut] = Field(description="Newest first")


def parse_filters(raw: list[str]) -> list[Filter]:
    """``field:op:value`` filters; a 422 naming the bad one."""
    try:
        return [Filter.parse(f) for f in raw]
    except ValueError as err:
        raise invalid_parameter(("query", "filter"), str(err)) from None


def _groups(groups: Mapping[str, GroupStats]) -> dict[str, GroupSummary]:
    return {k: GroupSummary.of(v) for k, v in sorted(groups.items())}


@router.get("/api/v1/fleet/summary", response_model=FleetSummary)
async def fleet_summary(deps: Deps) -> FleetSummary:
    """Counts and means of the fleet, overall and by health band."""
    fleet = deps.fleet
    by_band = await fleet.group_stats("health_band", _SUMMARY_FIELDS)
    overall = await fleet.group_stats(None, _SUMMARY_FIELDS)
    charging = await fleet.group_stats("charging", [])
    low = await fleet.group_stats(None, [], filters=[Filter("soc_pct", "lt", _LOW_SOC_PCT)])
    hot = await fleet.group_stats(None, [], filters=[Filter("temp_c", "gt", _HOT_C)])
    total = overall.get("all")
    return FleetSummary(
        generated_at_s=time.time(),
        batteries=total.count if total else 0,
        overall=GroupSummary.of(total) if total else GroupSummary(count=0),
        by_health_band=_groups(by_band),
        charging=charging["true"].count if "true" in charging else 0,
        low_soc_lt_20pct=low["all"].count if "all" in low else 0,
        hot_gt_45c=hot["all"].count if "all" in hot else 0,
        shards=await fleet.num_shards(),
    )


@router.get("/api/v1/fleet/top", response_model=TopResponse)
async def fleet_top(
    deps: Deps,
    by: Annotated[str, Query(description=f"One of {', '.join(NUMERIC_FIELDS)}")] = "soc_pct",
    n: Annotated[int, Query(ge=1, le=1000)] = 20,
    order: Literal["asc", "desc"] = "asc",
    filter: Annotated[list[str], Query(description="field:op:value, repeatable")] = [],  # noqa: B006
) -> TopResponse:
    """The n twins with the smallest (asc) or largest (desc) ``by``, after the filters."""
    if by not in NUMERIC_FIELDS:
        raise invalid_parameter(("query", "by"), f"Expected by in {NUMERIC_FIELDS}, got {by!r}.")
    filters = parse_filters(filter)
    try:
        rows = await deps.fleet.top_n(by, n, descending=order == "desc", filters=filters)
    except ValueError as err:
        raise invalid_parameter(("query",), str(err)) from None
    return TopResponse(
        by=by, order=order, rows=[TopRow.model_validate(r, from_attributes=True) for r in rows]
    )


@router.get("/api/v1/fleet/groups", response_model=GroupsResponse)
async def fleet_groups(
    deps: Deps,
    group_by: Annotated[
        str, Query(description=f"One of {', '.join(CATEGORICAL_FIELDS)}")
    ] = "health_band",
    fields: Annotated[str, Query(description="Comma-separated numeric fields")] = "soc_pct,temp_c",
    filter: Annotated[list[str], Query(description="field:op:value, repeatable")] = [],  # noqa: B006
) -> GroupsResponse:
    """Count and per-field mean, min and max of the twins, by a categorical field."""
    if group_by not in CATEGORICAL_FIELDS:
        raise invalid_parameter(
            ("query", "group_by"), f"Expected group_by in {CATEGORICAL_FIELDS}, got {group_by!r}."
        )
    names = [f for f in fields.split(",") if f]
    unknown = [f for f in names if f not in NUMERIC_FIELDS]
    if unknown:
        raise invalid_parameter(
            ("query", "fields"), f"Expected fields from {NUMERIC_FIELDS}, got {unknown}."
        )
    filters = parse_filters(filter)
    try:
        groups = await deps.fleet.group_stats(group_by, names, filters=filters)
    except ValueError as err:
        raise invalid_parameter(("query",), str(err)) from None
    return GroupsResponse(group_by=group_by, groups=_groups(groups))


@router.get("/api/v1/anomalies", response_model=AnomaliesResponse)
async def anomalies(
    deps: Deps,
    battery_id: Annotated[
        str | None, Query(pattern=BATTERY_ID_PATTERN, description="Only this battery's events")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=_MAX_EVENTS)] = 100,
) -> AnomaliesResponse:
    """The newest anomaly events across every shard, newest first.

    With ``battery_id``, that battery's among the newest ``5000`` events of each shard (what a
    shard keeps in memory is bounded anyway).
    """
    events = await deps.fleet.anomaly_events(limit if battery_id is None else _MAX_EVENTS)
    if battery_id is not None:
        events = [e for e in events if e.battery_id == battery_id]
    newest = sorted(events, key=lambda e: -e.at_s)[:limit]
    return AnomaliesResponse(
        events=[AnomalyEventOut.model_validate(e, from_attributes=True) for e in newest]
    )


# ---------------------------------------------------------------------- the map
map_router = APIRouter(
    tags=["fleet"],
    dependencies=[Depends(Allow(Role.FLEET_MANAGER, Role.OPS))],
    responses=AUTH_RESPONSES,
)


class FleetMap(ApiModel):
    """Every twin for the dashboard's map: one list per column, the i-th entry of each is
    the i-th twin (columnar, so 10,000 twins stay a few hundred kB); null = not known."""

    as_of_s: float = Field(description="Unix time of the fleet state answered")
    staleness_s: float = Field(description="Seconds between as_of_s and this answer", ge=0)
    count: int = Field(description="Twins (the length of every list)", ge=0)
    battery_id: list[str]
    vehicle_id: list[str | None] = Field(description="The vehicle the battery is in, if any")
    lat: list[float | None] = Field(description="Last known position, degrees (6 decimals)")
    lon: list[float | None]
    soc_pct: list[float | None] = Field(description="State of charge, % (1 decimal)")
    health_score: list[float | None] = Field(description="Health model score, 0-100")
    soh_pct: list[float | None] = Field(
        description="State of health, %: the health model's where scored, else the twin's own estimate"
    )
    temp_c: list[float | None] = Field(description="Pack temperature, °C")
    health_band: list[str] = Field(description="good, fair, poor, end_of_life or unknown")
    anomaly_flags: list[list[str]] = Field(description="Anomaly kinds flagged, by name")
    charging: list[bool]


@map_router.get("/api/v1/fleet/map", response_model=FleetMap)
async def fleet_map(deps: Deps) -> Response:
    """Every twin's position, charge, health and flags, from the replica's read snapshot."""
    reads = deps.reads
    snapshot = await reads.get()
    # Built once per snapshot and sent as bytes: validating 10,000 rows per request would
    # cost more than the rest of the request (tests hold the body to FleetMap).
    return Response(snapshot.map_json(reads.clock()), media_type="application/json")

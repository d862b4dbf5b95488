"""One battery over time: its scored health history and its degradation forecast.

::

    GET /api/v1/batteries/{id}/health-history?from=&to=&limit=   SOH and health score per run
    GET /api/v1/batteries/{id}/forecast                          SOH vs. cycles, p10/p50/p90

For ``fleet_manager`` and ``ops`` tokens: the battery page of the dashboard draws both.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query
from pydantic import Field

from serve.http.auth import AUTH_RESPONSES, Operators
from serve.http.batteries import BatteryId, parse_time
from serve.http.deps import Deps
from serve.http.errors import ERROR_RESPONSES, invalid_parameter
from serve.http.response_model import ApiModel

__all__ = [
    "FORECAST_THRESHOLDS_PCT",
    "ForecastPoint",
    "ForecastResponse",
    "HealthHistoryResponse",
    "HealthPointOut",
    "forecast_of",
    "router",
]

router = APIRouter(tags=["batteries"], responses=AUTH_RESPONSES)

#: The SOH levels the degradation model forecasts the remaining life to (% of rated).
FORECAST_THRESHOLDS_PCT = (80.0, 70.0)


class HealthPointOut(ApiModel):
    """One row of ``health_history``: the battery as the model job scored it."""

    ts: float = Field(description="Unix time of the scoring run")
    soh_pct: float = Field(description="State of health from the health model, % of rated")
    health_score: float = Field(description="Health score, 0-100")
    efc: float = Field(description="Equivalent full cycles at that run")
    model_version: int = Field(description="Version of the health model that scored it")


class HealthHistoryResponse(ApiModel):
    battery_id: str
    count: int = Field(description="Rows returned")
    points: list[HealthPointOut] = Field(description="Oldest first")


class ForecastPoint(ApiModel):
    cycles: float = Field(description="Equivalent full cycles of the battery's life")
    soh_pct: float = Field(description="State of health, % of rated capacity")


class ForecastResponse(ApiModel):
    """The degradation forecast as SOH-vs-cycles polylines, one per quantile."""

    battery_id: str
    lstm_steps: int = Field(description="Capacity measurements the degradation LSTM has seen")
    scored_at_s: float | None = Field(
        description="Unix time of the oldest of the models' last successful scores of the twin"
    )
    score_age_s: dict[str, float | None] = Field(
        description="Per model, seconds since it last scored the twin (null: never); the "
        "forecast is the degradation model's"
    )
    scores_stale: bool = Field(
        description="True when a model that has scored the twin has not succeeded for longer "
        "than the stale threshold (3 scoring intervals by default)"
    )
    now: ForecastPoint | None = Field(
        description="Cycles so far and the measured SOH the forecast starts from; null when "
        "no SOH is known yet"
    )
    thresholds_pct: list[float] = Field(description="SOH levels the quantiles reach, in order")
    p10: list[ForecastPoint] | None = Field(
        description="Pessimistic: now, then each threshold at now + the p10 remaining cycles; "
        "null until the LSTM has stepped"
    )
    p50: list[ForecastPoint] | None = Field(description="Median, as p10")
    p90: list[ForecastPoint] | None = Field(description="Optimistic, as p10")


def forecast_of(twin: Mapping[str, Any]) -> ForecastResponse:
    """The forecast band of one twin: the model's quantiles joined linearly.

    The degradation LSTM answers, per quantile, how many more cycles until SOH first reaches
    80 % and 70 % of rated (``rul_cycles_to_80pct`` / ``..._70pct``), counted from the last
    capacity measurement. Each quantile's polyline starts at the twin now (its equivalent
    full cycles, the capacity-measured SOH the model steps from) and joins the points
    ``(cycles now + remaining cycles, threshold)`` with straight lines: between those points
    the model says nothing, so the lines are a drawing aid, not a prediction. A threshold
    the battery is already at or below is left out, and so is one whose remaining cycles are
    unknown (the model's curve stopped falling: no crossing forecast). The quantiles are
    ``None`` while the LSTM has not stepped (no capacity measurement completed yet).

    ``twin`` is a twin's state by field name (:class:`twins.battery_twin.TwinSnapshot`).
    """
    soh_now = twin["soh_pct_est"] if twin["soh_pct_est"] is not None else twin["soh_model_pct"]
    now = None if soh_now is None else ForecastPoint(cycles=twin["efc"], soh_pct=soh_now)
    bands: dict[str, list[ForecastPoint] | None] = {"p10": None, "p50": None, "p90": None}
    if now is not None and twin["lstm_steps"] > 0:
        levels = (twin["rul_cycles_to_80pct"], twin["rul_cycles_to_70pct"])
        remaining = dict(zip(FORECAST_THRESHOLDS_PCT, levels, strict=True))
        for q in bands:
            line = [now]
            for level, rul in remaining.items():
                cycles = rul.get(q)
                if level < now.soh_pct and cycles is not None:
                    line.append(ForecastPoint(cycles=now.cycles + cycles, soh_pct=level))
            bands[q] = line
    return ForecastResponse(
        battery_id=twin["battery_id"], lstm_steps=twin["lstm_steps"], scored_at_s=twin["scored_at_s"],
        score_age_s=twin["score_age_s"], scores_stale=twin["scores_stale"],
        now=now, thresholds_pct=list(FORECAST_THRESHOLDS_PCT), **bands,
    )  # fmt: skip


@router.get(
    "/api/v1/batteries/{battery_id}/health-history",
    response_model=HealthHistoryResponse,
    responses={503: ERROR_RESPONSES[503]},
)
async def health_history(
    deps: Deps,
    who: Operators,
    battery_id: BatteryId,
    from_: Annotated[str | None, Query(alias="from", description="Unix s or ISO 8601")] = None,
    to: Annotated[str | None, Query(description="Unix s or ISO 8601")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> HealthHistoryResponse:
    """SOH and health score of each scoring run of the model job (hourly): the newest
    ``limit`` in the range, oldest first."""
    t0, t1 = parse_time(from_, "from"), parse_time(to, "to")
    if t0 is not None and t1 is not None and t1 < t0:
        raise invalid_parameter(("query", "to"), f"Expected from <= to, got from={from_!r} to={to!r}.")
    async with deps.stores.health_history() as store:
        rows = await store.battery_history(battery_id, t0, t1, limit)
    points = [
        HealthPointOut(
            ts=r.scored_at_s, soh_pct=r.soh_pct, health_score=r.health_score, efc=r.efc,
            model_version=r.model_version,
        )
        for r in rows
    ]  # fmt: skip
    return HealthHistoryResponse(battery_id=battery_id, count=len(points), points=points)


@router.get(
    "/api/v1/batteries/{battery_id}/forecast",
    response_model=ForecastResponse,
    responses={404: ERROR_RESPONSES[404]},
)
async def forecast(deps: Deps, who: Operators, battery_id: BatteryId) -> ForecastResponse:
    """The degradation forecast of the twin: SOH vs. cycles now and where the model's
    p10/p50/p90 remaining life puts 80 % and 70 %, joined linearly (see :func:`forecast_of`).

    From the replica's read snapshot, as ``GET /api/v1/batteries/{id}`` is.
    """
    reads = deps.reads
    snapshot = await reads.get()
    twin = snapshot.state(battery_id) if reads.serves(snapshot, battery_id) else None
    if twin is None:
        live = await deps.fleet.get(battery_id)
        if live is None:
            raise HTTPException(
                404, f"No twin for battery {battery_id!r}: it has sent no accepted telemetry."
            )
        twin = live.to_dict()
    return forecast_of(twin)

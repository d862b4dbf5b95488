"""Alerts: list, one alert with its history, acknowledge, silences, and the live stream.

::

    GET    /api/v1/alerts?state=&severity=&category=&battery_id=&limit=   newest first
    GET    /api/v1/alerts/{id}                one alert and its attributed history
    POST   /api/v1/alerts/{id}/acknowledge    {"note"?}: firing -> acknowledged
    GET    /api/v1/alerts/stream              server-sent events, resumable (Last-Event-ID)
    GET    /api/v1/silences?include_expired=  silences
    POST   /api/v1/silences                   {"matchers", "duration_s", "comment"} -> 201
    DELETE /api/v1/silences/{id}              expire a silence now

For the fleet manager and ops. Changes go to the alert manager (its book is the truth and
notifies); reads come from the store. The stream sends every state change of an alert as
``event: alert`` with an ``id:`` a client hands back in ``Last-Event-ID`` to resume after a
disconnect without losing or repeating an event, and a ``: keep-alive`` comment when
nothing happened for a while (proxies close idle connections).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Path, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from contracts.alerts import (
    Alert,
    AlertCategory,
    AlertSeverity,
    AlertState,
    AlertTransition,
    Silence,
)
from contracts.webhooks import check_matchers
from serve.http.auth import AUTH_RESPONSES, Operators
from serve.http.deps import AlertAccess, AlertEvent, ApiDeps, Deps
from serve.http.errors import (
    BAD_BODY_RESPONSE,
    ERROR_RESPONSES,
    ErrorBody,
    ServiceUnavailable,
    invalid_parameter,
)
from serve.http.response_model import ApiModel

__all__ = [
    "AcknowledgeBody",
    "AlertDetail",
    "AlertOut",
    "AlertsResponse",
    "SilenceBody",
    "SilenceOut",
    "SilencesResponse",
    "router",
]

router = APIRouter(tags=["alerts"], responses=AUTH_RESPONSES)

#: Seconds without an event after which the stream sends a keep-alive comment.
KEEPALIVE_S = 15.0
_MAX_SILENCE_S = 30 * 24 * 3600.0

BigId = Annotated[int, Path(ge=1, le=2**63 - 1)]
_404: dict[int | str, dict[str, Any]] = {404: ERROR_RESPONSES[404], 503: ERROR_RESPONSES[503]}


class AlertManagerNotRunning(ServiceUnavailable):
    def __init__(self) -> None:
        super().__init__("The alert manager is not running (needs [alerts] enabled).")


def _alerts(deps: ApiDeps) -> AlertAccess:
    if deps.alerts is None:
        raise AlertManagerNotRunning()
    return deps.alerts


class AlertOut(ApiModel):
    """One alert (:class:`contracts.alerts.Alert`)."""

    id: int | None
    key: str = Field(description="Dedup key: one open alert per key")
    kind: str
    category: AlertCategory
    severity: AlertSeverity
    state: AlertState
    summary: str
    source: str
    battery_id: str | None
    vehicle_id: str | None
    zone: str | None
    lat: float | None
    lon: float | None
    labels: dict[str, str]
    evidence: dict[str, float | int | str | bool | None]
    started_at_s: float
    fired_at_s: float | None
    acknowledged_at_s: float | None
    acknowledged_by: str | None
    resolved_at_s: float | None
    last_active_at_s: float
    clear_since_s: float | None
    silenced_by: int | None = Field(description="The silence muting it now")
    inhibited_by: str | None = Field(description="Key of the alert that explains it now")

    @classmethod
    def of(cls, alert: Alert) -> AlertOut:
        return cls.model_validate(alert.to_dict())


class AlertsResponse(ApiModel):
    alerts: list[AlertOut]
    counts: dict[str, int] = Field(description="Open alerts per state")


class TransitionOut(ApiModel):
    from_state: AlertState | None
    to_state: AlertState
    at_s: float
    actor: str
    note: str | None

    @classmethod
    def of(cls, t: AlertTransition) -> TransitionOut:
        return cls(from_state=t.from_state, to_state=t.to_state, at_s=t.at_s, actor=t.actor, note=t.note)


class AlertDetail(ApiModel):
    alert: AlertOut
    history: list[TransitionOut] = Field(description="Oldest first")


#: Free text is stored in PostgreSQL, whose text cannot hold NUL: refused at the boundary.
_TEXT = r"^[^\x00]*$"


class AcknowledgeBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    note: str | None = Field(None, max_length=2000, pattern=_TEXT)


class SilenceBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    matchers: dict[str, str] = Field(
        min_length=1, max_length=16,
        description='Label equalities (names like battery_id, kind, zone, key), e.g. {"key": "pack_overtemp:b-00042"}',
    )  # fmt: skip
    duration_s: float = Field(ge=1, le=_MAX_SILENCE_S, description="From now: 1 s to 30 days")
    comment: str = Field("", max_length=2000, pattern=_TEXT)

    @field_validator("matchers")
    @classmethod
    def _matchers(cls, value: dict[str, str]) -> dict[str, str]:
        check_matchers(value)  # the same label rules as webhook subscriptions
        return value


class SilenceOut(ApiModel):
    id: int | None
    matchers: dict[str, str]
    starts_at_s: float
    ends_at_s: float
    author: str
    comment: str
    created_at_s: float | None

    @classmethod
    def of(cls, s: Silence) -> SilenceOut:
        return cls(
            id=s.id, matchers=dict(s.matchers), starts_at_s=s.starts_at_s, ends_at_s=s.ends_at_s,
            author=s.author, comment=s.comment, created_at_s=s.created_at_s,
        )  # fmt: skip


class SilencesResponse(ApiModel):
    silences: list[SilenceOut]


@router.get("/api/v1/alerts", response_model=AlertsResponse, responses={503: ERROR_RESPONSES[503]})
async def alerts(
    deps: Deps,
    who: Operators,
    state: Annotated[str | None, Query(pattern="^(open|pending|firing|acknowledged|resolved)$")] = "open",
    severity: AlertSeverity | None = None,
    category: AlertCategory | None = None,
    battery_id: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=5000)] = 200,
) -> AlertsResponse:
    """Alerts newest first; ``state=open`` (the default) is every state but resolved."""
    access = _alerts(deps)
    rows = await access.list(
        state=state, severity=None if severity is None else severity.value,
        category=None if category is None else category.value, battery_id=battery_id, limit=limit,
    )  # fmt: skip
    return AlertsResponse(alerts=[AlertOut.of(a) for a in rows], counts=await access.counts())


@router.get(
    "/api/v1/alerts/stream",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "Server-sent events"},
        400: {"model": ErrorBody, "description": "Last-Event-ID is not an id of this stream"},
        503: ERROR_RESPONSES[503],
    },
)  # fmt: skip
async def alert_stream(
    deps: Deps,
    who: Operators,
    last_event_id: Annotated[str | None, Header(max_length=64, description="Resume after this event")] = None,
) -> StreamingResponse:
    """Every alert state change as a server-sent event (``event: alert``), live."""
    access = _alerts(deps)
    events = access.stream(last_event_id, KEEPALIVE_S)
    try:
        first = await anext(events)
    except ValueError as err:  # an id that is not one of ours: say so before streaming
        raise HTTPException(400, f"Bad Last-Event-ID: {err}") from None
    except StopAsyncIteration:
        first = None

    async def body() -> AsyncIterator[bytes]:
        yield b"retry: 3000\n\n"
        yield _frame(first)
        async for event in events:
            yield _frame(event)

    return StreamingResponse(
        body(), media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )  # fmt: skip


def _frame(event: AlertEvent | None) -> bytes:
    if event is None:
        return b": keep-alive\n\n"
    event_id, data = event
    return f"id: {event_id}\nevent: alert\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


@router.get("/api/v1/alerts/{alert_id}", response_model=AlertDetail, responses=_404)
async def alert(deps: Deps, who: Operators, alert_id: BigId) -> AlertDetail:
    """One alert and every state change it went through."""
    try:
        a, history = await _alerts(deps).get(alert_id)
    except KeyError:
        raise HTTPException(404, f"No alert with id {alert_id}.") from None
    return AlertDetail(alert=AlertOut.of(a), history=[TransitionOut.of(t) for t in history])


@router.post(
    "/api/v1/alerts/{alert_id}/acknowledge",
    response_model=AlertOut,
    responses={**_404, 409: ERROR_RESPONSES[409], **BAD_BODY_RESPONSE},
)
async def acknowledge(deps: Deps, who: Operators, alert_id: BigId, body: AcknowledgeBody) -> AlertOut:
    """Someone is on it: a firing alert becomes acknowledged (it still resolves by itself)."""
    try:
        a = await _alerts(deps).acknowledge(alert_id, who.subject, body.note)
    except KeyError:
        raise HTTPException(404, f"No open alert with id {alert_id}.") from None
    except ValueError as err:
        raise HTTPException(409, str(err)) from None
    return AlertOut.of(a)


@router.get("/api/v1/silences", response_model=SilencesResponse, responses={503: ERROR_RESPONSES[503]})
async def silences(deps: Deps, who: Operators, include_expired: bool = False) -> SilencesResponse:
    """Active silences (and expired ones on request), newest first."""
    rows = await _alerts(deps).silences(include_expired)
    return SilencesResponse(silences=[SilenceOut.of(s) for s in rows])


@router.post(
    "/api/v1/silences", status_code=201, response_model=SilenceOut,
    responses={503: ERROR_RESPONSES[503], **BAD_BODY_RESPONSE},
)  # fmt: skip
async def add_silence(deps: Deps, who: Operators, body: SilenceBody) -> SilenceOut:
    """Mute the alerts that match, from now for ``duration_s``; attributed to the token."""
    try:
        s = await _alerts(deps).add_silence(dict(body.matchers), body.duration_s, who.subject, body.comment)
    except ValueError as err:  # what the alert book refuses about a silence is a bad body
        raise invalid_parameter(["body"], str(err)) from None
    return SilenceOut.of(s)


@router.delete("/api/v1/silences/{silence_id}", response_model=SilenceOut, responses=_404)
async def expire_silence(deps: Deps, who: Operators, silence_id: BigId) -> SilenceOut:
    """End a silence now; the alerts it muted notify again."""
    try:
        s = await _alerts(deps).expire_silence(silence_id, who.subject)
    except KeyError:
        raise HTTPException(404, f"No active silence with id {silence_id}.") from None
    return SilenceOut.of(s)

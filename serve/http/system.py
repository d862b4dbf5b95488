"""The system: liveness, shard and bridge counters, dead letters and the dashboard page.

::

    GET /healthz                     liveness: every shard answers
    GET /api/v1/system/stats         shard and bridge counters
    GET /api/v1/dead-letters?limit=  rejected messages and counts by reason
    GET /                            the dashboard page (HTML, not in the schema)
    GET /static/<file>               its scripts and styles (``serve/static/``)

``/healthz``, ``/`` and ``/static/`` are open (the page and its assets hold no data; the
page asks for a token and calls the API with it); the rest is for ``ops`` tokens.
"""

from __future__ import annotations

import functools
import os
from dataclasses import asdict
from importlib import resources
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse
from pydantic import Field
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from serve.http.auth import AUTH_RESPONSES, Ops
from serve.http.deps import Deps
from serve.http.response_model import ApiModel

__all__ = [
    "BridgeDown",
    "BridgeStatsOut",
    "DeadLetterOut",
    "DeadLettersResponse",
    "HealthResponse",
    "ShardStatsOut",
    "SystemStats",
    "router",
]

router = APIRouter(tags=["system"])


class _Assets(StaticFiles):
    """The page's scripts and styles, revalidated on every load (ETag, 304 when unchanged),
    so a deployment with new assets shows at once."""

    def file_response(
        self,
        full_path: str | os.PathLike[str],
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers["Cache-Control"] = "no-cache"
        return response


router.mount("/static", _Assets(packages=[("serve", "static")]), name="static")


class HealthResponse(ApiModel):
    status: Literal["ok"]
    shards: int = Field(description="Shards that answered")


class ShardStatsOut(ApiModel):
    """One shard's counters (:class:`twins.shard.ShardStats`)."""

    shard_id: int
    twins: int
    messages: int
    accepted_samples: int
    applied_samples: int
    late_samples: int
    duplicate_messages: int
    vehicle_changes: int
    freshness_p50_s: float | None = Field(description="Publish-to-applied latency, median")
    freshness_p99_s: float | None
    freshness_count: int
    last_apply_at_s: float | None
    checkpoints: int
    restored_from_checkpoint: bool
    replayed_samples: int


class BridgeStatsOut(ApiModel):
    """A running MQTT bridge worker's counters (:class:`serve.mqtt_bridge.BridgeStats`)."""

    name: str
    received_messages: int
    accepted_messages: int
    accepted_samples: int
    applied_samples: int
    late_samples: int
    duplicate_samples: int
    duplicate_messages: int
    rejected_messages: int
    rejected_by_reason: dict[str, int]
    batches: int
    inflight_batches: int
    connected: bool
    reconnects: int
    failed_batches: int = Field(description="Batches the shards refused on every attempt")
    failed_messages: int = Field(description="Their messages, dead-lettered as routing_failed")
    buffered_messages: int = Field(description="Received, waiting for a batch (at most about receive_maximum)")
    read_pauses: int = Field(description="Times the bridge stopped reading the broker because that many waited")


class BridgeDown(ApiModel):
    """A bridge worker that is configured but not running."""

    name: str
    error: str


class SystemStats(ApiModel):
    shards: list[ShardStatsOut]
    bridges: list[BridgeStatsOut | BridgeDown]


class DeadLetterOut(ApiModel):
    id: str = Field(description="Redis stream entry id")
    topic: str
    reason: str
    detail: str = Field(description="What was expected and what arrived")
    payload: str = Field(description="The payload as UTF-8 (bad bytes replaced), truncated")
    payload_bytes: int = Field(description="Full size of the payload")
    received_at_s: float


class DeadLettersResponse(ApiModel):
    counts: dict[str, int] = Field(description="Letters so far, per reason")
    recent: list[DeadLetterOut] = Field(description="Newest first")


@functools.cache
def _dashboard_html() -> str:
    return resources.files("serve").joinpath("static/dashboard.html").read_text()


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def dashboard() -> str:
    """The fleet dashboard."""
    return _dashboard_html()


@router.get("/healthz", response_model=HealthResponse)
async def healthz(deps: Deps) -> HealthResponse:
    """Liveness: every shard answers."""
    n = await deps.fleet.num_shards()
    await deps.fleet.ping()
    return HealthResponse(status="ok", shards=n)


@router.get("/api/v1/system/stats", response_model=SystemStats, responses=AUTH_RESPONSES)
async def system_stats(deps: Deps, who: Ops) -> SystemStats:
    """Counters of every shard and MQTT bridge worker."""
    shards = await deps.fleet.shard_stats()
    bridges: list[BridgeStatsOut | BridgeDown] = [
        BridgeDown(name=name, error="not running")
        if stats is None
        else BridgeStatsOut(name=name, **asdict(stats))
        for name, stats in (await deps.bridges.stats()).items()
    ]
    return SystemStats(
        shards=[ShardStatsOut.model_validate(s, from_attributes=True) for s in shards],
        bridges=bridges,
    )


@router.get("/api/v1/dead-letters", response_model=DeadLettersResponse, responses=AUTH_RESPONSES)
async def dead_letters(
    deps: Deps, who: Ops, limit: Annotated[int, Query(ge=1, le=1000)] = 50
) -> DeadLettersResponse:
    """Rejected messages: counts by reason and the newest letters."""
    async with deps.stores.dead_letters() as store:
        counts = await store.counts()
        recent = await store.recent(limit)
    letters = []
    for r in recent:
        payload = r.get("payload")
        if isinstance(payload, bytes | bytearray | memoryview):
            # Payloads are whatever a vehicle sent, often not UTF-8: show them, never fail.
            r = {**r, "payload": bytes(payload).decode("utf-8", errors="replace")}
        letters.append(DeadLetterOut.model_validate(r))
    return DeadLettersResponse(counts=counts, recent=letters)

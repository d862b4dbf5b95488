"""The technician planner: its job queue, the latest plan, the roster and each route.

::

    GET  /api/v1/planner/queue?limit=         open jobs, most valuable first
    GET  /api/v1/planner/plan                 the latest plan: routes with ETAs, dropped jobs
    POST /api/v1/planner/plan                 re-plan now: 202 and a job to poll
    GET  /api/v1/planner/jobs/{job_id}        a re-plan job: queued, running, succeeded, failed
    GET  /api/v1/planner/roster               technicians and depots
    GET  /api/v1/technicians/{id}/route       one technician's stops with ETAs

Every route is for ``fleet_manager`` tokens, except a technician's route, which its own
technician may read too. Every route answers 503 when the planner is not running
(:class:`serve.http.errors.PlannerNotRunning`, handled by the app).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Response
from pydantic import Field

from contracts.access import Principal, Role
from contracts.work_orders import WorkOrderKind
from planners.job_queue import Severity
from planners.plan_jobs import JobState, PlanJob
from serve.http.auth import (
    AUTH_RESPONSES,
    RATE_LIMITED_RESPONSE,
    Allow,
    FieldStaff,
    FleetManager,
    RateLimit,
    forbid,
)
from serve.http.batteries import BATTERY_ID_PATTERN
from serve.http.deps import Deps
from serve.http.errors import ERROR_RESPONSES
from serve.http.response_model import ApiModel

__all__ = [
    "DepotOut",
    "NoRoute",
    "PlanJobOut",
    "PlanOut",
    "PlannedStopOut",
    "QueueResponse",
    "QueuedJobOut",
    "RosterOut",
    "TechnicianOut",
    "TechnicianRouteOut",
    "router",
]

_UNAVAILABLE: dict[int | str, dict[str, Any]] = {503: ERROR_RESPONSES[503]}
router = APIRouter(tags=["planner"], responses={**_UNAVAILABLE, **AUTH_RESPONSES})

# A re-plan costs a solver run (up to its time limit, on a shared core): a person needs a
# few a minute; a script looping on it would starve the scheduled rounds.
Replanner = Annotated[
    Principal, Depends(Allow(Role.FLEET_MANAGER, limit=RateLimit("re-plan", per_minute=6, burst=2)))
]
JobId = Annotated[str, Path(pattern=r"^plan-[0-9a-f]{8}-[0-9]{1,9}$", description="Planning job id")]

TechnicianId = Annotated[str, Path(pattern=BATTERY_ID_PATTERN, description="Technician id")]


class QueuedJobOut(ApiModel):
    """An open job (:class:`planners.job_queue.QueuedJob`) and whether it is under way."""

    battery_id: str
    vehicle_id: str
    kind: WorkOrderKind
    lat: float
    lon: float
    value: float = Field(description="What serving the job is worth, in euros")
    priority: float
    service_s: int
    batteries_needed: int
    skill: str
    deadline_s: float | None = Field(description="Unix time the job's window closes, if any")
    severity: Severity
    queued_at_s: float
    work_order_id: int | None
    soc_pct: float | None = Field(description="State of charge when reported to the planner")
    health_score: float | None
    anomaly_flags: list[str] = Field(description="Anomaly kinds flagged when reported")
    in_progress: bool = Field(description="A technician is on the way (work order en route)")


class QueueResponse(ApiModel):
    jobs: list[QueuedJobOut] = Field(description="Most valuable first, at most limit")
    total: int = Field(description="Open jobs in all")


class PlannedStopOut(ApiModel):
    battery_id: str
    vehicle_id: str
    kind: str
    lat: float
    lon: float
    eta_s: float = Field(description="Expected arrival, Unix time")
    service_start_s: float
    service_s: int
    value: float
    work_order_id: int | None
    soc_pct: float | None = Field(
        description="The battery's state of charge when it was queued (the technician's facts)"
    )
    health_score: float | None
    anomaly_flags: list[str] = Field(description="Anomaly kinds flagged when it was queued")


class TechnicianRouteOut(ApiModel):
    technician_id: str
    depot_id: str
    depart_s: float
    return_s: float
    distance_m: int
    batteries_loaded: int
    stops: list[PlannedStopOut]


class NoRoute(ApiModel):
    """A known technician who is not in the latest plan."""

    technician_id: str
    stops: list[PlannedStopOut] = Field(description="Always empty")
    note: str


class PlanOut(ApiModel):
    """One planning round (:class:`planners.planner.PlanRecord`)."""

    plan_id: int
    reason: str = Field(description="scheduled, urgent or manual")
    created_at_s: float
    routes: list[TechnicianRouteOut]
    dropped: list[str] = Field(description="Batteries whose jobs were left undone")
    jobs: int
    value_collected: float
    value_dropped: float
    distance_m: int
    solve_time_s: float
    warm_started: bool


class TechnicianOut(ApiModel):
    id: str
    depot_id: str
    shift_start_h: float
    shift_end_h: float
    van_capacity: int
    skills: list[str]
    fixed_cost_m: int


class DepotOut(ApiModel):
    id: str
    lat: float
    lon: float
    charged_stock: int


class RosterOut(ApiModel):
    technicians: list[TechnicianOut]
    depots: list[DepotOut]


class PlanJobOut(ApiModel):
    """A re-plan job (:class:`planners.plan_jobs.PlanJob`)."""

    job_id: str
    state: JobState
    reason: str
    requested_by: str = Field(description="Subject of the token that asked")
    created_at_s: float
    started_at_s: float | None
    finished_at_s: float | None
    plan_id: int | None = Field(description="The plan it produced, once succeeded")
    error: str | None = Field(description="What went wrong, once failed")
    status_url: str = Field(description="Where to poll this job")

    @classmethod
    def of(cls, job: PlanJob) -> PlanJobOut:
        return cls(**{k: getattr(job, k) for k in cls.model_fields if k != "status_url"},
                   status_url=f"/api/v1/planner/jobs/{job.job_id}")


@router.get("/api/v1/planner/queue", response_model=QueueResponse)
async def planner_queue(
    deps: Deps, who: FleetManager, limit: Annotated[int, Query(ge=1, le=10_000)] = 200
) -> QueueResponse:
    """Open jobs, most valuable first."""
    entries = await deps.planner.queue()
    jobs = [QueuedJobOut(**vars(e.job), in_progress=e.in_progress) for e in entries[:limit]]
    return QueueResponse(jobs=jobs, total=len(entries))


@router.get("/api/v1/planner/plan", response_model=PlanOut, responses={404: ERROR_RESPONSES[404]})
async def planner_plan(deps: Deps, who: FleetManager) -> PlanOut:
    """The latest plan: routes with ETAs, and the jobs left undone."""
    plan = await deps.planner.latest()
    if plan is None:
        raise HTTPException(
            404, "No plan yet: the first scheduled round has not run (POST to plan now)."
        )
    return PlanOut.model_validate(plan, from_attributes=True)


@router.post(
    "/api/v1/planner/plan",
    response_model=PlanJobOut,
    status_code=202,
    responses=RATE_LIMITED_RESPONSE,
)
async def planner_replan(deps: Deps, who: Replanner, response: Response) -> PlanJobOut:
    """Pull candidates from the shards and start a planning round; poll the job it returns.

    A round already running for an earlier request is joined, not queued again.
    """
    await deps.planner.pull()
    job = await deps.planner.submit_plan("manual", who.subject)
    out = PlanJobOut.of(job)
    response.headers["Location"] = out.status_url
    return out


@router.get(
    "/api/v1/planner/jobs/{job_id}", response_model=PlanJobOut, responses={404: ERROR_RESPONSES[404]}
)
async def planner_job(deps: Deps, who: FleetManager, job_id: JobId) -> PlanJobOut:
    """A re-plan job; once ``succeeded``, ``GET /api/v1/planner/plan`` has its plan."""
    try:
        job = await deps.planner.plan_job(job_id)
    except KeyError as err:
        raise HTTPException(404, str(err.args[0]) if err.args else str(err)) from None
    return PlanJobOut.of(job)


@router.get("/api/v1/planner/roster", response_model=RosterOut)
async def planner_roster(deps: Deps, who: FleetManager) -> RosterOut:
    """Technicians and depots."""
    roster = await deps.planner.roster()
    return RosterOut(
        technicians=[
            TechnicianOut(
                id=t.id,
                depot_id=t.depot_id,
                shift_start_h=t.shift_start_h,
                shift_end_h=t.shift_end_h,
                van_capacity=t.van_capacity,
                skills=sorted(t.skills),
                fixed_cost_m=t.fixed_cost_m,
            )
            for t in roster.technicians
        ],
        depots=[DepotOut.model_validate(d, from_attributes=True) for d in roster.depots],
    )


@router.get(
    "/api/v1/technicians/{technician_id}/route",
    response_model=TechnicianRouteOut | NoRoute,
    responses={404: ERROR_RESPONSES[404]},
)
async def technician_route(
    deps: Deps, who: FieldStaff, technician_id: TechnicianId
) -> TechnicianRouteOut | NoRoute:
    """One technician's stops in the latest plan, with ETAs (a technician: only their own)."""
    if who.role is Role.TECHNICIAN and who.subject != technician_id:
        raise forbid(who, f"read the route of technician {technician_id!r}")
    try:
        route = await deps.planner.route_of(technician_id)
    except KeyError as err:
        # str(KeyError) quotes its message; the client wants the message itself.
        raise HTTPException(404, str(err.args[0]) if err.args else str(err)) from None
    if route is None:
        return NoRoute(technician_id=technician_id, stops=[], note="not in the latest plan")
    return TechnicianRouteOut.model_validate(route, from_attributes=True)

"""What-if simulations: queue one, poll it, read its comparison, cancel it.

::

    GET  /api/v1/simulations/presets        the shipped scenarios, and what one request may ask
    POST /api/v1/simulations                {"preset" | "scenario", "seeds"?, "compare_with_baseline"?}
                                            -> 202 and the job (Location: where to poll it)
    GET  /api/v1/simulations                every known job, newest first (no outcomes)
    GET  /api/v1/simulations/{id}           one job: state, progress, and once done the
                                            summary, the comparison and each run's KPIs
    POST /api/v1/simulations/{id}/cancel    a queued job leaves the queue; a running one stops

A job runs every scenario over the same seeds in a closed loop of the simulated fleet, the
models and the planner (:mod:`runtime.simulations`), one job at a time: minutes of work,
so the request only queues it. With ``compare_with_baseline`` (the default) the shipped
``baseline`` runs on the same seeds too, and the job's ``comparison`` holds, per KPI, the
paired mean difference with its 95 % interval (:func:`sim.compare.compare`).

The fleet manager starts and cancels jobs (rate-limited per token, and capped: vehicles,
days and seeds); the fleet manager and ops read them. A scenario sent in the body is
complete and self-contained: ``base`` and ``weather.recorded_csv`` (files on the server)
are refused, and it starts from a generated fleet (``start.source: generated``; ``file``
would read the server's disk, and ``live`` is not offered here). Every route answers 503 while
the simulations actor is not running (it needs the model deployments).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from contracts.access import Principal, Role
from contracts.simulations import SimulationJob, SimulationQueueFull, SimulationState
from serve.http.auth import AUTH_RESPONSES, Allow, FleetManager, Operators, RateLimit
from serve.http.deps import ApiDeps, Deps, SimulationAccess
from serve.http.errors import (
    BAD_BODY_RESPONSE,
    ERROR_RESPONSES,
    ErrorBody,
    ServiceUnavailable,
    invalid_parameter,
)
from serve.http.response_model import ApiModel
from sim.presets import BASELINE_PRESET, load_preset, preset_names
from sim.scenario import Scenario, ScenarioError, scenario_from_mapping

__all__ = [
    "MAX_DAYS",
    "MAX_SEEDS",
    "MAX_VEHICLES",
    "PresetsResponse",
    "SimulationBody",
    "SimulationDetail",
    "SimulationJobOut",
    "SimulationsResponse",
    "router",
]

#: What one request may ask: a job is ``scenarios x seeds`` closed-loop runs of this size.
MAX_VEHICLES = 20_000
MAX_DAYS = 14
MAX_SEEDS = 10

_UNAVAILABLE: dict[int | str, dict[str, Any]] = {503: ERROR_RESPONSES[503]}
router = APIRouter(tags=["simulations"], responses={**_UNAVAILABLE, **AUTH_RESPONSES})

# A job takes minutes of the machine's cores; a person starts a few in a row at most, and
# the queue (8 waiting) is shared by every fleet manager.
Simulator = Annotated[
    Principal, Depends(Allow(Role.FLEET_MANAGER, limit=RateLimit("what-if", per_minute=4, burst=2)))
]
JobId = Annotated[
    str, Path(pattern=r"^sim-[0-9a-f]{6}-[0-9]{1,9}$", description="Simulation job id")
]

_404: dict[int | str, dict[str, Any]] = {404: ERROR_RESPONSES[404]}
_BUSY: dict[int | str, dict[str, Any]] = {
    429: {
        "model": ErrorBody,
        "description": "Over this token's rate limit, or the simulation queue is full; see Retry-After",
    },
}
#: Seconds a client is told to wait when the queue is full (a run takes minutes).
QUEUE_FULL_RETRY_S = 60


class SimulationsNotRunning(ServiceUnavailable):
    def __init__(self) -> None:
        super().__init__(
            "The what-if simulator is not running (it needs the models: [models] enabled)."
        )


def _simulations(deps: ApiDeps) -> SimulationAccess:
    if deps.simulations is None:
        raise SimulationsNotRunning()
    return deps.simulations


# ---------------------------------------------------------------------- bodies
class SimulationBody(BaseModel):
    """A what-if request: a shipped preset or a complete scenario, and optionally its seeds."""

    model_config = ConfigDict(extra="forbid")
    preset: str | None = Field(
        None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$",
        description="A shipped scenario (GET /api/v1/simulations/presets lists them)",
    )  # fmt: skip
    scenario: dict[str, Any] | None = Field(
        None, description="A complete scenario (the YAML's keys, as JSON); no 'base'"
    )
    seeds: list[Annotated[int, Field(ge=0, le=2**31 - 1)]] | None = Field(
        None, min_length=1, max_length=MAX_SEEDS,
        description="Distinct seeds to run instead of the scenario's own (each seed is one run per scenario)",
    )  # fmt: skip
    compare_with_baseline: bool = Field(
        True, description="Also run the shipped baseline on the same seeds and compare, KPI by KPI"
    )

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, seeds: list[int] | None) -> list[int] | None:
        if seeds is not None and len(set(seeds)) != len(seeds):
            raise ValueError(f"expected distinct seeds, got {seeds}")
        return seeds

    @model_validator(mode="after")
    def _one_source(self) -> SimulationBody:
        if (self.preset is None) == (self.scenario is None):
            given = "both" if self.preset is not None else "neither"
            raise ValueError(f"expected either 'preset' or 'scenario', got {given}")
        return self


# ---------------------------------------------------------------------- answers
class PresetOut(ApiModel):
    name: str
    description: str
    days: int
    vehicles: int
    technicians: int
    seeds: list[int] = Field(description="The seeds it runs when the request names none")

    @classmethod
    def of(cls, s: Scenario) -> PresetOut:
        return cls(
            name=s.name,
            description=s.description,
            days=s.days,
            vehicles=s.fleet.vehicles,
            technicians=s.technicians,
            seeds=list(s.seeds),
        )


class LimitsOut(ApiModel):
    max_vehicles: int
    max_days: int
    max_seeds: int


class PresetsResponse(ApiModel):
    presets: list[PresetOut]
    baseline: str = Field(description="The preset that compare_with_baseline runs beside")
    limits: LimitsOut = Field(description="What one request may ask")


class ProgressOut(ApiModel):
    overall: float = Field(description="0-1 over all the job's runs")
    run_index: int = Field(description="The current run, from 0")
    runs: int = Field(description="Runs in the job: scenarios x seeds")
    run_fraction: float = Field(description="0-1 of the current run's simulated time")
    scenario: str | None
    seed: int | None


class SimulationJobOut(ApiModel):
    """A job without its outcome (:class:`contracts.simulations.SimulationJob`)."""

    job_id: str
    state: SimulationState
    submitted_by: str = Field(description="Subject of the token that asked")
    submitted_at_s: float
    started_at_s: float | None
    finished_at_s: float | None
    scenarios: list[str] = Field(description="In the order they run; the baseline first")
    seeds: list[int]
    baseline: str | None = Field(description="The scenario the others are compared with")
    progress: ProgressOut
    queue_position: int | None = Field(description="1: runs next; null unless queued")
    error: str | None = Field(description="Why it failed or who cancelled it")
    status_url: str = Field(description="Where to poll this job")

    @classmethod
    def of(cls, job: SimulationJob) -> SimulationJobOut:
        return cls(**_job_fields(job))


class KpiStatsOut(ApiModel):
    mean: float | None
    sd: float | None = Field(description="Sample standard deviation over seeds (0 with one)")
    seeds: int


class KpiDifferenceOut(ApiModel):
    """One KPI of a scenario against the baseline, paired by seed."""

    scenario: str
    kpi: str
    baseline_mean: float | None
    scenario_mean: float | None
    mean_difference: float | None = Field(description="scenario - baseline, mean over paired seeds")
    ci95_low: float | None = Field(
        description="95 % t-interval of the mean difference; null with one seed"
    )
    ci95_high: float | None
    seeds: list[int]
    relative_difference_pct: float | None = Field(description="100 x difference / baseline mean")


class SohSummaryOut(ApiModel):
    batteries: int
    mean: float | None
    min: float | None
    p10: float | None
    p50: float | None
    p90: float | None


class RunOut(ApiModel):
    """One scenario on one seed (:class:`sim.kpis.RunResult`, without per-battery arrays)."""

    scenario: str
    seed: int
    total: dict[str, float | None] = Field(description="Every KPI over the run")
    days: list[dict[str, float | None]] = Field(description="Every KPI per simulated day")
    availability_by_hour_pct: list[float | None]
    soh_end: SohSummaryOut = Field(description="The batteries' SOH at the end (0-1), summarised")
    technicians: int
    zones: int
    run: dict[str, float | int | str | bool | None] = Field(
        description="The runner's facts (wall_s, ...)"
    )


class SimulationDetail(SimulationJobOut):
    """A job and, once done, its outcome."""

    summary: dict[str, dict[str, KpiStatsOut]] = Field(
        description="{scenario: {kpi: mean, sd, seeds}}"
    )
    comparison: list[KpiDifferenceOut] = Field(
        description="Each scenario against the baseline, per KPI"
    )
    runs: list[RunOut]

    @classmethod
    def of(cls, job: SimulationJob) -> SimulationDetail:
        return cls(
            **_job_fields(job),
            summary={
                s: {k: KpiStatsOut(**v) for k, v in kpis.items()} for s, kpis in job.summary.items()
            },
            comparison=[
                KpiDifferenceOut(**{**d, "seeds": list(d["seeds"])}) for d in job.comparison
            ],
            runs=[RunOut(**r) for r in job.runs],
        )


class SimulationsResponse(ApiModel):
    simulations: list[SimulationJobOut] = Field(description="Newest first")


def _job_fields(job: SimulationJob) -> dict[str, Any]:
    return {
        "job_id": job.job_id, "state": job.state, "submitted_by": job.submitted_by,
        "submitted_at_s": job.submitted_at_s, "started_at_s": job.started_at_s,
        "finished_at_s": job.finished_at_s, "scenarios": list(job.scenarios), "seeds": list(job.seeds),
        "baseline": job.baseline, "progress": ProgressOut(**vars(job.progress)),
        "queue_position": job.queue_position, "error": job.error,
        "status_url": f"/api/v1/simulations/{job.job_id}",
    }  # fmt: skip


# ---------------------------------------------------------------------- what a request asks
def _requested(body: SimulationBody) -> tuple[list[Scenario], str | None]:
    """The scenarios to run (the baseline first) and the baseline's name; 422s that name
    the field for anything a request may not ask."""
    if body.preset is not None:
        where: tuple[str, ...] = ("body", "preset")
        names = preset_names()
        if body.preset not in names:
            raise invalid_parameter(where, f"expected a preset among {names}, got {body.preset!r}")
        try:
            scenario = load_preset(body.preset)
        except ScenarioError as err:
            raise invalid_parameter(where, str(err)) from None
    else:
        where = ("body", "scenario")
        data = body.scenario or {}
        if "base" in data:
            raise invalid_parameter(
                (*where, "base"),
                "expected a complete scenario: 'base' names a file on the server and is not "
                "accepted in a request (start from a preset's keys instead)",
            )
        try:
            scenario = scenario_from_mapping(data, "scenario")
        except ScenarioError as err:
            raise invalid_parameter(where, str(err)) from None
        _no_server_files(scenario)
    if body.seeds is not None:
        scenario = scenario.with_seeds(list(body.seeds))
    _check_limits(scenario, where, seeds_given=body.seeds is not None)
    if not body.compare_with_baseline or (body.preset == BASELINE_PRESET):
        return [scenario], None
    if scenario.name == BASELINE_PRESET:
        raise invalid_parameter(
            (*where, "name"),
            f"expected a name other than {BASELINE_PRESET!r} (the shipped baseline it is compared "
            "with), or compare_with_baseline false",
        )
    baseline = load_preset(BASELINE_PRESET).with_seeds(list(scenario.seeds))
    _check_limits(baseline, ("body", "compare_with_baseline"), seeds_given=True)
    return [baseline, scenario], BASELINE_PRESET


def _no_server_files(scenario: Scenario) -> None:
    if scenario.start.source != "generated":
        # 'file' reads a snapshot from the server's disk; 'live' needs the live fleet read
        # for the baseline too, which the job queue does not do (yet).
        raise invalid_parameter(
            ("body", "scenario", "start", "source"),
            f"expected 'generated' in a request, got {scenario.start.source!r} ('file' reads the "
            "server's disk; a start from the live fleet is not offered over the API)",
        )
    if scenario.weather.recorded_csv is not None:
        raise invalid_parameter(
            ("body", "scenario", "weather", "recorded_csv"),
            "expected null: a recorded weather file is on the server's disk and is not accepted in a request",
        )


def _check_limits(scenario: Scenario, where: Sequence[str], *, seeds_given: bool) -> None:
    preset = where[-1] != "scenario"  # a preset's (or the baseline's) own values
    if scenario.fleet.vehicles > MAX_VEHICLES:
        loc = where if preset else (*where, "fleet", "vehicles")
        raise invalid_parameter(
            loc,
            f"fleet.vehicles: expected at most {MAX_VEHICLES} per request, got {scenario.fleet.vehicles}",
        )
    if scenario.days > MAX_DAYS:
        loc = where if preset else (*where, "days")
        raise invalid_parameter(
            loc, f"days: expected at most {MAX_DAYS} per request, got {scenario.days}"
        )
    if len(scenario.seeds) > MAX_SEEDS:
        loc = ("body", "seeds") if seeds_given else where if preset else (*where, "seeds")
        raise invalid_parameter(
            loc,
            f"seeds: expected at most {MAX_SEEDS} per request, got {len(scenario.seeds)} (give 'seeds')",
        )


# ---------------------------------------------------------------------- routes
@router.get("/api/v1/simulations/presets", response_model=PresetsResponse)
async def simulation_presets(who: Operators) -> PresetsResponse:
    """The shipped scenarios a request may name, and the limits of one request."""
    presets = [load_preset(name) for name in preset_names()]
    return PresetsResponse(
        presets=[PresetOut.of(s) for s in presets],
        baseline=BASELINE_PRESET,
        limits=LimitsOut(max_vehicles=MAX_VEHICLES, max_days=MAX_DAYS, max_seeds=MAX_SEEDS),
    )


@router.post(
    "/api/v1/simulations",
    response_model=SimulationJobOut,
    status_code=202,
    responses={**_BUSY, **BAD_BODY_RESPONSE},
)
async def start_simulation(
    deps: Deps, who: Simulator, body: SimulationBody, response: Response
) -> SimulationJobOut:
    """Queue a what-if job; poll the job it returns (``Location``) until it is done."""
    access = _simulations(deps)
    scenarios, baseline = _requested(body)
    try:
        job = await access.submit(scenarios, baseline, who.subject)
    except SimulationQueueFull as err:
        raise HTTPException(
            429, str(err), headers={"Retry-After": str(QUEUE_FULL_RETRY_S)}
        ) from None
    out = SimulationJobOut.of(job)
    response.headers["Location"] = out.status_url
    return out


@router.get("/api/v1/simulations", response_model=SimulationsResponse)
async def simulations(deps: Deps, who: Operators) -> SimulationsResponse:
    """Every known job, newest first: queued, running and the latest finished ones."""
    jobs = await _simulations(deps).list()
    return SimulationsResponse(simulations=[SimulationJobOut.of(j) for j in jobs])


@router.get("/api/v1/simulations/{job_id}", response_model=SimulationDetail, responses=_404)
async def simulation(deps: Deps, who: Operators, job_id: JobId) -> SimulationDetail:
    """One job: its state and progress, and once done its summary, comparison and runs."""
    try:
        job = await _simulations(deps).get(job_id)
    except KeyError as err:
        raise HTTPException(404, str(err.args[0]) if err.args else str(err)) from None
    return SimulationDetail.of(job)


@router.post(
    "/api/v1/simulations/{job_id}/cancel",
    response_model=SimulationJobOut,
    responses={**_404, 409: ERROR_RESPONSES[409]},
)
async def cancel_simulation(deps: Deps, who: FleetManager, job_id: JobId) -> SimulationJobOut:
    """Cancel a queued job (it never runs) or the running one (its run stops)."""
    try:
        job = await _simulations(deps).cancel(job_id, who.subject)
    except KeyError as err:
        raise HTTPException(404, str(err.args[0]) if err.args else str(err)) from None
    except ValueError as err:
        raise HTTPException(409, str(err)) from None
    return SimulationJobOut.of(job)

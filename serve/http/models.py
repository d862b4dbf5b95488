"""The model registry and the live model deployments: status, drift alerts, serving changes.

::

    GET    /api/v1/models                   every model: serving versions, live status
    GET    /api/v1/models/alerts            drift alerts of every deployed model
    GET    /api/v1/models/{name}            versions, audit trail, live status
    POST   /api/v1/models/{name}/promote    {"version"}
    POST   /api/v1/models/{name}/rollback   (no body)
    POST   /api/v1/models/{name}/ab         {"candidate_version", "fraction"}
    DELETE /api/v1/models/{name}/ab         end the A/B split

Every route is for ``ops`` tokens; each change is attributed to the token's subject in the
registry's audit trail, and changes are rate-limited per token (429 with Retry-After).

Serving changes are registry writes; the replicas pick them up on their next registry poll
(seconds), with no restart.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path
from pydantic import BaseModel, ConfigDict, Field

from contracts.access import Principal, Role
from contracts.errors import RegistryError
from contracts.model_registry import ModelAction, ModelStage, ServingConfig
from serve.http.auth import AUTH_RESPONSES, RATE_LIMITED_RESPONSE, Allow, Ops, RateLimit
from serve.http.deps import ApiDeps, Deps, ModelRegistryAccess
from serve.http.errors import BAD_BODY_RESPONSE, ERROR_RESPONSES, invalid_parameter
from serve.http.response_model import ApiModel

__all__ = [
    "AbBody",
    "AlertsResponse",
    "DriftAlertOut",
    "DriftOut",
    "LiveModelError",
    "LiveModelStatus",
    "ModelAlert",
    "ModelDetail",
    "ModelEventOut",
    "ModelSummary",
    "ModelVersionOut",
    "ModelsResponse",
    "PromoteBody",
    "ServingOut",
    "VersionStatsOut",
    "router",
]

router = APIRouter(tags=["models"], responses=AUTH_RESPONSES)

ModelName = Annotated[
    str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", description="Model name")
]
# Serving changes restart nothing but are felt fleet-wide within seconds: a few a minute is
# plenty for a person, and a runaway script is stopped.
ModelChanger = Annotated[
    Principal, Depends(Allow(Role.OPS, limit=RateLimit("model change", per_minute=12, burst=4)))
]


# ---------------------------------------------------------------------- request bodies
class PromoteBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int = Field(ge=1, description="Registered version to put in production")


class AbBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    candidate_version: int = Field(ge=1)
    fraction: float = Field(gt=0.0, le=1.0, description="Share of batteries on the candidate")


# ---------------------------------------------------------------------- responses
class ServingOut(ApiModel):
    """What Serve loads for a model now (:class:`contracts.model_registry.ServingConfig`)."""

    production_version: int
    candidate_version: int | None = Field(description="Version under A/B test, if any")
    candidate_fraction: float = Field(description="Share of batteries on the candidate")
    updated_at_s: float
    updated_by: str

    @classmethod
    def of(cls, cfg: ServingConfig | None) -> ServingOut | None:
        return None if cfg is None else cls.model_validate(cfg, from_attributes=True)


class VersionStatsOut(ApiModel):
    predictions: int
    mean_prediction: float | None
    labelled: int = Field(description="Predictions whose true value arrived")
    mae: float | None
    rmse: float | None


class DriftAlertOut(ApiModel):
    feature: str
    psi: float | None = Field(description="Population stability index against training data")
    level: str


class DriftOut(ApiModel):
    psi: dict[str, float | None] = Field(description="PSI per input feature")
    alerts: list[DriftAlertOut]
    samples: int


class LiveModelStatus(ApiModel):
    """What the model's replica reports (:meth:`models.served_model.ServedModel.status`)."""

    name: str
    production_version: int | None
    candidate_version: int | None
    candidate_fraction: float
    versions: dict[str, VersionStatsOut] = Field(description="Prediction metrics by version")
    drift: dict[str, DriftOut] = Field(description="Input drift by version")


class LiveModelError(ApiModel):
    """The model's replica could not answer."""

    error: str


LiveStatus = LiveModelStatus | LiveModelError | None


class ModelSummary(ApiModel):
    name: str
    serving: ServingOut | None = Field(description="Null before the first promotion")
    live: LiveStatus = Field(description="Null when the model is not deployed")


class ModelsResponse(ApiModel):
    models: list[ModelSummary]


class ModelAlert(ApiModel):
    model: str
    version: int
    feature: str
    psi: float | None
    level: str


class AlertsResponse(ApiModel):
    alerts: list[ModelAlert]


class ModelVersionOut(ApiModel):
    version: int
    stage: ModelStage
    created_at_s: float
    created_by: str
    metrics: dict[str, float | None]
    data_fingerprint: str


class ModelEventOut(ApiModel):
    version: int
    action: ModelAction
    actor: str
    at_s: float
    detail: dict[str, Any]


class ModelDetail(ApiModel):
    name: str
    serving: ServingOut | None
    versions: list[ModelVersionOut] = Field(description="Oldest first")
    events: list[ModelEventOut] = Field(description="The audit trail, oldest first")
    live: LiveStatus


# ---------------------------------------------------------------------- routes
async def _live(deps: ApiDeps, name: str) -> LiveStatus:
    try:
        raw = await deps.models.status(name)
        return None if raw is None else LiveModelStatus.model_validate(raw)
    except Exception as err:  # a model replica down must not take the API down
        return LiveModelError(error=f"{type(err).__name__}: {err}")


@router.get("/api/v1/models", response_model=ModelsResponse)
async def models(deps: Deps, who: Ops) -> ModelsResponse:
    """Every registered or deployed model: what Serve loads, and the replica's status."""
    async with deps.stores.registry() as store:
        names = sorted(set(await store.names()) | set(deps.models.names()))
        serving = {n: await store.serving_or_none(n) for n in names}
    return ModelsResponse(
        models=[
            ModelSummary(name=n, serving=ServingOut.of(serving[n]), live=await _live(deps, n))
            for n in names
        ]
    )


# Declared before /models/{name}, which would otherwise take "alerts" for a model name.
@router.get("/api/v1/models/alerts", response_model=AlertsResponse)
async def model_alerts(deps: Deps, who: Ops) -> AlertsResponse:
    """Drift alerts of every deployed model, one per model, version and feature."""
    alerts: list[ModelAlert] = []
    for n in deps.models.names():
        status = await _live(deps, n)
        if not isinstance(status, LiveModelStatus):
            continue
        for version, drift in status.drift.items():
            alerts.extend(
                ModelAlert(
                    model=n, version=int(version), feature=a.feature, psi=a.psi, level=a.level
                )
                for a in drift.alerts
            )
    return AlertsResponse(alerts=alerts)


@router.get(
    "/api/v1/models/{name}", response_model=ModelDetail, responses={404: ERROR_RESPONSES[404]}
)
async def model(deps: Deps, who: Ops, name: ModelName) -> ModelDetail:
    """One model: every version, the audit trail and the live status."""
    try:
        async with deps.stores.registry() as store:
            versions = await store.versions(name)
            cfg = await store.serving(name)
            events = await store.events(name)
    except LookupError as err:  # UnknownModel: no version of that name is registered
        raise HTTPException(404, str(err)) from None
    return ModelDetail(
        name=name,
        serving=ServingOut.of(cfg),
        versions=[ModelVersionOut.model_validate(v, from_attributes=True) for v in versions],
        events=[ModelEventOut.model_validate(e, from_attributes=True) for e in events],
        live=await _live(deps, name),
    )


async def _change(
    deps: ApiDeps,
    op: Callable[[ModelRegistryAccess], Awaitable[ServingConfig]],
    loc: Sequence[str],
) -> ServingOut:
    try:
        async with deps.stores.registry() as store:
            cfg = await op(store)
    except RegistryError as err:
        if isinstance(err, LookupError):  # unknown model or version
            raise HTTPException(404, str(err)) from None
        raise HTTPException(409, str(err)) from None  # the serving state does not allow it
    except ValueError as err:
        raise invalid_parameter(loc, str(err)) from None
    return ServingOut.model_validate(cfg, from_attributes=True)


_CHANGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: ERROR_RESPONSES[404],
    409: ERROR_RESPONSES[409],
    **RATE_LIMITED_RESPONSE,
    **BAD_BODY_RESPONSE,
}


@router.post(
    "/api/v1/models/{name}/promote", response_model=ServingOut, responses=_CHANGE_RESPONSES
)
async def promote(deps: Deps, who: ModelChanger, name: ModelName, body: PromoteBody) -> ServingOut:
    """Put a registered version in production."""
    return await _change(deps, lambda s: s.promote(name, body.version, who.subject), ("body",))


@router.post(
    "/api/v1/models/{name}/rollback", response_model=ServingOut, responses=_CHANGE_RESPONSES
)
async def rollback(deps: Deps, who: ModelChanger, name: ModelName) -> ServingOut:
    """Return to the previous production version."""
    return await _change(deps, lambda s: s.rollback(name, who.subject), ("path", "name"))


@router.post("/api/v1/models/{name}/ab", response_model=ServingOut, responses=_CHANGE_RESPONSES)
async def start_ab(deps: Deps, who: ModelChanger, name: ModelName, body: AbBody) -> ServingOut:
    """Answer a share of the batteries with a candidate version."""
    return await _change(
        deps,
        lambda s: s.start_ab(name, body.candidate_version, body.fraction, who.subject),
        ("body",),
    )


@router.delete("/api/v1/models/{name}/ab", response_model=ServingOut, responses=_CHANGE_RESPONSES)
async def stop_ab(deps: Deps, who: ModelChanger, name: ModelName) -> ServingOut:
    """End the A/B split."""
    return await _change(deps, lambda s: s.stop_ab(name, who.subject), ("path", "name"))

"""HTTP API: a FastAPI app served by a Ray Serve deployment.

Routes (all JSON)::

    GET /healthz                                  liveness: shards reachable
    GET /api/v1/batteries/{id}                    twin state
    GET /api/v1/batteries/{id}/window             rolling window of recent samples
    GET /api/v1/batteries/{id}/telemetry?from=&to=&limit=   history from PostgreSQL
    GET /api/v1/fleet/summary                     counts and means by health band
    GET /api/v1/fleet/top?by=&n=&order=&filter=   top-N twins by any numeric field
    GET /api/v1/fleet/groups?group_by=&fields=&filter=      grouped aggregates
    GET /api/v1/dead-letters?limit=               rejected messages and counts by reason
    GET /api/v1/system/stats                      shard and bridge counters
    GET /api/v1/anomalies?limit=                  newest anomaly events of the twins
    GET /api/v1/models                            every model: serving versions, metrics, drift
    GET /api/v1/models/{name}                     versions, audit trail, live status
    POST /api/v1/models/{name}/promote            {"version", "actor"}
    POST /api/v1/models/{name}/rollback           {"actor"}
    POST /api/v1/models/{name}/ab                 {"candidate_version", "fraction", "actor"}
    DELETE /api/v1/models/{name}/ab?actor=        end the A/B split
    GET /api/v1/models/alerts                     drift alerts of every served model
    GET /api/v1/planner/queue                     open jobs, most valuable first
    GET /api/v1/planner/plan                      the latest plan: routes with ETAs, dropped jobs
    POST /api/v1/planner/plan                     pull candidates and re-plan now
    GET /api/v1/planner/roster                    technicians and depots
    GET /api/v1/technicians/{id}/route            one technician's stops with ETAs
    GET /api/v1/work-orders?state=&limit=         work orders
    GET /api/v1/work-orders/{id}                  one order and its attributed history
    POST /api/v1/work-orders/{id}/transition      {"state", "actor", "technician_id"?, "swap"?, "note"?}
    GET /                                         the fleet dashboard (HTML)
"""


import math
import re
import time
from datetime import datetime
from importlib import resources
from typing import Annotated, Any, Literal

import ray
import redis.asyncio as aioredis
from fastapi import FastAPI, HTTPException, Path, Query
from fastapi.responses import HTMLResponse
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve.handle import DeploymentHandle

from contracts.errors import RegistryError
from contracts.model_registry import ServingConfig
from contracts.work_orders import WorkOrder, WorkOrderError, WorkOrderState
from runtime.twins import PLANNER_NAME, FleetClient
from store import DeadLetterStore, TelemetryStore
from store.model_registry_store import ModelRegistryStore
from store.work_order_store import WorkOrderStore
from twins.fleet_query import CATEGORICAL_FIELDS, NUMERIC_FIELDS, Filter

__all__ = ["ApiIngress", "IngressConfig", "api"]

api = FastAPI(
    title="Battery fleet twin API",
    version="1",
    description="Live digital twins of a shared e-scooter fleet's swappable batteries.",
)

_BatteryId = Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$", description="Battery id")]


class PromoteBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int = Field(ge=1, description="Registered version to put in production")
    actor: str = Field(min_length=1, max_length=200, description="Who does it (audit trail)")


class RollbackBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    actor: str = Field(min_length=1, max_length=200)


class AbBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    candidate_version: int = Field(ge=1)
    fraction: float = Field(gt=0.0, le=1.0, description="Share of batteries on the candidate")
    actor: str = Field(min_length=1, max_length=200)


_ModelName = Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", description="Model name")]


def _registry_http_error(err: Exception) -> HTTPException:
    if isinstance(err, LookupError):
        return HTTPException(404, str(err))
    return HTTPException(409, str(err))


def _serving_dict(cfg: ServingConfig) -> dict[str, Any]:
    return {
        "production_version": cfg.production_version,
        "candidate_version": cfg.candidate_version,
        "candidate_fraction": cfg.candidate_fraction,
        "updated_at_s": cfg.updated_at_s,
        "updated_by": cfg.updated_by,
    }


class SwapBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    vehicle_id: str = Field(min_length=1, max_length=64)
    battery_out_id: str = Field(min_length=1, max_length=64, description="Battery taken out")
    battery_in_id: str = Field(min_length=1, max_length=64, description="Battery put in")


class TransitionBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    state: Literal["planned", "assigned", "en_route", "done", "failed", "cancelled"]
    actor: str = Field(min_length=1, max_length=200, description="Who makes the change")
    technician_id: str | None = Field(None, max_length=64, description="Only when assigning")
    swap: SwapBody | None = Field(None, description="Required when a swap or replacement is done")
    note: str | None = Field(None, max_length=2000)


def _order_dict(o: WorkOrder) -> dict[str, Any]:
    return {**o.__dict__, "kind": o.kind.value, "state": o.state.value}


class IngressConfig(BaseModel):
    """Arguments of the ingress deployment (validated when the app is built)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    namespace: str = Field("bms", description="Ray namespace of the twin actors")
    postgres_url: str = Field(description="PostgreSQL URL for telemetry history")
    redis_url: str = Field(description="Redis URL for dead-letter counters")
    redis_prefix: str = "bms:"
    bridge_actor_names: list[str] = Field(default_factory=list)
    max_history_rows: int = Field(10_000, ge=1, le=1_000_000)


_NUMBER_RE = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def _parse_time(value: str | None, name: str) -> float | None:
    if value is None or value == "":
        return None
    if _NUMBER_RE.fullmatch(value):
        return float(value)
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise HTTPException(
            422, f"Expected {name} as Unix seconds or ISO 8601 (2026-11-26T12:00:00Z), got {value!r}."
        ) from None
    if dt.tzinfo is None:
        raise HTTPException(422, f"Expected a timezone in {name} (e.g. 'Z'), got {value!r}.")
    return dt.timestamp()


def _parse_filters(raw: list[str]) -> list[Filter]:
    try:
        return [Filter.parse(f) for f in raw]
    except ValueError as err:
        raise HTTPException(422, str(err)) from None


def _clean(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_clean(v) for v in x]
    return x


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=200)
@serve.ingress(api)
class ApiIngress:
    """The HTTP face of the twins; reads go to shards, history to PostgreSQL."""

    def __init__(self, config: IngressConfig, models: dict[str, DeploymentHandle[Any]] | None = None) -> None:
        self._config = config
        self._models = dict(models or {})
        self._fleet = FleetClient(config.namespace)
        self._pool = AsyncConnectionPool(
            config.postgres_url, min_size=1, max_size=4, open=False, kwargs={"autocommit": True}
        )
        self._pool_open = False
        # One client per replica (it pools its connections), not one per request.
        self._redis = aioredis.Redis.from_url(config.redis_url, decode_responses=False)

    async def _conn_pool(self) -> AsyncConnectionPool:
        if not self._pool_open:
            await self._pool.open()
            self._pool_open = True
        return self._pool

    @api.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def dashboard(self) -> str:
        return resources.files("serve").joinpath("static/dashboard.html").read_text()

    @api.get("/healthz")
    async def healthz(self) -> dict[str, Any]:
        n = await self._fleet.num_shards()
        await self._fleet.call_all("ping")
        return {"status": "ok", "shards": n}

    @api.get("/api/v1/batteries/{battery_id}")
    async def battery(self, battery_id: _BatteryId) -> dict[str, Any]:
        snap = await self._fleet.get(battery_id)
        if snap is None:
            raise HTTPException(404, f"No twin for battery {battery_id!r}: it has sent no accepted telemetry.")
        return _clean(snap.to_dict())  # type: ignore[no-any-return]

    @api.get("/api/v1/batteries/{battery_id}/window")
    async def battery_window(self, battery_id: _BatteryId) -> dict[str, Any]:
        window = await self._fleet.window(battery_id)
        if window is None:
            raise HTTPException(404, f"No twin for battery {battery_id!r}.")
        return {"battery_id": battery_id, "samples": window}

    @api.get("/api/v1/batteries/{battery_id}/telemetry")
    async def battery_telemetry(
        self,
        battery_id: _BatteryId,
        from_: Annotated[str | None, Query(alias="from", description="Unix s or ISO 8601")] = None,
        to: Annotated[str | None, Query(description="Unix s or ISO 8601")] = None,
        limit: Annotated[int, Query(ge=1, le=1_000_000)] = 1000,
    ) -> dict[str, Any]:
        t0, t1 = _parse_time(from_, "from"), _parse_time(to, "to")
        if t0 is not None and t1 is not None and t1 < t0:
            raise HTTPException(422, f"Expected from <= to, got from={from_!r} to={to!r}.")
        limit = min(limit, self._config.max_history_rows)
        pool = await self._conn_pool()
        async with pool.connection() as conn:
            rows = await TelemetryStore(conn).history(battery_id, t0, t1, limit)
        return {"battery_id": battery_id, "count": len(rows["ts"]), "columns": _clean(rows)}

    @api.get("/api/v1/fleet/summary")
    async def fleet_summary(self) -> dict[str, Any]:
        fields = ["soc_pct", "temp_c", "soh_pct_est", "efc", "staleness_s"]
        by_band = await self._fleet.group_stats("health_band", fields)
        overall = await self._fleet.group_stats(None, fields)
        charging = await self._fleet.group_stats("charging", [])
        low = await self._fleet.group_stats(None, [], filters=[Filter("soc_pct", "lt", 20.0)])
        hot = await self._fleet.group_stats(None, [], filters=[Filter("temp_c", "gt", 45.0)])
        total = overall.get("all")
        return _clean({  # type: ignore[no-any-return]
            "generated_at_s": time.time(),
            "batteries": total.count if total else 0,
            "overall": total.to_dict() if total else {},
            "by_health_band": {k: v.to_dict() for k, v in sorted(by_band.items())},
            "charging": charging["true"].count if "true" in charging else 0,
            "low_soc_lt_20pct": low["all"].count if "all" in low else 0,
            "hot_gt_45c": hot["all"].count if "all" in hot else 0,
            "shards": await self._fleet.num_shards(),
        })

    @api.get("/api/v1/fleet/top")
    async def fleet_top(
        self,
        by: Annotated[str, Query(description=f"One of {', '.join(NUMERIC_FIELDS)}")] = "soc_pct",
        n: Annotated[int, Query(ge=1, le=1000)] = 20,
        order: Literal["asc", "desc"] = "asc",
        filter: Annotated[list[str], Query(description="field:op:value, repeatable")] = [],  # noqa: B006
    ) -> dict[str, Any]:
        if by not in NUMERIC_FIELDS:
            raise HTTPException(422, f"Expected by in {NUMERIC_FIELDS}, got {by!r}.")
        rows = await self._fleet.top_n(by, n, descending=order == "desc", filters=_parse_filters(filter))
        return {"by": by, "order": order, "rows": _clean([r.__dict__ for r in rows])}

    @api.get("/api/v1/fleet/groups")
    async def fleet_groups(
        self,
        group_by: Annotated[str, Query(description=f"One of {', '.join(CATEGORICAL_FIELDS)}")] = "health_band",
        fields: Annotated[str, Query(description="Comma-separated numeric fields")] = "soc_pct,temp_c",
        filter: Annotated[list[str], Query()] = [],  # noqa: B006
    ) -> dict[str, Any]:
        names = [f for f in fields.split(",") if f]
        try:
            groups = await self._fleet.group_stats(group_by, names, filters=_parse_filters(filter))
        except ValueError as err:
            raise HTTPException(422, str(err)) from None
        except ray.exceptions.RayTaskError as err:
            if isinstance(err.cause, ValueError):
                raise HTTPException(422, str(err.cause)) from None
            raise
        return {"group_by": group_by, "groups": _clean({k: v.to_dict() for k, v in sorted(groups.items())})}

    @api.get("/api/v1/dead-letters")
    async def dead_letters(self, limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> dict[str, Any]:
        pool = await self._conn_pool()
        async with pool.connection() as conn:
            store = DeadLetterStore(conn, self._redis, key_prefix=self._config.redis_prefix)
            counts = await store.counts()
            recent = await store.recent(limit)
        for r in recent:
            p = r.get("payload")
            if isinstance(p, bytes | bytearray | memoryview):
                r["payload"] = bytes(p).decode("utf-8", errors="replace")
            for k, v in list(r.items()):
                if isinstance(v, datetime):
                    r[k] = v.isoformat()
        return {"counts": counts, "recent": recent}

    @api.get("/api/v1/system/stats")
    async def system_stats(self) -> dict[str, Any]:
        shards = await self._fleet.shard_stats()
        bridges = []
        for name in self._config.bridge_actor_names:
            try:
                h = ray.get_actor(name, namespace=self._config.namespace)
                bridges.append((await h.stats.remote()).__dict__)
            except ValueError:
                bridges.append({"name": name, "error": "not running"})
        return _clean({"shards": [s.__dict__ for s in shards], "bridges": bridges})  # type: ignore[no-any-return]

    # ------------------------------------------------------------------ models
    async def _live_status(self, name: str) -> dict[str, Any] | None:
        handle = self._models.get(name)
        if handle is None:
            return None
        try:
            return await handle.status.remote()  # type: ignore[no-any-return]
        except Exception as err:  # a model replica down must not take the API down
            return {"error": f"{type(err).__name__}: {err}"}

    @api.get("/api/v1/anomalies")
    async def anomalies(self, limit: Annotated[int, Query(ge=1, le=5000)] = 100) -> dict[str, Any]:
        per_shard = await self._fleet.call_all("anomaly_events", limit)
        events = sorted((e for evs in per_shard for e in evs), key=lambda e: -e["at_s"])[:limit]
        return _clean({"events": events})  # type: ignore[no-any-return]

    @api.get("/api/v1/models")
    async def models(self) -> dict[str, Any]:
        pool = await self._conn_pool()
        async with pool.connection() as conn:
            store = ModelRegistryStore(conn)
            names = sorted(set(await store.names()) | set(self._models))
            serving = {n: await store.serving_or_none(n) for n in names}
        out = []
        for n in names:
            cfg = serving[n]
            out.append({
                "name": n,
                "serving": None if cfg is None else _serving_dict(cfg),
                "live": await self._live_status(n),
            })
        return _clean({"models": out})  # type: ignore[no-any-return]

    @api.get("/api/v1/models/alerts")
    async def model_alerts(self) -> dict[str, Any]:
        alerts = []
        for n in sorted(self._models):
            status = await self._live_status(n) or {}
            for version, d in (status.get("drift") or {}).items():
                for a in d.get("alerts", []):
                    alerts.append({"model": n, "version": int(version), **a})
        return _clean({"alerts": alerts})  # type: ignore[no-any-return]

    @api.get("/api/v1/models/{name}")
    async def model(self, name: _ModelName) -> dict[str, Any]:
        pool = await self._conn_pool()
        async with pool.connection() as conn:
            store = ModelRegistryStore(conn)
            versions = await store.versions(name)
            if not versions:
                raise HTTPException(404, f"No model {name!r} is registered.")
            cfg = await store.serving(name)
            events = await store.events(name)
        return _clean({  # type: ignore[no-any-return]
            "name": name,
            "serving": None if cfg is None else _serving_dict(cfg),
            "versions": [
                {"version": v.version, "stage": str(v.stage), "created_at_s": v.created_at_s,
                 "created_by": v.created_by, "metrics": dict(v.metrics),
                 "data_fingerprint": v.data_fingerprint}
                for v in versions
            ],
            "events": [
                {"version": e.version, "action": str(e.action), "actor": e.actor, "at_s": e.at_s,
                 "detail": dict(e.detail)}
                for e in events
            ],
            "live": await self._live_status(name),
        })

    async def _change(self, name: str, op: str, *args: Any) -> dict[str, Any]:
        pool = await self._conn_pool()
        async with pool.connection() as conn:
            store = ModelRegistryStore(conn)
            try:
                cfg: ServingConfig = await getattr(store, op)(name, *args)
            except RegistryError as err:
                raise _registry_http_error(err) from None
            except ValueError as err:
                raise HTTPException(422, str(err)) from None
        # Replicas pick the change up on their next registry poll (seconds), no restart.
        return _serving_dict(cfg)

    @api.post("/api/v1/models/{name}/promote")
    async def promote(self, name: _ModelName, body: PromoteBody) -> dict[str, Any]:
        return await self._change(name, "promote", body.version, body.actor)

    @api.post("/api/v1/models/{name}/rollback")
    async def rollback(self, name: _ModelName, body: RollbackBody) -> dict[str, Any]:
        return await self._change(name, "rollback", body.actor)

    @api.post("/api/v1/models/{name}/ab")
    async def start_ab(self, name: _ModelName, body: AbBody) -> dict[str, Any]:
        return await self._change(name, "start_ab", body.candidate_version, body.fraction, body.actor)

    @api.delete("/api/v1/models/{name}/ab")
    async def stop_ab(
        self, name: _ModelName, actor: Annotated[str, Query(min_length=1, max_length=200)]
    ) -> dict[str, Any]:
        return await self._change(name, "stop_ab", actor)


    # ------------------------------------------------------------------ planner
    def _planner(self) -> Any:
        try:
            return ray.get_actor(PLANNER_NAME, namespace=self._config.namespace)
        except ValueError:
            raise HTTPException(503, "The planner is not running (needs [planner] enabled and the models).") from None

    @api.get("/api/v1/planner/queue")
    async def planner_queue(self, limit: Annotated[int, Query(ge=1, le=10_000)] = 200) -> dict[str, Any]:
        jobs = await self._planner().queue.remote()
        return _clean({"jobs": jobs[:limit], "total": len(jobs)})  # type: ignore[no-any-return]

    @api.get("/api/v1/planner/plan")
    async def planner_plan(self) -> dict[str, Any]:
        plan = await self._planner().latest.remote()
        if plan is None:
            raise HTTPException(404, "No plan yet: the first scheduled round has not run (POST to plan now).")
        return _clean(plan)  # type: ignore[no-any-return]

    @api.post("/api/v1/planner/plan")
    async def planner_replan(self) -> dict[str, Any]:
        planner = self._planner()
        await planner.pull.remote()
        return _clean(await planner.plan.remote("manual"))  # type: ignore[no-any-return]

    @api.get("/api/v1/planner/roster")
    async def planner_roster(self) -> dict[str, Any]:
        return await self._planner().roster.remote()  # type: ignore[no-any-return]

    @api.get("/api/v1/technicians/{technician_id}/route")
    async def technician_route(self, technician_id: _BatteryId) -> dict[str, Any]:
        try:
            route = await self._planner().route_of.remote(technician_id)
        except KeyError as err:
            raise HTTPException(404, str(err).strip("'\"")) from None
        if route is None:
            return {"technician_id": technician_id, "stops": [], "note": "not in the latest plan"}
        return _clean(route)  # type: ignore[no-any-return]

    @api.get("/api/v1/work-orders")
    async def work_orders(
        self,
        state: Annotated[str | None, Query(pattern="^(planned|assigned|en_route|done|failed|cancelled)$")] = None,
        limit: Annotated[int, Query(ge=1, le=5000)] = 100,
    ) -> dict[str, Any]:
        pool = await self._conn_pool()
        async with pool.connection() as conn:
            orders = await WorkOrderStore(conn).list(None if state is None else WorkOrderState(state), limit)
        return {"orders": [_order_dict(o) for o in orders]}

    @api.get("/api/v1/work-orders/{order_id}")
    async def work_order(self, order_id: int) -> dict[str, Any]:
        pool = await self._conn_pool()
        async with pool.connection() as conn:
            store = WorkOrderStore(conn)
            try:
                order = await store.get(order_id)
            except KeyError:
                raise HTTPException(404, f"No work order with id {order_id}.") from None
            history = await store.history(order_id)
        return _clean({**_order_dict(order), "history": history})  # type: ignore[no-any-return]

    @api.post("/api/v1/work-orders/{order_id}/transition")
    async def work_order_transition(self, order_id: int, body: TransitionBody) -> dict[str, Any]:
        try:
            order = await self._planner().report.remote(
                order_id, body.state, body.actor, body.technician_id,
                None if body.swap is None else body.swap.model_dump(), body.note,
            )  # fmt: skip
        except KeyError:
            raise HTTPException(404, f"No work order with id {order_id}.") from None
        except WorkOrderError as err:
            raise HTTPException(409, str(err)) from None
        return _clean(order)  # type: ignore[no-any-return]


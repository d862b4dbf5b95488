"""In-memory implementations of every protocol of :mod:`serve.http.deps`.

The fleet is a real :class:`~twins.twin_table.TwinTable` (so the routes see real snapshots,
windows, top-N rows and group stats); the planner applies the real work-order rules
(:func:`contracts.work_orders.check_change`), so refusals are the real exceptions. Every
other fake holds canned records a test may replace.
"""

from __future__ import annotations

import builtins
import math
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from contracts.access import Principal, Role, TokenInfo, TokenRejected, hash_token, new_token
from contracts.errors import (
    InvalidServingChange,
    UnknownModel,
    UnknownModelVersion,
    WorkOrderError,
)
from contracts.health import HealthPoint
from contracts.model_registry import (
    ModelAction,
    ModelEvent,
    ModelStage,
    ModelVersion,
    ServingConfig,
)
from contracts.work_orders import (
    SwapRecord,
    WorkOrder,
    WorkOrderKind,
    WorkOrderState,
    check_change,
)
from planners.job_queue import QueuedJob, Severity
from planners.plan_jobs import PlanJob, PlanJobs
from planners.planner import PlannedStop, PlanRecord, TechnicianRoute
from planners.resources import Depot, Technician
from planners.views import QueueEntry, Roster
from serve.http.errors import PlannerNotRunning
from serve.mqtt_bridge import BridgeStats
from twins.battery_twin import BatteryTwin, TwinSnapshot
from twins.clock import ManualClock
from twins.fleet_query import (
    AvailableVehicle,
    Filter,
    GroupStats,
    TopNRow,
    group_stats,
    top_n,
    vehicles_near,
)
from twins.scoring import AnomalyEvent
from twins.shard import ShardStats
from twins.twin_columns import TwinColumns
from twins.twin_table import TwinTable, TwinTableParams
from twins.zones import ZoneGrid

from ...twins.factories import T0_S, make_batch, message
from .fake_webhooks import MemoryWebhooks

NOW_S = T0_S + 60.0


# ---------------------------------------------------------------------- fleet
def fleet_table() -> TwinTable:
    """Three twins: bat-a (low SoC), bat-b (hot), bat-c (full); bat-a has no cell voltages."""
    table = TwinTable(TwinTableParams(window_samples=8, lstm_hidden_size=4), ManualClock(NOW_S))
    table.apply(
        make_batch(
            message("bat-a", 0, [T0_S, T0_S + 1.0], soc_pct=[12.0, 11.0], vehicle_id="veh-a"),
            message("bat-b", 0, [T0_S], temp_c=50.0, soc_pct=60.0, vehicle_id="veh-b"),
            message("bat-c", 0, [T0_S], soc_pct=95.0, vehicle_id="veh-c", cell_min_v=3.9, cell_max_v=4.0),
        )
    )
    return table


def shard_stats(shard_id: int = 0) -> ShardStats:
    return ShardStats(
        shard_id=shard_id, twins=3, messages=3, accepted_samples=4, applied_samples=4,
        late_samples=0, duplicate_messages=0, vehicle_changes=0, freshness_p50_s=float("nan"),
        freshness_p99_s=None, freshness_count=0, last_apply_at_s=NOW_S, checkpoints=0,
        restored_from_checkpoint=False, replayed_samples=0,
    )  # fmt: skip


@dataclass
class FakeFleet:
    """:class:`serve.http.deps.FleetReader` over one in-memory table (one shard)."""

    table: TwinTable = field(default_factory=fleet_table)
    zones: ZoneGrid = field(default_factory=ZoneGrid)
    events: list[AnomalyEvent] = field(default_factory=list)
    shards: list[ShardStats] = field(default_factory=lambda: [shard_stats(0)])
    pings: int = 0

    async def get(self, battery_id: str) -> TwinSnapshot | None:
        slot = self.table.index.get(battery_id)
        return None if slot is None else BatteryTwin(self.table, slot, self.zones).snapshot()

    async def window(self, battery_id: str) -> dict[str, list[float | None]] | None:
        slot = self.table.index.get(battery_id)
        if slot is None:
            return None
        return {
            k: [None if not np.isfinite(x) else float(x) for x in arr]
            for k, arr in self.table.window_of(slot).items()
        }

    async def top_n(
        self, by: str, n: int, *, descending: bool, filters: Sequence[Filter]
    ) -> list[TopNRow]:
        return top_n(self.table, by, n, descending=descending, filters=filters, zones=self.zones, now_s=NOW_S)

    async def group_stats(
        self, group_by: str | None, fields: Sequence[str], *, filters: Sequence[Filter] = ()
    ) -> dict[str, GroupStats]:
        return group_stats(self.table, group_by, fields, filters=filters, zones=self.zones, now_s=NOW_S)

    async def shard_stats(self) -> list[ShardStats]:
        return list(self.shards)

    async def num_shards(self) -> int:
        return len(self.shards)

    async def ping(self) -> None:
        self.pings += 1

    async def available_vehicles(
        self, lat: float, lon: float, radius_m: float, limit: int
    ) -> list[AvailableVehicle]:
        return vehicles_near(self.table, lat, lon, radius_m, limit, now_s=NOW_S)

    async def columns(self) -> TwinColumns:
        """The table's twins as the read snapshot takes them, as of ``NOW_S``."""
        return TwinColumns.from_table(self.table, self.zones, NOW_S)

    async def anomaly_events(self, limit: int) -> list[AnomalyEvent]:
        return list(self.events)


# ---------------------------------------------------------------------- planner
def technician(tech_id: str = "tech-01") -> Technician:
    return Technician(
        id=tech_id, depot_id="depot-nw", shift_start_h=7.0, shift_end_h=15.0, van_capacity=30,
        skills=frozenset({"swap", "inspect"}),
    )  # fmt: skip


def depot() -> Depot:
    return Depot(id="depot-nw", lat=52.54, lon=13.38, charged_stock=120)


def queued_job(battery_id: str, value: float, work_order_id: int | None = None) -> QueuedJob:
    return QueuedJob(
        battery_id=battery_id, vehicle_id=f"veh-{battery_id}", kind=WorkOrderKind.BATTERY_SWAP,
        lat=52.52, lon=13.40, value=value, priority=40.0, service_s=360, batteries_needed=1,
        skill="swap", deadline_s=None, severity=Severity.NORMAL, queued_at_s=NOW_S,
        work_order_id=work_order_id,
    )  # fmt: skip


def plan_record() -> PlanRecord:
    stop = PlannedStop(
        battery_id="bat-a", vehicle_id="veh-a", kind="battery_swap", lat=52.52, lon=13.40,
        eta_s=NOW_S + 600.0, service_start_s=NOW_S + 600.0, service_s=360, value=10.5,
        work_order_id=1,
    )  # fmt: skip
    route = TechnicianRoute(
        technician_id="tech-01", depot_id="depot-nw", depart_s=NOW_S, return_s=NOW_S + 3600.0,
        distance_m=5400, batteries_loaded=30, stops=(stop,),
    )  # fmt: skip
    return PlanRecord(
        plan_id=1, reason="manual", created_at_s=NOW_S, routes=(route,), dropped=("bat-z",),
        jobs=2, value_collected=10.5, value_dropped=3.5, distance_m=5400, solve_time_s=0.2,
        warm_started=False,
    )  # fmt: skip


def work_order(order_id: int, state: WorkOrderState = WorkOrderState.ASSIGNED) -> WorkOrder:
    return WorkOrder(
        id=order_id, kind=WorkOrderKind.BATTERY_SWAP, state=state, vehicle_id="veh-a",
        battery_id="bat-a", lat=52.52, lon=13.40, priority=40.0, value=10.5,
        created_at_s=NOW_S, technician_id="tech-01", updated_at_s=NOW_S,
    )  # fmt: skip


@dataclass
class FakePlanner:
    """:class:`serve.http.deps.PlannerClient` applying the real work-order rules in memory."""

    orders: dict[int, WorkOrder]
    running: bool = True
    plans: list[PlanRecord] = field(default_factory=list)
    entries: list[QueueEntry] = field(default_factory=list)
    technicians: tuple[Technician, ...] = field(default_factory=lambda: (technician(),))
    pulls: int = 0
    jobs: PlanJobs | None = None
    #: Who made each change reported, in order.
    actors: list[str] = field(default_factory=list)

    def _check(self) -> None:
        if not self.running:
            raise PlannerNotRunning()

    async def queue(self) -> list[QueueEntry]:
        self._check()
        return list(self.entries)

    async def latest(self) -> PlanRecord | None:
        self._check()
        return self.plans[-1] if self.plans else None

    async def pull(self) -> int:
        self._check()
        self.pulls += 1
        return 0

    async def plan(self, reason: str) -> PlanRecord:
        self._check()
        rec = replace(plan_record(), plan_id=len(self.plans) + 1, reason=reason)
        self.plans.append(rec)
        return rec

    async def submit_plan(self, reason: str, requested_by: str) -> PlanJob:
        self._check()
        if self.jobs is None:  # made here: PlanJobs needs the app's running event loop
            self.jobs = PlanJobs(self.plan)
        return self.jobs.submit(reason, requested_by)

    async def plan_job(self, job_id: str) -> PlanJob:
        self._check()
        if self.jobs is None:
            raise KeyError(f"No planning job {job_id!r}.")
        return self.jobs.get(job_id)

    async def roster(self) -> Roster:
        self._check()
        return Roster(self.technicians, (depot(),))

    async def route_of(self, technician_id: str) -> TechnicianRoute | None:
        self._check()
        if technician_id not in {t.id for t in self.technicians}:
            raise KeyError(f"No technician {technician_id!r}; have {[t.id for t in self.technicians]}.")
        if not self.plans:
            return None
        return next((r for r in self.plans[-1].routes if r.technician_id == technician_id), None)

    async def report(
        self,
        order_id: int,
        state: WorkOrderState,
        actor: str,
        technician_id: str | None,
        swap: SwapRecord | None,
        note: str | None,
        assigned_to: str | None = None,
    ) -> WorkOrder:
        self._check()
        order = self.orders[order_id]  # KeyError for an unknown order, as the store raises
        if assigned_to is not None and order.technician_id != assigned_to:
            raise WorkOrderError(f"Expected order {order_id} assigned to {assigned_to!r}.")
        self.actors.append(actor)
        check_change(order, state, technician_id=technician_id, swap=swap)
        tech = technician_id if state is WorkOrderState.ASSIGNED else order.technician_id
        self.orders[order_id] = replace(order, state=state, technician_id=tech, updated_at_s=NOW_S + 1)
        return self.orders[order_id]


# ---------------------------------------------------------------------- bridges and models
@dataclass
class FakeBridges:
    """:class:`serve.http.deps.BridgeStatsSource` with canned counters."""

    workers: dict[str, BridgeStats | None]

    async def stats(self) -> dict[str, BridgeStats | None]:
        return dict(self.workers)


def bridge_stats() -> BridgeStats:
    return BridgeStats(
        received_messages=10, accepted_messages=9, accepted_samples=45, applied_samples=45,
        late_samples=0, duplicate_samples=0, duplicate_messages=0, rejected_messages=1,
        rejected_by_reason={"malformed_json": 1}, batches=2, inflight_batches=0,
        connected=True, reconnects=0,
    )  # fmt: skip


def live_status(name: str, production_version: int = 1) -> dict[str, Any]:
    """What :meth:`models.served_model.ServedModel.status` reports, with one drift alert."""
    return {
        "name": name,
        "production_version": production_version,
        "candidate_version": None,
        "candidate_fraction": 0.0,
        "versions": {
            str(production_version): {
                "predictions": 200, "mean_prediction": 88.0, "labelled": 0, "mae": None,
                "rmse": None,
            }
        },
        "drift": {
            str(production_version): {
                "psi": {"age_days": 1.7, "efc": float("nan")},
                "alerts": [{"feature": "age_days", "psi": 1.7, "level": "major"}],
                "samples": 1200,
            }
        },
    }


@dataclass
class FakeModels:
    """:class:`serve.http.deps.ModelStatusSource`: a status dict, or an exception, per model."""

    statuses: dict[str, Mapping[str, Any] | Exception]

    def names(self) -> list[str]:
        return sorted(self.statuses)

    async def status(self, name: str) -> Mapping[str, Any] | None:
        status = self.statuses.get(name)
        if isinstance(status, Exception):
            raise status
        return status


# ---------------------------------------------------------------------- stores
@dataclass
class MemoryTelemetry:
    """:class:`serve.http.deps.TelemetryHistory` over columns per battery."""

    rows: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    calls: list[tuple[str, float | None, float | None, int]] = field(default_factory=list)

    async def history(
        self, battery_id: str, from_ts: float | None, to_ts: float | None, limit: int
    ) -> dict[str, list[Any]]:
        self.calls.append((battery_id, from_ts, to_ts, limit))
        cols = self.rows.get(battery_id, {"ts": []})
        keep = [
            k for k, ts in enumerate(cols["ts"])
            if (from_ts is None or ts >= from_ts) and (to_ts is None or ts <= to_ts)
        ][-limit:]  # fmt: skip
        return {name: [values[k] for k in keep] for name, values in cols.items()}


@dataclass
class MemoryHealthHistory:
    """:class:`serve.http.deps.HealthHistoryReader` over points per battery (oldest first)."""

    points: dict[str, list[HealthPoint]] = field(default_factory=dict)

    async def battery_history(
        self, battery_id: str, from_s: float | None, to_s: float | None, limit: int
    ) -> list[HealthPoint]:
        rows = [
            p for p in self.points.get(battery_id, [])
            if (from_s is None or p.scored_at_s >= from_s) and (to_s is None or p.scored_at_s <= to_s)
        ]  # fmt: skip
        return rows[-limit:]


@dataclass
class MemoryDeadLetters:
    """:class:`serve.http.deps.DeadLetterReader` with canned letters (newest first)."""

    letters: list[dict[str, Any]] = field(default_factory=list)
    by_reason: dict[str, int] = field(default_factory=dict)

    async def counts(self) -> dict[str, int]:
        return dict(self.by_reason)

    async def recent(self, limit: int) -> list[dict[str, Any]]:
        return [dict(r) for r in self.letters[:limit]]


@dataclass
class MemoryRegistry:
    """:class:`serve.http.deps.ModelRegistryAccess` for models with one production version."""

    versions_of: dict[str, list[ModelVersion]] = field(default_factory=dict)
    configs: dict[str, ServingConfig] = field(default_factory=dict)
    audit: dict[str, list[ModelEvent]] = field(default_factory=dict)

    def add(self, name: str, versions: int = 2) -> None:
        """Register ``versions`` versions of ``name`` and put v1 in production."""
        self.versions_of[name] = [
            ModelVersion(
                name=name, version=v, created_at_s=NOW_S + v, metrics={"val_mae": 0.03 * v},
                params={}, data_fingerprint=f"fp{v}", artifact_path=f"{name}/v{v}",
                stage=ModelStage.PRODUCTION if v == 1 else ModelStage.CANDIDATE, created_by="it",
            )
            for v in range(1, versions + 1)
        ]
        self.configs[name] = ServingConfig(name, 1, None, 0.0, NOW_S, "it")
        self.audit[name] = [ModelEvent(1, name, 1, ModelAction.PROMOTED, "it", NOW_S, {"first": True})]

    def _known(self, name: str) -> list[ModelVersion]:
        if name not in self.versions_of:
            raise UnknownModel(f"No model named {name!r} is registered.")
        return self.versions_of[name]

    async def names(self) -> list[str]:
        return sorted(self.versions_of)

    async def versions(self, name: str) -> list[ModelVersion]:
        return list(self._known(name))

    async def serving(self, name: str) -> ServingConfig | None:
        self._known(name)
        return self.configs.get(name)

    async def serving_or_none(self, name: str) -> ServingConfig | None:
        return self.configs.get(name)

    async def events(self, name: str) -> list[ModelEvent]:
        self._known(name)
        return list(self.audit[name])

    def _record(self, name: str, version: int, action: ModelAction, actor: str) -> None:
        """Append to the audit trail, attributed to ``actor`` (as the real store does)."""
        events = self.audit.setdefault(name, [])
        next_id = 1 + max((e.id for es in self.audit.values() for e in es), default=0)
        events.append(ModelEvent(next_id, name, version, action, actor, NOW_S, {}))

    async def promote(self, name: str, version: int, actor: str) -> ServingConfig:
        if version not in {v.version for v in self._known(name)}:
            raise UnknownModelVersion(f"Model {name!r} has no version {version}.")
        self.configs[name] = ServingConfig(name, version, None, 0.0, NOW_S, actor)
        self._record(name, version, ModelAction.PROMOTED, actor)
        return self.configs[name]

    async def rollback(self, name: str, actor: str) -> ServingConfig:
        self._known(name)
        stack: list[int] = []
        for e in self.audit.get(name, []):
            if e.action is ModelAction.PROMOTED:
                stack.append(e.version)
            elif e.action is ModelAction.ROLLED_BACK:
                stack.pop()
        if len(stack) < 2:
            raise InvalidServingChange(f"No earlier production version of {name!r} to return to.")
        self.configs[name] = ServingConfig(name, stack[-2], None, 0.0, NOW_S, actor)
        self._record(name, stack[-2], ModelAction.ROLLED_BACK, actor)
        return self.configs[name]

    async def start_ab(
        self, name: str, candidate_version: int, fraction: float, actor: str
    ) -> ServingConfig:
        self._known(name)
        if not math.isfinite(fraction):
            raise ValueError(f"Expected a finite fraction, got {fraction}.")
        cfg = self.configs[name]
        self.configs[name] = replace(
            cfg, candidate_version=candidate_version, candidate_fraction=fraction, updated_by=actor
        )
        self._record(name, candidate_version, ModelAction.AB_STARTED, actor)
        return self.configs[name]

    async def stop_ab(self, name: str, actor: str) -> ServingConfig:
        self._known(name)
        if not actor.strip():
            raise ValueError(f"Expected a non-empty actor to attribute the change to, got {actor!r}.")
        cfg = self.configs[name]
        if cfg.candidate_version is None:
            raise InvalidServingChange(f"No A/B split runs for {name!r}.")
        self.configs[name] = replace(
            cfg, candidate_version=None, candidate_fraction=0.0, updated_by=actor
        )
        self._record(name, cfg.candidate_version, ModelAction.AB_STOPPED, actor)
        return self.configs[name]


@dataclass
class MemoryWorkOrders:
    """:class:`serve.http.deps.WorkOrderReader` over the fake planner's orders."""

    orders: dict[int, WorkOrder]

    async def list(
        self,
        state: WorkOrderState | None,
        limit: int,
        *,
        technician_id: str | None = None,
        battery_id: str | None = None,
    ) -> list[WorkOrder]:
        found = [
            o for _, o in sorted(self.orders.items())
            if (state is None or o.state is state)
            and (technician_id is None or o.technician_id == technician_id)
            and (battery_id is None or o.battery_id == battery_id)
        ]  # fmt: skip
        return found[:limit]

    async def get(self, order_id: int) -> WorkOrder:
        try:
            return self.orders[order_id]
        except KeyError:
            raise KeyError(f"No work order with id {order_id}.") from None

    async def history(self, order_id: int) -> builtins.list[dict[str, Any]]:
        order = await self.get(order_id)
        return [
            {
                "id": 1, "work_order_id": order.id, "at_s": order.created_at_s, "from_state": None,
                "to_state": "planned", "actor": "planner", "technician_id": None, "note": None,
                "swap_vehicle_id": None, "swap_battery_out": None, "swap_battery_in": None,
            }
        ]


@dataclass
class MemoryTokens:
    """:class:`serve.http.deps.TokenAdmin` in memory, with the real token format and hash."""

    rows: dict[bytes, TokenInfo] = field(default_factory=dict)

    def issue(self, role: Role, subject: str, *, ttl_s: float | None = 3600.0) -> str:
        """A token for tests to call the API with (what ``bms tokens create`` does)."""
        token = new_token()
        info = TokenInfo(
            id=len(self.rows) + 1, role=role, subject=subject, label="", created_at_s=time.time(),
            expires_at_s=None if ttl_s is None else time.time() + ttl_s, revoked_at_s=None,
            created_by="test",
        )  # fmt: skip
        self.rows[hash_token(token)] = info
        return token

    def expire(self, token: str) -> None:
        h = hash_token(token)
        self.rows[h] = replace(self.rows[h], expires_at_s=time.time() - 1.0)

    async def authenticate(self, token: str) -> Principal:
        info = self.rows.get(hash_token(token))
        if info is None:
            raise TokenRejected("unknown token")
        state = info.state_at(time.time())
        if state != "active":
            raise TokenRejected(f"token {info.id} is {state}")
        return Principal(token_id=info.id, role=info.role, subject=info.subject)

    async def create(
        self, role: Role, subject: str, *, created_by: str, ttl_s: float | None, label: str = ""
    ) -> tuple[str, TokenInfo]:
        token = self.issue(role, subject, ttl_s=ttl_s)
        h = hash_token(token)
        self.rows[h] = replace(self.rows[h], created_by=created_by, label=label)
        return token, self.rows[h]

    async def list(self) -> builtins.list[TokenInfo]:
        return sorted(self.rows.values(), key=lambda i: i.id)

    async def revoke(self, token_id: int) -> TokenInfo:
        for h, info in self.rows.items():
            if info.id == token_id:
                if info.revoked_at_s is None:
                    self.rows[h] = replace(info, revoked_at_s=time.time())
                return self.rows[h]
        raise KeyError(f"No token with id {token_id}.")


@dataclass
class MemoryStores:
    """:class:`serve.http.deps.Stores` handing out the in-memory stores above."""

    telemetry: MemoryTelemetry
    letters: MemoryDeadLetters
    models: MemoryRegistry
    orders: MemoryWorkOrders
    tokens_: MemoryTokens = field(default_factory=MemoryTokens)
    health: MemoryHealthHistory = field(default_factory=MemoryHealthHistory)
    webhooks_: MemoryWebhooks | None = None

    @asynccontextmanager
    async def history(self) -> AsyncIterator[MemoryTelemetry]:
        yield self.telemetry

    @asynccontextmanager
    async def dead_letters(self) -> AsyncIterator[MemoryDeadLetters]:
        yield self.letters

    @asynccontextmanager
    async def registry(self) -> AsyncIterator[MemoryRegistry]:
        yield self.models

    @asynccontextmanager
    async def work_orders(self) -> AsyncIterator[MemoryWorkOrders]:
        yield self.orders

    @asynccontextmanager
    async def tokens(self) -> AsyncIterator[MemoryTokens]:
        yield self.tokens_

    @asynccontextmanager
    async def health_history(self) -> AsyncIterator[MemoryHealthHistory]:
        yield self.health

    def webhook_store(self) -> MemoryWebhooks:
        """The in-memory webhook store, made on first use over these work orders."""
        if self.webhooks_ is None:
            self.webhooks_ = MemoryWebhooks(self.orders.orders)
        return self.webhooks_

    @asynccontextmanager
    async def webhooks(self) -> AsyncIterator[MemoryWebhooks]:
        yield self.webhook_store()

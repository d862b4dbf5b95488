"""What the HTTP routes call, as small protocols, and the one object that carries them.

The routes never look a service up: :func:`serve.http.app.create_api` takes an
:class:`ApiDeps`, and each route reads it through :func:`get_deps`. The runtime implements
the protocols over Ray actors, Serve handles, a PostgreSQL pool and Redis
(:mod:`runtime.api_deps`); unit tests implement them in memory. Implementations raise the
original exceptions of the layers below (``KeyError``, ``ValueError``,
:class:`contracts.errors.WorkOrderError`, :class:`contracts.errors.UnknownModel`), never a
Ray wrapper, and :class:`serve.http.errors.PlannerNotRunning` when there is no planner.
"""

from __future__ import annotations

import builtins
import ipaddress
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Protocol

from fastapi import Depends, Request

from serve.http.read_snapshot import ReadSnapshots

if TYPE_CHECKING:
    from contracts.access import Principal, Role, TokenInfo
    from contracts.alerts import Alert, AlertSeverity, AlertTransition, Silence
    from contracts.health import HealthPoint
    from contracts.model_registry import ModelEvent, ModelVersion, ServingConfig
    from contracts.simulations import SimulationJob
    from contracts.webhooks import (
        DeliveryAttempt,
        DeliveryState,
        VendorTicket,
        VendorTicketStatus,
        WebhookDelivery,
        WebhookSubscription,
    )
    from contracts.work_orders import SwapRecord, WorkOrder, WorkOrderState
    from planners.plan_jobs import PlanJob
    from planners.planner import PlanRecord, TechnicianRoute
    from planners.views import QueueEntry, Roster
    from serve.mqtt_bridge import BridgeStats
    from sim.scenario import Scenario
    from twins.battery_twin import TwinSnapshot
    from twins.fleet_query import AvailableVehicle, Filter, GroupStats, TopNRow
    from twins.scoring import AnomalyEvent
    from twins.shard import ShardStats
    from twins.twin_columns import TwinColumns

__all__ = [
    "AlertAccess",
    "AlertEvent",
    "ApiDeps",
    "BridgeStatsSource",
    "DeadLetterReader",
    "Deps",
    "FleetReader",
    "HealthHistoryReader",
    "ModelRegistryAccess",
    "ModelStatusSource",
    "PlannerClient",
    "SimulationAccess",
    "Stores",
    "TelemetryHistory",
    "TokenAdmin",
    "WebhookAdmin",
    "WorkOrderReader",
    "get_deps",
]


class FleetReader(Protocol):
    """Reads of the twins across every shard (:class:`runtime.twins.FleetClient`)."""

    async def get(self, battery_id: str) -> TwinSnapshot | None:
        """One twin's state, or ``None`` when no shard has the battery."""
        ...

    async def window(self, battery_id: str) -> dict[str, list[float | None]] | None:
        """One twin's rolling window, one list per sample column, oldest first."""
        ...

    async def top_n(
        self, by: str, n: int, *, descending: bool, filters: Sequence[Filter]
    ) -> list[TopNRow]:
        """The ``n`` twins with the largest (or smallest) ``by``; ``ValueError`` for a bad field."""
        ...

    async def group_stats(
        self, group_by: str | None, fields: Sequence[str], *, filters: Sequence[Filter] = ()
    ) -> dict[str, GroupStats]:
        """Count and per-field sums by group; ``ValueError`` for an unknown field."""
        ...

    async def shard_stats(self) -> list[ShardStats]:
        """Every shard's counters."""
        ...

    async def num_shards(self) -> int:
        """How many shards the directory has started."""
        ...

    async def ping(self) -> None:
        """Return once every shard has answered (raise if one cannot)."""
        ...

    async def anomaly_events(self, limit: int) -> list[AnomalyEvent]:
        """Up to ``limit`` newest anomaly events of each shard, in no particular order."""
        ...

    async def available_vehicles(
        self, lat: float, lon: float, radius_m: float, limit: int
    ) -> list[AvailableVehicle]:
        """Rentable vehicles within ``radius_m`` of a point, nearest first."""
        ...

    async def columns(self) -> TwinColumns:
        """Every twin's latest state as columns, one call per shard (the read snapshot's
        source, :class:`serve.http.read_snapshot.ReadSnapshots`)."""
        ...


class PlannerClient(Protocol):
    """The planner's reads and changes; each raises :class:`PlannerNotRunning` without one."""

    async def queue(self) -> list[QueueEntry]:
        """Open jobs, most valuable first."""
        ...

    async def latest(self) -> PlanRecord | None:
        """The latest plan, or ``None`` before the first round."""
        ...

    async def pull(self) -> int:
        """Pull candidates from the shards now; returns how many came."""
        ...

    async def submit_plan(self, reason: str, requested_by: str) -> PlanJob:
        """Start a planning round in the background (or join the one running); its job."""
        ...

    async def plan_job(self, job_id: str) -> PlanJob:
        """A planning job's state; ``KeyError`` when the planner knows no such job."""
        ...

    async def roster(self) -> Roster:
        """Technicians and depots."""
        ...

    async def route_of(self, technician_id: str) -> TechnicianRoute | None:
        """The technician's route in the latest plan; ``KeyError`` for an unknown technician."""
        ...

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
        """Change a work order; ``KeyError`` when unknown, ``WorkOrderError`` when refused
        (also when ``assigned_to`` is given and the order is not assigned to them)."""
        ...


class BridgeStatsSource(Protocol):
    """The MQTT bridge workers' counters."""

    async def stats(self) -> dict[str, BridgeStats | None]:
        """Per worker name, its counters, or ``None`` when it is not running."""
        ...


class ModelStatusSource(Protocol):
    """The live status of the deployed models (one Serve deployment per family)."""

    def names(self) -> list[str]:
        """The deployed model families, sorted."""
        ...

    async def status(self, name: str) -> Mapping[str, Any] | None:
        """What :meth:`models.served_model.ServedModel.status` reports, ``None`` when not
        deployed; raises whatever the replica raised when it cannot answer."""
        ...


class TelemetryHistory(Protocol):
    """Telemetry history (:class:`store.TelemetryStore`)."""

    async def history(
        self, battery_id: str, from_ts: float | None, to_ts: float | None, limit: int
    ) -> dict[str, list[Any]]:
        """The newest ``limit`` samples in ``[from_ts, to_ts]``, oldest first, by column."""
        ...


class DeadLetterReader(Protocol):
    """Rejected messages (:class:`store.DeadLetterStore`)."""

    async def counts(self) -> dict[str, int]:
        """Letters so far, per reason."""
        ...

    async def recent(self, limit: int) -> list[dict[str, Any]]:
        """The newest ``limit`` letters, newest first."""
        ...


class ModelRegistryAccess(Protocol):
    """The model registry (:class:`store.model_registry_store.ModelRegistryStore`)."""

    async def names(self) -> list[str]: ...

    async def versions(self, name: str) -> list[ModelVersion]: ...

    async def serving(self, name: str) -> ServingConfig | None: ...

    async def serving_or_none(self, name: str) -> ServingConfig | None: ...

    async def events(self, name: str) -> list[ModelEvent]: ...

    async def promote(self, name: str, version: int, actor: str) -> ServingConfig: ...

    async def rollback(self, name: str, actor: str) -> ServingConfig: ...

    async def start_ab(
        self, name: str, candidate_version: int, fraction: float, actor: str
    ) -> ServingConfig: ...

    async def stop_ab(self, name: str, actor: str) -> ServingConfig: ...


class WorkOrderReader(Protocol):
    """Work orders (:class:`store.work_order_store.WorkOrderStore`); changes go through the planner."""

    async def list(
        self,
        state: WorkOrderState | None,
        limit: int,
        *,
        technician_id: str | None = None,
        battery_id: str | None = None,
    ) -> list[WorkOrder]: ...

    async def get(self, order_id: int) -> WorkOrder: ...

    async def history(self, order_id: int) -> builtins.list[dict[str, Any]]: ...


#: One event of the live alert stream: its resumable id and its JSON body.
AlertEvent = tuple[str, dict[str, Any]]


class AlertAccess(Protocol):
    """Alerts for the API (:class:`runtime.api_deps.RayAlertAccess`): reads from the store,
    changes through the alert manager (whose book is the truth), the live stream from Redis.

    Raises ``KeyError`` for an unknown alert or silence and ``ValueError`` for a change the
    alert's state does not allow.
    """

    async def list(
        self, *, state: str | None, severity: str | None, category: str | None,
        battery_id: str | None, limit: int,
    ) -> builtins.list[Alert]:
        """Newest first; ``state="open"`` means every state but resolved."""
        ...

    async def counts(self) -> dict[str, int]:
        """Open alerts per state."""
        ...

    async def get(self, alert_id: int) -> tuple[Alert, builtins.list[AlertTransition]]:
        """One alert and its history, oldest first."""
        ...

    async def acknowledge(self, alert_id: int, actor: str, note: str | None) -> Alert: ...

    async def silences(self, include_expired: bool) -> builtins.list[Silence]: ...

    async def add_silence(
        self, matchers: dict[str, str], duration_s: float, author: str, comment: str
    ) -> Silence: ...

    async def expire_silence(self, silence_id: int, actor: str) -> Silence: ...

    def stream(self, last_event_id: str | None, keepalive_s: float) -> AsyncIterator[AlertEvent | None]:
        """Alert events after ``last_event_id`` (only new ones when ``None``), forever;
        ``None`` after ``keepalive_s`` without one (the route sends a keep-alive comment).
        ``ValueError`` for an id that is not one of ours."""
        ...


class SimulationAccess(Protocol):
    """What-if jobs (:class:`runtime.simulation_access.RaySimulationAccess`, over the
    queue of :mod:`runtime.simulations`). ``KeyError`` for an unknown job."""

    async def submit(self, scenarios: Sequence[Scenario], baseline: str | None, submitted_by: str) -> SimulationJob:
        """Queue one job running every scenario over its seeds (paired against
        ``baseline`` when given); :class:`contracts.simulations.SimulationQueueFull` when
        the queue takes no more."""
        ...

    async def list(self) -> builtins.list[SimulationJob]:
        """Every known job, newest first, without outcomes."""
        ...

    async def get(self, job_id: str) -> SimulationJob:
        """One job with its outcome."""
        ...

    async def cancel(self, job_id: str, actor: str) -> SimulationJob:
        """Cancel a queued or running job; ``ValueError`` when it has finished."""
        ...


class TokenAdmin(Protocol):
    """API tokens (:class:`store.token_store.TokenStore`)."""

    async def authenticate(self, token: str) -> Principal:
        """Who ``token`` stands for; :class:`contracts.access.TokenRejected` when refused."""
        ...

    async def create(
        self, role: Role, subject: str, *, created_by: str, ttl_s: float | None, label: str = ""
    ) -> tuple[str, TokenInfo]: ...

    async def list(self) -> builtins.list[TokenInfo]: ...

    async def revoke(self, token_id: int) -> TokenInfo: ...


class WebhookAdmin(Protocol):
    """Webhook subscriptions, deliveries and vendor tickets
    (:class:`store.webhook_store.WebhookStore`). ``KeyError`` for an unknown subscription,
    delivery or work order; :class:`contracts.webhooks.SubscriptionDisabled` for a replay to
    a disabled subscription; :class:`contracts.webhooks.NoVendorTicket` for a reply to an
    order without a ticket."""

    async def create_subscription(
        self, url: str, *, description: str, min_severity: AlertSeverity,
        event_types: frozenset[str], matchers: Mapping[str, str], secret: str, created_by: str,
    ) -> WebhookSubscription: ...

    async def subscriptions(self) -> builtins.list[WebhookSubscription]: ...

    async def disable_subscription(
        self, subscription_id: int, reason: str, now_s: float
    ) -> WebhookSubscription: ...

    async def deliveries(
        self, subscription_id: int, state: DeliveryState | None = None, limit: int = 100
    ) -> builtins.list[WebhookDelivery]: ...

    async def delivery(self, delivery_id: int) -> WebhookDelivery: ...

    async def attempts(self, delivery_id: int) -> builtins.list[DeliveryAttempt]: ...

    async def replay(self, delivery_id: int, actor: str, now_s: float) -> WebhookDelivery: ...

    async def ticket(self, work_order_id: int) -> VendorTicket: ...

    async def record_reply(
        self, work_order_id: int, status: VendorTicketStatus, rma_number: str | None,
        note: str | None, actor: str, now_s: float,
    ) -> VendorTicket: ...


class HealthHistoryReader(Protocol):
    """Scored health over time (:class:`store.health_history.HealthHistoryStore`)."""

    async def battery_history(
        self, battery_id: str, from_s: float | None, to_s: float | None, limit: int
    ) -> list[HealthPoint]:
        """The newest ``limit`` rows of one battery in ``[from_s, to_s]``, oldest first."""
        ...


class Stores(Protocol):
    """Opens a store for the length of one request (a pooled connection, in production)."""

    def history(self) -> AbstractAsyncContextManager[TelemetryHistory]: ...

    def dead_letters(self) -> AbstractAsyncContextManager[DeadLetterReader]: ...

    def registry(self) -> AbstractAsyncContextManager[ModelRegistryAccess]: ...

    def work_orders(self) -> AbstractAsyncContextManager[WorkOrderReader]: ...

    def tokens(self) -> AbstractAsyncContextManager[TokenAdmin]: ...

    def health_history(self) -> AbstractAsyncContextManager[HealthHistoryReader]: ...

    def webhooks(self) -> AbstractAsyncContextManager[WebhookAdmin]: ...


@dataclass(frozen=True)
class ApiDeps:
    """Everything the routes call.

    Parameters
    ----------
    fleet
        Twin reads across shards.
    planner
        The planner actor.
    bridges
        The MQTT bridge workers' counters.
    models
        Live status of the model deployments.
    stores
        PostgreSQL (and Redis) stores, one per request.
    max_history_rows
        Most telemetry rows one history request returns, whatever ``limit`` asks.
    alerts
        Alerts, silences and the live stream; ``None`` when the alert manager is not
        running (the alert routes answer 503).
    webhook_allow_cidrs, webhook_allow_http
        The webhook URL policy (:class:`alerts.webhooks.UrlPolicy`): internal networks a
        subscription may reach, and whether plain ``http://`` is allowed.
    reads
        The read snapshot that answers battery reads, availability and the fleet map; by
        default one loaded from ``fleet.columns`` on the first read (the runtime passes
        one it refreshes in the background).
    simulations
        What-if jobs; ``None`` when the simulations actor is not started (models off: the
        simulation routes answer 503).
    """

    fleet: FleetReader
    planner: PlannerClient
    bridges: BridgeStatsSource
    models: ModelStatusSource
    stores: Stores
    max_history_rows: int = 10_000
    alerts: AlertAccess | None = None
    webhook_allow_cidrs: tuple[str, ...] = ()
    webhook_allow_http: bool = False
    reads: ReadSnapshots = None  # type: ignore[assignment]  # None: made in __post_init__
    simulations: SimulationAccess | None = None

    def __post_init__(self) -> None:
        if self.max_history_rows < 1:
            raise ValueError(f"Expected max_history_rows >= 1, got {self.max_history_rows}.")
        if self.reads is None:
            object.__setattr__(self, "reads", ReadSnapshots(self.fleet.columns))
        for cidr in self.webhook_allow_cidrs:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(
                    f"Expected webhook_allow_cidrs of networks like '10.0.0.0/8', got {cidr!r}."
                ) from None


async def get_deps(request: Request) -> ApiDeps:
    """The app's :class:`ApiDeps` (set by :func:`serve.http.app.create_api`).

    ``async`` although it awaits nothing: FastAPI runs a plain ``def`` dependency in a
    worker thread, a thread hop on every request for one attribute read.
    """
    deps: ApiDeps = request.app.state.deps
    return deps


#: Route parameter type: ``deps: Deps`` injects the app's :class:`ApiDeps`.
Deps = Annotated[ApiDeps, Depends(get_deps)]

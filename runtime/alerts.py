"""Ray glue of the alert manager: a named, detached actor around :class:`alerts.manager.AlertManager`.

What it wires (the logic lives in :mod:`alerts` and :mod:`twins.alert_rules`):

* **Inputs.** Each twin shard sends its complete report every tick (``observe_twins``,
  via :class:`runtime.twins.AlertManagerSink`); the actor labels each battery signal with
  its depot (the nearest one of the roster) and, every ``ops_interval_s``, turns operations
  figures into signals (:mod:`alerts.ops_rules`): the bridges' connection and dead letters
  per reason, the shards' freshness, the models' drift (only from twins old enough,
  ``DRIFT_ELIGIBLE``), and area outages from the silent batteries per depot.
* **Outputs.** Every notified state change goes to the Redis stream ``<prefix>alerts:events``
  (the API's server-sent events; the stream id is the event id a client resumes from) and
  to the webhook dispatcher; a critical battery alert that fires becomes an urgent job for
  the planner; a battery-replacement work order gets a vendor ticket (once).
* **Metrics.** Alerts by state and severity, webhook outcomes (:mod:`runtime.metrics`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import ray
import redis.asyncio as aioredis
from psycopg_pool import AsyncConnectionPool
from ray import serve

from alerts.delivery import WebhookDispatcher
from alerts.manager import AlertManager
from alerts.ops_rules import (
    OpsThresholds,
    area_outages,
    broker_unreachable,
    dead_letter_surge,
    ingest_lag,
    model_drift,
)
from alerts.rules import AlertRules, KindTiming
from alerts.vendor_tickets import VendorTickets
from alerts.webhooks import UrlPolicy
from contracts.alerts import Alert, AlertSignal, AlertTransition
from contracts.anomaly_kinds import flags_from_names
from contracts.candidates import Candidate
from contracts.work_orders import WorkOrderKind
from planners.resources import Depot
from runtime.metrics import (
    EXPORT_INTERVAL_S,
    WEBHOOK_OUTCOMES,
    AlertMetrics,
    WebhookMetrics,
    export_every,
)
from runtime.names import (
    ALERTS_NAME,
    PLANNER_NAME,
    SERVE_APP_NAME,
    bridge_actor_name,
    model_deployment_name,
)
from runtime.options import actor_options
from runtime.twins import FleetClient
from store.alert_store import AlertStore
from store.dead_letters import DeadLetterStore
from store.webhook_store import WebhookStore
from store.work_order_store import WorkOrderStore
from twins.alert_rules import TwinAlertReport
from twins.zones import ZoneGrid

__all__ = ["AlertsSpec", "alert_stream_key", "start_alerts"]

log = logging.getLogger(__name__)
_EARTH_KM = 6371.0


#: A per-battery silence holds longer than a broker outage (operations: 120 s), so while
#: the broker is down the broker alert fires first and inhibits the battery ones.
DEFAULT_RULES = AlertRules(per_kind={"battery_silent": KindTiming(hold_s=300.0, clear_s=300.0)})


def alert_stream_key(redis_prefix: str) -> str:
    """The Redis stream of alert events (the API's ``/alerts/stream`` reads it)."""
    return f"{redis_prefix}alerts:events"


@dataclass(frozen=True)
class AlertsSpec:
    """What the alert manager actor is started with (plain values: it crosses into Ray)."""

    namespace: str
    postgres_url: str = field(repr=False)
    redis_url: str = field(repr=False)
    redis_prefix: str
    depots: tuple[Depot, ...]
    bridge_workers: int
    rules: AlertRules = field(default_factory=lambda: DEFAULT_RULES)
    ops: OpsThresholds = field(default_factory=OpsThresholds)
    url_policy: UrlPolicy = field(default_factory=UrlPolicy)
    models: tuple[str, ...] = ()
    serve_app_name: str = SERVE_APP_NAME
    ops_interval_s: float = 30.0
    tick_interval_s: float = 1.0
    vendor_poll_s: float = 5.0
    stream_max_events: int = 100_000
    zone_cell_km: float = 1.0


class _AlertsActor:
    """Async Ray actor: one event loop, a small PostgreSQL pool, one Redis client."""

    def __init__(self, spec: AlertsSpec) -> None:
        self.spec = spec
        self._fleet = FleetClient(spec.namespace)
        self._stack = contextlib.AsyncExitStack()
        self._ready: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._manager: AlertManager | None = None
        self._dispatcher: WebhookDispatcher | None = None
        self._planner: Any = None
        # Per source: its battery_silent signals and watched batteries per depot (the
        # area-outage rule's numerator and denominator).
        self._silent: dict[str, list[AlertSignal]] = {}
        self._watched: dict[str, dict[str, int]] = {}
        self._dead_letters_before: dict[str, int] | None = None
        self._zones = ZoneGrid(spec.zone_cell_km)
        self._alert_metrics = AlertMetrics()
        self._webhook_metrics = WebhookMetrics()

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        if self._ready is None:
            self._ready = asyncio.get_running_loop().create_task(self._start())
        await asyncio.shield(self._ready)

    async def _start(self) -> None:
        s = self.spec
        self._pool = AsyncConnectionPool(
            s.postgres_url, min_size=1, max_size=4, open=False,
            kwargs={"autocommit": True, "application_name": "bms-alerts"},
        )  # fmt: skip
        await self._pool.open()
        self._stack.push_async_callback(self._pool.close)
        self._redis = aioredis.Redis.from_url(s.redis_url, decode_responses=False)
        self._stack.push_async_callback(self._redis.aclose)
        webhooks = cast(WebhookStore, _Pooled(self._pool, WebhookStore))
        self._dispatcher = WebhookDispatcher(webhooks, s.url_policy, now=time.time)
        await self._stack.enter_async_context(self._dispatcher)
        self._tickets = VendorTickets(webhooks, self._dispatcher)
        # A vendor may answer the ticket's delivery itself (accepted / RMA / rejected).
        self._dispatcher.on_success = self._tickets.on_response
        self._manager = AlertManager(
            s.rules, cast(AlertStore, _Pooled(self._pool, AlertStore)), self._notify, self._urgent, now=time.time
        )
        await self._manager.start()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._every(s.tick_interval_s, self._manager.tick, "tick")),
            loop.create_task(self._every(s.ops_interval_s, self._ops_tick, "operations rules")),
            loop.create_task(self._every(s.vendor_poll_s, self._vendor_tickets, "vendor tickets")),
            loop.create_task(self._dispatcher.run_forever()),
            loop.create_task(export_every(EXPORT_INTERVAL_S, self._export_metrics, "alerts")),
        ]

    async def _every(self, period_s: float, fn: Any, what: str) -> None:
        while True:
            await asyncio.sleep(period_s)
            try:
                await fn()
            except Exception:  # one failed round must not stop the loop
                log.exception("alert manager: %s failed", what)

    async def _m(self) -> AlertManager:
        await self.start()
        assert self._manager is not None
        return self._manager

    # ------------------------------------------------------------------ inputs
    async def observe_twins(self, report: TwinAlertReport) -> int:
        """A shard's complete report; returns the transitions it caused."""
        manager = await self._m()
        signals = [self._with_depot(sig) for sig in report.signals]
        self._silent[report.source] = [sig for sig in signals if sig.kind == "battery_silent"]
        self._watched[report.source] = self._per_depot(report.watched_by_zone)
        return len(await manager.observe(report.source, signals))

    def _nearest_depot(self, lat: float | None, lon: float | None) -> str | None:
        if lat is None or lon is None or not self.spec.depots:
            return None
        return min(self.spec.depots, key=lambda d: _distance_km(lat, lon, d.lat, d.lon)).id

    def _with_depot(self, sig: AlertSignal) -> AlertSignal:
        depot = self._nearest_depot(sig.lat, sig.lon)
        if depot is None:
            return sig
        return AlertSignal(**{**sig.__dict__, "labels": {**sig.labels, "depot": depot}})

    def _per_depot(self, watched_by_zone: dict[str, int]) -> dict[str, int]:
        out: dict[str, int] = {}
        for zone, n in watched_by_zone.items():
            centre = _zone_centre(zone, self._zones)
            depot = self._nearest_depot(*centre) if centre else None
            if depot is not None:
                out[depot] = out.get(depot, 0) + n
        return out

    async def _ops_tick(self) -> None:
        manager = await self._m()
        now = time.time()
        signals: list[AlertSignal] = []
        connected = await self._bridge_connected()
        if connected:
            signals += broker_unreachable(connected, now)
        async with self._pool.connection() as conn:
            counts = await DeadLetterStore(conn, self._redis, key_prefix=self.spec.redis_prefix).counts()
        if self._dead_letters_before is not None:
            signals += dead_letter_surge(counts, self._dead_letters_before, self.spec.ops_interval_s, now, self.spec.ops)
        self._dead_letters_before = dict(counts)
        stats = await self._fleet.shard_stats()
        p99 = [st.freshness_p99_s for st in stats if st.freshness_p99_s is not None and math.isfinite(st.freshness_p99_s)]
        if p99:
            signals += ingest_lag(max(p99), now, self.spec.ops)
        signals += model_drift(await self._drift_rows(), now, self.spec.ops)
        await manager.observe("ops", signals)
        per_depot: dict[str, int] = {}
        for watched in self._watched.values():
            for depot, n in watched.items():
                per_depot[depot] = per_depot.get(depot, 0) + n
        silent = [s for signals_ in self._silent.values() for s in signals_]
        await manager.observe("areas", area_outages(silent, per_depot, now, self.spec.ops))

    async def _bridge_connected(self) -> dict[str, bool]:
        out: dict[str, bool] = {}
        for i in range(self.spec.bridge_workers):
            name = bridge_actor_name(i)
            try:
                stats = await ray.get_actor(name, namespace=self.spec.namespace).stats.remote()
            except Exception:  # a bridge not running (yet, or restarting) says nothing here
                continue
            out[name] = bool(getattr(stats, "connected", True))
        return out

    async def _drift_rows(self) -> list[dict[str, Any]]:
        # Each model replica judges drift on rows of twins old enough to compare
        # (DRIFT_ELIGIBLE); its status lists the features above the threshold.
        rows: list[dict[str, Any]] = []
        for name in self.spec.models:
            try:
                handle = serve.get_deployment_handle(model_deployment_name(name), app_name=self.spec.serve_app_name)
                status = await handle.status.remote()
            except Exception:  # a model not deployed (yet) has no drift to report
                continue
            for version, d in status.get("drift", {}).items():
                for a in d.get("alerts", []):
                    rows.append({"model": name, "version": int(version), "feature": a["feature"],
                                 "psi": float(a["psi"]), "rows": int(d.get("samples", 0))})
        return rows

    # ------------------------------------------------------------------ outputs
    async def _notify(self, changes: Sequence[tuple[Alert, AlertTransition]]) -> None:
        assert self._dispatcher is not None
        key = alert_stream_key(self.spec.redis_prefix)
        async with self._redis.pipeline(transaction=False) as pipe:
            for alert, t in changes:
                data = {
                    "transition": {
                        "alert_key": t.alert_key, "alert_id": alert.id, "from_state": t.from_state,
                        "to_state": t.to_state, "at_s": t.at_s, "actor": t.actor, "note": t.note,
                    },
                    "alert": alert.to_dict(),
                }  # fmt: skip
                pipe.xadd(key, {b"data": json.dumps(data, separators=(",", ":"))},
                          maxlen=self.spec.stream_max_events, approximate=True)
            await pipe.execute()
        for alert, t in changes:
            await self._dispatcher.notify(alert, t)

    async def _urgent(self, alerts: Sequence[Alert]) -> None:
        if self._planner is None:
            try:
                self._planner = ray.get_actor(PLANNER_NAME, namespace=self.spec.namespace)
            except ValueError:
                return  # no planner (models off): the alert still notifies
        candidates = []
        for a in alerts:
            if a.battery_id is None:
                continue
            twin = await self._fleet.get(a.battery_id)
            if twin is None:
                continue
            candidates.append(_candidate(twin.to_dict(), a))
        if candidates:
            await self._planner.push.remote(candidates)

    async def _vendor_tickets(self) -> None:
        """Every battery replacement gets a vendor ticket, once (an outbox read from
        PostgreSQL: restart-safe, and the store refuses a second ticket per order)."""
        async with self._pool.connection() as conn:
            orders = await WorkOrderStore(conn).without_vendor_ticket(WorkOrderKind.BATTERY_REPLACEMENT)
        for order in orders:
            twin = await self._fleet.get(order.battery_id)
            async with self._pool.connection() as conn:
                evidence = await AlertStore(conn).list(
                    state=None, severity=None, category=None, battery_id=order.battery_id, limit=20
                )
            await self._tickets.open(order, {} if twin is None else twin.to_dict(), evidence)

    async def _export_metrics(self) -> None:
        manager = await self._m()
        self._alert_metrics.update({(st.value, sev.value): n for (st, sev), n in manager.counts().items()})
        assert self._dispatcher is not None
        stats = dataclasses.asdict(self._dispatcher.stats())
        self._webhook_metrics.update({k: v for k, v in stats.items() if k in WEBHOOK_OUTCOMES})

    # ------------------------------------------------------------------ the API's changes
    async def acknowledge(self, alert_id: int, actor: str, note: str | None) -> Alert:
        return await (await self._m()).acknowledge(alert_id, actor, note)

    async def add_silence(self, matchers: dict[str, str], duration_s: float, author: str, comment: str) -> Any:
        return await (await self._m()).add_silence(matchers, duration_s, author, comment)

    async def expire_silence(self, silence_id: int, actor: str) -> Any:
        return await (await self._m()).expire_silence(silence_id, actor)

    async def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for (state, _), n in (await self._m()).counts().items():
            out[state.value] = out.get(state.value, 0) + n
        return out

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._stack.aclose()


class _Pooled:
    """A store whose every call runs on its own pooled connection: the manager, the
    dispatcher's concurrent deliveries and the vendor loop never share a transaction."""

    def __init__(self, pool: AsyncConnectionPool, factory: Any) -> None:
        self._pool = pool
        self._factory = factory

    def __getattr__(self, name: str) -> Any:
        async def call(*args: Any, **kwargs: Any) -> Any:
            async with self._pool.connection() as conn:
                return await getattr(self._factory(conn), name)(*args, **kwargs)

        return call


def _candidate(twin: dict[str, Any], alert: Alert) -> Candidate:
    """The planner's candidate for a battery with a firing critical alert, from its twin's
    snapshot (:meth:`twins.battery_twin.TwinSnapshot.to_dict`): the snapshot names the
    anomaly flags, the candidate carries their bits."""

    def num(name: str, default: float = math.nan) -> float:
        v = twin.get(name)
        return default if v is None else float(v)

    lat = alert.lat if alert.lat is not None else num("lat")
    lon = alert.lon if alert.lon is not None else num("lon")
    return Candidate(
        battery_id=str(alert.battery_id), vehicle_id=twin.get("vehicle_id") or alert.vehicle_id,
        lat=lat, lon=lon, soc_pct=num("soc_pct"), priority=num("priority"),
        lost_rides_6h=num("lost_rides_6h"), hours_to_empty=num("hours_to_empty"),
        health_score=num("health_score"), anomaly_flags=flags_from_names(twin.get("anomaly_flags") or ()),
        charging=bool(twin.get("charging") or False), critical_alert=alert.kind,
    )  # fmt: skip


def _distance_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * _EARTH_KM * math.asin(math.sqrt(a))


def _zone_centre(zone: str, grid: ZoneGrid) -> tuple[float, float] | None:
    return grid.centre_of(zone)


def start_alerts(spec: AlertsSpec) -> Any:
    """Start (or find) the named, detached alert manager actor and wait until it is ready."""
    handle = ray.remote(_AlertsActor).options(**actor_options("alerts", ALERTS_NAME, spec.namespace)).remote(spec)
    ray.get(handle.start.remote())  # type: ignore[attr-defined]
    return handle

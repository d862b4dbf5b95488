"""Ray glue of the twins: shard and directory actors, the bridge's router, the fleet client.

Everything stateful lives in plain classes (:class:`~twins.shard.TwinShard`,
:class:`~twins.directory.ShardDirectory`); this module only starts and finds their actors,
injects what they call (backends, the Serve model client, the planner as an
:class:`~twins.shard.UrgentSink`), and fans calls out across shards.

A shard process imports this module, so it must stay light: no model code (torch,
xgboost, scikit-learn) is reachable from here; ``tests/unit/runtime/test_lean_shard.py``
checks it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import psycopg
import ray
import redis.asyncio as aioredis
from ray.actor import ActorHandle
from ray.exceptions import ActorUnavailableError, RayActorError

from contracts.candidates import Candidate
from contracts.errors import Unavailable
from contracts.health import HealthRow
from contracts.samples import TelemetryBatch
from runtime.metrics import EXPORT_INTERVAL_S, ScoringMetrics, ShardMetrics, export_every
from runtime.names import (
    ALERTS_NAME,
    DEFAULT_NAMESPACE,
    DIRECTORY_NAME,
    PLANNER_NAME,
    SERVE_APP_NAME,
    shard_actor_name,
)
from runtime.options import actor_options
from store import CheckpointStore, DirectoryStore, TelemetryStore, TwinStateCache, open_postgres
from store.demand_cache import RedisDemand
from store.postgres import ResilientConnection
from twins.alert_rules import TwinAlertParams, TwinAlertReport, TwinAlertRules
from twins.battery_twin import TwinSnapshot
from twins.directory import AssignmentStore, ShardDirectory
from twins.fleet_query import (
    AvailableVehicle,
    Filter,
    GroupStats,
    TopNRow,
    merge_group_stats,
    merge_top_n,
    merge_vehicles_near,
)
from twins.ordered_lane import CallOrder, OrderedLane
from twins.scoring import AnomalyEvent, ScoreReport, ScoringParams, TwinScorer
from twins.shard import IngestReport, ShardStats, TwinShard
from twins.sinks import ShardBackends
from twins.twin_columns import TwinColumns
from twins.twin_table import TwinTableParams
from twins.zones import ZoneGrid

__all__ = [
    "AlertManagerSink",
    "FleetClient",
    "PlannerSink",
    "ShardRouter",
    "TwinRuntimeSpec",
    "connect_backends",
    "shard_options",
    "start_directory",
]

@dataclass(frozen=True)
class TwinRuntimeSpec:
    """What every shard and the directory are started with.

    The knobs have no defaults here: they are declared once, in the ``[twins]`` and
    ``[models]`` settings sections, and :func:`bms.system.twin_runtime_spec` fills them in.
    """

    params: TwinTableParams
    # Out of reprs: a URL may carry a password, and Ray prints actor arguments in errors.
    postgres_url: str = field(repr=False)
    redis_url: str = field(repr=False)
    shard_size: int
    zone_cell_km: float
    checkpoint_interval_s: float
    state_flush_interval_s: float
    score_interval_s: float
    scoring: ScoringParams
    namespace: str = DEFAULT_NAMESPACE
    initial_shards: int = 1
    redis_prefix: str = "bms:"
    models_enabled: bool = False
    serve_app_name: str = SERVE_APP_NAME
    #: The twins' alert rules; ``None`` when the alert manager is off.
    alerts: TwinAlertParams | None = None
    alert_interval_s: float = 10.0
    #: A custom Ray resource each shard takes one unit of (cluster.yaml gives each twin
    #: worker node ``bms_twin_shard: 4``): shards then land only on twin workers, at most as
    #: many per node as its memory was sized for, and Ray spreads them as nodes fill up.
    #: ``None`` on one machine, where no node advertises it.
    shard_resource: str | None = None


async def connect_backends(spec: TwinRuntimeSpec) -> ShardBackends:
    """Open a shard's Postgres and Redis clients (one connection per concern)."""
    stack = contextlib.AsyncExitStack()
    # One connection per shard: with shard_size=1 there is a shard per battery, and
    # PostgreSQL connections are the scarce resource. psycopg serialises single statements
    # but not transactions; the three stores take turns on it (store.connection_turn), so
    # the writer, checkpoints and restores may call them concurrently.
    conn = await stack.enter_async_context(open_postgres(spec.postgres_url, application_name="bms-shard"))
    redis = aioredis.Redis.from_url(spec.redis_url, decode_responses=False)
    stack.push_async_callback(redis.aclose)
    backends = ShardBackends(
        history=TelemetryStore(conn),
        state=TwinStateCache(redis, key_prefix=spec.redis_prefix),
        checkpoints=CheckpointStore(conn),
        # Read from the table, not the directory actor: the directory awaits a new shard's
        # start, so asking it back from inside that start would deadlock.
        assignments=DirectoryStore(conn),
    )
    backends.history.aclose = stack.aclose  # type: ignore[attr-defined]
    return backends


class PlannerSink:
    """:class:`~twins.shard.UrgentSink` that forwards to the planner actor, when it runs.

    The planner may start after the shards, or not at all (models without planning): then
    the candidates are dropped here, and the planner's next pull finds them anyway.
    """

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self._planner: ActorHandle[Any] | None = None

    async def __call__(self, candidates: list[Candidate]) -> None:
        if self._planner is None:
            try:
                self._planner = ray.get_actor(PLANNER_NAME, namespace=self.namespace)
            except ValueError:
                return
        await self._planner.push.remote(candidates)


class AlertManagerSink:
    """:class:`~twins.shard.AlertSink` that forwards a shard's report to the alert manager.

    The manager may start after the shards: until it runs, reports are dropped (the next
    one is complete anyway).
    """

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self._manager: ActorHandle[Any] | None = None

    async def __call__(self, report: TwinAlertReport) -> None:
        if self._manager is None:
            try:
                self._manager = ray.get_actor(ALERTS_NAME, namespace=self.namespace)
            except ValueError:
                return
        await self._manager.observe_twins.remote(report)


class _ShardActor(TwinShard):
    def node_id(self) -> str:
        """The Ray node this shard process runs on (hex id)."""
        return str(ray.get_runtime_context().get_node_id())

    def __init__(self, shard_id: int, spec: TwinRuntimeSpec) -> None:
        async def connect() -> ShardBackends:
            return await connect_backends(spec)

        zones = ZoneGrid(spec.zone_cell_km)
        scorer = None
        if spec.models_enabled:
            # Imported here, not at the top: Serve (with FastAPI and pandas) costs a shard
            # process about 80 MB, which a shard that scores nothing should not pay.
            from runtime.model_client import ServeModelClient

            redis = aioredis.Redis.from_url(spec.redis_url, decode_responses=False)
            scorer = TwinScorer(
                ServeModelClient(spec.serve_app_name),
                RedisDemand(redis, key_prefix=spec.redis_prefix),
                zones,
                spec.scoring,
            )
        super().__init__(
            shard_id,
            spec.params,
            connect,
            zones=zones,
            checkpoint_interval_s=spec.checkpoint_interval_s,
            state_flush_interval_s=spec.state_flush_interval_s,
            scorer=scorer,
            score_interval_s=spec.score_interval_s,
            push_urgent=PlannerSink(spec.namespace),
            alert_rules=None if spec.alerts is None else TwinAlertRules(f"shard-{shard_id}", spec.alerts, zones),
            alert_sink=None if spec.alerts is None else AlertManagerSink(spec.namespace),
            alert_interval_s=spec.alert_interval_s,
        )
        self._shard_metrics = ShardMetrics()
        self._scoring_metrics = ScoringMetrics()
        self._metrics_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await super().start()
        if self._metrics_task is None:
            # The metrics read the shard's own counters every few seconds (runtime.metrics):
            # ingest itself records nothing.
            self._metrics_task = asyncio.get_running_loop().create_task(
                export_every(EXPORT_INTERVAL_S, self._export_metrics, f"shard {self.shard_id}")
            )

    async def _export_metrics(self) -> None:
        self._shard_metrics.update(await self.stats())

    async def score(self) -> ScoreReport:
        report = await super().score()
        self._scoring_metrics.observe(report)
        return report

    async def aclose(self) -> None:
        if self._metrics_task is not None:
            self._metrics_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._metrics_task
        await super().aclose()


def shard_options(shard_id: int, spec: TwinRuntimeSpec) -> dict[str, Any]:
    """The actor options of shard ``shard_id``: the shard role's, plus one unit of the
    cluster's shard resource when the spec names one."""
    options = actor_options("shard", shard_actor_name(shard_id), spec.namespace)
    if spec.shard_resource is not None:
        options["resources"] = {spec.shard_resource: 1}
    return options


async def spawn_shard(shard_id: int, spec: TwinRuntimeSpec) -> None:
    """Start shard ``shard_id`` (or find it running) and wait until it has restored."""
    # Ray types ``.remote()`` as ``ActorHandle[T] | type[T]`` (for @ray.method-typed actors);
    # what comes back is always a handle.
    handle = cast(
        "ActorHandle[Any]",
        ray.remote(_ShardActor)
        .options(**shard_options(shard_id, spec))
        .remote(shard_id, spec),
    )
    await handle.start.remote()


class _DirectoryActor(ShardDirectory):
    def __init__(self, spec: TwinRuntimeSpec) -> None:
        async def spawn(shard_id: int) -> None:
            await spawn_shard(shard_id, spec)

        async def store() -> AssignmentStore:
            # Reopens itself after a database outage, like every store connection.
            conn = await ResilientConnection.connect(spec.postgres_url, "bms-directory")
            return DirectoryStore(cast("psycopg.AsyncConnection[Any]", conn))

        super().__init__(spec.shard_size, spawn, store, initial_shards=spec.initial_shards)
        self._namespace = spec.namespace

    async def placement(self, battery_ids: list[str]) -> list[tuple[int, str] | None]:
        """Battery → (shard, the Ray node that shard runs on now); None for a battery the
        fleet has not seen. The node is asked of the shard itself, not recorded: after a
        node is lost Ray restarts the shard elsewhere, and only the shard knows where."""
        shards = await self.lookup(battery_ids)
        wanted = sorted({s for s in shards if s is not None})
        handles = [ray.get_actor(shard_actor_name(s), namespace=self._namespace) for s in wanted]
        found: list[str] = await asyncio.gather(*(h.node_id.remote() for h in handles))
        nodes = dict(zip(wanted, found, strict=True))
        return [None if s is None else (s, nodes[s]) for s in shards]


def start_directory(spec: TwinRuntimeSpec) -> ActorHandle[Any]:
    """The named directory actor (started detached if not running)."""
    return cast(
        "ActorHandle[Any]",
        ray.remote(_DirectoryActor)
        .options(**actor_options("directory", DIRECTORY_NAME, spec.namespace))
        .remote(spec),
    )


class _ShardHandles:
    """Battery → shard cache and shard handles, shared by the router and the client."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self._directory: ActorHandle[Any] | None = None
        self.shard_of: dict[str, int] = {}
        self._handles: dict[int, ActorHandle[Any]] = {}

    @property
    def directory(self) -> ActorHandle[Any]:
        if self._directory is None:
            self._directory = ray.get_actor(DIRECTORY_NAME, namespace=self.namespace)
        return self._directory

    def handle(self, shard_id: int) -> ActorHandle[Any]:
        h = self._handles.get(shard_id)
        if h is None:
            h = ray.get_actor(shard_actor_name(shard_id), namespace=self.namespace)
            self._handles[shard_id] = h
        return h

    async def assign(self, battery_ids: Sequence[str]) -> list[int]:
        unknown = list({b for b in battery_ids if b not in self.shard_of})
        if unknown:
            shards = await self.directory.assign.remote(unknown)
            self.shard_of.update(zip(unknown, shards, strict=True))
        return [self.shard_of[b] for b in battery_ids]

    async def lookup(self, battery_id: str) -> int | None:
        if battery_id not in self.shard_of:
            (shard,) = await self.directory.lookup.remote([battery_id])
            if shard is None:
                return None
            self.shard_of[battery_id] = shard
        return self.shard_of[battery_id]

    async def all_handles(self) -> list[ActorHandle[Any]]:
        n: int = await self.directory.num_shards.remote()
        return [self.handle(i) for i in range(n)]


def _as_unavailable(err: Exception, expected: str) -> Unavailable | None:
    """``err`` as :class:`~contracts.errors.Unavailable` when it says a shard, the directory
    or their database is out of reach for now (the bridge then waits instead of counting the
    batch's attempts); None for any other error."""
    cause = getattr(err, "cause", None)
    if isinstance(err, Unavailable | RayActorError | ActorUnavailableError) or isinstance(
        cause, Unavailable | psycopg.OperationalError | psycopg.InterfaceError
    ) or isinstance(err, psycopg.OperationalError | psycopg.InterfaceError):
        return Unavailable(f"Expected {expected}, got {type(err).__name__}: {err}")
    return None


def _transient(err: BaseException) -> bool:
    return isinstance(err, Exception) and _as_unavailable(err, "") is not None


class ShardRouter:
    """Splits a validated batch by shard and ingests the parts concurrently."""

    def __init__(self, namespace: str = DEFAULT_NAMESPACE, max_attempts: int = 3) -> None:
        self._h = _ShardHandles(namespace)
        self._lanes: dict[int, OrderedLane[TelemetryBatch, IngestReport]] = {}
        self._max_attempts = max_attempts

    def _lane(self, shard: int) -> OrderedLane[TelemetryBatch, IngestReport]:
        lane = self._lanes.get(shard)
        if lane is None:
            handle = self._h.handle(shard)

            def call(part: TelemetryBatch, order: CallOrder) -> Awaitable[IngestReport]:
                # No Ray retries: after a restart Ray may run retried calls after newer
                # ones; the lane resends them itself, in order.
                ref: Awaitable[IngestReport] = handle.ingest.options(max_task_retries=0).remote(part, order)
                return ref

            lane = self._lanes[shard] = OrderedLane(
                call, _transient, name=f"ingest to shard {shard}", max_attempts=self._max_attempts
            )
        return lane

    async def submit(self, batch: TelemetryBatch) -> Awaitable[IngestReport]:
        """Place the batch's batteries and send each shard its part (in call order).

        Each shard gets this router's batches in submission order, also across its restarts
        and database outages (:class:`~twins.ordered_lane.OrderedLane`): a part that failed
        for one of those reasons is resent, in order, until it goes through. The returned
        awaitable gives the shards' :class:`IngestReport` summed, its rejected messages
        indexed into ``batch``.
        """
        try:
            shards = np.asarray(await self._h.assign(batch.battery_ids), dtype=np.int64)
        except Exception as err:
            unavailable = _as_unavailable(err, "the directory to place the batch's batteries")
            if unavailable is None:
                raise
            raise unavailable from err
        ids = np.unique(shards).tolist()
        # Every lane first (finding a shard's handle may fail): a submit that raises must
        # have queued no part, so the bridge's retry cannot duplicate or reorder one.
        lanes = [self._lane(s) for s in ids]
        calls: list[Awaitable[IngestReport]] = []
        positions: list[list[int]] = []
        for s, lane in zip(ids, lanes, strict=True):
            mine = shards == s
            calls.append(lane.submit(batch.select_messages(mine)))
            positions.append(np.flatnonzero(mine).tolist())
        return self._collect(calls, positions)

    @staticmethod
    async def _collect(
        calls: list[Awaitable[IngestReport]], positions: list[list[int]]
    ) -> IngestReport:
        try:
            reports: list[IngestReport] = await asyncio.gather(*calls)
        except Exception as err:
            unavailable = _as_unavailable(err, "the shards to ingest the batch")
            if unavailable is None:
                raise
            raise unavailable from err
        return IngestReport.total(list(zip(reports, positions, strict=True)))

    async def route(self, batch: TelemetryBatch) -> IngestReport:
        """Submit and wait: what the shards did with one batch."""
        return await (await self.submit(batch))


class FleetClient:
    """Reads twins across shards: one battery, top-N, grouped stats, shard stats."""

    def __init__(self, namespace: str = DEFAULT_NAMESPACE) -> None:
        self._h = _ShardHandles(namespace)

    async def get(self, battery_id: str) -> TwinSnapshot | None:
        shard = await self._h.lookup(battery_id)
        if shard is None:
            return None
        snap: TwinSnapshot | None = await self._h.handle(shard).get.remote(battery_id)
        return snap

    async def set_vehicle(self, battery_id: str, vehicle_id: str | None) -> None:
        """Record which vehicle a battery is in; a battery never seen gets its shard now."""
        (shard,) = await self._h.assign([battery_id])
        await self._h.handle(shard).set_vehicle.remote(battery_id, vehicle_id)

    async def window(self, battery_id: str) -> dict[str, Any] | None:
        shard = await self._h.lookup(battery_id)
        if shard is None:
            return None
        out: dict[str, Any] | None = await self._h.handle(shard).window.remote(battery_id)
        return out

    async def top_n(
        self, by: str, n: int, *, descending: bool = True, filters: Sequence[Filter] = ()
    ) -> list[TopNRow]:
        handles = await self._h.all_handles()
        parts: list[list[TopNRow]] = await asyncio.gather(*(h.top_n.remote(by, n, descending, list(filters)) for h in handles))
        return merge_top_n(parts, n, descending=descending)

    async def available_vehicles(
        self, lat: float, lon: float, radius_m: float, limit: int
    ) -> list[AvailableVehicle]:
        """Rentable vehicles within ``radius_m`` of a point, nearest first, fleet-wide."""
        handles = await self._h.all_handles()
        parts: list[list[AvailableVehicle]] = await asyncio.gather(
            *(h.vehicles_near.remote(lat, lon, radius_m, limit) for h in handles)
        )
        return merge_vehicles_near(parts, limit)

    async def group_stats(
        self, group_by: str | None, fields: Sequence[str], *, filters: Sequence[Filter] = ()
    ) -> dict[str, GroupStats]:
        handles = await self._h.all_handles()
        parts: list[dict[str, GroupStats]] = await asyncio.gather(
            *(h.group_stats.remote(group_by, list(fields), list(filters)) for h in handles)
        )
        return merge_group_stats(parts)

    async def shard_stats(self) -> list[ShardStats]:
        handles = await self._h.all_handles()
        out: list[ShardStats] = await asyncio.gather(*(h.stats.remote() for h in handles))
        return out

    async def latencies(self) -> np.ndarray:
        handles = await self._h.all_handles()
        parts: list[np.ndarray] = await asyncio.gather(*(h.latencies.remote() for h in handles))
        return np.concatenate(parts) if parts else np.zeros(0)

    async def call_all(self, method: str, *args: Any) -> list[Any]:
        """Call ``method`` on every shard (checkpoint, flush_state, reset_latency...)."""
        handles = await self._h.all_handles()
        return list(await asyncio.gather(*(getattr(h, method).remote(*args) for h in handles)))

    async def score_all(self) -> list[ScoreReport]:
        """One scoring tick on every shard now (:class:`models.batch_job.ShardFanout`)."""
        reports: list[ScoreReport] = await self.call_all("score")
        return reports

    async def health_rows(self) -> list[HealthRow]:
        """One health row per scored twin, fleet-wide."""
        parts: list[list[HealthRow]] = await self.call_all("health_rows")
        return [r for part in parts for r in part]

    async def vehicles_per_zone(self) -> dict[str, int]:
        """Twins (one per vehicle) in each zone, fleet-wide."""
        return {zone: int(g.count) for zone, g in (await self.group_stats("zone", [])).items()}

    async def swap_candidates(self, n: int) -> list[Candidate]:
        """Each shard's ``n`` most urgent twins plus its flagged ones (the planner's pull)."""
        parts: list[list[Candidate]] = await self.call_all("swap_candidates", n)
        return [c for part in parts for c in part]

    async def anomaly_events(self, limit: int) -> list[AnomalyEvent]:
        """The newest ``limit`` anomaly events of each shard (not merged)."""
        parts: list[list[AnomalyEvent]] = await self.call_all("anomaly_events", limit)
        return [e for part in parts for e in part]

    async def ping_all(self) -> None:
        """Every shard answers (and has restored itself)."""
        await self.call_all("ping")

    async def columns(self) -> list[TwinColumns | BaseException]:
        """Every shard's twins as columns, one entry per shard id; a shard that failed
        gives its exception (the caller keeps that shard's last good columns)."""
        handles = await self._h.all_handles()
        out: list[TwinColumns | BaseException] = await asyncio.gather(
            *(h.columns.remote() for h in handles), return_exceptions=True
        )
        return out

    async def num_shards(self) -> int:
        n: int = await self._h.directory.num_shards.remote()
        return n

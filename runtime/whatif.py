"""What-if runs on the production code: simulated vehicles, real twins, models and planner.

The loop of one run (one scenario, one seed), all on one simulated clock:

1. the engine (:class:`sim.whatif_engine.WhatIfEngine`) advances one tick and hands over
   the telemetry its vehicles sent, as the bridge would (a ``TelemetryBatch``);
2. the technicians' reports of that tick (``en_route``, ``done`` with the swap,
   ``failed``) go to the real :class:`planners.planner.Planner`'s ``report``, through the
   work-order state machine (:class:`planners.work_order_book.WorkOrderBook` enforces the
   store's rules in memory), and a done swap moves the batteries in the twins;
3. the telemetry goes to real :class:`twins.shard.TwinShard` actors, in-process through
   Ray (no broker), placed by production's hash ring;
4. every ``score_interval_s`` of simulated time the shards score their twins through the
   real Serve model deployments (health, anomaly, degradation, priority), told the
   scenario's expected demand as the zone forecast;
5. every ``plan_interval_s`` (and soon after a failed visit) the planner pulls the
   shards' candidates through the scenario's swap policy (:mod:`planners.swap_policy`,
   the one seam where a scenario replaces a decision), routes the technicians with
   OR-Tools and syncs the work orders; the engine's technicians follow the new routes.

Shards run without their wall-clock background tasks and with their clocks set by each
call, so simulated time runs as fast as the loop allows. Shard histories are discarded
(a what-if writes nothing to production's PostgreSQL or Redis); a shard that dies fails
the run rather than being restored.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import ray
from ray import serve
from ray.actor import ActorHandle

from contracts.candidates import Candidate
from contracts.errors import WorkOrderError
from contracts.samples import TelemetryBatch
from contracts.work_orders import SwapRecord, WorkOrderState
from planners.planner import Planner, PlannerParams, PlanRecord
from planners.resources import Depot, Technician
from planners.routing_params import RoutingParams
from planners.swap_policy import PriorityModelPolicy, SwapPolicy, ThresholdPolicy
from planners.work_order_book import WorkOrderBook
from runtime.names import SERVE_APP_NAME
from sim.kpis import RunResult
from sim.scenario import Scenario
from sim.whatif_engine import FleetStart, RouteStop, VisitEvent, WhatIfEngine
from twins.clock import ManualClock
from twins.hash_ring import BoundedHashRing
from twins.scoring import MemoryDemand, ScoringParams, TwinScorer
from twins.shard import TwinShard
from twins.sinks import MemoryAssignments, MemoryCheckpoints, MemoryState, ShardBackends
from twins.twin_table import TwinTableParams
from twins.zones import ZoneGrid

__all__ = [
    "SCORING_MODELS",
    "WHATIF_APP_NAME",
    "WhatIfProgress",
    "WhatIfShard",
    "deploy_models",
    "fleet_start_from_live",
    "planner_params",
    "run_scenario",
    "run_whatif",
    "swap_policy",
]

log = logging.getLogger(__name__)

# A failed visit re-plans at the next tick, but not more often than this (simulated
# seconds): a burst of failures shares one round, as production's urgent_delay_s does.
_URGENT_MIN_GAP_S = 300.0
_PROGRESS_EVERY_S = 0.5  # wall seconds between progress callbacks


@dataclass(frozen=True)
class WhatIfProgress:
    """Where a :func:`run_whatif` call stands."""

    scenario: str
    seed: int
    run_index: int
    runs: int
    run_fraction: float
    overall: float


def swap_policy(scenario: Scenario) -> SwapPolicy:
    """The scenario's swap decision as a policy object (:mod:`planners.swap_policy`)."""
    p = scenario.swap_policy
    if p.kind == "threshold":
        assert p.threshold_soc_pct is not None  # the scenario model guarantees it
        return ThresholdPolicy(p.threshold_soc_pct, soft_anomaly_inspections=p.soft_anomaly_inspections)
    return PriorityModelPolicy(soft_anomaly_inspections=p.soft_anomaly_inspections)


def planner_params(scenario: Scenario) -> PlannerParams:
    """The planner's knobs in a run of ``scenario``: its loop's, not production's (the
    round's job cap included: ``max_jobs_per_plan``, not ``[planner] max_jobs_per_round``)."""
    loop = scenario.loop
    return PlannerParams(
        plan_interval_s=loop.plan_interval_s, urgent_delay_s=0.0,
        solve_time_limit_s=loop.solve_time_limit_s, candidates_per_shard=loop.candidates_per_shard,
        utc_offset_h=scenario.city.utc_offset_h, max_jobs_per_round=loop.max_jobs_per_plan,
    )  # fmt: skip


class _DiscardHistory:
    """History sink of a what-if shard: counts samples, keeps none (nothing to restore)."""

    def __init__(self) -> None:
        self.samples = 0

    async def write(self, batch: TelemetryBatch) -> int:
        self.samples += batch.n_samples
        return batch.n_samples

    async def replay(self, battery_ids: Sequence[str], ingested_since_s: float) -> TelemetryBatch:
        return TelemetryBatch.empty()


class WhatIfShard(TwinShard):
    """A production :class:`TwinShard` on a simulated clock, scored by the Serve models.

    Every call carries the simulated time; the shard's clock (which its twins and scorer
    share) moves there first.
    """

    def __init__(
        self, shard_id: int, params: TwinTableParams, scoring: ScoringParams, zone_km: float,
        app_name: str, start_s: float,
    ) -> None:  # fmt: skip
        # Imported here: Serve's client costs a process ~80 MB, paid only by scoring shards.
        from runtime.model_client import ServeModelClient

        self.sim_clock = ManualClock(start_s)
        zones = ZoneGrid(zone_km)

        async def connect() -> ShardBackends:
            return ShardBackends(
                _DiscardHistory(), MemoryState(), MemoryCheckpoints(), MemoryAssignments()
            )

        self.demand = MemoryDemand()
        scorer = TwinScorer(
            ServeModelClient(app_name), self.demand, zones, scoring, clock=self.sim_clock
        )
        super().__init__(
            shard_id,
            params,
            connect,
            zones=zones,
            clock=self.sim_clock,
            scorer=scorer,
            background=False,
        )

    async def ingest_at(self, now_s: float, batch: TelemetryBatch) -> tuple[int, int, int]:
        """Ingest at ``now_s``; returns (accepted samples, refused messages, duplicate messages)."""
        self.sim_clock.set(now_s)
        r = await self.ingest(batch)
        return r.accepted_samples, len(r.rejected), r.duplicate_messages

    async def score_at(self, now_s: float, forecasts: dict[str, np.ndarray]) -> dict[str, Any]:
        """One scoring tick at ``now_s`` with these zone forecasts (rides per vehicle and hour)."""
        self.sim_clock.set(now_s)
        self.demand.forecasts = forecasts
        report = await self.score()
        return {
            "twins": report.twins,
            "errors": dict(report.errors),
            "anomalies": report.new_anomalies,
        }

    async def anomaly_counts(self) -> dict[str, int]:
        """New anomaly events of the run so far, by kind (the detectors' verdicts)."""
        assert self.scorer is not None
        return dict(Counter(e.kind for e in self.scorer.events))

    async def candidates_at(self, now_s: float, n: int, every_twin: bool) -> list[Candidate]:
        """The planner's pull at ``now_s``: the top ``n`` (production), or every twin that has
        reported (a policy that decides without the priority model)."""
        self.sim_clock.set(now_s)
        if not every_twin:
            return await self.swap_candidates(n)
        t = self.table
        slots = np.flatnonzero(t.count[: len(t)] > 0)
        return self._candidate_rows(slots)


@dataclass
class _Shards:
    handles: list[ActorHandle[Any]]
    shard_of: dict[str, int]

    def split(self, batch: TelemetryBatch) -> dict[int, TelemetryBatch]:
        owner = np.array([self.shard_of[b] for b in batch.battery_ids], dtype=np.int64)
        return {int(s): batch.select_messages(owner == s) for s in np.unique(owner).tolist()}

    def handle(self, battery_id: str) -> ActorHandle[Any]:
        return self.handles[self.shard_of[battery_id]]


def _start_shards(engine: WhatIfEngine, scenario: Scenario, app_name: str) -> _Shards:
    loop = scenario.loop
    size = loop.shard_size
    n_shards = max(1, math.ceil(engine.n_batteries / size))
    ring = BoundedHashRing(capacity=size, initial_shards=n_shards)
    owners = ring.assign_many(engine.battery_ids)
    while ring.num_shards > n_shards:  # the ring grew past the estimate (uneven hashing)
        n_shards += 1
    # Samples arrive a report interval apart while parked: integrate across that gap.
    params = TwinTableParams(max_integration_gap_s=loop.report_interval_s + loop.tick_s + 1.0)
    scoring = ScoringParams(utc_offset_h=scenario.city.utc_offset_h)
    actor = ray.remote(WhatIfShard).options(num_cpus=0, max_restarts=0, max_concurrency=64)
    handles = [
        cast(
            "ActorHandle[Any]",
            actor.remote(k, params, scoring, scenario.city.zone_km, app_name, engine.start_s),
        )
        for k in range(n_shards)
    ]
    return _Shards(handles, dict(zip(engine.battery_ids, owners, strict=True)))


def _routes(record: PlanRecord, book: WorkOrderBook) -> dict[str, list[RouteStop]]:
    """The plan's routes as the technicians see them: each stop is its work order, whose
    kind is what the technician does (the queue may have re-graded the job since)."""
    out: dict[str, list[RouteStop]] = {}
    for r in record.routes:
        stops = []
        for s in r.stops:
            kind = s.kind if s.work_order_id is None else book.orders[s.work_order_id].kind.value
            stops.append(
                RouteStop(
                    s.work_order_id,
                    kind,
                    s.vehicle_id,
                    s.battery_id,
                    s.lat,
                    s.lon,
                    float(s.service_s),
                )
            )
        out[r.technician_id] = stops
    return out


class _Loop:
    """One run's wiring: engine, shards, planner, clock and counters."""

    def __init__(
        self, scenario: Scenario, seed: int, app_name: str, start: FleetStart | None
    ) -> None:
        self.scenario = scenario
        self.engine = engine = WhatIfEngine(scenario, seed, start)
        self.clock = ManualClock(engine.start_s)
        self.book = WorkOrderBook(self.clock.now_s)
        self.policy = swap_policy(scenario)
        self.shards = _start_shards(engine, scenario, app_name)
        technicians = [
            Technician(
                id=e.id, depot_id=e.depot_id, shift_start_h=e.start_h, shift_end_h=e.end_h,
                van_capacity=e.van_capacity, skills=frozenset(e.skills),
            )
            for e in engine.roster
        ]  # fmt: skip
        loop = scenario.loop
        self.planner = Planner(
            technicians, self._depots(), self.book, self._candidates, self._apply_swap,
            params=planner_params(scenario),
            routing=RoutingParams(time_limit_s=loop.solve_time_limit_s, solution_limit=loop.solution_limit),
            now_s=self.clock.now_s,
        )  # fmt: skip
        self.counts = dict.fromkeys(
            ("accepted_samples", "refused_messages", "duplicate_messages", "plans", "report_errors",
             "score_ticks", "jobs_planned", "jobs_dropped"), 0,
        )  # fmt: skip
        self.seconds = dict.fromkeys(("engine", "ingest", "score", "plan", "report"), 0.0)
        self.last_plan_s = -math.inf

    def _depots(self) -> list[Depot]:
        e = self.engine
        stock = e.depot_stock()
        out = []
        for d in self.scenario.depots:
            if d.closed:
                continue
            lat, lon = e.depot_latlon(d.id)
            out.append(Depot(id=d.id, lat=lat, lon=lon, charged_stock=stock[d.id]))
        return out

    async def _candidates(self, n: int) -> list[Candidate]:
        now = self.clock.now_s()
        every = self.policy.needs_all_twins
        parts: list[list[Candidate]] = await asyncio.gather(
            *(h.candidates_at.remote(now, n, every) for h in self.shards.handles)
        )
        return self.policy.apply([c for part in parts for c in part])

    async def _apply_swap(self, swap: SwapRecord) -> None:
        await self.shards.handle(swap.battery_out_id).set_vehicle.remote(swap.battery_out_id, None)
        await self.shards.handle(swap.battery_in_id).set_vehicle.remote(
            swap.battery_in_id, swap.vehicle_id
        )

    async def report(self, events: list[VisitEvent]) -> bool:
        """Hand the technicians' reports to the planner; True if a visit failed."""
        failed = False
        for ev in events:
            order = ev.stop.order_id
            if order is None:
                continue
            try:
                if ev.kind == "en_route":
                    await self.planner.report(order, WorkOrderState.EN_ROUTE, ev.technician_id)
                elif ev.kind == "done":
                    swap = None
                    if ev.battery_in_id is not None and ev.battery_out_id is not None:
                        swap = SwapRecord(ev.stop.vehicle_id, ev.battery_out_id, ev.battery_in_id)
                    await self.planner.report(
                        order, WorkOrderState.DONE, ev.technician_id, swap=swap
                    )
                else:
                    failed = True
                    await self.planner.report(
                        order, WorkOrderState.FAILED, ev.technician_id, note=ev.note
                    )
            except WorkOrderError:
                # The state machine refused a report: a defect of the loop, counted and
                # logged (tests require none), never papered over.
                self.counts["report_errors"] += 1
                log.exception(
                    "what-if: work order %s refused %s by %s", order, ev.kind, ev.technician_id
                )
        return failed

    async def ingest(self, now_s: float, batch: TelemetryBatch) -> None:
        if batch.n_messages == 0:
            return
        parts = self.shards.split(batch)
        results: list[tuple[int, int, int]] = await asyncio.gather(
            *(self.shards.handles[s].ingest_at.remote(now_s, part) for s, part in parts.items())
        )
        for accepted, refused, duplicates in results:
            self.counts["accepted_samples"] += accepted
            self.counts["refused_messages"] += refused
            self.counts["duplicate_messages"] += duplicates

    async def score(self, now_s: float) -> None:
        forecasts = self.engine.demand_forecast()
        # One shard after another: each call's rows then reach the models as one batch, the
        # same batch in every run (Serve would merge concurrent calls unpredictably).
        for h in self.shards.handles:
            out = await h.score_at.remote(now_s, forecasts)
            if out["errors"]:
                raise RuntimeError(
                    f"Expected the model deployments to score the twins, got errors: {out['errors']} "
                    "(are the models trained and deployed? `bms run` or `bms whatif` deploys them)"
                )
        self.counts["score_ticks"] += 1

    async def plan(self, reason: str) -> None:
        self.planner.depots = {d.id: d for d in self._depots()}
        # The technicians tell the planner what their vans hold, as the app's scan would.
        for tech_id, charged in self.engine.van_stock().items():
            self.planner.report_van_stock(tech_id, charged)
        await self.planner.pull()
        record = await self.planner.plan(reason)
        self.engine.assign_routes(_routes(record, self.book))
        self.counts["plans"] += 1
        self.counts["jobs_planned"] += record.jobs - len(record.dropped)
        self.counts["jobs_dropped"] += len(record.dropped)

    async def close(self) -> None:
        for h in self.shards.handles:
            ray.kill(h, no_restart=True)


async def run_scenario(
    scenario: Scenario, seed: int, *, app_name: str = SERVE_APP_NAME, start: FleetStart | None = None,
    progress: Callable[[float], None] | None = None,
) -> RunResult:  # fmt: skip
    """One scenario, one seed, through the production twins, models and planner.

    ``progress`` gets the fraction of simulated time done, about twice a second.
    """
    wall0 = time.perf_counter()
    run = _Loop(scenario, seed, app_name, start)
    e, loop = run.engine, scenario.loop
    try:
        await asyncio.gather(*(h.start.remote() for h in run.shards.handles))
        startup_s = time.perf_counter() - wall0
        next_score = e.start_s + loop.tick_s  # score as soon as the twins have a sample
        next_plan = next_score
        urgent_after = math.inf
        last_progress = 0.0
        sec = run.seconds
        while not e.done:
            t = time.perf_counter()
            batch = e.step()
            now = e.now_s
            run.clock.set(now)
            events = e.drain_events()
            sec["engine"] += time.perf_counter() - t
            t = time.perf_counter()
            if await run.report(events):
                urgent_after = min(urgent_after, now)
            sec["report"] += time.perf_counter() - t
            t = time.perf_counter()
            await run.ingest(now, batch)
            sec["ingest"] += time.perf_counter() - t
            if now >= next_score - 1e-6:
                t = time.perf_counter()
                await run.score(now)
                next_score += loop.score_interval_s
                sec["score"] += time.perf_counter() - t
            due = now >= next_plan - 1e-6
            urgent = now >= urgent_after and now - run.last_plan_s >= _URGENT_MIN_GAP_S
            if due or urgent:
                t = time.perf_counter()
                await run.plan("scheduled" if due else "urgent")
                if due:
                    next_plan += loop.plan_interval_s
                urgent_after = math.inf
                run.last_plan_s = now
                sec["plan"] += time.perf_counter() - t
            if progress is not None and time.perf_counter() - last_progress >= _PROGRESS_EVERY_S:
                last_progress = time.perf_counter()
                progress(e.fraction_done)
        result = e.result()
        anomalies: Counter[str] = Counter()
        per_shard: list[dict[str, int]] = await asyncio.gather(
            *(h.anomaly_counts.remote() for h in run.shards.handles)
        )
        for counts in per_shard:
            anomalies.update(counts)
    finally:
        await run.close()
    if progress is not None:
        progress(1.0)
    wall_s = time.perf_counter() - wall0
    simulated_s = e.end_s - e.start_s
    result.run.update({
        **run.counts,
        "wall_s": round(wall_s, 2),
        "startup_s": round(startup_s, 2),
        "speedup": round(simulated_s / max(wall_s, 1e-9), 1),
        "seconds": {k: round(v, 2) for k, v in run.seconds.items()},
        "shards": len(run.shards.handles),
        "work_orders": run.book.counts(),
        "work_order_kinds": dict(Counter(o.kind.value for o in run.book.orders.values())),
        "swap_records": len(run.book.swaps),
        "anomaly_events": dict(sorted(anomalies.items())),
        "vehicles": e.n_vehicles,
        "batteries": e.n_batteries,
        "technicians": len(e.roster),
    })  # fmt: skip
    return result


async def run_whatif(
    scenarios: Sequence[Scenario], *, app_name: str = SERVE_APP_NAME,
    progress: Callable[[WhatIfProgress], None] | None = None,
    start: FleetStart | None = None,
) -> list[RunResult]:  # fmt: skip
    """Every scenario over its seeds, one run after another (runs share the CPU otherwise).

    ``start`` replaces the generated fleet of every scenario whose ``start.source`` is not
    ``generated`` (the caller reads the live twins or the snapshot file once).
    """
    plan = [(s, seed) for s in scenarios for seed in s.seeds]
    results = []
    for k, (sc, seed) in enumerate(plan):

        def each(fraction: float, sc: Scenario = sc, seed: int = seed, k: int = k) -> None:
            if progress is not None:
                progress(
                    WhatIfProgress(
                        sc.name, seed, k, len(plan), fraction, (k + fraction) / len(plan)
                    )
                )

        fleet = start if sc.start.source != "generated" else None
        if sc.start.source != "generated" and start is None:
            raise ValueError(
                f"Scenario {sc.name!r} starts from {sc.start.source!r}: expected the caller to pass that "
                "fleet (bms whatif reads it), got none."
            )
        results.append(await run_scenario(sc, seed, app_name=app_name, start=fleet, progress=each))
    return results


async def fleet_start_from_live(namespace: str) -> FleetStart:
    """Today's fleet as the running system's twins know it: every twin in a vehicle, with
    its position, charge and SOH (the health model's where scored, else the twin's own)."""
    from contracts.samples import WINDOW_FIELDS
    from runtime.twins import FleetClient

    parts = await FleetClient(namespace).columns()
    vehicles: list[str] = []
    batteries: list[str] = []
    lat: list[float] = []
    lon: list[float] = []
    soc: list[float] = []
    soh: list[float] = []
    seen: set[str] = set()
    k_soc = WINDOW_FIELDS.index("soc_pct")
    for cols in parts:
        if isinstance(cols, BaseException):
            raise RuntimeError(f"Expected every shard to answer, got {type(cols).__name__}: {cols}")
        soh_pct = cols.soh_pct
        for i, (b, v) in enumerate(zip(cols.battery_ids, cols.vehicle_ids, strict=True)):
            if (
                v is None
                or v in seen
                or not (np.isfinite(cols.last_lat[i]) and np.isfinite(cols.last_lon[i]))
            ):
                continue
            seen.add(v)
            vehicles.append(v)
            batteries.append(b)
            lat.append(float(cols.last_lat[i]))
            lon.append(float(cols.last_lon[i]))
            soc.append(float(cols.latest[i, k_soc]))
            soh.append(float(soh_pct[i]) / 100.0)
    if not vehicles:
        raise RuntimeError(
            "Expected live twins in vehicles to start from, got none (is the system ingesting?)"
        )
    order = np.argsort(vehicles)
    pick = [int(j) for j in order]
    return FleetStart(
        vehicle_ids=tuple(vehicles[j] for j in pick), battery_ids=tuple(batteries[j] for j in pick),
        lat=np.array(lat)[order], lon=np.array(lon)[order], soc_pct=np.array(soc)[order], soh=np.array(soh)[order],
    )  # fmt: skip


#: The models a scoring tick calls (the demand forecaster is replaced by the scenario's demand).
SCORING_MODELS: tuple[str, ...] = ("health", "anomaly", "degradation", "priority")
#: The Serve app `bms whatif` deploys when no system runs (the system's own is ``bms``).
WHATIF_APP_NAME = "bms-whatif"


def deploy_models(
    postgres_url: str, artifacts_root: str, *, app_name: str = WHATIF_APP_NAME,
    models: Sequence[str] = SCORING_MODELS,
) -> None:  # fmt: skip
    """Deploy the production model deployments (no HTTP) as Serve app ``app_name``.

    The same :class:`~runtime.model_deployments.ModelServer` the system serves, reading the
    same registry; a small root deployment only holds them together as one app.
    """
    from ray.serve import Deployment

    from runtime.model_deployments import ModelServer, ModelServerArgs, model_deployment_name

    server = cast(Deployment, ModelServer)
    bound = {
        name: server.options(name=model_deployment_name(name)).bind(
            ModelServerArgs(name=name, postgres_url=postgres_url, artifacts_root=artifacts_root)
        )
        for name in models
    }
    root = cast(Deployment, _ModelsRoot)
    # Warnings only: a replica's access log line per scoring call would bury the progress bar.
    quiet = {"log_level": "WARNING", "enable_access_log": False}
    serve.start(logging_config=quiet)
    serve.run(root.bind(bound), name=app_name, route_prefix=None, logging_config=quiet)


@serve.deployment(ray_actor_options={"num_cpus": 0})
class _ModelsRoot:
    """Holds the model deployments of a models-only app (a Serve app needs one root)."""

    def __init__(self, models: dict[str, Any]) -> None:
        self.models = models

    async def __call__(self) -> list[str]:
        return sorted(self.models)

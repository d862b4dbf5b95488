"""Ray glue of the planner: a named, detached actor around :class:`~planners.planner.Planner`.

The actor pulls candidates from every twin shard (one call per shard, each returning its
top batteries), keeps work orders and its plans in PostgreSQL and tells the twins about done
swaps. Ray restarts it when its process dies (``max_restarts=-1``); the new one resumes from
PostgreSQL (:meth:`planners.planner.Planner.resume`) before it answers or plans. Shards
push urgent candidates (new anomalies) to it by name; the HTTP API reads plans and routes and
sends work-order changes through it, so every change has its consequences (queue, twins,
urgent re-plan) in one place.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

import ray

from contracts.candidates import Candidate
from contracts.work_orders import SwapRecord, WorkOrder, WorkOrderState
from planners.job_queue import JobRules
from planners.plan_jobs import PlanJob, PlanJobs
from planners.planner import Planner, PlannerParams, PlanRecord, TechnicianRoute
from planners.resources import Depot, Technician
from planners.routing_params import RoutingParams
from planners.travel import TravelMatrixSource
from planners.views import QueueEntry, Roster, queue_entries, roster_of
from runtime.metrics import EXPORT_INTERVAL_S, PlannerMetrics, export_every
from runtime.names import PLANNER_NAME
from runtime.options import actor_options
from runtime.twins import FleetClient
from store import open_postgres
from store.plan_store import PlanStore
from store.work_order_store import WorkOrderStore

__all__ = ["PlannerSpec", "start_planner"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlannerSpec:
    """What the planner actor is started with (plain values: it crosses into Ray)."""

    namespace: str
    postgres_url: str = field(repr=False)  # may carry a password
    technicians: tuple[Technician, ...]
    depots: tuple[Depot, ...]
    params: PlannerParams = field(default_factory=PlannerParams)
    rules: JobRules = field(default_factory=JobRules)
    run_schedule: bool = True
    #: Road travel (an OSRM server); None: the planner's haversine default.
    travel: TravelMatrixSource | None = None


class _PlannerActor:
    """Async Ray actor: one event loop, one Postgres connection for work orders and plans."""

    def __init__(self, spec: PlannerSpec) -> None:

        self.spec = spec
        self._fleet = FleetClient(spec.namespace)
        self._stack = contextlib.AsyncExitStack()
        self.planner: Planner | None = None
        self._task: asyncio.Task[None] | None = None
        self._ready: asyncio.Task[None] | None = None
        self._jobs: PlanJobs | None = None
        self._metrics = PlannerMetrics()
        self._metrics_task: asyncio.Task[None] | None = None

    async def _candidates(self, n: int) -> list[Candidate]:
        return await self._fleet.swap_candidates(n)

    async def _apply_swap(self, swap: SwapRecord) -> None:
        # The battery taken out is on the technician's van, in no vehicle; the one put in
        # now rides in the vehicle (its twin is created if the fleet never saw it).
        await self._fleet.set_vehicle(swap.battery_out_id, None)
        await self._fleet.set_vehicle(swap.battery_in_id, swap.vehicle_id)

    async def _start(self) -> None:
        conn = await self._stack.enter_async_context(
            open_postgres(self.spec.postgres_url, application_name="bms-planner")
        )
        routing = RoutingParams(
            time_limit_s=self.spec.params.solve_time_limit_s,
            engine=self.spec.params.routing_engine,  # type: ignore[arg-type]  # checked by PlannerParams
        )
        self.planner = Planner(
            self.spec.technicians, self.spec.depots, WorkOrderStore(conn), self._candidates,
            self._apply_swap, self.spec.params, routing, travel=self.spec.travel, plan_store=PlanStore(conn),
        )  # fmt: skip
        self.planner.queue.rules = self.spec.rules
        # Before anything reads or plans: a restarted actor re-queues the open work orders
        # (no second order for a battery) and puts the last saved plan back in force.
        await self.planner.resume()
        self._jobs = PlanJobs(self.planner.plan)
        if self.spec.run_schedule:
            self._task = asyncio.get_running_loop().create_task(self.planner.run_forever())
        # Queue length and the latest plan, read from the planner (runtime.metrics).
        self._metrics_task = asyncio.get_running_loop().create_task(
            export_every(EXPORT_INTERVAL_S, self._export_metrics, "the planner")
        )

    async def _export_metrics(self) -> None:
        if self.planner is not None:
            self._metrics.update(len(self.planner.queue.jobs), list(self.planner.plans))

    async def start(self) -> None:
        if self._ready is None:
            self._ready = asyncio.get_running_loop().create_task(self._start())
        await asyncio.shield(self._ready)

    async def _p(self) -> Planner:
        await self.start()
        assert self.planner is not None
        return self.planner

    async def push(self, candidates: list[Candidate]) -> int:
        return (await self._p()).push(candidates)

    async def pull(self) -> int:
        return await (await self._p()).pull()

    async def plan(self, reason: str = "manual") -> PlanRecord:
        planner = await self._p()
        return await planner.plan(reason)

    async def submit_plan(self, reason: str, requested_by: str) -> PlanJob:
        await self.start()
        assert self._jobs is not None
        return self._jobs.submit(reason, requested_by)

    async def plan_job(self, job_id: str) -> PlanJob:
        await self.start()
        assert self._jobs is not None
        return self._jobs.get(job_id)

    async def latest(self) -> PlanRecord | None:
        return (await self._p()).latest()

    async def queue(self) -> list[QueueEntry]:
        return queue_entries(await self._p())

    async def route_of(self, technician_id: str) -> TechnicianRoute | None:
        return (await self._p()).route_of(technician_id)

    async def roster(self) -> Roster:
        return roster_of(await self._p())

    async def report(
        self, order_id: int, state: WorkOrderState, actor: str, technician_id: str | None,
        swap: SwapRecord | None, note: str | None, assigned_to: str | None = None,
    ) -> WorkOrder:  # fmt: skip
        return await (await self._p()).report(
            order_id, state, actor, technician_id=technician_id, swap=swap, note=note,
            assigned_to=assigned_to,
        )  # fmt: skip


def start_planner(spec: PlannerSpec) -> Any:
    """Start (or find) the named, detached planner actor and wait until it is ready."""
    handle = ray.remote(_PlannerActor).options(**actor_options("planner", PLANNER_NAME, spec.namespace)).remote(spec)
    ray.get(handle.start.remote())  # type: ignore[attr-defined]  # ray types the handle as the class
    return handle

""":class:`serve.http.deps.SimulationAccess` for the HTTP ingress: every call goes to the
``bms-simulations`` actor (:mod:`runtime.simulations`), which owns the job queue.

The actor is looked up on every call, not once: ``bms run`` starts it after the ingress,
and a restarted actor must be found again, not answered by a stale handle.
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from typing import Any

import ray
from ray.actor import ActorHandle

from contracts.simulations import SimulationJob
from runtime.api_deps import unwrapped
from runtime.names import SIMULATIONS_NAME
from serve.http.errors import ServiceUnavailable
from sim.scenario import Scenario

__all__ = ["RaySimulationAccess"]


class RaySimulationAccess:
    """What-if jobs through the named simulations actor."""

    def __init__(self, namespace: str) -> None:
        self._namespace = namespace

    def _actor(self) -> ActorHandle[Any]:
        try:
            return ray.get_actor(SIMULATIONS_NAME, namespace=self._namespace)
        except ValueError:
            raise ServiceUnavailable(
                "The what-if simulator is not running (it needs the models: [models] enabled)."
            ) from None

    async def submit(
        self, scenarios: Sequence[Scenario], baseline: str | None, submitted_by: str
    ) -> SimulationJob:
        job: SimulationJob = await unwrapped(
            self._actor().submit.remote(list(scenarios), baseline, submitted_by)
        )
        return job

    async def list(self) -> builtins.list[SimulationJob]:
        jobs: builtins.list[SimulationJob] = await unwrapped(self._actor().jobs.remote())
        return jobs

    async def get(self, job_id: str) -> SimulationJob:
        job: SimulationJob = await unwrapped(self._actor().get.remote(job_id))
        return job

    async def cancel(self, job_id: str, actor: str) -> SimulationJob:
        job: SimulationJob = await unwrapped(self._actor().cancel.remote(job_id, actor))
        return job

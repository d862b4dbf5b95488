"""Bring the whole system up on Ray and take it down again.

Order matters: migrations first (every component assumes the schema), then the directory
(which starts shards), then the bridge workers (which route to shards), then the HTTP app.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import cast
from urllib.parse import urlparse

import ray
from ray import serve

from bms.services import ServiceUrls
from bms.settings import Settings
from models.batch_job import MODEL_JOB_NAME, JobParams, ModelJobSpec, start_model_job
from models.predictors import PREDICTORS
from models.registry import ModelRegistry
from models.training import TrainingPlan, ensure_served
from planners.planner import PlannerParams
from planners.resources import Depot, Technician
from planners.runtime import PlannerSpec, default_roster, start_planner
from serve.app import AppArgs, build_app
from serve.bridge_worker import bridge_actor_name, start_bridge_worker
from serve.mqtt_bridge import BridgeConfig
from serve.telemetry_contract import ContractLimits
from store import apply_migrations, open_postgres
from store.model_registry_store import ModelRegistryStore
from twins.runtime import DIRECTORY_NAME, PLANNER_NAME, TwinRuntimeSpec, start_directory
from twins.scoring import ScoringParams
from twins.shard import shard_actor_name
from twins.twin_table import TwinTableParams

__all__ = ["FleetSystem", "init_ray", "run_migrations"]

log = logging.getLogger(__name__)


def init_ray(settings: Settings, *, include_dashboard: bool = True) -> None:
    """Connect to the configured cluster, or start a local one sized for this machine."""
    if ray.is_initialized():
        return
    r = settings.ray
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    if r.address:
        ray.init(address=r.address, namespace=r.namespace, runtime_env={"env_vars": env}, logging_level=logging.WARNING)
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    ray.init(
        num_cpus=r.num_cpus,
        object_store_memory=r.object_store_memory_mb * 1024 * 1024,
        include_dashboard=include_dashboard,
        dashboard_host="127.0.0.1",
        dashboard_port=r.dashboard_port,
        namespace=r.namespace,
        runtime_env={"env_vars": env},
        logging_level=logging.WARNING,
        log_to_driver=True,
    )


async def run_migrations(postgres_url: str) -> list[str]:
    async with open_postgres(postgres_url, application_name="bms-migrate") as conn:
        return await apply_migrations(conn)


@dataclass
class FleetSystem:
    """The running system: directory + shards, bridge workers and the Serve app.

    Parameters
    ----------
    settings
        Validated settings.
    urls
        Where PostgreSQL, Redis and the broker are.
    shared_subscriptions
        Whether the broker supports ``$share/...``; without it only one bridge worker runs.
    mqtt_v5
        Whether to speak MQTT 5 to the broker (needed for the receive maximum).
    """

    settings: Settings
    urls: ServiceUrls
    shared_subscriptions: bool = True
    mqtt_v5: bool = True
    redis_prefix: str = "bms:"
    with_http: bool = True
    initial_shards: int = 1

    def __post_init__(self) -> None:
        self.bridge_names: list[str] = []

    @property
    def namespace(self) -> str:
        return self.settings.ray.namespace

    def spec(self) -> TwinRuntimeSpec:
        t = self.settings.twins
        return TwinRuntimeSpec(
            params=TwinTableParams(
                window_samples=t.window_samples,
                rated_capacity_ah=t.rated_capacity_ah,
                hot_threshold_c=t.hot_threshold_c,
                lstm_hidden_size=t.lstm_hidden_size,
            ),
            postgres_url=self.urls.postgres_url,
            redis_url=self.urls.redis_url,
            namespace=self.namespace,
            shard_size=t.shard_size,
            initial_shards=self.initial_shards,
            zone_cell_km=t.zone_cell_km,
            checkpoint_interval_s=t.checkpoint_interval_s,
            state_flush_interval_s=t.redis_flush_interval_s,
            redis_prefix=self.redis_prefix,
        )

    def bridge_configs(self) -> list[BridgeConfig]:
        b = self.settings.bridge
        u = urlparse(self.urls.mqtt_url)
        workers = b.workers if self.shared_subscriptions else 1
        if b.workers > 1 and not self.shared_subscriptions:
            log.warning("broker has no shared subscriptions: running 1 bridge worker, not %d", b.workers)
        return [
            BridgeConfig(
                host=u.hostname or "127.0.0.1",
                port=u.port or 1883,
                worker_index=i,
                shared_subscription=self.shared_subscriptions and workers > 1,
                mqtt_v5=self.mqtt_v5,
                share_group=b.share_group,
                client_id_prefix=f"{self.namespace}-bridge",
                batch_max_messages=b.batch_max_messages,
                batch_max_wait_ms=b.batch_max_wait_ms,
                max_inflight_batches=b.max_inflight_batches,
                receive_maximum=b.receive_maximum,
                session_expiry_s=b.session_expiry_s,
                limits=ContractLimits(
                    max_payload_bytes=b.max_payload_bytes,
                    max_future_skew_s=b.max_future_skew_s,
                    max_age_s=b.max_age_s,
                ),
            )
            for i in range(workers)
        ]

    def start(self) -> None:
        init_ray(self.settings)
        applied = asyncio.run(run_migrations(self.urls.postgres_url))
        if applied:
            log.info("applied migrations %s", applied)
        spec = self.spec()
        models = self.with_http and self.settings.models.enabled
        if models:
            asyncio.run(self._ensure_models())
            m = self.settings.models
            spec = dataclasses.replace(
                spec, models_enabled=True, score_interval_s=m.score_interval_s,
                scoring=ScoringParams(utc_offset_h=m.utc_offset_h),
            )  # fmt: skip
        directory = start_directory(spec)
        ray.get(directory.num_shards.remote())  # waits for restore + first shard
        handles = []
        for cfg in self.bridge_configs():
            h = start_bridge_worker(cfg, self.namespace, self.urls.postgres_url, self.urls.redis_url, self.redis_prefix)
            self.bridge_names.append(bridge_actor_name(cfg.worker_index))
            handles.append(h)
        ray.get([h.start.remote() for h in handles])
        if self.with_http:
            s = self.settings.serve
            serve.start(http_options={"host": s.http_host, "port": s.http_port})
            serve.run(
                build_app(AppArgs(
                    namespace=self.namespace,
                    postgres_url=self.urls.postgres_url,
                    redis_url=self.urls.redis_url,
                    redis_prefix=self.redis_prefix,
                    bridge_actor_names=self.bridge_names,
                    models=list(PREDICTORS) if models else [],
                    artifacts_root=str(self.settings.artifacts_dir().resolve()),
                    model_poll_interval_s=self.settings.models.poll_interval_s,
                    drift_threshold=self.settings.models.drift_threshold,
                )),
                name="bms",
                route_prefix="/",
            )
            if models:
                self._start_model_job()
                if self.settings.planner.enabled:
                    self._start_planner()

    async def _ensure_models(self) -> None:
        """Registry check at start: train (quick plan) what has never been trained."""
        async with open_postgres(self.urls.postgres_url, application_name="bms-models") as conn:
            registry = ModelRegistry(ModelRegistryStore(conn), self.settings.artifacts_dir())
            if not self.settings.models.train_on_start:
                return
            with tempfile.TemporaryDirectory(prefix="bms-train-") as work:
                trained = await ensure_served(
                    registry, TrainingPlan.quick(), Path(work), progress=lambda m: log.info("%s", m)
                )
            if trained:
                log.info("trained and promoted %s (quick plan; run `bms models train` for full)", trained)

    def _start_model_job(self) -> None:
        m = self.settings.models
        s = self.settings.sim
        start_model_job(ModelJobSpec(
            namespace=self.namespace,
            postgres_url=self.urls.postgres_url,
            redis_url=self.urls.redis_url,
            redis_prefix=self.redis_prefix,
            artifacts_root=str(self.settings.artifacts_dir().resolve()),
            weather_url=m.weather_url,
            params=JobParams(
                demand_interval_s=m.demand_interval_s, rescore_interval_s=m.rescore_interval_s,
                retrain_interval_s=m.retrain_interval_s, lat=s.center_lat, lon=s.center_lon,
            ),
        ))  # fmt: skip

    def planner_spec(self) -> PlannerSpec:
        """The planner's roster and knobs from ``[planner]`` (a default roster if none listed)."""
        p = self.settings.planner
        if p.technicians:
            techs = tuple(
                Technician(**{**t.model_dump(), "skills": frozenset(t.skills)}) for t in p.technicians
            )
            depots = tuple(Depot(**d.model_dump()) for d in p.depots)
        else:
            techs, depots = default_roster(
                self.settings.sim.center_lat, self.settings.sim.center_lon, p.default_technicians
            )
        return PlannerSpec(
            namespace=self.namespace,
            postgres_url=self.urls.postgres_url,
            technicians=techs,
            depots=depots,
            params=PlannerParams(
                plan_interval_s=p.plan_interval_s, urgent_delay_s=p.urgent_delay_s,
                solve_time_limit_s=p.solve_time_limit_s, candidates_per_shard=p.candidates_per_shard,
                utc_offset_h=self.settings.models.utc_offset_h,
            ),
        )  # fmt: skip

    def _start_planner(self) -> None:
        start_planner(self.planner_spec())

    def supervise_once(self) -> None:
        """Restart the bridge loop of any worker that Ray restarted after a crash."""
        for name in self.bridge_names:
            try:
                ray.get(ray.get_actor(name, namespace=self.namespace).start.remote(), timeout=30)
            except Exception:
                log.exception("bridge worker %s is not healthy", name)

    def stop(self) -> None:
        """Stop bridges first (no new work), then the app, shards and directory."""
        if not ray.is_initialized():
            return
        for name in self.bridge_names:
            try:
                h = ray.get_actor(name, namespace=self.namespace)
                ray.get(h.stop.remote(), timeout=10)
                ray.kill(h, no_restart=True)
            except Exception:
                log.exception("stopping %s", name)
        for name in (MODEL_JOB_NAME, PLANNER_NAME):
            with contextlib.suppress(ValueError):  # not started: models or planner were off
                ray.kill(ray.get_actor(name, namespace=self.namespace), no_restart=True)
        if self.with_http:
            try:
                serve.shutdown()  # type: ignore[no-untyped-call]  # ray: unannotated
            except Exception:
                log.exception("serve shutdown")
        try:
            d = ray.get_actor(DIRECTORY_NAME, namespace=self.namespace)
        except ValueError:
            return  # no directory: no shard was started either
        n = cast(int, ray.get(d.num_shards.remote(), timeout=10))
        for i in range(n):
            try:
                s = ray.get_actor(shard_actor_name(i), namespace=self.namespace)
            except ValueError:
                continue  # this shard never started
            try:
                ray.get(s.checkpoint.remote(), timeout=30)
            except Exception:
                log.exception("final checkpoint of shard %d", i)
            ray.kill(s, no_restart=True)
        ray.kill(d, no_restart=True)
        time.sleep(0.2)

"""Bring the whole system up on Ray and take it down again.

Order matters: migrations first (every component assumes the schema), then the models
(trained on the quick plan when nothing is registered), the directory (which starts
shards), the bridge workers (which route to shards), the Serve app (HTTP ingress and model
deployments), and last the model job and the planner, which call all of them, the alert
manager, and (with the models) the what-if simulation queue, whose runs call the models.

:class:`SystemSpec` is plain values; :func:`bms.system.system_spec` builds it from the
settings, so this module never reads a config file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import ray
from ray import serve
from ray.serve import Application

from models.registry import ModelRegistry
from models.training import TrainingPlan, ensure_served
from runtime.alerts import AlertsSpec, start_alerts
from runtime.app import AppArgs, build_app
from runtime.bridge import start_bridge_worker
from runtime.ingress import serve_controller_env
from runtime.model_job import ModelJobSpec, start_model_job
from runtime.names import (
    ALERTS_NAME,
    DIRECTORY_NAME,
    MODEL_JOB_NAME,
    PLANNER_NAME,
    SERVE_APP_NAME,
    SIMULATIONS_NAME,
    SUPERVISOR_NAME,
    bridge_actor_name,
    shard_actor_name,
)
from runtime.planner import PlannerSpec, start_planner
from runtime.simulations import SimulationsSpec, start_simulations
from runtime.supervisor import start_supervisor, supervise_once
from runtime.twins import TwinRuntimeSpec, start_directory
from serve.mqtt_bridge import BridgeConfig, BridgeStats
from store import apply_migrations, open_postgres
from store.model_registry_store import ModelRegistryStore

__all__ = [
    "FleetSystem",
    "HttpSpec",
    "RayOptions",
    "SystemSpec",
    "bridge_stats",
    "ensure_models",
    "init_ray",
    "run_migrations",
    "shutdown_ray",
]

log = logging.getLogger(__name__)

#: Every worker runs single-threaded math: 2 cores are shared by shards, replicas and the
#: bridge, and each library's own thread pool would fight the others for them.
_WORKER_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


@dataclass(frozen=True)
class RayOptions:
    """How to reach (or start) Ray: an existing cluster's address, or a local one's size.

    Built from ``[ray]`` by :func:`bms.system.ray_options` (the defaults live there).
    """

    address: str | None
    num_cpus: int
    object_store_memory_mb: int
    dashboard_port: int
    namespace: str
    include_dashboard: bool = True


def init_ray(opts: RayOptions) -> None:
    """Connect to the configured cluster, or start a local one sized for this machine.

    Ray's token authentication stays on: Ray's gRPC servers (GCS, raylets) listen on every
    interface whatever the node address, and a caller without the cluster's token can run
    no code there. Ray keeps a local cluster's token in ``~/.ray/auth_token`` (0600);
    ``RAY_AUTH_TOKEN`` / ``RAY_AUTH_TOKEN_PATH`` give a remote cluster's. The dashboard
    listens on 127.0.0.1 only.
    """
    if ray.is_initialized():
        return
    # Not set here when unset: Ray turns token mode on for a new local cluster itself, and
    # reads its C++ config at import, so setting the variable now would leave the two halves
    # of this process disagreeing (InvalidAuthToken at start).
    if os.environ.get("RAY_AUTH_MODE", "token") != "token":
        log.warning(
            "RAY_AUTH_MODE=%s turns off Ray's token authentication: anyone who can reach the "
            "cluster's ports can run code on it. Unset it unless the cluster is isolated.",
            os.environ["RAY_AUTH_MODE"],
        )
    env = {"env_vars": dict(_WORKER_ENV)}
    if opts.address:
        ray.init(
            address=opts.address,
            namespace=opts.namespace,
            runtime_env=env,
            logging_level=logging.WARNING,
        )
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    ray.init(
        num_cpus=opts.num_cpus,
        object_store_memory=opts.object_store_memory_mb * 1024 * 1024,
        include_dashboard=opts.include_dashboard,
        dashboard_host="127.0.0.1",
        dashboard_port=opts.dashboard_port,
        namespace=opts.namespace,
        runtime_env=env,
        logging_level=logging.WARNING,
        log_to_driver=True,
    )


def shutdown_ray() -> None:
    """Disconnect from Ray (and stop the local cluster this process started)."""
    if ray.is_initialized():
        ray.shutdown()


async def run_migrations(postgres_url: str) -> list[str]:
    """Apply the schema migrations that have not run yet; their versions."""
    async with open_postgres(postgres_url, application_name="bms-migrate") as conn:
        return await apply_migrations(conn)


@dataclass(frozen=True)
class HttpSpec:
    """The Serve application: where it listens and what it deploys.

    ``direct_ingress``: HAProxy forwards to the ingress replicas' own HTTP servers instead
    of Serve's Python proxy (:func:`runtime.ingress.serve_controller_env`).
    """

    host: str
    port: int
    app: AppArgs
    direct_ingress: bool = True
    #: Serve's ``proxy_location``: ``"EveryNode"`` or ``"HeadOnly"``.
    proxy_location: str = "EveryNode"


@dataclass(frozen=True)
class SystemSpec:
    """Everything the system is started with (built from the settings by :mod:`bms.system`).

    ``http`` None runs no Serve app (the ingest benchmark); ``model_job`` and ``planner``
    None leave those actors off. ``train_on_start`` trains the quick plan into the registry
    at ``artifacts_root`` when a served model has never been trained.
    """

    ray: RayOptions
    twins: TwinRuntimeSpec
    bridges: tuple[BridgeConfig, ...]
    http: HttpSpec | None = None
    model_job: ModelJobSpec | None = None
    planner: PlannerSpec | None = None
    alerts: AlertsSpec | None = None
    train_on_start: bool = False
    artifacts_root: Path | None = None
    redis_prefix: str = "bms:"
    bridge_names: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "bridge_names", tuple(bridge_actor_name(b.worker_index) for b in self.bridges)
        )
        if self.train_on_start and self.artifacts_root is None:
            raise ValueError("Expected artifacts_root with train_on_start, got None.")


async def bridge_stats(namespace: str, names: tuple[str, ...] | list[str]) -> list[BridgeStats]:
    """Counters of the named bridge workers (every one must be running)."""
    return [await ray.get_actor(n, namespace=namespace).stats.remote() for n in names]


async def ensure_models(postgres_url: str, artifacts_root: Path) -> None:
    """Registry check at start: train (quick plan) what has never been trained."""
    async with open_postgres(postgres_url, application_name="bms-models") as conn:
        registry = ModelRegistry(ModelRegistryStore(conn), artifacts_root)
        with tempfile.TemporaryDirectory(prefix="bms-train-") as work:
            trained = await ensure_served(
                registry, TrainingPlan.quick(), Path(work), progress=lambda m: log.info("%s", m)
            )
        if trained:
            log.info(
                "trained and promoted %s (quick plan; run `bms models train` for full)", trained
            )


class FleetSystem:
    """The running system: directory + shards, bridge workers, the Serve app, job, planner,
    alerts and the what-if queue."""

    def __init__(self, spec: SystemSpec) -> None:
        self.spec = spec

    @property
    def namespace(self) -> str:
        return self.spec.twins.namespace

    @property
    def bridge_names(self) -> list[str]:
        return list(self.spec.bridge_names)

    def start(self) -> None:
        """Start everything, the Serve app included, from this process (``bms run``)."""
        self.start_core()
        spec = self.spec
        if spec.http is not None:
            serve.start(
                proxy_location=spec.http.proxy_location,
                http_options={"host": spec.http.host, "port": spec.http.port},
                controller_options={
                    "runtime_env": {
                        "env_vars": serve_controller_env(direct_ingress=spec.http.direct_ingress)
                    }
                },
            )
            serve.run(self.serve_app(), name=SERVE_APP_NAME, route_prefix="/")
        self.start_services()

    def start_core(self) -> None:
        """Migrations, the models' first training, the directory with its shards, and the
        bridge workers: what the Serve app and the services below call."""
        spec = self.spec
        init_ray(spec.ray)
        applied = asyncio.run(run_migrations(spec.twins.postgres_url))
        if applied:
            log.info("applied migrations %s", applied)
        if spec.train_on_start:
            asyncio.run(self._ensure_models())
        directory = start_directory(spec.twins)
        ray.get(directory.num_shards.remote())  # waits for restore + first shard
        handles = [
            start_bridge_worker(
                cfg,
                self.namespace,
                spec.twins.postgres_url,
                spec.twins.redis_url,
                spec.redis_prefix,
            )
            for cfg in spec.bridges
        ]
        ray.get([h.start.remote() for h in handles])

    def serve_app(self) -> Application:
        """The Serve application (HTTP ingress and model deployments) of this system."""
        if self.spec.http is None:
            raise ValueError("Expected a system with HTTP (SystemSpec.http), got one without.")
        return build_app(self.spec.http.app)

    def start_services(self) -> None:
        """The model job, the planner, the alert manager and the what-if queue: they call
        the shards and the models, so they start last (a call made before the models are
        deployed fails and is retried on the service's schedule)."""
        spec = self.spec
        if spec.model_job is not None:
            start_model_job(spec.model_job)
        if spec.planner is not None:
            start_planner(spec.planner)
        if spec.alerts is not None:
            start_alerts(spec.alerts)
        if self.simulations_enabled:
            start_simulations(
                SimulationsSpec(namespace=self.namespace, serve_app_name=SERVE_APP_NAME)
            )

    @property
    def simulations_enabled(self) -> bool:
        """The what-if queue runs with the model deployments, which its runs call."""
        return self.spec.http is not None and bool(self.spec.http.app.models)

    async def _ensure_models(self) -> None:
        await ensure_models(self.spec.twins.postgres_url, cast(Path, self.spec.artifacts_root))

    def supervised_names(self) -> list[str]:
        """The actors whose loops start on a ``start()`` call: the bridge workers (their MQTT
        session), the planner (its schedule), the alert manager and the model job."""
        names = list(self.spec.bridge_names)
        if self.spec.planner is not None:
            names.append(PLANNER_NAME)
        if self.spec.alerts is not None:
            names.append(ALERTS_NAME)
        if self.spec.model_job is not None:
            names.append(MODEL_JOB_NAME)
        return names

    def supervise_once(self) -> None:
        """Start the loop of any supervised actor that Ray restarted after a crash
        (:func:`runtime.supervisor.supervise_once`)."""
        supervise_once(self.supervised_names(), self.namespace)

    def start_supervisor(self, period_s: float = 1.0) -> None:
        """Start the supervisor actor (:mod:`runtime.supervisor`), which gives restarted
        bridge workers, the planner, the alert manager and the model job their loops back
        every ``period_s``, until :meth:`stop`."""
        ray.get(start_supervisor(self.supervised_names(), self.namespace, period_s).rounds.remote())

    def _stop_supervisor(self) -> None:
        with contextlib.suppress(ValueError):  # never started
            h = ray.get_actor(SUPERVISOR_NAME, namespace=self.namespace)
            with contextlib.suppress(Exception):
                ray.get(h.stop.remote(), timeout=10)
            ray.kill(h, no_restart=True)

    def stop(self) -> None:
        """Stop bridges first (no new work), then the app, shards and directory."""
        if not ray.is_initialized():
            return
        self._stop_supervisor()  # it would start what is being stopped
        for name in self.spec.bridge_names:
            try:
                h = ray.get_actor(name, namespace=self.namespace)
                ray.get(h.stop.remote(), timeout=10)
                ray.kill(h, no_restart=True)
            except Exception:
                log.exception("stopping %s", name)
        self._stop_simulations()
        for name in (ALERTS_NAME, MODEL_JOB_NAME, PLANNER_NAME):
            with contextlib.suppress(ValueError):  # not started: models or planner were off
                ray.kill(ray.get_actor(name, namespace=self.namespace), no_restart=True)
        if self.spec.http is not None:
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

    def _stop_simulations(self) -> None:
        """Cancel the what-if jobs first (a cancelled run stops the actors it started), then
        kill the queue's actor; before the Serve app goes, since a run calls its models."""
        try:
            h = ray.get_actor(SIMULATIONS_NAME, namespace=self.namespace)
        except ValueError:
            return  # not started: models were off
        try:
            ray.get(h.aclose.remote(), timeout=30)
        except Exception:
            log.exception("closing the simulation queue")
        ray.kill(h, no_restart=True)

    def handle(self, name: str) -> Any:
        """The named actor of this system (``runtime.names``), for CLI commands and tests."""
        return ray.get_actor(name, namespace=self.namespace)

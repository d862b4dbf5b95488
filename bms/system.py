"""The composition root: every component's params built from the settings, one function each.

A knob is declared once, in :mod:`bms.settings`; the functions here are the only place that
maps a settings section onto the params object of the component that uses it. What runs the
components is :class:`runtime.system.FleetSystem`, started with the :class:`SystemSpec`
that :func:`system_spec` builds.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlparse

from alerts.ops_rules import OpsThresholds
from alerts.webhooks import UrlPolicy
from bms.services import ServiceUrls
from bms.settings import Settings, SimSettings
from contracts.telemetry import ContractLimits
from models.job_params import JobParams
from models.predictors import PREDICTORS
from planners.planner import PlannerParams
from planners.resources import Depot, Technician, default_roster
from planners.travel import OsrmTravel
from runtime.alerts import AlertsSpec
from runtime.app import AppArgs
from runtime.model_job import ModelJobSpec
from runtime.names import bridge_actor_name
from runtime.planner import PlannerSpec
from runtime.system import FleetSystem, HttpSpec, RayOptions, SystemSpec, init_ray, run_migrations
from runtime.twins import TwinRuntimeSpec
from serve.mqtt_bridge import BridgeConfig
from sim.fleet_params import FleetParams
from twins.alert_rules import TwinAlertParams
from twins.scoring import ScoringParams
from twins.twin_table import TwinTableParams

__all__ = [
    "FleetSystem",
    "bridge_configs",
    "fleet_params",
    "init_ray",
    "initial_shards",
    "model_job_spec",
    "planner_spec",
    "ray_options",
    "run_migrations",
    "system_spec",
    "twin_runtime_spec",
]

log = logging.getLogger(__name__)


def ray_options(settings: Settings, *, include_dashboard: bool = True) -> RayOptions:
    """``[ray]``: the cluster to join, or the local one to start."""
    r = settings.ray
    return RayOptions(
        address=r.address, num_cpus=r.num_cpus, object_store_memory_mb=r.object_store_memory_mb,
        dashboard_port=r.dashboard_port, namespace=r.namespace, include_dashboard=include_dashboard,
    )  # fmt: skip


def fleet_params(sim: SimSettings, **overrides: Any) -> FleetParams:
    """``[sim]``: the simulated fleet, plus keyword overrides.

    ``time_scale`` is not a fleet property: :func:`~sim.publisher.run_fleet` takes it.
    """
    values: dict[str, Any] = {
        "vehicles": sim.vehicles, "report_interval_s": sim.report_interval_s,
        "samples_per_message": sim.samples_per_message, "center_lat": sim.center_lat,
        "center_lon": sim.center_lon, "radius_km": sim.radius_km, "seed": sim.seed,
        "fault_rate_per_vehicle_day": sim.fault_rate_per_vehicle_day,
        "initial_faults": sim.initial_faults, "initial_fault_after_s": sim.initial_fault_after_s,
    }  # fmt: skip
    values.update(overrides)
    return FleetParams(**values)


def twin_runtime_spec(
    settings: Settings, urls: ServiceUrls, *, redis_prefix: str = "bms:", initial_shards: int = 1,
    models_enabled: bool = False,
) -> TwinRuntimeSpec:  # fmt: skip
    """``[twins]`` (and the scoring knobs of ``[models]``): shards and the directory."""
    t = settings.twins
    m = settings.models
    return TwinRuntimeSpec(
        params=TwinTableParams(
            window_samples=t.window_samples, rated_capacity_ah=t.rated_capacity_ah,
            hot_threshold_c=t.hot_threshold_c, lstm_hidden_size=t.lstm_hidden_size,
        ),
        postgres_url=urls.postgres_url, redis_url=urls.redis_url, namespace=settings.ray.namespace,
        shard_size=t.shard_size, initial_shards=initial_shards, zone_cell_km=t.zone_cell_km,
        checkpoint_interval_s=t.checkpoint_interval_s, state_flush_interval_s=t.redis_flush_interval_s,
        redis_prefix=redis_prefix, models_enabled=models_enabled, score_interval_s=m.score_interval_s,
        scoring=ScoringParams(utc_offset_h=m.utc_offset_h),
        alerts=twin_alert_params(settings) if settings.alerts.enabled else None,
        alert_interval_s=settings.alerts.interval_s, shard_resource=t.shard_resource,
    )  # fmt: skip


def twin_alert_params(settings: Settings) -> TwinAlertParams:
    """``[alerts]``: the thresholds the twins judge their samples by."""
    a = settings.alerts
    return TwinAlertParams(
        pack_temp_critical_c=a.pack_temp_critical_c, cell_imbalance_critical_v=a.cell_imbalance_critical_v,
        cell_sag_v=a.cell_sag_v, series_cells=a.series_cells, rul_horizon_cycles=a.rul_horizon_cycles,
        health_drop_per_day=a.health_drop_per_day, silent_after_s=a.silent_after_s,
    )  # fmt: skip


def alerts_spec(
    settings: Settings, urls: ServiceUrls, depots: tuple[Depot, ...], *, redis_prefix: str = "bms:",
    models: tuple[str, ...] = (),
) -> AlertsSpec:  # fmt: skip
    """``[alerts]``: the alert manager, its operations rules and its webhook URL policy."""
    a = settings.alerts
    return AlertsSpec(
        namespace=settings.ray.namespace, postgres_url=urls.postgres_url, redis_url=urls.redis_url,
        redis_prefix=redis_prefix, depots=depots, bridge_workers=settings.bridge.workers,
        ops=OpsThresholds(dead_letters_per_min=a.dead_letters_per_min, ingest_lag_p99_s=a.ingest_lag_p99_s),
        url_policy=UrlPolicy(allow_cidrs=tuple(a.webhook_allow_cidrs), allow_http=a.webhook_allow_http),
        ops_interval_s=a.ops_interval_s, models=models, zone_cell_km=settings.twins.zone_cell_km,
    )  # fmt: skip


def bridge_configs(
    settings: Settings, urls: ServiceUrls, *, shared_subscriptions: bool, mqtt_v5: bool
) -> tuple[BridgeConfig, ...]:
    """``[bridge]``: one config per worker (one worker when the broker cannot share).

    Every worker logs in as ``urls.mqtt_login`` (``bms-bridge`` on the embedded broker).
    """
    b = settings.bridge
    u = urlparse(urls.mqtt_url)
    login = urls.mqtt_login
    workers = b.workers if shared_subscriptions else 1
    if b.workers > 1 and not shared_subscriptions:
        log.warning("broker has no shared subscriptions: running 1 bridge worker, not %d", b.workers)
    return tuple(
        BridgeConfig(
            host=u.hostname or "127.0.0.1", port=u.port or 1883, worker_index=i,
            shared_subscription=shared_subscriptions and workers > 1, mqtt_v5=mqtt_v5,
            share_group=b.share_group, client_id_prefix=f"{settings.ray.namespace}-bridge",
            batch_max_messages=b.batch_max_messages, batch_max_wait_ms=b.batch_max_wait_ms,
            max_inflight_batches=b.max_inflight_batches, receive_maximum=b.receive_maximum,
            session_expiry_s=b.session_expiry_s,
            max_batch_attempts=b.max_batch_attempts,
            username=login.username if login else None, password=login.password if login else None,
            limits=ContractLimits(
                max_payload_bytes=b.max_payload_bytes, max_future_skew_s=b.max_future_skew_s,
                max_age_s=b.max_age_s,
            ),
        )
        for i in range(workers)
    )


def model_job_spec(settings: Settings, urls: ServiceUrls, *, redis_prefix: str = "bms:") -> ModelJobSpec:
    """``[models]`` periods: the scheduled model job."""
    m = settings.models
    s = settings.sim
    return ModelJobSpec(
        namespace=settings.ray.namespace, postgres_url=urls.postgres_url, redis_url=urls.redis_url,
        redis_prefix=redis_prefix, artifacts_root=str(settings.artifacts_dir().resolve()),
        weather_url=m.weather_url,
        params=JobParams(
            demand_interval_s=m.demand_interval_s, rescore_interval_s=m.rescore_interval_s,
            retrain_interval_s=m.retrain_interval_s, lat=s.center_lat, lon=s.center_lon,
        ),
    )  # fmt: skip


def planner_spec(settings: Settings, urls: ServiceUrls) -> PlannerSpec:
    """``[planner]``: the roster (a default one if none is listed) and the planner's knobs."""
    p = settings.planner
    if p.technicians:
        techs = tuple(Technician(**{**t.model_dump(), "skills": frozenset(t.skills)}) for t in p.technicians)
        depots = tuple(Depot(**d.model_dump()) for d in p.depots)
    else:
        techs, depots = default_roster(settings.sim.center_lat, settings.sim.center_lon, p.default_technicians)
    travel = (
        None if p.osrm_url is None
        else OsrmTravel(p.osrm_url, profile=p.osrm_profile, max_table_size=p.osrm_max_table_size)
    )  # fmt: skip
    return PlannerSpec(
        namespace=settings.ray.namespace, postgres_url=urls.postgres_url, technicians=techs, depots=depots,
        travel=travel,
        params=PlannerParams(
            plan_interval_s=p.plan_interval_s, urgent_delay_s=p.urgent_delay_s,
            urgent_improve_s=p.urgent_improve_s,
            solve_time_limit_s=p.solve_time_limit_s, routing_engine=p.routing_engine,
            candidates_per_shard=p.candidates_per_shard,
            utc_offset_h=settings.models.utc_offset_h, max_jobs_per_round=p.max_jobs_per_round,
        ),
    )  # fmt: skip


def initial_shards(settings: Settings) -> int:
    """Shards to start up front: enough for ``[twins] fleet_size`` batteries, or for the
    simulated fleet when that is unset (``bms run``). More start as batteries arrive."""
    expected = settings.twins.fleet_size or settings.sim.vehicles
    return max(1, -(-expected // settings.twins.shard_size))


def system_spec(
    settings: Settings,
    urls: ServiceUrls,
    *,
    shared_subscriptions: bool = True,
    mqtt_v5: bool = True,
    redis_prefix: str = "bms:",
    with_http: bool = True,
    initial_shards: int = 1,
    include_dashboard: bool = True,
) -> SystemSpec:
    """The whole system from the settings.

    Parameters
    ----------
    shared_subscriptions
        Whether the broker supports ``$share/...``; without it only one bridge worker runs.
    mqtt_v5
        Whether to speak MQTT 5 to the broker (needed for the receive maximum).
    with_http
        Run the Serve app; the models (and so the model job and planner) need it.
    """
    models = with_http and settings.models.enabled
    bridges = bridge_configs(settings, urls, shared_subscriptions=shared_subscriptions, mqtt_v5=mqtt_v5)
    http = None
    if with_http:
        m = settings.models
        http = HttpSpec(
            host=settings.serve.http_host, port=settings.serve.http_port,
            proxy_location=settings.serve.proxy_location,
            app=AppArgs(
                namespace=settings.ray.namespace, postgres_url=urls.postgres_url, redis_url=urls.redis_url,
                redis_prefix=redis_prefix,
                bridge_actor_names=[bridge_actor_name(b.worker_index) for b in bridges],
                models=list(PREDICTORS) if models else [],
                artifacts_root=str(settings.artifacts_dir().resolve()),
                model_poll_interval_s=m.poll_interval_s, drift_threshold=m.drift_threshold,
                lstm_num_gpus=m.num_gpus, lstm_dtype=m.lstm_dtype,
                alerts=settings.alerts.enabled,
                webhook_allow_cidrs=settings.alerts.webhook_allow_cidrs,
                webhook_allow_http=settings.alerts.webhook_allow_http,
            ),
        )  # fmt: skip
    return SystemSpec(
        ray=ray_options(settings, include_dashboard=include_dashboard),
        twins=twin_runtime_spec(
            settings, urls, redis_prefix=redis_prefix, initial_shards=initial_shards, models_enabled=models
        ),
        bridges=bridges,
        http=http,
        model_job=model_job_spec(settings, urls, redis_prefix=redis_prefix) if models else None,
        planner=planner_spec(settings, urls) if models and settings.planner.enabled else None,
        alerts=(
            alerts_spec(
                settings, urls, planner_spec(settings, urls).depots, redis_prefix=redis_prefix,
                models=tuple(PREDICTORS) if models else (),
            )
            if with_http and settings.alerts.enabled else None
        ),
        train_on_start=models and settings.models.train_on_start,
        artifacts_root=settings.artifacts_dir(),
        redis_prefix=redis_prefix,
    )

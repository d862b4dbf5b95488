"""Validated settings for every component, from a TOML file and the environment.

One section per component (``[twins]``, ``[bridge]``, ``[serve]``, ``[ray]``, ``[sim]``,
``[models]``, ``[planner]``, ``[alerts]``); a missing section or key falls back to its default, an unknown
one is an error. Hosts and secrets come from the environment only: ``BMS_POSTGRES_URL``,
``BMS_REDIS_URL`` and ``BMS_MQTT_URL``. When one is unset, ``bms run`` starts an embedded
server for it. On an external broker the bridge logs in with ``BMS_MQTT_USERNAME`` and
``BMS_MQTT_PASSWORD`` (the embedded broker makes its own credentials: ``bms.broker_auth``).

A knob is declared once: where a component's params object already has the knob, the
section takes its default from there (``TwinTableParams.window_samples``), and adds only
what a config file needs on top (bounds, a description). :mod:`bms.system` builds each
component's params from its section, one function each.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from alerts.ops_rules import OpsThresholds
from contracts.redaction import REDACTED, redact_text, redact_url
from contracts.telemetry import ContractLimits
from models.drift import MAJOR_PSI
from models.inference_device import LstmDtype
from models.job_params import JobParams
from models.registry import POLL_INTERVAL_S
from planners.planner import DEFAULT_MAX_JOBS_PER_ROUND, PlannerParams
from serve.mqtt_bridge import BridgeConfig
from sim.fleet_params import FleetParams
from twins.alert_rules import TwinAlertParams
from twins.scoring import ScoringParams
from twins.twin_table import TwinTableParams

__all__ = [
    "AlertSettings",
    "BridgeSettings",
    "RayClusterSettings",
    "ServeSettings",
    "Settings",
    "SettingsError",
    "SimSettings",
    "TwinSettings",
]

_STRICT = ConfigDict(extra="forbid", frozen=True)


def _shown(err: Any) -> str:
    """The rejected input of a validation error, as safe to print: secrets redacted."""
    if any("password" in str(p) for p in err["loc"]):
        return repr(REDACTED)
    return redact_text(repr(err.get("input")))


class SettingsError(ValueError):
    """A config file or environment variable that does not validate."""


class TwinSettings(BaseModel):
    model_config = _STRICT
    window_samples: int = Field(TwinTableParams.window_samples, ge=4, le=4096, description="Samples kept per twin")
    # A shard process costs ~80 MB before its first twin (~130 MB with the Serve model
    # client) and ~10 KB per twin (`bms bench shard-memory`, `bms bench ingest`; see
    # BENCHMARKS.md): at 25,000 twins the fixed part is a quarter of a shard, and a
    # checkpoint (the whole table, one PostgreSQL row) stays a few hundred MB.
    shard_size: int = Field(
        25_000, ge=1, le=1_000_000, description="Twins hosted by one TwinShard actor"
    )
    checkpoint_interval_s: float = Field(60.0, gt=0, description="Shard checkpoint period")
    redis_flush_interval_s: float = Field(1.0, gt=0, description="Latest-state push period")
    lstm_hidden_size: int = Field(TwinTableParams.lstm_hidden_size, ge=1, le=1024, description="LSTM (h, c) width per twin")
    rated_capacity_ah: float = Field(TwinTableParams.rated_capacity_ah, gt=0, le=200, description="Rated pack capacity")
    hot_threshold_c: float = Field(TwinTableParams.hot_threshold_c, description="Above this a pack counts as hot")
    zone_cell_km: float = Field(1.0, gt=0, le=100, description="Side of a square fleet zone")
    shard_resource: str | None = Field(
        None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Custom Ray resource each shard takes one unit of (cluster.yaml: bms_twin_shard); None on one machine",
    )  # fmt: skip
    fleet_size: int = Field(
        0, ge=0, le=100_000_000,
        description="Batteries the fleet is expected to have: ceil(fleet_size / shard_size) shards start up "
        "front (more start as batteries arrive); 0: as many as the simulated fleet needs",
    )  # fmt: skip


class BridgeSettings(BaseModel):
    model_config = _STRICT
    workers: int = Field(
        1, ge=1, le=64, description="Bridge actors; >1 needs a broker with $share support"
    )
    share_group: str = Field(BridgeConfig.share_group, pattern=r"^[A-Za-z0-9_-]+$")
    batch_max_messages: int = Field(BridgeConfig.batch_max_messages, ge=1, le=100_000)
    batch_max_wait_ms: float = Field(BridgeConfig.batch_max_wait_ms, ge=0, le=10_000)
    max_inflight_batches: int = Field(
        BridgeConfig.max_inflight_batches, ge=1, le=1024, description="Per worker, then backpressure"
    )
    receive_maximum: int = Field(
        BridgeConfig.receive_maximum, ge=1, le=65535, description="Unacked QoS 1 messages the broker may send us"
    )
    max_payload_bytes: int = Field(ContractLimits.max_payload_bytes, ge=256)
    max_future_skew_s: float = Field(ContractLimits.max_future_skew_s, ge=0)
    max_age_s: float = Field(ContractLimits.max_age_s, gt=0)
    session_expiry_s: int = Field(BridgeConfig.session_expiry_s, ge=0, description="Broker keeps our queue this long")
    max_batch_attempts: int = Field(
        BridgeConfig.max_batch_attempts, ge=1, le=100,
        description="Routing tries per batch (backoff up to 5 s between), then its messages are dead-lettered",
    )


class ServeSettings(BaseModel):
    model_config = _STRICT
    http_host: str = "127.0.0.1"
    http_port: int = Field(8000, ge=1, le=65535)
    proxy_location: Literal["HeadOnly", "EveryNode"] = Field(
        "EveryNode",
        description="Where Serve's HTTP proxies run: every node (a load balancer in front spreads "
        "clients) or the head only (one address; also what several nodes on one machine need)",
    )


class RayClusterSettings(BaseModel):
    model_config = _STRICT
    address: str | None = Field(None, description="Existing cluster; None starts a local one")
    num_cpus: int = Field(2, ge=1)
    object_store_memory_mb: int = Field(512, ge=78)
    dashboard_port: int = Field(8265, ge=1, le=65535)
    namespace: str = Field("bms", pattern=r"^[A-Za-z0-9_-]+$")


class SimSettings(BaseModel):
    model_config = _STRICT
    vehicles: int = Field(FleetParams.vehicles, ge=1, le=1_000_000)
    report_interval_s: float = Field(FleetParams.report_interval_s, gt=0, description="While riding; parked is 12x longer")
    samples_per_message: int = Field(FleetParams.samples_per_message, ge=1, le=500)
    center_lat: float = Field(FleetParams.center_lat, ge=-90, le=90)
    center_lon: float = Field(FleetParams.center_lon, ge=-180, le=180)
    radius_km: float = Field(FleetParams.radius_km, gt=0)
    seed: int = FleetParams.seed
    time_scale: float = Field(1.0, gt=0, le=3600, description="Simulated seconds per real second")
    # A lively demo, not a noisy one: a fresh fleet shows alerts once its twins know their
    # packs (an hour in), then
    # about two new faults a day per 1,000 vehicles (FleetParams' own defaults are 0).
    fault_rate_per_vehicle_day: float = Field(
        0.002, ge=0, le=100, description="Battery faults per vehicle and day (Poisson)"
    )
    initial_faults: int = Field(
        3, ge=0, le=1_000_000, description="Batteries of a fresh fleet that fail soon after initial_fault_after_s"
    )
    # A twin judges its pack against what it learned from the pack's first hour
    # (twins/pack_watch.py): a fault from the first minutes would be learned as normal.
    initial_fault_after_s: float = Field(
        3600.0, ge=0, le=86_400, description="Initial faults begin within 10 min after this (simulated s)"
    )


class ModelSettings(BaseModel):
    model_config = _STRICT
    enabled: bool = Field(True, description="Deploy the models and score the twins")
    artifacts_dir: Path | None = Field(None, description="Registry artifacts; default <data_dir>/models")
    score_interval_s: float = Field(10.0, gt=0, le=3600, description="Shard scoring tick")
    poll_interval_s: float = Field(POLL_INTERVAL_S, gt=0, le=3600, description="Replicas re-read the registry")
    drift_threshold: float = Field(MAJOR_PSI, gt=0, description="PSI above which a feature alerts")
    demand_interval_s: float = Field(JobParams.demand_interval_s, gt=0, description="Zone demand forecast period")
    rescore_interval_s: float = Field(JobParams.rescore_interval_s, gt=0, description="Fleet rescoring and health trends")
    retrain_interval_s: float = Field(JobParams.retrain_interval_s, gt=0, description="Refit on fleet history (candidates)")
    weather_url: str | None = Field(None, description="Open-Meteo-style API; None: simulated weather")
    train_on_start: bool = Field(True, description="Train (quick plan) when nothing is registered")
    utc_offset_h: float = Field(ScoringParams.utc_offset_h, ge=-12, le=14, description="Fleet local time, for hour of day")
    # The LSTM families (degradation, demand) only: a replica runs its batched step on the one
    # GPU it sees, so more than 1 would reserve GPUs it never uses; a fraction lets both
    # families share one card. Without a CUDA build of torch they fall back to the CPU.
    num_gpus: float = Field(0.0, ge=0, description="GPUs per LSTM replica (0: CPU), at most 1")
    lstm_dtype: LstmDtype = Field("float32", description="Float type the LSTM replicas run in")

    @field_validator("num_gpus")
    @classmethod
    def _one_gpu_at_most(cls, v: float) -> float:
        if v > 1:
            raise ValueError(
                "Expected num_gpus in [0, 1] (an LSTM replica runs on one GPU; a fraction shares one)"
            )
        return v


Skill = Literal["swap", "replace", "inspect"]


class TechnicianSettings(BaseModel):
    model_config = _STRICT
    id: str = Field(min_length=1)
    depot_id: str = Field(min_length=1)
    shift_start_h: float = Field(ge=0, le=48)
    shift_end_h: float = Field(ge=0, le=48)
    van_capacity: int = Field(30, ge=0, description="Charged batteries the van carries")
    skills: list[Skill] = Field(default_factory=lambda: list[Skill](["swap"]))
    fixed_cost_m: int = Field(2000, ge=0, description="Cost of sending the van out, metres of driving")


class DepotSettings(BaseModel):
    model_config = _STRICT
    id: str = Field(min_length=1)
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    charged_stock: int = Field(ge=0, description="Charged batteries on the shelf")


class PlannerSettings(BaseModel):
    model_config = _STRICT
    enabled: bool = Field(True, description="Run the planner actor (needs the models)")
    plan_interval_s: float = Field(PlannerParams.plan_interval_s, gt=0, description="Scheduled re-plan period")
    urgent_delay_s: float = Field(PlannerParams.urgent_delay_s, ge=0, description="Re-plan this soon after an urgent event")
    urgent_improve_s: float = Field(
        PlannerParams.urgent_improve_s, ge=0, le=60,
        description="Search after an urgent round's insertion pass; a full round follows in the background",
    )  # fmt: skip
    solve_time_limit_s: float = Field(PlannerParams.solve_time_limit_s, gt=0, le=3600, description="Search budget per plan")
    routing_engine: Literal["ortools", "pyvrp"] = Field(
        PlannerParams.routing_engine,  # type: ignore[arg-type]  # one of ENGINES, checked by PlannerParams
        description="Routing engine of the technician plan (planners/routing.py)",
    )
    osrm_url: str | None = Field(
        None, pattern=r"^https?://", description="OSRM server for road travel times (BMS_OSRM_URL); None: haversine x 1.3 at 20 km/h",
    )  # fmt: skip
    osrm_profile: str = Field("driving", pattern=r"^[A-Za-z0-9_-]+$", description="OSRM profile in /table/v1/{profile}")
    osrm_max_table_size: int = Field(100, ge=2, le=100_000, description="The OSRM server's --max-table-size")
    candidates_per_shard: int = Field(PlannerParams.candidates_per_shard, ge=1, description="Top batteries each shard reports")
    # Bounded in production: a round's travel matrices are n x n and are pickled to the
    # solver process, so 4,046 flagged twins once took the planner past 3 GB. The default
    # (600) is a day of 20 vans of 30 batteries (PlannerParams says more); the queue keeps
    # the rest. The upper bound keeps a typo from asking for tens of GB.
    max_jobs_per_round: int = Field(
        DEFAULT_MAX_JOBS_PER_ROUND, ge=1, le=5000,
        description="Most jobs one planning round routes (under way, critical, then most valuable); the rest stay queued",
    )  # fmt: skip
    default_technicians: int = Field(6, ge=1, le=500, description="Roster size when none is listed")
    technicians: list[TechnicianSettings] = Field(default_factory=list)
    depots: list[DepotSettings] = Field(default_factory=list)


class AlertSettings(BaseModel):
    model_config = _STRICT
    enabled: bool = Field(True, description="Run the alert manager and the twins' alert rules")
    interval_s: float = Field(10.0, gt=0, le=3600, description="Each shard's alert tick (also right after scoring)")
    ops_interval_s: float = Field(30.0, gt=0, le=3600, description="Operations rules period")
    pack_temp_critical_c: float = Field(TwinAlertParams.pack_temp_critical_c, gt=0, lt=150)
    cell_imbalance_critical_v: float = Field(TwinAlertParams.cell_imbalance_critical_v, gt=0, lt=2)
    cell_sag_v: float = Field(TwinAlertParams.cell_sag_v, gt=0, lt=5, description="Cell group under load")
    series_cells: int = Field(TwinAlertParams.series_cells, ge=1, le=64, description="Cell groups per pack")
    rul_horizon_cycles: float = Field(TwinAlertParams.rul_horizon_cycles, gt=0, description="Warn below this RUL to 80 %")
    health_drop_per_day: float = Field(TwinAlertParams.health_drop_per_day, gt=0, description="Health points per day")
    silent_after_s: float = Field(TwinAlertParams.silent_after_s, gt=0, description="A battery in a vehicle this quiet alerts")
    dead_letters_per_min: float = Field(OpsThresholds.dead_letters_per_min, gt=0, description="Per reason")
    ingest_lag_p99_s: float = Field(OpsThresholds.ingest_lag_p99_s, gt=0)
    webhook_allow_cidrs: list[str] = Field(
        default_factory=list, description="Private ranges webhooks may reach (default: public addresses only)"
    )
    webhook_allow_http: bool = Field(False, description="Allow http:// webhook URLs (default https only)")

    @field_validator("webhook_allow_cidrs")
    @classmethod
    def _cidrs(cls, v: list[str]) -> list[str]:
        import ipaddress

        for cidr in v:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(f"Expected networks like '10.0.0.0/8', got {cidr!r}") from None
        return v


class Settings(BaseModel):
    """Everything a process of the system needs to know."""

    model_config = _STRICT
    # Out of reprs (a URL may carry a password); see contracts.redaction for printing one.
    postgres_url: str | None = Field(None, repr=False)
    redis_url: str | None = Field(None, repr=False)
    mqtt_url: str | None = Field(None, repr=False)
    # The bridge's login on an external broker (BMS_MQTT_USERNAME / BMS_MQTT_PASSWORD); the
    # embedded broker ignores them and gives the bridge its own (bms.broker_auth).
    mqtt_username: str | None = Field(None, min_length=1)
    mqtt_password: SecretStr | None = None
    data_dir: Path = Path(".bms-data")
    twins: TwinSettings = TwinSettings()
    bridge: BridgeSettings = BridgeSettings()
    serve: ServeSettings = ServeSettings()
    ray: RayClusterSettings = RayClusterSettings()
    sim: SimSettings = SimSettings()
    models: ModelSettings = ModelSettings()
    planner: PlannerSettings = PlannerSettings()
    alerts: AlertSettings = AlertSettings()

    @field_validator("mqtt_url")
    @classmethod
    def _mqtt_scheme(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("mqtt://", "tcp://")):
            raise ValueError(f"Expected an mqtt://host:port URL, got {redact_url(v)!r}")
        return v

    def artifacts_dir(self) -> Path:
        """Where the model registry keeps artifacts."""
        return self.models.artifacts_dir or self.data_dir / "models"

    @classmethod
    def load(cls, path: Path | None = None, env: dict[str, str] | None = None) -> Settings:
        """Read ``path`` (TOML, optional) and the ``BMS_*`` environment.

        Raises
        ------
        SettingsError
            Naming the file and each offending key.
        """
        env = dict(os.environ) if env is None else env
        data: dict[str, Any] = {}
        if path is None and env.get("BMS_CONFIG"):
            path = Path(env["BMS_CONFIG"])
        if path is not None:
            try:
                data = tomllib.loads(path.read_text())
            except FileNotFoundError:
                raise SettingsError(f"Config file {path} does not exist.") from None
            except tomllib.TOMLDecodeError as err:
                raise SettingsError(f"Config file {path} is not valid TOML: {err}") from None
        from_env: dict[str, str] = {}
        weather = env.get("BMS_WEATHER_URL")
        if weather:
            data.setdefault("models", {})["weather_url"] = weather
        osrm = env.get("BMS_OSRM_URL")
        if osrm:
            data.setdefault("planner", {})["osrm_url"] = osrm
        for key in ("postgres_url", "redis_url", "mqtt_url", "mqtt_username", "mqtt_password", "data_dir"):
            value = env.get(f"BMS_{key.upper()}")
            if value:
                data[key] = value
                from_env[key] = f"BMS_{key.upper()}"
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            where = f"config file {path}" if path else "environment"
            # Name the variable for values taken from the environment: the header names the
            # config file whenever there is one, which sent people looking for mqtt_url there.
            lines = [
                f"  {'.'.join(str(p) for p in e['loc'])}: {e['msg']} (got {_shown(e)})"
                + (f" from {from_env[str(e['loc'][0])]}" if e["loc"] and str(e["loc"][0]) in from_env else "")
                for e in err.errors(include_url=False)
            ]
            raise SettingsError(f"Invalid settings in {where}:\n" + "\n".join(lines)) from None

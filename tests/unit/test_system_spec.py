"""Tests for :mod:`bms.system`: every component's params built from the settings, no Ray."""

from __future__ import annotations

from bms.services import ServiceUrls
from bms.settings import Settings, SimSettings
from bms.system import fleet_params, system_spec
from runtime.names import bridge_actor_name
from sim.fleet_params import FleetParams

_URLS = ServiceUrls("postgresql://127.0.0.1/x", "redis://127.0.0.1:6379/0", "mqtt://127.0.0.1:1884")


def test_fleet_from_default_settings() -> None:
    """An empty [sim] section gives the default fleet, with the demo's faults switched on
    (FleetParams' own defaults have none)."""
    assert fleet_params(SimSettings()) == FleetParams(
        initial_faults=3, initial_fault_after_s=3600.0, fault_rate_per_vehicle_day=0.002
    )


def test_fleet_from_full_settings_and_overrides() -> None:
    """Every [sim] key except time_scale lands in FleetParams; overrides win."""
    settings = SimSettings(
        vehicles=12, report_interval_s=2.0, samples_per_message=3, center_lat=48.1, center_lon=11.6,
        radius_km=3.0, seed=99, time_scale=10.0, fault_rate_per_vehicle_day=0.5, initial_faults=7,
    )  # fmt: skip
    params = fleet_params(settings, vehicle_id_prefix="x-")
    assert (params.fault_rate_per_vehicle_day, params.initial_faults) == (0.5, 7)
    assert (params.vehicles, params.report_interval_s, params.samples_per_message) == (12, 2.0, 3)
    assert (params.center_lat, params.center_lon, params.radius_km, params.seed) == (48.1, 11.6, 3.0, 99)
    assert params.vehicle_id_prefix == "x-"


def test_default_system_spec() -> None:
    """Default settings: HTTP app with every model, the model job and the planner."""
    spec = system_spec(Settings(), _URLS)
    assert spec.twins.shard_size == Settings().twins.shard_size
    assert spec.twins.models_enabled and spec.http is not None and spec.http.app.models
    assert spec.model_job is not None and spec.planner is not None
    assert spec.http.app.bridge_actor_names == [bridge_actor_name(0)]
    assert spec.bridges[0].port == 1884 and spec.train_on_start


def test_every_settings_section_reaches_its_component() -> None:
    """A full config: each knob arrives in the params of the component that uses it."""
    settings = Settings.model_validate({
        "twins": {"shard_size": 123, "window_samples": 32, "zone_cell_km": 2.0},
        "bridge": {"workers": 3, "batch_max_messages": 77, "max_age_s": 60.0},
        "ray": {"namespace": "ns1", "num_cpus": 1},
        "models": {
            "score_interval_s": 5.0, "utc_offset_h": 2.0, "retrain_interval_s": 100.0, "num_gpus": 0.5,
            "lstm_dtype": "bfloat16",
        },
        "planner": {
            "solve_time_limit_s": 3.0, "default_technicians": 2, "max_jobs_per_round": 250,
            "urgent_improve_s": 0.5, "routing_engine": "pyvrp",
        },
        "serve": {"http_port": 8123},
    })
    spec = system_spec(settings, _URLS, shared_subscriptions=True, redis_prefix="p:")
    assert (spec.twins.shard_size, spec.twins.params.window_samples, spec.twins.zone_cell_km) == (123, 32, 2.0)
    assert spec.twins.score_interval_s == 5.0 and spec.twins.scoring.utc_offset_h == 2.0
    assert len(spec.bridges) == 3 and spec.bridges[2].batch_max_messages == 77
    assert spec.bridges[0].limits.max_age_s == 60.0
    assert spec.ray.namespace == "ns1" == spec.twins.namespace and spec.ray.num_cpus == 1
    assert spec.model_job is not None and spec.model_job.params.retrain_interval_s == 100.0
    assert spec.planner is not None and len(spec.planner.technicians) == 2
    assert spec.planner.params.solve_time_limit_s == 3.0 and spec.planner.params.utc_offset_h == 2.0
    assert spec.planner.params.max_jobs_per_round == 250
    assert spec.planner.params.urgent_improve_s == 0.5 and spec.planner.params.routing_engine == "pyvrp"
    assert spec.http is not None and spec.http.port == 8123 and spec.redis_prefix == "p:"
    assert (spec.http.app.lstm_num_gpus, spec.http.app.lstm_dtype) == (0.5, "bfloat16")


def test_production_planner_rounds_are_bounded() -> None:
    """An empty config caps a round's jobs (a day of 20 vans of 30): thousands of flagged
    twins must not reach the solver at once."""
    spec = system_spec(Settings(), _URLS)
    assert Settings().planner.max_jobs_per_round == 600
    assert spec.planner is not None and spec.planner.params.max_jobs_per_round == 600


def test_without_shared_subscriptions_one_bridge_runs() -> None:
    """A broker without $share gets one bridge worker, whatever [bridge] workers says."""
    settings = Settings.model_validate({"bridge": {"workers": 4}})
    assert len(system_spec(settings, _URLS, shared_subscriptions=False).bridges) == 1


def test_models_off_runs_no_job_and_no_planner() -> None:
    """[models] enabled = false: no model deployments, no job, no planner, no training."""
    spec = system_spec(Settings.model_validate({"models": {"enabled": False}}), _URLS)
    assert spec.model_job is None and spec.planner is None and not spec.train_on_start
    assert spec.http is not None and spec.http.app.models == []


def test_settings_defaults_are_the_components_defaults() -> None:
    """Each knob is declared once: an empty config gives every component its own defaults."""
    from models.job_params import JobParams
    from planners.planner import PlannerParams
    from twins.scoring import ScoringParams
    from twins.twin_table import TwinTableParams

    spec = system_spec(Settings(), _URLS)
    assert spec.twins.params == TwinTableParams()
    assert spec.twins.scoring == ScoringParams()
    assert spec.planner is not None and spec.planner.params == PlannerParams()
    assert spec.model_job is not None and spec.model_job.params == JobParams()


def test_an_osrm_server_replaces_haversine_travel() -> None:
    """BMS_OSRM_URL (or [planner] osrm_url) gives the planner OSRM's road table; unset, the
    planner keeps its haversine default; a URL that is not http(s) is refused."""
    import pytest

    from bms.settings import SettingsError
    from planners.travel import OsrmTravel

    assert system_spec(Settings(), _URLS).planner.travel is None  # type: ignore[union-attr]
    settings = Settings.load(env={"BMS_OSRM_URL": "http://osrm.internal:5000"})
    settings = settings.model_copy(update={"planner": settings.planner.model_copy(update={"osrm_max_table_size": 5000})})
    travel = system_spec(settings, _URLS).planner.travel  # type: ignore[union-attr]
    assert travel == OsrmTravel("http://osrm.internal:5000", max_table_size=5000)
    with pytest.raises(SettingsError, match="osrm_url"):
        Settings.load(env={"BMS_OSRM_URL": "osrm.internal:5000"})

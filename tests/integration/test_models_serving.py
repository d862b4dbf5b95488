"""The models in the running system: Serve deployments, live twins scored, registry changes
picked up without a restart, A/B split by battery hash, drift alerts, the batch job."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import ray
from ray import serve

from bms.settings import Settings
from contracts.access import Role
from contracts.model_registry import ServingConfig
from models.ab_split import route_versions
from models.registry import ModelRegistry, data_fingerprint
from runtime.model_deployments import ScoreRequest, model_deployment_name
from runtime.names import MODEL_JOB_NAME
from sim.ageing import LifetimeSimulator
from store import open_postgres
from store.model_registry_store import ModelRegistryStore
from twins.features import HEALTH_FEATURE_NAMES, TwinCounters, health_features

from .conftest import ServiceHandles, api_client, issue_token
from .test_system import _ids, _message, _publish, _sample, _wait

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def api(fleet_system: Any, system_settings: Settings, api_tokens: dict[Role, str]) -> httpx.Client:
    """An ops client (models, A/B)."""
    with api_client(system_settings, api_tokens[Role.OPS], 60) as c:
        _wait(lambda: c.get("/healthz").status_code == 200, 120, "the HTTP app")
        yield c


@pytest.fixture(scope="module")
def fleet_api(fleet_system: Any, system_settings: Settings, api_tokens: dict[Role, str]) -> httpx.Client:
    """A fleet manager's client (twins, top-N)."""
    with api_client(system_settings, api_tokens[Role.FLEET_MANAGER], 60) as c:
        yield c


def _health_handle() -> Any:
    return serve.get_deployment_handle(model_deployment_name("health"), app_name="bms")


def _features(n: int) -> np.ndarray:
    sample = LifetimeSimulator(seed=9).run(n // 2 + 1, 600, 2)
    return health_features(TwinCounters.from_lifetime(sample))[:n]


def _call(ids: list[str], x: np.ndarray) -> dict[str, np.ndarray]:
    async def go() -> dict[str, np.ndarray]:
        return await _health_handle().remote(ScoreRequest(ids, {"features": x}))  # type: ignore[no-any-return]

    return asyncio.run(go())


def _register_copy(services: ServiceHandles, settings: Settings, name: str) -> int:
    """Register the production artifact of ``name`` again, as a new candidate version."""

    async def go() -> int:
        async with open_postgres(services.urls.postgres_url) as conn:
            reg = ModelRegistry(ModelRegistryStore(conn), settings.artifacts_dir())
            serving = await reg.store.serving(name)
            assert serving is not None
            src = await reg.artifact_dir(name, serving.production_version)
            v = await reg.register(name, src, {"copy_of": float(serving.production_version)}, {}, data_fingerprint(np.arange(3)), "it")
            return v.version

    return asyncio.run(go())


def test_every_model_is_deployed_and_in_production(api: httpx.Client) -> None:
    """A fresh system trains, registers and promotes all five families, and serves them."""
    models = {m["name"]: m for m in api.get("/api/v1/models").json()["models"]}
    assert set(models) >= {"health", "priority", "anomaly", "degradation", "demand"}
    for name in ("health", "priority", "anomaly", "degradation", "demand"):
        assert models[name]["serving"]["production_version"] >= 1, name
    _wait(
        lambda: all((m.get("live") or {}).get("production_version") for m in api.get("/api/v1/models").json()["models"]),
        60, "every replica to load its production version",
    )


def test_live_twins_show_model_outputs(fleet_api: httpx.Client, services: ServiceHandles) -> None:
    """A battery that reports is scored by the shard's tick: SOH, health, priority, anomaly flags."""
    vehicle, battery = _ids(services, "m")
    t0 = time.time() - 120
    items = [
        (f"fleet/{vehicle}/telemetry", _message(vehicle, battery, k, [_sample(t0 + k * 5 + j, soc=80 - k) for j in range(5)]))
        for k in range(12)
    ]
    _publish(services, items)

    def scored() -> dict[str, Any] | None:
        r = fleet_api.get(f"/api/v1/batteries/{battery}")
        if r.status_code != 200:
            return None
        body = r.json()
        return body if body["soh_model_pct"] is not None and body["priority"] is not None else None

    twin = _wait(scored, 60, "the twin to be scored")
    assert 0 < twin["soh_model_pct"] <= 120
    assert 0 <= twin["health_score"] <= 100
    assert 0 <= twin["priority"] <= 100
    assert isinstance(twin["anomaly_flags"], list)
    assert twin["health_model_version"] >= 1
    top = fleet_api.get("/api/v1/fleet/top", params={"by": "priority", "n": 5}).json()
    assert top["rows"]


def _pack_trace(t0: float, n: int, offset_from: int) -> list[dict[str, Any]]:
    """A 13S pack riding (20 minutes on, 20 parked) at 10 s: voltage from a sloped
    open-circuit curve and a resistance, cells spreading with current, temperature heated by
    I^2, every reading noisy and rounded as a BMS reports it; from sample ``offset_from`` on,
    the pack-voltage sensor reads 1.5 V low (the cells are untouched)."""
    rng = np.random.default_rng(5)
    ride = (np.arange(n) // 60) % 4 < 2
    current = np.where(ride, rng.uniform(2.0, 20.0, n), 0.05)
    soc = np.clip(95.0 - np.cumsum(current) * 10.0 / 3600.0 / 15.0 * 100.0, 25.0, 100.0)
    cell_v = 3.3 + 0.009 * soc - current / 3.0 * 0.03
    temp, t = np.empty(n), 20.0
    for k in range(n):
        t += 10.0 * (2e-4 * current[k] ** 2 - (t - 20.0) / 1800.0)
        temp[k] = t
    half = current / 3.0 * 0.002 + 0.003
    pack_v = 13 * cell_v + rng.normal(0, 0.02, n) - np.where(np.arange(n) >= offset_from, 1.5, 0.0)
    return [
        _sample(
            t0 + 10.0 * k, soc=round(float(soc[k]), 1), pack_voltage_v=round(float(pack_v[k]), 2),
            current_a=round(float(current[k] + rng.normal(0, 0.05)), 2),
            temp_c=round(float(temp[k] + rng.normal(0, 0.3)) * 2) / 2, speed_kmh=16.0 if ride[k] else 0.0,
            # Away from the planner tests' zone: 80 minutes of rides there would be that
            # zone's ride history, and its demand forecast, for the rest of the session.
            lat=52.60, lon=13.30,
            cell_min_v=round(float(cell_v[k] - half[k]), 3), cell_max_v=round(float(cell_v[k] + half[k]), 3),
        )
        for k in range(n)
    ]  # fmt: skip


def test_a_twin_learns_its_pack_and_the_served_model_flags_what_breaks_it(
    fleet_api: httpx.Client, services: ServiceHandles
) -> None:
    """Through the broker: two batteries report 80 minutes of one pack's rides and parks;
    on one the pack-voltage sensor drops 1.5 V in the last 10 minutes. The twins learn their
    packs from the first hour; the production anomaly model (the shipped thresholds on each
    twin's own evidence) flags a sensor fault on that one only."""
    n, offset_from = 480, 420
    t0 = time.time() - n * 10.0 - 60.0
    ids = {tag: _ids(services, tag) for tag in ("pw", "pk")}
    for tag, (vehicle, battery) in ids.items():
        trace = _pack_trace(t0, n, offset_from if tag == "pk" else n)
        _publish(services, [
            (f"fleet/{vehicle}/telemetry", _message(vehicle, battery, k, trace[10 * k : 10 * k + 10]))
            for k in range(n // 10)
        ])  # fmt: skip

    published = time.time()

    def flags(tag: str) -> list[str] | None:
        """The twin's flags once the anomaly model has scored it with every sample in."""
        r = fleet_api.get(f"/api/v1/batteries/{ids[tag][1]}")
        if r.status_code != 200:
            return None
        body = r.json()
        age = body["score_age_s"]["anomaly"]
        if body["samples_total"] < n or age is None or body["as_of_s"] - age < published:
            return None
        return body["anomaly_flags"]  # type: ignore[no-any-return]

    assert "sensor_fault" in _wait(lambda: flags("pk"), 90, "the sensor fault")
    assert _wait(lambda: flags("pw") is not None, 60, "the healthy twin scored") is True
    assert flags("pw") == []


def test_promote_rollback_and_ab_split_without_restart(
    api: httpx.Client, services: ServiceHandles, system_settings: Settings
) -> None:
    """Registry changes over HTTP reach the running replicas within seconds; the A/B split
    answers each battery with the version its id hashes to."""
    before = api.get("/api/v1/models/health").json()["serving"]["production_version"]
    new = _register_copy(services, system_settings, "health")
    x = _features(200)
    ids = [f"ab-{k}" for k in range(len(x))]

    r = api.post("/api/v1/models/health/promote", json={"version": new})
    assert r.status_code == 200, r.text
    _wait(lambda: set(_call(ids[:5], x[:5])["model_version"].tolist()) == {new}, 30, f"v{new} in production")

    r = api.post("/api/v1/models/health/rollback")
    assert r.status_code == 200 and r.json()["production_version"] == before
    _wait(lambda: set(_call(ids[:5], x[:5])["model_version"].tolist()) == {before}, 30, "the rollback")

    # The rolled-back version is archived; a fresh candidate goes into the A/B split.
    new = _register_copy(services, system_settings, "health")
    r = api.post("/api/v1/models/health/ab", json={"candidate_version": new, "fraction": 0.5})
    assert r.status_code == 200, r.text
    cfg = ServingConfig("health", before, new, 0.5, 0.0, "it-ops")
    expected = route_versions(ids, cfg)
    _wait(lambda: np.array_equal(_call(ids, x)["model_version"], expected), 30, "the A/B split")
    assert 0.3 < float(np.mean(expected == new)) < 0.7
    status = api.get("/api/v1/models/health").json()["live"]["versions"]
    assert str(new) in status and str(before) in status
    assert api.delete("/api/v1/models/health/ab").status_code == 200
    events = [e["action"] for e in api.get("/api/v1/models/health").json()["events"]]
    assert {"promoted", "rolled_back", "ab_started", "ab_stopped"} <= set(events)


def test_registry_errors_are_clear_http_errors(
    services: ServiceHandles, system_settings: Settings
) -> None:
    """Unknown versions are 404, bad bodies 422, with messages that say what was wrong; the
    actor comes from the token, never from the body. (Its own token: model changes are
    rate-limited per token, and the A/B test spent the session token's burst.)"""
    with api_client(system_settings, issue_token(services, Role.OPS, "it-ops-errors")) as api:
        r = api.post("/api/v1/models/health/promote", json={"version": 999})
        assert r.status_code == 404 and "999" in r.text
        r = api.post("/api/v1/models/health/ab", json={"candidate_version": 1, "fraction": 2.0})
        assert r.status_code == 422
        r = api.post("/api/v1/models/health/promote", json={"version": 1, "actor": "it"})
        assert r.status_code == 422
        # Changes come in bursts of at most 4 a token, then 12 a minute: 429 with Retry-After.
        codes = [api.post("/api/v1/models/health/promote", json={"version": 999}) for _ in range(5)]
        limited = [r for r in codes if r.status_code == 429]
        assert limited and int(limited[0].headers["retry-after"]) >= 1, [r.status_code for r in codes]


def test_drift_alert_when_live_features_shift(api: httpx.Client) -> None:
    """Feeding the health deployment a fleet years older than its training data raises an alert."""
    x = _features(1200)
    x[:, HEALTH_FEATURE_NAMES.index("age_days")] += 3000.0
    ids = [f"drift-{k}" for k in range(len(x))]
    for _ in range(5):
        _call(ids, x)

    def alerted() -> list[dict[str, Any]]:
        return [a for a in api.get("/api/v1/models/alerts").json()["alerts"] if a["model"] == "health" and a["feature"] == "age_days"]

    alerts = _wait(alerted, 30, "a drift alert on age_days")
    assert alerts[0]["psi"] > 0.25


def test_batch_job_rescore_and_retrain(api: httpx.Client, fleet_system: Any) -> None:
    """The scheduled job rescores every shard and records health rows; retraining with too
    little ride history declines with the reason instead of registering a weak model."""
    job = ray.get_actor(MODEL_JOB_NAME, namespace=fleet_system.namespace)
    out = ray.get(job.rescore.remote(), timeout=120)
    assert out.twins_scored >= 1 and out.health_rows >= 1
    assert out.cohorts and all(c.points >= 1 for c in out.cohorts)
    fc = ray.get(job.forecast_demand.remote(), timeout=120)
    assert fc.zones >= 0 and (fc.zones > 0) == (fc.reason is None)
    rt = ray.get(job.retrain.remote(), timeout=120)
    assert rt.registered_version is None and rt.reason is not None and "needed" in rt.reason
    assert set(ray.get(job.status.remote(), timeout=30)) == {"rescore", "forecast_demand", "retrain"}


def test_artifacts_live_under_the_registry_root(system_settings: Settings) -> None:
    """Each registered version's files sit in <artifacts>/<name>/v<version>/."""
    root: Path = system_settings.artifacts_dir()
    assert (root / "health" / "v1" / "meta.json").is_file()
    assert (root / "degradation" / "v1").is_dir()

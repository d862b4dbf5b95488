"""What a Serve replica holds: versions, the A/B split by battery hash, metrics and drift."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from contracts.model_registry import ServingConfig
from contracts.scoring import DRIFT_ELIGIBLE
from models.ab_split import route_versions
from models.drift import DriftReference
from models.health_xgb import HealthParams, train_health
from models.predictors import predictor
from models.served_model import DRIFT_REFERENCE_FILE, NotServing, ServedModel
from sim.ageing import LifetimeSimulator
from twins.features import HEALTH_FEATURE_NAMES, TwinCounters, health_features


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[int, Path], np.ndarray]:
    """Two health-model versions (different seeds and sizes), each with a drift reference."""
    root = tmp_path_factory.mktemp("artifacts")
    sample = LifetimeSimulator(seed=2).run(200, 800, 3)
    dirs = {}
    x = None
    for version, trees in ((1, 20), (2, 60)):
        model, x = train_health(sample, HealthParams(n_estimators=trees, max_depth=3), seed=version)
        d = root / f"v{version}"
        model.save(d)
        ref = DriftReference.from_sample(x.astype(np.float64), list(HEALTH_FEATURE_NAMES))
        (d / DRIFT_REFERENCE_FILE).write_text(json.dumps(ref.to_dict()))
        dirs[version] = d
    assert x is not None
    return dirs, health_features(TwinCounters.from_lifetime(sample))


def _serving(candidate: int | None, fraction: float) -> ServingConfig:
    return ServingConfig("health", 1, candidate, fraction, time.time(), "test")


def test_nothing_served_before_a_version_is_loaded() -> None:
    """A replica without a production version says so instead of answering."""
    served = ServedModel("health", predictor("health"))
    with pytest.raises(NotServing, match="no production version"):
        served.run(["B1"], {"features": np.zeros((1, len(HEALTH_FEATURE_NAMES)), dtype=np.float32)})


def test_ab_split_routes_rows_by_battery_hash(artifacts: tuple[dict[int, Path], np.ndarray]) -> None:
    """Each row is answered by the version its battery hashes to, and counted for that version."""
    dirs, x = artifacts
    served = ServedModel("health", predictor("health"))
    serving = _serving(2, 0.3)
    assert served.apply(serving, dirs)
    ids = [f"B{k:05d}" for k in range(len(x))]
    out = served.run(ids, {"features": x})
    expected = route_versions(ids, serving)
    np.testing.assert_array_equal(out["model_version"], expected)
    assert 0.2 < float(np.mean(expected == 2)) < 0.4
    v1 = predictor("health").load(dirs[1]).predict_features(x).soh_pct
    v2 = predictor("health").load(dirs[2]).predict_features(x).soh_pct
    np.testing.assert_allclose(out["soh_pct"], np.where(expected == 2, v2, v1))
    per_version = served.status()["versions"]
    assert per_version["1"]["predictions"] + per_version["2"]["predictions"] == len(ids)


def test_promotion_swaps_versions_without_a_new_object(artifacts: tuple[dict[int, Path], np.ndarray]) -> None:
    """Applying a new serving config reloads in place; applying the same one changes nothing."""
    dirs, x = artifacts
    served = ServedModel("health", predictor("health"))
    first = _serving(None, 0.0)
    served.apply(first, dirs)
    assert not served.apply(first, dirs)
    promoted = ServingConfig("health", 2, None, 0.0, time.time(), "test")
    assert served.apply(promoted, dirs)
    out = served.run(["B1", "B2"], {"features": x[:2]})
    assert out["model_version"].tolist() == [2, 2]


def test_drift_alert_when_live_features_shift(artifacts: tuple[dict[int, Path], np.ndarray]) -> None:
    """Features like the training data raise no alert; a fleet that aged by years does."""
    dirs, x = artifacts
    served = ServedModel("health", predictor("health"), drift_threshold=0.25)
    served.apply(_serving(None, 0.0), dirs)
    ids = [f"B{k}" for k in range(len(x))]
    served.run(ids, {"features": x})
    assert served.status()["drift"]["1"]["alerts"] == []
    shifted = x.copy()
    col = HEALTH_FEATURE_NAMES.index("age_days")
    shifted[:, col] += 2000.0
    for _ in range(3):
        served.run(ids, {"features": shifted})
    alerts = served.status()["drift"]["1"]["alerts"]
    assert [a["feature"] for a in alerts][:1] == ["age_days"]
    assert alerts[0]["psi"] > 0.25


def test_rows_not_drift_eligible_are_scored_but_not_counted(
    artifacts: tuple[dict[int, Path], np.ndarray],
) -> None:
    """Twins minutes old (DRIFT_ELIGIBLE False) get answers but never move the drift
    monitor: a freshly started fleet raises no drift alert; eligible rows still do."""
    dirs, x = artifacts
    served = ServedModel("health", predictor("health"), drift_threshold=0.25)
    served.apply(_serving(None, 0.0), dirs)
    ids = [f"B{k}" for k in range(len(x))]
    young = x.copy()
    young[:, HEALTH_FEATURE_NAMES.index("age_days")] = 0.01
    for _ in range(3):
        out = served.run(ids, {"features": young, DRIFT_ELIGIBLE: np.zeros(len(ids), dtype=bool)})
        assert len(out["soh_pct"]) == len(ids)
    assert served.status()["drift"]["1"]["samples"] == 0
    assert served.status()["drift"]["1"]["alerts"] == []
    half = np.arange(len(ids)) % 2 == 0
    for _ in range(6):
        served.run(ids, {"features": young, DRIFT_ELIGIBLE: half})
    status = served.status()["drift"]["1"]
    assert status["samples"] > 0 and "age_days" in [a["feature"] for a in status["alerts"]]


def test_request_errors_name_what_is_missing(artifacts: tuple[dict[int, Path], np.ndarray]) -> None:
    """Missing arrays and row-count mismatches are clear errors."""
    dirs, x = artifacts
    served = ServedModel("health", predictor("health"))
    served.apply(_serving(None, 0.0), dirs)
    with pytest.raises(ValueError, match="missing"):
        served.run(["B1"], {})
    with pytest.raises(ValueError, match="Expected 3 rows"):
        served.run(["B1", "B2", "B3"], {"features": x[:2]})



def test_lstm_family_serves_a_bfloat16_copy_and_cpu_only_families_refuse_one(tmp_path: Path) -> None:
    """A degradation replica given bfloat16 loads each version as a bfloat16 copy: float32
    state out, close to but not the float32 replica's; a tree family asked for anything but
    cpu float32 fails at once, naming the model."""
    from models.degradation_lstm import DegradationLSTM, DegradationParams
    from models.inference_device import InferenceDevice
    from twins.cycle_inputs import cycle_inputs

    bf16 = InferenceDevice("cpu", "bfloat16")
    with pytest.raises(ValueError, match="Expected cpu float32 for model 'health', which runs on the CPU only"):
        ServedModel("health", predictor("health"), device=bf16)
    DegradationLSTM(DegradationParams(), seed=0).save(tmp_path)
    rng = np.random.default_rng(0)
    n = 8
    soh, cycle = rng.uniform(0.8, 1.0, n), rng.uniform(50, 500, n)
    x = cycle_inputs(soh, cycle, soh + 0.002, 0.96 * cycle, soh + 0.05, -0.5)
    h = rng.normal(0.0, 0.3, (n, 32)).astype(np.float32)
    request = {"x": x, "h": h, "c": h.copy(), "soh": soh, "cycle": cycle}
    outs = {}
    for device in (InferenceDevice(), bf16):
        served = ServedModel("degradation", predictor("degradation"), device=device)
        served.apply(ServingConfig("degradation", 1, None, 0.0, time.time(), "test"), {1: tmp_path})
        outs[device.dtype] = served.run([f"b{k}" for k in range(n)], request)
    assert outs["bfloat16"]["h"].dtype == np.float32 and outs["bfloat16"]["h"].shape == (n, 32)
    assert 0 < np.abs(outs["bfloat16"]["h"] - outs["float32"]["h"]).max() < 0.02

"""XGBoost health scoring: SOH and health score from twin counters."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.health_xgb import HealthParams, HealthXGB, health_score_label, train_health
from sim.ageing import LifetimeSimulator
from twins.features import HEALTH_FEATURE_NAMES, TwinCounters

_SMALL = HealthParams(n_estimators=60, max_depth=4)


@pytest.fixture(scope="module")
def trained() -> tuple[HealthXGB, object]:
    sample = LifetimeSimulator(seed=5).run(300, 900, 3)
    model, _ = train_health(sample, _SMALL, seed=5)
    return model, sample


def test_training_on_tiny_data_beats_the_twins_own_estimate(trained: tuple[HealthXGB, object]) -> None:
    """On held-out packs the model's SOH error is below the raw coulomb-counted estimate's."""
    model, _ = trained
    m = model.metrics
    assert m["soh_rmse_pct"] < m["baseline_capacity_estimate_rmse_pct"]
    assert m["soh_rmse_pct"] < 3.0
    assert m["health_score_mae"] < 8.0


def test_save_load_gives_identical_predictions(trained: tuple[HealthXGB, object], tmp_path: Path) -> None:
    """An artifact round trip changes nothing."""
    model, sample = trained
    model.save(tmp_path)
    again = HealthXGB.load(tmp_path)
    counters = TwinCounters.from_lifetime(sample)  # type: ignore[arg-type]
    a, b = model.predict(counters), again.predict(counters)
    np.testing.assert_array_equal(a.soh_pct, b.soh_pct)
    np.testing.assert_array_equal(a.health_score, b.health_score)
    assert again.metrics == model.metrics


def test_outputs_are_bounded_and_empty_batches_work(trained: tuple[HealthXGB, object]) -> None:
    """Health score in [0, 100]; zero rows in, zero rows out."""
    model, sample = trained
    pred = model.predict(TwinCounters.from_lifetime(sample))  # type: ignore[arg-type]
    assert pred.health_score.min() >= 0 and pred.health_score.max() <= 100
    empty = model.predict_features(np.empty((0, len(HEALTH_FEATURE_NAMES)), dtype=np.float32))
    assert empty.soh_pct.shape == (0,)


def test_wrong_feature_width_and_wrong_artifact_are_clear_errors(
    trained: tuple[HealthXGB, object], tmp_path: Path
) -> None:
    """Errors say what was expected and what arrived."""
    model, _ = trained
    with pytest.raises(ValueError, match=r"shape \(n, 22\), got \(2, 3\)"):
        model.predict_features(np.zeros((2, 3), dtype=np.float32))
    with pytest.raises(FileNotFoundError, match=r"meta\.json"):
        HealthXGB.load(tmp_path / "nothing")


def test_health_score_label_corners() -> None:
    """New pack: 100; capacity at 60 % and resistance doubled: 0."""
    np.testing.assert_allclose(health_score_label(np.array([1.0, 0.6]), np.array([1.0, 2.0])), [100.0, 0.0])

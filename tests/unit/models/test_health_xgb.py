"""XGBoost health scoring: SOH and health score from twin counters."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models.health_xgb import ForeignRows, HealthParams, HealthXGB, health_score_label, train_health
from sim.ageing import LifetimeSimulator
from twins.features import HEALTH_FEATURE_NAMES, TwinCounters, health_features

_SMALL = HealthParams(n_estimators=60, max_depth=4)
EST = HEALTH_FEATURE_NAMES.index("capacity_ratio_est")


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


def _rows(sample: object) -> np.ndarray:
    return health_features(TwinCounters.from_lifetime(sample))  # type: ignore[arg-type]


def test_a_fresh_twin_of_an_old_pack_reads_its_estimate_not_its_short_usage(trained: tuple[HealthXGB, object]) -> None:
    """Issue 14: a twin that observed a few hours of an 80 % pack. The first model read it
    as nearly new from its usage counters; now the answer is the twin's estimate, moved by
    at most max_correction (3 points)."""
    model, sample = trained
    x = _rows(sample)
    x = x[np.isfinite(x[:, EST])][:50].copy()
    for name, value in (("age_days", 0.4), ("efc", 1.5), ("efc_per_day", np.nan), ("ah_throughput_per_rated", 1.5),
                        ("cycles_completed", 1.0), ("time_hot_h", 0.0)):  # fmt: skip
        x[:, HEALTH_FEATURE_NAMES.index(name)] = value
    x[:, EST] = 0.8
    soh = model.predict_features(x).soh_pct
    assert np.all(np.abs(soh - 80.0) <= 100.0 * model.params.max_correction * model.shrink + 1e-4)


def test_without_an_estimate_the_prior_answers_and_corrections_stay_bounded(trained: tuple[HealthXGB, object]) -> None:
    model, sample = trained
    x = _rows(sample)
    none = x.copy()
    none[:, EST] = np.nan
    assert np.all(np.isfinite(model.predict_features(none).soh_pct))
    c = model.correction(x)
    assert np.all(np.isnan(c[~np.isfinite(x[:, EST])]))
    assert np.nanmax(np.abs(c)) <= model.params.max_correction


def test_the_correction_is_switched_off_where_it_does_not_carry_over(trained: tuple[HealthXGB, object]) -> None:
    """Foreign packs whose truth is exactly their estimate (the correction can only hurt
    there): leaving each foreign group out in turn chooses weight 0."""
    _, sample = trained
    x = _rows(sample)
    has = np.where(np.isfinite(x[:, EST]))[0][:120]
    fx = x[has].copy()
    foreign = ForeignRows(
        fx, fx[:, EST].astype(np.float64), np.full(has.size, 80.0), np.array(["A", "B", "C"] * 40)
    )
    model, _ = train_health(sample, _SMALL, seed=5, foreign=foreign)  # type: ignore[arg-type]
    assert model.shrink == 0.0 and model.metrics["shrink_chosen_on_foreign_groups_left_out"] == 1.0
    assert model.metrics["shrink_0_mae_pct"] <= model.metrics["shrink_1_mae_pct"]


def test_a_model_of_the_first_format_is_refused_with_a_way_out(trained: tuple[HealthXGB, object], tmp_path: Path) -> None:
    model, _ = trained
    model.save(tmp_path)
    meta = json.loads((tmp_path / "meta.json").read_text())
    del meta["format"]
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"Expected a health model of format 2, got 1 .* retrain it"):
        HealthXGB.load(tmp_path)

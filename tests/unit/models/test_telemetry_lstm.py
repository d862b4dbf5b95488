"""Tests for :mod:`models.telemetry_lstm`: the next-sample prediction-error detector.

A small network (16 wide, a few epochs, one thread) is trained once per module on one
simulated fleet and judged on another.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from models.telemetry_lstm import TelemetryLSTM, TelemetryLSTMParams
from twins.telemetry_windows import FIELD_INDEX, TelemetryWindows

EVENING_S = 1_764_172_800.0
SMALL = TelemetryLSTMParams(hidden_size=16, epochs=12, batch_size=32, seed=3)



@pytest.fixture(scope="module")
def train(make_fleet_windows: Callable[..., TelemetryWindows]) -> TelemetryWindows:
    """Normal windows of 40 busy scooters over 30 minutes."""
    return make_fleet_windows(seed=41, vehicles=40)


@pytest.fixture(scope="module")
def held_out(make_fleet_windows: Callable[..., TelemetryWindows]) -> TelemetryWindows:
    """Normal windows of another fleet (other seed)."""
    return make_fleet_windows(seed=42, vehicles=40)


@pytest.fixture(scope="module")
def model(train: TelemetryWindows) -> TelemetryLSTM:
    """The small LSTM trained on ``train``."""
    return TelemetryLSTM(SMALL).train(train)


def test_training_lowers_the_loss(model: TelemetryLSTM) -> None:
    """The Gaussian negative log-likelihood falls by more than half a nat per step."""
    assert len(model.train_losses) == SMALL.epochs
    assert model.train_losses[-1] < model.train_losses[0] - 0.5


def test_normal_windows_score_low(model: TelemetryLSTM, held_out: TelemetryWindows) -> None:
    """On another normal fleet the median z is near 0 and under 2 % of windows are flagged."""
    scores = model.score(held_out)
    assert abs(float(np.median(scores))) < 1.5
    assert model.flags(scores).mean() < 0.02


def test_abnormal_heating_is_badly_predicted(
    model: TelemetryLSTM, held_out: TelemetryWindows
) -> None:
    """Temperature climbing 2 C/min over the last 16 samples makes nearly every window's
    prediction error pass the threshold."""
    values = held_out.values.copy()
    start = held_out.ts_s[:, -16:-15]
    minutes = np.clip((held_out.ts_s - start) / 60.0, 0.0, None)
    values[:, :, FIELD_INDEX["temp_c"]] += np.nan_to_num(2.0 * minutes).astype(np.float32)
    hot = TelemetryWindows(values, held_out.ts_s, held_out.lengths, held_out.battery_ids)
    assert model.flags(model.score(hot)).mean() > 0.9


def test_same_seed_same_model(
    train: TelemetryWindows, held_out: TelemetryWindows, model: TelemetryLSTM
) -> None:
    """Training twice with one seed gives bit-identical scores."""
    again = TelemetryLSTM(SMALL).train(train)
    np.testing.assert_array_equal(again.score(held_out), model.score(held_out))


def test_save_load_round_trip(
    model: TelemetryLSTM, held_out: TelemetryWindows, tmp_path: Path
) -> None:
    """save() then load() reproduces the scores bit for bit; weights and JSON are on disk."""
    model.save(tmp_path / "lstm")
    assert {p.name for p in (tmp_path / "lstm").iterdir()} == {
        "telemetry_lstm.pt",
        "telemetry_lstm.json",
    }
    loaded = TelemetryLSTM.load(tmp_path / "lstm")
    assert loaded.params == model.params
    np.testing.assert_array_equal(loaded.score(held_out), model.score(held_out))


def test_threads_are_restored_and_short_windows_score_zero(
    model: TelemetryLSTM, held_out: TelemetryWindows
) -> None:
    """Scoring leaves torch's thread count as it found it; windows shorter than min_samples
    score 0, and an empty batch gives an empty result."""
    before = torch.get_num_threads()
    short = held_out.take([0, 1])
    values, ts = short.values.copy(), short.ts_s.copy()
    values[:, :-10], ts[:, :-10] = np.nan, np.nan
    scores = model.score(TelemetryWindows(values, ts, np.array([10, 10]), short.battery_ids))
    assert torch.get_num_threads() == before
    np.testing.assert_array_equal(scores, [0.0, 0.0])
    assert model.score(held_out.take(np.zeros(0, dtype=np.int64))).shape == (0,)


def test_misuse_is_refused_with_a_reason(train: TelemetryWindows) -> None:
    """Untrained scoring, too little data and bad params raise errors naming the problem."""
    with pytest.raises(RuntimeError, match="not trained"):
        TelemetryLSTM(SMALL).score(train)
    with pytest.raises(ValueError, match=">= 10 training windows"):
        TelemetryLSTM(SMALL).train(train.take(np.arange(5)))
    with pytest.raises(ValueError, match="min_samples > recent_samples"):
        TelemetryLSTMParams(recent_samples=30, min_samples=20)
    with pytest.raises(ValueError, match="validation_fraction in"):
        TelemetryLSTMParams(validation_fraction=1.0)

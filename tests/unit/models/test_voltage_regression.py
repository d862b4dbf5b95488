"""Tests for :mod:`models.voltage_regression`: the fleet voltage model and residual z-scores.

The model is fitted on one simulated fleet and judged on another (other seed). Faults are
written straight into the windows' voltages, so each test controls exactly what changed.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pytest

from models.voltage_regression import VoltageRegression, VoltageRegressionParams
from twins.telemetry_windows import FIELD_INDEX, TelemetryWindows

EVENING_S = 1_764_172_800.0



@pytest.fixture(scope="module")
def train(make_fleet_windows: Callable[..., TelemetryWindows]) -> TelemetryWindows:
    """Normal windows of 50 busy scooters over 30 minutes."""
    return make_fleet_windows(seed=21, vehicles=50, stride=16)


@pytest.fixture(scope="module")
def held_out(make_fleet_windows: Callable[..., TelemetryWindows]) -> TelemetryWindows:
    """Normal windows of another fleet (other seed)."""
    return make_fleet_windows(seed=22, vehicles=50, stride=16)


@pytest.fixture(scope="module")
def model(train: TelemetryWindows) -> VoltageRegression:
    """The regression fitted on ``train``."""
    return VoltageRegression().fit(train)


def _riding(win: TelemetryWindows) -> TelemetryWindows:
    """Windows that carry load in their reference and in their recent part."""
    current = win.column("current_a")
    ref = np.nanstd(current[:, :32], axis=1) > 3.0
    recent = np.nanmean(np.abs(current[:, -8:]), axis=1) > 3.0
    return win.take(ref & recent)


def _add_voltage(win: TelemetryWindows, delta_v: npt.NDArray[np.float64]) -> TelemetryWindows:
    values = win.values.copy()
    values[:, :, FIELD_INDEX["pack_voltage_v"]] += delta_v.astype(np.float32)
    return TelemetryWindows(values, win.ts_s, win.lengths, win.battery_ids)


def test_fleet_fit_explains_normal_voltage(
    model: VoltageRegression, held_out: TelemetryWindows
) -> None:
    """On another fleet the fleet-wide model is within a few tenths of a volt (pack-to-pack
    resistance spread), and each battery's own baseline brings that down to centivolts."""
    residual = held_out.column("pack_voltage_v") - model.expected_voltage_v(held_out)
    rms_fleet = float(np.sqrt(np.nanmean(residual**2)))
    assert rms_fleet < 0.3
    scores = model.score(held_out)
    assert scores.evaluable.all()
    assert float(np.sqrt(np.mean(scores.step_v**2))) < 0.05


def test_normal_windows_are_rarely_flagged(
    model: VoltageRegression, held_out: TelemetryWindows
) -> None:
    """Fewer than 1 % of normal held-out windows pass the threshold."""
    assert model.score(held_out).flag.mean() < 0.01


def test_an_old_pack_is_not_flagged_but_a_sudden_sag_is(
    model: VoltageRegression, held_out: TelemetryWindows
) -> None:
    """0.1 Ω more resistance through the whole window (an aged pack) stays quiet; the same
    0.1 Ω appearing 16 samples before the end is flagged, as a negative step."""
    win = _riding(held_out)
    assert win.n >= 20
    current = np.nan_to_num(win.column("current_a"))
    old = model.score(_add_voltage(win, -0.1 * current))
    assert old.flag.mean() < 0.05
    sudden_mask = np.zeros_like(current)
    sudden_mask[:, -16:] = 1.0
    sudden = model.score(_add_voltage(win, -0.1 * current * sudden_mask))
    assert sudden.flag.mean() > 0.9
    assert (sudden.step_z[sudden.flag] < 0).all()


def test_an_offset_older_than_the_window_shows_in_the_intercept(
    model: VoltageRegression, held_out: TelemetryWindows
) -> None:
    """A +1.5 V sensor offset on every sample leaves no step, but the zero-current intercept
    sits 1.5 V off the fleet: flagged through offset_z, with offset_v near 1.5 V."""
    scores = model.score(_add_voltage(held_out, np.full(held_out.ts_s.shape, 1.5)))
    assert scores.flag.mean() > 0.95
    assert (scores.offset_z[scores.flag] > 0).all()
    assert abs(float(np.median(scores.offset_v)) - 1.5) < 0.1


def test_recent_heating_does_not_move_the_voltage_score(
    model: VoltageRegression, held_out: TelemetryWindows
) -> None:
    """Temperature is held at the baseline's within a window: heating the last samples by
    10 C changes none of the voltage scores (that is the temperature detector's finding)."""
    values = held_out.values.copy()
    values[:, -8:, FIELD_INDEX["temp_c"]] += 10.0
    hot = TelemetryWindows(values, held_out.ts_s, held_out.lengths, held_out.battery_ids)
    np.testing.assert_array_equal(model.score(hot).score, model.score(held_out).score)


def test_short_windows_are_not_evaluable(
    model: VoltageRegression, held_out: TelemetryWindows
) -> None:
    """A window with fewer samples than baseline plus recent part scores 0, unflagged."""
    short = held_out.take([0])
    keep = 20
    values = short.values.copy()
    values[:, :-keep] = np.nan
    ts = short.ts_s.copy()
    ts[:, :-keep] = np.nan
    scores = model.score(TelemetryWindows(values, ts, np.array([keep]), short.battery_ids))
    assert not scores.evaluable[0] and scores.score[0] == 0.0 and not scores.flag[0]


def test_dict_round_trip_gives_identical_scores(
    model: VoltageRegression, held_out: TelemetryWindows
) -> None:
    """to_dict -> JSON -> from_dict reproduces every score bit for bit."""
    again = VoltageRegression.from_dict(json.loads(json.dumps(model.to_dict())))
    a, b = model.score(held_out), again.score(held_out)
    for name in ("latest_z", "step_z", "offset_z", "score"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def test_misuse_is_refused_with_a_reason(train: TelemetryWindows) -> None:
    """Unfitted scoring, too little data and bad knots raise errors that name the problem."""
    with pytest.raises(RuntimeError, match="not fitted"):
        VoltageRegression().score(train)
    with pytest.raises(ValueError, match="valid samples to fit"):
        VoltageRegression().fit(train.take([0]))
    with pytest.raises(ValueError, match="increasing soc_knots_pct"):
        VoltageRegressionParams(soc_knots_pct=(50.0, 20.0))
    with pytest.raises(ValueError, match="reference_fraction in"):
        VoltageRegressionParams(reference_fraction=0.0)

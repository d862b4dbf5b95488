"""Tests for :mod:`models.demand_lstm`: features, training, prediction, persistence, scoring."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from contracts.ride_history import RideHistory
from models.demand_lstm import (
    DECODER_FEATURES,
    ENCODER_FEATURES,
    HORIZON_HOURS,
    DemandInputs,
    DemandLSTM,
    DemandLstmParams,
    build_features,
    evaluate,
    train,
)
from sim.ride_demand import RideDemandParams, ride_history
from sim.weather import SimWeather

# 2024-05-06 00:00 UTC, a Monday.
T0_S = 1_714_953_600.0
HOUR_S = 3600.0
DAYS = 30
HELD_OUT_DAYS = 5
ZONES = ("z5801_1100", "z5801_1101", "z5802_1100", "z5802_1101", "z5803_1100", "z5803_1101")
# Small and quick: training on six zones for 25 days takes a few seconds on one thread.
# Small batches, because 2,500 windows make few steps per epoch.
PARAMS = DemandLstmParams(hidden_size=24, epochs=6, batch_size=64)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    """Predictions run on one thread: on a busy shared CPU, torch's multi-threaded kernels
    can take a second per tiny batch, waiting on descheduled worker threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def history() -> RideHistory:
    """Thirty days of simulated rides in six zones, in late spring weather."""
    return ride_history(
        ZONES,
        T0_S,
        24 * DAYS,
        SimWeather(seed=21),
        seed=8,
        params=RideDemandParams(rides_per_zone_per_day=120.0),
    )


@pytest.fixture(scope="module")
def split(history: RideHistory) -> int:
    """Index of the first held-out hour: the last five days are never trained on."""
    return history.hours - 24 * HELD_OUT_DAYS


@pytest.fixture(scope="module")
def model(history: RideHistory, split: int) -> DemandLSTM:
    """A forecaster trained on the first 25 days."""
    return train(history.window(0, split), PARAMS, seed=0)


def _inputs(history: RideHistory, origin: int, history_hours: int = 168) -> DemandInputs:
    return DemandInputs(
        history_rides=history.rides[:, origin - history_hours : origin].astype(np.float64),
        weather_past=history.weather.window(origin - history_hours, origin),
        weather_next=history.weather.window(origin, origin + HORIZON_HOURS),
    )


def test_features_have_the_documented_layout(history: RideHistory) -> None:
    """Encoder and head inputs follow the feature lists; lags read the right history hours."""
    origin = 24 * 10 + 7
    inputs = _inputs(history, origin)
    features = build_features(inputs, PARAMS)
    n = len(ZONES)
    assert features.encoder.shape == (n, PARAMS.encoder_hours, len(ENCODER_FEATURES))
    assert features.decoder.shape == (n, HORIZON_HOURS, len(DECODER_FEATURES))
    assert features.encoder.dtype == features.decoder.dtype == np.float32
    rides = inputs.history_rides
    np.testing.assert_allclose(features.scale, rides.mean(axis=1))
    relative = rides / features.scale[:, None]
    column = {name: i for i, name in enumerate(DECODER_FEATURES)}
    k = np.arange(HORIZON_HOURS)
    np.testing.assert_allclose(
        features.decoder[:, :, column["rides_rel_lag_24h"]], relative[:, 168 - 24 + k], rtol=1e-6
    )
    np.testing.assert_allclose(
        features.decoder[:, :, column["rides_rel_lag_168h"]], relative[:, k], rtol=1e-6
    )
    np.testing.assert_allclose(
        features.encoder[:, :, ENCODER_FEATURES.index("rides_rel")],
        relative[:, -PARAMS.encoder_hours :],
        rtol=1e-6,
    )
    # Forecast weather of hour k is that of history hour origin + k.
    np.testing.assert_allclose(
        features.decoder[0, :, column["precipitation"]],
        np.log1p(history.weather.precipitation_mm[origin : origin + HORIZON_HOURS]),
        rtol=1e-6,
    )


def test_quiet_zones_get_a_scale_floor(history: RideHistory) -> None:
    """A zone without rides has the floor as scale, so its features stay finite."""
    inputs = _inputs(history, 24 * 10)
    silent = DemandInputs(
        history_rides=np.zeros_like(inputs.history_rides),
        weather_past=inputs.weather_past,
        weather_next=inputs.weather_next,
    )
    features = build_features(silent, PARAMS)
    assert (features.scale == PARAMS.min_scale_rides_per_h).all()
    assert np.isfinite(features.encoder).all() and np.isfinite(features.decoder).all()


def test_predictions_are_non_negative_24h_per_zone(
    model: DemandLSTM, history: RideHistory, split: int
) -> None:
    """predict returns (zones, 24) finite non-negative rides, also for a silent zone."""
    inputs = _inputs(history, split)
    forecast = model.predict(inputs)
    assert forecast.shape == (len(ZONES), HORIZON_HOURS)
    assert forecast.dtype == np.float64
    assert np.isfinite(forecast).all() and (forecast >= 0).all()
    rides = inputs.history_rides.copy()
    rides[0] = 0.0
    silent = model.predict(
        DemandInputs(rides, weather_past=inputs.weather_past, weather_next=inputs.weather_next)
    )
    assert np.isfinite(silent).all() and (silent >= 0).all()
    assert silent[0].sum() < 0.2 * forecast[0].sum()


def test_busy_zones_get_bigger_forecasts(
    model: DemandLSTM, history: RideHistory, split: int
) -> None:
    """Per-zone scaling carries a zone's level: more past rides, more forecast rides."""
    forecast = model.predict(_inputs(history, split)).sum(axis=1)
    past = history.rides[:, split - 168 : split].sum(axis=1)
    assert np.argmax(forecast) == np.argmax(past)
    assert np.argmin(forecast) == np.argmin(past)


def test_beats_seasonal_naive_on_held_out_days(
    model: DemandLSTM, history: RideHistory, split: int
) -> None:
    """On five unseen days the model's MAE is at least 10 % below same-hour-last-week's."""
    evaluation = evaluate(model, history, float(history.ts[split]))
    assert evaluation.forecasts == HELD_OUT_DAYS
    assert evaluation.zones == len(ZONES)
    assert evaluation.model.mae < 0.9 * evaluation.same_hour_last_week.mae
    assert evaluation.model.mae < evaluation.same_hour_yesterday.mae
    assert evaluation.model.rmse < evaluation.same_hour_last_week.rmse
    assert evaluation.mae_improvement > 0.1


def test_save_and_load_give_identical_forecasts(
    model: DemandLSTM, history: RideHistory, split: int, tmp_path: Path
) -> None:
    """A loaded model predicts exactly what the saved one did and keeps params and metrics."""
    evaluation = evaluate(model, history, float(history.ts[split]))
    model.save(tmp_path / "demand", extra_metrics=evaluation.as_metrics())
    loaded = DemandLSTM.load(tmp_path / "demand")
    inputs = _inputs(history, split + 5)
    np.testing.assert_array_equal(loaded.predict(inputs), model.predict(inputs))
    assert loaded.params == model.params
    assert loaded.metrics["eval_model_mae"] == pytest.approx(evaluation.model.mae)
    assert loaded.metrics["train_windows"] == model.metrics["train_windows"]
    meta = json.loads((tmp_path / "demand" / "meta.json").read_text())
    assert meta["params"]["hidden_size"] == 24


def test_load_rejects_other_feature_code(model: DemandLSTM, tmp_path: Path) -> None:
    """Metadata written for other features, or with unknown keys, is refused with the reason."""
    model.save(tmp_path)
    meta_path = tmp_path / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["decoder_features"] = meta["decoder_features"][:-1]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="the model was trained with other feature code"):
        DemandLSTM.load(tmp_path)
    model.save(tmp_path)
    meta = json.loads(meta_path.read_text())
    meta["params"]["hiden_size"] = 8
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"Unknown DemandLstmParams fields \['hiden_size'\]"):
        DemandLSTM.load(tmp_path)
    meta_path.write_text(json.dumps({"format": "demand_lstm/0"}))
    with pytest.raises(ValueError, match=r"Malformed .*meta\.json"):
        DemandLSTM.load(tmp_path)


def test_same_seed_same_model(history: RideHistory) -> None:
    """Training twice with one seed gives identical forecasts; another seed differs."""
    tiny = DemandLstmParams(hidden_size=8, epochs=1, origin_stride_hours=12)
    short = history.window(0, 24 * 10)
    inputs = _inputs(history, 24 * 10)
    a = train(short, tiny, seed=3).predict(inputs)
    b = train(short, tiny, seed=3).predict(inputs)
    c = train(short, tiny, seed=4).predict(inputs)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_training_leaves_torch_as_it_found_it(history: RideHistory) -> None:
    """The thread count and the global random state are restored after training."""
    threads = torch.get_num_threads()
    state = torch.get_rng_state()
    train(
        history.window(0, 24 * 9),
        DemandLstmParams(hidden_size=4, epochs=1, origin_stride_hours=24),
        seed=1,
    )
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.get_rng_state(), state)


def test_train_and_evaluate_need_enough_history(model: DemandLSTM, history: RideHistory) -> None:
    """Too little history for one window, or no forecast time after from_ts, is an error."""
    with pytest.raises(ValueError, match=r"Expected at least history_hours \+ 24 = 192 hours"):
        train(history.window(0, 191), PARAMS)
    with pytest.raises(ValueError, match="Expected at least one forecast time"):
        evaluate(model, history, float(history.ts[-10]))


def test_inputs_are_validated(history: RideHistory) -> None:
    """Inputs must line up: history and weather lengths, 24 forecast hours, no gap."""
    good = _inputs(history, 200)
    with pytest.raises(ValueError, match="Expected weather_past for the 100 history hours"):
        DemandInputs(good.history_rides[:, :100], good.weather_past, good.weather_next)
    with pytest.raises(ValueError, match="Expected weather_next for 24 hours, got 23"):
        DemandInputs(good.history_rides, good.weather_past, good.weather_next.window(0, 23))
    with pytest.raises(ValueError, match="Expected weather_next to start one hour after"):
        DemandInputs(good.history_rides, good.weather_past, history.weather.window(201, 225))
    with pytest.raises(ValueError, match="Expected finite, non-negative history_rides"):
        DemandInputs(-good.history_rides - 1, good.weather_past, good.weather_next)
    with pytest.raises(ValueError, match=r"Expected 168 history hours .*got 192"):
        build_features(_inputs(history, 200, history_hours=192), PARAMS)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"history_hours": 72}, r"Expected an integer history_hours in \[168, 1344\], got 72"),
        ({"history_hours": 180}, "Expected history_hours in whole days, got 180"),
        ({"encoder_hours": 200}, r"Expected encoder_hours <= history_hours \(168\), got 200"),
        ({"epochs": 2.0}, r"Expected an integer epochs in \[1, 10000\], got 2.0"),
        ({"learning_rate": 0.0}, r"Expected learning_rate in \[1e-06, 1.0\], got 0.0"),
    ],
)
def test_params_are_validated(changes: dict[str, object], message: str) -> None:
    """Bad knobs are rejected with the expected range and the value."""
    with pytest.raises(ValueError, match=message):
        DemandLstmParams(**changes)  # type: ignore[arg-type]


def test_params_from_mapping() -> None:
    """A full mapping round-trips; an empty one gives the defaults."""
    assert DemandLstmParams.from_mapping(PARAMS.as_dict()) == PARAMS
    assert DemandLstmParams.from_mapping({}) == DemandLstmParams()


def test_bfloat16_forecast_agrees_with_float32_on_the_cpu(
    model: DemandLSTM, history: RideHistory, split: int, tmp_path: Path
) -> None:
    """A bfloat16 copy forecasts within 1 % of the float32 model (measured: under 0.1 %), and
    is refused by save (its weights are rounded); the float32 model is unchanged."""
    from models.inference_device import InferenceDevice

    inputs = _inputs(history, split + 30)
    before = model.predict(inputs)
    bf16 = model.on_device(InferenceDevice("cpu", "bfloat16"))
    assert model.on_device(InferenceDevice()) is model
    got = bf16.predict(inputs)
    assert got.dtype == np.float64 and got.shape == before.shape
    np.testing.assert_allclose(got, before, rtol=0.01, atol=1e-3)
    assert not np.array_equal(got, before)
    np.testing.assert_array_equal(model.predict(inputs), before)
    with pytest.raises(ValueError, match="Expected a model on cpu float32 to save"):
        bf16.save(tmp_path)

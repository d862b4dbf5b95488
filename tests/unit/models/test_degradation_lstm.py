"""Tests for :mod:`models.degradation_lstm`: inputs, step API, forecast bands, training, I/O."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models.cell_data import CellHistory
from models.degradation_lstm import (
    CYCLE_INPUT_NAMES,
    DegradationLSTM,
    DegradationParams,
    cycle_inputs,
    train,
)

_TINY = DegradationParams(train_steps=30, batch_size=8)


def _fade(cell_id: str, cycles: int, rate: float, seed: int) -> CellHistory:
    """A gently accelerating fade with measurement noise, rated 2 Ah."""
    rng = np.random.default_rng(seed)
    k = np.arange(1, cycles + 1)
    soh = 1.0 - rate * k * (1 + 0.3 * k / cycles) + rng.normal(0.0, 0.002, cycles)
    return CellHistory.from_soh(cell_id, soh, nominal_capacity_ah=2.0)


_CELLS = [_fade("A", 90, 0.003, 1), _fade("B", 70, 0.004, 2), _fade("C", 110, 0.0025, 3)]


@pytest.fixture(scope="module")
def model() -> DegradationLSTM:
    """A model trained briefly on three synthetic cells (fast, not accurate)."""
    return train(_CELLS, _TINY, seed=0)


def test_cycle_inputs_columns_and_first_cycle() -> None:
    """One row per battery, float32, in CYCLE_INPUT_NAMES order; no previous cycle: change 0."""
    x = cycle_inputs([0.85, 0.9], [1, 50], [np.nan, 0.92])
    assert x.shape == (2, len(CYCLE_INPUT_NAMES)) and x.dtype == np.float32
    assert x[0, 0] == pytest.approx(0.0) and x[0, 1] == 0.0
    assert x[1, 1] < 0  # SOH fell since the previous cycle
    assert x[1, 2] > x[0, 2]
    with pytest.raises(ValueError, match="Expected finite soh_frac"):
        cycle_inputs(np.nan, 1, np.nan)
    with pytest.raises(ValueError, match="Expected cycle_index >= 1"):
        cycle_inputs(0.9, 0, np.nan)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"hidden_size": 0}, r"Expected hidden_size in \[1, 1024\], got 0"),
        ({"horizon_knots_cycles": (2, 4)}, "strictly increasing from 1, got"),
        ({"horizon_knots_cycles": (1, 4, 4)}, "strictly increasing from 1, got"),
        ({"train_steps": 0}, "Expected train_steps >= 1, got 0"),
        ({"learning_rate": 0.0}, "Expected learning_rate > 0, got 0.0"),
        ({"stretch_min": 2.0}, "Expected 0 < stretch_min <= stretch_max"),
        ({"synthetic_frac": 1.5}, r"Expected synthetic_frac in \[0, 1\], got 1.5"),
        ({"torch_threads": 0}, "Expected torch_threads >= 1 or None, got 0"),
    ],
)
def test_invalid_params_say_what_was_expected(changes: dict[str, object], message: str) -> None:
    """Each check names the field, the expectation and the value that arrived."""
    with pytest.raises(ValueError, match=message):
        DegradationParams(**changes)  # type: ignore[arg-type]


def test_params_from_dict_round_trips_and_rejects_unknown_keys() -> None:
    """Params survive a JSON round trip; an unknown key is named."""
    params = DegradationParams(hidden_size=16, horizon_knots_cycles=(1, 5, 20))
    again = DegradationParams.from_dict(json.loads(json.dumps(params.__dict__)))
    assert again == params
    with pytest.raises(ValueError, match=r"got unknown \['layers'\]"):
        DegradationParams.from_dict({"layers": 2})


def test_step_shapes(model: DegradationLSTM) -> None:
    """One step for n batteries: drop quantiles (n, K, 3), new state float32 (n, hidden)."""
    n, hidden = 5, model.hidden_size
    h, c = model.initial_state(n)
    x = cycle_inputs(np.linspace(0.8, 1.0, n), np.arange(1, n + 1), np.full(n, np.nan))
    out, h1, c1 = model.step(x, h, c)
    k = len(model.params.horizon_knots_cycles)
    assert hidden == 32
    assert out.drop_quantiles.shape == (n, k, 3)
    np.testing.assert_array_equal(out.horizons_cycles, model.params.horizon_knots_cycles)
    assert h1.shape == c1.shape == (n, hidden) and h1.dtype == c1.dtype == np.float32
    assert not np.array_equal(h1, h)
    with pytest.raises(ValueError, match=r"Expected h of shape \(5, 32\), got \(4, 32\)"):
        model.step(x, h[:4], c)
    with pytest.raises(ValueError, match=r"Expected x of shape \(n, 3\)"):
        model.step(x[:, :2], h, c)


def test_stepping_one_cycle_at_a_time_equals_running_the_sequence(model: DegradationLSTM) -> None:
    """A batch of twins stepped once per cycle ends in the state encode() reaches in one pass,
    for histories of different lengths (the shorter ones simply stop stepping)."""
    histories = [_CELLS[0].soh()[:40], _CELLS[1].soh()[:25], _CELLS[2].soh()[:33]]
    h, c = model.initial_state(3)
    for k in range(1, 41):
        active = np.array([k <= len(s) for s in histories])
        soh = np.array([s[k - 1] if k <= len(s) else 0.0 for s in histories])[active]
        prev = np.array([s[k - 2] if 2 <= k <= len(s) else np.nan for s in histories])[active]
        _, h_new, c_new = model.step(cycle_inputs(soh, k, prev), h[active], c[active])
        h[active], c[active] = h_new, c_new
    h_all, c_all = model.encode(histories)
    np.testing.assert_allclose(h, h_all, atol=1e-5)
    np.testing.assert_allclose(c, c_all, atol=1e-5)
    # The head after the last step is the forecast's input: both paths forecast alike.
    last = np.array([s[-1] for s in histories])
    a = model.forecast(h, last, horizon_cycles=30)
    b = model.forecast_histories(histories, horizon_cycles=30)
    np.testing.assert_allclose(a.soh, b.soh, atol=1e-5)


def test_forecast_bands_are_ordered_and_monotone(model: DegradationLSTM) -> None:
    """SOH quantiles p10 <= p50 <= p90 never rise with the horizon (after the first cycle);
    RUL bands are ordered and 80 % comes before 70 %."""
    fc = model.forecast_histories([_CELLS[0].soh()[:45], _CELLS[1].soh()[:10]], horizon_cycles=80)
    assert fc.soh.shape == (2, 80, 3)
    assert np.all(np.diff(fc.soh, axis=2) >= -1e-12)
    assert np.all(np.diff(fc.soh, axis=1) <= 1e-12)
    for rul in (fc.rul_80_cycles, fc.rul_70_cycles):
        assert rul.shape == (2, 3)
        assert np.all(np.diff(rul, axis=1) >= 0)
    assert np.all(fc.rul_80_cycles <= fc.rul_70_cycles)


def test_rul_matches_the_forecast_trajectory(model: DegradationLSTM) -> None:
    """The p50 RUL is the first forecast cycle at or below the threshold; 0 if already there."""
    soh = _CELLS[2].soh()[:60]
    h, _ = model.encode([soh, np.array([0.75, 0.69])])
    last = np.array([soh[-1], 0.69])
    fc = model.forecast(h, last, horizon_cycles=400)
    rul = model.remaining_useful_life(h, last, 0.7)
    below = np.flatnonzero(fc.soh[0, :, 1] <= 0.7)
    assert len(below) and rul[0, 1] == below[0] + 1
    np.testing.assert_array_equal(rul, fc.rul_70_cycles)
    np.testing.assert_array_equal(rul[1], [0.0, 0.0, 0.0])


def test_save_and_load_give_identical_outputs(model: DegradationLSTM, tmp_path: Path) -> None:
    """The saved state dict and JSON metadata (params, metrics) reload to the same model."""
    model.save(tmp_path)
    meta = json.loads((tmp_path / "degradation_lstm.json").read_text())
    assert meta["params"]["hidden_size"] == 32 and "loss_last" in meta["metrics"]
    again = DegradationLSTM.load(tmp_path)
    assert again.params == model.params and again.metrics == model.metrics
    hist = [_CELLS[1].soh()[:30]]
    np.testing.assert_array_equal(
        again.forecast_histories(hist).soh, model.forecast_histories(hist).soh
    )


def test_load_rejects_a_directory_without_metadata(tmp_path: Path) -> None:
    """Loading from an empty directory says which file is missing."""
    with pytest.raises(ValueError, match=r"Expected degradation_lstm\.json in"):
        DegradationLSTM.load(tmp_path)


def test_same_seed_same_model_other_seed_other_model(model: DegradationLSTM) -> None:
    """Training is deterministic given the seed (weights and forecasts); another seed differs."""
    again = train(_CELLS, _TINY, seed=0)
    other = train(_CELLS, _TINY, seed=1)
    hist = [_CELLS[0].soh()[:50]]
    np.testing.assert_array_equal(
        again.forecast_histories(hist).soh, model.forecast_histories(hist).soh
    )
    assert not np.array_equal(
        other.forecast_histories(hist).soh, model.forecast_histories(hist).soh
    )


def test_training_lowers_the_loss() -> None:
    """On tiny synthetic data the smoothed training loss falls, and torch's thread setting is
    restored afterwards."""
    threads = torch.get_num_threads()
    params = DegradationParams(train_steps=150, batch_size=8, hidden_size=16, synthetic_frac=0.0)
    trained = train(_CELLS, params, seed=3)
    assert trained.metrics["loss_last"] < 0.7 * trained.metrics["loss_first"]
    assert torch.get_num_threads() == threads


def test_training_needs_a_usable_history() -> None:
    """Histories with fewer than two clean cycles cannot train a model."""
    with pytest.raises(ValueError, match=r"Expected at least one training history .* \[\('X', 1\)\]"):
        train([CellHistory.from_soh("X", [1.0])], _TINY)

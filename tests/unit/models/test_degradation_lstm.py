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
    Encoded,
    cycle_inputs,
    step_due,
    train,
)
from twins.cycle_inputs import smooth_slopes, step_indices

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


def test_cycle_inputs_columns_and_first_step() -> None:
    """One row per battery, float32, in CYCLE_INPUT_NAMES order; the first step has no change,
    no slope, no fade so far and an advance of the whole life (log 0)."""
    x = cycle_inputs([0.85, 0.9], [1.0, 50.0], [np.nan, 0.92], [0.0, 40.0], [np.nan, 1.0], [0.0, -2.0])
    assert x.shape == (2, len(CYCLE_INPUT_NAMES)) and x.dtype == np.float32
    assert x[0].tolist()[1:] == [0.0, 0.0, 0.0, 0.0, 0.0]
    assert x[0, 0] == pytest.approx(-0.5)
    assert x[1, 1] < 0 and x[1, 3] < 0  # SOH fell since the previous step
    assert x[1, 2] == pytest.approx(np.log(10 / 50) / 2, rel=1e-6)
    assert x[1, 4] == pytest.approx(1.0, rel=1e-6)  # 0.1 faded since the first step
    # The smoothed slope moves a quarter of the way from the previous one to this step's.
    assert x[1, 5] == pytest.approx(0.75 * -2.0 + 0.25 * x[1, 3], rel=1e-6)
    with pytest.raises(ValueError, match="Expected finite soh_frac"):
        cycle_inputs(np.nan, 1, np.nan, 0, np.nan, 0.0)
    with pytest.raises(ValueError, match="Expected 0 <= prev_cycle < cycle"):
        cycle_inputs(0.9, 10, 0.91, 10, 1.0, 0.0)


def test_inputs_do_not_depend_on_the_length_of_life() -> None:
    """A cell ageing ten times slower, measured ten times as often, gives the same inputs at
    the same fraction of its life: the model reads time relative to the cycles lived."""
    short_k = np.arange(1, 201, dtype=np.float64)
    long_k = np.arange(1, 2001, dtype=np.float64)
    soh = lambda k, life: 1.0 - 0.2 * (k / life) ** 2  # noqa: E731
    idx_s = step_indices(short_k, 0.03)
    idx_l = step_indices(long_k, 0.03)
    # Past the first cycles (every one a step), both step at the same fractions of life.
    k_s, k_l = short_k[idx_s], long_k[idx_l]
    late_s, late_l = k_s[k_s > 100] / 200, k_l[k_l > 1000] / 2000
    assert abs(len(late_s) - len(late_l)) <= 0.2 * len(late_l)  # whole cycles round the short life
    x_s = _inputs(k_s, soh(k_s, 200.0))
    x_l = _inputs(k_l, soh(k_l, 2000.0))
    # Fade so far (0.2 u^2 / 0.1) and the slope in log-time (-0.4 u^2 / 0.1) at the fraction
    # u of life: the same functions of u for either life.
    for x, k, life in ((x_s, k_s, 200.0), (x_l, k_l, 2000.0)):
        u = k / life
        late = u > 0.5
        np.testing.assert_allclose(x[late, 4], 2 * u[late] ** 2, atol=0.01)
        np.testing.assert_allclose(x[late, 3], -4 * u[late] ** 2, rtol=0.05)
    assert len(idx_l) < 2.0 * len(idx_s)  # ten times the cycles, not ten times the steps


def _inputs(k: np.ndarray, s: np.ndarray) -> np.ndarray:
    x = cycle_inputs(s, k, np.concatenate([[np.nan], s[:-1]]), np.concatenate([[0.0], k[:-1]]), s[0], 0.0)
    return smooth_slopes(x)


def test_step_due_matches_step_indices() -> None:
    """The twin's per-measurement rule picks exactly the measurements the offline path uses."""
    rng = np.random.default_rng(4)
    k = np.cumsum(rng.uniform(0.2, 3.0, 500))
    idx = step_indices(k, 0.03)
    last, picked = 0.0, []
    for j, kj in enumerate(k):
        if step_due(kj, last, 0.03):
            picked.append(j)
            last = kj
    assert picked == idx.tolist()
    assert not step_due(0.0, 0.0, 0.03)  # no cycle lived, nothing to step on


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"hidden_size": 0}, r"Expected hidden_size in \[1, 1024\], got 0"),
        ({"horizon_knots_rel": (0.0, 4.0)}, "strictly increasing from above 0, got"),
        ({"horizon_knots_rel": (0.1, 0.4, 0.4)}, "strictly increasing from above 0, got"),
        ({"step_fraction": 1.0}, r"Expected step_fraction in \(0, 1\), got 1.0"),
        ({"stretch_drift": 1.0}, "Expected stretch_drift < 1"),
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
    params = DegradationParams(hidden_size=16, horizon_knots_rel=(0.1, 0.5, 2.0))
    again = DegradationParams.from_dict(json.loads(json.dumps(params.__dict__)))
    assert again == params
    with pytest.raises(ValueError, match=r"got unknown \['layers'\]"):
        DegradationParams.from_dict({"layers": 2})


def test_step_shapes(model: DegradationLSTM) -> None:
    """One step for n batteries: drop quantiles (n, K, 3), new state float32 (n, hidden)."""
    n, hidden = 5, model.hidden_size
    h, c = model.initial_state(n)
    x = cycle_inputs(np.linspace(0.8, 1.0, n), np.arange(1, n + 1), np.nan, 0.0, np.nan, 0.0)
    out, h1, c1 = model.step(x, h, c)
    k = len(model.params.horizon_knots_rel)
    assert hidden == 32
    assert out.drop_quantiles.shape == (n, k, 3)
    np.testing.assert_array_equal(out.horizons_rel, model.params.horizon_knots_rel)
    assert h1.shape == c1.shape == (n, hidden) and h1.dtype == c1.dtype == np.float32
    assert not np.array_equal(h1, h)
    with pytest.raises(ValueError, match=r"Expected h of shape \(5, 32\), got \(4, 32\)"):
        model.step(x, h[:4], c)
    with pytest.raises(ValueError, match=r"Expected x of shape \(n, 6\)"):
        model.step(x[:, :2], h, c)


def test_stepping_when_due_equals_running_the_sequence(model: DegradationLSTM) -> None:
    """A batch of twins, each offered every measurement and stepping when one is due, ends
    in the state encode() reaches in one pass, for histories of different lengths."""
    histories = [_CELLS[0].soh()[:80], _CELLS[1].soh()[:25], _CELLS[2].soh()[:63]]
    h, c = model.initial_state(3)
    last_k, last_s, first_s, ewma = np.zeros(3), np.full(3, np.nan), np.full(3, np.nan), np.zeros(3)
    for k in range(1, 81):
        live = np.array([k <= len(s) for s in histories])
        soh = np.array([s[k - 1] if k <= len(s) else 1.0 for s in histories])
        due = live & step_due(np.full(3, float(k)), last_k, model.params.step_fraction)
        x = cycle_inputs(soh[due], k, last_s[due], last_k[due], first_s[due], ewma[due])
        _, h[due], c[due] = model.step(x, h[due], c[due])
        first_s[due] = np.where(np.isnan(first_s[due]), soh[due], first_s[due])
        last_k[due], last_s[due], ewma[due] = k, soh[due], x[:, 5]
    enc = model.encode(histories)
    np.testing.assert_allclose(h, enc.h, atol=1e-5)
    np.testing.assert_allclose(c, enc.c, atol=1e-5)
    np.testing.assert_array_equal(enc.step_cycle, last_k)
    np.testing.assert_array_equal(enc.step_soh, last_s)
    np.testing.assert_array_equal(enc.step_slope_ewma, ewma)  # bit for bit: the same float32 recurrence
    # From the last step, both paths forecast alike (counted from the last measurement).
    now = np.array([float(len(s)) for s in histories])
    a = model.forecast(Encoded(h, c, last_s, last_k, ewma), horizon_cycles=30, cycle_now=now)
    b = model.forecast_histories(histories, horizon_cycles=30)
    np.testing.assert_allclose(a.soh, b.soh, atol=1e-5)


def test_forecast_bands_are_ordered_and_monotone(model: DegradationLSTM) -> None:
    """SOH quantiles p10 <= p50 <= p90 never rise with the horizon (after the first knot);
    RUL bands are ordered and 80 % comes before 70 %."""
    fc = model.forecast_histories([_CELLS[0].soh()[:45], _CELLS[1].soh()[:10]], horizon_cycles=80)
    assert fc.soh.shape == (2, 80, 3)
    assert np.all(np.diff(fc.soh, axis=2) >= -1e-12)
    first_knot = int(np.ceil(model.params.horizon_knots_rel[0] * 45))
    assert np.all(np.diff(fc.soh[0, first_knot:], axis=0) <= 1e-12)
    for rul in (fc.rul_80_cycles, fc.rul_70_cycles):
        assert rul.shape == (2, 3)
        assert np.all(np.diff(rul, axis=1) >= 0)
    assert np.all(fc.rul_80_cycles <= fc.rul_70_cycles)


def test_reach_scales_with_the_cycles_lived(model: DegradationLSTM) -> None:
    """The same drop curve read at 100 and at 1,000 cycles lived reaches ten times as far:
    a cell half-way through a 2,000-cycle life can be forecast to its end."""
    enc = model.encode([_CELLS[0].soh()[:60]])
    at = lambda k: Encoded(enc.h, enc.c, np.array([0.9]), np.array([k]), enc.step_slope_ewma)  # noqa: E731
    short = model.remaining_useful_life(at(100.0), 0.8)
    long = model.remaining_useful_life(at(1000.0), 0.8)
    assert np.all(np.isfinite(short))
    np.testing.assert_allclose(long, 10 * short, atol=10)


def test_rul_matches_the_forecast_trajectory(model: DegradationLSTM) -> None:
    """The p50 RUL is the first forecast cycle at or below the threshold; 0 if already there;
    cycles lived since the step are taken off."""
    soh = _CELLS[2].soh()[:60]
    enc = model.encode([soh, np.array([0.75, 0.69])])
    fc = model.forecast(enc, horizon_cycles=2000)
    rul = model.remaining_useful_life(enc, 0.7)
    below = np.flatnonzero(fc.soh[0, :, 1] <= 0.7)
    assert len(below) and rul[0, 1] == below[0] + 1
    np.testing.assert_array_equal(rul, fc.rul_70_cycles)
    np.testing.assert_array_equal(rul[1], [0.0, 0.0, 0.0])
    later = model.remaining_useful_life(enc, 0.7, cycle_now=enc.step_cycle + 5)
    np.testing.assert_array_equal(later[0], np.maximum(rul[0] - 5, 0))
    with pytest.raises(ValueError, match="Expected cycle_now >= step_cycle"):
        model.remaining_useful_life(enc, 0.7, cycle_now=enc.step_cycle - 1)


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
    """Training is deterministic given the seed (weights and forecasts, bit for bit); another
    seed differs; torch's deterministic-algorithms flag is given back."""
    before = torch.are_deterministic_algorithms_enabled()
    again = train(_CELLS, _TINY, seed=0)
    assert torch.are_deterministic_algorithms_enabled() == before
    for name, tensor in model._net.state_dict().items():
        assert torch.equal(tensor, again._net.state_dict()[name]), name
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


# bfloat16 keeps 8 bits of mantissa (0.4 % per rounding): one step's h and c move by under
# 2 % of their size (absolute below 1; c grows to about 10 on long histories), and the SOH
# drops the head reads off h by under 0.01 (1 % of rated).
_BF16_STATE_REL = 0.02
_BF16_DROP_TOL = 0.01


def _close_in_bf16(got: np.ndarray, ref: np.ndarray) -> bool:
    return bool(np.all(np.abs(got - ref) <= _BF16_STATE_REL * np.maximum(1.0, np.abs(ref))))


def test_bfloat16_step_agrees_with_float32_on_the_cpu(model: DegradationLSTM) -> None:
    """A bfloat16 copy steps the same twins to within the stated tolerance of float32, returns
    float32 state, and leaves the float32 model bit for bit as it was."""
    from models.inference_device import InferenceDevice

    rng = np.random.default_rng(5)
    n = 500
    soh = rng.uniform(0.75, 1.0, n)
    cycle = rng.uniform(30, 1500, n)
    x = cycle_inputs(soh, cycle, soh + 0.002, 0.96 * cycle, soh + 0.05, -0.5)
    # The state twins part-way through their histories hold.
    start = model.encode([_CELLS[k % 3].clean().soh()[: 20 + k % 50] for k in range(n)])
    h, c = start.h, start.c
    before = model.step(x, h, c)
    bf16 = model.on_device(InferenceDevice("cpu", "bfloat16"))
    assert bf16 is not model and bf16.device == InferenceDevice("cpu", "bfloat16")
    out16, h16, c16 = bf16.step(x, h, c)
    out32, h32, c32 = model.step(x, h, c)
    assert h16.dtype == c16.dtype == np.float32 and out16.drop_quantiles.dtype == np.float64
    assert _close_in_bf16(h16, h32) and _close_in_bf16(c16, c32)
    assert np.abs(out16.drop_quantiles - out32.drop_quantiles).max() < _BF16_DROP_TOL
    assert not np.array_equal(h16, h32)  # it did run in bfloat16
    # The float32 model is untouched: the same numbers as before the copy was made.
    np.testing.assert_array_equal(before[1], h32)
    np.testing.assert_array_equal(before[0].drop_quantiles, out32.drop_quantiles)
    enc16 = bf16.encode([cell.clean().soh() for cell in _CELLS])
    enc32 = model.encode([cell.clean().soh() for cell in _CELLS])
    assert _close_in_bf16(enc16.h, enc32.h) and _close_in_bf16(enc16.c, enc32.c)


def test_default_device_is_the_model_itself_and_a_placed_copy_is_not_saved(
    model: DegradationLSTM, tmp_path: Path
) -> None:
    """on_device(cpu float32) returns the model unchanged; a bfloat16 copy refuses to be saved
    (its weights are rounded) or copied again."""
    from models.inference_device import InferenceDevice

    assert model.on_device(InferenceDevice()) is model and model.device.is_default
    bf16 = model.on_device(InferenceDevice("cpu", "bfloat16"))
    with pytest.raises(ValueError, match="Expected a model on cpu float32 to save, got a copy for inference on cpu bfloat16"):
        bf16.save(tmp_path)
    with pytest.raises(ValueError, match="Expected a model on cpu float32 to copy"):
        bf16.on_device(InferenceDevice("cpu", "float32"))

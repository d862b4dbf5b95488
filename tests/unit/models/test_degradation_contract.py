"""The degradation LSTM as the twins and the evaluation use it: stateless steps, bands, eval JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models.cell_data import CellHistory, load_cell_histories
from models.cell_eval import METRICS, evaluate_cells
from models.degradation_lstm import (
    DegradationLSTM,
    DegradationParams,
    cycle_inputs,
    step_due,
    train,
)

_TINY = DegradationParams(train_steps=40, batch_size=8)


def _fade(cell: str, cycles: int, rate: float, seed: int) -> CellHistory:
    rng = np.random.default_rng(seed)
    k = np.arange(1, cycles + 1)
    soh = 1.0 - rate * k - 0.3 * (k / cycles) ** 3 * rate * cycles + rng.normal(0, 0.002, cycles)
    return CellHistory(cell, k, 2.0 * soh, 2.0, np.zeros(cycles, dtype=bool))


@pytest.fixture(scope="module")
def model() -> DegradationLSTM:
    return train([_fade("A", 120, 0.0025, 1), _fade("B", 90, 0.0035, 2), _fade("C", 150, 0.002, 3)], _TINY, seed=0)


def test_stepping_cycle_by_cycle_equals_encoding_the_history(model: DegradationLSTM) -> None:
    """The twin's path (offered every cycle, one stateless step when due, carrying h and c)
    gives the same state as running the whole history at once (the offline path)."""
    soh = 1.0 - 0.003 * np.arange(1, 61)
    h, c = model.initial_state(1)
    last_k, last_s, first_s, ewma = 0.0, np.nan, np.nan, 0.0
    for k, s in enumerate(soh, start=1):
        if step_due(k, last_k, model.params.step_fraction):
            x = cycle_inputs(s, k, last_s, last_k, first_s, ewma)
            _, h, c = model.step(x, h, c)
            first_s = s if np.isnan(first_s) else first_s
            last_k, last_s, ewma = k, s, float(x[0, 5])
    enc = model.encode([soh])
    np.testing.assert_allclose(h, enc.h, atol=1e-5)
    np.testing.assert_allclose(c, enc.c, atol=1e-5)
    assert enc.step_cycle[0] == last_k and enc.step_slope_ewma[0] == ewma


def test_bands_are_ordered_and_save_load_is_exact(model: DegradationLSTM, tmp_path: Path) -> None:
    """p10 <= p50 <= p90 for RUL; a saved and reloaded model forecasts identically."""
    hist = [1.0 - 0.003 * np.arange(1, 41), 1.0 - 0.005 * np.arange(1, 21)]
    fc = model.forecast_histories(hist, horizon_cycles=50)
    assert fc.soh.shape == (2, 50, 3)
    for rul in (fc.rul_80_cycles, fc.rul_70_cycles):
        assert np.all(rul[:, 0] <= rul[:, 1]) and np.all(rul[:, 1] <= rul[:, 2])
    model.save(tmp_path)
    again = DegradationLSTM.load(tmp_path)
    np.testing.assert_array_equal(again.forecast_histories(hist).rul_70_cycles, fc.rul_70_cycles)


def test_eval_on_five_column_csvs_has_the_promised_shape(tmp_path: Path) -> None:
    """`bms models eval` works on files with only the five required columns; a cell that never
    reaches end of life is reported and left out of the mean."""
    for cell, cycles, rate in (("C1", 140, 0.0028), ("C2", 110, 0.0035), ("C3", 160, 0.0024), ("C4", 60, 0.001)):
        h = _fade(cell, cycles, rate, 5)
        lines = ["cell_id,cycle,capacity_Ah,nominal_capacity_Ah,anomaly_flag"]
        lines += [f"{cell},{k},{cap:.5f},2.0,0" for k, cap in zip(h.cycle, h.capacity_ah, strict=True)]
        (tmp_path / f"{cell}.csv").write_text("\n".join(lines) + "\n")
    assert len(load_cell_histories(tmp_path)) == 4
    result = evaluate_cells(tmp_path, _TINY, seed=0)
    json.dumps(result)
    assert set(result["cells"]) == {"C1", "C2", "C3", "C4"}
    assert result["cells"]["C4"]["reaches_eol"] is False
    for name in ("model", "fade_curve", "mean_lifetime"):
        assert set(METRICS) <= set(result["mean"][name])
        assert result["mean"][name]["rul_rel_error_at_50pct"] is not None

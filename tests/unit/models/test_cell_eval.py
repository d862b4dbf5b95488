"""Tests for :mod:`models.cell_eval`: leave-one-cell-out evaluation and its JSON shape."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models.cell_eval import METHODS, METRICS, CellEvalParams, evaluate_cells, seen_cycles
from models.degradation_lstm import DegradationParams

_TINY = DegradationParams(train_steps=20, batch_size=8, hidden_size=8)


def _write_cell(directory: Path, cell_id: str, cycles: int, rate: float, seed: int) -> None:
    """A CSV with only the five required columns: a noisy linear fade from 0.98 SOH of 2 Ah."""
    rng = np.random.default_rng(seed)
    soh = 0.98 - rate * np.arange(1, cycles + 1) + rng.normal(0.0, 0.002, cycles)
    lines = ["cell_id,cycle,capacity_Ah,nominal_capacity_Ah,anomaly_flag"]
    lines += [f"{cell_id},{k},{2.0 * s:.5f},2.0,0" for k, s in enumerate(soh, start=1)]
    (directory / f"{cell_id}.csv").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Evaluation of three cells reaching 70 %, one that never does, one dead on arrival."""
    directory = tmp_path_factory.mktemp("cells")
    _write_cell(directory, "C1", 110, 0.0035, 1)
    _write_cell(directory, "C2", 90, 0.0045, 2)
    _write_cell(directory, "C3", 130, 0.003, 3)
    _write_cell(directory, "N1", 50, 0.001, 4)  # ends near 0.93: never reaches end of life
    _write_cell(directory, "D1", 6, 0.06, 5)  # end of life at cycle 5: too short to forecast
    return evaluate_cells(directory, _TINY, seed=0, progress=lambda line: None)


def test_result_has_the_promised_shape(result: dict[str, object]) -> None:
    """cells -> {model, fade_curve, mean_lifetime -> metrics; true_eol_cycle}, mean -> the same
    three methods with exactly the three metrics; everything JSON-serialisable."""
    parsed = json.loads(json.dumps(result))
    assert set(parsed["cells"]) == {"C1", "C2", "C3", "N1", "D1"}
    for cell in parsed["cells"].values():
        assert "true_eol_cycle" in cell and "reaches_eol" in cell
        for method in METHODS:
            assert set(cell[method]) == set(METRICS)
    assert set(parsed["mean"]) == set(METHODS)
    for method in METHODS:
        assert set(parsed["mean"][method]) == set(METRICS)
        assert all(isinstance(v, float) for v in parsed["mean"][method].values())


def test_cells_reaching_eol_are_scored(result: dict[str, object]) -> None:
    """A cell reaching 70 % has its true EOL, RUL errors at 25 % and 50 % and a capacity RMSE."""
    cell = result["cells"]["C2"]  # type: ignore[index]
    assert cell["reaches_eol"] is True
    eol = cell["true_eol_cycle"]
    assert 50 <= eol <= 75
    assert cell["seen_cycles"] == {"25pct": seen_cycles(eol, 0.25), "50pct": seen_cycles(eol, 0.5)}
    for method in METHODS:
        assert all(cell[method][m] is not None and cell[method][m] >= 0 for m in METRICS)
        predicted = cell["predicted_eol_cycle"][method]["50pct"]
        assert cell[method]["rul_rel_error_at_50pct"] == pytest.approx(abs(predicted - eol) / eol)
    band = cell["predicted_eol_cycle"]["model"]
    assert band["50pct_p10"] <= band["50pct"] <= band["50pct_p90"]


def test_cells_without_eol_are_reported_but_not_averaged(result: dict[str, object]) -> None:
    """A cell that never reaches EOL gets a capacity RMSE only and is excluded from the mean;
    so is a cell whose EOL comes before a forecast is possible; the mean is over the rest."""
    cells = result["cells"]  # type: ignore[index]
    never = cells["N1"]
    assert never["reaches_eol"] is False and never["true_eol_cycle"] is None
    assert never["model"]["rul_rel_error_at_50pct"] is None
    assert never["model"]["capacity_rmse_pct_nominal"] is not None
    assert cells["D1"]["reaches_eol"] is True
    assert all(v is None for v in cells["D1"]["model"].values())
    assert set(result["excluded"]) == {"N1", "D1"}  # type: ignore[arg-type]
    assert "never reaches 70%" in result["excluded"]["N1"]  # type: ignore[index]
    assert result["n_cells_in_mean"] == 3
    for method in METHODS:
        for metric in METRICS:
            expected = np.mean([cells[c][method][metric] for c in ("C1", "C2", "C3")])
            assert result["mean"][method][metric] == pytest.approx(expected)  # type: ignore[index]


def test_eval_params_are_validated() -> None:
    """Protocol knobs are checked with the value that arrived."""
    with pytest.raises(ValueError, match=r"Expected eol_fraction in \(0, 1\), got 1.2"):
        CellEvalParams(eol_fraction=1.2)
    with pytest.raises(ValueError, match="Expected min_seen_cycles >= 2, got 1"):
        CellEvalParams(min_seen_cycles=1)


def test_single_cell_cannot_be_left_out(tmp_path: Path) -> None:
    """Leave-one-out needs at least two cells."""
    _write_cell(tmp_path, "C1", 40, 0.01, 1)
    with pytest.raises(ValueError, match=r"Expected at least 2 cells for leave-one-out, got \['C1'\]"):
        evaluate_cells(tmp_path, _TINY)

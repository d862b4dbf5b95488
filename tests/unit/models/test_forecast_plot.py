"""Tests for :mod:`models.forecast_plot`: the forecast picture of a held-out cell."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from models.cell_data import CellHistory
from models.degradation_lstm import DegradationParams
from models.forecast_plot import plot_cell, plot_cells

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class _Forecast:
    soh: npt.NDArray[np.float64]


@dataclass
class _NeverEnding:
    """A model whose band never crosses the threshold (infinite p50 and p90 RUL)."""

    horizons: list[int]
    thresholds: list[float]

    def forecast_histories(
        self, soh_histories: Sequence[npt.ArrayLike], horizon_cycles: int = 200
    ) -> _Forecast:
        self.horizons.append(horizon_cycles)
        last = float(np.asarray(soh_histories[0])[-1])
        return _Forecast(np.full((1, horizon_cycles, 3), last))

    def remaining_useful_life_histories(
        self, soh_histories: Sequence[npt.ArrayLike], threshold_frac: float
    ) -> npt.NDArray[np.float64]:
        self.thresholds.append(threshold_frac)
        return np.array([[40.0, np.inf, np.inf]])


def test_plot_cell_with_a_given_model_and_initial_basis(tmp_path: Path) -> None:
    """With a given model nothing is trained; the threshold is the cell's own (initial
    basis), the horizon stays bounded when the RUL is infinite, and a PNG is written."""
    cell = CellHistory.from_soh("T", 1.1 - 0.004 * np.arange(1, 101), nominal_capacity_ah=2.0)
    model = _NeverEnding([], [])
    out = plot_cell(
        cell, [], tmp_path / "sub" / "t.png", eol_fraction=0.8, eol_basis="initial", model=model
    )
    assert out.read_bytes().startswith(_PNG_MAGIC)
    assert model.thresholds == [pytest.approx(0.8 * cell.initial_capacity_ah() / 2.0)]
    assert len(model.horizons) == 1 and 100 <= model.horizons[0] <= 5 * 100 + 20
    with pytest.raises(ValueError, match="without T"):
        plot_cell(cell, [cell], tmp_path / "x.png", model=model)


def test_plot_cells_trains_leave_one_out_and_skips_cells_without_eol(tmp_path: Path) -> None:
    """plot_cells writes one PNG per cell reaching end of life (at the given fraction and
    basis), each from a tiny model trained on the others."""
    directory = tmp_path / "cells"
    directory.mkdir()
    for cell, rate in (("A", 0.004), ("B", 0.005), ("N", 0.0005)):
        soh = 1.0 - rate * np.arange(1, 121)
        lines = ["cell_id,cycle,capacity_Ah,nominal_capacity_Ah,anomaly_flag"]
        lines += [f"{cell},{k},{s:.5f},1.0,0" for k, s in enumerate(soh, start=1)]
        (directory / f"{cell}.csv").write_text("\n".join(lines) + "\n")
    paths = plot_cells(
        directory,
        tmp_path / "png",
        seed=0,
        eol_fraction=0.8,
        eol_basis="initial",
        params=DegradationParams(train_steps=3, batch_size=4, hidden_size=8),
    )
    assert [p.name for p in paths] == ["degradation_forecast_A.png", "degradation_forecast_B.png"]
    assert all(p.read_bytes().startswith(_PNG_MAGIC) for p in paths)

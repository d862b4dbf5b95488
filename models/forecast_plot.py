"""A picture of one held-out cell: seen capacity, actual remainder, the LSTM's band, the baseline.

Used by ``bms models eval --plot DIR`` and for the model card's figure. The model is trained
on the *other* cells only (leave one out, as in :mod:`models.cell_eval`), then forecasts from
``seen_fraction`` of the cell's true life.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI

import matplotlib.pyplot as plt
import numpy as np

from models.cell_data import CellHistory, load_cell_histories
from models.degradation_lstm import DegradationParams, train
from models.fade_baselines import FadeCurve, first_cycle_at_or_below

__all__ = ["plot_cell", "plot_cells"]


def plot_cell(
    cell: CellHistory,
    others: Sequence[CellHistory],
    out_path: Path,
    seen_fraction: float = 0.5,
    eol_fraction: float = 0.7,
    params: DegradationParams | None = None,
    seed: int = 0,
) -> Path:
    """Write ``out_path`` (PNG) for ``cell``, the model trained on ``others``."""
    soh = cell.clean().soh()
    nominal = cell.nominal_capacity_ah
    true_eol = first_cycle_at_or_below(soh, eol_fraction, 1)
    if true_eol is None:
        raise ValueError(f"Expected cell {cell.cell_id} to reach {eol_fraction:.0%} of nominal, it never does.")
    seen = max(2, math.floor(seen_fraction * true_eol))
    model = train(list(others), params, seed=seed)
    horizon = max(len(soh) - seen, 1) + 40
    fc = model.forecast_histories([soh[:seen]], horizon_cycles=horizon)
    curve = FadeCurve.fit(soh[:seen])
    future = np.arange(seen + 1, seen + horizon + 1)
    cycles = np.arange(1, len(soh) + 1)

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    ax.plot(cycles[:seen], soh[:seen] * nominal, "k.", ms=3, label="seen (model input)")
    ax.plot(cycles[seen:], soh[seen:] * nominal, ".", color="0.6", ms=3, label="actual")
    band = fc.soh[0] * nominal
    ax.fill_between(future, band[:, 0], band[:, 2], color="tab:blue", alpha=0.2, label="LSTM p10-p90")
    ax.plot(future, band[:, 1], color="tab:blue", lw=2, label="LSTM p50")
    ax.plot(future, curve.forecast(horizon) * nominal, "--", color="tab:orange", label=f"fade curve ({curve.kind})")
    for frac, style in ((0.8, ":"), (eol_fraction, "-.")):
        ax.axhline(frac * nominal, color="tab:red", ls=style, lw=1)
        ax.text(1, frac * nominal, f" {frac:.0%}", color="tab:red", va="bottom", fontsize=8)
    pred_eol = seen + float(fc.rul_70_cycles[0, 1])
    ax.axvline(true_eol, color="k", lw=1, ls="--", label=f"true EOL (cycle {true_eol})")
    ax.axvline(pred_eol, color="tab:blue", lw=1, ls="--", label=f"predicted EOL ({pred_eol:.0f})")
    ax.axvline(seen, color="0.3", lw=0.8)
    ax.set_xlabel("discharge cycle")
    ax.set_ylabel("capacity (Ah)")
    ax.set_title(
        f"{cell.cell_id}: forecast from {seen_fraction:.0%} of life (cycle {seen}), "
        f"trained on {len(others)} other cells"
    )
    ax.legend(fontsize=7, loc="lower left")
    ax.set_xlim(0, max(len(soh), pred_eol, true_eol) + 10)
    # The fitted exponential can dive far below zero beyond the data: keep the axis on the
    # capacities that matter.
    ax.set_ylim(0.55 * nominal, 1.05 * max(float(np.nanmax(soh)), 1.0) * nominal)
    fig.tight_layout()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path)
    plt.close(fig)
    return out_path


def plot_cells(directory: Path, out_dir: Path, seed: int = 0) -> list[Path]:
    """One PNG per cell of ``directory`` that reaches end of life, each left out in turn."""
    cells = load_cell_histories(directory)
    out = []
    for cell in cells:
        if first_cycle_at_or_below(cell.clean().soh(), 0.7, 1) is None:
            continue
        others = [c for c in cells if c.cell_id != cell.cell_id]
        out.append(plot_cell(cell, others, out_dir / f"degradation_forecast_{cell.cell_id}.png", seed=seed))
    return out

"""A picture of one held-out cell: seen capacity, actual remainder, the LSTM's band, baselines.

Used by ``bms models eval --plot DIR`` and for the model card's figure. The model either
comes from the evaluation (the one that forecast the cell in its fold, see
:data:`models.cell_eval.ModelHook`) or is trained here on the *other* cells only (leave one
out, as in :mod:`models.cell_eval`); it forecasts from ``seen_fraction`` of the cell's true
life (of its recorded cycles if it never reaches end of life). End of life is the
evaluation's: ``eol_fraction`` of the nominal or initial capacity (``eol_basis``), reached
when the 5-cycle rolling median falls below it
(:meth:`models.cell_data.CellHistory.end_of_life_cycle`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI

import matplotlib.pyplot as plt
import numpy as np

from models.cell_data import CellHistory, EolBasis, load_cell_histories
from models.cell_eval import Forecaster
from models.degradation_lstm import DegradationParams, train
from models.fade_baselines import FadeCurve, LastSlope

__all__ = ["plot_cell", "plot_cells"]

# Furthest the forecast is drawn, in multiples of the recorded cycles, when the model's
# band never crosses the threshold (an infinite RUL).
_MAX_HORIZON_FACTOR = 5


def plot_cell(
    cell: CellHistory,
    others: Sequence[CellHistory],
    out_path: Path,
    seen_fraction: float = 0.5,
    eol_fraction: float = 0.7,
    params: DegradationParams | None = None,
    seed: int = 0,
    *,
    eol_basis: EolBasis = "nominal",
    model: Forecaster | None = None,
) -> Path:
    """Write ``out_path`` (PNG) for ``cell``.

    Parameters
    ----------
    cell
        The held-out cell.
    others
        The cells the model is (or was) trained on; never ``cell`` itself.
    out_path
        PNG to write (parent folders are created).
    seen_fraction
        Share of the true life (of the recorded cycles without an end of life) the model
        sees.
    eol_fraction, eol_basis
        End of life, as in :class:`models.cell_eval.CellEvalParams`.
    params, seed
        Training of the model when ``model`` is None.
    model
        An already trained model (on ``others``); None trains one.

    Returns
    -------
    Path
        ``out_path``.
    """
    if cell.cell_id in {o.cell_id for o in others}:
        raise ValueError(f"Expected the model's training cells without {cell.cell_id}.")
    soh = cell.clean().soh()
    nominal = cell.nominal_capacity_ah
    threshold = cell.eol_threshold_soh(eol_fraction, eol_basis)
    true_eol = cell.end_of_life_cycle(eol_fraction, eol_basis)
    seen = max(2, math.floor(seen_fraction * (true_eol if true_eol is not None else len(soh))))
    if model is None:
        model = train(list(others), params, seed=seed)
    rul = np.asarray(model.remaining_useful_life_histories([soh[:seen]], threshold))[0]
    # Long enough to show the data and the band's crossing of the threshold (its latest
    # crossing is the p90 EOL, the upper SOH band's), bounded when it never crosses.
    cap = _MAX_HORIZON_FACTOR * max(len(soh), 1)
    finite_p90 = float(rul[2]) if math.isfinite(float(rul[2])) else float(cap)
    horizon = max(len(soh) - seen, min(math.ceil(finite_p90), cap) + 20, 1)
    band = np.asarray(model.forecast_histories([soh[:seen]], horizon_cycles=horizon).soh)[0]
    future = np.arange(seen + 1, seen + horizon + 1)
    cycles = np.arange(1, len(soh) + 1)
    eol_p10, eol_p50, eol_p90 = (seen + min(float(r), horizon) for r in rul)

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    ax.plot(cycles[:seen], soh[:seen] * nominal, "k.", ms=3, label="seen (model input)")
    ax.plot(cycles[seen:], soh[seen:] * nominal, ".", color="0.6", ms=3, label="actual")
    ax.fill_between(
        future,
        band[:, 0] * nominal,
        band[:, 2] * nominal,
        color="tab:blue",
        alpha=0.2,
        label="LSTM p10-p90",
    )
    ax.plot(future, band[:, 1] * nominal, color="tab:blue", lw=2, label="LSTM p50")
    curve = FadeCurve.fit(soh[:seen])
    ax.plot(
        future,
        curve.forecast(horizon) * nominal,
        "--",
        color="tab:orange",
        label=f"fade curve ({curve.kind})",
    )
    ax.plot(
        future,
        LastSlope.fit(soh[:seen]).forecast(horizon) * nominal,
        ":",
        color="tab:green",
        label="last slope",
    )
    basis = "nominal" if eol_basis == "nominal" else "initial capacity"
    ax.axhline(threshold * nominal, color="tab:red", ls="-.", lw=1)
    if true_eol is not None:
        ax.axvline(true_eol, color="k", lw=1, ls="--", label=f"true EOL (cycle {true_eol})")
    ax.axvline(eol_p50, color="tab:blue", lw=1, ls="--", label=f"predicted EOL ({eol_p50:.0f})")
    ax.axvspan(eol_p10, eol_p90, color="tab:blue", alpha=0.07, label="predicted EOL p10-p90")
    ax.axvline(seen, color="0.3", lw=0.8)
    ax.set_xlabel("clean discharge cycle")
    ax.set_ylabel("capacity (Ah)")
    life = f"{seen_fraction:.0%} of life" if true_eol is not None else "half its data (no EOL)"
    ax.set_title(
        f"{cell.cell_id}: forecast from {life} (cycle {seen}), "
        f"trained on {len(others)} other cells",
        fontsize=9,
    )
    ax.legend(fontsize=7, loc="best")
    x_max = max(len(soh), eol_p90, true_eol or 0) + 10
    ax.set_xlim(0, x_max)
    label = f"EOL: {eol_fraction:.0%} of {basis} "
    ax.text(x_max, threshold * nominal, label, color="tab:red", ha="right", va="bottom", fontsize=8)
    # The fitted exponential can dive far below zero beyond the data: keep the axis on the
    # capacities that matter.
    low = min(threshold, float(np.nanmin(soh)) if len(soh) else threshold) - 0.1
    ax.set_ylim(max(low, 0.0) * nominal, 1.05 * max(float(np.nanmax(soh)), 1.0) * nominal)
    fig.tight_layout()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path)
    plt.close(fig)
    return out_path


def plot_cells(
    directory: Path,
    out_dir: Path,
    seed: int = 0,
    *,
    eol_fraction: float = 0.7,
    eol_basis: EolBasis = "nominal",
    params: DegradationParams | None = None,
) -> list[Path]:
    """One PNG per cell of ``directory`` that reaches end of life, each left out in turn.

    Trains one model per plotted cell; :data:`models.cell_eval.ModelHook` reuses the
    evaluation's models instead.
    """
    cells = load_cell_histories(directory)
    out = []
    for cell in cells:
        if cell.end_of_life_cycle(eol_fraction, eol_basis) is None:
            continue
        others = [c for c in cells if c.cell_id != cell.cell_id]
        path = out_dir / f"degradation_forecast_{cell.cell_id}.png"
        out.append(
            plot_cell(
                cell,
                others,
                path,
                eol_fraction=eol_fraction,
                params=params,
                seed=seed,
                eol_basis=eol_basis,
            )
        )
    return out

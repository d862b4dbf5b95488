"""Leave-one-cell-out evaluation of the degradation LSTM against the two fade baselines.

Protocol (after Chen, Hong & Zhou, IEEE Access 2022, on NASA PCoE B0005/6/7/18): for each
cell of a directory, train on all the *other* cells, then forecast the held-out cell from its
first cycles only. Hyper-parameters and seed are the same for every fold; nothing is tuned on
the held-out cell. Cycles are 1-based positions in the clean series (anomaly-flagged cycles
dropped), as in :meth:`models.cell_data.CellHistory.end_of_life_cycle`.

Metrics of one held-out cell that reaches end of life (EOL, ``eol_fraction`` of nominal):

* ``rul_rel_error_at_25pct``, ``rul_rel_error_at_50pct``: ``|predicted EOL - true EOL| /
  true EOL`` when the predictor has seen the first ``floor(f * true EOL)`` cycles, f = 0.25,
  0.5; the model's prediction is its p50;
* ``capacity_rmse_pct_nominal``: RMSE between the forecast trajectory (p50 for the model)
  from the 50 % point and the recorded capacity up to the end of the data, in % of nominal.

A cell that never reaches EOL is still forecast (from half its recorded cycles) and gets a
capacity RMSE, but no RUL error; a cell whose EOL comes so early that the 25 % point holds
fewer than ``min_seen_cycles`` cycles cannot be forecast. Both kinds are listed under
``"excluded"`` with the reason and left out of the mean.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from models.cell_data import CellHistory, load_cell_histories
from models.degradation_lstm import DegradationLSTM, DegradationParams, train
from models.fade_baselines import FadeCurve, MeanLifetime

__all__ = [
    "METHODS",
    "METRICS",
    "SEEN_FRACTIONS",
    "CellEvalParams",
    "evaluate_cells",
    "evaluate_histories",
    "main",
    "seen_cycles",
]

_LOG = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]

#: Predictors compared, in the order they appear in the result.
METHODS: tuple[str, ...] = ("model", "fade_curve", "mean_lifetime")
#: Fractions of the true life a predictor sees (the metric names carry them); the last one
#: is also where the capacity-RMSE forecast starts.
SEEN_FRACTIONS: tuple[float, float] = (0.25, 0.5)
#: Metrics of each predictor, per cell and averaged.
METRICS: tuple[str, ...] = (
    "rul_rel_error_at_25pct",
    "rul_rel_error_at_50pct",
    "capacity_rmse_pct_nominal",
)


@dataclass(frozen=True)
class CellEvalParams:
    """Protocol knobs of the evaluation.

    Parameters
    ----------
    eol_fraction
        End of life as a fraction of nominal capacity.
    horizon_cycles
        Furthest forecast (extended to the cell's recorded length if that is longer); an
        end of life not reached within it is scored as reached at its end (the error is then
        a lower bound) and flagged ``"<point>_beyond_horizon"``.
    min_seen_cycles
        Fewest seen cycles to forecast from (the fade curve needs 2).
    """

    eol_fraction: float = 0.7
    horizon_cycles: int = 500
    min_seen_cycles: int = 2

    def __post_init__(self) -> None:
        if not 0 < self.eol_fraction < 1:
            raise ValueError(f"Expected eol_fraction in (0, 1), got {self.eol_fraction}.")
        if self.horizon_cycles < 1:
            raise ValueError(f"Expected horizon_cycles >= 1, got {self.horizon_cycles}.")
        if self.min_seen_cycles < 2:
            raise ValueError(f"Expected min_seen_cycles >= 2, got {self.min_seen_cycles}.")


def _pct(fraction: float) -> str:
    return f"{round(fraction * 100)}pct"


def seen_cycles(true_eol_cycle: int, fraction: float) -> int:
    """Cycles a predictor sees at ``fraction`` of a life ending at ``true_eol_cycle``."""
    return math.floor(fraction * true_eol_cycle)


@dataclass(frozen=True)
class _Prediction:
    """One predictor's forecast of one cell from one seen prefix."""

    eol_cycle: float
    beyond_horizon: bool
    soh: FloatArray  # next cycles after the seen ones, length horizon
    eol_band: tuple[float, ...] | None = None  # p10, p50, p90 where the predictor has one


def _predict_all(
    model: DegradationLSTM,
    seen_prefixes: Sequence[FloatArray],
    mean_lifetime: MeanLifetime | None,
    params: CellEvalParams,
    horizon: int,
) -> dict[str, list[_Prediction | None]]:
    """Every predictor on every seen prefix (the model batched over them)."""
    out: dict[str, list[_Prediction | None]] = {m: [] for m in METHODS}
    h, _ = model.encode(seen_prefixes)
    last = np.array([p[-1] for p in seen_prefixes])
    fc = model.forecast(h, last, horizon_cycles=horizon)
    rul = model.remaining_useful_life(h, last, params.eol_fraction)
    for i, seen in enumerate(seen_prefixes):
        k = len(seen)
        rul50 = float(rul[i, 1])
        out["model"].append(
            _Prediction(
                float(k + min(rul50, horizon)),
                rul50 > horizon,
                fc.soh[i, :, 1],
                tuple(float(k + min(float(r), horizon)) for r in rul[i]),
            )
        )
        curve = FadeCurve.fit(seen)
        eol = curve.end_of_life_cycle(params.eol_fraction, horizon)
        out["fade_curve"].append(
            _Prediction(
                float(eol if eol is not None else k + horizon), eol is None, curve.forecast(horizon)
            )
        )
        if mean_lifetime is None:
            out["mean_lifetime"].append(None)
        else:
            out["mean_lifetime"].append(
                _Prediction(
                    mean_lifetime.end_of_life_cycle(k), False, mean_lifetime.forecast(seen, horizon)
                )
            )
    return out


def _rmse_pct(forecast: FloatArray, actual: FloatArray) -> float:
    n = min(len(forecast), len(actual))
    return float(100.0 * np.sqrt(np.mean((forecast[:n] - actual[:n]) ** 2)))


def _fold_header(cell: CellHistory, params: CellEvalParams) -> dict[str, Any]:
    """What is known about a held-out cell before any training; excluded if not forecastable."""
    soh = cell.clean().soh()
    true_eol = cell.end_of_life_cycle(params.eol_fraction)
    result: dict[str, Any] = {
        "reaches_eol": true_eol is not None,
        "true_eol_cycle": true_eol,
        "n_cycles": len(soh),
    }
    if true_eol is None:
        # No RUL error without an end of life; the trajectory from half the data is scored.
        points = {"half_of_data": len(soh) // 2}
    else:
        points = {_pct(f): seen_cycles(true_eol, f) for f in SEEN_FRACTIONS}
    result["seen_cycles"] = points
    if min(points.values()) < params.min_seen_cycles:
        result["excluded_reason"] = (
            f"too few cycles before the first forecast point: {min(points.values())} "
            f"< min_seen_cycles {params.min_seen_cycles}"
        )
        for m in METHODS:
            result[m] = dict.fromkeys(METRICS)
    return result


def _evaluate_fold(
    cell: CellHistory,
    result: dict[str, Any],
    model: DegradationLSTM,
    mean_lifetime: MeanLifetime | None,
    params: CellEvalParams,
) -> dict[str, Any]:
    soh = cell.clean().soh()
    true_eol = result["true_eol_cycle"]
    points: dict[str, int] = result["seen_cycles"]
    keys = list(points)
    # The forecast always covers the recorded data, however long the cell lived.
    horizon = max(params.horizon_cycles, len(soh))
    preds = _predict_all(model, [soh[: points[k]] for k in keys], mean_lifetime, params, horizon)
    rmse_key = keys[-1]
    rmse_from = points[rmse_key]
    predicted: dict[str, dict[str, float | bool | None]] = {}
    for m in METHODS:
        metrics: dict[str, float | None] = dict.fromkeys(METRICS)
        eols: dict[str, float | bool | None] = {}
        for key, p in zip(keys, preds[m], strict=True):
            if p is None:
                continue
            if true_eol is not None:
                metrics[f"rul_rel_error_at_{key}"] = abs(p.eol_cycle - true_eol) / true_eol
                eols[key] = p.eol_cycle
                if p.eol_band is not None:
                    eols[f"{key}_p10"], eols[f"{key}_p90"] = p.eol_band[0], p.eol_band[2]
                if p.beyond_horizon:
                    eols[f"{key}_beyond_horizon"] = True
            if key == rmse_key:
                metrics["capacity_rmse_pct_nominal"] = _rmse_pct(p.soh, soh[rmse_from:])
        result[m] = metrics
        predicted[m] = eols
    result["predicted_eol_cycle"] = predicted
    if true_eol is None:
        result["excluded_reason"] = (
            f"never reaches {params.eol_fraction:.0%} of nominal in {len(soh)} clean cycles"
        )
    return result


def _mean(
    cells: dict[str, dict[str, Any]], included: Sequence[str]
) -> dict[str, dict[str, float | None]]:
    mean: dict[str, dict[str, float | None]] = {}
    for m in METHODS:
        mean[m] = {}
        for metric in METRICS:
            values = [cells[c][m][metric] for c in included if cells[c][m][metric] is not None]
            mean[m][metric] = float(np.mean(values)) if values else None
    return mean


def evaluate_histories(
    histories: Sequence[CellHistory],
    params: DegradationParams | None = None,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    *,
    eval_params: CellEvalParams | None = None,
) -> dict[str, Any]:
    """Leave-one-cell-out evaluation over given histories; see :func:`evaluate_cells`."""
    params = params or DegradationParams()
    eval_params = eval_params or CellEvalParams()
    if len(histories) < 2:
        raise ValueError(
            f"Expected at least 2 cells for leave-one-out, got {[h.cell_id for h in histories]}."
        )
    ids = [h.cell_id for h in histories]
    if len(set(ids)) != len(ids):
        raise ValueError(f"Expected unique cell ids, got {ids}.")
    started = time.perf_counter()
    cells: dict[str, dict[str, Any]] = {}
    train_seconds = 0.0
    for i, cell in enumerate(histories):
        header = _fold_header(cell, eval_params)
        if "excluded_reason" in header:
            # Nothing to forecast from: spare the training.
            cells[cell.cell_id] = header
        else:
            others = [h for j, h in enumerate(histories) if j != i]
            t0 = time.perf_counter()
            model = train(others, params, seed=seed)
            train_seconds += time.perf_counter() - t0
            try:
                mean_lifetime: MeanLifetime | None = MeanLifetime.fit(
                    others, eval_params.eol_fraction
                )
            except ValueError:
                # No other cell reaches end of life: this baseline has nothing to average.
                mean_lifetime = None
            cells[cell.cell_id] = _evaluate_fold(cell, header, model, mean_lifetime, eval_params)
        if progress is not None:
            r = cells[cell.cell_id]
            progress(
                f"[{i + 1}/{len(histories)}] {cell.cell_id}: true EOL {r['true_eol_cycle']}, "
                f"model {r['model']}"
            )
    excluded = {c: r["excluded_reason"] for c, r in cells.items() if "excluded_reason" in r}
    included = [c for c in cells if c not in excluded]
    return {
        "cells": cells,
        "mean": _mean(cells, included),
        "n_cells_in_mean": len(included),
        "excluded": excluded,
        "seed": seed,
        "params": dataclasses.asdict(params),
        "eval_params": dataclasses.asdict(eval_params),
        "train_seconds": round(train_seconds, 2),
        "eval_seconds": round(time.perf_counter() - started, 2),
    }


def evaluate_cells(
    directory: Path,
    params: DegradationParams | None = None,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    *,
    eval_params: CellEvalParams | None = None,
) -> dict[str, Any]:
    """Leave-one-cell-out RUL and capacity evaluation of every cell in a directory.

    Parameters
    ----------
    directory
        Folder of per-cycle CSV files (:func:`models.cell_data.load_cell_histories`).
    params
        Model params, the same for every fold (defaults if None).
    seed
        Training seed, the same for every fold.
    progress
        Called with one line of text after each fold.
    eval_params
        Protocol knobs (defaults: EOL at 70 %, RUL at 25 % and 50 % of life).

    Returns
    -------
    dict
        JSON-serialisable: ``{"cells": {cell_id: {"model": {metric: value}, "fade_curve":
        {...}, "mean_lifetime": {...}, "true_eol_cycle": int | None, "reaches_eol": bool,
        ...}}, "mean": {"model": {...}, "fade_curve": {...}, "mean_lifetime": {...}},
        "excluded": {cell_id: reason}, ...}``; metrics are :data:`METRICS`, the mean is over
        cells that reach end of life and can be forecast.
    """
    return evaluate_histories(
        load_cell_histories(Path(directory)), params, seed, progress, eval_params=eval_params
    )


def main(directory: Path, seed: int = 0) -> dict[str, Any]:
    """Evaluate with default parameters, logging progress (for the ``bms models eval`` CLI)."""
    return evaluate_cells(Path(directory), DegradationParams(), seed, progress=_LOG.info)

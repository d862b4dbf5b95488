"""Remaining-life evaluation of the degradation LSTM against three baselines.

Every held-out cell is forecast by a model that never saw it, from its first cycles only.
Hyper-parameters and seed are the same for every fold; nothing is tuned on held-out cells.
Protocols (the result's ``"protocol"``):

* ``leave_one_cell_out`` (:func:`evaluate_histories`, ``folds=None``, after Chen, Hong & Zhou,
  IEEE Access 2022, on NASA PCoE B0005/6/7/18): one model per forecastable cell, trained on
  all the other cells of the dataset.
* ``k_fold_cells`` (``folds=k``): the cells, sorted by id, are dealt round-robin into k
  folds; each fold's cells are forecast by one model trained on the cells of the other
  folds. Exact leave-one-out on 77 or 130 cells is too slow on a few cores; k-fold keeps
  the "never saw it" guarantee with k trainings.
* ``leave_one_dataset_out`` (:func:`evaluate_datasets`): one model per dataset, trained on
  all cells of the *other* datasets, forecasts every cell of the held-out one: what a cell
  from a new supplier looks like.
* ``held_out`` (:func:`evaluate_held_out`): one model trained on given cells forecasts
  other given cells; ``bms models eval-simulated`` checks the live model this way on
  simulated packs of a seed it never trained on.

Cells that cannot be scored (see below) still train the folds they are not in.
``max_train_cells`` caps the training cells of a fold (evenly spaced in sorted-id order) for
speed; the mean-lifetime baseline is fitted on the same training cells as the model. With
several seeds (:func:`evaluate_seeds`) the whole evaluation runs once per seed; the
top-level ``"cells"`` and ``"mean"`` are those of the *first* seed
(``"cells_and_mean_from_seed"``) and ``"over_seeds"`` holds the mean and sample standard
deviation (ddof 1; 0 for one seed) of each method's mean metric over the seeds.

Cycles are 1-based positions in the clean series (anomaly-flagged cycles dropped). End of
life (EOL) is ``eol_fraction`` of the nominal or of the cell's initial capacity
(``eol_basis``), reached at the first cycle whose centred 5-cycle rolling median capacity is
below it (:meth:`models.cell_data.CellHistory.end_of_life_cycle`, the rule of
``cells_index.csv``). Thresholds are SOH of nominal, one per cell; the model, the baselines
and every metric use the held-out cell's own threshold, and the mean-lifetime baseline
averages the training cells' EOL, each at its own threshold.

Predictors (:data:`METHODS`): ``model`` (the LSTM; its trajectory is the p50), ``fade_curve``
(best of linear and exponential fits), ``mean_lifetime`` (mean EOL of the training cells)
and ``last_slope`` (line through the last cycles), see :mod:`models.fade_baselines`.

Metrics of one held-out cell that reaches EOL (:data:`METRICS`):

* ``rul_rel_error_at_25pct``, ``rul_rel_error_at_50pct``: ``|predicted EOL - true EOL| /
  true EOL`` when the predictor has seen the first ``floor(f * true EOL)`` cycles, f = 0.25,
  0.5; the model's prediction is its p50;
* ``capacity_rmse_pct_nominal``: RMSE between the forecast trajectory from the 50 % point
  and the recorded capacity up to the end of the data, in % of nominal;
* ``capacity_rmse_to_eol_pct_nominal``: the same RMSE up to and including the true EOL
  cycle only (the data after EOL is where a test was merely run on);
* ``eol_in_band_at_25pct``, ``eol_in_band_at_50pct`` (model only, None for the others):
  1.0 if the model's p10 <= true EOL <= its p90 predicted EOL, else 0.0; its mean over cells
  is the band coverage (about 0.8 for a calibrated band).

The forecast horizon of a cell is ``max(horizon_cycles, 3 * true EOL, recorded cycles)``
cycles after the seen ones, so a long-lived cell is never cut short by a fixed horizon; an
EOL not reached within it is scored as reached at its end (the error is then a lower bound)
and flagged ``"<point>_beyond_horizon"``.

A cell that never reaches EOL is still forecast (from half its recorded cycles) and gets a
capacity RMSE, but no RUL error; a cell whose EOL comes so early that the 25 % point holds
fewer than ``min_seen_cycles`` cycles cannot be forecast. Both kinds are listed under
``"excluded"`` with the reason and left out of the mean. ``"best_baseline"`` names, per
metric, the baseline (not the model) with the lowest mean, and that mean.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from models.cell_data import (
    EOL_BASES,
    CellHistory,
    EolBasis,
    load_cell_datasets,
    load_cell_histories,
    select_cells,
)
from models.degradation_lstm import DegradationParams, train
from models.fade_baselines import FadeCurve, LastSlope, MeanLifetime

__all__ = [
    "BAND_METRICS",
    "BASELINES",
    "METHODS",
    "METRICS",
    "SEEN_FRACTIONS",
    "CellEvalParams",
    "Forecaster",
    "ModelHook",
    "SohForecast",
    "evaluate_cells",
    "evaluate_datasets",
    "evaluate_held_out",
    "evaluate_histories",
    "evaluate_seeds",
    "main",
    "seen_cycles",
]

_LOG = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]

#: Predictors compared, in the order they appear in the result.
METHODS: tuple[str, ...] = ("model", "fade_curve", "mean_lifetime", "last_slope")
#: The reference predictors (all but the model), candidates for ``"best_baseline"``.
BASELINES: tuple[str, ...] = METHODS[1:]
#: Fractions of the true life a predictor sees (the metric names carry them); the last one
#: is also where the capacity-RMSE forecast starts.
SEEN_FRACTIONS: tuple[float, float] = (0.25, 0.5)
#: Metrics of each predictor, per cell and averaged (band metrics are None but for the model).
METRICS: tuple[str, ...] = (
    "rul_rel_error_at_25pct",
    "rul_rel_error_at_50pct",
    "capacity_rmse_pct_nominal",
    "capacity_rmse_to_eol_pct_nominal",
    "eol_in_band_at_25pct",
    "eol_in_band_at_50pct",
)
#: Metrics only a predictor with a p10-p90 band (the model) has.
BAND_METRICS: tuple[str, ...] = ("eol_in_band_at_25pct", "eol_in_band_at_50pct")


class SohForecast(Protocol):
    """What :meth:`Forecaster.forecast_histories` returns (``models.degradation_lstm.Forecast``)."""

    @property
    def soh(self) -> FloatArray:
        """p10, p50, p90 SOH of the next cycles 1..horizon, shape (n, horizon, 3)."""
        ...


class Forecaster(Protocol):
    """The part of :class:`models.degradation_lstm.DegradationLSTM` the evaluation uses."""

    def forecast_histories(
        self, soh_histories: Sequence[npt.ArrayLike], horizon_cycles: int
    ) -> SohForecast:
        """SOH quantiles of cycles ``len + 1 .. len + horizon_cycles`` of each history."""
        ...

    def remaining_useful_life_histories(
        self, soh_histories: Sequence[npt.ArrayLike], threshold_frac: float
    ) -> FloatArray:
        """p10, p50, p90 cycles after the last one until SOH <= threshold, shape (n, 3)."""
        ...


#: Called with each scored held-out cell, the model that forecast it and that model's
#: training cells (e.g. to plot the forecast without training again).
ModelHook = Callable[[CellHistory, Forecaster, Sequence[CellHistory]], None]


@dataclass(frozen=True)
class CellEvalParams:
    """Protocol knobs of the evaluation.

    Parameters
    ----------
    eol_fraction
        End of life as a fraction of the ``eol_basis`` capacity.
    eol_basis
        ``"nominal"``: of the rated capacity; ``"initial"``: of the cell's initial capacity
        (median of its first three clean cycles), e.g. 0.8 for cells that start well above
        or below their rating.
    horizon_cycles
        Shortest forecast; a cell's horizon is extended to 3 times its true EOL and to its
        recorded length. An end of life not reached within it is scored as reached at its
        end (the error is then a lower bound) and flagged ``"<point>_beyond_horizon"``.
    min_seen_cycles
        Fewest seen cycles to forecast from (the fade curve needs 2).
    """

    eol_fraction: float = 0.7
    eol_basis: EolBasis = "nominal"
    horizon_cycles: int = 500
    min_seen_cycles: int = 2

    def __post_init__(self) -> None:
        if not 0 < self.eol_fraction < 1:
            raise ValueError(f"Expected eol_fraction in (0, 1), got {self.eol_fraction}.")
        if self.eol_basis not in EOL_BASES:
            raise ValueError(f"Expected eol_basis in {list(EOL_BASES)}, got {self.eol_basis!r}.")
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


def _curve_prediction(
    curve: FadeCurve | LastSlope, n_seen: int, threshold: float, horizon: int
) -> _Prediction:
    eol = curve.end_of_life_cycle(threshold, horizon)
    return _Prediction(
        float(eol if eol is not None else n_seen + horizon), eol is None, curve.forecast(horizon)
    )


def _predict_all(
    model: Forecaster,
    seen_prefixes: Sequence[FloatArray],
    mean_lifetime: MeanLifetime | None,
    threshold: float,
    horizon: int,
) -> dict[str, list[_Prediction | None]]:
    """Every predictor on every seen prefix of one cell (the model batched over them)."""
    out: dict[str, list[_Prediction | None]] = {m: [] for m in METHODS}
    prefixes = list(seen_prefixes)
    fc = np.asarray(
        model.forecast_histories(prefixes, horizon_cycles=horizon).soh, dtype=np.float64
    )
    rul = np.asarray(model.remaining_useful_life_histories(prefixes, threshold), dtype=np.float64)
    if fc.shape != (len(prefixes), horizon, 3) or rul.shape != (len(prefixes), 3):
        raise ValueError(
            f"Expected the model's forecast of shape {(len(prefixes), horizon, 3)} and RUL of "
            f"shape {(len(prefixes), 3)}, got {fc.shape} and {rul.shape}."
        )
    for i, seen in enumerate(prefixes):
        k = len(seen)
        band = tuple(float(k + min(float(r), horizon)) for r in rul[i])
        out["model"].append(_Prediction(band[1], float(rul[i, 1]) > horizon, fc[i, :, 1], band))
        out["fade_curve"].append(_curve_prediction(FadeCurve.fit(seen), k, threshold, horizon))
        out["last_slope"].append(_curve_prediction(LastSlope.fit(seen), k, threshold, horizon))
        if mean_lifetime is None:
            out["mean_lifetime"].append(None)
        else:
            out["mean_lifetime"].append(
                _Prediction(
                    mean_lifetime.end_of_life_cycle(k),
                    False,
                    mean_lifetime.forecast(seen, horizon, threshold_frac=threshold),
                )
            )
    return out


def _rmse_pct(forecast: FloatArray, actual: FloatArray) -> float:
    n = min(len(forecast), len(actual))
    return float(100.0 * np.sqrt(np.mean((forecast[:n] - actual[:n]) ** 2)))


def _cell_header(cell: CellHistory, params: CellEvalParams) -> dict[str, Any]:
    """What is known about a held-out cell before any training; excluded if not forecastable."""
    soh = cell.clean().soh()
    result: dict[str, Any] = {"n_cycles": len(soh)}
    if len(soh) == 0:
        result.update(reaches_eol=False, true_eol_cycle=None, eol_threshold_soh=None)
        points = {"half_of_data": 0}
    else:
        true_eol = cell.end_of_life_cycle(params.eol_fraction, params.eol_basis)
        result.update(
            reaches_eol=true_eol is not None,
            true_eol_cycle=true_eol,
            eol_threshold_soh=cell.eol_threshold_soh(params.eol_fraction, params.eol_basis),
            initial_capacity_ah=cell.initial_capacity_ah(),
        )
        if true_eol is None:
            # No RUL error without an end of life; the trajectory from half the data is scored.
            points = {"half_of_data": len(soh) // 2}
        else:
            points = {_pct(f): seen_cycles(true_eol, f) for f in SEEN_FRACTIONS}
    result["seen_cycles"] = points
    result["horizon_cycles"] = max(
        params.horizon_cycles, 3 * (result["true_eol_cycle"] or 0), len(soh)
    )
    if min(points.values()) < params.min_seen_cycles:
        result["excluded_reason"] = (
            f"too few cycles before the first forecast point: {min(points.values())} "
            f"< min_seen_cycles {params.min_seen_cycles}"
        )
        for m in METHODS:
            result[m] = dict.fromkeys(METRICS)
    return result


def _score_cell(
    cell: CellHistory,
    result: dict[str, Any],
    model: Forecaster,
    mean_lifetime: MeanLifetime | None,
    params: CellEvalParams,
) -> dict[str, Any]:
    """Forecast a forecastable held-out cell with every predictor and fill in its metrics."""
    soh = cell.clean().soh()
    true_eol: int | None = result["true_eol_cycle"]
    threshold: float = result["eol_threshold_soh"]
    horizon: int = result["horizon_cycles"]
    points: dict[str, int] = result["seen_cycles"]
    keys = list(points)
    preds = _predict_all(model, [soh[: points[k]] for k in keys], mean_lifetime, threshold, horizon)
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
                    lo, hi = p.eol_band[0], p.eol_band[2]
                    eols[f"{key}_p10"], eols[f"{key}_p90"] = lo, hi
                    metrics[f"eol_in_band_at_{key}"] = 1.0 if lo <= true_eol <= hi else 0.0
                if p.beyond_horizon:
                    eols[f"{key}_beyond_horizon"] = True
            if key == rmse_key:
                metrics["capacity_rmse_pct_nominal"] = _rmse_pct(p.soh, soh[rmse_from:])
                if true_eol is not None:
                    # Cycles rmse_from + 1 .. true_eol, the EOL cycle included.
                    metrics["capacity_rmse_to_eol_pct_nominal"] = _rmse_pct(
                        p.soh[: true_eol - rmse_from], soh[rmse_from:true_eol]
                    )
        result[m] = metrics
        predicted[m] = eols
    result["predicted_eol_cycle"] = predicted
    if true_eol is None:
        result["excluded_reason"] = (
            f"never reaches {params.eol_fraction:.0%} of {params.eol_basis} capacity in "
            f"{len(soh)} clean cycles"
        )
    return result


def _mean(
    cells: Mapping[str, dict[str, Any]], included: Sequence[str]
) -> dict[str, dict[str, float | None]]:
    mean: dict[str, dict[str, float | None]] = {}
    for m in METHODS:
        mean[m] = {}
        for metric in METRICS:
            values = [cells[c][m][metric] for c in included if cells[c][m][metric] is not None]
            mean[m][metric] = float(np.mean(values)) if values else None
    return mean


def _best_baseline(
    mean: Mapping[str, Mapping[str, float | None]],
) -> dict[str, dict[str, Any] | None]:
    """Per metric, the baseline with the lowest mean (None where no baseline has one)."""
    best: dict[str, dict[str, Any] | None] = {}
    for metric in METRICS:
        scored = [(v, m) for m in BASELINES if (v := mean[m][metric]) is not None]
        best[metric] = None
        if scored:
            value, method = min(scored)
            best[metric] = {"method": method, "value": value}
    return best


def _summary(cells: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    excluded = {c: r["excluded_reason"] for c, r in cells.items() if "excluded_reason" in r}
    included = [c for c in cells if c not in excluded]
    mean = _mean(cells, included)
    return {
        "mean": mean,
        "best_baseline": _best_baseline(mean),
        "n_cells_in_mean": len(included),
        "excluded": excluded,
    }


def _cap_training(cells: Sequence[CellHistory], max_train_cells: int | None) -> list[CellHistory]:
    """At most ``max_train_cells`` cells, evenly spaced in sorted-id order (all if None)."""
    ordered = sorted(cells, key=lambda h: h.cell_id)
    if max_train_cells is None or len(ordered) <= max_train_cells:
        return ordered
    # Evenly spaced positions are distinct: their step (n - 1) / (m - 1) is at least 1.
    picks = np.round(np.linspace(0, len(ordered) - 1, max_train_cells)).astype(int)
    return [ordered[i] for i in picks]


@dataclass(frozen=True)
class _Split:
    """Held-out cells scored with one model trained on the training cells."""

    held_out: Sequence[CellHistory]
    training: Sequence[CellHistory]
    label: str


def _run_split(
    split: _Split,
    params: DegradationParams,
    seed: int,
    eval_params: CellEvalParams,
    max_train_cells: int | None,
    progress: Callable[[str], None] | None,
    on_model: ModelHook | None,
) -> tuple[dict[str, dict[str, Any]], float, int]:
    """Cell results of one split, training seconds, trained training cells (0: no training)."""
    held_ids = {h.cell_id for h in split.held_out}
    if held_ids & {h.cell_id for h in split.training}:
        raise ValueError(f"Expected {split.label} to train without its held-out cells {held_ids}.")
    cells = {h.cell_id: _cell_header(h, eval_params) for h in split.held_out}
    todo = [h for h in split.held_out if "excluded_reason" not in cells[h.cell_id]]
    if not todo:
        # Nothing to forecast from: spare the training.
        return cells, 0.0, 0
    training = _cap_training(split.training, max_train_cells)
    if progress is not None:
        progress(f"{split.label}: training on {len(training)} cells, forecasting {len(todo)}")
    t0 = time.perf_counter()
    model = train(training, params, seed=seed)
    seconds = time.perf_counter() - t0
    try:
        mean_lifetime: MeanLifetime | None = MeanLifetime.fit(
            training, eval_params.eol_fraction, eval_params.eol_basis
        )
    except ValueError:
        # No training cell reaches end of life: this baseline has nothing to average.
        mean_lifetime = None
    for cell in todo:
        result = _score_cell(cell, cells[cell.cell_id], model, mean_lifetime, eval_params)
        result["n_train_cells"] = len(training)
        if on_model is not None:
            on_model(cell, model, training)
        if progress is not None:
            progress(
                f"  {cell.cell_id}: true EOL {result['true_eol_cycle']}, model {result['model']}"
            )
    return cells, seconds, len(training)


def _check_ids(histories: Sequence[CellHistory]) -> None:
    ids = [h.cell_id for h in histories]
    if len(set(ids)) != len(ids):
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"Expected unique cell ids, got {repeated} more than once.")


def _check_counts(folds: int | None, max_train_cells: int | None) -> None:
    if folds is not None and folds < 2:
        raise ValueError(f"Expected folds >= 2 (or None for leave-one-cell-out), got {folds}.")
    if max_train_cells is not None and max_train_cells < 1:
        raise ValueError(f"Expected max_train_cells >= 1 (or None), got {max_train_cells}.")


def evaluate_seeds(fn: Callable[[int], dict[str, Any]], seeds: Sequence[int]) -> dict[str, Any]:
    """Run a whole evaluation once per seed and aggregate the mean metrics over seeds.

    Parameters
    ----------
    fn
        ``fn(seed)`` returns one evaluation result (a dict with ``"mean"``, and
        ``"datasets"`` for leave-one-dataset-out).
    seeds
        Distinct seeds, the first one's result is kept in full.

    Returns
    -------
    dict
        The first seed's result (``"cells_and_mean_from_seed"`` says which), plus
        ``"seeds"`` and ``"over_seeds": {"seeds", "mean": {method: {metric: mean}}, "sd":
        {method: {metric: sample sd (ddof 1; 0 with one seed)}}, "best_baseline",
        "per_seed": [mean of each seed], "train_seconds"}``, over the seeds with a value
        (None where none has one); each dataset of a leave-one-dataset-out result gets
        its own ``"over_seeds"``.
    """
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"Expected one or more distinct seeds, got {seeds}.")
    runs = [fn(s) for s in seeds]
    result = dict(runs[0])
    result["seeds"] = seeds
    result["cells_and_mean_from_seed"] = seeds[0]
    result["over_seeds"] = _over_seeds(seeds, [r["mean"] for r in runs])
    result["over_seeds"]["train_seconds"] = round(sum(r.get("train_seconds", 0.0) for r in runs), 2)
    if "datasets" in result:
        result["datasets"] = {
            name: {
                **data,
                "over_seeds": _over_seeds(seeds, [r["datasets"][name]["mean"] for r in runs]),
            }
            for name, data in runs[0]["datasets"].items()
        }
    return result


def _over_seeds(
    seeds: Sequence[int], means: Sequence[Mapping[str, Mapping[str, float | None]]]
) -> dict[str, Any]:
    mean: dict[str, dict[str, float | None]] = {}
    sd: dict[str, dict[str, float | None]] = {}
    for m in METHODS:
        mean[m], sd[m] = {}, {}
        for metric in METRICS:
            values = [v for run in means if (v := run[m][metric]) is not None]
            mean[m][metric] = float(np.mean(values)) if values else None
            if not values:
                sd[m][metric] = None
            else:
                sd[m][metric] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return {
        "seeds": list(seeds),
        "mean": mean,
        "sd": sd,
        "best_baseline": _best_baseline(mean),
        "per_seed": [dict(run) for run in means],
    }


def evaluate_histories(
    histories: Sequence[CellHistory],
    params: DegradationParams | None = None,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    *,
    eval_params: CellEvalParams | None = None,
    folds: int | None = None,
    max_train_cells: int | None = None,
    seeds: Sequence[int] | None = None,
    on_model: ModelHook | None = None,
) -> dict[str, Any]:
    """Leave-one-cell-out or k-fold evaluation over the cells of one dataset.

    Parameters
    ----------
    histories
        The cells, at least 2, with unique ids.
    params
        Model params, the same for every fold (defaults if None).
    seed
        Training seed, the same for every fold (ignored when ``seeds`` is given).
    progress
        Called with one line of text per training and per scored cell.
    eval_params
        Protocol knobs (defaults: EOL at 70 % of nominal).
    folds
        None, or at least the number of cells: exact leave-one-cell-out (one training per
        forecastable cell); k >= 2: k folds over cells (sorted ids dealt round-robin), one
        training per fold on the other folds' cells.
    max_train_cells
        Cap on the training cells of a fold (evenly spaced by sorted id); None: no cap.
    seeds
        Run the whole evaluation per seed, see :func:`evaluate_seeds`.
    on_model
        Called with each scored cell, its model and that model's training cells (first
        seed only).

    Returns
    -------
    dict
        See :func:`evaluate_cells`.
    """
    if seeds is not None:
        first = seeds[0] if len(seeds) else None
        return evaluate_seeds(
            lambda s: evaluate_histories(
                histories,
                params,
                s,
                progress,
                eval_params=eval_params,
                folds=folds,
                max_train_cells=max_train_cells,
                on_model=on_model if s == first else None,
            ),
            seeds,
        )
    params = params or DegradationParams()
    eval_params = eval_params or CellEvalParams()
    _check_counts(folds, max_train_cells)
    if len(histories) < 2:
        raise ValueError(
            f"Expected at least 2 cells for leave-one-out, got {[h.cell_id for h in histories]}."
        )
    _check_ids(histories)
    started = time.perf_counter()
    ordered = sorted(histories, key=lambda h: h.cell_id)
    n = len(ordered)
    k_fold = folds is not None and folds < n
    n_folds = folds if folds is not None and k_fold else n
    fold_of = {h.cell_id: i % n_folds for i, h in enumerate(ordered)}
    splits = [
        _Split(
            [h for h in ordered if fold_of[h.cell_id] == j],
            [h for h in ordered if fold_of[h.cell_id] != j],
            f"fold {j + 1}/{n_folds}" if k_fold else f"[{j + 1}/{n}] {ordered[j].cell_id}",
        )
        for j in range(n_folds)
    ]
    cells: dict[str, dict[str, Any]] = {}
    train_seconds = 0.0
    trainings = 0
    for j, split in enumerate(splits):
        fold_cells, seconds, n_train = _run_split(
            split, params, seed, eval_params, max_train_cells, progress, on_model
        )
        train_seconds += seconds
        trainings += n_train > 0
        for r in fold_cells.values():
            r["fold"] = j
        cells.update(fold_cells)
    # Report cells in the order they were given.
    cells = {h.cell_id: cells[h.cell_id] for h in histories}
    return {
        "protocol": "k_fold_cells" if k_fold else "leave_one_cell_out",
        "folds": n_folds,
        "cells": cells,
        **_summary(cells),
        "n_trainings": trainings,
        "max_train_cells": max_train_cells,
        "seed": seed,
        "params": dataclasses.asdict(params),
        "eval_params": dataclasses.asdict(eval_params),
        "train_seconds": round(train_seconds, 2),
        "eval_seconds": round(time.perf_counter() - started, 2),
    }


def evaluate_held_out(
    held_out: Sequence[CellHistory],
    training: Sequence[CellHistory],
    params: DegradationParams | None = None,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    *,
    eval_params: CellEvalParams | None = None,
    seeds: Sequence[int] | None = None,
) -> dict[str, Any]:
    """One model trained on ``training``, scored on cells it never saw (``held_out``).

    What checks the live model on fresh simulated packs (``bms models eval-simulated``):
    it trains on what the live model trains on, and forecasts packs of another seed. The
    mean-lifetime baseline is fitted on the training cells. Same result shape as
    :func:`evaluate_histories`, with ``"protocol": "held_out"``.
    """
    if seeds is not None:
        return evaluate_seeds(
            lambda s: evaluate_held_out(held_out, training, params, s, progress, eval_params=eval_params),
            seeds,
        )
    params = params or DegradationParams()
    eval_params = eval_params or CellEvalParams()
    if not held_out or not training:
        raise ValueError(
            f"Expected held-out and training cells, got {len(held_out)} and {len(training)}."
        )
    _check_ids([*held_out, *training])
    started = time.perf_counter()
    cells, seconds, n_train = _run_split(
        _Split(held_out, training, "held out"), params, seed, eval_params, None, progress, None
    )
    return {
        "protocol": "held_out",
        "cells": {h.cell_id: cells[h.cell_id] for h in held_out},
        **_summary(cells),
        "n_train_cells": n_train,
        "seed": seed,
        "params": dataclasses.asdict(params),
        "eval_params": dataclasses.asdict(eval_params),
        "train_seconds": round(seconds, 2),
        "eval_seconds": round(time.perf_counter() - started, 2),
    }


def evaluate_datasets(
    datasets: Mapping[str, Sequence[CellHistory]],
    params: DegradationParams | None = None,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    *,
    eval_params: CellEvalParams | None = None,
    max_train_cells: int | None = None,
    seeds: Sequence[int] | None = None,
    on_model: ModelHook | None = None,
) -> dict[str, Any]:
    """Leave-one-dataset-out: each dataset forecast by a model trained on the others only.

    Parameters
    ----------
    datasets
        Dataset name to its cells; at least 2 non-empty datasets, cell ids unique over all.
    params, seed, progress, eval_params, max_train_cells, seeds, on_model
        As for :func:`evaluate_histories`; the mean-lifetime baseline is fitted on the
        training datasets' cells.

    Returns
    -------
    dict
        ``{"protocol": "leave_one_dataset_out", "datasets": {name: {"cells", "mean",
        "best_baseline", "n_cells_in_mean", "excluded", "n_train_cells",
        "train_seconds"}}, "cells": every held-out cell by id (with its ``"dataset"``),
        "mean": over all held-out cells pooled, "best_baseline", "n_cells_in_mean",
        "excluded", ...}``; with ``seeds`` also ``"over_seeds"`` at the top and per dataset.
    """
    if seeds is not None:
        first = seeds[0] if len(seeds) else None
        return evaluate_seeds(
            lambda s: evaluate_datasets(
                datasets,
                params,
                s,
                progress,
                eval_params=eval_params,
                max_train_cells=max_train_cells,
                on_model=on_model if s == first else None,
            ),
            seeds,
        )
    params = params or DegradationParams()
    eval_params = eval_params or CellEvalParams()
    _check_counts(None, max_train_cells)
    empty = [name for name, cells in datasets.items() if not cells]
    if len(datasets) < 2 or empty:
        raise ValueError(
            "Expected at least 2 non-empty datasets for leave-one-dataset-out, got "
            f"{ {name: len(cells) for name, cells in datasets.items()} }."
        )
    _check_ids([h for cells in datasets.values() for h in cells])
    started = time.perf_counter()
    per_dataset: dict[str, dict[str, Any]] = {}
    train_seconds = 0.0
    for name, held_out in datasets.items():
        training = [h for other, cells in datasets.items() if other != name for h in cells]
        split = _Split(held_out, training, f"held-out dataset {name}")
        cells, seconds, n_train = _run_split(
            split, params, seed, eval_params, max_train_cells, progress, on_model
        )
        for r in cells.values():
            r["dataset"] = name
        train_seconds += seconds
        per_dataset[name] = {
            "cells": cells,
            **_summary(cells),
            "n_train_cells": n_train,
            "train_seconds": round(seconds, 2),
        }
    all_cells = {c: r for data in per_dataset.values() for c, r in data["cells"].items()}
    return {
        "protocol": "leave_one_dataset_out",
        "datasets": per_dataset,
        "cells": all_cells,
        **_summary(all_cells),
        "n_trainings": sum(d["n_train_cells"] > 0 for d in per_dataset.values()),
        "max_train_cells": max_train_cells,
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
    folds: int | None = None,
    only: Sequence[str] | None = None,
    max_train_cells: int | None = None,
    seeds: Sequence[int] | None = None,
    on_model: ModelHook | None = None,
) -> dict[str, Any]:
    """Leave-one-cell-out (or k-fold) RUL and capacity evaluation of a directory's cells.

    Parameters
    ----------
    directory
        Folder of per-cycle CSV files (:func:`models.cell_data.load_cell_histories`): one
        dataset.
    params, seed, progress, eval_params, folds, max_train_cells, seeds, on_model
        See :func:`evaluate_histories`.
    only
        Evaluate only these cell ids (all of them must be present).

    Returns
    -------
    dict
        JSON-serialisable: ``{"protocol", "folds", "cells": {cell_id: {"model": {metric:
        value}, "fade_curve": {...}, "mean_lifetime": {...}, "last_slope": {...},
        "true_eol_cycle": int | None, "reaches_eol": bool, "predicted_eol_cycle": {method:
        {...}}, ...}}, "mean": {method: {metric: value}}, "best_baseline": {metric:
        {"method", "value"} | None}, "excluded": {cell_id: reason}, ...}``; metrics are
        :data:`METRICS`, the mean is over cells that reach end of life and can be forecast.
    """
    histories = load_cell_histories(Path(directory))
    if only is not None:
        histories = select_cells(histories, only)
    return evaluate_histories(
        histories,
        params,
        seed,
        progress,
        eval_params=eval_params,
        folds=folds,
        max_train_cells=max_train_cells,
        seeds=seeds,
        on_model=on_model,
    )


def main(
    directory: Path,
    seed: int = 0,
    *,
    seeds: Sequence[int] | None = None,
    params: DegradationParams | None = None,
    eval_params: CellEvalParams | None = None,
    folds: int | None = None,
    only: Sequence[str] | None = None,
    leave_dataset_out: bool = False,
    max_train_cells: int | None = None,
    progress: Callable[[str], None] | None = _LOG.info,
    on_model: ModelHook | None = None,
) -> dict[str, Any]:
    """The ``bms models eval`` entry: load, pick the protocol, evaluate.

    Parameters
    ----------
    directory
        One dataset's folder, or with ``leave_dataset_out`` a folder whose immediate
        subdirectories are the datasets (:func:`models.cell_data.load_cell_datasets`).
    seed, seeds
        One seed, or several (which win over ``seed``).
    only
        Restrict to these cell ids (an error names any that is missing); datasets left
        without a cell are dropped.
    leave_dataset_out
        Run :func:`evaluate_datasets` instead of :func:`evaluate_cells`; ``folds`` must
        then be None.
    params, eval_params, folds, max_train_cells, progress, on_model
        See :func:`evaluate_histories`.
    """
    if not leave_dataset_out:
        return evaluate_cells(
            Path(directory),
            params,
            seed,
            progress,
            eval_params=eval_params,
            folds=folds,
            only=only,
            max_train_cells=max_train_cells,
            seeds=seeds,
            on_model=on_model,
        )
    if folds is not None:
        raise ValueError(
            f"Expected no folds with leave-one-dataset-out (the datasets are the folds), "
            f"got folds={folds}."
        )
    datasets = load_cell_datasets(Path(directory))
    if only is not None:
        everything = [h for cells in datasets.values() for h in cells]
        wanted = {h.cell_id for h in select_cells(everything, only)}
        datasets = {
            name: kept
            for name, cells in datasets.items()
            if (kept := [h for h in cells if h.cell_id in wanted])
        }
    return evaluate_datasets(
        datasets,
        params,
        seed,
        progress,
        eval_params=eval_params,
        max_train_cells=max_train_cells,
        seeds=seeds,
        on_model=on_model,
    )

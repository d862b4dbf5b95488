"""How the health model holds on telemetry the simulator did not make (``bms models eval-telemetry``).

Leave one parameter set out: for each cell of :data:`sim.electrochem.PARAMETER_SETS`, the
health model is trained as in production (simulated lifetimes) plus the electrochemical
packs of every *other* cell, and reads the left-out cell's packs, as a fleet's twins would
after watching them for hours. Three answers are compared on every pack, against the SOH
the pack was aged to (its C/3 capacity):

* ``baseline``: the twin's own coulomb-counted estimate (``capacity_ratio_est``), the input
  the model must never lose to;
* ``model``: :class:`models.health_xgb.HealthXGB` (the estimate plus a bounded correction);
* ``first_model``: one regression of SOH on every feature, as the first health model was
  built, for the record of what went wrong.

Each figure is the mean over training seeds, with the spread (sd) next to it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import xgboost as xgb

from models.health_xgb import ForeignRows, HealthParams, health_score_label, train_health
from models.telemetry_data import HealthPackSet
from sim.ageing import LifetimeSimulator
from sim.electrochem import PARAMETER_SETS
from twins.features import HEALTH_FEATURE_NAMES, TwinCounters, health_features

__all__ = ["HealthEvalPlan", "evaluate_health"]

_EST = HEALTH_FEATURE_NAMES.index("capacity_ratio_est")


@dataclass(frozen=True)
class HealthEvalPlan:
    """Simulated lifetimes each training run starts from (the production plan's by default)."""

    packs: int = 3000
    days: int = 1500
    snapshots: int = 4
    params: HealthParams = HealthParams()


def _first_model(x: npt.NDArray[np.float32], soh: npt.NDArray[np.float64], params: HealthParams, seed: int) -> xgb.XGBRegressor:
    m = xgb.XGBRegressor(
        n_estimators=params.n_estimators, max_depth=params.max_depth, learning_rate=params.learning_rate,
        subsample=params.subsample, n_jobs=params.n_jobs, random_state=seed, tree_method="hist",
    )  # fmt: skip
    m.fit(x, soh)
    return m


def evaluate_health(
    packs: HealthPackSet, plan: HealthEvalPlan = HealthEvalPlan(), seeds: Sequence[int] = (0,),
    log: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:  # fmt: skip
    """Leave-one-parameter-set-out SOH errors (points) of model, baseline and first model."""
    groups = sorted(set(packs.group.tolist()))
    if len(groups) < 2:
        raise ValueError(f"Expected packs of at least 2 parameter sets, got {groups}.")
    truth = 100.0 * packs.soh
    est = 100.0 * packs.x[:, _EST].astype(np.float64)
    has = np.isfinite(est)
    errors: dict[str, list[npt.NDArray[np.float64]]] = {"model": [], "first_model": []}
    shrinks: dict[str, list[float]] = {g: [] for g in groups}
    score = health_score_label(packs.soh, np.ones_like(packs.soh))
    for seed in seeds:
        sample = LifetimeSimulator(seed=seed).run(plan.packs, plan.days, plan.snapshots)
        x_sim = health_features(TwinCounters.from_lifetime(sample))
        first = _first_model(x_sim, sample.soh, plan.params, seed)
        pred = np.full(truth.size, np.nan)
        for g in groups:
            out = packs.group == g
            foreign = ForeignRows(packs.x[~out], packs.soh[~out], score[~out], packs.group[~out])
            model, _ = train_health(sample, plan.params, seed=seed, foreign=foreign)
            pred[out] = model.predict_features(packs.x[out]).soh_pct
            shrinks[g].append(model.shrink)
            log(f"seed {seed}: {g} left out, correction weight {model.shrink:g}")
        errors["model"].append(np.abs(pred - truth))
        errors["first_model"].append(np.abs(100.0 * first.predict(packs.x).astype(np.float64) - truth))
    base_err = np.abs(est - truth)

    def summary(mask: npt.NDArray[np.bool_]) -> dict[str, Any]:
        if not (mask & has).any():
            return {"packs": int(mask.sum()), "packs_with_estimate": 0}
        m = mask & has
        per_seed = {k: np.array([float(np.mean(e[m])) for e in v]) for k, v in errors.items()}
        return {
            "packs": int(mask.sum()),
            "packs_with_estimate": int(m.sum()),
            "baseline_soh_mae_pp": round(float(np.mean(base_err[m])), 3),
            **{f"{k}_soh_mae_pp": round(float(v.mean()), 3) for k, v in per_seed.items()},
            **{f"{k}_soh_mae_pp_sd": round(float(v.std()), 3) for k, v in per_seed.items()},
            "model_max_error_pp": round(float(max(np.max(e[m]) for e in errors["model"])), 3),
            "baseline_max_error_pp": round(float(np.max(base_err[m])), 3),
        }

    per_set = {g: {"chemistry": PARAMETER_SETS.get(g, "?"), **summary(packs.group == g)} for g in groups}
    for g in groups:
        per_set[g]["correction_weights"] = shrinks[g]
    overall = summary(np.ones(truth.size, dtype=bool))
    no_estimate = int((~has).sum())
    return {"overall": overall, "by_parameter_set": per_set, "packs_without_estimate": no_estimate,
            "seeds": list(seeds)}  # fmt: skip

"""Health scoring: XGBoost regression of state of health and a 0-100 health score.

Inputs are :func:`twins.features.health_features` of a twin's counters. Labels come
from the ageing simulator (:mod:`sim.ageing`), which knows each pack's true SOH and
resistance growth, and from electrochemical packs (:mod:`sim.electrochem`) where a built
set is at hand; the twin has noisy coulomb-counted capacity and step-response resistance
estimates, plus usage counters.

**SOH is the twin's own estimate plus a bounded correction.** Where the twin has a
coulomb-counted capacity, the model predicts a correction to it from what describes the
estimate (how many segments, how deep, how hot), never from the pack's age or usage, and
at most ``max_correction`` (3 points). Only where the twin has no estimate yet does a prior
over usage answer. The first model regressed SOH on everything; on telemetry the simulator
did not make, a fresh twin of an old pack (little usage observed) read as new: 85 % packs
scored 96 %, 5.4 points worse than the estimate it was given (issue 14). The correction's
weight (``shrink``, 0 to 1) is chosen on packs of chemistries the correction did not see,
so a correction that does not carry over to new cells is switched off rather than trusted.

The health score folds the two end-of-life criteria of Li-ion packs (capacity down to
60 %, resistance doubled) into one number an operator can sort by::

    health = 100 * (0.7 * clip((SOH - 0.6) / 0.4, 0, 1) + 0.3 * clip(2 - R/R_new, 0, 1))
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import xgboost as xgb

from twins.features import HEALTH_FEATURE_NAMES, LifetimeCounters, TwinCounters, health_features

__all__ = [
    "RESIDUAL_FEATURE_NAMES",
    "SHRINK_GRID",
    "ForeignRows",
    "HealthParams",
    "HealthPrediction",
    "HealthXGB",
    "health_score_label",
    "regressor",
    "shrink_errors",
    "train_health",
]

FloatArray = npt.NDArray[np.float64]
_META = "meta.json"
#: The artifact's layout; a model saved by another layout is retrained, not misread.
HEALTH_FORMAT = 2
_EST = HEALTH_FEATURE_NAMES.index("capacity_ratio_est")
#: What the correction may look at: the estimate and how it was made, nothing that grows
#: with the pack's observed age (a twin sees only the part of a life it observed).
RESIDUAL_FEATURE_NAMES: tuple[str, ...] = tuple(
    n for n in HEALTH_FEATURE_NAMES
    if n in ("capacity_ratio_est", "capacity_estimates", "mean_dod", "max_temp_c") or n.startswith("dod_frac_")
)  # fmt: skip
_RES = [HEALTH_FEATURE_NAMES.index(n) for n in RESIDUAL_FEATURE_NAMES]
#: The estimate's own columns, hidden from the prior (it answers where there is none).
_ESTIMATE_COLUMNS = [HEALTH_FEATURE_NAMES.index(n) for n in ("capacity_ratio_est", "capacity_estimates")]


def health_score_label(soh: FloatArray, resistance_ratio: FloatArray) -> FloatArray:
    """The 0-100 health score of packs with a true SOH and R/R_new (see module docstring)."""
    cap_part = np.clip((soh - 0.6) / 0.4, 0.0, 1.0)
    res_part = np.clip(2.0 - resistance_ratio, 0.0, 1.0)
    return np.asarray(100.0 * (0.7 * cap_part + 0.3 * res_part), dtype=np.float64)


@dataclass(frozen=True)
class HealthParams:
    """Boosting knobs, shared by the SOH and the health-score regressors."""

    n_estimators: int = 400
    max_depth: int = 5
    learning_rate: float = 0.05
    subsample: float = 0.8
    n_jobs: int = 1
    #: Largest correction to the twin's estimate, as a fraction of rated capacity.
    max_correction: float = 0.03

    def __post_init__(self) -> None:
        if not 1 <= self.n_estimators <= 10_000:
            raise ValueError(f"Expected n_estimators in [1, 10000], got {self.n_estimators}.")
        if not 1 <= self.max_depth <= 16:
            raise ValueError(f"Expected max_depth in [1, 16], got {self.max_depth}.")
        if not 0.0 < self.learning_rate <= 1.0 or not 0.0 < self.subsample <= 1.0:
            raise ValueError(
                f"Expected learning_rate and subsample in (0, 1], got {self.learning_rate} "
                f"and {self.subsample}."
            )
        if not 0.0 <= self.max_correction <= 0.2:
            raise ValueError(f"Expected max_correction in [0, 0.2], got {self.max_correction}.")


@dataclass(frozen=True)
class HealthPrediction:
    """SOH in percent of rated capacity and the 0-100 health score, one per twin."""

    soh_pct: FloatArray
    health_score: FloatArray


class HealthXGB:
    """The SOH correction, the SOH prior and the health-score regressor (module docstring)."""

    def __init__(
        self,
        residual: xgb.XGBRegressor,
        prior: xgb.XGBRegressor | None,
        score: xgb.XGBRegressor | None,
        params: HealthParams,
        shrink: float = 1.0,
        metrics: dict[str, float] | None = None,
    ) -> None:
        if not 0.0 <= shrink <= 1.0:
            raise ValueError(f"Expected shrink in [0, 1], got {shrink}.")
        self.residual_model = residual
        self.prior_model = prior
        self.score_model = score
        self.params = params
        self.shrink = shrink
        self.metrics = dict(metrics or {})

    @classmethod
    def fit(
        cls, x: npt.NDArray[np.float32], soh: FloatArray, score: FloatArray | None, params: HealthParams, seed: int,
        shrink: float = 1.0,
    ) -> HealthXGB:  # fmt: skip
        """Fit on feature rows ``x`` with their true ``soh`` (fraction) and health ``score``.

        The correction learns ``soh - estimate`` on the rows that have an estimate; the prior
        learns ``soh`` on every row with the estimate's columns hidden. ``score`` None fits
        the correction alone (what choosing its weight needs): such a model answers only
        rows that have an estimate.
        """
        _check_width(x)
        has = np.isfinite(x[:, _EST])
        if not has.any():
            raise ValueError("Expected some training rows with a capacity estimate, got none.")

        m_res = regressor(params, seed)
        m_res.fit(x[has][:, _RES], soh[has] - x[has, _EST].astype(np.float64))
        if score is None:
            return cls(m_res, None, None, params, shrink)
        m_prior, m_score = regressor(params, seed), regressor(params, seed)
        m_prior.fit(_hide_estimate(x), soh)
        m_score.fit(x, score)
        return cls(m_res, m_prior, m_score, params, shrink)

    def correction(self, x: npt.NDArray[np.float32]) -> FloatArray:
        """The bounded correction to each row's estimate (fraction; NaN where none), before
        ``shrink``."""
        out = np.full(x.shape[0], np.nan)
        has = np.isfinite(x[:, _EST])
        if has.any():
            c = self.residual_model.predict(x[has][:, _RES]).astype(np.float64)
            out[has] = np.clip(c, -self.params.max_correction, self.params.max_correction)
        return out

    def soh_from(self, x: npt.NDArray[np.float32], shrink: float) -> FloatArray:
        """SOH (fraction) with the correction weighted by ``shrink``; what :meth:`predict_features`
        gives at the model's own ``shrink`` (training tries others)."""
        est = x[:, _EST].astype(np.float64)
        has = np.isfinite(est)
        soh = np.empty(x.shape[0])
        soh[has] = est[has] + shrink * self.correction(x)[has]
        if (~has).any():
            if self.prior_model is None:
                raise ValueError("Expected rows with a capacity estimate: this model was fitted without its prior.")
            soh[~has] = self.prior_model.predict(_hide_estimate(x[~has])).astype(np.float64)
        return np.clip(soh, 0.0, 1.2)

    def predict_features(self, x: npt.NDArray[np.float32]) -> HealthPrediction:
        """Predict from a feature matrix (the batched path the Serve deployment uses)."""
        _check_width(x)
        if x.shape[0] == 0:
            return HealthPrediction(np.empty(0), np.empty(0))
        if self.score_model is None:
            raise ValueError("Expected a full health model, got one fitted for its correction alone.")
        soh = self.soh_from(x, self.shrink)
        score = np.clip(self.score_model.predict(x).astype(np.float64), 0.0, 100.0)
        return HealthPrediction(soh_pct=100.0 * soh, health_score=score)

    def predict(self, counters: TwinCounters) -> HealthPrediction:
        return self.predict_features(health_features(counters))

    def save(self, directory: Path) -> None:
        if self.prior_model is None or self.score_model is None:
            raise ValueError("Expected a full health model to save, got one fitted for its correction alone.")
        directory.mkdir(parents=True, exist_ok=True)
        self.residual_model.save_model(directory / "soh_correction.json")
        self.prior_model.save_model(directory / "soh_prior.json")
        self.score_model.save_model(directory / "score.json")
        meta = {
            "kind": "health_xgb",
            "format": HEALTH_FORMAT,
            "features": list(HEALTH_FEATURE_NAMES),
            "params": asdict(self.params),
            "shrink": self.shrink,
            "metrics": self.metrics,
        }
        (directory / _META).write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, directory: Path) -> HealthXGB:
        meta = _read_meta(directory, "health_xgb")
        if meta.get("format") != HEALTH_FORMAT:
            raise ValueError(
                f"Expected a health model of format {HEALTH_FORMAT}, got {meta.get('format', 1)} in "
                f"{directory}: retrain it with this version."
            )
        if meta["features"] != list(HEALTH_FEATURE_NAMES):
            raise ValueError(
                f"Expected a health model over features {list(HEALTH_FEATURE_NAMES)}, got "
                f"{meta['features']} in {directory}: retrain it with this version."
            )
        res, prior, score = xgb.XGBRegressor(), xgb.XGBRegressor(), xgb.XGBRegressor()
        res.load_model(directory / "soh_correction.json")
        prior.load_model(directory / "soh_prior.json")
        score.load_model(directory / "score.json")
        return cls(res, prior, score, HealthParams(**meta["params"]), float(meta["shrink"]), meta["metrics"])


def regressor(params: HealthParams, seed: int) -> xgb.XGBRegressor:
    """One boosted-tree regressor with the model's knobs."""
    return xgb.XGBRegressor(
        n_estimators=params.n_estimators,
        max_depth=params.max_depth,
        learning_rate=params.learning_rate,
        subsample=params.subsample,
        n_jobs=params.n_jobs,
        random_state=seed,
        tree_method="hist",
    )


def _hide_estimate(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    out = np.array(x, dtype=np.float32, copy=True)
    out[:, _ESTIMATE_COLUMNS] = np.nan
    return out


class LabelledLifetime(LifetimeCounters, Protocol):
    """Training rows: a twin's counters per (pack, day) with the true state to learn.

    :class:`sim.ageing.LifetimeSample` is one; a protocol, so serving this model (which
    imports this module) never loads the simulator.
    """

    @property
    def pack(self) -> npt.NDArray[np.int64]: ...
    @property
    def soh(self) -> npt.NDArray[np.float64]: ...
    @property
    def resistance_ratio(self) -> npt.NDArray[np.float64]: ...


@dataclass(frozen=True)
class ForeignRows:
    """Labelled feature rows of packs the simulator did not make (electrochemical packs),
    ``group`` naming each row's cell (its parameter set): the unit left out when the
    correction's weight is chosen."""

    x: npt.NDArray[np.float32]
    soh: FloatArray
    score: FloatArray
    group: npt.NDArray[np.str_]

    def __post_init__(self) -> None:
        n = self.x.shape[0]
        if not (self.soh.shape == self.score.shape == self.group.shape == (n,)):
            raise ValueError(
                f"Expected one soh, score and group per row of x ({n}), got {self.soh.shape}, "
                f"{self.score.shape} and {self.group.shape}."
            )

    def select(self, keep: npt.NDArray[np.bool_]) -> ForeignRows:
        return ForeignRows(self.x[keep], self.soh[keep], self.score[keep], self.group[keep])


#: The correction weights tried; ties go to the smaller (closer to the twin's own estimate).
SHRINK_GRID: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)


def shrink_errors(model: HealthXGB, x: npt.NDArray[np.float32], soh: FloatArray) -> FloatArray:
    """Mean absolute SOH error (points) of each :data:`SHRINK_GRID` weight on the rows of ``x``
    that have an estimate (NaN when none has)."""
    has = np.isfinite(x[:, _EST])
    if not has.any():
        return np.full(len(SHRINK_GRID), np.nan)
    return np.array([
        float(np.mean(np.abs(model.soh_from(x[has], w) - soh[has]))) * 100.0 for w in SHRINK_GRID
    ])  # fmt: skip


def train_health(
    sample: LabelledLifetime, params: HealthParams = HealthParams(), seed: int = 0, test_fraction: float = 0.2,
    foreign: ForeignRows | None = None,
) -> tuple[HealthXGB, npt.NDArray[np.float32]]:  # fmt: skip
    """Fit on simulated lifetimes (and ``foreign`` packs), holding out whole simulated packs;
    (model, training features).

    The correction's weight is the :data:`SHRINK_GRID` value with the least error on
    chemistries it was not trained on: each ``foreign`` group left out in turn (two groups
    or more), else the held-out simulated packs. Metrics on the held-out packs land in
    ``model.metrics``, next to the baseline the model must not lose to: the twin's own
    coulomb-counted estimate.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"Expected test_fraction in (0, 1), got {test_fraction}.")
    x = health_features(TwinCounters.from_lifetime(sample))
    score = health_score_label(sample.soh, sample.resistance_ratio)
    rng = np.random.default_rng(seed)
    packs = np.unique(sample.pack)
    test_packs = rng.choice(packs, max(1, int(len(packs) * test_fraction)), replace=False)
    test = np.isin(sample.pack, test_packs)

    def fit(extra: ForeignRows | None, full: bool = True) -> HealthXGB:
        if extra is None or extra.x.shape[0] == 0:
            return HealthXGB.fit(x[~test], sample.soh[~test], score[~test] if full else None, params, seed)
        return HealthXGB.fit(
            np.concatenate([x[~test], extra.x]), np.concatenate([sample.soh[~test], extra.soh]),
            np.concatenate([score[~test], extra.score]) if full else None, params, seed,
        )  # fmt: skip

    started = time.perf_counter()
    groups = sorted(set(foreign.group.tolist())) if foreign is not None else []
    if foreign is not None and len(groups) >= 2:
        errors = []
        for g in groups:
            out = foreign.group == g
            errors.append(shrink_errors(fit(foreign.select(~out), full=False), foreign.x[out], foreign.soh[out]))
        per_weight = np.nanmean(np.array(errors), axis=0)
        chosen_on = "foreign_groups_left_out"
    model = fit(foreign)
    if not (foreign is not None and len(groups) >= 2):
        per_weight = shrink_errors(model, x[test], sample.soh[test])
        chosen_on = "held_out_simulated_packs"
    model.shrink = SHRINK_GRID[int(np.nanargmin(per_weight))] if np.isfinite(per_weight).any() else 0.0
    train_s = time.perf_counter() - started
    pred = model.predict_features(x[test])
    soh_true = 100.0 * sample.soh[test]
    est = 100.0 * x[test, _EST].astype(np.float64)
    has_est = np.isfinite(est)
    model.metrics = {
        "soh_rmse_pct": _rmse(pred.soh_pct, soh_true),
        "soh_mae_pct": float(np.mean(np.abs(pred.soh_pct - soh_true))),
        "baseline_capacity_estimate_rmse_pct": _rmse(est[has_est], soh_true[has_est]),
        "model_rmse_pct_where_estimate": _rmse(pred.soh_pct[has_est], soh_true[has_est]),
        "baseline_capacity_estimate_mae_pct": float(np.mean(np.abs(est[has_est] - soh_true[has_est]))),
        "model_mae_pct_where_estimate": float(np.mean(np.abs(pred.soh_pct[has_est] - soh_true[has_est]))),
        "health_score_mae": float(np.mean(np.abs(pred.health_score - score[test]))),
        "shrink": model.shrink,
        "foreign_rows": float(foreign.x.shape[0]) if foreign is not None else 0.0,
        "train_rows": float((~test).sum()) + (float(foreign.x.shape[0]) if foreign is not None else 0.0),
        "test_rows": float(test.sum()),
        "train_seconds": train_s,
    }
    model.metrics.update({f"shrink_{w:g}_mae_pct": float(e) for w, e in zip(SHRINK_GRID, per_weight, strict=True)})
    model.metrics["shrink_chosen_on_" + chosen_on] = 1.0
    return model, x[~test]


def _rmse(a: FloatArray, b: FloatArray) -> float:
    return float(np.sqrt(np.mean((a - b) ** 2))) if a.size else float("nan")


def _check_width(x: npt.NDArray[np.float32]) -> None:
    if x.ndim != 2 or x.shape[1] != len(HEALTH_FEATURE_NAMES):
        raise ValueError(
            f"Expected health features of shape (n, {len(HEALTH_FEATURE_NAMES)}), got {x.shape}."
        )


def _read_meta(directory: Path, kind: str) -> dict[str, Any]:
    path = directory / _META
    if not path.is_file():
        raise FileNotFoundError(f"Expected a model directory with {_META}, got {directory}.")
    meta: dict[str, Any] = json.loads(path.read_text())
    if meta.get("kind") != kind:
        raise ValueError(f"Expected a {kind!r} model in {directory}, got {meta.get('kind')!r}.")
    return meta

"""Health scoring: XGBoost regression of state of health and a 0-100 health score.

Inputs are :func:`twins.features.health_features` of a twin's counters. Labels come
from the ageing simulator (:mod:`sim.ageing`), which knows each pack's true SOH and
resistance growth; the twin only has noisy coulomb-counted capacity and step-response
resistance estimates, plus usage counters. The model learns to combine them: usage and
temperature exposure carry the SOH when a twin has too few capacity estimates, and temper
the estimate's scatter when it has them.

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

__all__ = ["HealthParams", "HealthPrediction", "HealthXGB", "health_score_label", "train_health"]

FloatArray = npt.NDArray[np.float64]
_META = "meta.json"


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


@dataclass(frozen=True)
class HealthPrediction:
    """SOH in percent of rated capacity and the 0-100 health score, one per twin."""

    soh_pct: FloatArray
    health_score: FloatArray


class HealthXGB:
    """Two boosted-tree regressors over :data:`HEALTH_FEATURE_NAMES`."""

    def __init__(
        self,
        soh: xgb.XGBRegressor,
        score: xgb.XGBRegressor,
        params: HealthParams,
        metrics: dict[str, float] | None = None,
    ) -> None:
        self.soh_model = soh
        self.score_model = score
        self.params = params
        self.metrics = dict(metrics or {})

    @classmethod
    def fit(
        cls, x: npt.NDArray[np.float32], soh: FloatArray, score: FloatArray, params: HealthParams, seed: int
    ) -> HealthXGB:
        _check_width(x)

        def regressor() -> xgb.XGBRegressor:
            return xgb.XGBRegressor(
                n_estimators=params.n_estimators,
                max_depth=params.max_depth,
                learning_rate=params.learning_rate,
                subsample=params.subsample,
                n_jobs=params.n_jobs,
                random_state=seed,
                tree_method="hist",
            )

        m_soh, m_score = regressor(), regressor()
        m_soh.fit(x, soh)
        m_score.fit(x, score)
        return cls(m_soh, m_score, params)

    def predict_features(self, x: npt.NDArray[np.float32]) -> HealthPrediction:
        """Predict from a feature matrix (the batched path the Serve deployment uses)."""
        _check_width(x)
        if x.shape[0] == 0:
            return HealthPrediction(np.empty(0), np.empty(0))
        soh = np.clip(self.soh_model.predict(x).astype(np.float64), 0.0, 1.2)
        score = np.clip(self.score_model.predict(x).astype(np.float64), 0.0, 100.0)
        return HealthPrediction(soh_pct=100.0 * soh, health_score=score)

    def predict(self, counters: TwinCounters) -> HealthPrediction:
        return self.predict_features(health_features(counters))

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.soh_model.save_model(directory / "soh.json")
        self.score_model.save_model(directory / "score.json")
        meta = {
            "kind": "health_xgb",
            "features": list(HEALTH_FEATURE_NAMES),
            "params": asdict(self.params),
            "metrics": self.metrics,
        }
        (directory / _META).write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, directory: Path) -> HealthXGB:
        meta = _read_meta(directory, "health_xgb")
        if meta["features"] != list(HEALTH_FEATURE_NAMES):
            raise ValueError(
                f"Expected a health model over features {list(HEALTH_FEATURE_NAMES)}, got "
                f"{meta['features']} in {directory}: retrain it with this version."
            )
        soh, score = xgb.XGBRegressor(), xgb.XGBRegressor()
        soh.load_model(directory / "soh.json")
        score.load_model(directory / "score.json")
        return cls(soh, score, HealthParams(**meta["params"]), meta["metrics"])


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


def train_health(
    sample: LabelledLifetime, params: HealthParams = HealthParams(), seed: int = 0, test_fraction: float = 0.2
) -> tuple[HealthXGB, npt.NDArray[np.float32]]:
    """Fit on simulated lifetimes, holding out whole packs; (model, training features).

    Metrics on the held-out packs land in ``model.metrics``, next to the baseline the
    model has to beat: the twin's own coulomb-counted SOH estimate.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"Expected test_fraction in (0, 1), got {test_fraction}.")
    x = health_features(TwinCounters.from_lifetime(sample))
    score = health_score_label(sample.soh, sample.resistance_ratio)
    rng = np.random.default_rng(seed)
    packs = np.unique(sample.pack)
    test_packs = rng.choice(packs, max(1, int(len(packs) * test_fraction)), replace=False)
    test = np.isin(sample.pack, test_packs)
    started = time.perf_counter()
    model = HealthXGB.fit(x[~test], sample.soh[~test], score[~test], params, seed)
    train_s = time.perf_counter() - started
    pred = model.predict_features(x[test])
    soh_true = 100.0 * sample.soh[test]
    est = 100.0 * x[test, HEALTH_FEATURE_NAMES.index("capacity_ratio_est")].astype(np.float64)
    has_est = np.isfinite(est)
    model.metrics = {
        "soh_rmse_pct": _rmse(pred.soh_pct, soh_true),
        "soh_mae_pct": float(np.mean(np.abs(pred.soh_pct - soh_true))),
        "baseline_capacity_estimate_rmse_pct": _rmse(est[has_est], soh_true[has_est]),
        "model_rmse_pct_where_estimate": _rmse(pred.soh_pct[has_est], soh_true[has_est]),
        "health_score_mae": float(np.mean(np.abs(pred.health_score - score[test]))),
        "train_rows": float((~test).sum()),
        "test_rows": float(test.sum()),
        "train_seconds": train_s,
    }
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

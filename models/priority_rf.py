"""Priority scoring: a Random Forest of the rides a vehicle loses if its battery is not swapped.

Label: **expected lost rides in the next 6 hours** without a swap. Nobody observes that
directly on a live fleet (a swap changes the future), so labels come from simulated
outcomes, :func:`simulate_lost_rides`: a vehicle with a given charge, pack health and
local demand is rolled forward in 10-minute steps; ride requests arrive as a Poisson
process at the zone's true rate, each ride takes the pack's consumption, and once the
charge falls under the rentable threshold every further request is a lost ride. The
true rate differs from the forecast the model sees (forecast error, and a vehicle that has
idled long is likely parked where demand is thinner than the zone average), so the forest
learns how much to trust each input. The score an operator sorts by is
``priority = 100 * lost / (lost + 1)`` (0: no loss expected, 50: one ride, 90: nine).
"""

from __future__ import annotations

import json
import pickle
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.ensemble import RandomForestRegressor

from sim.demand import DemandProfile
from twins.features import PRIORITY_FEATURE_NAMES, PriorityInputs, priority_features

__all__ = [
    "PriorityParams",
    "PriorityPrediction",
    "PriorityRF",
    "priority_from_lost_rides",
    "simulate_lost_rides",
    "train_priority",
]

FloatArray = npt.NDArray[np.float64]
_META = "meta.json"
_HORIZON_H = 6.0
_STEP_H = 1.0 / 6.0


def priority_from_lost_rides(lost_rides: FloatArray) -> FloatArray:
    """The 0-100 priority score of an expected number of lost rides."""
    lost = np.maximum(lost_rides, 0.0)
    return np.asarray(100.0 * lost / (lost + 1.0), dtype=np.float64)


@dataclass(frozen=True)
class PriorityParams:
    """Forest knobs and the outcome simulation's assumptions."""

    n_estimators: int = 120
    max_depth: int = 14
    min_samples_leaf: int = 4
    n_jobs: int = 1
    rentable_soc_pct: float = 15.0
    forecast_error_sigma: float = 0.25
    idle_decay_per_h: float = 0.08

    def __post_init__(self) -> None:
        if not 1 <= self.n_estimators <= 5000:
            raise ValueError(f"Expected n_estimators in [1, 5000], got {self.n_estimators}.")
        if not 1 <= self.max_depth <= 64 or self.min_samples_leaf < 1:
            raise ValueError(
                f"Expected max_depth in [1, 64] and min_samples_leaf >= 1, got "
                f"{self.max_depth} and {self.min_samples_leaf}."
            )
        if not 0.0 <= self.rentable_soc_pct < 100.0:
            raise ValueError(f"Expected rentable_soc_pct in [0, 100), got {self.rentable_soc_pct}.")


@dataclass(frozen=True)
class PriorityPrediction:
    """Expected lost rides in the next 6 h and the 0-100 priority, one per battery."""

    lost_rides_6h: FloatArray
    priority: FloatArray


def _scenarios(n: int, rng: np.random.Generator, profile: DemandProfile) -> tuple[PriorityInputs, FloatArray]:
    """Random vehicles and the true hourly ride rate over the next 6 h of each."""
    hour = rng.uniform(0.0, 24.0, n)
    zone_rides_per_vehicle_day = rng.lognormal(np.log(4.0), 0.6, n)
    steps = np.arange(0.0, _HORIZON_H, _STEP_H)
    shape = np.array([[profile.trip_rate_per_s(h + s) for s in steps] for h in hour])
    base = profile.trips_per_vehicle_per_day
    rate_h = shape * 3600.0 / base * zone_rides_per_vehicle_day[:, None]
    soh = rng.uniform(0.62, 1.0, n)
    consumption = 4.0 / soh * rng.uniform(0.75, 1.25, n)
    idle_h = rng.exponential(3.0, n)
    inputs = PriorityInputs(
        soc_pct=rng.uniform(0.0, 100.0, n),
        soh=soh,
        consumption_pct_per_ride=consumption,
        demand_next_3h=rate_h[:, : int(3 / _STEP_H)].sum(axis=1) * _STEP_H,
        demand_next_6h=rate_h.sum(axis=1) * _STEP_H,
        idle_h=idle_h,
        hour_of_day=hour,
        charging=rng.random(n) < 0.05,
    )
    return inputs, rate_h


def simulate_lost_rides(
    inputs: PriorityInputs,
    forecast_rate_h: FloatArray,
    params: PriorityParams,
    rng: np.random.Generator,
    replicates: int = 4,
) -> FloatArray:
    """Mean lost rides over 6 h per vehicle, rolled forward ``replicates`` times.

    ``forecast_rate_h`` is the forecast ride rate per 10-minute step (n, 36); the true rate
    scales it by a per-vehicle factor: log-normal forecast error, and a decay with idle
    time (a vehicle nobody took for hours is parked somewhere quieter).
    """
    n, steps = forecast_rate_h.shape
    total = np.zeros(n)
    for _ in range(replicates):
        factor = np.exp(
            rng.normal(0.0, params.forecast_error_sigma, n) - params.idle_decay_per_h * inputs.idle_h
        )
        rate = forecast_rate_h * factor[:, None]
        soc = inputs.soc_pct.copy()
        lost = np.zeros(n)
        for k in range(steps):
            requests = rng.poisson(rate[:, k] * _STEP_H)
            rentable = soc >= params.rentable_soc_pct
            usable_rides = np.floor(
                np.maximum(soc - params.rentable_soc_pct, 0.0) / inputs.consumption_pct_per_ride
            ) + 1.0
            served = np.where(rentable, np.minimum(requests, usable_rides), 0)
            lost += requests - served
            soc -= served * inputs.consumption_pct_per_ride
        # A battery on the charger is not out on the street: it loses no rides.
        total += np.where(inputs.charging, 0.0, lost)
    return total / replicates


class PriorityRF:
    """A Random Forest over :data:`PRIORITY_FEATURE_NAMES` predicting lost rides in 6 h."""

    def __init__(
        self, forest: RandomForestRegressor, params: PriorityParams, metrics: dict[str, float] | None = None
    ) -> None:
        self.forest = forest
        self.params = params
        self.metrics = dict(metrics or {})

    def predict_features(self, x: npt.NDArray[np.float32]) -> PriorityPrediction:
        if x.ndim != 2 or x.shape[1] != len(PRIORITY_FEATURE_NAMES):
            raise ValueError(
                f"Expected priority features of shape (n, {len(PRIORITY_FEATURE_NAMES)}), got "
                f"{x.shape}."
            )
        if x.shape[0] == 0:
            return PriorityPrediction(np.empty(0), np.empty(0))
        lost = np.maximum(self.forest.predict(x).astype(np.float64), 0.0)
        return PriorityPrediction(lost_rides_6h=lost, priority=priority_from_lost_rides(lost))

    def predict(self, inputs: PriorityInputs) -> PriorityPrediction:
        return self.predict_features(priority_features(inputs, self.params.rentable_soc_pct))

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        # scikit-learn forests only serialise with pickle; the file is written and read
        # by this code alone, from the registry's artifact directory.
        with (directory / "forest.pkl").open("wb") as fh:
            pickle.dump(self.forest, fh, protocol=pickle.HIGHEST_PROTOCOL)
        meta = {
            "kind": "priority_rf",
            "features": list(PRIORITY_FEATURE_NAMES),
            "params": asdict(self.params),
            "metrics": self.metrics,
        }
        (directory / _META).write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, directory: Path) -> PriorityRF:
        path = directory / _META
        if not path.is_file():
            raise FileNotFoundError(f"Expected a model directory with {_META}, got {directory}.")
        meta: dict[str, Any] = json.loads(path.read_text())
        if meta.get("kind") != "priority_rf" or meta.get("features") != list(PRIORITY_FEATURE_NAMES):
            raise ValueError(
                f"Expected a priority_rf model over {list(PRIORITY_FEATURE_NAMES)} in "
                f"{directory}, got kind {meta.get('kind')!r} over {meta.get('features')}."
            )
        with (directory / "forest.pkl").open("rb") as fh:
            forest = pickle.load(fh)
        return cls(forest, PriorityParams(**meta["params"]), meta["metrics"])


def train_priority(
    n_scenarios: int = 20_000,
    params: PriorityParams = PriorityParams(),
    seed: int = 0,
    profile: DemandProfile = DemandProfile(),
) -> tuple[PriorityRF, npt.NDArray[np.float32]]:
    """Simulate outcomes, fit the forest, score it on fresh scenarios; (model, features).

    The baseline in the metrics is the physics rule without learning: rides demanded
    after the forecast time to empty, at the forecast rate.
    """
    if n_scenarios < 50:
        raise ValueError(f"Expected n_scenarios >= 50, got {n_scenarios}.")
    rng = np.random.default_rng(seed)
    inputs, rate_h = _scenarios(n_scenarios, rng, profile)
    y = simulate_lost_rides(inputs, rate_h, params, rng)
    x = priority_features(inputs, params.rentable_soc_pct)
    forest = RandomForestRegressor(
        n_estimators=params.n_estimators,
        max_depth=params.max_depth,
        min_samples_leaf=params.min_samples_leaf,
        n_jobs=params.n_jobs,
        random_state=seed,
    )
    started = time.perf_counter()
    forest.fit(x, y)
    train_s = time.perf_counter() - started
    model = PriorityRF(forest, params)

    n_test = max(50, n_scenarios // 5)
    t_inputs, t_rate = _scenarios(n_test, rng, profile)
    t_y = simulate_lost_rides(t_inputs, t_rate, params, rng, replicates=16)
    t_x = priority_features(t_inputs, params.rentable_soc_pct)
    pred = model.predict_features(t_x).lost_rides_6h
    hours_to_empty = t_x[:, PRIORITY_FEATURE_NAMES.index("hours_to_empty")].astype(np.float64)
    rule = np.where(
        t_inputs.charging, 0.0, np.maximum(_HORIZON_H - hours_to_empty, 0.0) * t_inputs.demand_next_6h / 6.0
    )
    top = np.argsort(-t_y)[: max(1, n_test // 10)]
    model.metrics = {
        "lost_rides_mae": float(np.mean(np.abs(pred - t_y))),
        "baseline_rule_mae": float(np.mean(np.abs(rule - t_y))),
        "top10pct_recall_model": _recall_at(pred, top),
        "top10pct_recall_rule": _recall_at(rule, top),
        "train_rows": float(n_scenarios),
        "test_rows": float(n_test),
        "train_seconds": train_s,
    }
    return model, x


def _recall_at(score: FloatArray, true_top: npt.NDArray[np.intp]) -> float:
    """Share of the truly most urgent 10 % that the score also ranks in its top 10 %."""
    k = true_top.size
    picked = np.argsort(-score)[:k]
    return float(np.intersect1d(picked, true_top).size / k)

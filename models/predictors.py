"""How each model family is loaded from its artifact directory and run on a batch of arrays.

One table, :data:`PREDICTORS`, used by the Serve deployments (:mod:`runtime.model_deployments`)
and by the in-process client the unit tests and benchmarks use, so the served and the bare
paths run the same code. A request is a dict of row-aligned arrays (first axis: one row per
battery, or per zone for demand); so is the response.

The LSTM families (:data:`GPU_FAMILIES`) can run on a GPU and in bfloat16: their predictor
says how to move a loaded model (``on_device``); the tree and statistics families run on the
CPU only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from contracts.weather import WeatherHours
from models.anomaly import AnomalyDetector
from models.degradation_lstm import DegradationLSTM, Encoded
from models.demand_lstm import HORIZON_HOURS, DemandInputs, DemandLSTM
from models.health_xgb import HealthXGB
from models.inference_device import InferenceDevice
from models.priority_rf import PriorityRF
from twins.cycle_inputs import SLOPE_EWMA_COLUMN
from twins.telemetry_windows import TelemetryWindows

__all__ = ["GPU_FAMILIES", "PREDICTORS", "Arrays", "Predictor", "demand_request", "predictor"]

Arrays = dict[str, npt.NDArray[Any]]


@dataclass(frozen=True)
class Predictor:
    """One model family as the serving layer sees it.

    Parameters
    ----------
    load
        Reads a model from its artifact directory.
    predict
        Runs the model on a batch of row-aligned arrays.
    inputs
        Names of the request arrays ``predict`` needs.
    drift_input
        The request array whose columns are watched for drift (None: not watched).
    optional_inputs
        Request arrays ``predict`` reads where a caller sends them.
    on_device
        A copy of a loaded model that runs on an :class:`InferenceDevice` (None: the family
        runs on the CPU in float32 only).
    """

    load: Callable[[Path], Any]
    predict: Callable[[Any, Mapping[str, npt.NDArray[Any]]], Arrays]
    inputs: tuple[str, ...]
    drift_input: str | None = None
    optional_inputs: tuple[str, ...] = ()
    on_device: Callable[[Any, InferenceDevice], Any] | None = None

    def load_on(self, directory: Path, device: InferenceDevice) -> Any:
        """Read a model from ``directory`` and place it on ``device``.

        Raises
        ------
        ValueError
            For a device other than cpu float32 on a family that runs on the CPU only.
        """
        if not device.is_default and self.on_device is None:
            raise ValueError(
                f"Expected cpu float32 for a model that runs on the CPU only, got {device.describe()} "
                f"(only {list(GPU_FAMILIES)} run on a GPU or in bfloat16)."
            )
        model = self.load(directory)
        return model if self.on_device is None or device.is_default else self.on_device(model, device)


def _health(model: HealthXGB, req: Mapping[str, npt.NDArray[Any]]) -> Arrays:
    pred = model.predict_features(np.asarray(req["features"], dtype=np.float32))
    return {"soh_pct": pred.soh_pct, "health_score": pred.health_score}


def _priority(model: PriorityRF, req: Mapping[str, npt.NDArray[Any]]) -> Arrays:
    pred = model.predict_features(np.asarray(req["features"], dtype=np.float32))
    return {"lost_rides_6h": pred.lost_rides_6h, "priority": pred.priority}


def _degradation(model: DegradationLSTM, req: Mapping[str, npt.NDArray[Any]]) -> Arrays:
    # One LSTM step per twin (the twin keeps h and c), then the remaining-life bands read
    # off the new state, from the step's SOH, cycle count and smoothed slope.
    x = np.asarray(req["x"], dtype=np.float32)
    _, h, c = model.step(x, req["h"], req["c"])
    start = Encoded(
        h, c, np.asarray(req["soh"], dtype=np.float64), np.asarray(req["cycle"], dtype=np.float64),
        x[:, SLOPE_EWMA_COLUMN].astype(np.float64),
    )  # fmt: skip
    fc = model.forecast(start, 1)
    out: Arrays = {"h": h, "c": c}
    for level, rul in (("rul80", fc.rul_80_cycles), ("rul70", fc.rul_70_cycles)):
        for k, q in enumerate(("p10", "p50", "p90")):
            out[f"{level}_{q}_cycles"] = rul[:, k]
    return out


def _anomaly(model: AnomalyDetector, req: Mapping[str, npt.NDArray[Any]]) -> Arrays:
    lengths = np.asarray(req["lengths"], dtype=np.int64)
    windows = TelemetryWindows(
        values=np.asarray(req["values"], dtype=np.float32),
        ts_s=np.asarray(req["ts_s"], dtype=np.float64),
        lengths=lengths,
        battery_ids=tuple(str(k) for k in range(lengths.shape[0])),
        # A caller from before the twins learned their packs sends no evidence.
        evidence=np.asarray(req["evidence"], dtype=np.float64) if "evidence" in req else None,
    )
    report = model.score(windows)
    out: Arrays = {"flags": report.flags, "anomaly_score": report.anomaly_score}
    for kind, score in report.scores.items():
        out[f"score_{str(kind.name).lower()}"] = score
    return out


def _demand(model: DemandLSTM, req: Mapping[str, npt.NDArray[Any]]) -> Arrays:
    # Weather is the same for every zone of one forecast; rows are grouped by forecast
    # start, in case @serve.batch merged two forecasts into one call.
    rides = np.asarray(req["history_rides"], dtype=np.float64)
    out = np.empty((rides.shape[0], HORIZON_HOURS))
    starts = np.asarray(req["next_ts"])[:, 0]
    for start in np.unique(starts):
        rows = np.flatnonzero(starts == start)
        r0 = rows[0]
        inputs = DemandInputs(
            history_rides=rides[rows],
            weather_past=WeatherHours(req["past_ts"][r0], req["past_temp_c"][r0], req["past_precipitation_mm"][r0]),
            weather_next=WeatherHours(req["next_ts"][r0], req["next_temp_c"][r0], req["next_precipitation_mm"][r0]),
        )
        out[rows] = model.predict(inputs)
    return {"rides": out}


def demand_request(inputs: DemandInputs) -> Arrays:
    """The row-aligned arrays of a demand forecast request (weather repeated per zone)."""
    n = inputs.n_zones

    def rep(a: npt.NDArray[Any]) -> npt.NDArray[Any]:
        return np.repeat(np.asarray(a)[None, :], n, axis=0)

    wp, wn = inputs.weather_past, inputs.weather_next
    return {
        "history_rides": np.asarray(inputs.history_rides),
        "past_ts": rep(wp.ts), "past_temp_c": rep(wp.temp_c), "past_precipitation_mm": rep(wp.precipitation_mm),
        "next_ts": rep(wn.ts), "next_temp_c": rep(wn.temp_c), "next_precipitation_mm": rep(wn.precipitation_mm),
    }


PREDICTORS: dict[str, Predictor] = {
    "health": Predictor(HealthXGB.load, _health, ("features",), drift_input="features"),
    "priority": Predictor(PriorityRF.load, _priority, ("features",), drift_input="features"),
    "degradation": Predictor(
        DegradationLSTM.load, _degradation, ("x", "h", "c", "soh", "cycle"), on_device=DegradationLSTM.on_device
    ),
    "anomaly": Predictor(AnomalyDetector.load, _anomaly, ("values", "ts_s", "lengths"), optional_inputs=("evidence",)),
    "demand": Predictor(
        DemandLSTM.load,
        _demand,
        ("history_rides", "past_ts", "past_temp_c", "past_precipitation_mm",
         "next_ts", "next_temp_c", "next_precipitation_mm"),
        on_device=DemandLSTM.on_device,
    ),
}

#: The families whose replicas may be given a GPU and a float type (``[models] num_gpus``,
#: ``lstm_dtype``): the LSTM forecasters.
GPU_FAMILIES: tuple[str, ...] = tuple(name for name, p in PREDICTORS.items() if p.on_device is not None)


def predictor(name: str) -> Predictor:
    """The predictor of model ``name``; a clear error for an unknown one."""
    try:
        return PREDICTORS[name]
    except KeyError:
        raise KeyError(f"Expected a model name in {sorted(PREDICTORS)}, got {name!r}.") from None

"""One model as a Serve replica holds it: the loaded versions, the A/B split, metrics, drift.

Plain Python (no Ray, no database): the replica in :mod:`runtime.model_deployments` feeds it
the registry's :class:`~contracts.model_registry.ServingConfig` whenever that changes, and the
in-process client of the tests and benchmarks uses it directly, so both run the same code.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from contracts.model_registry import ServingConfig
from contracts.scoring import DRIFT_ELIGIBLE
from models.ab_split import VersionMetrics, route_versions
from models.drift import MAJOR_PSI, DriftMonitor, DriftReference
from models.inference_device import InferenceDevice
from models.predictors import Arrays, Predictor, predictor

__all__ = ["DRIFT_REFERENCE_FILE", "InProcessModels", "NotServing", "ServedModel"]

log = logging.getLogger(__name__)

#: Written next to a model's artifact at training time: its features' reference histograms.
DRIFT_REFERENCE_FILE = "drift_reference.json"


class NotServing(RuntimeError):
    """The model has no production version loaded yet (nothing registered and promoted)."""


class ServedModel:
    """The versions of one model a replica answers with.

    Parameters
    ----------
    name
        Registry name of the model.
    predictor
        How to load and run it.
    drift_threshold
        PSI above which a feature raises a drift alert.
    device
        Where each loaded version runs (:func:`models.inference_device.resolve`); only the
        LSTM families run elsewhere than on the CPU in float32.
    """

    def __init__(
        self,
        name: str,
        predictor: Predictor,
        drift_threshold: float = MAJOR_PSI,
        device: InferenceDevice | None = None,
    ) -> None:
        device = device or InferenceDevice()
        if not device.is_default and predictor.on_device is None:
            raise ValueError(
                f"Expected cpu float32 for model {name!r}, which runs on the CPU only, got {device.describe()}."
            )
        self.name = name
        self.predictor = predictor
        self.drift_threshold = drift_threshold
        self.device = device
        self.serving: ServingConfig | None = None
        self._models: dict[int, Any] = {}
        self._drift: dict[int, DriftMonitor] = {}
        self.metrics = VersionMetrics()
        # Loads happen in a worker thread while requests run on the loop; swapping the
        # dicts under a lock keeps a request from seeing a half-updated set of versions.
        self._lock = threading.Lock()

    def apply(self, serving: ServingConfig, artifact_dirs: Mapping[int, Path]) -> bool:
        """Load whatever versions ``serving`` needs; drop the others. True if anything changed.

        Blocking (reads model files): call it from a thread in an event loop.
        """
        wanted = [serving.production_version]
        if serving.candidate_version is not None:
            wanted.append(serving.candidate_version)
        models = {v: m for v, m in self._models.items() if v in wanted}
        drift = {v: d for v, d in self._drift.items() if v in wanted}
        for v in wanted:
            if v in models:
                continue
            try:
                directory = artifact_dirs[v]
            except KeyError:
                raise KeyError(f"Expected an artifact directory for {self.name} v{v}, got none.") from None
            models[v] = self.predictor.load_on(directory, self.device)
            ref_path = directory / DRIFT_REFERENCE_FILE
            if ref_path.is_file():
                ref = DriftReference.from_dict(json.loads(ref_path.read_text()))
                drift[v] = DriftMonitor(ref, threshold=self.drift_threshold)
            log.info("model %s: loaded v%d from %s on %s", self.name, v, directory, self.device.describe())
        changed = serving != self.serving or models.keys() != self._models.keys()
        with self._lock:
            self._models, self._drift, self.serving = models, drift, serving
        return changed

    def run(self, ids: Sequence[str], request: Mapping[str, npt.NDArray[Any]]) -> Arrays:
        """Answer one batch: each row by the version its id is routed to.

        The response carries ``model_version`` per row, so callers (and the A/B metrics)
        know which version produced what.
        """
        with self._lock:
            serving, models, drift = self.serving, self._models, self._drift
        if serving is None:
            raise NotServing(
                f"Model {self.name!r} has no production version loaded: register and promote "
                f"one (bms models train does both)."
            )
        missing = [k for k in self.predictor.inputs if k not in request]
        if missing:
            raise ValueError(
                f"Expected request arrays {list(self.predictor.inputs)} for model {self.name!r}, "
                f"missing {missing}."
            )
        n = len(ids)
        names = (*self.predictor.inputs, *(k for k in self.predictor.optional_inputs if k in request))
        for k in names:
            if request[k].shape[0] != n:
                raise ValueError(
                    f"Expected {n} rows in {k!r} (one per id), got shape {request[k].shape}."
                )
        versions = route_versions(ids, serving)
        out: Arrays = {}
        for v in np.unique(versions).tolist():
            rows = np.flatnonzero(versions == v)
            part = {k: request[k][rows] for k in names}
            res = self.predictor.predict(models[int(v)], part)
            for key, arr in res.items():
                if key not in out:
                    out[key] = np.empty((n, *arr.shape[1:]), dtype=arr.dtype)
                out[key][rows] = arr
            main = next(iter(res.values()))
            if main.ndim == 1:
                self.metrics.record_predictions(int(v), main)
            if self.predictor.drift_input is not None and int(v) in drift:
                x = np.asarray(part[self.predictor.drift_input], dtype=np.float64)
                if DRIFT_ELIGIBLE in request:
                    x = x[np.asarray(request[DRIFT_ELIGIBLE], dtype=bool)[rows]]
                if len(x):
                    drift[int(v)].update(x)
        out["model_version"] = versions
        return out

    def status(self) -> dict[str, Any]:
        """Versions loaded, per-version metrics and drift (for the HTTP API and alerts)."""
        with self._lock:
            serving, drift = self.serving, dict(self._drift)
        drift_out = {
            str(v): {
                "psi": d.psi() if d.samples else {},
                "alerts": [
                    {"feature": a.feature, "psi": a.psi, "level": str(a.level)} for a in d.alerts()
                ],
                "samples": d.samples,
            }
            for v, d in drift.items()
        }
        return {
            "name": self.name,
            "production_version": None if serving is None else serving.production_version,
            "candidate_version": None if serving is None else serving.candidate_version,
            "candidate_fraction": 0.0 if serving is None else serving.candidate_fraction,
            "versions": self.metrics.to_dict(),
            "drift": drift_out,
        }


class InProcessModels:
    """A :class:`twins.scoring.ModelClient` that runs the models in this process.

    The same :class:`ServedModel` code as a Serve replica, without Ray: for unit tests,
    benchmarks' bare side and what-if simulations.
    """

    def __init__(self, models: Mapping[str, ServedModel]) -> None:
        self.models = dict(models)

    @classmethod
    def from_artifacts(cls, artifacts: Mapping[str, Path]) -> InProcessModels:
        """Version 1 of each model from its artifact directory."""
        out = {}
        for name, directory in artifacts.items():
            served = ServedModel(name, predictor(name))
            served.apply(ServingConfig(name, 1, None, 0.0, time.time(), "in-process"), {1: directory})
            out[name] = served
        return cls(out)

    async def call(self, model: str, ids: list[str], arrays: Mapping[str, npt.NDArray[Any]]) -> Arrays:
        try:
            served = self.models[model]
        except KeyError:
            raise NotServing(f"Model {model!r} is not loaded in this process; have {sorted(self.models)}.") from None
        return served.run(ids, arrays)

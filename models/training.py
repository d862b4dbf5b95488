"""``bms models train``: build every training set, train every model, register the results.

Each model family has one *trainer*: a function that builds its data (simulator or lab
cells), fits with a fixed seed, evaluates on held-out data, and writes an artifact
directory (model files, ``meta.json`` with metrics, and for feature models the drift
reference of its training features). :func:`train_all` runs them in order and reports
progress; :func:`register_all` copies the artifacts into the registry as new versions and
promotes them when asked (or when the model has nothing in production yet, so a fresh
system serves at once).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from models.cell_data import CellHistory, load_cell_histories
from models.degradation_lstm import DegradationParams
from models.degradation_lstm import train as train_degradation
from models.drift import DriftReference
from models.features import HEALTH_FEATURE_NAMES, PRIORITY_FEATURE_NAMES
from models.health_xgb import HealthParams, train_health
from models.model_version import ModelVersion
from models.priority_rf import PriorityParams, train_priority
from models.registry import ModelRegistry, data_fingerprint
from models.served_model import DRIFT_REFERENCE_FILE
from sim.ageing import LifetimeSimulator

__all__ = ["TrainedModel", "TrainingPlan", "default_cells_dir", "register_all", "train_all"]

log = logging.getLogger(__name__)
Progress = Callable[[str], None]


def default_cells_dir() -> Path | None:
    """The NASA lab cells next to the checkout (``../shared/data/battery/nasa_pcoe``), if there."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here.parent / "shared/data/battery/nasa_pcoe", Path("../shared/data/battery/nasa_pcoe")):
        if candidate.is_dir():
            return candidate
    return None


@dataclass(frozen=True)
class TrainingPlan:
    """Sizes and sources of every training set; :meth:`quick` is the small plan.

    Parameters
    ----------
    seed
        Seeds every simulator and every fit.
    health_packs, health_days, health_snapshots
        Ageing-simulator lifetimes for the health model.
    priority_scenarios
        Simulated vehicles (with outcomes) for the priority model.
    cells_dir
        Per-cycle lab cells for the degradation model (None: simulated fade only).
    degradation_steps
        Optimiser steps of the degradation LSTM.
    anomaly_vehicles, anomaly_hours
        Simulated normal telemetry for the anomaly detectors.
    demand_zones, demand_days
        Simulated ride history for the demand model.
    """

    seed: int = 7
    health_packs: int = 3000
    health_days: int = 1500
    health_snapshots: int = 4
    priority_scenarios: int = 20_000
    cells_dir: Path | None = field(default_factory=default_cells_dir)
    degradation_steps: int = 400
    anomaly_vehicles: int = 300
    anomaly_hours: float = 6.0
    demand_zones: int = 40
    demand_days: int = 90

    @classmethod
    def quick(cls, seed: int = 7) -> TrainingPlan:
        """Minutes become seconds: small sets for tests and a first ``make run``."""
        return cls(
            seed=seed, health_packs=400, health_days=900, health_snapshots=3,
            priority_scenarios=3000, degradation_steps=60, anomaly_vehicles=60,
            anomaly_hours=2.0, demand_zones=8, demand_days=21,
        )  # fmt: skip


@dataclass(frozen=True)
class TrainedModel:
    """One trained artifact, ready to register."""

    name: str
    directory: Path
    metrics: dict[str, float]
    params: dict[str, Any]
    fingerprint: str
    seconds: float


def _write_drift_reference(directory: Path, x: npt.NDArray[Any], names: Sequence[str]) -> None:
    ref = DriftReference.from_sample(np.asarray(x, dtype=np.float64), list(names))
    (directory / DRIFT_REFERENCE_FILE).write_text(json.dumps(ref.to_dict()))


def _numeric(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and np.isfinite(v)}


def _train_health(plan: TrainingPlan, out: Path) -> TrainedModel:
    started = time.perf_counter()
    sample = LifetimeSimulator(seed=plan.seed).run(plan.health_packs, plan.health_days, plan.health_snapshots)
    params = HealthParams()
    model, x = train_health(sample, params, seed=plan.seed)
    model.save(out)
    _write_drift_reference(out, x, HEALTH_FEATURE_NAMES)
    return TrainedModel(
        "health", out, _numeric(model.metrics),
        {"packs": plan.health_packs, "days": plan.health_days, "seed": plan.seed, **params.__dict__},
        data_fingerprint(x), time.perf_counter() - started,
    )  # fmt: skip


def _train_priority(plan: TrainingPlan, out: Path) -> TrainedModel:
    started = time.perf_counter()
    params = PriorityParams()
    model, x = train_priority(plan.priority_scenarios, params, seed=plan.seed)
    model.save(out)
    _write_drift_reference(out, x, PRIORITY_FEATURE_NAMES)
    return TrainedModel(
        "priority", out, _numeric(model.metrics),
        {"scenarios": plan.priority_scenarios, "seed": plan.seed, **params.__dict__},
        data_fingerprint(x), time.perf_counter() - started,
    )  # fmt: skip


def _simulated_fade_histories(plan: TrainingPlan, n: int = 40) -> list[CellHistory]:
    """SOH series of simulated scooter packs, one value per snapshot in order of cycling.

    They add the fleet's usage mix (calendar-dominated, hot, deep-cycled packs) to the
    lab cells' constant-current fade shapes.
    """
    rng = np.random.default_rng(plan.seed)
    sample = LifetimeSimulator(seed=plan.seed + 1).run(n, 1500, 80)
    out = []
    for k in range(n):
        rows = np.flatnonzero(sample.pack == k)
        rows = rows[np.argsort(sample.efc[rows], kind="stable")]
        soh = sample.soh[rows] + rng.normal(0.0, 0.003, rows.size)
        out.append(CellHistory(
            f"SIM{k:03d}", np.arange(1, rows.size + 1), soh * 2.0, 2.0, np.zeros(rows.size, dtype=bool)
        ))  # fmt: skip
    return out


def _train_degradation(plan: TrainingPlan, out: Path) -> TrainedModel:
    started = time.perf_counter()
    cells: list[CellHistory] = load_cell_histories(plan.cells_dir) if plan.cells_dir is not None else []
    histories = cells + _simulated_fade_histories(plan)
    params = DegradationParams(train_steps=plan.degradation_steps)
    model = train_degradation(histories, params, seed=plan.seed)
    model.save(out)
    soh = np.concatenate([h.clean().soh() for h in histories])
    return TrainedModel(
        "degradation", out, _numeric(model.metrics),
        {"lab_cells": [c.cell_id for c in cells], "simulated_packs": len(histories) - len(cells),
         "seed": plan.seed, "train_steps": plan.degradation_steps},
        data_fingerprint(soh), time.perf_counter() - started,
    )  # fmt: skip


TRAINERS: dict[str, Callable[[TrainingPlan, Path], TrainedModel]] = {
    "health": _train_health,
    "priority": _train_priority,
    "degradation": _train_degradation,
}


def train_all(
    plan: TrainingPlan,
    workdir: Path,
    only: Sequence[str] | None = None,
    progress: Progress | None = None,
) -> list[TrainedModel]:
    """Train every model (or ``only`` these) into ``workdir/<name>``; in :data:`TRAINERS` order."""
    names = list(TRAINERS) if only is None else list(only)
    unknown = [n for n in names if n not in TRAINERS]
    if unknown:
        raise ValueError(f"Expected model names from {list(TRAINERS)}, got {unknown}.")
    say = progress or (lambda msg: log.info("%s", msg))
    results = []
    for k, name in enumerate(names, 1):
        say(f"[{k}/{len(names)}] training {name} ...")
        res = TRAINERS[name](plan, workdir / name)
        say(f"[{k}/{len(names)}] {name} done in {res.seconds:.1f} s: "
            + ", ".join(f"{m}={v:.4g}" for m, v in list(res.metrics.items())[:4]))
        results.append(res)
    return results


async def register_all(
    registry: ModelRegistry, trained: Sequence[TrainedModel], actor: str, promote: bool
) -> list[tuple[ModelVersion, bool]]:
    """Register each artifact; promote it if asked or if nothing serves that model yet.

    Returns (version, promoted) per model.
    """
    out = []
    for t in trained:
        version = await registry.register(t.name, t.directory, t.metrics, t.params, t.fingerprint, actor)
        serving = await registry.store.serving(t.name)
        do_promote = promote or serving is None
        if do_promote:
            await registry.store.promote(t.name, version.version, actor)
        out.append((version, do_promote))
    return out


async def ensure_served(
    registry: ModelRegistry,
    plan: TrainingPlan,
    workdir: Path,
    actor: str = "bms-bootstrap",
    progress: Progress | None = None,
) -> list[str]:
    """Train, register and promote every model that has no production version yet.

    What a fresh system runs at start, so the twins are scored from the first tick; models
    already in production are left alone. Returns the names trained.
    """
    missing = [n for n in TRAINERS if await registry.store.serving(n) is None]
    if missing:
        import asyncio

        trained = await asyncio.to_thread(train_all, plan, workdir, missing, progress)
        await register_all(registry, trained, actor, promote=True)
    return missing

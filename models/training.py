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

from contracts.errors import ArtifactError
from contracts.model_registry import ModelVersion
from models.anomaly import AnomalyDetector, AnomalyParams, PackEvidenceParams
from models.cell_data import CellHistory, load_cell_datasets, load_cell_histories
from models.degradation_lstm import DegradationParams
from models.degradation_lstm import train as train_degradation
from models.demand_lstm import DemandLstmParams
from models.demand_lstm import evaluate as evaluate_demand
from models.demand_lstm import train as train_demand
from models.drift import DriftReference
from models.health_xgb import ForeignRows, HealthParams, train_health
from models.priority_rf import PriorityParams, train_priority
from models.registry import ModelRegistry, data_fingerprint
from models.served_model import DRIFT_REFERENCE_FILE
from sim.ageing import LifetimeSimulator
from sim.faults import record_fleet
from sim.fleet_params import FleetParams
from sim.ride_demand import ride_history
from sim.weather import SimWeather
from twins.features import HEALTH_FEATURE_NAMES, PRIORITY_FEATURE_NAMES
from twins.telemetry_windows import TelemetryWindows, sliding_windows
from twins.zones import ZoneGrid

__all__ = ["TrainedModel", "TrainingPlan", "default_cells_dir", "register_all", "train_all"]

log = logging.getLogger(__name__)
Progress = Callable[[str], None]


def default_cells_dir() -> Path | None:
    """The lab cells next to the checkout (``../shared/data/battery``: NASA, HUST and TJU), if there."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here.parent / "shared/data/battery", Path("../shared/data/battery")):
        if candidate.is_dir():
            return candidate
    return None


def load_training_cells(path: Path) -> list[CellHistory]:
    """Every lab cell under ``path``: a folder of cell files, or a folder of dataset folders."""
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"Expected a directory of dataset folders or of cell files, got {path}.")
    if any(p.suffix.lower() == ".csv" for p in path.iterdir() if p.is_file()) and not any(
        p.is_dir() for p in path.iterdir()
    ):
        return load_cell_histories(path)
    return [c for cells in load_cell_datasets(path).values() for c in cells]


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
    electrochem_dir
        Electrochemical packs already built there (``bms models data``) join the health
        model's training, and its correction's weight is chosen on each of their cells left
        out in turn; None or an empty folder: the shipped rows of the same set
        (:data:`SHIPPED_HEALTH_ROWS`). Nothing is solved here.
    """

    seed: int = 7
    health_packs: int = 3000
    health_days: int = 1500
    health_snapshots: int = 4
    priority_scenarios: int = 20_000
    cells_dir: Path | None = field(default_factory=default_cells_dir)
    degradation_steps: int = 800
    anomaly_vehicles: int = 300
    anomaly_hours: float = 12.0
    demand_zones: int = 40
    demand_days: int = 90
    electrochem_dir: Path | None = None

    @classmethod
    def quick(cls, seed: int = 7) -> TrainingPlan:
        """Minutes become seconds: small sets for tests and a first ``make run``."""
        return cls(
            seed=seed, health_packs=400, health_days=900, health_snapshots=3,
            priority_scenarios=3000, degradation_steps=100, anomaly_vehicles=60,
            anomaly_hours=6.0, demand_zones=8, demand_days=21,
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


#: The twin features of the electrochemical pack set (`bms models data`, 42 packs of seven
#: cells), shipped so every training, `make run`'s included, chooses the health correction's
#: weight on cells it was not trained on without solving a pack.
SHIPPED_HEALTH_ROWS = Path(__file__).parent / "data" / "electrochem_health_rows.json"
#: The anomaly model's thresholds on the twins' own evidence, calibrated on the healthy
#: electrochemical packs of every parameter set (``bms models eval-telemetry
#: --write-thresholds``).
SHIPPED_PACK_THRESHOLDS = Path(__file__).parent / "data" / "pack_watch_thresholds.json"


def write_pack_thresholds(path: Path, detectors: dict[str, Any]) -> None:
    """The production thresholds of an ``evaluate_detectors`` result as a small JSON file."""
    doc = {
        "built_with": "bms models eval-telemetry --write-thresholds",
        "budget_per_1000_h": detectors["budget_per_1000_h"],
        "margin": detectors["margin"],
        "thresholds": detectors["production_thresholds"],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1) + "\n")


def production_anomaly_params(path: Path = SHIPPED_PACK_THRESHOLDS) -> AnomalyParams:
    """The anomaly model as production trains it: flags from the twins' own evidence against
    the shipped thresholds; the window detectors score but never flag (on packs of other
    cells they raised 1,819 false alarms per 1,000 healthy pack-hours)."""
    try:
        doc = json.loads(path.read_text())
        pack = PackEvidenceParams.from_dict({"thresholds": doc["thresholds"]})
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"Expected the anomaly thresholds as JSON with a 'thresholds' mapping in {path}: {err}") from err
    return AnomalyParams(pack=pack, window_flags=False)


def health_rows(path: Path) -> ForeignRows:
    """A :func:`models.telemetry_data.write_health_rows` file as labelled health rows."""
    from models.telemetry_data import read_health_rows

    return read_health_rows(path).foreign()


def cached_health_rows(directory: Path) -> ForeignRows | None:
    """The healthy electrochemical packs cached in ``directory`` as labelled health rows (one
    per pack, grouped by parameter set); None when there are none."""
    from models.telemetry_data import HealthPackSet, twin_features
    from sim.electrochem import PackRun

    runs = [r for r in (PackRun.from_npz(p) for p in sorted(Path(directory).glob("pack-*.npz"))) if r.spec.fault is None]
    if not runs:
        return None
    return HealthPackSet(
        runs, np.concatenate([twin_features(r) for r in runs]), np.array([r.soh for r in runs]),
        np.array([r.spec.parameter_set for r in runs]), np.array([r.spec.resistance_multiple for r in runs]),
    ).foreign()  # fmt: skip


def _train_health(plan: TrainingPlan, out: Path) -> TrainedModel:
    started = time.perf_counter()
    sample = LifetimeSimulator(seed=plan.seed).run(plan.health_packs, plan.health_days, plan.health_snapshots)
    params = HealthParams()
    foreign = cached_health_rows(plan.electrochem_dir) if plan.electrochem_dir is not None else None
    if foreign is None and SHIPPED_HEALTH_ROWS.is_file():
        foreign = health_rows(SHIPPED_HEALTH_ROWS)
    model, x = train_health(sample, params, seed=plan.seed, foreign=foreign)
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
    """SOH of simulated scooter packs at their equivalent full cycles, one value per snapshot.

    They add the fleet's usage mix (calendar-dominated, hot, deep-cycled packs) to the lab
    cells' constant-current fade shapes, on the clock the twins count: equivalent full cycles.
    """
    rng = np.random.default_rng(plan.seed)
    sample = LifetimeSimulator(seed=plan.seed + 1).run(n, 1500, 80)
    out = []
    for k in range(n):
        rows = np.flatnonzero(sample.pack == k)
        rows = rows[np.argsort(sample.efc[rows], kind="stable")]
        # Whole cycles, each once: snapshots closer than a cycle apart keep the first.
        cycle = np.ceil(np.maximum(sample.efc[rows], 1.0)).astype(np.int64)
        first = np.concatenate([[True], np.diff(cycle) > 0])
        rows, cycle = rows[first], cycle[first]
        if rows.size < 2:
            continue
        soh = sample.soh[rows] + rng.normal(0.0, 0.003, rows.size)
        out.append(CellHistory(f"SIM{k:03d}", cycle, soh * 2.0, 2.0, np.zeros(rows.size, dtype=bool)))
    return out


def simulated_pack_cells(n: int, seed: int, days: int = 3000) -> list[CellHistory]:
    """Simulated scooter packs aged ``days`` days, SOH at every whole equivalent full cycle.

    The "simulated truth" for checking the live forecaster (``bms models eval-simulated``):
    the ageing simulator's snapshots interpolated to each cycle, with 0.3 % measurement noise,
    so the packs read like lab cells (entry i is cycle i + 1).
    """
    rng = np.random.default_rng(seed)
    sample = LifetimeSimulator(seed=seed).run(n, days, 200)
    out = []
    for k in range(n):
        rows = np.flatnonzero(sample.pack == k)
        rows = rows[np.argsort(sample.efc[rows], kind="stable")]
        efc, soh = sample.efc[rows], sample.soh[rows]
        last = int(np.floor(efc[-1]))
        if last < 10:
            continue
        cycles = np.arange(1, last + 1, dtype=np.float64)
        truth = np.interp(cycles, efc, soh)
        noisy = truth + rng.normal(0.0, 0.003, cycles.size)
        out.append(CellHistory(f"SIMPACK{k:03d}", cycles.astype(np.int64), noisy * 2.0, 2.0, np.zeros(cycles.size, dtype=bool)))
    return out


def degradation_training_cells(plan: TrainingPlan) -> list[CellHistory]:
    """What the live degradation model trains on: the lab cells and simulated packs."""
    cells: list[CellHistory] = load_training_cells(plan.cells_dir) if plan.cells_dir is not None else []
    return cells + _simulated_fade_histories(plan)


def _train_degradation(plan: TrainingPlan, out: Path) -> TrainedModel:
    started = time.perf_counter()
    histories = degradation_training_cells(plan)
    n_lab = sum(not h.cell_id.startswith("SIM") for h in histories)
    params = DegradationParams(train_steps=plan.degradation_steps)
    model = train_degradation(histories, params, seed=plan.seed)
    model.save(out)
    soh = np.concatenate([h.clean().soh() for h in histories])
    return TrainedModel(
        "degradation", out, _numeric(model.metrics),
        {"lab_cells": n_lab, "simulated_packs": len(histories) - n_lab,
         "seed": plan.seed, "train_steps": plan.degradation_steps},
        data_fingerprint(soh), time.perf_counter() - started,
    )  # fmt: skip


def fleet_zone_ids(center_lat: float, center_lon: float, radius_km: float, cell_km: float = 1.0) -> list[str]:
    """Zone ids of the grid cells over the fleet's disc, as the twins name them, nearest first."""
    grid = ZoneGrid(cell_km)
    steps = np.arange(-radius_km, radius_km + cell_km / 4, cell_km / 2)
    north_km, east_km = np.meshgrid(steps, steps, indexing="ij")
    dist = np.hypot(north_km, east_km)
    inside = dist <= radius_km
    order = np.argsort(dist[inside], kind="stable")
    lat = (center_lat + north_km / 111.32)[inside][order]
    lon = (center_lon + east_km / (111.32 * np.cos(np.radians(center_lat))))[inside][order]
    return list(dict.fromkeys(grid.zone_ids(lat, lon)))


def _train_demand(plan: TrainingPlan, out: Path) -> TrainedModel:
    started = time.perf_counter()
    zones = fleet_zone_ids(52.52, 13.405, 6.0)[: plan.demand_zones]
    weather = SimWeather(seed=plan.seed)
    # Start at a fixed Monday so a seed always gives the same history.
    start_ts = 1_709_251_200.0  # 2024-03-01 00:00 UTC
    hours = plan.demand_days * 24
    history = ride_history(zones, start_ts, hours, weather, plan.seed)
    holdout_h = min(7 * 24, hours // 4)
    params = DemandLstmParams(epochs=3 if plan.demand_days < 60 else 6)
    model = train_demand(history.window(0, hours - holdout_h), params, plan.seed)
    ev = evaluate_demand(model, history, float(history.ts[hours - holdout_h]))
    metrics = {**dict(model.metrics), **ev.as_metrics(), "mae_improvement_vs_last_week": ev.mae_improvement}
    model.save(out, extra_metrics=ev.as_metrics())
    return TrainedModel(
        "demand", out, _numeric(metrics),
        {"zones": len(zones), "days": plan.demand_days, "seed": plan.seed, **params.as_dict()},
        data_fingerprint(history.rides), time.perf_counter() - started,
    )  # fmt: skip


def normal_windows(vehicles: int, hours: float, seed: int, window_samples: int = 64) -> TelemetryWindows:
    """Windows of healthy simulated telemetry at four times of day (the anomaly training set).

    A detector trained on evening rides alone flags quiet night-time parking as odd, so the
    recording is split over 03:00, 09:00, 15:00 and 21:00 UTC; a window ends every
    ``window_samples // 4`` samples of each battery.
    """
    day_start = 1_764_115_200.0  # 2025-11-26 00:00 UTC
    parts = []
    for k, hour in enumerate((3, 9, 15, 21)):
        columns = record_fleet(
            FleetParams(vehicles=vehicles, seed=seed + k), hours * 900.0, day_start + hour * 3600.0, dt_s=2.0
        )
        parts.append(sliding_windows(
            list(columns.values()), window_samples, stride=max(1, window_samples // 4),
            battery_ids=[f"{b}@{hour}" for b in columns],
        ))  # fmt: skip
    return TelemetryWindows.concat(parts)


def _train_anomaly(plan: TrainingPlan, out: Path) -> TrainedModel:
    started = time.perf_counter()
    windows = normal_windows(plan.anomaly_vehicles, plan.anomaly_hours, plan.seed)
    detector = AnomalyDetector(production_anomaly_params()).fit(windows)
    detector.save(out)
    report = detector.score(windows)
    metrics = {
        "train_windows": float(windows.n),
        "train_flagged_fraction": float(np.mean(report.flags != 0)),
    }
    return TrainedModel(
        "anomaly", out, metrics,
        {"vehicles": plan.anomaly_vehicles, "hours": plan.anomaly_hours, "seed": plan.seed},
        data_fingerprint(windows.values), time.perf_counter() - started,
    )  # fmt: skip


TRAINERS: dict[str, Callable[[TrainingPlan, Path], TrainedModel]] = {
    "health": _train_health,
    "priority": _train_priority,
    "degradation": _train_degradation,
    "anomaly": _train_anomaly,
    "demand": _train_demand,
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
        serving = await registry.store.serving_or_none(t.name)
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
    names: Sequence[str] | None = None,
) -> list[str]:
    """Train, register and promote every model that has no production version this code
    can load.

    What a system runs at start, so the twins are scored from the first tick. A model with
    no production version is trained; so is one whose production artifact this code cannot
    read (written by an older format, such as the degradation model before its relative-time
    inputs: the replicas could not load it, so an upgrade would serve nothing). Loadable
    models in production are left alone. ``names`` limits the check (default: every model).
    Returns the names trained.
    """
    missing = [n for n in (names or list(TRAINERS)) if not await _loadable_in_production(registry, n)]
    if missing:
        import asyncio

        trained = await asyncio.to_thread(train_all, plan, workdir, missing, progress)
        await register_all(registry, trained, actor, promote=True)
    return missing


async def _loadable_in_production(registry: ModelRegistry, name: str) -> bool:
    from models.predictors import PREDICTORS

    serving = await registry.store.serving_or_none(name)
    if serving is None:
        return False
    try:
        PREDICTORS[name].load(await registry.artifact_dir(name, serving.production_version))
    except (ArtifactError, ValueError, OSError, KeyError) as exc:
        log.warning("Production %s v%d cannot be loaded (%s): training a new version.", name, serving.production_version, exc)
        return False
    return True

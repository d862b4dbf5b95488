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
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import xgboost as xgb

from contracts.anomaly_kinds import AnomalyKind
from contracts.samples import TelemetryBatch
from models.health_xgb import HealthParams, regressor, train_health
from models.telemetry_data import HealthPackSet, pack_batch
from sim.ageing import LifetimeSimulator
from sim.electrochem import PARAMETER_SETS, PackRun
from twins.features import HEALTH_FEATURE_NAMES, TwinCounters, health_features
from twins.telemetry_windows import TelemetryWindows, windows_from_table
from twins.twin_table import TwinTable, TwinTableParams

__all__ = ["DetectorEvalParams", "HealthEvalPlan", "detector_events", "evaluate_detectors", "evaluate_health"]

_EST = HEALTH_FEATURE_NAMES.index("capacity_ratio_est")


@dataclass(frozen=True)
class HealthEvalPlan:
    """Simulated lifetimes each training run starts from (the production plan's by default)."""

    packs: int = 3000
    days: int = 1500
    snapshots: int = 4
    params: HealthParams = HealthParams()


def _first_model(x: npt.NDArray[np.float32], soh: npt.NDArray[np.float64], params: HealthParams, seed: int) -> xgb.XGBRegressor:
    m = regressor(params, seed)
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
    rows = packs.foreign()
    for seed in seeds:
        sample = LifetimeSimulator(seed=seed).run(plan.packs, plan.days, plan.snapshots)
        x_sim = health_features(TwinCounters.from_lifetime(sample))
        first = _first_model(x_sim, sample.soh, plan.params, seed)
        pred = np.full(truth.size, np.nan)
        for g in groups:
            out = packs.group == g
            model, _ = train_health(sample, plan.params, seed=seed, foreign=rows.select(~out))
            pred[out] = model.predict_features(packs.x[out]).soh_pct
            shrinks[g].append(model.shrink)
            log(f"seed {seed}: {g} left out, correction weight {model.shrink:g}")
        errors["model"].append(np.abs(pred - truth))
        errors["first_model"].append(np.abs(100.0 * first.predict(packs.x).astype(np.float64) - truth))
    base_err = np.abs(est - truth)

    def without_estimate(mask: npt.NDArray[np.bool_]) -> dict[str, Any]:
        # Where the twin has no estimate yet the prior answers; the baseline has no answer.
        m = mask & ~has
        if not m.any():
            return {}
        return {"model_soh_mae_pp_without_estimate": round(float(np.mean([np.mean(e[m]) for e in errors["model"]])), 3)}

    def summary(mask: npt.NDArray[np.bool_]) -> dict[str, Any]:
        if not (mask & has).any():
            return {"packs": int(mask.sum()), "packs_with_estimate": 0, **without_estimate(mask)}
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
            **without_estimate(mask),
        }

    per_set = {g: {"chemistry": PARAMETER_SETS.get(g, "?"), **summary(packs.group == g)} for g in groups}
    for g in groups:
        per_set[g]["correction_weights"] = shrinks[g]
    overall = summary(np.ones(truth.size, dtype=bool))
    no_estimate = int((~has).sum())
    return {"overall": overall, "by_parameter_set": per_set, "packs_without_estimate": no_estimate,
            "seeds": list(seeds)}  # fmt: skip


@dataclass(frozen=True)
class DetectorEvalParams:
    """How the twins are scored while their packs are replayed.

    ``tick_s`` is the shards' scoring interval (``[models] score_interval_s``): each tick the
    samples that arrived since the last one are applied and every twin's window is scored,
    and a flag that switches on is an event, as in production.
    """

    tick_s: float = 10.0


class WindowScorer(Protocol):
    def score(self, windows: TelemetryWindows) -> Any: ...


def detector_events(
    runs: Sequence[PackRun], detector: WindowScorer, params: DetectorEvalParams = DetectorEvalParams()
) -> list[list[tuple[float, str]]]:
    """Replay every run through one twin table in lockstep (run time from 0), scoring each
    tick: per run, its events as (seconds into the run, detector kind)."""
    # One table for all: the detectors read windows, not the rating, so one rating serves.
    table = TwinTable(TwinTableParams(), initial_capacity=max(16, len(runs)))
    batches = [pack_batch(r, battery_id=f"pack-{k}", vehicle_id=f"vehicle-{k}") for k, r in enumerate(runs)]
    ends = [b.columns["ts"][b.msg_offsets[1:] - 1] for b in batches]
    done = [0] * len(runs)
    flags = np.zeros(len(runs), dtype=np.int64)
    events: list[list[tuple[float, str]]] = [[] for _ in runs]
    horizon = max((float(r.ts[-1]) for r in runs), default=0.0)
    t = 0.0
    while t < horizon + params.tick_s:
        t += params.tick_s
        parts = []
        for k, b in enumerate(batches):
            upto = int(np.searchsorted(ends[k], t, side="right"))
            if upto > done[k]:
                keep = np.zeros(b.n_messages, dtype=bool)
                keep[done[k] : upto] = True
                parts.append(b.select_messages(keep))
                done[k] = upto
        if not parts:
            continue
        table.apply(TelemetryBatch.concat(parts))
        slots = np.array([table.slot(f"pack-{k}") if f"pack-{k}" in table.index else -1 for k in range(len(runs))])
        live = np.flatnonzero(slots >= 0)
        report = detector.score(windows_from_table(table, slots[live]))
        now = np.asarray(report.flags, dtype=np.int64)
        new = now & ~flags[live]
        for j in np.flatnonzero(new).tolist():
            for kind in AnomalyKind(int(new[j])):
                events[int(live[j])].append((t, str(kind.name).lower()))
        flags[live] = now
    return events


def evaluate_detectors(
    healthy: Sequence[PackRun], faulty: Sequence[PackRun], detector: WindowScorer,
    params: DetectorEvalParams = DetectorEvalParams(),
) -> dict[str, Any]:  # fmt: skip
    """False alarms per 1,000 healthy pack-hours (healthy packs, and faulty ones before their
    fault) and, per fault kind, recall and the median delay from onset to the first event."""
    runs = list(healthy) + list(faulty)
    events = detector_events(runs, detector, params)
    healthy_s, false_events = 0.0, 0
    by_kind: dict[str, int] = {}
    faults: dict[str, dict[str, Any]] = {}
    for run, ev in zip(runs, events, strict=True):
        onset = run.fault_onset_s
        clean_until = float(run.ts[-1]) if np.isnan(onset) else onset
        healthy_s += clean_until
        for t, kind in ev:
            if t <= clean_until:
                false_events += 1
                by_kind[kind] = by_kind.get(kind, 0) + 1
        if run.spec.fault is None:
            continue
        f = faults.setdefault(run.spec.fault.kind, {"packs": 0, "detected": 0, "delays_min": [], "kinds": {}})
        f["packs"] += 1
        after = [(t, kind) for t, kind in ev if t > onset]
        if after:
            f["detected"] += 1
            f["delays_min"].append((after[0][0] - onset) / 60.0)
            f["kinds"][after[0][1]] = f["kinds"].get(after[0][1], 0) + 1
    pack_h = healthy_s / 3600.0
    return {
        "healthy_pack_hours": round(pack_h, 1),
        "false_alarms": false_events,
        "false_alarms_per_1000_pack_h": round(1000.0 * false_events / pack_h, 1) if pack_h else None,
        "false_alarms_by_kind": by_kind,
        "faults": {
            k: {
                "packs": v["packs"],
                "recall": round(v["detected"] / v["packs"], 3),
                "median_delay_min": round(float(np.median(v["delays_min"])), 1) if v["delays_min"] else None,
                "first_event_kinds": v["kinds"],
            }
            for k, v in sorted(faults.items())
        },
    }

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

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import xgboost as xgb

from contracts.anomaly_kinds import AnomalyKind
from contracts.samples import SAMPLE_FIELDS, TelemetryBatch
from models.anomaly import PackEvidenceParams, evidence_flags
from models.health_xgb import HealthParams, regressor, train_health
from models.telemetry_data import HealthPackSet, pack_batch
from sim.ageing import LifetimeSimulator
from sim.electrochem import PARAMETER_SETS, PackRun
from twins.features import HEALTH_FEATURE_NAMES, TwinCounters, health_features
from twins.pack_watch import EVIDENCE_NAMES, PackWatchParams
from twins.telemetry_windows import windows_from_table
from twins.twin_table import TwinTable, TwinTableParams

__all__ = [
    "DetectorEvalParams", "EvidenceTrace", "FleetEvalPlan", "HealthEvalPlan", "calibrate_thresholds",
    "evaluate_detectors", "evaluate_fleet",
    "evaluate_health", "evidence_traces", "replay_evidence",
]  # fmt: skip

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
    """How the twins are replayed and how thresholds are set.

    ``tick_s`` is the shards' scoring interval (``[models] score_interval_s``): each tick the
    samples that arrived since the last one are applied and every twin's evidence is read,
    and a flag that switches on is an event, as in production. ``budget_per_1000_h`` is the
    false alarms a threshold may cost on the healthy packs it is calibrated on, and
    ``margin`` what it is multiplied by to hold on a chemistry it never saw. A pack sends
    ``samples_per_message`` samples per message (6: one a minute at 10 s), and a sample
    reaches its twin with its message: part of every detection delay.
    """

    tick_s: float = 10.0
    samples_per_message: int = 6
    budget_per_1000_h: float = 1.0
    margin: float = 1.5
    pack_watch: PackWatchParams = field(default_factory=PackWatchParams)


@dataclass(frozen=True)
class EvidenceTrace:
    """One run's evidence at every scoring tick (seconds into the run; ``(T, C)`` values)."""

    t_s: npt.NDArray[np.float64]
    evidence: npt.NDArray[np.float64]


def evidence_traces(runs: Sequence[PackRun], params: DetectorEvalParams = DetectorEvalParams()) -> list[EvidenceTrace]:
    """Replay every run through one twin table in lockstep (run time from 0), reading each
    twin's evidence (:func:`twins.pack_watch.evidence`) at every tick, as the shard's
    scoring tick reads it for the anomaly model."""
    return replay_evidence(
        [
            pack_batch(r, battery_id=f"pack-{k}", vehicle_id=f"vehicle-{k}", samples_per_message=params.samples_per_message)
            for k, r in enumerate(runs)
        ],
        params,
    )


def replay_evidence(batches: Sequence[TelemetryBatch], params: DetectorEvalParams = DetectorEvalParams()) -> list[EvidenceTrace]:
    """Each batch is one battery's messages in order; all are applied tick by tick (a message
    once its last sample is due) to one twin table, and every battery's evidence is read
    each tick from its first message to its last."""
    table = TwinTable(TwinTableParams(pack_watch=params.pack_watch), initial_capacity=max(16, len(batches)))
    ends = [b.columns["ts"][b.msg_offsets[1:] - 1] for b in batches]
    ids = [str(b.battery_ids[0]) for b in batches]
    done = [0] * len(batches)
    times: list[list[float]] = [[] for _ in batches]
    values: list[list[npt.NDArray[np.float64]]] = [[] for _ in batches]
    if not batches:
        return []
    t = float(np.floor(min(float(e[0]) for e in ends) / params.tick_s) * params.tick_s) - params.tick_s
    horizon = max(float(e[-1]) for e in ends)
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
        live = [k for k in range(len(batches)) if ids[k] in table.index and t <= float(ends[k][-1]) + params.tick_s]
        if not live:
            continue
        slots = np.array([table.slot(ids[k]) for k in live])
        ev = windows_from_table(table, slots).evidence
        assert ev is not None
        for j, k in enumerate(live):
            times[k].append(t)
            values[k].append(ev[j])
    return [
        EvidenceTrace(np.array(ts), np.array(v) if v else np.zeros((0, len(EVIDENCE_NAMES))))
        for ts, v in zip(times, values, strict=True)
    ]


def _clean_until(run: PackRun) -> float:
    return float(run.ts[-1]) if np.isnan(run.fault_onset_s) else run.fault_onset_s


def calibrate_thresholds(
    runs: Sequence[PackRun], traces: Sequence[EvidenceTrace], params: DetectorEvalParams = DetectorEvalParams()
) -> PackEvidenceParams:
    """One threshold per evidence channel from healthy telemetry (a faulty run counts up to
    its onset): the budget allows ``k = floor(budget x pack-hours / 1000)`` packs past it, so
    the threshold is the (k+1)-th largest peak a pack showed, times the margin."""
    hours = sum(_clean_until(r) for r in runs) / 3600.0
    k = int(params.budget_per_1000_h * hours / 1000.0)
    peaks = []
    for run, tr in zip(runs, traces, strict=True):
        clean = tr.evidence[tr.t_s <= _clean_until(run)]
        peak = np.max(np.where(np.isnan(clean), -np.inf, clean), axis=0, initial=-np.inf)
        peaks.append(np.where(np.isneginf(peak), np.nan, peak))
    p = np.array(peaks)
    thresholds = []
    for c, name in enumerate(EVIDENCE_NAMES):
        col = np.sort(p[:, c][np.isfinite(p[:, c])])[::-1]
        if col.size > k:
            thresholds.append((name, round(float(params.margin * max(col[k], 1.0)), 3)))
    return PackEvidenceParams(tuple(thresholds))


def _events(trace: EvidenceTrace, thresholds: PackEvidenceParams) -> list[tuple[float, str]]:
    """Flags that switch on, tick by tick, as the shard records them."""
    if not trace.t_s.size:
        return []
    flags, _ = evidence_flags(trace.evidence, thresholds)
    prev = np.r_[0, flags[:-1]]
    out = []
    for j in np.flatnonzero(flags & ~prev).tolist():
        for kind in AnomalyKind(int(flags[j] & ~prev[j])):
            out.append((float(trace.t_s[j]), str(kind.name).lower()))
    return out


#: Faults a parked pack does not show: a resistance or a lost cell shows in the voltage under
#: current, a stuck temperature sensor once the current should warm the pack.
_SHOWS_UNDER_LOAD = frozenset({"resistance_jump", "weak_cell", "stuck_sensor"})


def _score_events(runs: Sequence[PackRun], events: Sequence[list[tuple[float, str]]]) -> dict[str, Any]:
    healthy_s, false_events = 0.0, 0
    by_kind: dict[str, int] = {}
    faults: dict[str, dict[str, Any]] = {}
    for run, ev in zip(runs, events, strict=True):
        clean_until = _clean_until(run)
        healthy_s += clean_until
        for t, kind in ev:
            if t <= clean_until:
                false_events += 1
                by_kind[kind] = by_kind.get(kind, 0) + 1
        if run.spec.fault is None:
            continue
        f = faults.setdefault(
            run.spec.fault.kind, {"packs": 0, "detected": 0, "delays_min": [], "load_delays_min": [], "kinds": {}, "missed": []}
        )
        f["packs"] += 1
        # Detected: an event after onset on a pack with none before it (a flag raised
        # earlier and still on would hide the fault, and counts as a miss).
        after = [(t, kind) for t, kind in ev if t > run.fault_onset_s]
        if after and not any(t <= clean_until for t, _ in ev):
            f["detected"] += 1
            f["delays_min"].append((after[0][0] - run.fault_onset_s) / 60.0)
            # A fault that shows only under load cannot show before the pack next carries
            # current: the delay from then on is the detector's own.
            if run.spec.fault.kind in _SHOWS_UNDER_LOAD:
                loaded = run.ts[(run.ts > run.fault_onset_s) & (np.abs(run.current_a) >= 1.0)]
                start = float(loaded[0]) if loaded.size else run.fault_onset_s
                f["load_delays_min"].append(max(after[0][0] - start, 0.0) / 60.0)
            f["kinds"][after[0][1]] = f["kinds"].get(after[0][1], 0) + 1
        else:
            f["missed"].append(run.spec.parameter_set)
    pack_h = healthy_s / 3600.0
    return {
        "healthy_pack_hours": round(pack_h, 1),
        "false_alarms": false_events,
        "false_alarms_per_1000_pack_h": round(1000.0 * false_events / pack_h, 2) if pack_h else None,
        "false_alarms_by_kind": by_kind,
        "faults": {
            k: {
                "packs": v["packs"],
                "recall": round(v["detected"] / v["packs"], 3),
                "median_delay_min": round(float(np.median(v["delays_min"])), 1) if v["delays_min"] else None,
                "max_delay_min": round(float(np.max(v["delays_min"])), 1) if v["delays_min"] else None,
                "median_delay_after_first_load_min": (
                    round(float(np.median(v["load_delays_min"])), 1) if v["load_delays_min"] else None
                ),
                "first_event_kinds": v["kinds"],
                "missed_parameter_sets": v["missed"],
            }
            for k, v in sorted(faults.items())
        },
    }


def evaluate_detectors(
    healthy: Sequence[PackRun], faulty: Sequence[PackRun], params: DetectorEvalParams = DetectorEvalParams(),
) -> dict[str, Any]:  # fmt: skip
    """Leave one parameter set out: each set's packs (healthy, and faulty before their fault)
    are judged with thresholds calibrated on the *other* sets' healthy packs. Reports false
    alarms per 1,000 healthy pack-hours and, per fault kind, recall and the delay from onset
    to the first event; ``production_thresholds`` are calibrated on every set, as shipped."""
    runs = list(healthy) + list(faulty)
    traces = evidence_traces(runs, params)
    groups = sorted({r.spec.parameter_set for r in runs})
    events: list[list[tuple[float, str]]] = [[] for _ in runs]
    folds: dict[str, dict[str, float]] = {}
    for g in groups:
        train = [k for k, r in enumerate(healthy) if r.spec.parameter_set != g]
        if len(groups) > 1 and not train:
            continue
        train = train or list(range(len(healthy)))
        th = calibrate_thresholds([runs[k] for k in train], [traces[k] for k in train], params)
        folds[g] = dict(th.thresholds)
        for k, r in enumerate(runs):
            if r.spec.parameter_set == g:
                events[k] = _events(traces[k], th)
    out = _score_events(runs, events)
    out["thresholds_by_left_out_set"] = folds
    production = calibrate_thresholds(list(healthy), traces[: len(healthy)], params)
    out["production_thresholds"] = dict(production.thresholds)
    out["budget_per_1000_h"] = params.budget_per_1000_h
    out["margin"] = params.margin
    return out


@dataclass(frozen=True)
class FleetEvalPlan:
    """A simulated fleet (:mod:`sim.fleet`) the twins watch: ``faults`` of its batteries
    develop one of the simulator's faults (every kind in turn) between ``fault_after_s`` and
    ``fault_after_s + fault_window_s``, after the twins have learned their packs; none is
    swapped out before the end."""

    vehicles: int = 200
    hours: float = 5.0
    seed: int = 11
    faults: int = 20
    fault_after_s: float = 9000.0
    fault_window_s: float = 3600.0
    start_s: float = 1_764_144_000.0  # 2025-11-26 08:00 UTC: a working day's rides


def evaluate_fleet(
    thresholds: PackEvidenceParams, plan: FleetEvalPlan = FleetEvalPlan(),
    params: DetectorEvalParams = DetectorEvalParams(),
) -> dict[str, Any]:  # fmt: skip
    """The simulator's own fleet, judged with thresholds it had no part in: false alarms per
    1,000 healthy battery-hours, and recall and delay per simulator fault kind."""
    from sim.faults import FaultKind, record_fleet
    from sim.fleet import FleetSimulator
    from sim.fleet_params import FleetParams

    fleet = FleetParams(
        vehicles=plan.vehicles, seed=plan.seed, initial_faults=plan.faults, initial_fault_after_s=plan.fault_after_s,
        initial_fault_window_s=plan.fault_window_s, fault_kinds=tuple(FaultKind), fault_response_s=86_400.0,
    )  # fmt: skip
    truth = FleetSimulator(fleet).faults()  # onsets from the start, before the first tick
    columns = record_fleet(fleet, plan.hours * 3600.0, plan.start_s, dt_s=2.0)
    batteries = sorted(columns)
    batches = [_columns_batch(columns[b], b) for b in batteries]
    traces = replay_evidence(batches, params)
    healthy_s, false_events = 0.0, 0
    by_kind: dict[str, int] = {}
    faults: dict[str, dict[str, Any]] = {}
    for b, tr in zip(batteries, traces, strict=True):
        ts = columns[b]["ts"]
        spec = truth.get(b)
        onset = plan.start_s + spec.onset_ts_s if spec is not None else math.inf
        clean_until = min(onset, float(ts[-1]))
        healthy_s += clean_until - float(ts[0])
        ev = _events(tr, thresholds)
        early = [(t, k) for t, k in ev if t <= clean_until]
        false_events += len(early)
        for _, k in early:
            by_kind[k] = by_kind.get(k, 0) + 1
        if spec is None or onset > float(ts[-1]):
            continue
        f = faults.setdefault(str(spec.kind), {"batteries": 0, "ridden": 0, "detected": 0, "delays_min": [], "kinds": {}})
        f["batteries"] += 1
        # A fault that only shows under load cannot show on a battery that stays parked.
        f["ridden"] += int(np.any((ts > onset) & (np.abs(columns[b]["current_a"]) >= 1.0)))
        after = [(t, k) for t, k in ev if t > onset]
        if after and not early:
            f["detected"] += 1
            f["delays_min"].append((after[0][0] - onset) / 60.0)
            f["kinds"][after[0][1]] = f["kinds"].get(after[0][1], 0) + 1
    hours = healthy_s / 3600.0
    return {
        "vehicles": plan.vehicles, "hours": plan.hours, "seed": plan.seed,
        "healthy_battery_hours": round(hours, 1),
        "false_alarms": false_events,
        "false_alarms_per_1000_pack_h": round(1000.0 * false_events / hours, 2) if hours else None,
        "false_alarms_by_kind": by_kind,
        "faults": {
            k: {
                "batteries": v["batteries"], "carried_current_after_onset": v["ridden"],
                "recall": round(v["detected"] / v["batteries"], 3),
                "median_delay_min": round(float(np.median(v["delays_min"])), 1) if v["delays_min"] else None,
                "first_event_kinds": v["kinds"],
            }
            for k, v in sorted(faults.items())
        },
    }  # fmt: skip


def _columns_batch(cols: dict[str, npt.NDArray[np.float64]], battery_id: str, per_message: int = 10) -> TelemetryBatch:
    """One battery's recorded samples as messages of ``per_message`` samples."""
    n = cols["ts"].size
    offsets = np.append(np.arange(0, n, per_message), n).astype(np.int64)
    m = offsets.size - 1
    return TelemetryBatch(
        battery_ids=[battery_id] * m, vehicle_ids=[f"vehicle-of-{battery_id}"] * m,
        seqs=np.arange(1, m + 1, dtype=np.int64), msg_offsets=offsets,
        columns={k: np.asarray(cols[k], dtype=np.float64) for k in SAMPLE_FIELDS},
        received_at_s=cols["ts"][offsets[1:] - 1],
    )  # fmt: skip

"""Electrochemical pack telemetry for the telemetry models: which packs, and what a twin makes
of each.

:func:`health_pack_specs` lists the packs the health model is judged on: every parameter
set of :data:`sim.electrochem.PARAMETER_SETS` (NMC, NCA, LCO and LFP cells of several
makers) at states of health from 100 % to 75 %, each as a 13S pack of about 15 Ah riding,
parking and charging for ``hours``. :func:`twin_features` replays one pack's telemetry
through a fresh twin table (the production arithmetic) and returns the twin's health
features at the end: what the live twin would hand the health model.

Building the full set solves about 40 packs (seconds per pack-hour each): ``bms models data``
does it once into ``<data_dir>/electrochem`` (cached per pack); the tests use a few short ones.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from contracts.samples import SAMPLE_FIELDS, TelemetryBatch
from models.health_xgb import ForeignRows, health_score_label
from sim.electrochem import PARAMETER_SETS, PackRun, PackSpec, pack_run
from twins.features import TwinCounters, counters_from_history, health_features
from twins.twin_table import TwinTableParams

__all__ = [
    "HEALTH_SOH_LEVELS",
    "HealthPackSet",
    "build_health_packs",
    "build_packs",
    "fault_pack_specs",
    "health_pack_specs",
    "pack_batch",
    "read_health_rows",
    "twin_features",
    "write_health_rows",
]

log = logging.getLogger(__name__)

#: States of health of the packs each parameter set is judged at.
HEALTH_SOH_LEVELS: tuple[float, ...] = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75)
#: The fleet's packs: 13 cells in series, about 15 Ah.
_SERIES = 13
_PACK_AH = 15.0
#: Capacity (Ah) of one fresh cell of each set at C/3, as :mod:`sim.electrochem` measures
#: it (PyBaMM's nominal figures are not it: Ecker2015's cell is 0.16 Ah nominal, 0.17 here,
#: Marquis2019's 0.68 and 0.87): it sizes the parallel count, so every pack is about 15 Ah.
_CELL_AH: dict[str, float] = {
    "Chen2020": 5.1, "OKane2022": 5.05, "Mohtat2020": 4.9, "Ecker2015": 0.17,
    "Marquis2019": 0.87, "NCA_Kim2011": 0.48, "Prada2013": 2.18,
}  # fmt: skip
_SAMPLES_PER_MESSAGE = 30


def _parallel(parameter_set: str) -> int:
    return max(1, round(_PACK_AH / _CELL_AH[parameter_set]))


def health_pack_specs(
    parameter_sets: Sequence[str] = tuple(PARAMETER_SETS), soh_levels: Sequence[float] = HEALTH_SOH_LEVELS,
    hours: float = 6.0, seed: int = 0,
) -> list[PackSpec]:  # fmt: skip
    """One pack per (set, SOH): ageing alternates between lithium-inventory and
    active-material loss (the builder falls back to the other where a cell does not respond),
    resistance grows as capacity fades (x1.6 at 75 %), ambient 15-30 C."""
    unknown = sorted(set(parameter_sets) - set(PARAMETER_SETS))
    if unknown:
        raise ValueError(f"Expected parameter sets among {sorted(PARAMETER_SETS)}, got {unknown}.")
    specs = []
    for p in parameter_sets:
        # Numbered by the set's place among all sets, not in this call's list: a pack is the
        # same (and read from the cache) whichever sets are asked for with it.
        i = list(PARAMETER_SETS).index(p)
        for soh in soh_levels:
            pct = round(100 * soh)
            rng = np.random.default_rng([seed, i, pct])
            specs.append(PackSpec(
                parameter_set=p, soh=soh, ageing_mode="lli" if (i + pct // 5) % 2 == 0 else "lam",
                resistance_multiple=round(1.0 + 2.5 * (1.0 - soh), 3), series=_SERIES, parallel=_parallel(p),
                ambient_c=float(np.round(rng.uniform(15.0, 30.0), 1)), hours=hours,
                seed=seed * 1000 + i * 100 + pct,
            ))  # fmt: skip
    return specs


def _other_mode(spec: PackSpec) -> PackSpec:
    from dataclasses import replace

    return replace(spec, ageing_mode="lam" if spec.ageing_mode == "lli" else "lli")


@dataclass(frozen=True)
class HealthPackSet:
    """Built packs, their twin features and their truth (SOH, resistance as a multiple of the
    fresh pack's), one row per pack."""

    runs: list[PackRun]
    x: npt.NDArray[np.float32]
    soh: npt.NDArray[np.float64]
    group: npt.NDArray[np.str_]
    resistance_ratio: npt.NDArray[np.float64] | None = None

    def resistance(self) -> npt.NDArray[np.float64]:
        """The resistance multiples (1 where unknown)."""
        return self.resistance_ratio if self.resistance_ratio is not None else np.ones_like(self.soh)

    def foreign(self) -> ForeignRows:
        """As the health model's training rows, the health score labelled from both truths."""
        return ForeignRows(self.x, self.soh, health_score_label(self.soh, self.resistance()), self.group)


def build_health_packs(
    specs: Sequence[PackSpec], cache_dir: Path, progress: Callable[[int, int, PackSpec], None] | None = None
) -> HealthPackSet:
    """Solve (or read from ``cache_dir``) every pack and replay it through a twin."""
    runs: list[PackRun] = []
    for k, spec in enumerate(specs):
        if progress is not None:
            progress(k, len(specs), spec)
        runs.append(_run(spec, cache_dir))
    x = np.concatenate([twin_features(r) for r in runs]) if runs else np.empty((0, 0), np.float32)
    return HealthPackSet(
        runs, x, np.array([r.soh for r in runs]), np.array([r.spec.parameter_set for r in runs]),
        np.array([r.spec.resistance_multiple for r in runs]),
    )  # fmt: skip


def _run(spec: PackSpec, cache_dir: Path) -> PackRun:
    """The spec's run (cached), in the other ageing mode where the cell does not respond."""
    try:
        return pack_run(spec, cache_dir)
    except ValueError as err:
        if spec.soh >= 0.999:
            raise
        log.info("%s; trying the other ageing mode", err)
        return pack_run(_other_mode(spec), cache_dir)


def pack_batch(
    run: PackRun, battery_id: str = "pack", vehicle_id: str = "vehicle", samples_per_message: int = _SAMPLES_PER_MESSAGE
) -> TelemetryBatch:
    """The pack's telemetry as the bridge hands it to a shard: messages of
    ``samples_per_message`` samples (30: 5 minutes at 10 s), with sequence numbers, at one
    place."""
    if samples_per_message < 1:
        raise ValueError(f"Expected samples_per_message >= 1, got {samples_per_message}.")
    n = run.ts.size
    starts = np.arange(0, n, samples_per_message)
    offsets = np.append(starts, n).astype(np.int64)
    zeros = np.zeros(n)
    # Moving while it draws current, and through a regenerative pulse between two such
    # samples; standing still otherwise (parked, or charging at a depot). The twin tells a
    # charge from braking by the vehicle standing still.
    drawing = run.current_a > 0.5
    regen = (run.current_a < 0) & np.r_[False, drawing[:-1]] & np.r_[drawing[1:], False]
    speed = np.where(drawing | regen, 15.0, 0.0)
    cols = {
        "ts": run.ts, "pack_voltage_v": run.pack_voltage_v, "current_a": run.current_a, "temp_c": run.temp_c,
        "soc_pct": run.soc_pct, "lat": zeros + 52.52, "lon": zeros + 13.40, "odometer_km": zeros,
        "speed_kmh": speed, "cell_min_v": run.cell_min_v, "cell_max_v": run.cell_max_v,
    }  # fmt: skip
    assert set(cols) == set(SAMPLE_FIELDS)
    m = starts.size
    return TelemetryBatch(
        battery_ids=[battery_id] * m, vehicle_ids=[vehicle_id] * m, seqs=np.arange(1, m + 1, dtype=np.int64),
        msg_offsets=offsets, columns={k: np.asarray(v, dtype=np.float64) for k, v in cols.items()},
        received_at_s=run.ts[np.minimum(offsets[1:] - 1, n - 1)],
    )  # fmt: skip


def twin_counters(run: PackRun) -> TwinCounters:
    """The counters a twin holds after seeing the whole run (rated capacity: the pack's)."""
    params = TwinTableParams(rated_capacity_ah=run.rated_capacity_ah)
    _, counters = counters_from_history(pack_batch(run), float(run.ts[-1]), params)
    return counters


def twin_features(run: PackRun) -> npt.NDArray[np.float32]:
    """One row of :func:`twins.features.health_features`: the twin's view of the pack."""
    return health_features(twin_counters(run))


def fault_pack_specs(healthy: Sequence[PackSpec], onset_fraction: float = 0.4) -> list[PackSpec]:
    """Each of ``healthy`` (a set's SOH-90 % pack, say) with every fault of
    :data:`sim.electrochem.FAULT_KINDS`, beginning ``onset_fraction`` into its duty: no new
    solve, the fault is added to the healthy pack's solution."""
    from dataclasses import replace

    from sim.electrochem import FAULT_KINDS, PackFault

    if not 0.0 < onset_fraction < 1.0:
        raise ValueError(f"Expected onset_fraction in (0, 1), got {onset_fraction}.")
    return [
        replace(s, fault=PackFault(kind, onset_h=round(onset_fraction * s.hours, 3)))  # type: ignore[arg-type]
        for s in healthy for kind in FAULT_KINDS
    ]  # fmt: skip


def build_packs(specs: Sequence[PackSpec], cache_dir: Path) -> list[PackRun]:
    """Every spec's run (cached), the other ageing mode where a cell does not respond."""
    return [_run(spec, cache_dir) for spec in specs]


def write_health_rows(packs: HealthPackSet, path: Path, built_with: str) -> None:
    """The healthy packs' twin features and truth as a small JSON file: what the health model
    trains on (``models/data/electrochem_health_rows.json`` is one, shipped so training
    never has to solve a pack)."""
    from twins.features import HEALTH_FEATURE_NAMES

    healthy = [k for k, r in enumerate(packs.runs) if r.spec.fault is None]
    doc = {
        "built_with": built_with,
        "features": list(HEALTH_FEATURE_NAMES),
        "rows": [
            {"parameter_set": str(packs.group[k]), "soh": float(packs.soh[k]),
             "resistance_ratio": float(packs.resistance()[k]),
             "x": [None if not np.isfinite(v) else float(v) for v in packs.x[k]]}
            for k in healthy
        ],
    }  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1) + "\n")


def read_health_rows(path: Path) -> HealthPackSet:
    """The rows of a :func:`write_health_rows` file (no runs)."""
    from twins.features import HEALTH_FEATURE_NAMES

    doc = json.loads(Path(path).read_text())
    if doc.get("features") != list(HEALTH_FEATURE_NAMES):
        raise ValueError(
            f"Expected health rows over features {list(HEALTH_FEATURE_NAMES)}, got {doc.get('features')} "
            f"in {path}: rebuild it with `bms models data`."
        )
    rows = doc["rows"]
    x = np.array([[np.nan if v is None else v for v in r["x"]] for r in rows], dtype=np.float32)
    return HealthPackSet(
        [], x.reshape(len(rows), len(HEALTH_FEATURE_NAMES)), np.array([r["soh"] for r in rows]),
        np.array([r["parameter_set"] for r in rows]), np.array([r["resistance_ratio"] for r in rows]),
    )  # fmt: skip

"""Labelled evaluation telemetry: a recorded normal fleet, and battery faults injected into it.

Anomaly detectors are fitted on normal telemetry and judged on telemetry with known faults.
:func:`record_fleet` runs a :class:`~sim.fleet.FleetSimulator` and decodes its messages with
the bridge's own decoder, so recorded samples carry the wire's rounding (0.01 V, 0.1 °C).
:func:`inject_fault` then rewrites one battery's columns from an onset time on:

========================  =====================================================  ===========
kind                      what changes after the onset                           magnitude
========================  =====================================================  ===========
``THERMAL_RUNAWAY``       temperature rises at ``magnitude`` °C/min on top of    °C/min
                          the normal trace, faster by ``drift_per_min`` each
                          minute (an internal short heats the pack at rest too)
``RESISTANCE_JUMP``       pack voltage sags by ``I * magnitude`` more (a         Ω
                          cracked weld or loose busbar: pack level, so the cell
                          voltages do not see it)
``WEAK_CELL``             one cell group sags ``I * magnitude`` more and loses   Ω
                          ``drift_per_min`` V of open-circuit voltage a minute:
                          ``cell_min_v`` and the pack voltage fall with it
``VOLTAGE_SENSOR_OFFSET`` the pack voltage reads ``magnitude`` V off (either     V
                          sign); cells and current are untouched
========================  =====================================================  ===========

Everything random (which batteries, onsets, magnitudes) comes from one seeded generator.

The same physics runs live: :class:`~sim.fleet.FleetSimulator` gives batteries faults as
it simulates (``FleetParams.fault_rate_per_vehicle_day`` and ``initial_faults``) and writes
them into its samples with :func:`fault_offsets`, the per-sample change this table
describes, and :func:`draw_fault_spec`, the seeded draw of one fault.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from contracts.samples import SAMPLE_FIELDS, TelemetryBatch
from contracts.telemetry import decode_batch

if TYPE_CHECKING:  # the fleet uses this module's physics: its modules import this one
    from sim.fleet_params import FleetParams

__all__ = [
    "FAULT_UNITS",
    "FaultKind",
    "FaultOffsets",
    "FaultParams",
    "FaultSpec",
    "draw_fault_spec",
    "fault_offsets",
    "inject_fault",
    "inject_faults",
    "plan_faults",
    "record_fleet",
]

FloatArray = npt.NDArray[np.float64]
Columns = dict[str, FloatArray]


class FaultKind(StrEnum):
    """A battery fault that :func:`inject_fault` can write into normal telemetry."""

    THERMAL_RUNAWAY = "thermal_runaway"
    RESISTANCE_JUMP = "resistance_jump"
    WEAK_CELL = "weak_cell"
    VOLTAGE_SENSOR_OFFSET = "voltage_sensor_offset"


#: Unit of :attr:`FaultSpec.magnitude` for each kind.
FAULT_UNITS: dict[FaultKind, str] = {
    FaultKind.THERMAL_RUNAWAY: "C/min",
    FaultKind.RESISTANCE_JUMP: "ohm",
    FaultKind.WEAK_CELL: "ohm",
    FaultKind.VOLTAGE_SENSOR_OFFSET: "V",
}

# Decimals the telemetry encoder writes (sim/telemetry_encoder.py): a rewritten column is
# rounded the same way, so a fault never shows up as suspiciously precise numbers.
_DECIMALS = {"pack_voltage_v": 2, "temp_c": 1, "cell_min_v": 3}


def _check_range(name: str, lo_hi: tuple[float, float], lower: float = 0.0) -> None:
    lo, hi = lo_hi
    if not lower <= lo <= hi:
        raise ValueError(f"Expected {lower} <= low <= high for {name}, got ({lo}, {hi}).")


@dataclass(frozen=True)
class FaultParams:
    """Ranges the magnitudes and onsets of random faults are drawn from (uniformly).

    Parameters
    ----------
    runaway_rate_c_per_min, runaway_drift_c_per_min2
        Extra temperature rise at the onset, and how much faster it gets per minute.
        Normal packs warm by well under 0.5 °C/min (I²R of a few watts).
    resistance_jump_ohm
        Added series resistance; a new 13S pack has about 0.12 Ω, an old one 0.25 Ω.
    weak_cell_extra_ohm, weak_cell_fade_v_per_min
        Extra resistance of the weak group and the rate its open-circuit voltage falls.
    sensor_offset_v
        Size of the pack-voltage offset; the sign is drawn too.
    onset_samples_before_end
        The onset falls on one of this many samples before the end of a series
        (inclusive range), so the last part of the series carries the fault.
    """

    runaway_rate_c_per_min: tuple[float, float] = (1.0, 4.0)
    runaway_drift_c_per_min2: tuple[float, float] = (0.0, 1.0)
    resistance_jump_ohm: tuple[float, float] = (0.06, 0.15)
    weak_cell_extra_ohm: tuple[float, float] = (0.01, 0.03)
    weak_cell_fade_v_per_min: tuple[float, float] = (0.005, 0.02)
    sensor_offset_v: tuple[float, float] = (1.0, 3.0)
    onset_samples_before_end: tuple[int, int] = (16, 40)

    def __post_init__(self) -> None:
        for name in (
            "runaway_rate_c_per_min",
            "runaway_drift_c_per_min2",
            "resistance_jump_ohm",
            "weak_cell_extra_ohm",
            "weak_cell_fade_v_per_min",
            "sensor_offset_v",
        ):
            _check_range(name, getattr(self, name))
        lo, hi = self.onset_samples_before_end
        if not 1 <= lo <= hi:
            raise ValueError(
                f"Expected 1 <= low <= high for onset_samples_before_end, got ({lo}, {hi})."
            )


@dataclass(frozen=True)
class FaultSpec:
    """One injected fault: what, from when, how strong.

    Parameters
    ----------
    kind
        The fault.
    onset_ts_s
        Samples with ``ts >= onset_ts_s`` carry it.
    magnitude
        Strength, in :data:`FAULT_UNITS` of ``kind``.
    drift_per_min
        Growth per minute after the onset: °C/min² for a runaway, V/min of open-circuit
        fade for a weak cell; 0 for the step faults.
    """

    kind: FaultKind
    onset_ts_s: float
    magnitude: float
    drift_per_min: float = 0.0


def record_fleet(
    params: FleetParams, duration_s: float, start_s: float, dt_s: float = 1.0
) -> dict[str, Columns]:
    """Run a fleet and return every battery's decoded samples, time-ordered.

    Parameters
    ----------
    params
        The fleet (its ``seed`` makes the recording reproducible).
    duration_s
        Simulated time after ``start_s``.
    start_s
        Unix time of the start (it sets the time of day: demand and air temperature).
    dt_s
        Simulator tick.

    Returns
    -------
    dict
        Battery id -> columns (``ts`` and every :data:`~contracts.samples.WINDOW_FIELDS`
        name), float64, ``ts`` strictly increasing. Batteries that never reported are
        absent.
    """
    # Imported here, not at the top: sim.fleet and sim.fleet_params import this module.
    from sim.fleet import FleetSimulator

    if not duration_s > 0 or not dt_s > 0:
        raise ValueError(f"Expected duration_s > 0 and dt_s > 0, got {duration_s} and {dt_s}.")
    sim = FleetSimulator(params)
    batches: list[TelemetryBatch] = []
    for k in range(1, int(duration_s / dt_s) + 1):
        now_s = start_s + k * dt_s
        messages = sim.advance(dt_s, now_s)
        if messages:
            batch, _, rejected = decode_batch(messages, now_s)
            if rejected:
                raise RuntimeError(
                    f"Expected the simulator's messages to pass the contract, got "
                    f"{len(rejected)} rejected (first: {rejected[0][1]!r})."
                )
            batches.append(batch)
    batch = TelemetryBatch.concat(batches)
    ids = np.asarray(batch.battery_ids, dtype=object)[batch.message_index()]
    codes, inverse = np.unique(ids.astype(str), return_inverse=True)
    order = np.lexsort((batch.columns["ts"], inverse))
    starts = np.searchsorted(inverse[order], np.arange(codes.size + 1))
    out: dict[str, Columns] = {}
    for j, battery_id in enumerate(codes.tolist()):
        sel = order[starts[j] : starts[j + 1]]
        out[str(battery_id)] = {name: batch.columns[name][sel] for name in SAMPLE_FIELDS}
    return out


@dataclass(frozen=True, eq=False)
class FaultOffsets:
    """What a fault adds to a battery's readings, one value per sample (0 where it does
    not act: before the onset, or a column the kind leaves alone)."""

    temp_c: FloatArray
    pack_voltage_v: FloatArray
    cell_min_v: FloatArray


def fault_offsets(
    kind: FaultKind,
    minutes: FloatArray,
    magnitude: FloatArray | float,
    drift_per_min: FloatArray | float,
    current_a: FloatArray,
) -> FaultOffsets:
    """The change ``kind`` makes to each sample (the table of the module docstring).

    Parameters
    ----------
    kind
        The fault.
    minutes
        Time of each sample since the fault's onset, in minutes; a negative value is a
        sample before the onset, which the fault leaves alone.
    magnitude, drift_per_min
        The fault's strength and growth (:class:`FaultSpec`), scalar or one per sample.
    current_a
        The current of each sample, positive while discharging.

    Returns
    -------
    FaultOffsets
        Amounts to add to ``temp_c``, ``pack_voltage_v`` and ``cell_min_v``.
    """
    after = minutes >= 0.0
    t = np.where(after, minutes, 0.0)
    zero = np.zeros(np.shape(minutes))
    m, drift = magnitude, drift_per_min
    if kind is FaultKind.THERMAL_RUNAWAY:
        return FaultOffsets(np.where(after, m * t + 0.5 * drift * t**2, 0.0), zero, zero)
    if kind is FaultKind.RESISTANCE_JUMP:
        return FaultOffsets(zero, -np.where(after, current_a * m, 0.0), zero)
    if kind is FaultKind.WEAK_CELL:
        # The weak group is one of the series groups: what it loses, the pack loses too.
        drop_v = np.where(after, current_a * m + drift * t, 0.0)
        return FaultOffsets(zero, -drop_v, -drop_v)
    if kind is FaultKind.VOLTAGE_SENSOR_OFFSET:
        return FaultOffsets(zero, np.where(after, m, 0.0) + zero, zero)
    raise ValueError(f"Expected a FaultKind, got {kind!r}.")  # pragma: no cover - closed enum


def inject_fault(columns: Mapping[str, npt.ArrayLike], fault: FaultSpec) -> Columns:
    """A copy of one battery's columns with ``fault`` written in from its onset on.

    Parameters
    ----------
    columns
        ``ts``, ``pack_voltage_v``, ``current_a``, ``temp_c`` and ``cell_min_v`` at least
        (other columns are copied unchanged); ``current_a > 0`` while discharging.
    fault
        What to inject.

    Returns
    -------
    dict
        New float64 arrays; the input is not modified.
    """
    out: Columns = {k: np.array(v, dtype=np.float64) for k, v in columns.items()}
    needed = ("ts", "pack_voltage_v", "current_a", "temp_c", "cell_min_v")
    missing = [k for k in needed if k not in out]
    if missing:
        raise ValueError(f"Expected columns {needed}, missing {missing}.")
    minutes = (out["ts"] - fault.onset_ts_s) / 60.0
    d = fault_offsets(fault.kind, minutes, fault.magnitude, fault.drift_per_min, out["current_a"])
    out["temp_c"] = out["temp_c"] + d.temp_c
    out["pack_voltage_v"] = out["pack_voltage_v"] + d.pack_voltage_v
    out["cell_min_v"] = out["cell_min_v"] + d.cell_min_v
    for name, decimals in _DECIMALS.items():
        out[name] = np.round(out[name], decimals)
    return out


def plan_faults(
    n: int, faulty_fraction: float, seed: int, kinds: Sequence[FaultKind] = tuple(FaultKind)
) -> list[FaultKind | None]:
    """Which of ``n`` batteries get which fault: ``round(n * faulty_fraction)`` of them,
    the kinds taken in turn (so each kind gets an equal share), at seeded random places.
    """
    if not 0.0 <= faulty_fraction <= 1.0:
        raise ValueError(f"Expected faulty_fraction in [0, 1], got {faulty_fraction}.")
    if not kinds:
        raise ValueError("Expected at least one fault kind, got none.")
    rng = np.random.default_rng(seed)
    n_faulty = round(n * faulty_fraction)
    plan: list[FaultKind | None] = [None] * n
    for j, i in enumerate(rng.permutation(n)[:n_faulty].tolist()):
        plan[i] = kinds[j % len(kinds)]
    return plan


def inject_faults(
    series: Sequence[Mapping[str, npt.ArrayLike]],
    plan: Sequence[FaultKind | None],
    seed: int,
    params: FaultParams | None = None,
) -> tuple[list[Columns], list[FaultSpec | None]]:
    """Inject the planned fault (or none) into each series, with seeded random specs.

    Parameters
    ----------
    series
        Normal columns of each battery (see :func:`inject_fault`).
    plan
        One entry per series: the fault kind, or None to leave it normal.
    seed
        Seeds the onsets and magnitudes.
    params
        Ranges to draw from.

    Returns
    -------
    columns, specs
        The (copied) columns of every series, and the fault of each (None if normal).
        A series shorter than the drawn onset distance gets its fault from its first
        sample on.
    """
    if len(plan) != len(series):
        raise ValueError(f"Expected one plan entry per series ({len(series)}), got {len(plan)}.")
    p = params or FaultParams()
    rng = np.random.default_rng(seed)
    columns: list[Columns] = []
    specs: list[FaultSpec | None] = []
    for cols, kind in zip(series, plan, strict=True):
        if kind is None:
            columns.append({k: np.array(v, dtype=np.float64) for k, v in cols.items()})
            specs.append(None)
            continue
        ts = np.asarray(cols["ts"], dtype=np.float64)
        if ts.size == 0:
            raise ValueError("Expected at least one sample in a series to inject a fault into.")
        back = int(rng.integers(p.onset_samples_before_end[0], p.onset_samples_before_end[1] + 1))
        onset_ts_s = float(ts[max(ts.size - back, 0)])
        spec = draw_fault_spec(kind, onset_ts_s, p, rng)
        columns.append(inject_fault(cols, spec))
        specs.append(spec)
    return columns, specs


def draw_fault_spec(
    kind: FaultKind, onset_ts_s: float, p: FaultParams, rng: np.random.Generator
) -> FaultSpec:
    """A fault of ``kind`` from ``onset_ts_s`` on, its magnitude (and growth) drawn from
    ``p``'s ranges with ``rng``; a sensor offset's sign is drawn too."""

    def draw(lo_hi: tuple[float, float]) -> float:
        return float(rng.uniform(lo_hi[0], lo_hi[1]))

    if kind is FaultKind.THERMAL_RUNAWAY:
        return FaultSpec(
            kind, onset_ts_s, draw(p.runaway_rate_c_per_min), draw(p.runaway_drift_c_per_min2)
        )
    if kind is FaultKind.RESISTANCE_JUMP:
        return FaultSpec(kind, onset_ts_s, draw(p.resistance_jump_ohm))
    if kind is FaultKind.WEAK_CELL:
        return FaultSpec(
            kind, onset_ts_s, draw(p.weak_cell_extra_ohm), draw(p.weak_cell_fade_v_per_min)
        )
    sign = 1.0 if rng.random() < 0.5 else -1.0
    return FaultSpec(kind, onset_ts_s, sign * draw(p.sensor_offset_v))

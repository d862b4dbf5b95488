"""Tests for :mod:`sim.faults`: recorded normal telemetry and the faults written into it.

Each fault is checked on a hand-made series whose answer can be worked out on paper (3 A
through an extra 0.1 Ω sags 0.3 V), then the seeded helpers for determinism and balance.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from contracts.samples import SAMPLE_FIELDS
from sim.demand import DemandProfile
from sim.faults import (
    FaultKind,
    FaultParams,
    FaultSpec,
    fault_offsets,
    inject_fault,
    inject_faults,
    plan_faults,
    record_fleet,
)
from sim.fleet_params import FleetParams

EVENING_S = 1_764_172_800.0
Columns = dict[str, npt.NDArray[np.float64]]


def _series(n: int = 20, dt_s: float = 30.0) -> Columns:
    """A pack drawing 3 A, 48 V, 20 C, cells 3.70 / 3.72 V, one sample every dt_s."""
    ts: npt.NDArray[np.float64] = 1.8e9 + dt_s * np.arange(n, dtype=np.float64)
    cols = {name: np.zeros(n) for name in SAMPLE_FIELDS}
    cols.update(
        ts=ts,
        pack_voltage_v=np.full(n, 48.0),
        current_a=np.full(n, 3.0),
        temp_c=np.full(n, 20.0),
        soc_pct=np.full(n, 60.0),
        cell_min_v=np.full(n, 3.70),
        cell_max_v=np.full(n, 3.72),
    )
    return cols


def _changed(before: Columns, after: Columns) -> set[str]:
    return {k for k in before if not np.array_equal(before[k], after[k])}


def test_thermal_runaway_heats_from_the_onset_and_accelerates() -> None:
    """Temperature gains rate * t + drift * t² / 2 (t in minutes) after the onset only."""
    cols = _series()
    onset = float(cols["ts"][10])
    out = inject_fault(cols, FaultSpec(FaultKind.THERMAL_RUNAWAY, onset, 2.0, 1.0))
    assert _changed(cols, out) == {"temp_c"}
    np.testing.assert_array_equal(out["temp_c"][:10], 20.0)
    minutes = (cols["ts"][10:] - onset) / 60.0
    np.testing.assert_allclose(
        out["temp_c"][10:], 20.0 + 2.0 * minutes + 0.5 * minutes**2, atol=0.05
    )


def test_resistance_jump_sags_the_pack_voltage_by_current_times_ohms() -> None:
    """An extra 0.1 Ω at 3 A lowers the pack voltage 0.3 V; cells do not see a pack-level fault."""
    cols = _series()
    out = inject_fault(cols, FaultSpec(FaultKind.RESISTANCE_JUMP, float(cols["ts"][5]), 0.1))
    assert _changed(cols, out) == {"pack_voltage_v"}
    np.testing.assert_allclose(out["pack_voltage_v"], np.r_[np.full(5, 48.0), np.full(15, 47.7)])


def test_weak_cell_drops_the_lowest_cell_and_the_pack_alike() -> None:
    """The weak group sags I * R extra and fades at drift V/min; the pack loses the same."""
    cols = _series()
    onset = float(cols["ts"][4])
    out = inject_fault(cols, FaultSpec(FaultKind.WEAK_CELL, onset, 0.02, 0.01))
    assert _changed(cols, out) == {"cell_min_v", "pack_voltage_v"}
    drop = 3.0 * 0.02 + 0.01 * (cols["ts"][4:] - onset) / 60.0
    np.testing.assert_allclose(out["cell_min_v"][4:], 3.70 - drop, atol=6e-4)
    np.testing.assert_allclose(out["pack_voltage_v"][4:], 48.0 - drop, atol=6e-3)
    spread = out["cell_max_v"] - out["cell_min_v"]
    assert (np.diff(spread[4:]) > 0).all()  # the imbalance keeps growing


def test_sensor_offset_shifts_only_the_pack_voltage() -> None:
    """A -1.5 V offset lowers every later pack-voltage reading by 1.5 V, nothing else."""
    cols = _series()
    out = inject_fault(
        cols, FaultSpec(FaultKind.VOLTAGE_SENSOR_OFFSET, float(cols["ts"][15]), -1.5)
    )
    assert _changed(cols, out) == {"pack_voltage_v"}
    np.testing.assert_allclose(out["pack_voltage_v"][15:], 46.5)
    np.testing.assert_array_equal(out["pack_voltage_v"][:15], 48.0)


def test_inject_fault_copies_and_rounds_like_the_wire() -> None:
    """The input is left untouched and rewritten columns carry the encoder's decimals."""
    cols = _series()
    before = {k: v.copy() for k, v in cols.items()}
    out = inject_fault(cols, FaultSpec(FaultKind.RESISTANCE_JUMP, 0.0, 0.01234))
    for k in cols:
        np.testing.assert_array_equal(cols[k], before[k])
    np.testing.assert_array_equal(out["pack_voltage_v"], np.round(out["pack_voltage_v"], 2))
    with pytest.raises(ValueError, match="missing \\['cell_min_v'\\]"):
        inject_fault(
            {k: v for k, v in cols.items() if k != "cell_min_v"},
            FaultSpec(FaultKind.WEAK_CELL, 0.0, 0.1),
        )


def test_plan_faults_shares_kinds_evenly_and_is_seeded() -> None:
    """10 % of 200 batteries get a fault, each kind 5 of them, the same ones for the same seed."""
    plan = plan_faults(200, 0.1, seed=3)
    assert plan == plan_faults(200, 0.1, seed=3)
    assert plan != plan_faults(200, 0.1, seed=4)
    counts = {kind: plan.count(kind) for kind in FaultKind}
    assert counts == dict.fromkeys(FaultKind, 5)
    assert plan.count(None) == 180
    with pytest.raises(ValueError, match="faulty_fraction in"):
        plan_faults(10, 1.5, seed=0)


def test_inject_faults_draws_onsets_and_magnitudes_from_the_ranges() -> None:
    """Seeded specs fall inside FaultParams' ranges and the onset inside the last samples."""
    params = FaultParams(onset_samples_before_end=(3, 6), sensor_offset_v=(2.0, 2.5))
    series = [_series() for _ in range(8)]
    plan = [FaultKind.VOLTAGE_SENSOR_OFFSET] * 4 + [FaultKind.THERMAL_RUNAWAY] * 3 + [None]
    cols, specs = inject_faults(series, plan, seed=9, params=params)
    again, specs2 = inject_faults(series, plan, seed=9, params=params)
    assert specs == specs2
    np.testing.assert_array_equal(again[0]["pack_voltage_v"], cols[0]["pack_voltage_v"])
    assert specs[-1] is None
    np.testing.assert_array_equal(cols[-1]["pack_voltage_v"], series[-1]["pack_voltage_v"])
    for spec, s in zip(specs[:-1], series[:-1], strict=True):
        assert spec is not None
        back = int((s["ts"] >= spec.onset_ts_s).sum())
        assert 3 <= back <= 6
        if spec.kind is FaultKind.VOLTAGE_SENSOR_OFFSET:
            assert 2.0 <= abs(spec.magnitude) <= 2.5
        else:
            assert 1.0 <= spec.magnitude <= 4.0
    with pytest.raises(ValueError, match="one plan entry per series"):
        inject_faults(series, plan[:-1], seed=0)


def test_fault_params_are_validated() -> None:
    """Inverted ranges and an empty onset range are refused with the offending values."""
    with pytest.raises(ValueError, match=r"resistance_jump_ohm, got \(0.2, 0.1\)"):
        FaultParams(resistance_jump_ohm=(0.2, 0.1))
    with pytest.raises(ValueError, match="onset_samples_before_end"):
        FaultParams(onset_samples_before_end=(0, 5))


def test_record_fleet_returns_ordered_reproducible_series() -> None:
    """Every battery's samples are time-ordered, and one seed gives the same recording."""
    params = FleetParams(vehicles=6, seed=2, demand=DemandProfile(trips_per_vehicle_per_day=150.0))
    a = record_fleet(params, 300.0, EVENING_S)
    b = record_fleet(params, 300.0, EVENING_S)
    assert a.keys() == b.keys() and len(a) >= 6
    for battery_id, cols in a.items():
        assert set(cols) == set(SAMPLE_FIELDS)
        assert (np.diff(cols["ts"]) > 0).all()
        for name in SAMPLE_FIELDS:
            np.testing.assert_array_equal(cols[name], b[battery_id][name])
    with pytest.raises(ValueError, match="duration_s > 0"):
        record_fleet(params, 0.0, EVENING_S)


@pytest.mark.parametrize("kind", list(FaultKind))
def test_fault_offsets_are_what_inject_fault_adds_and_nothing_before_the_onset(kind: FaultKind) -> None:
    """The per-sample change the live simulator uses is the one inject_fault writes in:
    zero before the onset (negative minutes), the documented change after it."""
    cols = _series()
    onset = float(cols["ts"][8])
    spec = FaultSpec(kind, onset, 0.05 if kind is not FaultKind.THERMAL_RUNAWAY else 2.0, 0.01)
    minutes = (cols["ts"] - onset) / 60.0
    d = fault_offsets(kind, minutes, spec.magnitude, spec.drift_per_min, cols["current_a"])
    for offsets in (d.temp_c, d.pack_voltage_v, d.cell_min_v):
        np.testing.assert_array_equal(offsets[:8], 0.0)
    out = inject_fault(cols, spec)
    np.testing.assert_allclose(out["temp_c"], np.round(cols["temp_c"] + d.temp_c, 1))
    np.testing.assert_allclose(out["pack_voltage_v"], np.round(cols["pack_voltage_v"] + d.pack_voltage_v, 2))
    np.testing.assert_allclose(out["cell_min_v"], np.round(cols["cell_min_v"] + d.cell_min_v, 3))

"""Tests for :mod:`twins.battery_twin`: the per-battery view, its snapshot and health bands."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from twins.battery_twin import (
    DEFAULT_SCORE_STALE_AFTER_S,
    BatteryTwin,
    HealthBand,
    TwinSnapshot,
    health_band,
    health_bands,
    score_ages,
)
from twins.clock import ManualClock
from twins.twin_table import TwinTable, TwinTableParams
from twins.zones import ZoneGrid

from .factories import T0_S


@pytest.fixture
def twin(clock: ManualClock) -> BatteryTwin:
    """A standalone twin of ``bat-1`` (window of 8 samples, LSTM width 4) on the test clock."""
    return BatteryTwin.standalone(
        "bat-1", TwinTableParams(window_samples=8, lstm_hidden_size=4), clock
    )


def test_standalone_twin_lives_alone_in_its_table(twin: BatteryTwin) -> None:
    """standalone() gives a one-twin table; the twin has no vehicle until a message names one."""
    assert twin.battery_id == "bat-1"
    assert twin.vehicle_id is None
    assert len(twin.table) == 1
    assert twin.slot == 0


def test_ingest_updates_state_and_broadcasts_scalars(twin: BatteryTwin, clock: ManualClock) -> None:
    """Three samples at 10 A for 36 s (0.1 Ah), scalar columns repeated for every sample."""
    clock.advance(5.0)
    res = twin.ingest(
        "veh-9",
        0,
        {
            "ts": T0_S + np.array([0.0, 18.0, 36.0]),
            "pack_voltage_v": 48.5,
            "current_a": 10.0,
            "temp_c": [30.0, 47.0, 46.0],
            "soc_pct": [80.0, 79.5, 79.0],
            "lat": 52.52,
            "lon": 13.40,
            "odometer_km": [100.0, 100.1, 100.2],
            "speed_kmh": 20.0,
            "cell_min_v": 3.7,
            "cell_max_v": 3.75,
        },
    )
    assert res.applied_samples == 3
    assert res.new_twins == 0  # standalone() already created it
    snap = twin.snapshot()
    assert snap.battery_id == "bat-1"
    assert snap.vehicle_id == "veh-9"
    assert snap.last_ts == T0_S + 36.0
    assert snap.updated_at_s == T0_S + 5.0
    assert snap.samples_total == 3
    assert snap.current_a == 10.0
    assert snap.temp_c == 46.0
    assert snap.soc_pct == 79.0
    assert snap.speed_kmh == 20.0
    # The window is float32: values come back to float32 precision.
    assert snap.pack_voltage_v == pytest.approx(48.5)
    assert snap.odometer_km == pytest.approx(100.2, rel=1e-6)
    assert snap.cell_min_v == pytest.approx(3.7, rel=1e-6)
    assert snap.cell_max_v == pytest.approx(3.75, rel=1e-6)
    assert (snap.lat, snap.lon) == (52.52, 13.40)
    assert snap.zone == ZoneGrid().zone_id(52.52, 13.40)
    assert snap.ah_discharged_ah == pytest.approx(0.1)
    assert snap.ah_charged_ah == 0.0
    assert snap.efc == pytest.approx(0.01)
    assert snap.time_hot_s == pytest.approx(36.0)
    assert snap.max_temp_c == 47.0
    assert snap.charging is False
    w = twin.window()
    np.testing.assert_array_equal(w["ts"], T0_S + np.array([0.0, 18.0, 36.0]))
    np.testing.assert_array_equal(w["current_a"], [10.0, 10.0, 10.0])


def test_missing_columns_become_none_in_the_snapshot(twin: BatteryTwin) -> None:
    """Columns left out of ingest() are NaN in the table and None in the snapshot."""
    twin.ingest("veh-1", 0, {"ts": T0_S, "soc_pct": 50.0})
    snap = twin.snapshot()
    assert snap.soc_pct == 50.0
    assert snap.cell_min_v is None
    assert snap.lat is None
    assert snap.zone == "unknown"


def test_fresh_twin_snapshot_is_empty_but_serialisable(twin: BatteryTwin) -> None:
    """A twin with no samples has None readings, zero counters and strict-JSON-safe fields."""
    snap = twin.snapshot()
    assert snap.last_ts is None
    assert snap.updated_at_s is None
    assert snap.soc_pct is None
    assert snap.max_temp_c is None
    assert snap.zone == "unknown"
    assert snap.samples_total == 0
    assert snap.health_band == HealthBand.UNKNOWN.value
    assert snap.soh_pct_est is None
    assert snap.capacity_est_ah is None
    assert snap.rated_capacity_ah == 15.0
    assert snap.dod_histogram == {
        "0-10": 0,
        "10-20": 0,
        "20-30": 0,
        "30-40": 0,
        "40-50": 0,
        "50-60": 0,
        "60-70": 0,
        "70-80": 0,
        "80-90": 0,
        "90-100": 0,
    }
    d = snap.to_dict()
    assert d == dataclasses.asdict(snap)
    json.dumps(d, allow_nan=False)  # raises if any NaN or inf slipped through


def test_full_discharge_shows_in_snapshot(twin: BatteryTwin) -> None:
    """A 90 → 40 % discharge of 6 Ah then a charge: 12 Ah of 15 rated is 80 % SoH, band fair."""
    t = np.arange(0.0, 1801.0, 60.0)
    twin.ingest(
        "veh-1",
        0,
        {"ts": T0_S + t, "current_a": 12.0, "soc_pct": 90.0 - t / 36.0, "speed_kmh": 20.0},
    )
    twin.ingest(
        "veh-1", 1, {"ts": T0_S + 1860.0, "current_a": -5.0, "soc_pct": 40.0, "speed_kmh": 0.0}
    )
    snap = twin.snapshot()
    assert snap.capacity_est_ah == pytest.approx(12.0)
    assert snap.capacity_estimates == 1
    assert snap.soh_pct_est == pytest.approx(80.0)
    assert snap.health_band == "fair"
    assert snap.dod_histogram["50-60"] == 1
    assert sum(snap.dod_histogram.values()) == 1
    assert snap.cycles_completed == 1
    assert snap.charging is True


def test_duplicate_seq_is_ignored_by_ingest(twin: BatteryTwin) -> None:
    """ingest() goes through the table's dedup: the same seq twice applies once."""
    twin.ingest("veh-1", 3, {"ts": T0_S, "soc_pct": 50.0})
    res = twin.ingest("veh-1", 3, {"ts": T0_S + 1, "soc_pct": 40.0})
    assert res.duplicate_messages == 1
    assert twin.snapshot().soc_pct == 50.0


def test_twins_sharing_a_table_see_their_own_rows(clock: ManualClock) -> None:
    """Two views on one table read and write only their own slot."""
    table = TwinTable(TwinTableParams(window_samples=4), clock)
    a = BatteryTwin(table, table.ensure("bat-a")[0])
    b = BatteryTwin(table, table.ensure("bat-b")[0])
    a.ingest("veh-a", 0, {"ts": T0_S, "soc_pct": 11.0})
    b.ingest("veh-b", 0, {"ts": T0_S, "soc_pct": 22.0})
    assert (a.snapshot().soc_pct, a.vehicle_id) == (11.0, "veh-a")
    assert (b.snapshot().soc_pct, b.vehicle_id) == (22.0, "veh-b")


def test_view_refuses_a_slot_outside_the_table(clock: ManualClock) -> None:
    """BatteryTwin(table, slot) needs a slot the table has."""
    table = TwinTable(clock=clock)
    table.ensure("bat-a")
    with pytest.raises(IndexError, match=r"Expected a slot in \[0, 1\), got 1"):
        BatteryTwin(table, 1)


def test_set_lstm_state_stores_state_and_counts_steps(twin: BatteryTwin) -> None:
    """set_lstm_state() replaces (h, c) as float32 and counts one model step."""
    twin.set_lstm_state([0.1, 0.2, 0.3, 0.4], np.ones(4))
    twin.set_lstm_state([1.0, 2.0, 3.0, 4.0], np.zeros(4))
    h, c = twin.lstm_state
    np.testing.assert_array_equal(h, np.array([1, 2, 3, 4], dtype=np.float32))
    np.testing.assert_array_equal(c, np.zeros(4, dtype=np.float32))
    assert h.dtype == np.float32
    assert twin.snapshot().lstm_steps == 2


@pytest.mark.parametrize(
    ("h_shape", "c_shape"),
    [((3,), (4,)), ((4,), (5,)), ((1, 4), (1, 4))],
    ids=["short-h", "long-c", "2d"],
)
def test_set_lstm_state_checks_shape(
    twin: BatteryTwin, h_shape: tuple[int, ...], c_shape: tuple[int, ...]
) -> None:
    """(h, c) must each be of shape (lstm_hidden_size,); a wrong one changes nothing."""
    with pytest.raises(ValueError, match=r"Expected h and c of shape \(4,\)"):
        twin.set_lstm_state(np.zeros(h_shape), np.zeros(c_shape))
    assert twin.snapshot().lstm_steps == 0


@pytest.mark.parametrize(
    ("soh_pct", "band"),
    [
        (100.0, HealthBand.GOOD),
        (90.0, HealthBand.GOOD),
        (89.999, HealthBand.FAIR),
        (80.0, HealthBand.FAIR),
        (79.9, HealthBand.POOR),
        (70.0, HealthBand.POOR),
        (69.99, HealthBand.END_OF_LIFE),
        (0.0, HealthBand.END_OF_LIFE),
        (math.nan, HealthBand.UNKNOWN),
    ],
)
def test_health_band_edges(soh_pct: float, band: HealthBand) -> None:
    """Bands start at 90, 80 and 70 % SoH (inclusive); NaN means unknown."""
    assert health_band(soh_pct) is band


def test_health_bands_matches_scalar_version() -> None:
    """The vectorised health_bands() agrees with health_band() value by value."""
    soh = np.array([95.0, 90.0, 85.0, 80.0, 75.0, 70.0, 50.0, np.nan, 120.0])
    assert health_bands(soh) == [health_band(float(x)).value for x in soh]


def test_snapshot_is_frozen(twin: BatteryTwin) -> None:
    """A TwinSnapshot cannot be changed after it is taken."""
    snap: TwinSnapshot = twin.snapshot()
    with pytest.raises(dataclasses.FrozenInstanceError):
        snap.soc_pct = 1.0  # type: ignore[misc]


def test_a_twin_never_scored_has_no_score_ages_and_is_not_stale(twin: BatteryTwin) -> None:
    """Before any model scored the twin every age is null and nothing is stale."""
    snap = twin.snapshot()
    assert snap.score_age_s == {"health": None, "anomaly": None, "degradation": None, "priority": None}
    assert snap.scores_stale is False and snap.scored_at_s is None


def test_snapshot_ages_each_model_score_at_read_time(twin: BatteryTwin, clock: ManualClock) -> None:
    """score_age_s is the seconds since each model last scored the twin, at the clock's
    now; a model kept longer than the threshold makes the scores stale, one that never
    scored the twin does not."""
    t, s = twin.table, twin.slot
    now = clock.now_s()
    t.health_scored_at_s[s] = now - 5.0
    t.anomaly_scored_at_s[s] = now - 5.0
    t.priority_scored_at_s[s] = now - 95.5
    t.scored_at_s[s] = now - 95.5
    snap = twin.snapshot()
    assert snap.score_age_s == {"health": 5.0, "anomaly": 5.0, "degradation": None, "priority": 95.5}
    assert snap.scores_stale is True and snap.scored_at_s == now - 95.5
    lenient = BatteryTwin(t, s, score_stale_after_s=100.0).snapshot()
    assert lenient.scores_stale is False and lenient.score_age_s == snap.score_age_s
    clock.advance(10.0)
    assert twin.snapshot().score_age_s["health"] == 15.0
    assert json.loads(json.dumps(twin.snapshot().to_dict()))["score_age_s"]["degradation"] is None


def test_score_ages_threshold_is_exclusive_and_ages_never_negative() -> None:
    """A score exactly as old as the threshold is not stale yet; a score time after now
    (a reader's clock behind the scorer's) reads as age 0."""
    at = {"health": T0_S, "anomaly": T0_S + 50.0, "degradation": math.nan, "priority": T0_S}
    ages, stale = score_ages(at, T0_S + DEFAULT_SCORE_STALE_AFTER_S, DEFAULT_SCORE_STALE_AFTER_S)
    assert ages == {"health": 30.0, "anomaly": 0.0, "degradation": None, "priority": 30.0}
    assert stale is False
    assert score_ages(at, T0_S + 30.001, 30.0)[1] is True


def test_a_twin_refuses_a_non_positive_stale_threshold(twin: BatteryTwin) -> None:
    """score_stale_after_s must be > 0; the error names the value."""
    with pytest.raises(ValueError, match="score_stale_after_s > 0, got 0"):
        BatteryTwin(twin.table, twin.slot, score_stale_after_s=0.0)

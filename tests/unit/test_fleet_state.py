"""Tests for :mod:`bms.fleet_state`: ``bms run`` resumes its saved fleet, or says why not."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from bms.fleet_state import (
    SEQ_MARGIN,
    SNAPSHOT_INTERVAL_S,
    fleet_snapshot_path,
    load_fleet,
    resume_fleet,
)
from sim.fleet import FleetSimulator
from sim.fleet_params import FleetParams
from sim.fleet_snapshot import write_snapshot_file
from twins.twin_table import TwinTableParams

EVENING_S = 1_764_172_800.0
PARAMS = FleetParams(vehicles=12, seed=4)


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, FleetSimulator]:
    """A fleet that ran ten minutes, saved where bms run keeps it."""
    sim = FleetSimulator(PARAMS, seq_start=1000)
    for k in range(1, 601):
        sim.advance(1.0, EVENING_S + k)
    path = fleet_snapshot_path(tmp_path)
    write_snapshot_file(path, sim.snapshot())
    return path, sim


def test_the_margin_covers_a_save_interval_and_stays_within_the_twins_jump() -> None:
    """A battery sends at most one message a tick (1 s in bms run): the margin must exceed
    one save interval of them, and stay within the twins' seq jump allowed with no time
    passing (the first message after a clean stop is margin + 1 ahead)."""
    assert SNAPSHOT_INTERVAL_S / 1.0 + 1 < SEQ_MARGIN
    assert SEQ_MARGIN + 1 <= TwinTableParams().max_seq_jump


def test_the_saved_fleet_resumes_with_the_margin_after_standing_still(
    saved: tuple[Path, FleetSimulator], caplog: pytest.LogCaptureFixture
) -> None:
    """The saved fleet comes back with its links and its counters + SEQ_MARGIN; in real
    time its clock moves to now (it stood still) and the time scale stays 1. The log says so."""
    path, original = saved
    with caplog.at_level(logging.INFO, logger="bms.fleet_state"):
        sim = load_fleet(path, PARAMS, seq_start=5)
        scale = resume_fleet(sim, now_s=EVENING_S + 3600, duration_s=None, time_scale=1.0)
    assert scale == 1.0
    assert sim.links() == original.links() and sim.now_s == EVENING_S + 3600
    ahead = FleetSimulator.restore(path.read_bytes(), PARAMS, seq_margin=SEQ_MARGIN)
    ahead.stand_still_until(EVENING_S + 3600)
    assert sim.snapshot() == ahead.snapshot()
    assert "Restored the simulated fleet" in caplog.text and "stood still for the 3000 s" in caplog.text


def test_without_a_snapshot_a_fresh_fleet_starts(tmp_path: Path) -> None:
    """No file (a first run): a fresh fleet with the given seq start and no clock, which
    resume_fleet leaves for run_fleet to place."""
    sim = load_fleet(fleet_snapshot_path(tmp_path), PARAMS, seq_start=77)
    assert sim.now_s is None
    assert sim.snapshot() == FleetSimulator(PARAMS, seq_start=77).snapshot()
    assert resume_fleet(sim, now_s=EVENING_S, duration_s=90.0, time_scale=60.0) == 60.0
    assert sim.now_s is None


def test_other_vehicles_start_a_fresh_fleet_and_log_why(
    saved: tuple[Path, FleetSimulator], caplog: pytest.LogCaptureFixture
) -> None:
    """--vehicles other than the saved fleet's: a fresh fleet, and a warning naming the
    difference."""
    path, _ = saved
    with caplog.at_level(logging.WARNING, logger="bms.fleet_state"):
        sim = load_fleet(path, PARAMS.replace(vehicles=20), seq_start=5)
    assert sim.now_s is None and len(sim.vehicle_ids) == 20
    assert "Starting a fresh simulated fleet" in caplog.text and "vehicles: 12 -> 20" in caplog.text


def test_a_damaged_snapshot_starts_a_fresh_fleet_and_logs_why(
    saved: tuple[Path, FleetSimulator], caplog: pytest.LogCaptureFixture
) -> None:
    """A damaged file does not stop bms run: a fresh fleet, and a warning saying why."""
    path, _ = saved
    path.write_bytes(path.read_bytes()[:100])
    with caplog.at_level(logging.WARNING, logger="bms.fleet_state"):
        sim = load_fleet(path, PARAMS, seq_start=5)
    assert sim.now_s is None
    assert "cannot continue: Expected a fleet snapshot" in caplog.text


@pytest.mark.parametrize(
    ("down_s", "start_s", "scale"),
    [
        # Down 30 s: the run covers the 30 s and its own 90 at (30 + 90) / 90 = 1.33x.
        (30.0, EVENING_S + 600, 120.0 / 90.0),
        # Down 3 h: more than the sped-up run covers (90 s * 60), so it stood still until
        # the sped-up start and runs at the full 60x.
        (3 * 3600.0, EVENING_S + 600 + 3 * 3600 + 90 - 90 * 60, 60.0),
    ],
)
def test_a_sped_up_run_never_moves_the_fleet_back_in_time(
    saved: tuple[Path, FleetSimulator], down_s: float, start_s: float, scale: float
) -> None:
    """A sped-up run of a restored fleet starts at the later of its clock and the sped-up
    start, and runs only as fast as ends at the present (now + duration)."""
    path, original = saved
    assert original.now_s == EVENING_S + 600
    sim = load_fleet(path, PARAMS, seq_start=5)
    now_s = EVENING_S + 600 + down_s
    got = resume_fleet(sim, now_s=now_s, duration_s=90.0, time_scale=60.0)
    assert sim.now_s is not None and sim.now_s == pytest.approx(start_s)
    assert got == pytest.approx(scale) and sim.now_s + 90.0 * got == pytest.approx(now_s + 90.0)


def test_a_saved_clock_ahead_of_this_machine_resumes_there_in_real_time(
    saved: tuple[Path, FleetSimulator], caplog: pytest.LogCaptureFixture
) -> None:
    """A saved clock in the future (another machine's clock): the fleet resumes from it at
    time scale 1, never backwards; a warning says so."""
    path, original = saved
    sim = load_fleet(path, PARAMS, seq_start=5)
    with caplog.at_level(logging.WARNING, logger="bms.fleet_state"):
        assert resume_fleet(sim, now_s=EVENING_S, duration_s=90.0, time_scale=60.0) == 1.0
    assert sim.now_s == original.now_s
    assert "600 s ahead of this machine's" in caplog.text


def test_a_faulty_fleet_resumes_with_its_faults_under_new_fault_settings(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The faults of the saved fleet come back (the log counts them), and their progress
    stood still with the fleet; other [sim] fault settings do not start a fresh fleet, and
    their initial faults are not added to a restored one."""
    faulty = PARAMS.replace(initial_faults=2)
    sim = FleetSimulator(faulty, seq_start=1000)
    for k in range(1, 301):
        sim.advance(1.0, EVENING_S + k)
    path = fleet_snapshot_path(tmp_path)
    write_snapshot_file(path, sim.snapshot())
    with caplog.at_level(logging.INFO, logger="bms.fleet_state"):
        restored = load_fleet(path, faulty.replace(initial_faults=5, fault_rate_per_vehicle_day=0.5), seq_start=5)
        resume_fleet(restored, now_s=EVENING_S + 900, duration_s=None, time_scale=1.0)
    assert restored.links() == sim.links()
    assert {b: f.onset_ts_s + 600 for b, f in sim.faults().items()} == {
        b: f.onset_ts_s for b, f in restored.faults().items()
    }
    assert len(restored.faults()) == 2 and "2 faulty batteries" in caplog.text

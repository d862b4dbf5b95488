"""Tests for :mod:`models.anomaly`: the combined detector on simulated fleets with faults.

One fleet trains the detector; another (other seed) is judged, first as it is (false
positives), then with each fault kind injected by :mod:`sim.faults` into a dozen batteries
that are ridden at the end of their window (so load-dependent faults can show at all).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from contracts.samples import SAMPLE_FIELDS, TelemetryBatch
from models.anomaly import (
    AnomalyDetector,
    AnomalyKind,
    AnomalyParams,
    AnomalyReport,
    anomaly_events,
)
from models.telemetry_lstm import TelemetryLSTMParams
from sim.demand import DemandProfile
from sim.faults import FaultKind, FaultSpec, inject_faults, record_fleet
from sim.fleet_params import FleetParams
from twins.telemetry_windows import (
    TelemetryWindows,
    sliding_windows,
    windows_from_columns,
    windows_from_table,
)
from twins.twin_table import TwinTable

EVENING_S = 1_764_172_800.0
W = 64
PER_KIND = 12
Columns = dict[str, npt.NDArray[np.float64]]
SMALL = AnomalyParams(lstm=TelemetryLSTMParams(hidden_size=16, epochs=12, batch_size=32, seed=3))

#: The detector each fault is meant to trip.
INTENDED = {
    FaultKind.THERMAL_RUNAWAY: AnomalyKind.TEMP_RISE,
    FaultKind.RESISTANCE_JUMP: AnomalyKind.VOLTAGE_SAG,
    FaultKind.WEAK_CELL: AnomalyKind.CELL_IMBALANCE,
    FaultKind.VOLTAGE_SENSOR_OFFSET: AnomalyKind.VOLTAGE_RESIDUAL,
}


def _record(seed: int, vehicles: int) -> dict[str, Columns]:
    params = FleetParams(
        vehicles=vehicles, seed=seed, demand=DemandProfile(trips_per_vehicle_per_day=100.0)
    )
    return record_fleet(params, 1800.0, EVENING_S)


@dataclass(frozen=True)
class Judged:
    """Evaluation series (cut where the battery is riding), their faults and windows."""

    ids: list[str]
    columns: list[Columns]
    specs: list[FaultSpec | None]
    windows: TelemetryWindows


@pytest.fixture(scope="module")
def detector() -> AnomalyDetector:
    """The combined detector (small LSTM) trained on 50 busy scooters over 30 minutes."""
    rec = _record(seed=51, vehicles=50)
    return AnomalyDetector(SMALL).fit(sliding_windows(list(rec.values()), W, 16))


@pytest.fixture(scope="module")
def eval_recording() -> dict[str, Columns]:
    """Another fleet (other seed): 90 scooters over 30 minutes."""
    return _record(seed=52, vehicles=90)


@pytest.fixture(scope="module")
def judged(eval_recording: dict[str, Columns]) -> Judged:
    """Each battery cut at its last sample that ends 16 ridden samples (mean |I| >= 3 A);
    12 of them per fault kind get that fault (seeded), the rest stay normal."""
    ids, columns = [], []
    for battery_id, cols in sorted(eval_recording.items()):
        load = np.convolve(np.abs(cols["current_a"]), np.ones(16) / 16, mode="valid")
        ends = np.flatnonzero(load >= 3.0) + 16
        ends = ends[ends >= W]
        if ends.size:
            ids.append(battery_id)
            columns.append({k: v[: ends[-1]] for k, v in cols.items()})
    assert len(ids) >= 4 * PER_KIND + 20
    plan: list[FaultKind | None] = [None] * len(ids)
    for j in range(4 * PER_KIND):
        plan[j] = list(FaultKind)[j % 4]
    faulty, specs = inject_faults(columns, plan, seed=7)
    return Judged(ids, faulty, specs, windows_from_columns(faulty, W, battery_ids=ids))


@pytest.fixture(scope="module")
def report(detector: AnomalyDetector, judged: Judged) -> AnomalyReport:
    """The detector's verdict on the judged windows."""
    return detector.score(judged.windows)


def test_false_positive_rate_on_a_normal_fleet_is_low(
    detector: AnomalyDetector, eval_recording: dict[str, Columns]
) -> None:
    """Under 2 % of normal batteries (their latest window) and under 2 % of all their
    sliding windows are flagged by any detector."""
    ids = sorted(eval_recording)
    latest = detector.score(windows_from_columns([eval_recording[b] for b in ids], W))
    assert latest.evaluable.mean() > 0.9
    assert latest.flagged().mean() < 0.02
    every = detector.score(sliding_windows([eval_recording[b] for b in ids], W, 8))
    assert every.n > 1000
    assert every.flagged().mean() < 0.02


def test_normal_batteries_among_faulty_ones_stay_quiet(
    report: AnomalyReport, judged: Judged
) -> None:
    """Of the ridden batteries left normal, at most one is flagged."""
    normal = np.array([s is None for s in judged.specs])
    assert int(report.flagged()[normal].sum()) <= 1


@pytest.mark.parametrize("kind", list(FaultKind))
def test_each_fault_is_caught_by_its_detector(
    report: AnomalyReport, judged: Judged, kind: FaultKind
) -> None:
    """At least 10 of the 12 batteries with a fault are flagged by the detector meant for
    it, and at least 11 by some detector."""
    rows = np.array([s is not None and s.kind is kind for s in judged.specs])
    assert rows.sum() == PER_KIND
    assert report.flagged(INTENDED[kind])[rows].sum() >= 10
    assert report.flagged()[rows].sum() >= 11


def test_anomaly_score_passes_one_exactly_when_flagged(report: AnomalyReport) -> None:
    """anomaly_score is the largest score / threshold, so it exceeds 1 iff a bit is set,
    and each bit matches its own detector's score."""
    np.testing.assert_array_equal(report.anomaly_score > 1.0, report.flags != 0)
    for kind, scores in report.scores.items():
        np.testing.assert_array_equal(report.flagged(kind), scores > report.thresholds[kind])
    row = int(np.flatnonzero(report.flags)[0])
    assert report.kinds_of(row) == AnomalyKind(int(report.flags[row]))


def test_events_describe_each_flag(report: AnomalyReport) -> None:
    """One event per set bit, most anomalous battery first, with a kind name, the z and a
    detail text in physical units."""
    events = anomaly_events(report)
    assert len(events) == sum(bin(int(f)).count("1") for f in report.flags)
    units = {
        "voltage_residual": " V ",
        "temp_rise": "°C/min",
        "voltage_sag": "mΩ",
        "cell_imbalance": "mV",
        "sequence_error": "z ",
    }
    for event in events:
        assert set(event) == {"battery_id", "kind", "score", "detail"}
        assert event["kind"] in units and units[event["kind"]] in event["detail"]
        row = report.battery_ids.index(event["battery_id"])
        assert report.flagged(AnomalyKind[event["kind"].upper()])[row]
    order = [report.anomaly_score[report.battery_ids.index(e["battery_id"])] for e in events]
    assert order == sorted(order, reverse=True)


def test_save_load_gives_identical_reports(
    detector: AnomalyDetector, judged: Judged, report: AnomalyReport, tmp_path: Path
) -> None:
    """A saved and reloaded detector reproduces flags and every score bit for bit."""
    detector.save(tmp_path / "det")
    loaded = AnomalyDetector.load(tmp_path / "det")
    again = loaded.score(judged.windows)
    np.testing.assert_array_equal(again.flags, report.flags)
    np.testing.assert_array_equal(again.anomaly_score, report.anomaly_score)
    for kind in report.scores:
        np.testing.assert_array_equal(again.scores[kind], report.scores[kind])


def test_live_twins_score_like_the_offline_windows(
    detector: AnomalyDetector, judged: Judged, report: AnomalyReport
) -> None:
    """The same samples applied to a TwinTable and read with windows_from_table give the
    very same report as the offline windows."""
    table = TwinTable()
    for start in range(0, max(len(c["ts"]) for c in judged.columns), 5):
        parts = [
            (b, {k: c[k][start : start + 5] for k in SAMPLE_FIELDS})
            for b, c in zip(judged.ids, judged.columns, strict=True)
        ]
        parts = [(b, c) for b, c in parts if c["ts"].size]
        offsets = np.zeros(len(parts) + 1, dtype=np.int64)
        np.cumsum([c["ts"].size for _, c in parts], out=offsets[1:])
        table.apply(
            TelemetryBatch(
                battery_ids=[b for b, _ in parts],
                vehicle_ids=["v"] * len(parts),
                seqs=np.full(len(parts), start, dtype=np.int64),
                msg_offsets=offsets,
                columns={k: np.concatenate([c[k] for _, c in parts]) for k in SAMPLE_FIELDS},
            )
        )
    live = detector.score(windows_from_table(table, [table.slot(b) for b in judged.ids]))
    np.testing.assert_array_equal(live.flags, report.flags)
    np.testing.assert_array_equal(live.anomaly_score, report.anomaly_score)


def test_without_lstm_no_sequence_flags_and_round_trip(
    eval_recording: dict[str, Columns], judged: Judged, tmp_path: Path
) -> None:
    """use_lstm=False never sets SEQUENCE_ERROR, still catches the faults, and saves and
    loads without a network."""
    params = AnomalyParams(use_lstm=False)
    rec = [eval_recording[b] for b in sorted(eval_recording)]
    det = AnomalyDetector(params).fit(sliding_windows(rec, W, 16))
    rep = det.score(judged.windows)
    assert not rep.flagged(AnomalyKind.SEQUENCE_ERROR).any()
    faulty = np.array([s is not None for s in judged.specs])
    assert rep.flagged()[faulty].mean() > 0.85
    det.save(tmp_path / "plain")
    assert not (tmp_path / "plain" / "lstm").exists()
    np.testing.assert_array_equal(
        AnomalyDetector.load(tmp_path / "plain").score(judged.windows).flags, rep.flags
    )


def test_params_from_full_empty_and_bad_dicts() -> None:
    """A full dict round-trips, an empty one gives defaults, an unknown section is named."""
    assert AnomalyParams.from_dict(SMALL.to_dict()) == SMALL
    assert AnomalyParams.from_dict({}) == AnomalyParams()
    with pytest.raises(ValueError, match="unknown \\['lsmt'\\]"):
        AnomalyParams.from_dict({"lsmt": {}})
    with pytest.raises(RuntimeError, match="not fitted"):
        AnomalyDetector(SMALL).score(
            TelemetryWindows(
                np.zeros((0, W, 10), dtype=np.float32),
                np.zeros((0, W)),
                np.zeros(0, dtype=np.int64),
                (),
            )
        )


def test_the_packs_own_evidence_flags_against_its_thresholds_and_says_why(
    detector: AnomalyDetector, judged: Judged, tmp_path: Path
) -> None:
    """With thresholds on the twins' evidence and the window families silenced (production),
    flags come from the evidence alone: each channel its kind, NaN (still learning) never;
    the event names the channel; the section survives save and load."""
    from dataclasses import replace

    from models.anomaly import PackEvidenceParams
    from twins.pack_watch import EVIDENCE_NAMES

    pack = PackEvidenceParams((("voltage_consistency", 3.0), ("cell_spread", 2.0), ("temp_stuck", 2.0)))
    det = AnomalyDetector(replace(detector.params, pack=pack, window_flags=False))
    det.regression, det.stats, det.lstm, det.fitted = detector.regression, detector.stats, detector.lstm, True
    w = judged.windows.take(np.arange(4))
    ev = np.full((4, len(EVIDENCE_NAMES)), np.nan)
    ev[0] = 0.5  # calm
    ev[1, 0] = 10.0  # pack voltage off its cells: a sensor
    ev[2, 1], ev[2, 4] = 2.5, 2.5  # a group leaving the others; a stuck reading
    ev[3, 2] = 1e9  # a channel without a threshold never flags
    rep = det.score(TelemetryWindows(w.values, w.ts_s, w.lengths, w.battery_ids, evidence=ev))
    assert rep.flags.tolist() == [
        0, int(AnomalyKind.SENSOR_FAULT), int(AnomalyKind.CELL_IMBALANCE | AnomalyKind.SENSOR_FAULT), 0,
    ]  # fmt: skip
    assert rep.anomaly_score[1] == pytest.approx(10.0 / 3.0) and rep.anomaly_score[0] < 1.0
    events = anomaly_events(rep)
    sensor = next(e for e in events if e["battery_id"] == w.battery_ids[1])
    assert sensor["kind"] == "sensor_fault" and sensor["score"] == 10.0
    assert "its cells' mean" in sensor["detail"] and "3.3 x its threshold" in sensor["detail"]
    # Without evidence (offline windows) and with window flags off: nothing flags at all.
    assert not det.score(w).flags.any()
    det.save(tmp_path / "pack")
    assert AnomalyDetector.load(tmp_path / "pack").params == det.params
    # An artifact from before (format 1: window detectors that flag) is refused, so the
    # system retrains it at start.
    meta = tmp_path / "pack" / "anomaly_detector.json"
    meta.write_text(meta.read_text().replace('"format_version": 2', '"format_version": 1'))
    with pytest.raises(ValueError, match=r"Expected format_version 2 .* got 1"):
        AnomalyDetector.load(tmp_path / "pack")
    with pytest.raises(ValueError, match="Expected evidence channels among"):
        PackEvidenceParams((("voltage", 1.0),))


def test_production_params_read_the_shipped_thresholds(tmp_path: Path) -> None:
    from models.training import SHIPPED_PACK_THRESHOLDS, production_anomaly_params

    params = production_anomaly_params()
    assert not params.window_flags and params.pack.thresholds
    assert params.pack.to_dict()["thresholds"] == __import__("json").loads(SHIPPED_PACK_THRESHOLDS.read_text())["thresholds"]
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="Expected the anomaly thresholds as JSON"):
        production_anomaly_params(tmp_path / "bad.json")

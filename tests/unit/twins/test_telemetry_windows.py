"""Tests for :mod:`twins.telemetry_windows`: live and offline windows are the same arrays."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from contracts.samples import SAMPLE_FIELDS, WINDOW_FIELDS, TelemetryBatch
from sim.demand import DemandProfile
from sim.faults import record_fleet
from sim.fleet_params import FleetParams
from twins.telemetry_windows import (
    TelemetryWindows,
    sliding_windows,
    windows_from_columns,
    windows_from_table,
)
from twins.twin_table import TwinTable, TwinTableParams

# 2025-11-26 16:00 UTC: the evening peak, so trips start quickly.
EVENING_S = 1_764_172_800.0
Columns = dict[str, npt.NDArray[np.float64]]


@pytest.fixture(scope="module")
def recording() -> dict[str, Columns]:
    """12 busy scooters for 15 simulated minutes: some batteries exceed a window, some not."""
    params = FleetParams(vehicles=12, seed=5, demand=DemandProfile(trips_per_vehicle_per_day=150.0))
    return record_fleet(params, 900.0, EVENING_S)


def _batches(recording: dict[str, Columns], chunk: int) -> list[TelemetryBatch]:
    """The recording as messages of ``chunk`` samples, batteries interleaved per batch."""
    ids = sorted(recording)
    longest = max(len(recording[b]["ts"]) for b in ids)
    batches = []
    for k, start in enumerate(range(0, longest, chunk)):
        parts = [
            (b, {n: recording[b][n][start : start + chunk] for n in SAMPLE_FIELDS}) for b in ids
        ]
        parts = [(b, cols) for b, cols in parts if cols["ts"].size]
        offsets = np.zeros(len(parts) + 1, dtype=np.int64)
        np.cumsum([cols["ts"].size for _, cols in parts], out=offsets[1:])
        batches.append(
            TelemetryBatch(
                battery_ids=[b for b, _ in parts],
                vehicle_ids=["v"] * len(parts),
                seqs=np.full(len(parts), k, dtype=np.int64),
                msg_offsets=offsets,
                columns={n: np.concatenate([c[n] for _, c in parts]) for n in SAMPLE_FIELDS},
            )
        )
    return batches


@pytest.mark.parametrize("chunk", [1, 7, 500])
def test_table_and_columns_give_identical_arrays(recording: dict[str, Columns], chunk: int) -> None:
    """Samples applied to a TwinTable (in batches of any size, rings wrapped or not) read
    back as exactly the arrays built offline from the same columns."""
    table = TwinTable(TwinTableParams(window_samples=64))
    for batch in _batches(recording, chunk):
        table.apply(batch)
    ids = sorted(recording)
    lengths = [len(recording[b]["ts"]) for b in ids]
    assert min(lengths) < 64 < max(lengths)  # both young and wrapped rings are covered
    slots = [table.slot(b) for b in reversed(ids)]
    live = windows_from_table(table, slots)
    offline = windows_from_columns([recording[b] for b in reversed(ids)], 64, battery_ids=ids[::-1])
    assert live.battery_ids == offline.battery_ids
    assert live.values.dtype == offline.values.dtype == np.float32
    np.testing.assert_array_equal(live.values, offline.values)
    np.testing.assert_array_equal(live.ts_s, offline.ts_s)
    np.testing.assert_array_equal(live.lengths, offline.lengths)


def test_windows_are_right_aligned_oldest_first(recording: dict[str, Columns]) -> None:
    """The newest sample sits at W - 1, timestamps rise along a row, padding is NaN in front."""
    ids = sorted(recording)
    win = windows_from_columns([recording[b] for b in ids], 64, battery_ids=ids)
    for row, b in enumerate(ids):
        ts = recording[b]["ts"]
        n = min(ts.size, 64)
        assert win.lengths[row] == n
        np.testing.assert_array_equal(win.ts_s[row, 64 - n :], ts[-n:])
        assert np.isnan(win.ts_s[row, : 64 - n]).all()
        assert np.isnan(win.values[row, : 64 - n]).all()
        np.testing.assert_array_equal(
            win.column("temp_c")[row, 64 - n :], recording[b]["temp_c"][-n:].astype(np.float32)
        )
    np.testing.assert_array_equal(win.valid, np.isfinite(win.ts_s))


def test_source_and_end_select_earlier_windows(recording: dict[str, Columns]) -> None:
    """A window ending at sample e equals the default window of the series cut at e."""
    b = max(recording, key=lambda k: len(recording[k]["ts"]))
    cols = recording[b]
    many = windows_from_columns([cols], 64, source=[0, 0, 0], end=[10, 64, 100])
    for row, e in enumerate([10, 64, 100]):
        one = windows_from_columns([{k: v[:e] for k, v in cols.items()}], 64)
        np.testing.assert_array_equal(many.values[row], one.values[0])
        np.testing.assert_array_equal(many.ts_s[row], one.ts_s[0])


def test_sliding_windows_cover_every_stride(recording: dict[str, Columns]) -> None:
    """sliding_windows gives one full window per stride of every long-enough series."""
    ids = sorted(recording)
    series = [recording[b] for b in ids]
    win = sliding_windows(series, 64, 16, battery_ids=ids)
    expected = sum(len(range(64, len(c["ts"]) + 1, 16)) for c in series)
    assert win.n == expected
    assert (win.lengths == 64).all()


def test_reference_and_recent_masks() -> None:
    """reference() takes the oldest fraction of each row without touching its recent part."""
    cols = {name: np.arange(40, dtype=np.float64) for name in WINDOW_FIELDS}
    cols["ts"] = np.arange(40, dtype=np.float64) + 1e9
    win = windows_from_columns([cols, {k: v[:12] for k, v in cols.items()}], 64)
    ref = win.reference(0.5, 8)
    recent = win.recent(8)
    assert ref[0].sum() == 20 and ref[1].sum() == 4  # 12 samples, 8 recent: only 4 left
    assert recent.sum(axis=1).tolist() == [8, 8]
    assert not (ref & recent).any()
    assert (ref <= win.valid).all()
    with pytest.raises(ValueError, match="fraction in"):
        win.reference(0.0, 8)


def test_take_and_concat_keep_rows_together(recording: dict[str, Columns]) -> None:
    """take() reorders every array and the ids alike; concat() stacks rows."""
    ids = sorted(recording)[:4]
    win = windows_from_columns([recording[b] for b in ids], 32, battery_ids=ids)
    back = win.take([3, 1])
    assert back.battery_ids == (ids[3], ids[1])
    np.testing.assert_array_equal(back.values, win.values[[3, 1]])
    both = TelemetryWindows.concat([win, back])
    assert both.n == 6 and both.battery_ids[4:] == back.battery_ids
    with pytest.raises(ValueError, match="one length W"):
        TelemetryWindows.concat([win, windows_from_columns([recording[ids[0]]], 16)])


def test_bad_inputs_say_what_was_expected(recording: dict[str, Columns]) -> None:
    """Unordered timestamps, missing columns and unknown slots are refused with a reason."""
    cols = dict(recording[sorted(recording)[0]])
    shuffled = {k: v[::-1] for k, v in cols.items()}
    with pytest.raises(ValueError, match="strictly increasing ts"):
        windows_from_columns([shuffled])
    with pytest.raises(ValueError, match="missing \\['temp_c'\\]"):
        windows_from_columns([{k: v for k, v in cols.items() if k != "temp_c"}])
    with pytest.raises(ValueError, match="end in"):
        windows_from_columns([cols], source=[0], end=[len(cols["ts"]) + 1])
    table = TwinTable()
    with pytest.raises(IndexError, match="Expected slots in"):
        windows_from_table(table, [0])
    with pytest.raises(KeyError, match="Expected a field"):
        windows_from_columns([cols]).column("voltage")

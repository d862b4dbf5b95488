"""Tests for :mod:`models.cell_data`: reading per-cycle CSVs and the clean/SOH/EOL helpers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.cell_data import REQUIRED_COLUMNS, CellHistory, load_cell_csv, load_cell_histories

_HEADER = ",".join(REQUIRED_COLUMNS)


def _write(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def _cell(cell_id: str, capacities: list[float], flags: list[int] | None = None) -> list[str]:
    flags = flags or [0] * len(capacities)
    return [
        f"{cell_id},{k},{cap},2.0,{flag}"
        for k, (cap, flag) in enumerate(zip(capacities, flags, strict=True), start=1)
    ]


def test_directory_loads_cells_sorted_and_skips_non_cell_files(tmp_path: Path) -> None:
    """Cell files load (sorted by id); a summary CSV without per-cycle columns and a non-CSV
    file are skipped; extra columns are ignored."""
    _write(tmp_path / "b.csv", _HEADER + ",temperature_C", [r + ",24" for r in _cell("B2", [1.9, 1.8])])
    _write(tmp_path / "a.csv", _HEADER, _cell("B1", [2.0, 1.9, 1.7]))
    _write(tmp_path / "cells_index.csv", "cell_id,nominal_capacity_Ah,n_cycles", ["B1,2.0,3"])
    (tmp_path / "notes.txt").write_text("not data")
    cells = load_cell_histories(tmp_path)
    assert [c.cell_id for c in cells] == ["B1", "B2"]
    b1 = cells[0]
    assert b1.cycle.dtype == np.int64 and b1.capacity_ah.dtype == np.float64
    np.testing.assert_array_equal(b1.cycle, [1, 2, 3])
    np.testing.assert_allclose(b1.capacity_ah, [2.0, 1.9, 1.7])
    assert b1.nominal_capacity_ah == 2.0
    assert not b1.anomaly.any()


def test_file_with_some_but_not_all_columns_raises(tmp_path: Path) -> None:
    """A CSV that looks per-cycle but lacks a required column is an error naming it."""
    _write(tmp_path / "B9.csv", "cell_id,cycle,capacity_Ah", ["B9,1,1.9"])
    with pytest.raises(ValueError, match=r"B9.csv, missing \['nominal_capacity_Ah', 'anomaly_flag'\]"):
        load_cell_histories(tmp_path)


def test_empty_directory_raises(tmp_path: Path) -> None:
    """A directory without any cell file says what it expected."""
    with pytest.raises(ValueError, match="Expected at least one CSV with columns"):
        load_cell_histories(tmp_path)


def test_rows_are_sorted_by_cycle_and_grouped_by_cell(tmp_path: Path) -> None:
    """Rows out of order are sorted by cycle; two cells in one file become two histories."""
    path = _write(
        tmp_path / "two.csv",
        _HEADER,
        ["X,2,1.8,2.0,0", "Y,1,1.5,1.5,0", "X,1,1.9,2.0,1"],
    )
    x, y = load_cell_csv(path)
    np.testing.assert_array_equal(x.cycle, [1, 2])
    np.testing.assert_allclose(x.capacity_ah, [1.9, 1.8])
    np.testing.assert_array_equal(x.anomaly, [True, False])
    assert y.cell_id == "Y" and y.nominal_capacity_ah == 1.5


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (["A,1,1.9,2.0,0", "A,1,1.8,2.0,0"], r"Expected each cycle once for cell A .* \[1\]"),
        (["A,1,1.9,2.0,0", "A,2,1.8,2.5,0"], "Expected one nominal_capacity_Ah for cell A"),
        (["A,1,1.9,2.0,maybe"], "Expected anomaly_flag 0 or 1 in bad.csv line 2, got 'maybe'"),
        (["A,1,lots,2.0,0"], "Expected a number in column capacity_Ah of bad.csv line 2"),
        (["A,1.5,1.9,2.0,0"], "Expected an integer cycle in bad.csv line 2"),
    ],
)
def test_bad_values_say_where_and_what(tmp_path: Path, rows: list[str], message: str) -> None:
    """Each parse or consistency error names the file, the line or cell, and the value."""
    path = _write(tmp_path / "bad.csv", _HEADER, rows)
    with pytest.raises(ValueError, match=message):
        load_cell_csv(path)


def test_cell_in_two_files_raises(tmp_path: Path) -> None:
    """The same cell_id in two files is ambiguous and rejected."""
    _write(tmp_path / "a.csv", _HEADER, _cell("B1", [2.0]))
    _write(tmp_path / "b.csv", _HEADER, _cell("B1", [1.9]))
    with pytest.raises(ValueError, match=r"got B1 again in b\.csv"):
        load_cell_histories(tmp_path)


def test_clean_drops_flagged_and_missing_capacities_in_order() -> None:
    """clean() keeps unflagged cycles with a capacity, in their original order."""
    cell = CellHistory(
        "C",
        np.array([1, 2, 3, 4, 5]),
        np.array([2.0, 0.02, np.nan, 1.8, 1.7]),
        2.0,
        np.array([False, True, False, False, False]),
    )
    clean = cell.clean()
    np.testing.assert_array_equal(clean.cycle, [1, 4, 5])
    np.testing.assert_allclose(clean.soh(), [1.0, 0.9, 0.85])
    assert not clean.anomaly.any()
    assert len(cell) == 5 and len(clean) == 3


def test_end_of_life_is_a_one_based_position_in_the_clean_series() -> None:
    """EOL counts clean cycles (1-based) up to the first one at or below the threshold."""
    cell = CellHistory(
        "C",
        np.array([1, 2, 3, 4, 5]),
        np.array([2.0, 0.1, 1.5, 1.4, 1.3]),
        2.0,
        np.array([False, True, False, False, False]),
    )
    # Clean series 1.0, 0.75, 0.70, 0.65: 70 % is reached at the third clean cycle (cycle 4).
    assert cell.end_of_life_cycle(0.7) == 3
    assert cell.end_of_life_cycle(0.8) == 2
    assert cell.end_of_life_cycle(0.5) is None


def test_from_soh_and_validation() -> None:
    """from_soh builds a clean history; inconsistent arrays and cycles are rejected."""
    cell = CellHistory.from_soh("S", [1.0, 0.9], nominal_capacity_ah=3.0)
    np.testing.assert_allclose(cell.capacity_ah, [3.0, 2.7])
    np.testing.assert_array_equal(cell.cycle, [1, 2])
    with pytest.raises(ValueError, match="Expected capacity_ah of cell S to be 1-D with 2 entries"):
        CellHistory("S", np.array([1, 2]), np.array([1.0]), 1.0, np.zeros(2, dtype=bool))
    with pytest.raises(ValueError, match="strictly increasing cycle numbers for cell S"):
        CellHistory("S", np.array([2, 1]), np.array([1.0, 1.0]), 1.0, np.zeros(2, dtype=bool))
    with pytest.raises(ValueError, match=r"Expected nominal_capacity_ah > 0 for cell S, got 0\.0"):
        CellHistory.from_soh("S", [1.0], nominal_capacity_ah=0.0)

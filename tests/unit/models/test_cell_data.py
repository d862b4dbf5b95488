"""Tests for :mod:`models.cell_data`: reading per-cycle CSVs and the clean/SOH/EOL helpers."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from models.cell_data import (
    REQUIRED_COLUMNS,
    CellHistory,
    load_cell_csv,
    load_cell_datasets,
    load_cell_histories,
    select_cells,
)

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
    _write(
        tmp_path / "b.csv", _HEADER + ",temperature_C", [r + ",24" for r in _cell("B2", [1.9, 1.8])]
    )
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
    with pytest.raises(
        ValueError, match=r"B9.csv, missing \['nominal_capacity_Ah', 'anomaly_flag'\]"
    ):
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


# Clean capacities (Ah, nominal 2.0) with a one-cycle dip to 1.2 Ah at the third clean cycle,
# and the centred 5-cycle rolling medians worked out by hand (3 values at the ends, 4 next to
# them, the mean of the middle two for an even count).
_DIP_CAPACITY = [2.0, 1.9, 1.2, 1.8, 1.7, 1.6, 1.5, 1.4, 1.3, 1.2]
_DIP_MEDIAN = [1.9, 1.85, 1.8, 1.7, 1.6, 1.6, 1.5, 1.4, 1.35, 1.3]


def _dip_cell() -> CellHistory:
    """The dip cell with a flagged (aborted) cycle recorded between clean cycles 2 and 3."""
    capacity = [*_DIP_CAPACITY[:2], 0.1, *_DIP_CAPACITY[2:]]
    anomaly = np.zeros(len(capacity), dtype=bool)
    anomaly[2] = True
    return CellHistory("C", np.arange(1, len(capacity) + 1), np.array(capacity), 2.0, anomaly)


def test_rolling_median_has_pandas_centred_edges() -> None:
    """The smoothed capacity is the centred 5-cycle rolling median of the clean capacities,
    with pandas' min_periods=1 edges."""
    np.testing.assert_allclose(_dip_cell().smoothed_capacity_ah(), _DIP_MEDIAN)
    short = CellHistory.from_soh("S", [1.0, 0.8], nominal_capacity_ah=1.0)
    np.testing.assert_allclose(short.smoothed_capacity_ah(), [0.9, 0.9])


def test_end_of_life_is_the_first_clean_position_whose_rolling_median_is_below() -> None:
    """EOL is the 1-based clean position where the rolling median first falls strictly below
    the threshold: the one-cycle dip does not end the life, a median equal to it does not."""
    cell = _dip_cell()
    # 70 % of 2 Ah = 1.4 Ah: the median is 1.4 at position 8 (not below), 1.35 at 9.
    assert cell.end_of_life_cycle(0.7) == 9
    assert cell.clean().cycle[9 - 1] == 10  # the recorded cycle, one later for the flagged one
    # 90 % = 1.8 Ah: 1.7 at position 4 (the dip alone would have said 3).
    assert cell.end_of_life_cycle(0.9) == 4
    assert cell.end_of_life_cycle(0.5) is None


def test_initial_basis_is_a_fraction_of_the_first_three_clean_cycles_median() -> None:
    """Initial capacity is the median of the first three clean cycles (the flagged one is
    skipped); basis "initial" puts the threshold at fraction x initial, as SOH of nominal."""
    cell = _dip_cell()
    assert cell.initial_capacity_ah() == pytest.approx(1.9)  # median of 2.0, 1.9, 1.2
    assert cell.eol_threshold_soh(0.8, "initial") == pytest.approx(0.8 * 1.9 / 2.0)
    assert cell.eol_threshold_soh(0.8, "nominal") == 0.8
    # 0.8 x 1.9 = 1.52 Ah: the median first drops below it at position 7 (1.5).
    assert cell.end_of_life_cycle(0.8, "initial") == 7
    assert cell.end_of_life_cycle(0.75, "initial") == 8  # 1.425 Ah: 1.4 at position 8
    with pytest.raises(ValueError, match="Expected basis 'nominal' or 'initial', got 'rated'"):
        cell.end_of_life_cycle(0.8, "rated")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"Expected fraction in \(0, 1.5\), got 2"):
        cell.end_of_life_cycle(2)


_DATA = Path("/work/shared/data/battery")
# NASA's classic three, two HUST LFP cells (no 70 % of nominal), an NCA cell with a flagged
# dip before its end of life (clean position and recorded cycle differ) and a blend cell.
_INDEX_CELLS = {
    "B0005": "nasa_pcoe",
    "B0006": "nasa_pcoe",
    "B0018": "nasa_pcoe",
    "HUST_1-1": "hust",
    "HUST_3-4": "hust",
    "TJU_NCA_CY45-05_1-19": "tju",
    "TJU_NCM-NCA_CY25-05_1-1": "tju",
}


@pytest.mark.skipif(not _DATA.is_dir(), reason="lab battery data not present")
@pytest.mark.parametrize("cell_id", sorted(_INDEX_CELLS))
def test_end_of_life_agrees_with_cells_index(cell_id: str) -> None:
    """On real cells the EOL at 70 % of nominal and 80 % of initial, and the initial capacity,
    are those of cells_index.csv (which holds recorded cycle numbers)."""
    with (_DATA / "cells_index.csv").open(newline="") as f:
        row = next(r for r in csv.DictReader(f) if r["cell_id"] == cell_id)
    (cell,) = load_cell_csv(_DATA / _INDEX_CELLS[cell_id] / f"{cell_id}.csv")
    assert cell.initial_capacity_ah() == pytest.approx(float(row["first_capacity_Ah"]), abs=5e-5)
    clean_cycles = cell.clean().cycle
    for column, fraction, basis in (
        ("eol_cycle_70pct_nominal", 0.7, "nominal"),
        ("eol_cycle_80pct_initial", 0.8, "initial"),
    ):
        eol = cell.end_of_life_cycle(fraction, basis)  # type: ignore[arg-type]
        recorded = "" if eol is None else str(int(clean_cycles[eol - 1]))
        assert recorded == row[column], column
    if cell_id == "TJU_NCA_CY45-05_1-19":
        # The dip at cycle 176 is dropped: the clean position is one less than the cycle.
        assert cell.end_of_life_cycle(0.8, "initial") == int(row["eol_cycle_80pct_initial"]) - 1


def test_datasets_are_the_subdirectories_with_cell_files(tmp_path: Path) -> None:
    """load_cell_datasets reads each subdirectory holding cell files as one dataset (named
    after it), ignores files at the top and folders without cell files; select_cells keeps
    the asked ids and names the missing ones."""
    for name, cells in (("alpha", ("A1", "A2")), ("beta", ("B1",))):
        (tmp_path / name).mkdir()
        for cell in cells:
            _write(tmp_path / name / f"{cell}.csv", _HEADER, _cell(cell, [2.0, 1.9]))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("nothing here")
    _write(tmp_path / "cells_index.csv", "cell_id,nominal_capacity_Ah", ["A1,2.0"])
    datasets = load_cell_datasets(tmp_path)
    assert {k: [c.cell_id for c in v] for k, v in datasets.items()} == {
        "alpha": ["A1", "A2"],
        "beta": ["B1"],
    }
    assert [c.cell_id for c in select_cells(datasets["alpha"], ["A2"])] == ["A2"]
    with pytest.raises(ValueError, match=r"missing \['Z1', 'Z2'\]"):
        select_cells(datasets["alpha"], ["A1", "Z2", "Z1"])
    with pytest.raises(ValueError, match=r"Expected subdirectories of .* holding CSVs"):
        load_cell_datasets(tmp_path / "empty")


def test_same_cell_in_two_datasets_raises(tmp_path: Path) -> None:
    """A cell id in two datasets would be trained on and held out at once: rejected."""
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        _write(tmp_path / name / "x.csv", _HEADER, _cell("X1", [2.0]))
    with pytest.raises(ValueError, match="got X1 in a and b"):
        load_cell_datasets(tmp_path)


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

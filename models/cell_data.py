"""Per-cycle capacity histories of lab cells, read from a directory of CSV files.

One CSV row is one discharge cycle. A *cell file* has at least the five columns of
:data:`REQUIRED_COLUMNS`; other columns are ignored. A file may hold one or more cells
(rows are grouped by ``cell_id``). How :func:`load_cell_histories` treats a directory:

* files that do not end in ``.csv`` are not read;
* a CSV with none of the per-cycle columns (``cycle``, ``capacity_Ah``, ``anomaly_flag``),
  such as a ``cells_index.csv`` summary, is not a cell file and is skipped (logged);
* a CSV with some per-cycle columns but not all five is a broken cell file: it raises.

Capacities are kept in Ah as read; :meth:`CellHistory.soh` gives the state of health as a
fraction of the nominal (rated) capacity, the normalisation every model here works in so
that cells of any size can be pooled.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

__all__ = [
    "REQUIRED_COLUMNS",
    "CellHistory",
    "load_cell_csv",
    "load_cell_histories",
]

_LOG = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

#: Columns every cell file has; the names (and units) are those of the NASA PCoE export.
REQUIRED_COLUMNS: tuple[str, ...] = (
    "cell_id",
    "cycle",
    "capacity_Ah",
    "nominal_capacity_Ah",
    "anomaly_flag",
)
# A CSV with any of these is meant to be a per-cycle file (cells_index.csv has cell_id and
# nominal_capacity_Ah but is a one-row-per-cell summary, so those two do not count).
_PER_CYCLE_COLUMNS = frozenset({"cycle", "capacity_Ah", "anomaly_flag"})
_TRUE_FLAGS = frozenset({"1", "1.0", "true", "yes"})
_FALSE_FLAGS = frozenset({"0", "0.0", "false", "no", ""})


@dataclass(frozen=True, eq=False)
class CellHistory:
    """The discharge-capacity history of one cell, one entry per recorded cycle.

    Parameters
    ----------
    cell_id
        Name of the cell, e.g. ``"B0005"``.
    cycle
        Cycle numbers as recorded (1-based), strictly increasing.
    capacity_ah
        Discharge capacity of each cycle in Ah (may be NaN for a cycle without one).
    nominal_capacity_ah
        Rated capacity in Ah; SOH is ``capacity_ah / nominal_capacity_ah``.
    anomaly
        True for an aborted or partial cycle whose capacity should not be trusted.
    """

    cell_id: str
    cycle: IntArray
    capacity_ah: FloatArray
    nominal_capacity_ah: float
    anomaly: BoolArray

    def __post_init__(self) -> None:
        n = len(self.cycle)
        for name in ("cycle", "capacity_ah", "anomaly"):
            arr = getattr(self, name)
            if arr.ndim != 1 or len(arr) != n:
                raise ValueError(
                    f"Expected {name} of cell {self.cell_id} to be 1-D with {n} entries "
                    f"(one per cycle), got shape {arr.shape}."
                )
        if not (math.isfinite(self.nominal_capacity_ah) and self.nominal_capacity_ah > 0):
            raise ValueError(
                f"Expected nominal_capacity_ah > 0 for cell {self.cell_id}, "
                f"got {self.nominal_capacity_ah}."
            )
        if n > 1 and not bool(np.all(np.diff(self.cycle) > 0)):
            raise ValueError(
                f"Expected strictly increasing cycle numbers for cell {self.cell_id}, "
                f"got {self.cycle.tolist()[:20]}{'...' if n > 20 else ''}."
            )

    @classmethod
    def from_soh(
        cls,
        cell_id: str,
        soh_frac: npt.ArrayLike,
        nominal_capacity_ah: float = 1.0,
    ) -> CellHistory:
        """Build a clean history (cycles 1..n, no anomalies) from an SOH trajectory.

        Parameters
        ----------
        cell_id
            Name of the cell.
        soh_frac
            State of health per cycle as a fraction of nominal capacity.
        nominal_capacity_ah
            Rated capacity the SOH refers to.

        Returns
        -------
        CellHistory
            The history; handy for simulated fleet trajectories and tests.
        """
        soh = np.asarray(soh_frac, dtype=np.float64).ravel()
        return cls(
            cell_id=cell_id,
            cycle=np.arange(1, len(soh) + 1, dtype=np.int64),
            capacity_ah=soh * nominal_capacity_ah,
            nominal_capacity_ah=float(nominal_capacity_ah),
            anomaly=np.zeros(len(soh), dtype=np.bool_),
        )

    def __len__(self) -> int:
        return len(self.cycle)

    def clean(self) -> CellHistory:
        """The history without anomaly-flagged cycles or cycles without a capacity.

        Returns
        -------
        CellHistory
            Same cell, remaining rows in their original order, ``anomaly`` all False.
        """
        keep = ~self.anomaly & np.isfinite(self.capacity_ah)
        return CellHistory(
            cell_id=self.cell_id,
            cycle=self.cycle[keep],
            capacity_ah=self.capacity_ah[keep],
            nominal_capacity_ah=self.nominal_capacity_ah,
            anomaly=np.zeros(int(keep.sum()), dtype=np.bool_),
        )

    def soh(self) -> FloatArray:
        """State of health per cycle: capacity as a fraction of nominal (1.0 = rated)."""
        return self.capacity_ah / self.nominal_capacity_ah

    def end_of_life_cycle(self, fraction: float = 0.7) -> int | None:
        """When the cell first reaches end of life, counted in clean cycles.

        Parameters
        ----------
        fraction
            End of life is the first cycle with ``capacity <= fraction * nominal``.

        Returns
        -------
        int or None
            The 1-based *position in the clean series* (:meth:`clean`) of the first cycle
            at or below the threshold, i.e. how many trusted cycles the cell delivered up to
            and including that one; None if it never gets there. Positions rather than
            recorded cycle numbers because the models step once per trusted cycle; for the
            benchmark cells (no flagged cycles) the two agree.
        """
        if not 0 < fraction < 1.5:
            raise ValueError(f"Expected fraction in (0, 1.5), got {fraction}.")
        below = np.flatnonzero(self.clean().soh() <= fraction)
        return int(below[0]) + 1 if len(below) else None


def _parse_flag(value: str, path: Path, line: int) -> bool:
    v = value.strip().lower()
    if v in _TRUE_FLAGS:
        return True
    if v in _FALSE_FLAGS:
        return False
    raise ValueError(f"Expected anomaly_flag 0 or 1 in {path.name} line {line}, got {value!r}.")


def _parse_float(value: str, column: str, path: Path, line: int) -> float:
    if not value.strip():
        return math.nan
    try:
        return float(value)
    except ValueError:
        raise ValueError(
            f"Expected a number in column {column} of {path.name} line {line}, got {value!r}."
        ) from None


def _is_cell_file(columns: Sequence[str], path: Path) -> bool:
    present = set(columns)
    if not present & _PER_CYCLE_COLUMNS:
        return False
    missing = [c for c in REQUIRED_COLUMNS if c not in present]
    if missing:
        raise ValueError(
            f"Expected columns {list(REQUIRED_COLUMNS)} in {path.name}, missing {missing}; "
            f"got columns {list(columns)}."
        )
    return True


def load_cell_csv(path: Path) -> list[CellHistory]:
    """Read the cells of one per-cycle CSV file.

    Parameters
    ----------
    path
        A CSV with at least the columns of :data:`REQUIRED_COLUMNS`.

    Returns
    -------
    list of CellHistory
        One history per ``cell_id`` in the file, in order of first appearance, rows sorted
        by cycle number.

    Raises
    ------
    ValueError
        If a required column is missing, a value does not parse, a cell has more than one
        nominal capacity, or a cycle number repeats.
    """
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        columns = list(reader.fieldnames or [])
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            raise ValueError(
                f"Expected columns {list(REQUIRED_COLUMNS)} in {path.name}, missing {missing}; "
                f"got columns {columns}."
            )
        rows: dict[str, list[tuple[int, float, float, bool]]] = {}
        for line, row in enumerate(reader, start=2):
            cycle_f = _parse_float(row["cycle"], "cycle", path, line)
            if not (math.isfinite(cycle_f) and cycle_f == int(cycle_f)):
                raise ValueError(
                    f"Expected an integer cycle in {path.name} line {line}, got {row['cycle']!r}."
                )
            rows.setdefault(row["cell_id"], []).append(
                (
                    int(cycle_f),
                    _parse_float(row["capacity_Ah"], "capacity_Ah", path, line),
                    _parse_float(row["nominal_capacity_Ah"], "nominal_capacity_Ah", path, line),
                    _parse_flag(row["anomaly_flag"], path, line),
                )
            )
    cells = []
    for cell_id, cell_rows in rows.items():
        cell_rows.sort(key=lambda r: r[0])
        nominal = {r[2] for r in cell_rows}
        if len(nominal) != 1:
            raise ValueError(
                f"Expected one nominal_capacity_Ah for cell {cell_id} in {path.name}, "
                f"got {sorted(nominal)}."
            )
        cycle = np.array([r[0] for r in cell_rows], dtype=np.int64)
        repeated = np.unique(cycle[1:][np.diff(cycle) == 0])
        if len(repeated):
            raise ValueError(
                f"Expected each cycle once for cell {cell_id} in {path.name}, "
                f"got repeated cycles {repeated.tolist()}."
            )
        cells.append(
            CellHistory(
                cell_id=cell_id,
                cycle=cycle,
                capacity_ah=np.array([r[1] for r in cell_rows], dtype=np.float64),
                nominal_capacity_ah=nominal.pop(),
                anomaly=np.array([r[3] for r in cell_rows], dtype=np.bool_),
            )
        )
    return cells


def load_cell_histories(directory: Path) -> list[CellHistory]:
    """Read every cell of a directory of per-cycle CSV files (not recursive).

    Parameters
    ----------
    directory
        Folder with one or more cell files; see the module docstring for what is skipped.

    Returns
    -------
    list of CellHistory
        All cells, sorted by ``cell_id``.

    Raises
    ------
    ValueError
        If the directory holds no cell, a cell file is broken, or a ``cell_id`` appears in
        more than one file.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ValueError(f"Expected a directory of per-cycle CSV files, got {directory}.")
    cells: dict[str, CellHistory] = {}
    for path in sorted(p for p in directory.iterdir() if p.suffix.lower() == ".csv"):
        with path.open(newline="") as f:
            header = next(csv.reader(f), [])
        if not _is_cell_file(header, path):
            _LOG.info("Skipping %s: no per-cycle columns, so not a cell file.", path.name)
            continue
        for cell in load_cell_csv(path):
            if cell.cell_id in cells:
                raise ValueError(
                    f"Expected each cell_id in one file, got {cell.cell_id} again in {path.name}."
                )
            cells[cell.cell_id] = cell
    if not cells:
        raise ValueError(
            f"Expected at least one CSV with columns {list(REQUIRED_COLUMNS)} in {directory}, "
            "found none."
        )
    return [cells[k] for k in sorted(cells)]

"""Per-cycle capacity histories of lab cells, read from a directory of CSV files.

One CSV row is one discharge cycle. A *cell file* has at least the five columns of
:data:`REQUIRED_COLUMNS`; other columns are ignored. A file may hold one or more cells
(rows are grouped by ``cell_id``). How :func:`load_cell_histories` treats a directory:

* files that do not end in ``.csv`` are not read;
* a CSV with none of the per-cycle columns (``cycle``, ``capacity_Ah``, ``anomaly_flag``),
  such as a ``cells_index.csv`` summary, is not a cell file and is skipped (logged);
* a CSV with some per-cycle columns but not all five is a broken cell file: it raises.

:func:`load_cell_datasets` reads a folder of such directories, one dataset each (e.g.
``nasa_pcoe/``, ``hust/``, ``tju/``), and :func:`select_cells` picks cells by id.

Capacities are kept in Ah as read; :meth:`CellHistory.soh` gives the state of health as a
fraction of the nominal (rated) capacity, the normalisation every model here works in so
that cells of any size can be pooled. End of life follows ``cells_index.csv``: a fraction of
the nominal or of the initial capacity (median of the first three clean cycles), reached
when the centred 5-cycle rolling median of the clean capacities falls below it
(:meth:`CellHistory.end_of_life_cycle`).
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

__all__ = [
    "EOL_BASES",
    "REQUIRED_COLUMNS",
    "CellHistory",
    "EolBasis",
    "load_cell_csv",
    "load_cell_datasets",
    "load_cell_histories",
    "select_cells",
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
# The end-of-life rule of cells_index.csv (SOURCES.md): first capacity = median of the first
# three clean cycles; end of life = centred 5-cycle rolling median below the threshold.
_INITIAL_CYCLES = 3
_EOL_MEDIAN_WINDOW = 5

#: What an end-of-life fraction is a fraction of: the rated or the cell's initial capacity.
EolBasis = Literal["nominal", "initial"]
#: The accepted values of :data:`EolBasis`.
EOL_BASES: tuple[EolBasis, ...] = ("nominal", "initial")


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

    def initial_capacity_ah(self) -> float:
        """Capacity of the fresh cell: the median of its first three clean cycles, in Ah.

        As ``first_capacity_Ah`` of ``cells_index.csv``: the median damps one odd first
        cycle. A cell with fewer clean cycles uses those it has.

        Raises
        ------
        ValueError
            If the cell has no clean cycle.
        """
        capacity = self.clean().capacity_ah
        if len(capacity) == 0:
            raise ValueError(f"Expected at least one clean cycle of cell {self.cell_id}, got none.")
        return float(np.median(capacity[:_INITIAL_CYCLES]))

    def eol_threshold_soh(self, fraction: float = 0.7, basis: EolBasis = "nominal") -> float:
        """The end-of-life threshold of this cell as SOH (fraction of *nominal* capacity).

        Parameters
        ----------
        fraction
            End of life as a fraction of the basis capacity.
        basis
            ``"nominal"``: ``fraction`` of the rated capacity, the threshold is ``fraction``;
            ``"initial"``: ``fraction`` of :meth:`initial_capacity_ah`, i.e.
            ``fraction * initial / nominal``. Everything downstream works in SOH of nominal,
            so a per-cell threshold is the only thing the basis changes.
        """
        if not 0 < fraction < 1.5:
            raise ValueError(f"Expected fraction in (0, 1.5), got {fraction}.")
        if basis == "nominal":
            return fraction
        if basis == "initial":
            return fraction * self.initial_capacity_ah() / self.nominal_capacity_ah
        raise ValueError(f"Expected basis 'nominal' or 'initial', got {basis!r}.")

    def smoothed_capacity_ah(self) -> FloatArray:
        """Centred 5-cycle rolling median of the clean capacities, in Ah.

        Edges use the cycles there are (pandas ``rolling(5, center=True, min_periods=1)
        .median()``): 3 values at the first and last cycle, 4 next to them.
        """
        capacity = self.clean().capacity_ah
        half = _EOL_MEDIAN_WINDOW // 2
        padded = np.concatenate([np.full(half, np.nan), capacity, np.full(half, np.nan)])
        windows = np.lib.stride_tricks.sliding_window_view(padded, _EOL_MEDIAN_WINDOW)
        # Every window holds its centre, a real capacity, so no all-NaN slice can occur.
        return np.nanmedian(windows, axis=1) if len(capacity) else capacity

    def end_of_life_cycle(self, fraction: float = 0.7, basis: EolBasis = "nominal") -> int | None:
        """When the cell reaches end of life, counted in clean cycles.

        Parameters
        ----------
        fraction
            End of life as a fraction of the basis capacity.
        basis
            ``"nominal"`` (rated capacity) or ``"initial"`` (:meth:`initial_capacity_ah`);
            see :meth:`eol_threshold_soh`.

        Returns
        -------
        int or None
            The 1-based *position in the clean series* (:meth:`clean`) of the first cycle at
            which the centred 5-cycle rolling median (:meth:`smoothed_capacity_ah`) is below
            the threshold, the rule of the end-of-life columns of ``cells_index.csv``; None if
            it never gets there. The median keeps one noisy or spiking cycle from ending (or
            postponing) a life. Positions rather than recorded cycle numbers because the models
            step once per trusted cycle; ``cells_index.csv`` holds the recorded number
            (``clean().cycle[eol - 1]``), the same for cells without flagged cycles.
        """
        if len(self.clean()) == 0:
            self.eol_threshold_soh(fraction, "nominal")  # still reject a bad fraction
            return None
        threshold = self.eol_threshold_soh(fraction, basis) * self.nominal_capacity_ah
        below = np.flatnonzero(self.smoothed_capacity_ah() < threshold)
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


def _holds_cell_files(directory: Path) -> bool:
    for path in directory.iterdir():
        if path.suffix.lower() != ".csv":
            continue
        with path.open(newline="") as f:
            header = next(csv.reader(f), [])
        if set(header) & _PER_CYCLE_COLUMNS:
            return True
    return False


def load_cell_datasets(root: Path) -> dict[str, list[CellHistory]]:
    """Read a folder of datasets: each immediate subdirectory holding cell files is one.

    Parameters
    ----------
    root
        E.g. ``/work/shared/data/battery`` with ``nasa_pcoe/``, ``hust/``, ``tju/``; files
        directly in ``root`` (such as ``cells_index.csv``) and subdirectories without a cell
        file are ignored.

    Returns
    -------
    dict
        Dataset name (the subdirectory name) to its cells (:func:`load_cell_histories`),
        sorted by name.

    Raises
    ------
    ValueError
        If no subdirectory holds a cell file, or a ``cell_id`` appears in two datasets.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"Expected a directory of dataset folders, got {root}.")
    datasets: dict[str, list[CellHistory]] = {}
    seen: dict[str, str] = {}
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        if not _holds_cell_files(sub):
            _LOG.info("Skipping %s: no cell file, so not a dataset.", sub.name)
            continue
        cells = load_cell_histories(sub)
        for cell in cells:
            if cell.cell_id in seen:
                raise ValueError(
                    f"Expected each cell_id in one dataset, got {cell.cell_id} in "
                    f"{seen[cell.cell_id]} and {sub.name}."
                )
            seen[cell.cell_id] = sub.name
        datasets[sub.name] = cells
    if not datasets:
        raise ValueError(
            f"Expected subdirectories of {root} holding CSVs with columns "
            f"{list(REQUIRED_COLUMNS)}, found none."
        )
    return datasets


def select_cells(histories: Sequence[CellHistory], cell_ids: Sequence[str]) -> list[CellHistory]:
    """The histories whose ``cell_id`` is in ``cell_ids``, in their original order.

    Raises
    ------
    ValueError
        Naming every requested id that is not among the histories.
    """
    wanted = set(cell_ids)
    missing = sorted(wanted - {h.cell_id for h in histories})
    if missing:
        raise ValueError(
            f"Expected cell ids among the {len(histories)} loaded cells, missing {missing}."
        )
    return [h for h in histories if h.cell_id in wanted]

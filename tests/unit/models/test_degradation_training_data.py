"""What the live degradation model trains on, and the simulated packs it is checked on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.cell_data import CellHistory
from models.training import (
    TrainingPlan,
    _simulated_fade_histories,
    load_training_cells,
    simulated_pack_cells,
)


def _write(directory: Path, cell: str, n: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    lines = ["cell_id,cycle,capacity_Ah,nominal_capacity_Ah,anomaly_flag"]
    lines += [f"{cell},{k},{2.0 - 0.004 * k:.4f},2.0,0" for k in range(1, n + 1)]
    (directory / f"{cell}.csv").write_text("\n".join(lines) + "\n")


def test_training_cells_come_from_a_dataset_or_a_folder_of_datasets(tmp_path: Path) -> None:
    """A flat folder of cell files is one dataset; a folder of folders is every dataset in it
    (files beside the folders, such as cells_index.csv, are not cells)."""
    _write(tmp_path / "a", "A1", 30)
    _write(tmp_path / "a", "A2", 20)
    _write(tmp_path / "b", "B1", 25)
    (tmp_path / "cells_index.csv").write_text("cell_id,dataset\nA1,a\n")
    assert [c.cell_id for c in load_training_cells(tmp_path / "a")] == ["A1", "A2"]
    assert sorted(c.cell_id for c in load_training_cells(tmp_path)) == ["A1", "A2", "B1"]


def test_simulated_training_packs_are_on_the_equivalent_full_cycle_clock() -> None:
    """The fleet's packs enter training at their equivalent full cycles (the clock the twins
    count), strictly increasing whole cycles, not at snapshot positions."""
    packs = _simulated_fade_histories(TrainingPlan(seed=3), n=6)
    assert packs
    for p in packs:
        assert np.all(np.diff(p.cycle) > 0) and p.cycle[0] >= 1
    # Snapshot positions would end at about 80 for every pack; cycles lived run far longer.
    assert max(int(p.cycle[-1]) for p in packs) > 200


def test_simulated_test_packs_have_one_reading_per_cycle_and_fade() -> None:
    """Held-out packs read like lab cells: one SOH per whole cycle from 1, fading on the
    whole, reproducible per seed, different across seeds."""
    a = simulated_pack_cells(8, seed=11, days=1500)
    b = simulated_pack_cells(8, seed=11, days=1500)
    c = simulated_pack_cells(8, seed=12, days=1500)
    assert a and all(isinstance(p, CellHistory) for p in a)
    for p in a:
        np.testing.assert_array_equal(p.cycle, np.arange(1, len(p) + 1))
        soh = p.soh()
        assert soh[-20:].mean() < soh[:20].mean()
    np.testing.assert_array_equal(a[0].capacity_ah, b[0].capacity_ah)
    assert not np.array_equal(a[0].capacity_ah[:50], c[0].capacity_ah[:50])


def test_a_missing_cells_folder_says_so(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Expected a directory of dataset folders or of cell files"):
        load_training_cells(tmp_path / "nowhere")

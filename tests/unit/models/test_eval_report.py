"""The Markdown tables made from an evaluation's JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from models.eval_report import cell_table, main, mean_table

_METRICS = {
    "rul_rel_error_at_25pct": 0.3, "rul_rel_error_at_50pct": 0.1234, "capacity_rmse_pct_nominal": 2.0,
    "capacity_rmse_to_eol_pct_nominal": 1.5, "eol_in_band_at_25pct": 1.0, "eol_in_band_at_50pct": 0.5,
}  # fmt: skip
_BLOCK = {
    "n_cells_in_mean": 1,
    "mean": {"model": _METRICS, "mean_lifetime": {**_METRICS, "eol_in_band_at_50pct": None}},
    "over_seeds": {
        "mean": {"model": _METRICS, "mean_lifetime": {**_METRICS, "eol_in_band_at_50pct": None}},
        "sd": {"model": dict.fromkeys(_METRICS, 0.01), "mean_lifetime": dict.fromkeys(_METRICS, 0.0)},
    },
    "cells": {
        "C1": {"true_eol_cycle": 100, "model": _METRICS, "mean_lifetime": _METRICS,
               "predicted_eol_cycle": {"model": {"50pct": 112.0, "50pct_p10": 90.0, "50pct_p90": 130.0}}},
        "C2": {"true_eol_cycle": None, "excluded_reason": "never reaches it", "model": {}, "mean_lifetime": {}},
    },
}  # fmt: skip


def test_mean_table_gives_mean_and_sd_per_method() -> None:
    table = mean_table(_BLOCK)
    assert "| model | 0.300 ± 0.010 | 0.123 ± 0.010 | 1.500 ± 0.010 |" in table
    assert table.splitlines()[3].endswith("| n/a |")  # no band for a baseline


def test_cell_table_has_one_row_per_cell_with_the_band() -> None:
    rows = cell_table(_BLOCK).splitlines()
    assert len(rows) == 4
    assert rows[2].startswith("| C1 | 100 | 90 / 112 / 130 | 0.123 | 0.123 | 1.500 |")
    assert rows[3].startswith("| C2 (excluded) | n/a | n/a |")


def test_main_reads_the_last_line_and_prints_each_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = {**_BLOCK, "datasets": {"hust": _BLOCK}}
    path = tmp_path / "run.json"
    path.write_text("progress line\n" + json.dumps(result) + "\n")
    main([str(path), "--cells"])
    out = capsys.readouterr().out
    assert "**all held-out cells**" in out and "**hust**" in out and out.count("| C1 |") == 2

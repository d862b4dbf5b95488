"""Markdown tables of a remaining-life evaluation's JSON (``bms models eval``'s last line).

``python -m models.eval_report RESULT.json [--cells]`` prints, per protocol block (the whole
run, and each dataset of a leave-one-dataset-out run), the mean ± sd over seeds of every
method and metric, and with ``--cells`` one row per cell (the first seed's run). This is how
the tables of BENCHMARKS.md are made, so they can be remade from a rerun.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["cell_table", "main", "mean_table"]

_COLUMNS = (
    ("rul_rel_error_at_25pct", "RUL error from 25 %"),
    ("rul_rel_error_at_50pct", "RUL error from 50 %"),
    ("capacity_rmse_to_eol_pct_nominal", "capacity RMSE to EOL, % nominal"),
    ("capacity_rmse_pct_nominal", "capacity RMSE to end of data, % nominal"),
    ("eol_in_band_at_25pct", "EOL in p10-p90 from 25 %"),
    ("eol_in_band_at_50pct", "EOL in p10-p90 from 50 %"),
)


_NONE = "n/a"


def _fmt(value: float | None, sd: float | None = None) -> str:
    if value is None:
        return _NONE
    return f"{value:.3f}" if sd is None else f"{value:.3f} ± {sd:.3f}"


def mean_table(block: Mapping[str, Any]) -> str:
    """Methods by metrics, mean ± sd over seeds (or the single run's mean)."""
    over = block.get("over_seeds")
    mean = over["mean"] if over else block["mean"]
    sd = over["sd"] if over else None
    lines = ["| method | " + " | ".join(label for _, label in _COLUMNS) + " |"]
    lines.append("| --- |" + " ---: |" * len(_COLUMNS))
    for method, metrics in mean.items():
        cells = [_fmt(metrics.get(k), None if sd is None else sd[method].get(k)) for k, _ in _COLUMNS]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cell_table(block: Mapping[str, Any]) -> str:
    """One row per cell: true EOL, the model's and each baseline's RUL error from 50 %, the
    model's p10/p50/p90 EOL from 50 % and its capacity RMSE to EOL."""
    methods = list(block["mean"])
    head = "| cell | true EOL | model EOL p10 / p50 / p90 from 50 % | " + " | ".join(
        f"{m}: error from 50 %" for m in methods
    ) + " | model RMSE to EOL % |"
    lines = [head, "| --- | ---: | ---: |" + " ---: |" * len(methods) + " ---: |"]
    for cell, r in block["cells"].items():
        eol = r.get("true_eol_cycle")
        pred = r.get("predicted_eol_cycle", {}).get("model", {})
        band = (
            f"{pred['50pct_p10']:.0f} / {pred['50pct']:.0f} / {pred['50pct_p90']:.0f}"
            if "50pct" in pred and "50pct_p10" in pred
            else _NONE
        )
        errors = [_fmt(r.get(m, {}).get("rul_rel_error_at_50pct")) for m in methods]
        rmse = _fmt(r.get("model", {}).get("capacity_rmse_to_eol_pct_nominal"))
        note = " (excluded)" if "excluded_reason" in r else ""
        lines.append(f"| {cell}{note} | {eol if eol is not None else _NONE} | {band} | " + " | ".join(errors) + f" | {rmse} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("result", type=Path, help="A file whose last line is the evaluation's JSON")
    parser.add_argument("--cells", action="store_true", help="Also one row per cell")
    args = parser.parse_args(argv)
    result = json.loads(args.result.read_text().strip().splitlines()[-1])
    blocks = {"all held-out cells": result, **result.get("datasets", {})}
    for name, block in blocks.items():
        print(f"**{name}** ({block.get('n_cells_in_mean')} cells reach end of life and are in the mean)\n")
        print(mean_table(block) + "\n")
        if args.cells:
            print(cell_table(block) + "\n")


if __name__ == "__main__":
    main()

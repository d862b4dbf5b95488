"""Run `bms bench route` over a folder of instances and summarise the gaps by class.

Instances run one after another in this process (a parallel run would measure a machine
shared with itself). Each result is appended to a JSON-lines file as soon as it exists, so
an interrupted run resumes where it stopped; the markdown table is rebuilt from that file::

    .venv/bin/python -m bms.bench.route_table ../shared/data/solomon/txt \\
        --time-limit 30 --objective distance --engine both \\
        --out route_table.jsonl --table route_table.md
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import traceback
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from bms.bench.route import main_route

__all__ = ["engine_gap_table", "instance_class", "main", "markdown_table", "run_table"]

_CLASS = re.compile(r"^(RC|R|C)([12])", re.IGNORECASE)


def instance_class(name: str) -> str:
    """Solomon class of an instance name: ``"RC101"`` and ``"rc1_2_1"`` are both ``"RC1"``."""
    match = _CLASS.match(name)
    return (match.group(1) + match.group(2)).upper() if match else "other"


def _engine(row: dict[str, Any]) -> str:
    # Rows from before the engine seam were OR-Tools'.
    return str(row.get("engine", "ortools"))


def _done(out: Path, time_limit_s: float, objective: str, engine: str) -> set[str]:
    if not out.is_file():
        return set()
    done = set()
    for line in out.read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        if row.get("time_limit_s") == time_limit_s and row.get("objective") == objective and _engine(row) == engine:
            done.add(row["file"])
    return done


def run_table(
    directory: Path,
    time_limit_s: float,
    objective: str,
    out: Path,
    *,
    pattern: str = "*.txt",
    resume: bool = True,
    engines: Sequence[str] = ("ortools",),
) -> list[dict[str, Any]]:
    """Solve every instance of ``directory`` in name order, appending one JSON line each to ``out``.

    Parameters
    ----------
    directory
        Folder of Solomon-format files.
    time_limit_s, objective
        As for :func:`bms.bench.route.main_route`.
    out
        JSON-lines file; created if missing, appended to otherwise.
    pattern
        Glob selecting the instance files.
    resume
        Skip files that ``out`` already holds for this time limit, objective and engine.
    engines
        The engines to run, each on every file (one after the other per file).

    Returns
    -------
    list of dict
        Every row of ``out`` for this time limit and objective, old and new.
    """
    files = sorted(directory.glob(pattern))
    if not files:
        raise FileNotFoundError(f"Expected instance files matching {pattern!r} in {directory}, got none.")
    skip = {e: _done(out, time_limit_s, objective, e) if resume else set() for e in engines}
    out.parent.mkdir(parents=True, exist_ok=True)
    for path in files:
        for engine in engines:
            if path.name in skip[engine]:
                continue
            try:
                row = main_route(path, time_limit_s, objective, engine=engine)
            except Exception as err:  # one bad instance must not lose the rest of a long run
                traceback.print_exc()
                row = {"instance": path.stem, "objective": objective, "engine": engine, "error": f"{type(err).__name__}: {err}"}
            row = {"file": path.name, "time_limit_s": time_limit_s, **row}
            with out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
    rows = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    return [
        r for r in rows
        if r.get("time_limit_s") == time_limit_s and r.get("objective") == objective and _engine(r) in engines
    ]  # fmt: skip


def _mean(values: Iterable[float]) -> str:
    values = list(values)
    return f"{statistics.fmean(values):.2f}" if values else "-"


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """Per class and size: feasibility, vehicles against BKS, and mean and max gap.

    ``gap %`` is over the BKS distance of the run's objective; ``at BKS veh.`` counts
    instances solved with no more vehicles than the BKS.
    """
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for row in rows:
        key = (instance_class(str(row.get("instance", ""))), int(row.get("customers", 0)))
        groups.setdefault(key, []).append(row)
    header = (
        "| class | customers | instances | feasible | vehicles | BKS vehicles | at BKS veh. "
        "| mean gap % | max gap % | mean time s |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    lines = [header]

    def line(label: str, customers: str, group: list[dict[str, Any]]) -> str:
        ok = [r for r in group if "error" not in r]
        with_bks = [r for r in ok if "gap_pct" in r]
        gaps = [r["gap_pct"] for r in with_bks]
        cells = [
            label,
            customers,
            str(len(group)),
            str(sum(bool(r["feasible"]) for r in ok)),
            _mean(r["vehicles"] for r in ok),
            _mean(r["bks_vehicles"] for r in with_bks),
            f"{sum(r['vehicles'] <= r['bks_vehicles'] for r in with_bks)}/{len(with_bks)}"
            if with_bks
            else "-",
            _mean(gaps),
            f"{max(gaps):.2f}" if gaps else "-",
            _mean(r["time_s"] for r in ok),
        ]
        return "| " + " | ".join(cells) + " |"

    for (label, customers), group in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        lines.append(line(label, str(customers), group))
    lines.append(line("**all**", "", list(rows)))
    errors = [r for r in rows if "error" in r]
    if errors:
        lines.append("")
        lines.extend(f"- {r['instance']}: {r['error']}" for r in errors)
    return "\n".join(lines) + "\n"


def engine_gap_table(rows: Sequence[dict[str, Any]]) -> str:
    """Per instance, each engine's vehicles and distance and its gap to the better of the
    engines (less distance; under the hierarchical objective fewer vehicles first; an
    infeasible plan is no candidate): the comparison for instances without a best-known
    solution."""
    by_instance: dict[str, dict[str, dict[str, Any]]] = {}
    for r in rows:
        if "error" not in r:
            by_instance.setdefault(str(r["instance"]), {})[_engine(r)] = r
    engines = sorted({e for runs in by_instance.values() for e in runs})
    head = "| instance | customers | " + " | ".join(f"{e} vehicles | {e} distance | {e} gap %" for e in engines) + " |"
    lines = [head, "|---|---:|" + "---:|" * (3 * len(engines))]
    gaps: dict[str, list[float]] = {e: [] for e in engines}
    for name, runs in sorted(by_instance.items(), key=lambda kv: (int(next(iter(kv[1].values()))["customers"]), kv[0])):
        feasible = [r for r in runs.values() if r["feasible"]]
        # DIMACS's "distance" objective leaves the vehicles free; "hierarchical" counts them first.
        vehicles_first = any(r.get("objective") == "hierarchical" for r in feasible)
        best = min(feasible, key=lambda r: (r["vehicles"] if vehicles_first else 0, r["distance"])) if feasible else None
        cells = [name, str(next(iter(runs.values()))["customers"])]
        for e in engines:
            if e not in runs:
                cells += ["-", "-", "-"]
                continue
            r = runs[e]
            gap = "infeasible"
            if r["feasible"] and best is not None:
                g = 100.0 * (r["distance"] - best["distance"]) / best["distance"]
                gaps[e].append(g)
                gap = f"{g:.2f}" + (f" (+{r['vehicles'] - best['vehicles']} veh.)" if r["vehicles"] > best["vehicles"] else "")
            cells += [str(r["vehicles"]), f"{r['distance']:.1f}", gap]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("| " + " | ".join(["**mean gap**", "", *(c for e in engines for c in ("", "", _mean(gaps[e])))]) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: run a folder, write the JSON lines and the markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path, help="folder of Solomon-format .txt files")
    parser.add_argument("--time-limit", type=float, default=30.0, help="search seconds per instance")
    parser.add_argument("--objective", choices=["distance", "hierarchical"], default="distance")
    parser.add_argument("--out", type=Path, default=Path("route_table.jsonl"), help="JSON lines")
    parser.add_argument("--table", type=Path, default=Path("route_table.md"), help="markdown table")
    parser.add_argument("--pattern", default="*.txt", help="glob of instance files")
    parser.add_argument("--no-resume", action="store_true", help="rerun files already in --out")
    parser.add_argument("--engine", choices=["ortools", "pyvrp", "both"], default="ortools", help="routing engine(s)")
    args = parser.parse_args(argv)
    engines = ("ortools", "pyvrp") if args.engine == "both" else (args.engine,)
    rows = run_table(
        args.directory, args.time_limit, args.objective, args.out,
        pattern=args.pattern, resume=not args.no_resume, engines=engines,
    )
    table = ""
    for engine in engines:
        table += f"Solomon routing, engine {engine}, objective {args.objective}, time limit {args.time_limit:g} s\n\n"
        table += markdown_table([r for r in rows if _engine(r) == engine]) + "\n"
    if len(engines) > 1:
        table += "Engines side by side (gap to the better of them)\n\n" + engine_gap_table(rows)
    args.table.write_text(table)
    sys.stdout.write(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

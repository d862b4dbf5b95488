"""The what-if report: one folder a planner can open, diff and check by hand.

A run's numbers go out twice: as tables for a spreadsheet or a script (``kpis.csv``,
``comparison.csv``, ``kpis.json``) and as ``summary.md`` with four plots for a person. The
summary states the unit costs next to the cost KPIs, so each EUR figure can be recomputed.

The tables and the summary are byte-identical for identical inputs (no timestamps, scenarios
in order of first appearance in the results), so two reports can be diffed and a report
checked into a repository changes only when a result does.

matplotlib is imported inside :func:`write_report`, so importing this module (the HTTP API
does, to list report files) stays cheap. Figures are drawn on ``matplotlib.figure.Figure``
directly rather than through pyplot: nothing is shown, no global backend or figure registry
is touched, and two reports can be written from two threads.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import numpy.typing as npt

from sim.compare import KpiDifference, compare, summarise
from sim.kpis import DAY_KPIS, RunResult
from sim.scenario import Scenario

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["PLOT_FILES", "write_report"]

#: The plots of a report, in the order the summary shows them, with their captions.
PLOT_FILES: tuple[tuple[str, str], ...] = (
    ("availability_by_hour.png", "Availability by hour of day"),
    ("lost_rides_by_zone.png", "Lost rides on the map"),
    ("soh_end.png", "Battery SOH at the end of the run"),
    ("technician_utilisation.png", "Technician utilisation and swaps per technician-hour"),
)

_DPI = 110
_HOURS_PER_DAY = 24


_Kind = Literal["pct", "count", "amount", "eur"]
_DECIMALS: dict[_Kind, int] = {"pct": 1, "count": 1, "amount": 1, "eur": 2}


def _fmt(v: float, kind: _Kind, *, diff: bool = False) -> str:
    """A number for the summary: thousands separators, 1 decimal (2 for EUR), signed if ``diff``.

    A count shows no decimals when whole (one seed, or seeds that agree); a mean over seeds or
    a difference keeps one, so the columns of a comparison line up. ``z`` turns a rounded -0.0
    into 0.0.
    """
    decimals = 0 if kind == "count" and not diff and float(v).is_integer() else _DECIMALS[kind]
    return f"{v:{'+' if diff else ''}z,.{decimals}f}"


#: Headline KPIs of the summary: name, label with unit, number kind.
_HEADLINE: tuple[tuple[str, str, _Kind], ...] = (
    ("availability_pct", "availability (%)", "pct"),
    ("rides_served", "rides served", "count"),
    ("rides_lost_low_charge", "rides lost, low charge", "count"),
    ("rides_lost_no_vehicle", "rides lost, no vehicle", "count"),
    ("swaps_done", "swaps done", "count"),
    ("visits_failed", "visits failed", "count"),
    ("technician_km", "technician driving (km)", "amount"),
    ("technician_utilisation_pct", "technician utilisation (%)", "pct"),
    ("batteries_eol", "batteries at end of life", "count"),
    ("energy_charged_kwh", "energy charged (kWh)", "amount"),
    ("cost_per_ride_eur", "cost per ride served (EUR)", "eur"),
)


def _colour(i: int) -> str:
    """One colour per scenario, the same in every plot."""
    return f"C{i % 10}"


def _check_inputs(results: Sequence[RunResult], scenarios: Mapping[str, Scenario]) -> list[str]:
    if not results:
        raise ValueError("expected at least one RunResult, got none")
    names = list(dict.fromkeys(r.scenario for r in results))
    missing = [n for n in names if n not in scenarios]
    if missing:
        raise ValueError(
            f"expected a Scenario for every run's scenario, missing {missing}; got {sorted(scenarios)}"
        )
    for r in results:
        if len(r.availability_by_hour_pct) != _HOURS_PER_DAY:
            raise ValueError(
                f"scenario {r.scenario!r} seed {r.seed}: expected {_HOURS_PER_DAY} values in "
                f"availability_by_hour_pct, got {len(r.availability_by_hour_pct)}"
            )
        for i, day in enumerate(r.days, start=1):
            absent = [k for k in DAY_KPIS if k not in day]
            if absent:
                raise ValueError(
                    f"scenario {r.scenario!r} seed {r.seed} day {i}: expected every DAY_KPIS key, missing {absent}"
                )
    return names


# ---------------------------------------------------------------------------- tables


def _kpis_csv(results: Sequence[RunResult]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["scenario", "seed", "day", *DAY_KPIS])
    for r in results:
        for i, day in enumerate(r.days, start=1):
            w.writerow([r.scenario, r.seed, i, *(day[k] for k in DAY_KPIS)])
        w.writerow([r.scenario, r.seed, "total", *(r.total[k] for k in DAY_KPIS)])
    return buf.getvalue()


def _comparison_csv(diffs: Sequence[KpiDifference]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    header = list(KpiDifference.__dataclass_fields__)
    w.writerow(header)
    for d in diffs:
        row = asdict(d)
        row["seeds"] = " ".join(str(s) for s in d.seeds)
        w.writerow(["" if row[k] is None else row[k] for k in header])
    return buf.getvalue()


def _kpis_json(
    results: Sequence[RunResult],
    summary: Mapping[str, Mapping[str, tuple[float, float, int]]],
    diffs: Sequence[KpiDifference],
) -> str:
    doc = {
        "runs": [r.to_dict() for r in results],
        "summary": {
            name: {kpi: {"mean": m, "sd": sd, "seeds": n} for kpi, (m, sd, n) in kpis.items()}
            for name, kpis in summary.items()
        },
        "comparison": [asdict(d) for d in diffs],
    }
    return json.dumps(doc, indent=1) + "\n"


# ---------------------------------------------------------------------------- markdown


def _table(
    header: Sequence[str], rows: Sequence[Sequence[str]], align_right_from: int = 1
) -> list[str]:
    aligns = ["---" if i < align_right_from else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(aligns) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _ci_cell(d: KpiDifference, kind: _Kind) -> str:
    diff = _fmt(d.mean_difference, kind, diff=True)
    if d.ci95_low is None or d.ci95_high is None:
        return f"{diff} [n/a]"
    return f"{diff} [{_fmt(d.ci95_low, kind, diff=True)}, {_fmt(d.ci95_high, kind, diff=True)}]"


def _summary_md(
    names: Sequence[str],
    results: Sequence[RunResult],
    scenarios: Mapping[str, Scenario],
    summary: Mapping[str, Mapping[str, tuple[float, float, int]]],
    baseline: str | None,
    diffs: Sequence[KpiDifference],
) -> str:
    seeds = {n: sorted(r.seed for r in results if r.scenario == n) for n in names}
    out = [f"# What-if report: {', '.join(names)}", ""]
    out.append(
        f"Generated from {len(results)} runs: "
        + "; ".join(f"`{n}` (seeds {', '.join(str(s) for s in seeds[n])})" for n in names)
        + ". Values are means ± sample standard deviation over seeds, of each run's total"
        " (over all its simulated days)."
    )
    out += ["", "## Headline KPIs", ""]
    rows = [
        [
            label,
            *(
                f"{_fmt(summary[n][kpi][0], kind)} ± {_fmt(summary[n][kpi][1], kind)}"
                for n in names
            ),
        ]
        for kpi, label, kind in _HEADLINE
    ]
    out += _table(["KPI", *(f"`{n}`" for n in names)], rows)

    if baseline is not None and diffs:
        out += ["", f"## Compared with `{baseline}`", ""]
        out.append(
            "Difference of the means (scenario - baseline) over the seeds both ran, with the 95 % "
            "confidence interval of the paired difference in brackets (n/a with one seed)."
        )
        by_key = {(d.scenario, d.kpi): d for d in diffs}
        for n in names:
            if n == baseline:
                continue
            first = by_key[(n, DAY_KPIS[0])]
            out += ["", f"### `{n}` (seeds {', '.join(str(s) for s in first.seeds)})", ""]
            rows = []
            for kpi, label, kind in _HEADLINE:
                d = by_key[(n, kpi)]
                rel = (
                    "n/a"
                    if d.relative_difference_pct is None
                    else f"{_fmt(d.relative_difference_pct, 'pct', diff=True)} %"
                )
                rows.append(
                    [
                        label,
                        _fmt(d.baseline_mean, kind),
                        _fmt(d.scenario_mean, kind),
                        _ci_cell(d, kind),
                        rel,
                    ]
                )
            out += _table(
                ["KPI", f"`{baseline}`", f"`{n}`", "difference [95 % CI]", "relative"], rows
            )

    out += ["", "## Unit costs", ""]
    cost_fields = list(scenarios[names[0]].costs.model_dump())
    rows = [
        [f"`{f}`", *(_fmt(getattr(scenarios[n].costs, f), "eur") for n in names)]
        for f in cost_fields
    ]
    out += _table(["unit cost", *(f"`{n}`" for n in names)], rows)

    out += ["", "## Scenarios"]
    for n in names:
        sc = scenarios[n]
        out += ["", f"### `{n}`", ""]
        out.append(
            f"{sc.fleet.vehicles:,} vehicles, {sc.technicians:,} technicians, {sc.days:,} "
            f"day{'s' if sc.days != 1 else ''} from {sc.start_date.isoformat()}, "
            f"end of life below {100 * sc.fleet.eol_soh:.1f} % SOH."
        )
        if sc.description.strip():
            out += ["", sc.description.strip()]

    out += ["", "## Plots"]
    for file, caption in PLOT_FILES:
        out += ["", f"![{caption}]({file})"]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------- plots


def _new_figure(width_in: float, height_in: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width_in, height_in), dpi=_DPI, layout="constrained")


def _save(fig: Figure, path: Path) -> None:
    # No "Software" entry: the PNG then depends on the drawing alone, not on the version.
    fig.savefig(path, dpi=_DPI, format="png", metadata={"Software": None})


def _plot_availability(names: Sequence[str], results: Sequence[RunResult], path: Path) -> None:
    fig = _new_figure(8.0, 4.5)
    ax = fig.add_subplot()
    hours = np.arange(_HOURS_PER_DAY)
    for i, n in enumerate(names):
        per_seed = np.array(
            [r.availability_by_hour_pct for r in results if r.scenario == n], dtype=float
        )
        ax.fill_between(
            hours, per_seed.min(axis=0), per_seed.max(axis=0), color=_colour(i), alpha=0.15, lw=0
        )
        ax.plot(
            hours,
            per_seed.mean(axis=0),
            color=_colour(i),
            lw=2,
            marker=".",
            label=f"{n} ({len(per_seed)} seeds)",
        )
    ax.set_xlim(0, _HOURS_PER_DAY - 1)
    ax.set_xticks(np.arange(0, _HOURS_PER_DAY, 3))
    ax.set_xlabel("local hour of day (h)")
    ax.set_ylabel("availability (%)")
    ax.set_title("Availability by hour of day: mean over seeds, band min to max")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    _save(fig, path)


_Floats = npt.NDArray[np.float64]


def _zone_totals(runs: Sequence[RunResult]) -> tuple[_Floats, _Floats, _Floats, _Floats]:
    """Per zone (first appearance order): lat, lon, requests and lost rides, each a mean per run."""
    zones: dict[str, list[float]] = {}
    for r in runs:
        for z in r.zones:
            acc = zones.setdefault(z.zone, [z.lat, z.lon, 0.0, 0.0])
            acc[2] += z.requested
            acc[3] += z.lost_low_charge + z.lost_no_vehicle
    a = np.array(list(zones.values()), dtype=np.float64).reshape(-1, 4)
    return a[:, 0], a[:, 1], a[:, 2] / len(runs), a[:, 3] / len(runs)


def _plot_lost_rides(names: Sequence[str], results: Sequence[RunResult], path: Path) -> None:
    from matplotlib.colors import Normalize
    from matplotlib.lines import Line2D

    per_scenario = {n: _zone_totals([r for r in results if r.scenario == n]) for n in names}
    max_lost = max((float(z[3].max()) for z in per_scenario.values() if z[3].size), default=0.0)
    shares_pct = [100 * z[3][z[2] > 0] / z[2][z[2] > 0] for z in per_scenario.values()]
    max_share_pct = max((float(s.max()) for s in shares_pct if s.size), default=0.0)
    # One scale for every panel, so equal markers mean equal losses: the worst zone gets 300 pt^2.
    area_per_ride = 300.0 / max_lost if max_lost > 0 else 0.0
    min_area = 6.0  # a zone with requests but no loss still shows its colour
    norm = Normalize(vmin=0.0, vmax=max(max_share_pct, 1.0))

    ncols = min(len(names), 3)
    nrows = math.ceil(len(names) / ncols)
    fig = _new_figure(4.2 * ncols + 1.2, 4.2 * nrows + 0.8)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    mappable = None
    for i, n in enumerate(names):
        ax = axes[i // ncols][i % ncols]
        lat, lon, requested, lost = per_scenario[n]
        quiet = requested <= 0
        busy = ~quiet
        ax.scatter(lon[quiet], lat[quiet], s=4, color="0.85")
        mappable = ax.scatter(
            lon[busy], lat[busy], s=np.maximum(lost[busy] * area_per_ride, min_area),
            c=100 * lost[busy] / requested[busy], cmap="viridis", norm=norm, alpha=0.85,
            edgecolors="0.3", linewidths=0.3,
        )  # fmt: skip
        if lat.size:
            # A degree of longitude is cos(lat) as long as one of latitude.
            ax.set_aspect(1.0 / max(math.cos(math.radians(float(np.mean(lat)))), 0.01))
        ax.set_xlabel("longitude (°)")
        ax.set_ylabel("latitude (°)")
        ax.set_title(f"{n}: {lost.sum():,.0f} lost rides per run", color=_colour(i), fontsize=10)
        ax.tick_params(labelsize=7)
    if area_per_ride > 0:
        refs = sorted({float(f"{max_lost * f:.2g}") for f in (0.25, 0.5, 1.0)} - {0.0})
        handles = [
            Line2D(
                [],
                [],
                ls="",
                marker="o",
                markersize=math.sqrt(max(v * area_per_ride, min_area)),
                color="0.5",
            )
            for v in refs
        ]
        axes[0][0].legend(
            handles,
            [f"{v:,.4g}" for v in refs],
            title="lost rides",
            fontsize=7,
            title_fontsize=7,
            loc="best",
        )
    for j in range(len(names), nrows * ncols):
        axes[j // ncols][j % ncols].set_visible(False)
    if mappable is not None:
        fig.colorbar(
            mappable, ax=axes.ravel().tolist(), label="share of requests lost (%)", shrink=0.8
        )
    fig.suptitle(
        "Lost rides on the map: low charge + no vehicle, mean per run over seeds (grey: no requests)"
    )
    _save(fig, path)


def _plot_soh(
    names: Sequence[str],
    results: Sequence[RunResult],
    scenarios: Mapping[str, Scenario],
    path: Path,
) -> None:
    fig = _new_figure(8.0, 4.5)
    ax = fig.add_subplot()
    pooled = {
        n: 100 * np.array([s for r in results if r.scenario == n for s in r.soh_end], dtype=float)
        for n in names
    }
    eols = {n: 100 * scenarios[n].fleet.eol_soh for n in names}
    values = np.concatenate([*pooled.values(), np.array(list(eols.values()))])
    lo, hi = float(values.min()), float(values.max())
    if hi - lo < 1e-9:
        lo, hi = lo - 1.0, hi + 1.0
    bins = [float(b) for b in np.linspace(lo, hi, 41)]  # shared, so the steps compare
    for i, n in enumerate(names):
        ax.hist(
            pooled[n],
            bins=bins,
            histtype="step",
            lw=1.8,
            color=_colour(i),
            label=f"{n} ({pooled[n].size:,} batteries)",
        )
    if len(set(eols.values())) == 1:
        eol = eols[names[0]]
        ax.axvline(eol, ls="--", lw=1.2, color="k", label=f"end of life ({eol:g} %)")
    else:
        for i, n in enumerate(names):
            ax.axvline(
                eols[n],
                ls="--",
                lw=1.2,
                color=_colour(i),
                label=f"end of life, {n} ({eols[n]:g} %)",
            )
    ax.set_xlabel("state of health at the end (%)")
    ax.set_ylabel("batteries (all seeds pooled)")
    ax.set_title("Battery SOH at the end of the run")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    _save(fig, path)


def _swaps_per_technician_hour(r: RunResult) -> float:
    # No technician on shift: no swaps either, so 0 rather than a division by zero.
    hours = r.total["technician_hours"]
    return r.total["swaps_done"] / hours if hours > 0 else 0.0


def _plot_technicians(
    names: Sequence[str],
    results: Sequence[RunResult],
    summary: Mapping[str, Mapping[str, tuple[float, float, int]]],
    path: Path,
) -> None:
    fig = _new_figure(9.0, 4.2)
    ax_util, ax_swaps = fig.subplots(1, 2)
    x = np.arange(len(names))
    colours = [_colour(i) for i in range(len(names))]
    util = [summary[n]["technician_utilisation_pct"] for n in names]
    ax_util.bar(
        x, [u[0] for u in util], yerr=[u[1] for u in util], color=colours, capsize=4, alpha=0.85
    )
    ax_util.set_ylabel("technician utilisation (%)")
    ax_util.set_title("Busy share of shift hours", fontsize=10)
    rates = [[_swaps_per_technician_hour(r) for r in results if r.scenario == n] for n in names]
    ax_swaps.bar(
        x, [float(np.mean(v)) for v in rates], yerr=[float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for v in rates],
        color=colours, capsize=4, alpha=0.85,
    )  # fmt: skip
    ax_swaps.set_ylabel("swaps per technician-hour (1/h)")
    ax_swaps.set_title("Swaps done per hour on shift", fontsize=10)
    for ax in (ax_util, ax_swaps):
        ax.set_xticks(x, list(names), rotation=20 if len(names) > 3 else 0, fontsize=8)
        ax.set_xlabel("scenario")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("Technicians: mean over seeds, error bars one standard deviation")
    _save(fig, path)


# ---------------------------------------------------------------------------- entry point


def write_report(
    results: Sequence[RunResult],
    out_dir: Path,
    scenarios: Mapping[str, Scenario],
    baseline: str | None,
) -> Path:
    """Write the report folder of a what-if study and return the path of ``summary.md``.

    Parameters
    ----------
    results
        Every run, one per (scenario, seed); scenarios appear in the report in the order
        they first appear here.
    out_dir
        The report folder; created when missing, its report files overwritten.
    scenarios
        The scenario of every name in ``results`` (for unit costs, end-of-life SOH and
        descriptions); extra entries are ignored.
    baseline
        Scenario the others are compared with (paired by seed), or ``None`` for no comparison.

    Returns
    -------
    Path
        ``out_dir / "summary.md"``. Next to it: ``kpis.csv``, ``kpis.json``, the four PNGs of
        :data:`PLOT_FILES` and, with a baseline and another scenario, ``comparison.csv``.

    Raises
    ------
    ValueError
        No results; a run's scenario missing from ``scenarios``; a baseline not among the
        results; runs that cannot be paired (see :func:`sim.compare.compare`); a day or
        total without every KPI; an hourly availability without 24 values.
    """
    names = _check_inputs(results, scenarios)
    summary = summarise(results)
    diffs = compare(results, baseline) if baseline is not None else []

    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {
        "kpis.csv": _kpis_csv(results),
        "kpis.json": _kpis_json(results, summary, diffs),
        "summary.md": _summary_md(names, results, scenarios, summary, baseline, diffs),
    }
    comparison = out_dir / "comparison.csv"
    if diffs:
        files["comparison.csv"] = _comparison_csv(diffs)
    else:
        # A comparison left over from an earlier report in this folder would contradict this one.
        comparison.unlink(missing_ok=True)
    for file, text in files.items():
        (out_dir / file).write_bytes(text.encode("utf-8"))

    plots: dict[str, Callable[[Path], None]] = {
        "availability_by_hour.png": lambda p: _plot_availability(names, results, p),
        "lost_rides_by_zone.png": lambda p: _plot_lost_rides(names, results, p),
        "soh_end.png": lambda p: _plot_soh(names, results, scenarios, p),
        "technician_utilisation.png": lambda p: _plot_technicians(names, results, summary, p),
    }
    for file, _caption in PLOT_FILES:
        plots[file](out_dir / file)
    return out_dir / "summary.md"

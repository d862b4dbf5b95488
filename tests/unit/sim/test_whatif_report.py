"""Tests for :mod:`sim.compare` and :mod:`sim.report`: paired what-if comparison and its report.

The runs are built by hand (three scenarios x three seeds, two days, three zones, two
technicians) with totals that add up, so every expected number can be worked out on paper.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pytest
from scipy import stats

from sim.compare import compare, summarise
from sim.kpis import DAY_KPIS, RunResult, TechnicianKpis, ZoneKpis, finish_costs
from sim.report import PLOT_FILES, write_report
from sim.scenario import CostConfig, DepotConfig, Scenario, ShiftConfig

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SEEDS = (1, 2, 3)
BASELINE = "baseline"
# rides_served over the run, per seed: plus2_technicians serves 1, 2, 3 more than baseline.
SERVED = {
    "baseline": (100, 110, 120),
    "plus2_technicians": (101, 112, 123),
    "threshold": (90, 95, 97),
}
COSTS = CostConfig()


def _day(served: float, seed: int, technicians: int) -> dict[str, float]:
    """One day's raw counts; the derived KPIs are filled the way the simulator fills them."""
    k: dict[str, float] = {
        "vehicle_hours": 240.0,
        "available_vehicle_hours": 200.0 + seed,
        "rides_requested": served + 6.0,
        "rides_served": served,
        "rides_lost_low_charge": 4.0,
        "rides_lost_no_vehicle": 2.0,
        "swaps_done": 3.0 * technicians,
        "inspections_done": 1.0,
        "visits_failed": float(seed % 2),
        "technician_km": 20.0 * technicians + seed,
        "technician_hours": 8.0 * technicians,
        "technician_busy_hours": 5.0 * technicians + 0.5 * seed,
        "batteries_eol": 1.0,
        "energy_ride_kwh": 10.0,
        "energy_charged_kwh": 12.0 + seed,
    }
    finish_costs(k, **COSTS.model_dump())
    return k


def _run(scenario: str, seed: int, served_total: float, technicians: int = 2) -> RunResult:
    """A two-day run whose total is the sum of its days (ratios and costs recomputed)."""
    days = [_day(served_total / 2, seed, technicians) for _ in range(2)]
    raw = {k: sum(d[k] for d in days) for k in days[0]}
    finish_costs(raw, **COSTS.model_dump())
    total = {k: raw[k] for k in DAY_KPIS}
    lost = 12
    zones = [
        ZoneKpis("z0", 52.52, 13.40, requested=int(served_total) + lost, served=int(served_total), lost_low_charge=8,
                 lost_no_vehicle=4),
        ZoneKpis("z1", 52.53, 13.42, requested=0),
        ZoneKpis("z2", 52.51, 13.38, requested=5, served=5),
    ]  # fmt: skip
    techs = [
        TechnicianKpis(
            f"t{i}",
            "north",
            shift_hours=16.0,
            driving_hours=4.0,
            service_hours=6.0,
            km=40.0,
            jobs_done=6,
        )
        for i in range(technicians)
    ]
    return RunResult(
        scenario=scenario,
        seed=seed,
        days=days,
        total=total,
        availability_by_hour_pct=[80.0 + h % 5 + seed for h in range(24)],
        zones=zones,
        technicians=techs,
        soh_end=[0.69 + 0.01 * i + 0.001 * seed for i in range(20)],
    )


def _scenario(name: str, technicians: int, description: str) -> Scenario:
    return Scenario(
        name=name,
        description=description,
        days=2,
        depots=[
            DepotConfig(id="north", north_km=1.0, east_km=0.0, chargers=10, charged_batteries=20)
        ],
        shifts=[ShiftConfig(name="day", start_h=7.0, end_h=15.0, technicians=technicians)],
    )


@pytest.fixture(scope="module")
def results() -> list[RunResult]:
    """Three scenarios x three seeds, baseline first."""
    techs = {"baseline": 2, "plus2_technicians": 4, "threshold": 2}
    return [
        _run(name, seed, SERVED[name][i], techs[name])
        for name in SERVED
        for i, seed in enumerate(SEEDS)
    ]


@pytest.fixture(scope="module")
def scenarios() -> dict[str, Scenario]:
    return {
        "baseline": _scenario("baseline", 2, "Today's fleet and crew."),
        "plus2_technicians": _scenario(
            "plus2_technicians", 4, "Two more technicians on the day shift."
        ),
        "threshold": _scenario("threshold", 2, "Swap every battery below 30 %."),
    }


@pytest.fixture(scope="module")
def report_dirs(
    tmp_path_factory: pytest.TempPathFactory,
    results: list[RunResult],
    scenarios: dict[str, Scenario],
) -> tuple[Path, Path]:
    """The same report written twice, into two folders."""
    a = write_report(results, tmp_path_factory.mktemp("a") / "report", scenarios, BASELINE).parent
    b = write_report(results, tmp_path_factory.mktemp("b") / "report", scenarios, BASELINE).parent
    return a, b


# ---------------------------------------------------------------------------- compare


def test_ci_matches_a_hand_computation(results: list[RunResult]) -> None:
    """Per-seed differences 1, 2, 3: mean 2, half-width t(0.975, 2) * sd 1 / sqrt(3)."""
    diffs = {(d.scenario, d.kpi): d for d in compare(results, BASELINE)}
    d = diffs[("plus2_technicians", "rides_served")]
    half = stats.t.ppf(0.975, 2) * 1.0 / math.sqrt(3)
    assert d.seeds == SEEDS
    assert d.baseline_mean == pytest.approx(110.0)
    assert d.scenario_mean == pytest.approx(112.0)
    assert d.mean_difference == pytest.approx(2.0)
    assert d.ci95_low == pytest.approx(2.0 - half)
    assert d.ci95_high == pytest.approx(2.0 + half)
    assert d.relative_difference_pct == pytest.approx(100.0 * 2.0 / 110.0)


def test_compare_covers_every_other_scenario_and_kpi_in_order(results: list[RunResult]) -> None:
    """One difference per (non-baseline scenario, KPI), scenarios in order of first appearance."""
    diffs = compare(results, BASELINE)
    assert [(d.scenario, d.kpi) for d in diffs] == [
        (s, k) for s in ("plus2_technicians", "threshold") for k in DAY_KPIS
    ]


def test_identical_runs_give_a_zero_width_interval(results: list[RunResult]) -> None:
    """A scenario equal to the baseline on every seed differs by exactly 0, CI [0, 0]."""
    twin = [
        RunResult.from_dict({**r.to_dict(), "scenario": "twin"})
        for r in results
        if r.scenario == BASELINE
    ]
    d = next(
        d
        for d in compare([*results, *twin], BASELINE)
        if d.scenario == "twin" and d.kpi == "swaps_done"
    )
    assert (d.mean_difference, d.ci95_low, d.ci95_high, d.relative_difference_pct) == (
        0.0,
        0.0,
        0.0,
        0.0,
    )


def test_one_seed_gives_no_interval() -> None:
    """With one paired seed the difference is known but its interval is not."""
    diffs = compare([_run("baseline", 1, 100), _run("other", 1, 104)], "baseline")
    d = next(d for d in diffs if d.kpi == "rides_served")
    assert d.mean_difference == pytest.approx(4.0)
    assert d.ci95_low is None and d.ci95_high is None
    assert d.seeds == (1,)


def test_zero_baseline_mean_gives_no_relative_difference() -> None:
    """A relative change from zero is undefined, so it is None rather than inf."""
    diffs = compare([_run("baseline", 1, 100, technicians=0), _run("other", 1, 100)], "baseline")
    d = next(d for d in diffs if d.kpi == "swaps_done")
    assert d.baseline_mean == 0.0 and d.mean_difference == pytest.approx(12.0)
    assert d.relative_difference_pct is None


def test_only_shared_seeds_are_paired() -> None:
    """Seeds that only one scenario ran are left out of the pairing."""
    runs = [_run("baseline", s, 100 + s) for s in (1, 2, 3)] + [
        _run("other", s, 110 + s) for s in (2, 3, 4)
    ]
    d = next(d for d in compare(runs, "baseline") if d.kpi == "rides_served")
    assert d.seeds == (2, 3)
    # Unpaired means (102 and 113) would differ by 11.
    assert (d.baseline_mean, d.scenario_mean) == (pytest.approx(102.5), pytest.approx(112.5))
    assert d.mean_difference == pytest.approx(10.0)


def test_scenarios_without_a_shared_seed_raise() -> None:
    """No seed in common: the error names the scenario and both seed lists."""
    runs = [
        _run("baseline", 1, 100),
        _run("baseline", 2, 100),
        _run("other", 3, 100),
        _run("other", 4, 100),
    ]
    with pytest.raises(
        ValueError, match=r"'other'.*baseline 'baseline' \(seeds \[1, 2\]\), got seeds \[3, 4\]"
    ):
        compare(runs, "baseline")


def test_unknown_baseline_raises_naming_the_scenarios(results: list[RunResult]) -> None:
    """A baseline that did not run: the error lists the scenarios that did."""
    with pytest.raises(
        ValueError, match=r"\['baseline', 'plus2_technicians', 'threshold'\], got 'today'"
    ):
        compare(results, "today")


def test_two_runs_of_one_scenario_and_seed_raise() -> None:
    """A duplicated run would count one seed twice."""
    with pytest.raises(ValueError, match="two for scenario 'baseline' seed 1"):
        summarise([_run("baseline", 1, 100), _run("baseline", 1, 101)])


def test_summarise_gives_mean_sd_and_seeds(results: list[RunResult]) -> None:
    """Mean and sample sd over seeds per scenario and KPI; sd 0 with one seed."""
    summary = summarise(results)
    assert list(summary) == list(SERVED)
    assert list(summary["baseline"]) == list(DAY_KPIS)
    mean, sd, n = summary["baseline"]["rides_served"]
    assert (mean, n) == (pytest.approx(110.0), 3)
    assert sd == pytest.approx(10.0)
    assert summarise([_run("solo", 5, 42)])["solo"]["rides_served"] == (42.0, 0.0, 1)


# ---------------------------------------------------------------------------- report


def test_report_writes_every_file(report_dirs: tuple[Path, Path]) -> None:
    """Tables, summary and the four plots are there; the plots are PNG files."""
    out, _ = report_dirs
    expected = {
        "kpis.csv",
        "kpis.json",
        "comparison.csv",
        "summary.md",
        *(f for f, _ in PLOT_FILES),
    }
    assert {p.name for p in out.iterdir()} == expected
    for file, _ in PLOT_FILES:
        data = (out / file).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000, file


def test_kpis_csv_has_a_row_per_day_and_a_total_per_run(report_dirs: tuple[Path, Path]) -> None:
    """Header scenario, seed, day, then DAY_KPIS; two day rows and a total row per run."""
    out, _ = report_dirs
    rows = list(csv.reader(io.StringIO((out / "kpis.csv").read_text(encoding="utf-8"))))
    assert rows[0] == ["scenario", "seed", "day", *DAY_KPIS]
    assert len(rows) == 1 + 9 * 3
    assert [r[:3] for r in rows[1:4]] == [
        ["baseline", "1", "1"],
        ["baseline", "1", "2"],
        ["baseline", "1", "total"],
    ]
    total = dict(zip(rows[0], rows[3], strict=True))
    assert float(total["rides_served"]) == 100.0


def test_comparison_csv_and_json(report_dirs: tuple[Path, Path]) -> None:
    """One comparison row per (scenario, KPI); the JSON holds runs, summary and comparison."""
    out, _ = report_dirs
    rows = list(csv.DictReader(io.StringIO((out / "comparison.csv").read_text(encoding="utf-8"))))
    assert len(rows) == 2 * len(DAY_KPIS)
    served = next(
        r for r in rows if r["scenario"] == "plus2_technicians" and r["kpi"] == "rides_served"
    )
    assert float(served["mean_difference"]) == pytest.approx(2.0) and served["seeds"] == "1 2 3"
    doc = json.loads((out / "kpis.json").read_text(encoding="utf-8"))
    assert len(doc["runs"]) == 9 and RunResult.from_dict(doc["runs"][0]).seed == 1
    assert doc["summary"]["baseline"]["rides_served"] == {"mean": 110.0, "sd": 10.0, "seeds": 3}
    assert len(doc["comparison"]) == 2 * len(DAY_KPIS) and doc["comparison"][0]["seeds"] == [
        1,
        2,
        3,
    ]


def test_summary_has_the_comparison_costs_and_plot_links(report_dirs: tuple[Path, Path]) -> None:
    """The summary shows headline KPIs, the paired difference with its CI, unit costs and plots."""
    out, _ = report_dirs
    md = (out / "summary.md").read_text(encoding="utf-8")
    half = stats.t.ppf(0.975, 2) / math.sqrt(3)
    assert "| rides served | 110 ± 10 | 112 ± 11 | 94 ± 3.6 |" in md
    assert "## Compared with `baseline`" in md
    assert (
        f"| rides served | 110 | 112 | +2.0 [{2 - half:+.1f}, {2 + half:+.1f}] | "
        f"{200 / 110:+.1f} % |"
    ) in md
    assert "| `technician_eur_per_h` | 32.00 | 32.00 | 32.00 |" in md
    assert "Two more technicians on the day shift." in md
    for file, _ in PLOT_FILES:
        assert f"]({file})" in md


def test_same_inputs_give_identical_bytes(report_dirs: tuple[Path, Path]) -> None:
    """Two reports of the same runs are byte-identical in their tables and summary."""
    a, b = report_dirs
    for file in ("kpis.csv", "kpis.json", "comparison.csv", "summary.md"):
        assert (a / file).read_bytes() == (b / file).read_bytes(), file


def test_report_without_baseline_has_no_comparison(
    tmp_path: Path, results: list[RunResult], scenarios: dict[str, Scenario]
) -> None:
    """No baseline: no comparison table, and one left from an earlier report is removed."""
    (tmp_path / "comparison.csv").write_text("stale\n", encoding="utf-8")
    one_seed = [r for r in results if r.seed == 1]
    summary = write_report(one_seed, tmp_path, scenarios, None)
    assert not (tmp_path / "comparison.csv").exists()
    md = summary.read_text(encoding="utf-8")
    assert "Compared with" not in md
    assert "| rides served | 100 ± 0 | 101 ± 0 | 90 ± 0 |" in md


def test_report_needs_every_scenario(
    results: list[RunResult], scenarios: dict[str, Scenario], tmp_path: Path
) -> None:
    """A run whose scenario is not given cannot be reported (its unit costs are unknown)."""
    with pytest.raises(ValueError, match=r"missing \['threshold'\]"):
        write_report(
            results, tmp_path, {k: v for k, v in scenarios.items() if k != "threshold"}, BASELINE
        )

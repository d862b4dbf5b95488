"""Paired comparison of what-if scenarios: is a change better than the seeds' noise?

Every scenario runs over the same seeds, and a seed fixes the demand, the weather and the
faults, so two runs with one seed differ only by what the scenarios change. Differencing
per seed (scenario - baseline) removes that shared noise; the 95 % t-interval of the mean
difference then says whether the change shows through what remains. Unpaired intervals of
two means would be far wider for the same number of runs.

Only seeds that both scenarios ran are paired. Means in a :class:`KpiDifference` are over
those paired seeds, so its ``mean_difference`` is ``scenario_mean - baseline_mean`` (up to
rounding).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from sim.kpis import DAY_KPIS, RunResult

__all__ = ["KpiDifference", "compare", "summarise"]


@dataclass(frozen=True)
class KpiDifference:
    """One KPI of one scenario against the baseline, paired by seed.

    ``ci95_low`` / ``ci95_high`` bound the mean difference (Student t, ``len(seeds) - 1``
    degrees of freedom); ``None`` with fewer than two paired seeds. ``relative_difference_pct``
    is ``100 * mean_difference / baseline_mean``; ``None`` when the baseline mean is 0.
    """

    scenario: str
    kpi: str
    baseline_mean: float
    scenario_mean: float
    mean_difference: float
    ci95_low: float | None
    ci95_high: float | None
    seeds: tuple[int, ...]
    relative_difference_pct: float | None


def _by_scenario(results: Sequence[RunResult]) -> dict[str, dict[int, RunResult]]:
    """Runs per scenario (in order of first appearance), then per seed (as given)."""
    grouped: dict[str, dict[int, RunResult]] = {}
    for r in results:
        runs = grouped.setdefault(r.scenario, {})
        if r.seed in runs:
            raise ValueError(
                f"expected one run per scenario and seed, got two for scenario {r.scenario!r} seed {r.seed}"
            )
        runs[r.seed] = r
    return grouped


def _total(result: RunResult, kpi: str) -> float:
    try:
        return float(result.total[kpi])
    except KeyError:
        raise ValueError(
            f"scenario {result.scenario!r} seed {result.seed}: expected KPI {kpi!r} in total, "
            f"got keys {sorted(result.total)}"
        ) from None


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return mean, sd


def _t975(dof: int) -> float:
    # scipy.stats is imported here, not at module level: it takes a good fraction of a second
    # and only a comparison needs it.
    from scipy import stats

    return float(stats.t.ppf(0.975, dof))


def summarise(results: Sequence[RunResult]) -> dict[str, dict[str, tuple[float, float, int]]]:
    """Mean, sample standard deviation and number of seeds of every total KPI.

    Parameters
    ----------
    results
        Runs of one or more scenarios, at most one per (scenario, seed).

    Returns
    -------
    dict
        ``{scenario: {kpi: (mean, sd, seeds)}}`` with scenarios in order of first appearance
        in ``results`` and KPIs in :data:`sim.kpis.DAY_KPIS` order; ``sd`` is 0 with one seed.

    Raises
    ------
    ValueError
        Two runs with the same scenario and seed, or a run whose total lacks a KPI.
    """
    out: dict[str, dict[str, tuple[float, float, int]]] = {}
    for name, runs in _by_scenario(results).items():
        out[name] = {}
        for kpi in DAY_KPIS:
            mean, sd = _mean_sd([_total(r, kpi) for r in runs.values()])
            out[name][kpi] = (mean, sd, len(runs))
    return out


def compare(results: Sequence[RunResult], baseline: str) -> list[KpiDifference]:
    """Every other scenario against ``baseline``, KPI by KPI, paired by seed.

    Parameters
    ----------
    results
        Runs of ``baseline`` and the scenarios to compare, at most one per (scenario, seed).
    baseline
        The scenario name the others are compared with.

    Returns
    -------
    list of KpiDifference
        Scenarios in order of first appearance in ``results``, KPIs in
        :data:`sim.kpis.DAY_KPIS` order; empty when ``baseline`` is the only scenario.

    Raises
    ------
    ValueError
        ``baseline`` is not among the results' scenarios; a scenario shares no seed with
        the baseline; two runs with the same scenario and seed; a total lacks a KPI.
    """
    grouped = _by_scenario(results)
    if baseline not in grouped:
        raise ValueError(
            f"expected baseline among the results' scenarios {list(grouped)}, got {baseline!r}"
        )
    base_runs = grouped[baseline]
    out: list[KpiDifference] = []
    for name, runs in grouped.items():
        if name == baseline:
            continue
        seeds = tuple(sorted(s for s in runs if s in base_runs))
        if not seeds:
            raise ValueError(
                f"scenario {name!r}: expected seeds shared with baseline {baseline!r} "
                f"(seeds {sorted(base_runs)}), got seeds {sorted(runs)}"
            )
        n = len(seeds)
        half_factor = _t975(n - 1) / math.sqrt(n) if n > 1 else 0.0
        for kpi in DAY_KPIS:
            base = [_total(base_runs[s], kpi) for s in seeds]
            other = [_total(runs[s], kpi) for s in seeds]
            diffs = [o - b for o, b in zip(other, base, strict=True)]
            mean_diff, sd_diff = _mean_sd(diffs)
            base_mean = statistics.fmean(base)
            low: float | None = None
            high: float | None = None
            if n > 1:
                half = half_factor * sd_diff
                low, high = mean_diff - half, mean_diff + half
            out.append(
                KpiDifference(
                    scenario=name,
                    kpi=kpi,
                    baseline_mean=base_mean,
                    scenario_mean=statistics.fmean(other),
                    mean_difference=mean_diff,
                    ci95_low=low,
                    ci95_high=high,
                    seeds=seeds,
                    relative_difference_pct=100.0 * mean_diff / base_mean
                    if base_mean != 0
                    else None,
                )
            )
    return out

"""A fake what-if runner (the signature of :func:`runtime.whatif.run_whatif`) and its runs.

:class:`FakeRunner` reports progress in steps, can be held at the start of each job (an
``asyncio.Event``) or slowed (``step_s``), fails for a named scenario, and records what it
ran, what was cancelled and how many jobs ran at once. Its :class:`~sim.kpis.RunResult`
s come from :func:`run_result`: every KPI of :data:`sim.kpis.DAY_KPIS`, set by the
scenario's demand multiplier, technicians and temperature offset and by the seed, so
paired differences are real numbers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sim.kpis import DAY_KPIS, RunResult, TechnicianKpis, ZoneKpis
from sim.scenario import Scenario, scenario_from_mapping


@dataclass(frozen=True)
class Progress:
    """What run_whatif reports (the fields of runtime.whatif.WhatIfProgress)."""

    scenario: str
    seed: int
    run_index: int
    runs: int
    run_fraction: float
    overall: float


def scenario(name: str, seeds: Sequence[int] = (1, 2), **extra: Any) -> Scenario:
    """A small valid scenario (one depot, one shift)."""
    return scenario_from_mapping({
        "name": name, "seeds": list(seeds),
        "depots": [{"id": "d1", "north_km": 0.0, "east_km": 0.0, "chargers": 4, "charged_batteries": 10}],
        "shifts": [{"name": "day", "start_h": 8, "end_h": 16, "technicians": 2}],
        **extra,
    })  # fmt: skip


def run_result(s: Scenario, seed: int, batteries: int = 50) -> RunResult:
    """One run's KPIs: each a function of the scenario's demand, technicians, temperature
    offset and the seed."""
    level = s.demand.multiplier * 100.0 + s.technicians * 3.0 + s.weather.temp_offset_c + seed * 0.7
    total = {kpi: level + i for i, kpi in enumerate(DAY_KPIS)}
    total["availability_pct"] = min(99.0, 80.0 + s.technicians + seed * 0.1)
    return RunResult(
        scenario=s.name, seed=seed, days=[dict(total) for _ in range(s.days)], total=total,
        availability_by_hour_pct=[total["availability_pct"]] * 24,
        zones=[ZoneKpis("z0", 52.5, 13.4, 10, 9, 1, 0)],
        technicians=[TechnicianKpis(f"t{i}", "d1") for i in range(s.technicians)],
        soh_end=[0.8 + 0.1 * k / batteries for k in range(batteries)],
        run={"wall_s": 1.5, "plans": 3, "notes": ["not a scalar"]},
    )  # fmt: skip


@dataclass
class FakeRunner:
    """Runs scenarios over their seeds in ``steps`` progress steps per run.

    ``hold``: when set to an unset event, each job waits for it after its first report.
    ``fail_on``: the scenario whose first run raises ``ValueError``.
    """

    steps: int = 2
    step_s: float = 0.0
    hold: asyncio.Event | None = None
    fail_on: str | None = None
    calls: list[list[str]] = field(default_factory=list)
    cancelled: list[list[str]] = field(default_factory=list)
    running: int = 0
    most_at_once: int = 0

    async def __call__(
        self, scenarios: Sequence[Scenario], *, progress: Callable[[Progress], None] | None = None
    ) -> list[RunResult]:
        names = [s.name for s in scenarios]
        self.calls.append(names)
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        try:
            runs = [(s, seed) for s in scenarios for seed in s.seeds]
            out = []
            for i, (s, seed) in enumerate(runs):
                if s.name == self.fail_on:
                    raise ValueError(f"scenario {s.name!r}: the loop diverged at seed {seed}")
                for k in range(1, self.steps + 1):
                    if progress is not None:
                        frac = k / self.steps
                        progress(Progress(s.name, seed, i, len(runs), frac, (i + frac) / len(runs)))
                    if i == 0 and k == 1 and self.hold is not None:
                        await self.hold.wait()
                    await asyncio.sleep(self.step_s)
                out.append(run_result(s, seed))
            return out
        except asyncio.CancelledError:
            self.cancelled.append(names)
            raise
        finally:
            self.running -= 1

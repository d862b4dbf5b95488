"""``bms bench sim``: how fast a what-if runs with the twins, models and planner in the loop.

The fleet is the shipped baseline scenario scaled to ``--vehicles``: the service area
grows with the fleet so vehicles per zone stay as in the baseline, depots keep their
share of chargers and spares, and the technicians (``--technicians``, by default 3 per
1,000 vehicles) split over the two shifts. The timed part is the loop itself (engine,
ingest, scoring, planning); starting the services and deploying the models is reported
apart as ``startup_s``. Memory is sampled every 2 s over Ray's processes (PSS).
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from typing import Any

from bms.bench.ingest import system_rss_mb
from bms.settings import Settings
from sim.presets import BASELINE_PRESET, load_preset
from sim.scenario import Scenario

__all__ = ["bench_scenario", "run_sim_bench"]

def bench_scenario(vehicles: int, days: int, technicians: int | None, seed: int) -> Scenario:
    """The baseline scaled to ``vehicles`` (see the module docstring)."""
    base = load_preset(BASELINE_PRESET)
    d = base.model_dump()
    scale = vehicles / base.fleet.vehicles
    d["name"] = f"bench-{vehicles}"
    d["days"] = days
    d["seeds"] = [seed]
    d["fleet"]["vehicles"] = vehicles
    d["city"]["radius_km"] = round(base.city.radius_km * math.sqrt(scale), 2)
    for depot in d["depots"]:
        depot["north_km"] *= math.sqrt(scale)
        depot["east_km"] *= math.sqrt(scale)
        depot["chargers"] = max(1, round(depot["chargers"] * scale))
        depot["charged_batteries"] = max(1, round(depot["charged_batteries"] * scale))
    techs = technicians if technicians is not None else max(2, round(3 * vehicles / 1000))
    shifts = d["shifts"]
    for k, shift in enumerate(shifts):
        shift["technicians"] = techs // len(shifts) + (1 if k < techs % len(shifts) else 0)
    return Scenario.model_validate(d)


def run_sim_bench(
    vehicles: int,
    days: int,
    technicians: int | None = None,
    seed: int = 1,
    settings: Settings | None = None,
) -> dict[str, Any]:
    from bms.whatif_cli import models_session
    from runtime.whatif import run_scenario

    scenario = bench_scenario(vehicles, days, technicians, seed)
    settings = settings or Settings.load(None)
    t0 = time.perf_counter()
    peak = [0.0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(2.0):
            peak[0] = max(peak[0], system_rss_mb(set()))

    with models_session(settings, None) as app_name:
        startup_s = time.perf_counter() - t0
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            result = asyncio.run(run_scenario(scenario, seed, app_name=app_name))
        finally:
            stop.set()
            sampler.join()
    run = result.run
    total = result.total
    return {
        "benchmark": "sim",
        "vehicles": vehicles,
        "batteries": run["batteries"],
        "technicians": run["technicians"],
        "days": days,
        "seed": seed,
        "wall_s": run["wall_s"],
        "speedup": run["speedup"],
        "samples": run["accepted_samples"],
        "messages": run["messages"],
        "plans": run["plans"],
        "score_ticks": run["score_ticks"],
        "shards": run["shards"],
        "seconds": run["seconds"],
        "peak_rss_mb": round(peak[0], 1),
        "startup_s": round(startup_s, 1),
        "rides_served": total["rides_served"],
        "availability_pct": round(total["availability_pct"], 2),
        "swaps_done": total["swaps_done"],
        "batteries_eol": total["batteries_eol"],
        "report_errors": run["report_errors"],
        "loop": scenario.loop.model_dump(),
    }

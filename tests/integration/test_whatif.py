"""What-if runs through the production loop: real twin shards on Ray, the session system's
Serve model deployments (app ``bms``) and the real planner.

A small city (200 vehicles, 240 batteries in three shards of at most 100, one day at
300 s ticks) keeps each run to tens of seconds. The checks: the loop is wired from the
production classes, a run's counters agree with the engine's, a seed fixes the run, more
technicians never serve fewer rides, and no demand means no rides.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from ray import serve

import planners.planner
from runtime.names import SERVE_APP_NAME, model_deployment_name
from runtime.whatif import SCORING_MODELS, WhatIfShard, run_scenario
from sim.kpis import RunResult
from sim.scenario import Scenario
from twins.shard import TwinShard

pytestmark = pytest.mark.integration

SEED = 3
_DAY_S = 86_400.0


def _scenario(name: str = "it-whatif", technicians: int = 2, **sections: Any) -> Scenario:
    """A small city; ``sections`` replace whole sections of it."""
    data: dict[str, Any] = {
        "name": name,
        "start_date": "2026-06-01",
        "days": 1,
        "seeds": [SEED],
        "city": {"radius_km": 3.0, "zone_km": 1.0, "utc_offset_h": 2.0},
        "fleet": {"vehicles": 200, "initial_soc_min_pct": 10.0, "initial_soc_max_pct": 100.0},
        "depots": [
            {"id": "d-north", "north_km": 1.0, "east_km": 0.0, "chargers": 4, "charged_batteries": 20},
            {"id": "d-south", "north_km": -1.0, "east_km": 0.5, "chargers": 4, "charged_batteries": 20},
        ],
        "shifts": [{"name": "day", "start_h": 6, "end_h": 22, "technicians": technicians, "van_capacity": 8}],
        "loop": {
            "tick_s": 300, "report_interval_s": 3600, "score_interval_s": 7200, "plan_interval_s": 3600,
            # Solves stop at the solution limit, never at the (generous) time cap: that
            # keeps plans, and so runs, the same on a busy machine.
            "solution_limit": 10, "solve_time_limit_s": 120, "candidates_per_shard": 50, "shard_size": 100,
        },
    }  # fmt: skip
    data.update(sections)
    return Scenario.model_validate(data)


def _run(scenario: Scenario, seed: int = SEED) -> RunResult:
    return asyncio.run(run_scenario(scenario, seed, app_name=SERVE_APP_NAME))


@pytest.fixture(scope="module")
def models_ready(fleet_system: Any) -> None:
    """Every model a scoring tick calls has loaded its production version in app ``bms``."""

    async def loaded() -> list[str]:
        missing = []
        for name in SCORING_MODELS:
            handle = serve.get_deployment_handle(
                model_deployment_name(name), app_name=SERVE_APP_NAME
            )
            status = await handle.status.remote()
            if status["production_version"] is None:
                missing.append(name)
        return missing

    deadline = time.time() + 300
    missing = asyncio.run(loaded())
    while missing and time.time() < deadline:
        time.sleep(1.0)
        missing = asyncio.run(loaded())
    assert not missing, (
        f"expected every scoring model loaded within 300 s, still waiting for {missing}"
    )


@pytest.fixture(scope="module")
def first_run(models_ready: None) -> RunResult:
    """One day of the small city with two technicians."""
    return _run(_scenario())


def _rides_add_up(r: RunResult) -> None:
    for k in [*r.days, r.total]:
        assert (
            k["rides_requested"]
            == k["rides_served"] + k["rides_lost_low_charge"] + k["rides_lost_no_vehicle"]
        )
    assert sum(z.requested for z in r.zones) == r.total["rides_requested"]


def test_the_loop_runs_the_production_classes() -> None:
    """The what-if shard is a TwinShard that keeps production's ingest, scoring and candidate
    code, and the loop plans with production's Planner."""
    assert issubclass(WhatIfShard, TwinShard)
    for name in ("ingest", "score", "swap_candidates", "_candidate_rows", "set_vehicle"):
        assert getattr(WhatIfShard, name) is getattr(TwinShard, name), name
    import runtime.whatif

    # The name the loop constructs its planner by (runtime.whatif does not re-export it).
    assert vars(runtime.whatif)["Planner"] is planners.planner.Planner


def test_one_run_agrees_with_the_engine(first_run: RunResult) -> None:
    """Every report reaches the planner, the twins take every sample the vehicles sent, the
    Serve models score every tick, plans are made and carried out, and every swap done is a
    swap record."""
    r, run = first_run, first_run.run
    assert run["shards"] >= 2 and run["batteries"] == 240 and run["technicians"] == 2
    assert run["report_errors"] == 0
    assert run["refused_messages"] == 0 and run["duplicate_messages"] == 0
    assert run["accepted_samples"] == run["samples"] > 0
    # A tick at 300 s, then every 7200 s: 12 in a day; a failing model would have raised.
    assert run["score_ticks"] == 12
    assert run["plans"] >= 24 and run["jobs_planned"] > 0
    assert run["work_orders"].get("done", 0) > 0, run["work_orders"]
    assert r.total["swaps_done"] > 0
    assert run["swap_records"] == r.total["swaps_done"]
    assert r.total["technician_km"] > 0
    _rides_add_up(r)
    assert r.total["rides_served"] > 0


async def test_same_seed_same_kpis(first_run: RunResult) -> None:
    """A second run of the same scenario and seed gives the very same KPIs: days, totals,
    zones, technicians, SOH and the loop's counts."""
    again = await run_scenario(_scenario(), SEED, app_name=SERVE_APP_NAME)
    assert again.total == first_run.total
    a, b = again.to_dict(), first_run.to_dict()
    for key in ("days", "zones", "technicians", "availability_by_hour_pct", "soh_end"):
        assert a[key] == b[key], key
    for key in (
        "samples",
        "accepted_samples",
        "plans",
        "jobs_planned",
        "jobs_dropped",
        "work_orders",
        "swap_records",
    ):
        assert a["run"][key] == b["run"][key], key


async def test_more_technicians_never_serve_fewer_rides(models_ready: None) -> None:
    """Same seed (the same riders ask for the same rides): three technicians serve at least
    as many rides as none, and none swap nothing."""
    none = await run_scenario(_scenario(technicians=0), SEED, app_name=SERVE_APP_NAME)
    three = await run_scenario(_scenario(technicians=3), SEED, app_name=SERVE_APP_NAME)
    assert none.total["swaps_done"] == 0 and none.run["swap_records"] == 0
    assert three.total["swaps_done"] > 0
    assert three.total["rides_requested"] == none.total["rides_requested"]
    assert three.total["rides_served"] >= none.total["rides_served"]
    assert none.run["report_errors"] == three.run["report_errors"] == 0


async def test_zero_demand_means_no_rides(models_ready: None) -> None:
    """Demand multiplier 0: the loop runs its day and nobody rides."""
    r = await run_scenario(
        _scenario("it-no-demand", demand={"multiplier": 0.0}), SEED, app_name=SERVE_APP_NAME
    )
    assert r.total["rides_requested"] == 0 and r.total["rides_served"] == 0
    assert r.run["report_errors"] == 0 and r.run["refused_messages"] == 0
    assert r.run["accepted_samples"] == r.run["samples"] > 0
    assert r.total["vehicle_hours"] == pytest.approx(200 * _DAY_S / 3600.0)

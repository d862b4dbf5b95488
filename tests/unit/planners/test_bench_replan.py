"""Tests for :mod:`bms.bench.replan`: urgent insertion on a live plan, then full re-plans."""

from __future__ import annotations

import json

from bms.bench.replan import main_replan


def test_tiny_replan_inserts_every_urgent_job_feasibly() -> None:
    """On a 60-job live day with both engines: every urgent job is inserted, by insertion
    alone and with improvement, every plan passes the independent checker, and a full
    re-plan from the urgent plan is feasible and worth at least what the urgent plan was."""
    result = main_replan(
        60, 3, engines=("ortools", "pyvrp"), live_time_limit_s=1.0, events=3, improve_s=(0.0, 0.5),
        replan_budgets_s=(1.0,), seed=3,
    )  # fmt: skip
    json.dumps(result)
    assert set(result["engines"]) == {"ortools", "pyvrp"}
    for row in result["engines"].values():
        assert row["live"]["planned_jobs"] > 0
        assert [u["improve_s"] for u in row["urgent"]] == [0.0, 0.5]
        for u in row["urgent"]:
            assert u["inserted"] == 3 and u["feasible"] == 3
            assert 0 < u["latency_median_s"] <= u["latency_max_s"]
        (full,) = row["full_replan"]
        assert full["feasible"] and full["value"] >= row["urgent_plan_value"]

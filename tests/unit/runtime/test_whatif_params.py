"""The planner's knobs in a what-if run come from the scenario's loop, not from production."""

from __future__ import annotations

from planners.planner import PlannerParams
from runtime.whatif import planner_params

from .fake_whatif import scenario


def test_a_what_if_run_caps_its_rounds_with_its_own_loop_setting() -> None:
    """``loop.max_jobs_per_plan`` (default 400) is the round's cap, whatever production's
    default (``PlannerParams``, ``[planner] max_jobs_per_round``) is."""
    default = planner_params(scenario("s"))
    assert default.max_jobs_per_round == 400 != PlannerParams().max_jobs_per_round
    tuned = planner_params(scenario("s", loop={"max_jobs_per_plan": 123, "plan_interval_s": 1800.0}))
    assert tuned.max_jobs_per_round == 123 and tuned.plan_interval_s == 1800.0 and tuned.urgent_delay_s == 0.0

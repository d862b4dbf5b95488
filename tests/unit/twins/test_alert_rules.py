"""The twins' alert rules: single-sample critical thresholds, anomaly flags, remaining
life, falling health, silent batteries, and the report's completeness."""

from __future__ import annotations

import numpy as np

from contracts.alerts import AlertCategory, AlertSeverity
from contracts.anomaly_kinds import AnomalyKind
from twins.alert_rules import TwinAlertParams, TwinAlertRules
from twins.clock import ManualClock
from twins.twin_table import TwinTable

from .factories import T0_S, make_batch, message


def _kinds(report: object) -> dict[str, str]:
    return {s.key: s.severity.value for s in report.signals}  # type: ignore[attr-defined]


def test_one_hot_sample_in_a_message_fires(table: TwinTable) -> None:
    """One sample at 80 °C among five raises a critical pack_overtemp with the peak as evidence,
    on the first evaluation after it arrived."""
    rules = TwinAlertRules("shard-0")
    table.apply(make_batch(message("b-1", 1, T0_S + np.arange(5.0), temp_c=[30, 31, 80, 32, 33])))
    table.apply(make_batch(message("b-2", 1, T0_S + np.arange(5.0), vehicle_id="veh-2")))
    report = rules.evaluate(table, T0_S + 10)
    assert _kinds(report) == {"pack_overtemp:b-1": "critical"}
    sig = report.signals[0]
    assert sig.category is AlertCategory.HEALTH and sig.battery_id == "b-1" and sig.vehicle_id == "veh-1"
    assert sig.evidence["temp_c"] == 80.0 and "80.0 °C" in sig.summary
    assert sig.zone is not None and report.source == "shard-0"


def test_verdict_holds_until_a_newer_sample_clears_it(table: TwinTable) -> None:
    """A twin with no new sample keeps its verdict (parked vehicles report once a minute); a
    cool sample clears it, and the next report no longer carries the signal."""
    rules = TwinAlertRules("s")
    table.apply(make_batch(message("b-1", 1, [T0_S], temp_c=70.0)))
    assert "pack_overtemp:b-1" in _kinds(rules.evaluate(table, T0_S + 10))
    assert "pack_overtemp:b-1" in _kinds(rules.evaluate(table, T0_S + 20))
    table.apply(make_batch(message("b-1", 2, [T0_S + 60], temp_c=35.0)))
    assert _kinds(rules.evaluate(table, T0_S + 70)) == {}


def test_imbalance_and_sag(table: TwinTable) -> None:
    """Cell groups 400 mV apart are an imbalance; a cell group under 2.7 V while discharging
    is a sag; without cell voltages the pack voltage over the series count is used, and a
    low voltage at rest is no sag."""
    rules = TwinAlertRules("s", TwinAlertParams(series_cells=13))
    table.apply(make_batch(
        message("b-1", 1, [T0_S], cell_min_v=3.3, cell_max_v=3.7),
        message("b-2", 1, [T0_S], vehicle_id="veh-2", current_a=20.0, cell_min_v=2.5, cell_max_v=2.6),
        message("b-3", 1, [T0_S], vehicle_id="veh-3", current_a=20.0, pack_voltage_v=13 * 2.6),
        message("b-4", 1, [T0_S], vehicle_id="veh-4", current_a=0.0, pack_voltage_v=13 * 2.6),
    ))  # fmt: skip
    assert _kinds(rules.evaluate(table, T0_S + 5)) == {
        "cell_imbalance:b-1": "critical", "voltage_sag:b-2": "critical", "voltage_sag:b-3": "critical",
    }


def test_anomaly_flags_and_maintenance(table: TwinTable) -> None:
    """Each anomaly flag is a signal (critical for temperature rise, warning for the softer
    ones); remaining life under the horizon is a maintenance warning."""
    rules = TwinAlertRules("s", TwinAlertParams(rul_horizon_cycles=50))
    table.apply(make_batch(message("b-1", 1, [T0_S]), message("b-2", 1, [T0_S], vehicle_id="veh-2")))
    s1, s2 = table.index["b-1"], table.index["b-2"]
    table.anomaly_flags[s1] = int(AnomalyKind.TEMP_RISE | AnomalyKind.SEQUENCE_ERROR)
    table.anomaly_score[s1] = 12.5
    table.rul80_p50_cycles[s2] = 30.0
    kinds = _kinds(rules.evaluate(table, T0_S + 5))
    assert kinds == {"anomaly_temp_rise:b-1": "critical", "anomaly_sequence_error:b-1": "warning", "rul_low:b-2": "warning"}


def test_health_falling_needs_a_span(table: TwinTable) -> None:
    """A health score falling 10 points in 12 h (20/day) warns once the span is at least 6 h;
    a steady score never does."""
    rules = TwinAlertRules("s")
    table.apply(make_batch(message("b-1", 1, [T0_S]), message("b-2", 1, [T0_S], vehicle_id="veh-2")))
    s1, s2 = table.index["b-1"], table.index["b-2"]
    table.health_score[[s1, s2]] = 80.0
    rules.evaluate(table, T0_S)
    table.health_score[s1] = 78.0
    assert "health_falling:b-1" not in _kinds(rules.evaluate(table, T0_S + 3600))
    table.health_score[s1] = 70.0
    report = rules.evaluate(table, T0_S + 12 * 3600)
    assert _kinds(report) == {"health_falling:b-1": "warning", "battery_silent:b-1": "warning", "battery_silent:b-2": "warning"}
    fall = next(s for s in report.signals if s.kind == "health_falling")
    assert abs(fall.evidence["points_per_day"] - 20.0) < 1e-6  # type: ignore[operator]


def test_silent_batteries_and_watch_counts() -> None:
    """A battery in a vehicle silent for 15 min is an operations warning; one out of a vehicle
    (on a depot shelf) or unseen for a week is not; the report counts watched batteries per zone."""
    clock = ManualClock(start_s=T0_S)
    table = TwinTable(clock=clock)
    rules = TwinAlertRules("s", TwinAlertParams(silent_after_s=900))
    table.apply(make_batch(
        message("b-1", 1, [T0_S]), message("b-2", 1, [T0_S], vehicle_id="veh-2"),
        message("b-3", 1, [T0_S - 8 * 86400], vehicle_id="veh-3"),
    ))  # fmt: skip
    table.vehicle_ids[table.index["b-2"]] = None
    assert _kinds(rules.evaluate(table, T0_S + 600)) == {}
    report = rules.evaluate(table, T0_S + 1000)
    assert _kinds(report) == {"battery_silent:b-1": "warning"}
    assert report.signals[0].severity is AlertSeverity.WARNING
    assert sum(report.watched_by_zone.values()) == 1


def test_many_twins_one_pass() -> None:
    """Ten thousand twins, three hot ones: exactly those three are reported."""
    table = TwinTable(clock=ManualClock(start_s=T0_S))
    temps = np.full(10_000, 30.0)
    temps[[7, 4242, 9999]] = [65.0, 90.0, 61.0]
    table.apply(make_batch(*[message(f"b-{i}", 1, [T0_S], vehicle_id=f"v-{i}", temp_c=temps[i]) for i in range(10_000)]))
    report = TwinAlertRules("s").evaluate(table, T0_S + 1)
    assert sorted(s.battery_id for s in report.signals) == ["b-4242", "b-7", "b-9999"]  # type: ignore[type-var]


def test_a_battery_taken_out_of_its_vehicle_clears(table: TwinTable) -> None:
    """A hot battery that a recorded swap took out of its vehicle reports no health or
    anomaly signal any more (it is with the field team), so its alert can resolve."""
    rules = TwinAlertRules("s")
    table.apply(make_batch(message("b-1", 1, [T0_S], temp_c=85.0)))
    table.anomaly_flags[table.index["b-1"]] = int(AnomalyKind.TEMP_RISE)
    assert set(_kinds(rules.evaluate(table, T0_S + 5))) == {"pack_overtemp:b-1", "anomaly_temp_rise:b-1"}
    table.vehicle_ids[table.index["b-1"]] = None
    assert _kinds(rules.evaluate(table, T0_S + 10)) == {}

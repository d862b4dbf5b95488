"""Operations rules: figures in, signals (category operations, stable keys, evidence) out."""

from __future__ import annotations

import pytest

from alerts.ops_rules import (
    OpsThresholds,
    area_outages,
    broker_unreachable,
    dead_letter_surge,
    ingest_lag,
    model_drift,
)
from contracts.alerts import AlertCategory, AlertSeverity, AlertSignal

T0 = 1_764_172_800.0


def silent(battery: str, depot: str | None = "d1", kind: str = "battery_silent") -> AlertSignal:
    """A battery_silent signal as the twins' silence rule would send it."""
    return AlertSignal(
        key=f"{kind}:{battery}", kind=kind, category=AlertCategory.OPERATIONS,
        severity=AlertSeverity.WARNING, summary="silent", at_s=T0, battery_id=battery,
        labels={} if depot is None else {"depot": depot},
    )  # fmt: skip


def test_thresholds_defaults_and_validation() -> None:
    """Defaults are the documented ones; out-of-range values are refused with the value."""
    t = OpsThresholds()
    assert (t.dead_letters_per_min, t.ingest_lag_p99_s, t.drift_min_rows) == (100.0, 30.0, 1000)
    assert (t.area_outage_fraction, t.area_outage_min_batteries) == (0.5, 5)
    with pytest.raises(ValueError, match="Expected dead_letters_per_min to be a finite number > 0, got 0"):
        OpsThresholds(dead_letters_per_min=0)
    with pytest.raises(ValueError, match=r"area_outage_fraction in \(0, 1\], got 1.5"):
        OpsThresholds(area_outage_fraction=1.5)
    with pytest.raises(ValueError, match="ingest_lag_critical_factor >= 1"):
        OpsThresholds(ingest_lag_critical_factor=0.5)
    with pytest.raises(ValueError, match="area_outage_min_batteries >= 1, got 0"):
        OpsThresholds(area_outage_min_batteries=0)


def test_dead_letter_surge_per_reason() -> None:
    """Only reasons above the per-minute limit over the window signal, one key per reason."""
    now = {"malformed_json": 1_500, "unknown_vehicle": 150, "new_reason": 300}
    before = {"malformed_json": 1_000, "unknown_vehicle": 100}
    out = dead_letter_surge(now, before, window_s=120.0, now_s=T0)
    assert [s.key for s in out] == ["dead_letter_surge:malformed_json", "dead_letter_surge:new_reason"]
    first = out[0]
    assert first.category is AlertCategory.OPERATIONS and first.severity is AlertSeverity.WARNING
    assert first.labels == {"reason": "malformed_json"}
    assert first.evidence == {"rejects": 500, "window_s": 120.0, "per_min": 250.0, "limit_per_min": 100.0}
    assert "250.0/min" in first.summary


def test_dead_letter_counter_reset_counts_from_zero() -> None:
    """A counter lower than before was reset: its current value is the window's rejects."""
    out = dead_letter_surge({"x": 250}, {"x": 10_000}, window_s=60.0, now_s=T0)
    assert [s.evidence["rejects"] for s in out] == [250]
    with pytest.raises(ValueError, match="window_s"):
        dead_letter_surge({}, {}, window_s=0.0, now_s=T0)


def test_ingest_lag_levels() -> None:
    """Under the limit nothing; above it a warning; above four times it critical."""
    assert ingest_lag(30.0, T0) == []
    (warn,) = ingest_lag(31.0, T0)
    assert (warn.key, warn.severity) == ("ingest_lag", AlertSeverity.WARNING)
    assert warn.evidence == {"freshness_p99_s": 31.0, "limit_s": 30.0, "critical_s": 120.0}
    (crit,) = ingest_lag(121.0, T0)
    assert (crit.key, crit.severity) == ("ingest_lag", AlertSeverity.CRITICAL)
    with pytest.raises(ValueError, match="NaN"):
        ingest_lag(float("nan"), T0)


def test_broker_unreachable_only_when_all_bridges_are_down() -> None:
    """One critical signal when every bridge lost the broker; none otherwise or with none known."""
    assert broker_unreachable({"w0": True, "w1": False}, T0) == []
    assert broker_unreachable({}, T0) == []
    (s,) = broker_unreachable({"w0": False, "w1": False}, T0)
    assert (s.key, s.kind, s.severity) == ("broker_unreachable", "broker_unreachable", AlertSeverity.CRITICAL)
    assert s.evidence == {"bridges": 2, "connected": 0}


def test_model_drift_rows() -> None:
    """One warning per (model, feature) with enough rows; the highest PSI of a pair wins."""
    rows = [
        {"model": "health", "version": 3, "feature": "efc", "psi": 0.4, "rows": 5000},
        {"model": "health", "version": 3, "feature": "efc", "psi": 0.6, "rows": 5000},
        {"model": "health", "version": 3, "feature": "temp", "psi": 0.9, "rows": 999},
        {"model": "priority", "feature": "age", "psi": 0.3, "rows": 1000},
    ]
    out = model_drift(rows, T0)
    assert [s.key for s in out] == ["model_drift:health:efc", "model_drift:priority:age"]
    assert out[0].evidence == {"model": "health", "version": 3, "feature": "efc", "psi": 0.6, "rows": 5000}
    assert out[0].labels == {"model": "health", "feature": "efc"}
    assert out[1].evidence["version"] is None
    with pytest.raises(ValueError, match="without psi, rows"):
        model_drift([{"model": "health", "feature": "efc"}], T0)


def test_area_outage_needs_share_and_count() -> None:
    """A depot with >= half its batteries silent (and >= 5 of them) is an area outage."""
    signals = [silent(f"a{i}", "d1") for i in range(6)]  # 6 of 10: outage
    signals += [silent(f"b{i}", "d2") for i in range(4)]  # 4 of 4 but fewer than 5
    signals += [silent(f"c{i}", "d3") for i in range(6)]  # 6 of 20: under half
    signals += [silent("x", None), silent("y", "d1", kind="pack_overtemp")]  # ignored
    signals += [silent("a0", "d1")]  # the same battery twice counts once
    out = area_outages(signals, {"d1": 10, "d2": 4, "d3": 20}, T0)
    assert [s.key for s in out] == ["area_outage:d1"]
    (s,) = out
    assert s.severity is AlertSeverity.CRITICAL and s.labels == {"depot": "d1"}
    assert s.evidence == {"silent": 6, "batteries": 10, "fraction": 0.6}


def test_area_outage_skips_depots_of_unknown_size() -> None:
    """A depot missing from the battery counts cannot have a share: no signal."""
    assert area_outages([silent(f"a{i}", "d9") for i in range(10)], {}, T0) == []

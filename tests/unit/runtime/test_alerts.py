"""The alert manager's urgent path without Ray: a critical alert on a twin becomes the
planner's candidate, from the twin's snapshot as a shard answers it."""

from __future__ import annotations

import math

from contracts.alerts import Alert, AlertCategory, AlertSeverity, AlertState
from contracts.anomaly_kinds import AnomalyKind
from runtime.alerts import _candidate
from twins.battery_twin import BatteryTwin


def _alert(**kw: object) -> Alert:
    base: dict[str, object] = dict(
        key="pack_overtemp:bat-1", kind="pack_overtemp", category=AlertCategory.HEALTH,
        severity=AlertSeverity.CRITICAL, state=AlertState.FIRING, summary="hot", source="shard-0",
        started_at_s=1.0, last_active_at_s=2.0, battery_id="bat-1", vehicle_id="veh-9",
    )  # fmt: skip
    base.update(kw)
    return Alert(**base)  # type: ignore[arg-type]


def test_a_flagged_twins_snapshot_becomes_a_candidate_with_its_flag_bits() -> None:
    """The snapshot names the flags; the candidate carries them as the twin's bitmask
    (they once raised TypeError, and the whole urgent batch was dropped)."""
    twin = BatteryTwin.standalone("bat-1")
    bits = int(AnomalyKind.TEMP_RISE | AnomalyKind.SEQUENCE_ERROR)
    twin.table.anomaly_flags[twin.slot] = bits
    snapshot = twin.snapshot().to_dict()
    assert snapshot["anomaly_flags"] == ["temp_rise", "sequence_error"]
    c = _candidate(snapshot, _alert(lat=52.5, lon=13.4))
    assert c.anomaly_flags == bits and c.critical_alert == "pack_overtemp"
    assert (c.battery_id, c.vehicle_id, c.lat, c.lon) == ("bat-1", "veh-9", 52.5, 13.4)
    assert math.isnan(c.soc_pct) and not c.charging


def test_a_twin_without_flags_gives_a_candidate_without_flags() -> None:
    twin = BatteryTwin.standalone("bat-1")
    c = _candidate(twin.snapshot().to_dict(), _alert())
    assert c.anomaly_flags == 0 and c.critical_alert == "pack_overtemp"

"""The alert book: lifecycle, hysteresis, dedup, complete reports, silences, inhibition,
restore and scale; plus the rules' timing look-up it relies on."""

from __future__ import annotations

from dataclasses import replace

import pytest

from alerts.book import NEVER_FIRED_NOTE, AlertBook
from alerts.rules import DEFAULT_INHIBIT_RULES, AlertRules, KindTiming
from contracts.alerts import (
    AlertCategory,
    AlertSeverity,
    AlertSignal,
    AlertState,
    InhibitRule,
    Silence,
)

S = AlertState
C = AlertCategory
V = AlertSeverity
T0 = 1_764_172_800.0


def overtemp(battery: str = "b1", severity: AlertSeverity = V.CRITICAL, temp_c: float = 80.0) -> AlertSignal:
    """A health signal (hold 0 s, clear 300 s by default)."""
    return AlertSignal(
        key=f"pack_overtemp:{battery}", kind="pack_overtemp", category=C.HEALTH, severity=severity,
        summary=f"pack at {temp_c} °C", at_s=T0, battery_id=battery, labels={"depot": "d1"},
        evidence={"cell_temp_c": temp_c},
    )  # fmt: skip


def silent(battery: str, depot: str = "d1") -> AlertSignal:
    """An operations signal (hold 120 s, clear 300 s by default)."""
    return AlertSignal(
        key=f"battery_silent:{battery}", kind="battery_silent", category=C.OPERATIONS,
        severity=V.WARNING, summary=f"{battery} silent", at_s=T0, battery_id=battery,
        labels={"depot": depot},
    )  # fmt: skip


def ops(kind: str, key: str | None = None, **labels: str) -> AlertSignal:
    """A critical operations signal without a battery (broker, area outage...)."""
    return AlertSignal(
        key=key or kind, kind=kind, category=C.OPERATIONS, severity=V.CRITICAL,
        summary=kind, at_s=T0, labels=labels,
    )  # fmt: skip


def moves(transitions: list) -> list[tuple[str, S | None, S]]:  # type: ignore[type-arg]
    return [(t.alert_key, t.from_state, t.to_state) for t in transitions]


# -- rules ---------------------------------------------------------------------------------


def test_timing_defaults_by_category() -> None:
    """Without overrides each category gets the documented hold and clear times."""
    rules = AlertRules()
    assert rules.timing("pack_overtemp", C.HEALTH, V.CRITICAL) == KindTiming(0, 300)
    assert rules.timing("anomaly_temp_rise", C.ANOMALY, V.WARNING) == KindTiming(0, 600)
    assert rules.timing("rul_low", C.MAINTENANCE, V.WARNING) == KindTiming(3600, 6 * 3600)
    assert rules.timing("ingest_lag", C.OPERATIONS, V.WARNING) == KindTiming(120, 300)


def test_timing_most_specific_override_wins() -> None:
    """kind:severity beats kind, which beats category, which beats the default."""
    rules = AlertRules(
        per_kind={"ingest_lag": KindTiming(60, 60), "ingest_lag:critical": KindTiming(0, 30)},
        per_category={C.OPERATIONS: KindTiming(10, 20)},
    )
    assert rules.timing("ingest_lag", C.OPERATIONS, V.CRITICAL) == KindTiming(0, 30)
    assert rules.timing("ingest_lag", C.OPERATIONS, V.WARNING) == KindTiming(60, 60)
    assert rules.timing("battery_silent", C.OPERATIONS, V.WARNING) == KindTiming(10, 20)
    assert rules.timing("pack_overtemp", C.HEALTH, V.CRITICAL) == KindTiming(0, 300)


def test_rules_validate() -> None:
    """Bad timings and rules are refused with what was expected and what arrived."""
    with pytest.raises(ValueError, match="Expected hold_s to be a finite number >= 0, got -1"):
        KindTiming(-1, 0)
    with pytest.raises(ValueError, match="Expected clear_s"):
        KindTiming(0, float("nan"))
    with pytest.raises(ValueError, match="per_kind keys"):
        AlertRules(per_kind={"": KindTiming(0, 0)})
    with pytest.raises(ValueError, match="KindTiming, got tuple"):
        AlertRules(per_kind={"x": (0, 0)})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="non-empty source and target"):
        AlertRules(inhibit_rules=(InhibitRule({}, {"kind": "battery_silent"}),))


def test_default_inhibit_rules() -> None:
    """Broker outages inhibit every silent battery; area outages those of their depot."""
    assert [(dict(r.source), dict(r.target), r.equal) for r in DEFAULT_INHIBIT_RULES] == [
        ({"kind": "broker_unreachable"}, {"kind": "battery_silent"}, ()),
        ({"kind": "area_outage"}, {"kind": "battery_silent"}, ("depot",)),
    ]


# -- lifecycle and hysteresis --------------------------------------------------------------


def test_hold_zero_fires_on_first_observation() -> None:
    """A health signal opens a pending alert and fires it in the same call."""
    book = AlertBook()
    out = book.observe("shard-0", [overtemp()], T0)
    assert moves(out) == [("pack_overtemp:b1", None, S.PENDING), ("pack_overtemp:b1", S.PENDING, S.FIRING)]
    assert all(t.actor == "system" and t.at_s == T0 for t in out)
    alert = book.get("pack_overtemp:b1")
    assert alert.state is S.FIRING and alert.fired_at_s == T0 and alert.started_at_s == T0
    assert alert.source == "shard-0" and alert.evidence == {"cell_temp_c": 80.0}


def test_hold_delays_firing() -> None:
    """An operations signal fires only once held for hold_s from first seen."""
    book = AlertBook()
    assert moves(book.observe("ops", [silent("b1")], T0)) == [("battery_silent:b1", None, S.PENDING)]
    assert book.evaluate(T0 + 60) == []
    assert moves(book.observe("ops", [silent("b1")], T0 + 119)) == []
    assert book.get("battery_silent:b1").state is S.PENDING
    assert moves(book.evaluate(T0 + 120)) == [("battery_silent:b1", S.PENDING, S.FIRING)]
    assert book.get("battery_silent:b1").fired_at_s == T0 + 120


def test_held_pending_fires_when_reported_again() -> None:
    """A report that finds the hold run out fires the alert without waiting for evaluate."""
    book = AlertBook()
    book.observe("ops", [silent("b1")], T0)
    assert moves(book.observe("ops", [silent("b1")], T0 + 130)) == [
        ("battery_silent:b1", S.PENDING, S.FIRING)
    ]


def test_flapping_faster_than_clear_s_fires_once_and_never_resolves() -> None:
    """On for 10 s, off for 50 s, for an hour: one firing transition, no resolution."""
    book = AlertBook()
    out = []
    for k in range(60):
        t = T0 + 60 * k
        out += book.observe("shard-0", [overtemp()], t)
        out += book.evaluate(t + 5)
        out += book.observe("shard-0", [], t + 10)
        out += book.evaluate(t + 40)
    assert moves(out) == [("pack_overtemp:b1", None, S.PENDING), ("pack_overtemp:b1", S.PENDING, S.FIRING)]
    assert book.get("pack_overtemp:b1").state is S.FIRING


def test_resolves_after_clear_s() -> None:
    """A firing alert clear for clear_s resolves, noted with how long it was clear."""
    book = AlertBook()
    book.observe("shard-0", [overtemp()], T0)
    book.observe("shard-0", [], T0 + 10)
    assert book.get("pack_overtemp:b1").clear_since_s == T0 + 10
    assert book.evaluate(T0 + 309) == []
    out = book.evaluate(T0 + 310)
    assert moves(out) == [("pack_overtemp:b1", S.FIRING, S.RESOLVED)]
    assert out[0].note == "clear for 300 s"
    assert book.open_alerts() == []
    (resolved,) = [a for a in book.drain_changed() if a.state is S.RESOLVED]
    assert resolved.resolved_at_s == T0 + 310 and resolved.fired_at_s == T0


def test_pending_that_clears_never_fires() -> None:
    """A pending alert does not fire while clear, and resolves as never fired."""
    book = AlertBook()
    book.observe("ops", [silent("b1")], T0)
    book.observe("ops", [], T0 + 60)
    assert book.evaluate(T0 + 200) == []  # hold ran out, but the signal is clear
    out = book.evaluate(T0 + 360)
    assert moves(out) == [("battery_silent:b1", S.PENDING, S.RESOLVED)]
    assert out[0].note == NEVER_FIRED_NOTE
    (alert,) = book.drain_changed()
    assert alert.fired_at_s is None and alert.state is S.RESOLVED


def test_pending_back_before_clear_s_keeps_its_start() -> None:
    """A pending alert whose signal returns within clear_s keeps counting from first seen."""
    book = AlertBook()
    book.observe("ops", [silent("b1")], T0)
    book.observe("ops", [], T0 + 30)
    book.observe("ops", [silent("b1")], T0 + 100)
    assert moves(book.evaluate(T0 + 120)) == [("battery_silent:b1", S.PENDING, S.FIRING)]
    assert book.get("battery_silent:b1").started_at_s == T0


def test_severity_escalation_is_recorded_and_may_fall_back_quietly() -> None:
    """A firing warning that turns critical records an escalation; a drop is just updated."""
    book = AlertBook()
    book.observe("shard-0", [overtemp(severity=V.WARNING, temp_c=58.0)], T0)
    out = book.observe("shard-0", [overtemp(severity=V.CRITICAL, temp_c=75.0)], T0 + 5)
    assert moves(out) == [("pack_overtemp:b1", S.FIRING, S.FIRING)]
    assert out[0].note == "escalated from warning to critical"
    alert = book.get("pack_overtemp:b1")
    assert alert.severity is V.CRITICAL and alert.summary == "pack at 75.0 °C"
    assert alert.last_active_at_s == T0 + 5
    assert book.observe("shard-0", [overtemp(severity=V.WARNING)], T0 + 10) == []
    assert book.get("pack_overtemp:b1").severity is V.WARNING


# -- dedup and reports ---------------------------------------------------------------------


def test_same_key_twice_is_one_alert() -> None:
    """A key reported again, or twice in one report, updates the one open alert."""
    book = AlertBook()
    out = book.observe("shard-0", [overtemp(temp_c=70.0), overtemp(temp_c=71.0)], T0)
    out += book.observe("shard-0", [overtemp(temp_c=72.0)], T0 + 1)
    assert [t.to_state for t in out] == [S.PENDING, S.FIRING]
    assert len(book.open_alerts()) == 1
    assert book.get("pack_overtemp:b1").evidence == {"cell_temp_c": 72.0}


def test_new_alert_after_resolve() -> None:
    """After a key's alert resolved, the signal opens a new alert (no id yet, new start)."""
    book = AlertBook()
    book.observe("shard-0", [overtemp()], T0)
    first = book.get("pack_overtemp:b1")
    first.id = 17  # as the store would
    book.observe("shard-0", [], T0 + 1)
    book.evaluate(T0 + 400)
    out = book.observe("shard-0", [overtemp()], T0 + 500)
    second = book.get("pack_overtemp:b1")
    assert second is not first and second.id is None and second.started_at_s == T0 + 500
    assert first.state is S.RESOLVED and first.id == 17
    assert [t.alert_id for t in out] == [None, None]


def test_complete_report_clears_only_its_own_source() -> None:
    """Source A's empty report starts A's clear timers and leaves B's alerts alone."""
    book = AlertBook()
    book.observe("shard-a", [overtemp("b1")], T0)
    book.observe("shard-b", [overtemp("b2")], T0)
    book.observe("shard-a", [], T0 + 10)
    assert book.get("pack_overtemp:b1").clear_since_s == T0 + 10
    assert book.get("pack_overtemp:b2").clear_since_s is None
    assert moves(book.evaluate(T0 + 400)) == [("pack_overtemp:b1", S.FIRING, S.RESOLVED)]
    assert [a.key for a in book.open_alerts()] == ["pack_overtemp:b2"]


def test_incomplete_report_only_adds() -> None:
    """complete=False refreshes and opens, but clears nothing."""
    book = AlertBook()
    book.observe("events", [overtemp("b1")], T0, complete=False)
    book.observe("events", [overtemp("b2")], T0 + 1, complete=False)
    assert {a.key: a.clear_since_s for a in book.open_alerts()} == {
        "pack_overtemp:b1": None,
        "pack_overtemp:b2": None,
    }


def test_last_reporter_owns_the_key() -> None:
    """A key reported by another source moves to it: the first source's report no longer clears it."""
    book = AlertBook()
    book.observe("shard-a", [overtemp("b1")], T0)
    book.observe("shard-b", [overtemp("b1")], T0 + 1)
    book.observe("shard-a", [], T0 + 2)
    alert = book.get("pack_overtemp:b1")
    assert alert.source == "shard-b" and alert.clear_since_s is None
    book.observe("shard-b", [], T0 + 3)
    assert alert.clear_since_s == T0 + 3


def test_source_must_be_named() -> None:
    """An empty source name is refused."""
    with pytest.raises(ValueError, match="non-empty source"):
        AlertBook().observe("", [], T0)


# -- acknowledge ---------------------------------------------------------------------------


def test_acknowledge_rules() -> None:
    """Only a firing alert can be acknowledged; by key or id; attributed; unknown is KeyError."""
    book = AlertBook()
    book.observe("ops", [silent("b1")], T0)
    with pytest.raises(ValueError, match="Expected a firing alert to acknowledge, got one that is pending"):
        book.acknowledge("battery_silent:b1", "ops-anna", None, T0 + 1)
    book.observe("shard-0", [overtemp()], T0)
    book.get("pack_overtemp:b1").id = 5
    t = book.acknowledge(5, "ops-anna", "on it", T0 + 30)
    assert (t.from_state, t.to_state, t.actor, t.note, t.alert_id) == (
        S.FIRING, S.ACKNOWLEDGED, "ops-anna", "on it", 5,
    )  # fmt: skip
    alert = book.get("pack_overtemp:b1")
    assert alert.acknowledged_by == "ops-anna" and alert.acknowledged_at_s == T0 + 30
    with pytest.raises(ValueError, match="got one that is acknowledged"):
        book.acknowledge("pack_overtemp:b1", "ops-ben", None, T0 + 31)
    with pytest.raises(KeyError, match="No open alert with id 99"):
        book.acknowledge(99, "ops-anna", None, T0)
    with pytest.raises(KeyError, match="No open alert with key 'nope'"):
        book.acknowledge("nope", "ops-anna", None, T0)
    with pytest.raises(ValueError, match="non-empty actor"):
        book.acknowledge("battery_silent:b1", " ", None, T0)


def test_acknowledged_alert_still_resolves_by_itself() -> None:
    """Acknowledging does not hold an alert open once its signal clears."""
    book = AlertBook()
    book.observe("shard-0", [overtemp()], T0)
    book.acknowledge("pack_overtemp:b1", "ops-anna", None, T0 + 1)
    book.observe("shard-0", [], T0 + 2)
    assert moves(book.evaluate(T0 + 302)) == [("pack_overtemp:b1", S.ACKNOWLEDGED, S.RESOLVED)]


# -- silences ------------------------------------------------------------------------------


def test_silence_mutes_but_keeps_the_lifecycle() -> None:
    """A matching silence sets silenced_by; the alert still fires and resolves; expiry unmutes."""
    book = AlertBook()
    s = book.add_silence(Silence({"kind": "pack_overtemp"}, T0 - 1, T0 + 3600, "ops-anna"))
    assert s.id == 1
    out = book.observe("shard-0", [overtemp("b1"), overtemp("b2")], T0)
    assert [t.to_state for t in out] == [S.PENDING, S.FIRING] * 2
    assert {a.silenced_by for a in book.open_alerts()} == {1}
    ended = book.expire_silence(1, T0 + 10)
    assert ended.ends_at_s == T0 + 10
    book.evaluate(T0 + 10)
    assert {a.silenced_by for a in book.open_alerts()} == {None}
    assert book.silences(T0 + 11) == [] and book.silences(T0 + 11, include_expired=True) == [ended]


def test_silence_only_mutes_what_it_matches_and_when() -> None:
    """A silence on one key mutes only that alert, from its start to its end."""
    book = AlertBook()
    book.add_silence(Silence({"key": "pack_overtemp:b2"}, T0 + 100, T0 + 200, "ops-anna", id=7))
    book.observe("shard-0", [overtemp("b1"), overtemp("b2")], T0)
    assert [a.silenced_by for a in book.open_alerts()] == [None, None]
    book.evaluate(T0 + 100)
    assert [a.silenced_by for a in book.open_alerts()] == [None, 7]
    book.evaluate(T0 + 200)
    assert [a.silenced_by for a in book.open_alerts()] == [None, None]
    assert book.add_silence(Silence({"kind": "x"}, T0, T0 + 1, "a")).id == 8


def test_expire_silence_errors() -> None:
    """Unknown and ended silences are KeyError; one not started yet is ValueError."""
    book = AlertBook()
    book.add_silence(Silence({"kind": "x"}, T0 + 100, T0 + 200, "ops-anna"))
    with pytest.raises(ValueError, match="to have started"):
        book.expire_silence(1, T0)
    with pytest.raises(KeyError, match="No active silence with id 1"):
        book.expire_silence(1, T0 + 200)
    with pytest.raises(KeyError, match="No active silence with id 2"):
        book.expire_silence(2, T0 + 150)
    with pytest.raises(ValueError, match="new silence id"):
        book.add_silence(Silence({"kind": "x"}, T0, T0 + 1, "a", id=1))


# -- inhibition ----------------------------------------------------------------------------


def test_broker_unreachable_inhibits_silent_batteries_while_firing() -> None:
    """Firing broker_unreachable mutes every battery_silent alert; its resolution unmutes them."""
    book = AlertBook()
    book.observe("silence-rule", [silent(f"b{i}") for i in range(3)], T0)
    book.observe("ops", [ops("broker_unreachable")], T0)
    book.evaluate(T0 + 60)
    assert {a.inhibited_by for a in book.open_alerts()} == {None}  # pending inhibits nothing
    book.evaluate(T0 + 120)
    inhibited = {a.key: a.inhibited_by for a in book.open_alerts()}
    assert inhibited == {
        "battery_silent:b0": "broker_unreachable",
        "battery_silent:b1": "broker_unreachable",
        "battery_silent:b2": "broker_unreachable",
        "broker_unreachable": None,
    }
    # A silent battery reported meanwhile is inhibited from the start.
    book.observe("silence-rule", [silent(f"b{i}") for i in range(4)], T0 + 130)
    assert book.get("battery_silent:b3").inhibited_by == "broker_unreachable"
    book.observe("ops", [], T0 + 140)
    book.evaluate(T0 + 440)
    assert book.get("battery_silent:b0").inhibited_by is None
    assert "broker_unreachable" not in {a.key for a in book.open_alerts()}


def test_area_outage_inhibits_only_its_depot() -> None:
    """An area outage mutes the silent batteries with its depot label, not others'."""
    book = AlertBook(AlertRules(per_kind={"battery_silent": KindTiming(0, 300), "area_outage": KindTiming(0, 300)}))
    book.observe("silence-rule", [silent("b1", "d1"), silent("b2", "d2")], T0)
    book.observe("ops", [ops("area_outage", "area_outage:d1", depot="d1")], T0 + 1)
    assert book.get("battery_silent:b1").inhibited_by == "area_outage:d1"
    assert book.get("battery_silent:b2").inhibited_by is None
    assert book.get("area_outage:d1").inhibited_by is None


# -- reads, restore, changes ---------------------------------------------------------------


def test_counts_by_state_and_severity() -> None:
    """counts() counts open alerts per (state, severity)."""
    book = AlertBook()
    book.observe("shard-0", [overtemp("b1"), overtemp("b2", V.WARNING)], T0)
    book.observe("ops", [silent("b3")], T0)
    assert book.counts() == {
        (S.FIRING, V.CRITICAL): 1,
        (S.FIRING, V.WARNING): 1,
        (S.PENDING, V.WARNING): 1,
    }


def test_drain_changed_lists_real_changes_only() -> None:
    """New, changed and resolved alerts are drained once; a bare refresh marks nothing."""
    book = AlertBook()
    book.observe("shard-0", [overtemp("b1")], T0)
    assert [a.key for a in book.drain_changed()] == ["pack_overtemp:b1"]
    book.observe("shard-0", [overtemp("b1")], T0 + 1)
    assert book.drain_changed() == []
    book.observe("shard-0", [overtemp("b1", temp_c=81.0)], T0 + 2)
    assert [a.evidence for a in book.drain_changed()] == [{"cell_temp_c": 81.0}]


def test_restore_after_restart_resumes_timers_and_sources() -> None:
    """A book rebuilt from stored alerts and silences resolves, fires and mutes on time."""
    book = AlertBook()
    book.add_silence(Silence({"key": "pack_overtemp:b2"}, T0, T0 + 3600, "ops-anna", id=3))
    book.observe("shard-0", [overtemp("b1"), overtemp("b2")], T0)
    book.observe("ops", [silent("b3")], T0)
    book.observe("shard-0", [overtemp("b2")], T0 + 50)  # b1 clears from T0 + 50
    for i, alert in enumerate(book.open_alerts(), start=1):
        alert.id = i
    stored = [replace(a) for a in book.open_alerts()]

    again = AlertBook()
    again.restore(stored, book.silences(T0 + 60))
    assert again.evaluate(T0 + 60) == []
    assert again.get("pack_overtemp:b2").silenced_by == 3
    assert moves(again.evaluate(T0 + 120)) == [("battery_silent:b3", S.PENDING, S.FIRING)]
    assert moves(again.evaluate(T0 + 350)) == [("pack_overtemp:b1", S.FIRING, S.RESOLVED)]
    again.observe("shard-0", [], T0 + 400)
    assert again.get("pack_overtemp:b2").clear_since_s == T0 + 400
    assert again.acknowledge(3, "ops-anna", None, T0 + 401).alert_key == "battery_silent:b3"
    assert again.add_silence(Silence({"kind": "x"}, T0, T0 + 1, "a")).id == 4


def test_restore_refuses_two_open_alerts_of_one_key() -> None:
    """Two open alerts with one key cannot both be restored."""
    book = AlertBook()
    book.observe("shard-0", [overtemp()], T0)
    alert = book.get("pack_overtemp:b1")
    with pytest.raises(ValueError, match="one open alert per key"):
        AlertBook().restore([alert, replace(alert)], [])


def test_hundred_thousand_signals_are_handled_in_linear_passes() -> None:
    """A broker outage's 100,000 silent batteries open, fire, get inhibited and clear
    through dict look-ups (no assertion on time: a quadratic pass would not finish)."""
    book = AlertBook()
    signals = [silent(f"b{i:06d}", depot=f"d{i % 50}") for i in range(100_000)]
    assert len(book.observe("silence-rule", signals, T0)) == 100_000
    book.observe("silence-rule", signals, T0 + 60)
    book.observe("ops", [ops("broker_unreachable")], T0 + 60)
    fired = book.evaluate(T0 + 180)
    assert len(fired) == 100_001
    assert book.get("battery_silent:b099999").inhibited_by == "broker_unreachable"
    book.observe("silence-rule", [], T0 + 200)
    assert len(book.evaluate(T0 + 500)) == 100_000
    assert [a.key for a in book.open_alerts()] == ["broker_unreachable"]

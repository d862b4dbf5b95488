"""The alert manager: persist, then notify, then feed the planner; failures of each; restart.

Runs on an in-memory store (which enforces one open alert per key, like the database's
index) and a fake clock; no I/O.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace

import pytest

from alerts.manager import AlertManager
from alerts.rules import AlertRules, KindTiming
from contracts.alerts import (
    Alert,
    AlertCategory,
    AlertSeverity,
    AlertSignal,
    AlertState,
    AlertTransition,
    Silence,
)

S = AlertState
V = AlertSeverity
C = AlertCategory
T0 = 1_764_172_800.0


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t


class MemoryStore:
    """The store protocol in memory: rows by id, events in order, silences; ``fail`` makes
    the next saves raise, as a lost database would."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.rows: dict[int, Alert] = {}
        self.events: list[AlertTransition] = []
        self.silences: dict[int, Silence] = {}
        self.expired_by: dict[int, str] = {}
        self.saves = 0
        self.fail = 0
        self._next_id = 1

    async def load_open(self) -> tuple[list[Alert], list[Silence]]:
        alerts = [replace(a) for a in self.rows.values() if a.state.is_open]
        return alerts, [s for s in self.silences.values() if s.ends_at_s > self.clock()]

    async def save(self, alerts: Sequence[Alert], transitions: Sequence[AlertTransition]) -> None:
        if self.fail:
            self.fail -= 1
            raise ConnectionError("database away")
        rows = dict(self.rows)
        new_ids: dict[str, int] = {}
        for alert in [a for a in alerts if a.id is not None]:
            rows[alert.id] = replace(alert)  # type: ignore[index]
        for alert in [a for a in alerts if a.id is None]:
            assert alert.key not in new_ids, "two new alerts of one key in one save"
            new_ids[alert.key] = self._next_id
            rows[self._next_id] = replace(alert, id=self._next_id)
            self._next_id += 1
        open_keys = [a.key for a in rows.values() if a.state.is_open]
        assert len(open_keys) == len(set(open_keys)), "the open-key index refuses this save"
        for t in transitions:
            alert_id = t.alert_id if t.alert_id is not None else new_ids[t.alert_key]
            self.events.append(replace(t, alert_id=alert_id))
        self.rows = rows
        self.saves += 1
        for alert in alerts:
            if alert.id is None:
                alert.id = new_ids[alert.key]

    async def add_silence(self, silence: Silence) -> Silence:
        stored = replace(silence, id=len(self.silences) + 100)
        self.silences[stored.id] = stored  # type: ignore[index]
        return stored

    async def expire_silence(self, silence_id: int, actor: str, at_s: float) -> Silence:
        ended = replace(self.silences[silence_id], ends_at_s=at_s)
        self.silences[silence_id] = ended
        self.expired_by[silence_id] = actor
        return ended

    def history(self, alert_id: int) -> list[tuple[S | None, S, str]]:
        return [(t.from_state, t.to_state, t.actor) for t in self.events if t.alert_id == alert_id]


class Harness:
    """A started manager with its store, clock and what it told whom."""

    def __init__(self, rules: AlertRules | None = None, store: MemoryStore | None = None) -> None:
        self.clock = Clock() if store is None else store.clock
        self.store = MemoryStore(self.clock) if store is None else store
        self.notified: list[tuple[Alert, AlertTransition]] = []
        self.urgent: list[Alert] = []
        self.saved_before_notify = True
        self.manager = AlertManager(
            rules or AlertRules(), self.store, self._notify, self._urgent, now=self.clock
        )

    async def _notify(self, pairs: Sequence[tuple[Alert, AlertTransition]]) -> None:
        for alert, _ in pairs:
            self.saved_before_notify &= alert.id in self.store.rows
        self.notified.extend(pairs)

    async def _urgent(self, alerts: Sequence[Alert]) -> None:
        self.urgent.extend(alerts)

    def told(self) -> list[tuple[str, S | None, S]]:
        return [(a.key, t.from_state, t.to_state) for a, t in self.notified]


async def started(rules: AlertRules | None = None, store: MemoryStore | None = None) -> Harness:
    h = Harness(rules, store)
    await h.manager.start()
    return h


def overtemp(battery: str = "b1", severity: AlertSeverity = V.CRITICAL) -> AlertSignal:
    """A health signal with a battery (hold 0 s, clear 300 s)."""
    return AlertSignal(
        key=f"pack_overtemp:{battery}", kind="pack_overtemp", category=C.HEALTH, severity=severity,
        summary="hot", at_s=T0, battery_id=battery, labels={"depot": "d1"},
    )  # fmt: skip


def silent(battery: str) -> AlertSignal:
    """An operations warning with a battery (hold 120 s, clear 300 s)."""
    return AlertSignal(
        key=f"battery_silent:{battery}", kind="battery_silent", category=C.OPERATIONS,
        severity=V.WARNING, summary="silent", at_s=T0, battery_id=battery, labels={"depot": "d1"},
    )  # fmt: skip


def broker() -> AlertSignal:
    """Critical, but about no battery."""
    return AlertSignal(
        key="broker_unreachable", kind="broker_unreachable", category=C.OPERATIONS,
        severity=V.CRITICAL, summary="broker down", at_s=T0,
    )  # fmt: skip


async def test_observe_saves_once_then_notifies_the_firing() -> None:
    """One save per call with ids on alerts and transitions; notify hears the firing (not
    the pending) only after the save, with a snapshot that carries the id."""
    h = await started()
    out = await h.manager.observe("shard-0", [overtemp("b1"), overtemp("b2")])
    assert h.store.saves == 1
    assert all(t.alert_id is not None for t in out) and len(out) == 4
    assert h.told() == [
        ("pack_overtemp:b1", S.PENDING, S.FIRING),
        ("pack_overtemp:b2", S.PENDING, S.FIRING),
    ]
    assert h.saved_before_notify
    alert_id = h.notified[0][0].id
    assert alert_id is not None and h.notified[0][1].alert_id == alert_id
    assert h.store.history(alert_id) == [(None, S.PENDING, "system"), (S.PENDING, S.FIRING, "system")]
    # Nothing changed: no save, nothing told.
    await h.manager.observe("shard-0", [overtemp("b1"), overtemp("b2")])
    await h.manager.tick()
    assert h.store.saves == 1 and len(h.notified) == 2


async def test_hold_then_fire_and_resolve_are_told_once() -> None:
    """A held signal is told when it fires and when it resolves; flapping in between is not."""
    h = await started()
    await h.manager.observe("ops", [silent("b1")])
    assert h.notified == [] and h.store.saves == 1  # the pending alert is history only
    for dt in (30, 60, 119):
        h.clock.t = T0 + dt
        await h.manager.tick()
    assert h.notified == []
    h.clock.t = T0 + 120
    await h.manager.tick()
    for k in range(10):  # flapping faster than clear_s
        h.clock.t = T0 + 130 + 20 * k
        await h.manager.observe("ops", [] if k % 2 else [silent("b1")])
        await h.manager.tick()
    h.clock.t += 1
    await h.manager.observe("ops", [])
    h.clock.t += 300
    await h.manager.tick()
    assert h.told() == [
        ("battery_silent:b1", S.PENDING, S.FIRING),
        ("battery_silent:b1", S.FIRING, S.RESOLVED),
    ]


async def test_pending_that_clears_is_never_notified() -> None:
    """A pending alert that clears resolves as never fired: saved in history, told to nobody."""
    h = await started()
    await h.manager.observe("ops", [silent("b1")])
    h.clock.t = T0 + 10
    await h.manager.observe("ops", [])
    h.clock.t = T0 + 400
    (t,) = await h.manager.tick()
    assert (t.from_state, t.to_state) == (S.PENDING, S.RESOLVED)
    assert h.notified == [] and h.urgent == []
    (row,) = h.store.rows.values()
    assert row.state is S.RESOLVED and row.fired_at_s is None


async def test_new_alert_after_resolve_gets_a_new_id() -> None:
    """The same key after a resolution is a second row with its own id and history."""
    h = await started()
    await h.manager.observe("shard-0", [overtemp()])
    h.clock.t = T0 + 1
    await h.manager.observe("shard-0", [])
    h.clock.t = T0 + 400
    await h.manager.tick()
    h.clock.t = T0 + 500
    await h.manager.observe("shard-0", [overtemp()])
    first, second = sorted(h.store.rows.values(), key=lambda a: a.id or 0)
    assert (first.state, second.state) == (S.RESOLVED, S.FIRING)
    assert first.key == second.key and first.id != second.id
    assert len(h.store.history(second.id)) == 2  # type: ignore[arg-type]


async def test_silenced_alert_lives_on_untold_until_the_silence_expires() -> None:
    """A silenced alert fires and resolves unheard; after expiry the next firing is told."""
    h = await started()
    silence = await h.manager.add_silence({"kind": "pack_overtemp"}, 3600, "ops-anna", "known")
    assert silence.id == 100 and silence.starts_at_s == T0 and silence.created_at_s == T0
    await h.manager.observe("shard-0", [overtemp()])
    (row,) = h.store.rows.values()
    assert row.state is S.FIRING and row.silenced_by == 100
    h.clock.t = T0 + 1
    await h.manager.observe("shard-0", [])
    h.clock.t = T0 + 400
    await h.manager.tick()
    assert h.notified == [] and h.urgent == []  # muted: not even the planner
    h.clock.t = T0 + 500
    ended = await h.manager.expire_silence(100, "ops-anna")
    assert ended.ends_at_s == T0 + 500 and h.store.expired_by == {100: "ops-anna"}
    assert h.manager.silences() == [] and h.manager.silences(include_expired=True) == [ended]
    h.clock.t = T0 + 600
    await h.manager.observe("shard-0", [overtemp()])
    assert h.told() == [("pack_overtemp:b1", S.PENDING, S.FIRING)]
    assert h.notified[0][0].silenced_by is None


async def test_silence_added_later_mutes_open_alerts_and_saves_the_flag() -> None:
    """Adding a silence updates and saves the mute flags of open alerts at once."""
    h = await started()
    await h.manager.observe("shard-0", [overtemp("b1"), overtemp("b2")])
    await h.manager.add_silence({"battery_id": "b2"}, 600, "ops-anna")
    flags = {a.key: a.silenced_by for a in h.store.rows.values()}
    assert flags == {"pack_overtemp:b1": None, "pack_overtemp:b2": 100}
    with pytest.raises(ValueError, match="at least one matcher"):
        await h.manager.add_silence({}, 600, "ops-anna")
    with pytest.raises(ValueError, match="non-empty author"):
        await h.manager.add_silence({"kind": "x"}, 600, "")
    with pytest.raises(KeyError, match="No active silence with id 5"):
        await h.manager.expire_silence(5, "ops-anna")


async def test_inhibited_battery_alerts_are_not_told() -> None:
    """While broker_unreachable fires, battery_silent alerts fire unheard; once it resolves
    they are no longer inhibited."""
    rules = AlertRules(per_kind={"battery_silent": KindTiming(300, 300)})
    h = await started(rules)
    await h.manager.observe("ops", [broker()])
    await h.manager.observe("silence-rule", [silent(f"b{i}") for i in range(3)])
    h.clock.t = T0 + 120
    await h.manager.tick()
    assert h.told() == [("broker_unreachable", S.PENDING, S.FIRING)]
    assert h.urgent == []  # critical, but no battery
    h.clock.t = T0 + 300
    await h.manager.tick()
    assert len(h.notified) == 1
    assert {a.inhibited_by for a in h.store.rows.values() if a.kind == "battery_silent"} == {
        "broker_unreachable"
    }
    await h.manager.observe("ops", [])
    h.clock.t = T0 + 600
    await h.manager.observe("silence-rule", [silent(f"b{i}") for i in range(3)])
    await h.manager.tick()
    assert {a.inhibited_by for a in h.store.rows.values() if a.kind == "battery_silent"} == {None}
    assert h.told()[-1] == ("broker_unreachable", S.FIRING, S.RESOLVED)


async def test_urgent_feed_gets_only_critical_battery_alerts_that_fire() -> None:
    """The planner hears critical battery alerts on firing and on escalation to critical;
    not warnings, not batteryless alerts, not acknowledgements."""
    h = await started()
    await h.manager.observe("shard-0", [overtemp("b1"), overtemp("b2", V.WARNING)])
    assert [a.key for a in h.urgent] == ["pack_overtemp:b1"]
    assert h.urgent[0].id is not None and h.urgent[0].state is S.FIRING
    await h.manager.observe("shard-0", [overtemp("b1"), overtemp("b2", V.CRITICAL)])
    assert [a.key for a in h.urgent] == ["pack_overtemp:b1", "pack_overtemp:b2"]
    assert h.told()[-1] == ("pack_overtemp:b2", S.FIRING, S.FIRING)  # the escalation is told
    await h.manager.acknowledge(h.urgent[0].id, "ops-anna")
    await h.manager.observe("ops", [broker()], complete=False)
    h.clock.t = T0 + 120
    await h.manager.tick()
    assert len(h.urgent) == 2


async def test_failing_notify_and_urgent_are_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    """A listener that raises is logged and counted; the state is saved all the same."""
    h = Harness()

    async def broken(_: object) -> None:
        raise RuntimeError("webhook down")

    h.manager = AlertManager(AlertRules(), h.store, broken, broken, now=h.clock)
    await h.manager.start()
    with caplog.at_level(logging.ERROR, logger="alerts.manager"):
        await h.manager.observe("shard-0", [overtemp()])
    (row,) = h.store.rows.values()
    assert row.state is S.FIRING
    stats = h.manager.stats()
    assert (stats.notify_failures, stats.urgent_failures, stats.notified) == (1, 1, 0)
    assert "notifying 1 alert transitions failed" in caplog.text
    assert "feeding 1 urgent alerts to the planner failed" in caplog.text


async def test_failed_save_raises_and_is_saved_and_told_next_time() -> None:
    """A save that fails raises and tells nobody; the next call saves all of it, in order,
    then tells."""
    h = await started()
    h.store.fail = 1
    with pytest.raises(ConnectionError):
        await h.manager.observe("shard-0", [overtemp()])
    assert h.store.rows == {} and h.notified == []
    assert h.manager.stats().unsaved_transitions == 2 and h.manager.stats().save_failures == 1
    h.clock.t = T0 + 5
    await h.manager.tick()
    (row,) = h.store.rows.values()
    assert h.store.history(row.id) == [(None, S.PENDING, "system"), (S.PENDING, S.FIRING, "system")]  # type: ignore[arg-type]
    assert h.told() == [("pack_overtemp:b1", S.PENDING, S.FIRING)]
    assert h.manager.stats().unsaved_transitions == 0


async def test_alert_reopened_while_the_store_was_away_is_two_rows() -> None:
    """An alert that opened, resolved and opened again between saves becomes two rows,
    the older saved first (the open-key index would refuse the other order)."""
    h = await started()
    h.store.fail = 3
    with pytest.raises(ConnectionError):
        await h.manager.observe("shard-0", [overtemp()])  # opens and fires
    h.clock.t = T0 + 1
    with pytest.raises(ConnectionError):
        await h.manager.observe("shard-0", [])  # clears
    h.clock.t = T0 + 400
    with pytest.raises(ConnectionError):
        await h.manager.tick()  # resolves
    h.clock.t = T0 + 500
    await h.manager.observe("shard-0", [overtemp()])  # opens again; the store is back
    assert h.store.saves == 2
    first, second = sorted(h.store.rows.values(), key=lambda a: a.id or 0)
    assert (first.state, second.state) == (S.RESOLVED, S.FIRING)
    assert [x[1] for x in h.store.history(first.id)] == [S.PENDING, S.FIRING, S.RESOLVED]  # type: ignore[arg-type]
    assert [x[1] for x in h.store.history(second.id)] == [S.PENDING, S.FIRING]  # type: ignore[arg-type]


async def test_acknowledge_by_id() -> None:
    """Acknowledging by id saves an attributed transition, tells it, and returns the alert."""
    h = await started()
    await h.manager.observe("shard-0", [overtemp()])
    alert_id = h.notified[0][0].id
    assert alert_id is not None
    acked = await h.manager.acknowledge(alert_id, "ops-anna", "on it")
    assert acked.state is S.ACKNOWLEDGED and acked.acknowledged_by == "ops-anna"
    assert h.store.history(alert_id)[-1] == (S.FIRING, S.ACKNOWLEDGED, "ops-anna")
    assert h.told()[-1] == ("pack_overtemp:b1", S.FIRING, S.ACKNOWLEDGED)
    with pytest.raises(ValueError, match="got one that is acknowledged"):
        await h.manager.acknowledge(alert_id, "ops-ben")
    with pytest.raises(KeyError):
        await h.manager.acknowledge(999, "ops-ben")


async def test_restart_restores_open_alerts_and_timers() -> None:
    """A new manager on the same store resumes: same open alerts, silences, timers."""
    h = await started()
    await h.manager.add_silence({"battery_id": "b2"}, 3600, "ops-anna")
    await h.manager.observe("shard-0", [overtemp("b1"), overtemp("b2")])
    await h.manager.observe("ops", [silent("b3")])
    h.clock.t = T0 + 50
    await h.manager.observe("shard-0", [overtemp("b2")])  # b1 clears from T0 + 50

    again = await started(store=h.store)
    assert {a.key for a in again.manager.list_open()} == {
        "pack_overtemp:b1", "pack_overtemp:b2", "battery_silent:b3",
    }  # fmt: skip
    assert [s.id for s in again.manager.silences()] == [100]
    h.clock.t = T0 + 120
    await again.manager.tick()
    assert again.told() == [("battery_silent:b3", S.PENDING, S.FIRING)]
    h.clock.t = T0 + 350
    await again.manager.tick()
    assert again.told()[-1] == ("pack_overtemp:b1", S.FIRING, S.RESOLVED)
    assert {a.key: a.silenced_by for a in again.manager.list_open()}["pack_overtemp:b2"] == 100


async def test_calls_before_start_are_refused() -> None:
    """Changing alerts before start() would overwrite what the store holds: refused."""
    h = Harness()
    with pytest.raises(RuntimeError, match="await start"):
        await h.manager.observe("shard-0", [overtemp()])


async def test_counts_and_stats() -> None:
    """counts() groups open alerts by state and severity; stats() counts the work done."""
    h = await started()
    await h.manager.observe("shard-0", [overtemp("b1"), overtemp("b2", V.WARNING)])
    await h.manager.observe("ops", [silent("b3")])
    assert h.manager.counts() == {
        (S.FIRING, V.CRITICAL): 1, (S.FIRING, V.WARNING): 1, (S.PENDING, V.WARNING): 1,
    }  # fmt: skip
    stats = h.manager.stats()
    assert (stats.open_alerts, stats.observed_signals, stats.transitions) == (3, 3, 5)
    assert (stats.notified, stats.urgent_alerts, stats.muted, stats.silences) == (2, 1, 0, 0)

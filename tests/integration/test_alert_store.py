"""The alert store against the machine's real PostgreSQL: round trips, the open-key index,
history order and silences.

Every test gets its own schema with the migrations applied, dropped afterwards.
"""

from __future__ import annotations

import time

import psycopg
import pytest

from contracts.alerts import (
    Alert,
    AlertCategory,
    AlertSeverity,
    AlertState,
    AlertTransition,
    Silence,
)
from store.alert_store import AlertStore

pytestmark = pytest.mark.integration

S = AlertState
T0 = 1_764_172_800.0


def new_alert(key: str = "pack_overtemp:b1", *, battery_id: str | None = "b1", **kw: object) -> Alert:
    """A pending health alert at T0 (fields overridable)."""
    fields: dict[str, object] = dict(
        key=key, kind=key.split(":")[0], category=AlertCategory.HEALTH,
        severity=AlertSeverity.CRITICAL, state=S.PENDING, summary="pack at 80.0 °C",
        source="shard-0", started_at_s=T0, last_active_at_s=T0, battery_id=battery_id,
        labels={"depot": "d1"}, evidence={"cell_temp_c": 80.0, "limit_c": 60.0},
    )  # fmt: skip
    fields.update(kw)
    return Alert(**fields)  # type: ignore[arg-type]


def opened(alert: Alert, at_s: float = T0) -> AlertTransition:
    return AlertTransition(alert.key, None, S.PENDING, at_s, "system")


async def test_save_assigns_ids_and_round_trips(conn: psycopg.AsyncConnection) -> None:
    """Saved alerts get ids; load_open, get and list return them field for field."""
    store = AlertStore(conn)
    a = new_alert(lat=52.52, lon=13.4, zone="z1", vehicle_id="v1")
    b = new_alert("battery_silent:b2", battery_id="b2", category=AlertCategory.OPERATIONS,
                  severity=AlertSeverity.WARNING, started_at_s=T0 + 5, last_active_at_s=T0 + 5)  # fmt: skip
    await store.save([a, b], [opened(a), opened(b, T0 + 5)])
    assert a.id is not None and b.id is not None and a.id != b.id

    loaded, silences = await store.load_open()
    assert silences == []
    by_key = {x.key: x for x in loaded}
    for original in (a, b):
        got = by_key[original.key]
        assert got.started_at_s == pytest.approx(original.started_at_s, abs=1e-5)
        assert got.to_dict() | {"started_at_s": 0, "last_active_at_s": 0} == (
            original.to_dict() | {"started_at_s": 0, "last_active_at_s": 0}
        )
    assert (await store.get(a.id)).evidence == {"cell_temp_c": 80.0, "limit_c": 60.0}
    assert [x.key for x in await store.list()] == [b.key, a.key]  # newest first
    assert [x.key for x in await store.list(battery_id="b1")] == [a.key]
    assert [x.key for x in await store.list(severity="warning", category="operations")] == [b.key]
    with pytest.raises(KeyError, match="No alert with id 999999"):
        await store.get(999_999)


async def test_update_then_resolve_and_reopen_in_one_save(conn: psycopg.AsyncConnection) -> None:
    """An update moves a row through its states; a resolved key's new alert saved in the
    same call as the resolution passes the open-key index (updates run first)."""
    store = AlertStore(conn)
    a = new_alert()
    await store.save([a], [opened(a)])
    a.state, a.fired_at_s = S.FIRING, T0 + 1
    await store.save([a], [AlertTransition(a.key, S.PENDING, S.FIRING, T0 + 1, "system", alert_id=a.id)])
    a.state, a.resolved_at_s = S.RESOLVED, T0 + 400
    again = new_alert(started_at_s=T0 + 500, last_active_at_s=T0 + 500)
    await store.save(
        [a, again],
        [AlertTransition(a.key, S.FIRING, S.RESOLVED, T0 + 400, "system", alert_id=a.id), opened(again, T0 + 500)],
    )
    assert a.id is not None and again.id is not None and again.id != a.id
    assert (await store.get(a.id)).state is S.RESOLVED
    assert [x.id for x in await store.list(state="open")] == [again.id]
    assert [x.id for x in await store.list(state="resolved")] == [a.id]
    assert await store.open_counts() == {"pending": 1, "firing": 0, "acknowledged": 0}
    assert {x.id for x in await store.list(state=None)} == {a.id, again.id}


async def test_open_key_index_refuses_a_second_open_alert(conn: psycopg.AsyncConnection) -> None:
    """The partial unique index allows one open alert per key; the failed save writes
    nothing and assigns no id."""
    store = AlertStore(conn)
    first = new_alert()
    await store.save([first], [opened(first)])
    second = new_alert()
    with pytest.raises(psycopg.errors.UniqueViolation):
        await store.save([second], [opened(second)])
    assert second.id is None
    assert [x.id for x in await store.list(state=None)] == [first.id]


async def test_save_refuses_ambiguous_batches(conn: psycopg.AsyncConnection) -> None:
    """Two id-less alerts of one key, or a transition without an alert, are refused up front."""
    store = AlertStore(conn)
    with pytest.raises(ValueError, match="at most one alert without an id per key"):
        await store.save([new_alert(), new_alert()], [])
    with pytest.raises(ValueError, match="belong to a new alert"):
        await store.save([], [opened(new_alert())])
    ghost = new_alert(id=424242)
    with pytest.raises(KeyError, match="No alert with id 424242"):
        await store.save([ghost], [])


async def test_history_is_in_order_and_attributed(conn: psycopg.AsyncConnection) -> None:
    """history() returns every transition oldest first, with the actor and note."""
    store = AlertStore(conn)
    a = new_alert()
    a.state, a.fired_at_s = S.FIRING, T0
    await store.save([a], [opened(a), AlertTransition(a.key, S.PENDING, S.FIRING, T0, "system")])
    a.state, a.acknowledged_at_s, a.acknowledged_by = S.ACKNOWLEDGED, T0 + 60, "ops-anna"
    await store.save(
        [a], [AlertTransition(a.key, S.FIRING, S.ACKNOWLEDGED, T0 + 60, "ops-anna", "on my way", a.id)]
    )
    history = await store.history(a.id)  # type: ignore[arg-type]
    assert [(t.from_state, t.to_state, t.actor, t.note) for t in history] == [
        (None, S.PENDING, "system", None),
        (S.PENDING, S.FIRING, "system", None),
        (S.FIRING, S.ACKNOWLEDGED, "ops-anna", "on my way"),
    ]
    assert all(t.alert_id == a.id and t.alert_key == a.key for t in history)
    assert history[-1].at_s == pytest.approx(T0 + 60, abs=1e-5)
    with pytest.raises(KeyError, match="No alert with id 31337"):
        await store.history(31337)


async def test_many_alerts_save_in_batches(conn: psycopg.AsyncConnection) -> None:
    """A report of 12,000 new alerts (more than one statement's batch) saves in one call."""
    store = AlertStore(conn)
    alerts = [
        new_alert(f"battery_silent:b{i}", battery_id=f"b{i}", category=AlertCategory.OPERATIONS)
        for i in range(12_000)
    ]
    await store.save(alerts, [opened(a) for a in alerts])
    assert len({a.id for a in alerts}) == 12_000
    loaded, _ = await store.load_open()
    assert len(loaded) == 12_000
    assert len(await store.history(alerts[-1].id)) == 1  # type: ignore[arg-type]


async def test_silences_add_list_expire(conn: psycopg.AsyncConnection) -> None:
    """Silences get ids; expiring ends them now and attributes it; listing hides ended ones
    unless asked; a silence cannot be expired twice, nor before it starts."""
    store = AlertStore(conn)
    now_s = time.time()
    active = await store.add_silence(
        Silence({"kind": "battery_silent"}, now_s - 10, now_s + 3600, "ops-anna", "depot move")
    )
    later = await store.add_silence(
        Silence({"key": "pack_overtemp:b1"}, now_s + 3600, now_s + 7200, "ops-ben")
    )
    assert active.id is not None and later.id is not None and active.created_at_s is not None
    assert dict(active.matchers) == {"kind": "battery_silent"}
    assert [s.id for s in await store.silences()] == [later.id, active.id]

    ended = await store.expire_silence(active.id, "ops-anna", now_s)
    assert ended.ends_at_s == pytest.approx(now_s, abs=1e-5)
    assert [s.id for s in await store.silences()] == [later.id]
    assert [s.id for s in await store.silences(include_expired=True)] == [later.id, active.id]
    _, live = await store.load_open()
    assert [s.id for s in live] == [later.id]

    with pytest.raises(KeyError, match=f"No active silence with id {active.id}"):
        await store.expire_silence(active.id, "ops-anna", now_s + 1)
    with pytest.raises(ValueError, match="to have started"):
        await store.expire_silence(later.id, "ops-ben", now_s)
    with pytest.raises(KeyError, match="No active silence with id 999"):
        await store.expire_silence(999, "ops-ben", now_s)


async def test_manager_on_the_real_store_survives_a_restart(conn: psycopg.AsyncConnection) -> None:
    """The alert manager persists through AlertStore: ids, history, acknowledgement and
    silences come back in a new manager after a restart."""
    from alerts.manager import AlertManager
    from alerts.rules import AlertRules
    from contracts.alerts import AlertSignal

    # Behind the database's clock, which decides whether a stored silence has ended.
    clock = [time.time() - 60]
    told: list[tuple[Alert, AlertTransition]] = []

    async def notify(pairs: object) -> None:
        told.extend(pairs)  # type: ignore[arg-type]

    def manager() -> AlertManager:
        return AlertManager(AlertRules(), AlertStore(conn), notify, now=lambda: clock[0])

    def hot(battery: str) -> AlertSignal:
        return AlertSignal(
            key=f"pack_overtemp:{battery}", kind="pack_overtemp", category=AlertCategory.HEALTH,
            severity=AlertSeverity.CRITICAL, summary="hot", at_s=clock[0], battery_id=battery,
        )  # fmt: skip

    first = manager()
    await first.start()
    await first.observe("shard-0", [hot("b1"), hot("b2")])
    silence = await first.add_silence({"battery_id": "b2"}, 3600, "ops-anna")
    alert_id = told[0][0].id
    assert alert_id is not None
    await first.acknowledge(alert_id, "ops-anna", "on it")

    clock[0] += 1
    second = manager()
    await second.start()
    by_key = {a.key: a for a in second.list_open()}
    assert by_key["pack_overtemp:b1"].state is S.ACKNOWLEDGED
    assert by_key["pack_overtemp:b2"].silenced_by == silence.id
    store = AlertStore(conn)
    assert [(t.from_state, t.to_state, t.actor) for t in await store.history(alert_id)] == [
        (None, S.PENDING, "system"),
        (S.PENDING, S.FIRING, "system"),
        (S.FIRING, S.ACKNOWLEDGED, "ops-anna"),
    ]
    clock[0] += 2
    await second.expire_silence(silence.id, "ops-anna")  # type: ignore[arg-type]
    assert (await store.silences()) == []
    assert (await store.get(by_key["pack_overtemp:b2"].id)).silenced_by is None  # type: ignore[arg-type]

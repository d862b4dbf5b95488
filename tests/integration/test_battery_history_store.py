"""The per-battery reads behind the dashboard's battery page, against real PostgreSQL:
one battery's health history (``HealthHistoryStore.battery_history``) and its work orders
(``WorkOrderStore.list(battery_id=...)``)."""

from __future__ import annotations

import psycopg
import pytest

from contracts.health import HealthRow
from contracts.work_orders import WorkOrderKind, WorkOrderState
from store.health_history import HealthHistoryStore
from store.work_order_store import WorkOrderStore

pytestmark = pytest.mark.integration

T0_S = 1_800_000_000.0


async def test_health_history_of_one_battery_is_its_newest_rows_oldest_first(conn: psycopg.AsyncConnection) -> None:
    """Only the asked battery's rows, within [from, to], the newest ``limit`` of them,
    oldest first, with the scoring time in Unix seconds."""
    store = HealthHistoryStore(conn)
    for k in range(5):
        rows = [HealthRow("b-1", "2027-01", 95.0 - k, 90.0 - k, 10.0 + k, 2), HealthRow("b-2", "2027-01", 80.0, 70.0, 5.0, 2)]
        await store.append(rows, T0_S + 3600.0 * k)
    newest = await store.battery_history("b-1", None, None, 3)
    assert [p.scored_at_s for p in newest] == [T0_S + 3600.0 * k for k in (2, 3, 4)]
    assert (newest[0].soh_pct, newest[0].health_score, newest[0].efc, newest[0].model_version) == (93.0, 88.0, 12.0, 2)
    ranged = await store.battery_history("b-1", T0_S + 3600.0, T0_S + 7200.0, 100)
    assert [p.soh_pct for p in ranged] == [94.0, 93.0]
    assert await store.battery_history("b-3", None, None, 10) == []
    with pytest.raises(ValueError, match="limit"):
        await store.battery_history("b-1", None, None, 0)


async def test_work_orders_of_one_battery(conn: psycopg.AsyncConnection) -> None:
    """``battery_id`` keeps that battery's orders, with the other filters still applied."""
    store = WorkOrderStore(conn)
    for battery in ("b-1", "b-2", "b-1"):
        order = await store.create(WorkOrderKind.BATTERY_SWAP, "v-1", battery, 52.5, 13.4, 10.0, 5.0, "planner")
        if battery == "b-1":  # a battery has one open order at a time: close it for the next
            await store.transition(order.id, WorkOrderState.CANCELLED, "operator")
    assert [o.battery_id for o in await store.list(None, 10, battery_id="b-1")] == ["b-1", "b-1"]
    assert len(await store.list(None, 10, battery_id="b-2")) == 1
    assert await store.list(None, 10, battery_id="b-9") == []

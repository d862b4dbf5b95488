"""Work orders against the machine's real Postgres: the state machine, history and locking.

Every test gets its own Postgres schema with the migrations applied, dropped afterwards.
"""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from contracts.work_orders import (
    InvalidTransition,
    SwapRecord,
    SwapRecordError,
    WorkOrderKind,
    WorkOrderState,
)
from store import StoreUsageError, open_postgres
from store.work_order_store import WorkOrderStore

pytestmark = pytest.mark.integration

S = WorkOrderState


async def new_swap(store: WorkOrderStore) -> int:
    """Create a battery swap for vehicle v1 / battery b1; return its id."""
    order = await store.create(
        WorkOrderKind.BATTERY_SWAP, "v1", "b1", 52.52, 13.40, 2.0, 15.0, actor="planner"
    )
    return order.id


async def test_full_lifecycle_records_swap_and_attributed_history(
    conn: psycopg.AsyncConnection,
) -> None:
    """create -> assigned -> en_route -> done stores the swap and one ordered event per change."""
    store = WorkOrderStore(conn)
    created = await store.create(
        WorkOrderKind.BATTERY_SWAP, "v1", "b1", 52.52, 13.40, 2.0, 15.0, actor="planner"
    )
    assert created.state is S.PLANNED and created.technician_id is None
    assigned = await store.transition(created.id, S.ASSIGNED, "planner", technician_id="t7")
    assert assigned.technician_id == "t7"
    await store.transition(created.id, S.EN_ROUTE, "t7", note="leaving depot")
    done = await store.transition(created.id, S.DONE, "t7", swap=SwapRecord("v1", "b1", "b9"))
    assert done.state is S.DONE and done.technician_id == "t7"
    assert done.updated_at_s >= created.created_at_s
    assert await store.get(created.id) == done

    events = await store.history(created.id)
    assert [(e["from_state"], e["to_state"], e["actor"]) for e in events] == [
        (None, "planned", "planner"),
        ("planned", "assigned", "planner"),
        ("assigned", "en_route", "t7"),
        ("en_route", "done", "t7"),
    ]
    assert [e["at_s"] for e in events] == sorted(e["at_s"] for e in events)
    assert events[2]["note"] == "leaving depot"
    assert (
        events[3]["swap_vehicle_id"],
        events[3]["swap_battery_out"],
        events[3]["swap_battery_in"],
    ) == ("v1", "b1", "b9")
    assert all(e["swap_battery_in"] is None for e in events[:3])


async def test_replan_clears_technician_and_list_filters_by_state(
    conn: psycopg.AsyncConnection,
) -> None:
    """assigned -> planned un-assigns the order; list(state) returns only orders in it."""
    store = WorkOrderStore(conn)
    first, second = await new_swap(store), await new_swap(store)
    await store.transition(first, S.ASSIGNED, "planner", technician_id="t1")
    replanned = await store.transition(first, S.PLANNED, "planner", note="re-plan")
    assert replanned.technician_id is None
    await store.transition(second, S.CANCELLED, "operator")
    assert [o.id for o in await store.list(S.PLANNED)] == [first]
    assert [o.id for o in await store.list(S.CANCELLED)] == [second]
    assert [o.id for o in await store.list(limit=1)] == [first]


async def test_invalid_changes_are_rejected_and_write_nothing(
    conn: psycopg.AsyncConnection,
) -> None:
    """A forbidden move or a missing swap raises, and neither the row nor the history changes."""
    store = WorkOrderStore(conn)
    order_id = await new_swap(store)
    before = await store.get(order_id)
    with pytest.raises(InvalidTransition, match=f"work order {order_id} from planned to done"):
        await store.transition(order_id, S.DONE, "t1", swap=SwapRecord("v1", "b1", "b2"))
    await store.transition(order_id, S.ASSIGNED, "planner", technician_id="t1")
    await store.transition(order_id, S.EN_ROUTE, "t1")
    mid = await store.get(order_id)
    with pytest.raises(SwapRecordError):
        await store.transition(order_id, S.DONE, "t1")
    assert await store.get(order_id) == mid
    assert len(await store.history(order_id)) == 3
    assert before.state is S.PLANNED
    assert not conn.info.transaction_status  # IDLE: the failed transaction was rolled back


async def test_unknown_id_raises_key_error(conn: psycopg.AsyncConnection) -> None:
    """get, transition and history name the missing id in a KeyError."""
    store = WorkOrderStore(conn)
    with pytest.raises(KeyError, match="No work order with id 999"):
        await store.get(999)
    with pytest.raises(KeyError, match="999"):
        await store.transition(999, S.CANCELLED, "operator")
    with pytest.raises(KeyError, match="999"):
        await store.history(999)


async def test_store_refuses_a_non_autocommit_connection(schema_url: str) -> None:
    """A connection that would leave transactions open is rejected with a clear error."""
    async with await psycopg.AsyncConnection.connect(schema_url) as raw:
        with pytest.raises(StoreUsageError, match="WorkOrderStore"):
            WorkOrderStore(raw)


async def test_concurrent_transitions_on_one_order_serialise(
    conn: psycopg.AsyncConnection, schema_url: str
) -> None:
    """Two racing assigned -> en_route moves: the row lock lets exactly one through.

    A third connection holds the row lock while both start, so both are queued on it; without
    ``FOR UPDATE`` both would read ``assigned`` and both would succeed.
    """
    store = WorkOrderStore(conn)
    order_id = await new_swap(store)
    await store.transition(order_id, S.ASSIGNED, "planner", technician_id="t1")
    async with (
        open_postgres(schema_url) as holder,
        open_postgres(schema_url) as conn_a,
        open_postgres(schema_url) as conn_b,
    ):
        store_a, store_b = WorkOrderStore(conn_a), WorkOrderStore(conn_b)
        async with holder.transaction():
            await holder.execute("SELECT 1 FROM work_orders WHERE id = %s FOR UPDATE", (order_id,))
            tasks = [
                asyncio.create_task(store_a.transition(order_id, S.EN_ROUTE, "t1", note="a")),
                asyncio.create_task(store_b.transition(order_id, S.EN_ROUTE, "t1", note="b")),
            ]
            await asyncio.sleep(0.3)
            assert not any(t.done() for t in tasks)  # both wait on the held lock
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=10)
    wins = [r for r in results if not isinstance(r, BaseException)]
    losses = [r for r in results if isinstance(r, BaseException)]
    assert len(wins) == 1 and wins[0].state is S.EN_ROUTE
    assert len(losses) == 1 and isinstance(losses[0], InvalidTransition)
    assert "from en_route to en_route" in str(losses[0])
    events = await store.history(order_id)
    assert [e["to_state"] for e in events] == ["planned", "assigned", "en_route"]

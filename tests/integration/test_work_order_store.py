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
from store import StoreUsageError, apply_migrations, open_postgres
from store.work_order_store import WorkOrderStore

pytestmark = pytest.mark.integration

S = WorkOrderState


async def new_swap(store: WorkOrderStore, battery_id: str = "b1") -> int:
    """Create a battery swap for vehicle v1 / ``battery_id``; return its id."""
    order = await store.create(
        WorkOrderKind.BATTERY_SWAP, "v1", battery_id, 52.52, 13.40, 2.0, 15.0, actor="planner"
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
    first, second = await new_swap(store), await new_swap(store, "b2")
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


# -- one open order per battery (migration 0011) --------------------------------------------


async def test_create_returns_the_open_order_of_a_battery(conn: psycopg.AsyncConnection) -> None:
    """A second create for a battery with an open order returns that order: no second row,
    no second creation event; once the order is closed, create makes a new one."""
    store = WorkOrderStore(conn)
    first = await store.create(
        WorkOrderKind.BATTERY_SWAP, "v1", "b1", 52.52, 13.40, 2.0, 15.0, actor="planner"
    )
    await store.transition(first.id, S.ASSIGNED, "planner", technician_id="t1")
    await store.transition(first.id, S.EN_ROUTE, "t1")
    again = await store.create(
        WorkOrderKind.INSPECTION, "v9", "b1", 52.0, 13.0, 9.0, 99.0, actor="planner-2"
    )
    assert again == await store.get(first.id)  # as it is: en route, its own kind and values
    assert again.state is S.EN_ROUTE and again.kind is WorkOrderKind.BATTERY_SWAP
    assert len(await store.list(battery_id="b1")) == 1
    assert [e["to_state"] for e in await store.history(first.id)] == ["planned", "assigned", "en_route"]
    await store.transition(first.id, S.FAILED, "t1")
    fresh = await store.create(
        WorkOrderKind.BATTERY_SWAP, "v1", "b1", 52.52, 13.40, 2.0, 15.0, actor="planner"
    )
    assert fresh.id != first.id and fresh.state is S.PLANNED


async def test_concurrent_creates_for_one_battery_make_one_order(
    conn: psycopg.AsyncConnection, schema_url: str
) -> None:
    """Two connections creating an order for one battery at once: both get the same order."""
    async with open_postgres(schema_url) as conn_a, open_postgres(schema_url) as conn_b:
        made = await asyncio.gather(*(
            WorkOrderStore(c).create(WorkOrderKind.BATTERY_SWAP, "v1", "b1", 52.5, 13.4, 2.0, 15.0, "planner")
            for c in (conn_a, conn_b)
        ))  # fmt: skip
    assert made[0] == made[1]
    store = WorkOrderStore(conn)
    assert len(await store.list(battery_id="b1")) == 1 and len(await store.history(made[0].id)) == 1


async def test_the_database_refuses_a_second_open_order(conn: psycopg.AsyncConnection) -> None:
    """The partial unique index holds whatever the writer: a raw second open row for a
    battery is refused, a closed one is not."""
    store = WorkOrderStore(conn)
    order_id = await new_swap(store)
    insert = (
        "INSERT INTO work_orders (kind, state, vehicle_id, battery_id, lat, lon, priority, value)"
        " VALUES ('battery_swap', %s, 'v1', 'b1', 52.5, 13.4, 1, 1)"
    )
    with pytest.raises(psycopg.errors.UniqueViolation, match="work_orders_one_open_per_battery"):
        await conn.execute(insert, ("assigned",))
    await conn.execute(insert, ("cancelled",))
    await conn.execute(insert, ("done",))
    assert [o.id for o in await store.open_orders()] == [order_id]


async def test_open_orders_lists_every_open_order_oldest_first(conn: psycopg.AsyncConnection) -> None:
    """open_orders: planned, assigned and en route, all of them (no limit), oldest first."""
    store = WorkOrderStore(conn)
    ids = [await new_swap(store, f"b{k}") for k in range(120)]
    await store.transition(ids[1], S.ASSIGNED, "planner", technician_id="t1")
    await store.transition(ids[2], S.ASSIGNED, "planner", technician_id="t1")
    await store.transition(ids[2], S.EN_ROUTE, "t1")
    await store.transition(ids[3], S.CANCELLED, "operator")
    await store.transition(ids[2], S.DONE, "t1", swap=SwapRecord("v1", "b2", "b-new"))
    opened = await store.open_orders()
    assert [o.id for o in opened] == [i for i in ids if i not in (ids[2], ids[3])]
    assert {o.state for o in opened} == {S.PLANNED, S.ASSIGNED}


async def test_migration_0011_closes_duplicate_open_orders_before_the_index(
    conn: psycopg.AsyncConnection,
) -> None:
    """Duplicates written before the index: per battery the order that got furthest (then
    the newest) stays open, the others are cancelled with an attributed event; then the
    index is built. Other batteries' orders are untouched."""
    # Back to the schema before 0011, holding duplicates (written as the old create did,
    # a row and its creation event) that it must clean up.
    await conn.execute("DROP INDEX work_orders_one_open_per_battery")
    await conn.execute("DELETE FROM schema_migrations WHERE version = '0011_one_open_work_order'")

    async def old_create(battery_id: str, state: str = "planned", tech: str | None = None) -> int:
        cur = await conn.execute(
            "INSERT INTO work_orders (kind, state, vehicle_id, battery_id, lat, lon, priority,"
            " value, technician_id) VALUES ('battery_swap', %s, 'v1', %s, 52.5, 13.4, 1, 1, %s)"
            " RETURNING id",
            (state, battery_id, tech),
        )
        row = await cur.fetchone()
        assert row is not None
        await conn.execute(
            "INSERT INTO work_order_events (work_order_id, to_state, actor) VALUES (%s, %s, 'old')",
            (row[0], state),
        )
        return int(row[0])

    en_route = await old_create("b1", "en_route", "t1")
    older_planned, newer_planned = await old_create("b1"), await old_create("b1")
    b2_old = await old_create("b2")
    b2_assigned = await old_create("b2", "assigned", "t2")
    b2_new = await old_create("b2")
    lone = await old_create("b3")
    closed = await old_create("b3", "cancelled")
    b4_old, b4_new = await old_create("b4"), await old_create("b4")

    assert await apply_migrations(conn) == ["0011_one_open_work_order"]
    store = WorkOrderStore(conn)
    open_ids = sorted(o.id for o in await store.open_orders())
    assert open_ids == sorted([en_route, b2_assigned, lone, b4_new])
    for order_id in (older_planned, newer_planned, b2_old, b2_new, b4_old):
        events = await store.history(order_id)
        assert len(events) == 2 and (await store.get(order_id)).state is S.CANCELLED
        assert (events[-1]["from_state"], events[-1]["to_state"], events[-1]["actor"]) == (
            "planned", "cancelled", "migration 0011",
        )
    assert len(await store.history(closed)) == 1 and len(await store.history(en_route)) == 1
    again = await store.create(WorkOrderKind.BATTERY_SWAP, "v1", "b2", 52.5, 13.4, 2.0, 15.0, "planner")
    assert again == await store.get(b2_assigned)

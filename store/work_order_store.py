"""Technician work orders in Postgres, each change a timestamped, attributed event."""

from __future__ import annotations

import builtins
from typing import Any

import psycopg
from psycopg.rows import dict_row

from contracts.work_orders import (
    OPEN_STATES,
    SwapRecord,
    WorkOrder,
    WorkOrderError,
    WorkOrderKind,
    WorkOrderState,
    check_change,
)
from store.postgres import connection_turn, own_transaction, require_autocommit

__all__ = ["WorkOrderStore"]

_COLUMNS = (
    "id, kind, state, vehicle_id, battery_id, lat, lon, priority, value, technician_id,"
    " extract(epoch FROM created_at)::float8 AS created_at_s,"
    " extract(epoch FROM updated_at)::float8 AS updated_at_s"
)

_OPEN = ", ".join(f"'{s.value}'" for s in sorted(OPEN_STATES))

# The conflict target names the partial unique index of migration 0011 (its columns and
# predicate), so a second open order for a battery is skipped, not an error.
_INSERT = f"""
INSERT INTO work_orders (kind, state, vehicle_id, battery_id, lat, lon, priority, value)
VALUES (%s, 'planned', %s, %s, %s, %s, %s, %s)
ON CONFLICT (battery_id) WHERE state IN ({_OPEN}) DO NOTHING
RETURNING {_COLUMNS}
"""

_SELECT_OPEN = f"SELECT {_COLUMNS} FROM work_orders WHERE state IN ({_OPEN})"

_SELECT_ONE = f"SELECT {_COLUMNS} FROM work_orders WHERE id = %s"

_UPDATE = f"""
UPDATE work_orders SET state = %s, technician_id = %s, updated_at = now()
WHERE id = %s
RETURNING {_COLUMNS}
"""

_INSERT_EVENT = """
INSERT INTO work_order_events (work_order_id, from_state, to_state, actor, technician_id,
                               note, swap_vehicle_id, swap_battery_out, swap_battery_in)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
"""

_HISTORY = """
SELECT id, work_order_id, extract(epoch FROM at)::float8 AS at_s, from_state, to_state, actor,
       technician_id, note, swap_vehicle_id, swap_battery_out, swap_battery_in
FROM work_order_events WHERE work_order_id = %s ORDER BY id
"""


def _order(row: dict[str, Any]) -> WorkOrder:
    return WorkOrder(
        id=row["id"],
        kind=WorkOrderKind(row["kind"]),
        state=WorkOrderState(row["state"]),
        vehicle_id=row["vehicle_id"],
        battery_id=row["battery_id"],
        lat=row["lat"],
        lon=row["lon"],
        priority=row["priority"],
        value=row["value"],
        created_at_s=row["created_at_s"],
        technician_id=row["technician_id"],
        updated_at_s=row["updated_at_s"],
    )


def _require_actor(actor: str) -> None:
    if not actor.strip():
        raise ValueError(f"Expected a non-empty actor to attribute the change to, got {actor!r}.")


class WorkOrderStore:
    """Work orders in ``work_orders``, their history in ``work_order_events``.

    Every change runs in one transaction that locks the order's row (``SELECT ... FOR
    UPDATE``), checks the move with :func:`contracts.work_orders.check_change`, updates the row
    and appends one event; two changes to one order therefore serialise, and the second is
    checked against the state the first left.

    Parameters
    ----------
    conn
        An autocommit Postgres connection with the migrations applied. Concurrent tasks and
        other stores may share it: their calls take turns on it
        (:func:`store.postgres.connection_turn`), one transaction at a time.
    """

    def __init__(self, conn: psycopg.AsyncConnection) -> None:
        require_autocommit(conn, "WorkOrderStore")
        self._conn = conn

    async def create(
        self,
        kind: WorkOrderKind,
        vehicle_id: str,
        battery_id: str,
        lat: float,
        lon: float,
        priority: float,
        value: float,
        actor: str,
    ) -> WorkOrder:
        """Create a ``planned`` work order and record its creation by ``actor``.

        Idempotent per battery: when ``battery_id`` already has an open order (planned,
        assigned or en route), that order is returned as it is (its kind, position and
        values unchanged) and nothing is written, no second row and no second creation
        event. A battery has at most one open order (the partial unique index of migration
        0011); a planner that lost its memory and asks again gets the order it made before.
        """
        _require_actor(actor)
        kind = WorkOrderKind(kind)
        action = f"creating a {kind.value} work order"
        async with (
            own_transaction(self._conn, "work-order", action),
            self._conn.cursor(row_factory=dict_row) as cur,
        ):
            # A conflicting order may be closed between the insert and the read of it; then
            # the next insert goes through. Losing that race three times running is a bug.
            for _ in range(3):
                await cur.execute(
                    _INSERT, (kind.value, vehicle_id, battery_id, lat, lon, priority, value)
                )
                row = await cur.fetchone()
                if row is not None:
                    break
                # ON CONFLICT waited for a concurrent insert to commit, and this statement
                # sees everything committed before it began (read committed): the open order.
                await cur.execute(_SELECT_OPEN + " AND battery_id = %s", (battery_id,))
                existing = await cur.fetchone()
                if existing is not None:
                    return _order(existing)
            else:
                raise WorkOrderError(
                    f"Expected to create or find the open work order of battery {battery_id!r}, "
                    "got neither three times (its orders kept closing in between)."
                )
            assert row is not None  # the loop left by break, with the inserted row
            order = _order(row)
            await cur.execute(
                _INSERT_EVENT,
                (order.id, None, order.state.value, actor, None, None, None, None, None),
            )
        return order

    async def transition(
        self,
        order_id: int,
        new_state: WorkOrderState,
        actor: str,
        *,
        technician_id: str | None = None,
        swap: SwapRecord | None = None,
        note: str | None = None,
        assigned_to: str | None = None,
    ) -> WorkOrder:
        """Move an order to ``new_state`` and record the change, atomically.

        Parameters
        ----------
        order_id
            The order to change.
        new_state
            Where it goes; see :data:`contracts.work_orders.ALLOWED_TRANSITIONS`.
        actor
            Who made the change (a technician, a planner run, an operator).
        technician_id
            Required when assigning, forbidden otherwise. Re-planning (``assigned ->
            planned``) clears it; other moves keep it.
        swap
            Required when a battery swap or replacement goes to ``done``, forbidden otherwise.
        note
            Free text kept with the event.
        assigned_to
            When given, refuse the change unless the order is assigned to this technician
            (checked under the row lock: a technician's change to an order reassigned a
            moment ago is refused, not applied).

        Raises
        ------
        KeyError
            No order has ``order_id``.
        contracts.work_orders.WorkOrderError
            The change is not allowed; nothing is written.
        """
        _require_actor(actor)
        new_state = WorkOrderState(new_state)
        action = f"moving work order {order_id} to {new_state.value}"
        async with (
            own_transaction(self._conn, "work-order", action),
            self._conn.cursor(row_factory=dict_row) as cur,
        ):
            await cur.execute(_SELECT_ONE + " FOR UPDATE", (order_id,))
            row = await cur.fetchone()
            if row is None:
                raise KeyError(f"No work order with id {order_id}.")
            order = _order(row)
            if assigned_to is not None and order.technician_id != assigned_to:
                raise WorkOrderError(
                    f"Expected work order {order_id} to be assigned to {assigned_to!r}, "
                    f"got {order.technician_id!r}."
                )
            check_change(order, new_state, technician_id=technician_id, swap=swap)
            if new_state is WorkOrderState.ASSIGNED:
                technician = technician_id
            elif new_state is WorkOrderState.PLANNED:
                technician = None
            else:
                technician = order.technician_id
            await cur.execute(_UPDATE, (new_state.value, technician, order_id))
            updated = await cur.fetchone()
            assert updated is not None  # the row is locked by this transaction
            await cur.execute(
                _INSERT_EVENT,
                (
                    order_id,
                    order.state.value,
                    new_state.value,
                    actor,
                    technician,
                    note,
                    swap.vehicle_id if swap else None,
                    swap.battery_out_id if swap else None,
                    swap.battery_in_id if swap else None,
                ),
            )
        return _order(updated)

    async def get(self, order_id: int) -> WorkOrder:
        """The order with ``order_id``; :class:`KeyError` when there is none."""
        async with connection_turn(self._conn), self._conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(_SELECT_ONE, (order_id,))
            row = await cur.fetchone()
        if row is None:
            raise KeyError(f"No work order with id {order_id}.")
        return _order(row)

    async def open_orders(self) -> builtins.list[WorkOrder]:
        """Every order still to be done (planned, assigned or en route), oldest first.

        What a restarted planner resumes from: one order per battery at most, unbounded
        (the planner must know them all, or it would plan a second visit).
        """
        async with connection_turn(self._conn), self._conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(_SELECT_OPEN + " ORDER BY id")
            rows = await cur.fetchall()
        return [_order(row) for row in rows]

    async def list(
        self,
        state: WorkOrderState | None = None,
        limit: int = 100,
        *,
        technician_id: str | None = None,
        battery_id: str | None = None,
    ) -> builtins.list[WorkOrder]:
        """Up to ``limit`` orders, oldest first; only those in ``state``, assigned to
        ``technician_id`` and about ``battery_id`` when given."""
        if limit <= 0:
            raise ValueError(f"Expected limit > 0, got {limit}.")
        state_value = None if state is None else WorkOrderState(state).value
        async with connection_turn(self._conn), self._conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                f"SELECT {_COLUMNS} FROM work_orders"
                " WHERE (%(state)s::text IS NULL OR state = %(state)s)"
                " AND (%(tech)s::text IS NULL OR technician_id = %(tech)s)"
                " AND (%(battery)s::text IS NULL OR battery_id = %(battery)s)"
                " ORDER BY id LIMIT %(limit)s",
                {"state": state_value, "tech": technician_id, "battery": battery_id, "limit": limit},
            )
            rows = await cur.fetchall()
        return [_order(row) for row in rows]

    async def without_vendor_ticket(self, kind: WorkOrderKind, limit: int = 50) -> builtins.list[WorkOrder]:
        """Orders of ``kind`` that have no vendor ticket yet (``vendor_tickets``), oldest
        first: the alert manager's outbox of replacements to tell the vendor about."""
        async with connection_turn(self._conn), self._conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                f"SELECT {_COLUMNS} FROM work_orders wo WHERE kind = %s AND NOT EXISTS"
                " (SELECT 1 FROM vendor_tickets vt WHERE vt.work_order_id = wo.id)"
                " ORDER BY id LIMIT %s",
                (WorkOrderKind(kind).value, limit),
            )
            rows = await cur.fetchall()
        return [_order(row) for row in rows]

    async def history(self, order_id: int) -> builtins.list[dict[str, Any]]:
        """Every event of an order, oldest first, as dicts keyed by column.

        Keys: ``id``, ``work_order_id``, ``at_s`` (Unix time), ``from_state`` (``None`` for
        creation), ``to_state``, ``actor``, ``technician_id``, ``note``, ``swap_vehicle_id``,
        ``swap_battery_out``, ``swap_battery_in``. :class:`KeyError` for an unknown order.
        """
        async with connection_turn(self._conn), self._conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(_HISTORY, (order_id,))
            rows = await cur.fetchall()
            if not rows:
                await cur.execute("SELECT 1 FROM work_orders WHERE id = %s", (order_id,))
                if await cur.fetchone() is None:
                    raise KeyError(f"No work order with id {order_id}.")
        return rows

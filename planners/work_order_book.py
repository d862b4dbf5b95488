"""Work orders in memory, through the same state machine as the PostgreSQL store.

What a what-if run's planner writes to: the simulation must not touch production's work
orders, yet its technicians must report through the rules production enforces
(:func:`contracts.work_orders.check_change`: allowed transitions, a technician named
exactly when assigning, a swap record exactly when a swap is done and naming the order's
vehicle and battery; at most one open order per battery). Implements
:class:`planners.planner.WorkOrderSink`.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable
from dataclasses import replace

from contracts.errors import WorkOrderError
from contracts.work_orders import (
    OPEN_STATES,
    SwapRecord,
    WorkOrder,
    WorkOrderKind,
    WorkOrderState,
    check_change,
)

__all__ = ["WorkOrderBook"]


class WorkOrderBook:
    """Every order and every change, in memory; ``now_s`` stamps them (a simulated clock)."""

    def __init__(self, now_s: Callable[[], float]) -> None:
        self.now_s = now_s
        self.orders: dict[int, WorkOrder] = {}
        #: (order id, new state, actor) per change, in order.
        self.events: list[tuple[int, WorkOrderState, str]] = []
        self.swaps: list[SwapRecord] = []
        self._ids = itertools.count(1)
        #: battery id -> its open order's id (a long what-if run holds many closed orders).
        self._open_by_battery: dict[str, int] = {}

    async def create(
        self, kind: WorkOrderKind, vehicle_id: str, battery_id: str, lat: float, lon: float,
        priority: float, value: float, actor: str,
    ) -> WorkOrder:  # fmt: skip
        """A new ``planned`` order, or the battery's open one unchanged (nothing recorded),
        like :meth:`store.work_order_store.WorkOrderStore.create`."""
        open_id = self._open_by_battery.get(battery_id)
        if open_id is not None:
            return self.orders[open_id]
        now = self.now_s()
        order = WorkOrder(
            next(self._ids), WorkOrderKind(kind), WorkOrderState.PLANNED, vehicle_id, battery_id,
            lat, lon, priority, value, now, None, now,
        )  # fmt: skip
        self.orders[order.id] = order
        self._open_by_battery[battery_id] = order.id
        self.events.append((order.id, WorkOrderState.PLANNED, actor))
        return order

    async def transition(
        self, order_id: int, new_state: WorkOrderState, actor: str, *,
        technician_id: str | None = None, swap: SwapRecord | None = None, note: str | None = None,
        assigned_to: str | None = None,
    ) -> WorkOrder:  # fmt: skip
        order = await self.get(order_id)
        new = WorkOrderState(new_state)
        if assigned_to is not None and order.technician_id != assigned_to:
            raise WorkOrderError(
                f"Expected work order {order_id} assigned to {assigned_to!r}, got {order.technician_id!r}."
            )
        check_change(order, new, technician_id=technician_id, swap=swap)
        if new is WorkOrderState.ASSIGNED:
            tech = technician_id
        elif new is WorkOrderState.PLANNED:
            tech = None
        else:
            tech = order.technician_id
        order = replace(order, state=new, technician_id=tech, updated_at_s=self.now_s())
        self.orders[order_id] = order
        if new not in OPEN_STATES:
            self._open_by_battery.pop(order.battery_id, None)
        self.events.append((order_id, new, actor))
        if swap is not None:
            self.swaps.append(swap)
        return order

    async def get(self, order_id: int) -> WorkOrder:
        try:
            return self.orders[order_id]
        except KeyError:
            raise WorkOrderError(f"Expected an existing work order id, got {order_id}.") from None

    async def open_orders(self) -> list[WorkOrder]:
        """Every order still to be done (planned, assigned or en route), oldest first."""
        return [o for _, o in sorted(self.orders.items()) if o.state in OPEN_STATES]

    def counts(self) -> dict[str, int]:
        """Orders per state now."""
        return dict(Counter(o.state.value for o in self.orders.values()))

"""Technician work orders: their kinds, the state machine and the battery-swap record.

Plain Python, no I/O; :class:`store.WorkOrderStore` persists orders and their history and
calls :func:`check_change` inside the transaction that applies a change.

::

    planned ──> assigned ──> en_route ──> done
       │  <──────┘  │            ├──────> failed
       │            │            │
       └────────────┴────────────┴──────> cancelled

``assigned -> planned`` un-assigns an order (the technician is cleared) when it is re-planned.
``done``, ``failed`` and ``cancelled`` are terminal.

Errors (all ``ValueError``, under :class:`contracts.errors.ContractError`)::

    WorkOrderError
    ├── InvalidTransition     the state machine does not allow the move
    └── SwapRecordError       a swap record missing, forbidden, or not matching the order
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from contracts.errors import InvalidTransition, SwapRecordError, WorkOrderError

__all__ = [
    "ALLOWED_TRANSITIONS",
    "OPEN_STATES",
    "SWAP_KINDS",
    "InvalidTransition",
    "SwapRecord",
    "SwapRecordError",
    "WorkOrder",
    "WorkOrderError",
    "WorkOrderKind",
    "WorkOrderState",
    "check_change",
    "check_swap",
    "check_transition",
]


class WorkOrderKind(StrEnum):
    """What the technician is sent to do."""

    BATTERY_SWAP = "battery_swap"
    BATTERY_REPLACEMENT = "battery_replacement"
    INSPECTION = "inspection"


class WorkOrderState(StrEnum):
    """Where a work order is in its life."""

    PLANNED = "planned"
    ASSIGNED = "assigned"
    EN_ROUTE = "en_route"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


_S = WorkOrderState

ALLOWED_TRANSITIONS: dict[WorkOrderState, frozenset[WorkOrderState]] = {
    _S.PLANNED: frozenset({_S.ASSIGNED, _S.CANCELLED}),
    _S.ASSIGNED: frozenset({_S.EN_ROUTE, _S.PLANNED, _S.CANCELLED}),
    _S.EN_ROUTE: frozenset({_S.DONE, _S.FAILED, _S.CANCELLED}),
    _S.DONE: frozenset(),
    _S.FAILED: frozenset(),
    _S.CANCELLED: frozenset(),
}
"""State -> the states it may move to; terminal states map to an empty set."""

OPEN_STATES: frozenset[WorkOrderState] = frozenset({_S.PLANNED, _S.ASSIGNED, _S.EN_ROUTE})
"""States of an order still to be done; a battery has at most one order in them (the
``work_orders_one_open_per_battery`` index, migration 0011)."""

SWAP_KINDS: frozenset[WorkOrderKind] = frozenset(
    {WorkOrderKind.BATTERY_SWAP, WorkOrderKind.BATTERY_REPLACEMENT}
)
"""Kinds that exchange a battery, and so must record a :class:`SwapRecord` when done."""


def _order_name(order_id: int | None) -> str:
    return "a work order" if order_id is None else f"work order {order_id}"


def check_transition(
    current: WorkOrderState, new: WorkOrderState, *, order_id: int | None = None
) -> None:
    """Raise :class:`InvalidTransition` unless ``current -> new`` is allowed.

    Parameters
    ----------
    current, new
        The order's state now, and the state asked for.
    order_id
        Named in the error message when given.
    """
    allowed = ALLOWED_TRANSITIONS[current]
    if new not in allowed:
        names = ", ".join(sorted(s.value for s in allowed)) or "none (terminal state)"
        raise InvalidTransition(
            f"Cannot move {_order_name(order_id)} from {current.value} to {new.value}; "
            f"allowed: {names}."
        )


@dataclass(frozen=True)
class SwapRecord:
    """Which battery left which vehicle, and which came in, when a swap is done.

    Parameters
    ----------
    vehicle_id
        The vehicle worked on.
    battery_out_id
        The battery taken out of it.
    battery_in_id
        The battery put in; must differ from ``battery_out_id``.
    """

    vehicle_id: str
    battery_out_id: str
    battery_in_id: str

    def __post_init__(self) -> None:
        for name in ("vehicle_id", "battery_out_id", "battery_in_id"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise SwapRecordError(f"Expected a non-empty string for {name}, got {value!r}.")
        if self.battery_in_id == self.battery_out_id:
            raise SwapRecordError(
                f"Expected different batteries in and out, got {self.battery_in_id!r} for both."
            )


@dataclass(frozen=True)
class WorkOrder:
    """One technician job as stored.

    Parameters
    ----------
    id
        The store's key.
    kind, state
        What is to be done, and how far it has got.
    vehicle_id, battery_id
        The vehicle to visit and the battery concerned (for a swap: the one to take out).
    lat, lon
        Where the job is, in degrees.
    priority
        Higher is more urgent; any finite number.
    value
        What doing the job is worth, in the planner's objective units; finite.
    created_at_s, updated_at_s
        Unix times of creation and of the last change.
    technician_id
        The technician assigned, or ``None`` while planned (or never assigned).
    """

    id: int
    kind: WorkOrderKind
    state: WorkOrderState
    vehicle_id: str
    battery_id: str
    lat: float
    lon: float
    priority: float
    value: float
    created_at_s: float
    technician_id: str | None
    updated_at_s: float

    def __post_init__(self) -> None:
        if not -90.0 <= self.lat <= 90.0 or not -180.0 <= self.lon <= 180.0:
            raise WorkOrderError(
                f"Expected lat in [-90, 90] and lon in [-180, 180], got {self.lat}, {self.lon}."
            )
        if not (math.isfinite(self.priority) and math.isfinite(self.value)):
            raise WorkOrderError(
                f"Expected finite priority and value, got {self.priority} and {self.value}."
            )


def check_swap(order: WorkOrder, new_state: WorkOrderState, swap: SwapRecord | None) -> None:
    """Raise :class:`SwapRecordError` unless ``swap`` fits moving ``order`` to ``new_state``.

    A swap record is required exactly when a battery swap or replacement goes to ``done``,
    and forbidden otherwise. It must name the order's vehicle, and the battery taken out must
    be the order's battery: the record is the fleet's truth about which battery is where.
    """
    needed = new_state is WorkOrderState.DONE and order.kind in SWAP_KINDS
    name = _order_name(order.id)
    if swap is None:
        if needed:
            raise SwapRecordError(
                f"Expected a swap record to finish {name} ({order.kind.value}), got none."
            )
        return
    if not needed:
        raise SwapRecordError(
            f"Expected no swap record when moving {name} ({order.kind.value}) to "
            f"{new_state.value}; a swap is recorded only when a battery swap or replacement "
            f"is done, got {swap}."
        )
    if swap.vehicle_id != order.vehicle_id:
        raise SwapRecordError(
            f"Expected the swap on {name} to name vehicle {order.vehicle_id!r}, "
            f"got {swap.vehicle_id!r}."
        )
    if swap.battery_out_id != order.battery_id:
        raise SwapRecordError(
            f"Expected battery {order.battery_id!r} to leave vehicle {order.vehicle_id!r} "
            f"for {name}, got {swap.battery_out_id!r}."
        )


def check_change(
    order: WorkOrder,
    new_state: WorkOrderState,
    *,
    technician_id: str | None = None,
    swap: SwapRecord | None = None,
) -> None:
    """Raise a :class:`WorkOrderError` unless the change is allowed as a whole.

    Checks the transition, that a technician is named exactly when moving to ``assigned``,
    and the swap record (:func:`check_swap`).
    """
    check_transition(order.state, new_state, order_id=order.id)
    name = _order_name(order.id)
    if new_state is WorkOrderState.ASSIGNED:
        if technician_id is None or not technician_id.strip():
            raise WorkOrderError(
                f"Expected a technician_id to assign {name}, got {technician_id!r}."
            )
    elif technician_id is not None:
        raise WorkOrderError(
            f"Expected no technician_id when moving {name} to {new_state.value} "
            f"(only assigning names one), got {technician_id!r}."
        )
    check_swap(order, new_state, swap)

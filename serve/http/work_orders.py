"""Technician work orders: list, one order with its history, and state changes.

::

    GET  /api/v1/work-orders?state=&battery_id=&limit=   work orders, oldest first
    GET  /api/v1/work-orders/{id}                 one order and its attributed history
    POST /api/v1/work-orders/{id}/transition      {"state", "technician_id"?, "swap"?, "note"?}

Reads go to the store; changes go through the planner, so each one has its consequences
(queue, twins, urgent re-plan) in one place. Every change is attributed to the subject of
the token that made it. A ``fleet_manager`` token sees and changes every order; a
``technician`` token only the orders assigned to its technician (403 for another's), and
cannot assign an order to someone else.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query
from pydantic import BaseModel, ConfigDict, Field

from contracts.access import Principal, Role
from contracts.errors import WorkOrderError
from contracts.work_orders import SwapRecord, WorkOrder, WorkOrderKind, WorkOrderState
from serve.http.auth import AUTH_RESPONSES, FieldStaff, forbid
from serve.http.batteries import BATTERY_ID_PATTERN
from serve.http.deps import ApiDeps, Deps
from serve.http.errors import BAD_BODY_RESPONSE, ERROR_RESPONSES
from serve.http.response_model import ApiModel

__all__ = [
    "SwapBody",
    "TransitionBody",
    "WorkOrderDetail",
    "WorkOrderEventOut",
    "WorkOrderOut",
    "WorkOrdersResponse",
    "router",
]

router = APIRouter(tags=["work orders"], responses=AUTH_RESPONSES)

# Ids are PostgreSQL bigints: a larger number is no order, not a driver overflow (a 500).
OrderId = Annotated[int, Path(ge=1, le=2**63 - 1, description="Work order id")]


class SwapBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    vehicle_id: str = Field(min_length=1, max_length=64)
    battery_out_id: str = Field(min_length=1, max_length=64, description="Battery taken out")
    battery_in_id: str = Field(min_length=1, max_length=64, description="Battery put in")


class TransitionBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    state: WorkOrderState
    technician_id: str | None = Field(None, max_length=64, description="Only when assigning")
    swap: SwapBody | None = Field(None, description="Required when a swap or replacement is done")
    note: str | None = Field(None, max_length=2000, pattern=r"^[^\x00]*$")


class WorkOrderOut(ApiModel):
    """One work order (:class:`contracts.work_orders.WorkOrder`)."""

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

    @classmethod
    def of(cls, order: WorkOrder) -> WorkOrderOut:
        return cls.model_validate(order, from_attributes=True)


class WorkOrderEventOut(ApiModel):
    """One change of an order, attributed to its actor."""

    id: int
    work_order_id: int
    at_s: float
    from_state: WorkOrderState | None = Field(description="Null for the creation")
    to_state: WorkOrderState
    actor: str
    technician_id: str | None
    note: str | None
    swap_vehicle_id: str | None
    swap_battery_out: str | None
    swap_battery_in: str | None


class WorkOrderDetail(WorkOrderOut):
    history: list[WorkOrderEventOut] = Field(description="Oldest first")


class WorkOrdersResponse(ApiModel):
    orders: list[WorkOrderOut]


_ORDER_404: dict[int | str, dict[str, Any]] = {404: ERROR_RESPONSES[404]}


@router.get("/api/v1/work-orders", response_model=WorkOrdersResponse)
async def work_orders(
    deps: Deps,
    who: FieldStaff,
    state: WorkOrderState | None = None,
    battery_id: Annotated[
        str | None, Query(pattern=BATTERY_ID_PATTERN, description="Only this battery's orders")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=5000)] = 100,
) -> WorkOrdersResponse:
    """Work orders, oldest first, optionally in one state or of one battery (a technician:
    only their own)."""
    mine = who.subject if who.role is Role.TECHNICIAN else None
    async with deps.stores.work_orders() as store:
        orders = await store.list(state, limit, technician_id=mine, battery_id=battery_id)
    return WorkOrdersResponse(orders=[WorkOrderOut.of(o) for o in orders])


@router.get("/api/v1/work-orders/{order_id}", response_model=WorkOrderDetail, responses=_ORDER_404)
async def work_order(deps: Deps, who: FieldStaff, order_id: OrderId) -> WorkOrderDetail:
    """One work order and every change made to it."""
    try:
        async with deps.stores.work_orders() as store:
            order = await store.get(order_id)
            _check_owner(who, order, "read")
            history = await store.history(order_id)
    except KeyError:
        raise HTTPException(404, f"No work order with id {order_id}.") from None
    return WorkOrderDetail(
        **WorkOrderOut.of(order).model_dump(),
        history=[WorkOrderEventOut.model_validate(h) for h in history],
    )


@router.post(
    "/api/v1/work-orders/{order_id}/transition",
    response_model=WorkOrderOut,
    responses={**_ORDER_404, 409: ERROR_RESPONSES[409], 503: ERROR_RESPONSES[503], **BAD_BODY_RESPONSE},
)
async def work_order_transition(
    deps: Deps, who: FieldStaff, order_id: OrderId, body: TransitionBody
) -> WorkOrderOut:
    """Move a work order on; the planner applies the consequences."""
    if who.role is Role.TECHNICIAN:
        await _check_technician_change(deps, who, order_id, body)
    try:
        # Inside the try: a swap naming one battery both ways is a refused change (409).
        swap = None if body.swap is None else SwapRecord(**body.swap.model_dump())
        order = await deps.planner.report(
            order_id, body.state, who.subject, body.technician_id, swap, body.note,
            assigned_to=who.subject if who.role is Role.TECHNICIAN else None,
        )
    except KeyError:
        raise HTTPException(404, f"No work order with id {order_id}.") from None
    except WorkOrderError as err:
        raise HTTPException(409, str(err)) from None
    return WorkOrderOut.of(order)


def _check_owner(who: Principal, order: WorkOrder, what: str) -> None:
    if who.role is Role.TECHNICIAN and order.technician_id != who.subject:
        raise forbid(who, f"{what} work order {order.id}: it is not assigned to them")


async def _check_technician_change(
    deps: ApiDeps, who: Principal, order_id: int, body: TransitionBody
) -> None:
    # A 403 for what the technician may never do; the store checks the assignment again
    # under its row lock (assigned_to), so an order reassigned in between is refused (409).
    if body.technician_id is not None and body.technician_id != who.subject:
        raise forbid(who, f"assign work order {order_id} to technician {body.technician_id!r}")
    try:
        async with deps.stores.work_orders() as store:
            order = await store.get(order_id)
    except KeyError:
        raise HTTPException(404, f"No work order with id {order_id}.") from None
    _check_owner(who, order, "change")

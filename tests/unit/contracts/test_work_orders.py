"""The work-order state machine and the swap-record rules, without a database."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest

from contracts.work_orders import (
    ALLOWED_TRANSITIONS,
    OPEN_STATES,
    InvalidTransition,
    SwapRecord,
    SwapRecordError,
    WorkOrder,
    WorkOrderError,
    WorkOrderKind,
    WorkOrderState,
    check_change,
    check_swap,
    check_transition,
)

S = WorkOrderState
K = WorkOrderKind

ALLOWED = [
    (S.PLANNED, S.ASSIGNED),
    (S.PLANNED, S.CANCELLED),
    (S.ASSIGNED, S.EN_ROUTE),
    (S.ASSIGNED, S.PLANNED),
    (S.ASSIGNED, S.CANCELLED),
    (S.EN_ROUTE, S.DONE),
    (S.EN_ROUTE, S.FAILED),
    (S.EN_ROUTE, S.CANCELLED),
]
FORBIDDEN = [pair for pair in itertools.product(S, S) if pair not in ALLOWED]


def make_order(
    kind: WorkOrderKind = K.BATTERY_SWAP, state: WorkOrderState = S.EN_ROUTE
) -> WorkOrder:
    """A work order for vehicle v1 / battery b1 in ``state``."""
    return WorkOrder(
        id=7,
        kind=kind,
        state=state,
        vehicle_id="v1",
        battery_id="b1",
        lat=52.5,
        lon=13.4,
        priority=1.0,
        value=10.0,
        created_at_s=0.0,
        technician_id="t1",
        updated_at_s=0.0,
    )


def test_table_lists_exactly_the_specified_moves() -> None:
    """The transitions table holds the eight specified moves and nothing else."""
    table = {(a, b) for a, targets in ALLOWED_TRANSITIONS.items() for b in targets}
    assert table == set(ALLOWED)
    assert set(ALLOWED_TRANSITIONS) == set(S)


@pytest.mark.parametrize(("current", "new"), ALLOWED)
def test_allowed_transitions_pass(current: WorkOrderState, new: WorkOrderState) -> None:
    """Every allowed move passes the check."""
    check_transition(current, new)


@pytest.mark.parametrize(("current", "new"), FORBIDDEN)
def test_forbidden_transitions_raise(current: WorkOrderState, new: WorkOrderState) -> None:
    """Every other move, self-moves and moves out of terminal states included, is refused."""
    with pytest.raises(InvalidTransition):
        check_transition(current, new)


def test_invalid_transition_message_names_order_states_and_options() -> None:
    """The error names the order, both states and the allowed ones; it is a ValueError."""
    with pytest.raises(
        ValueError,
        match=r"^Cannot move work order 42 from planned to done; "
        r"allowed: assigned, cancelled\.$",
    ):
        check_transition(S.PLANNED, S.DONE, order_id=42)
    with pytest.raises(InvalidTransition, match="allowed: none"):
        check_transition(S.DONE, S.PLANNED, order_id=42)


@pytest.mark.parametrize("kind", [K.BATTERY_SWAP, K.BATTERY_REPLACEMENT])
def test_swap_required_to_finish_a_battery_job(kind: WorkOrderKind) -> None:
    """A battery swap or replacement cannot be done without a swap record, and can with one."""
    order = make_order(kind)
    with pytest.raises(SwapRecordError, match="Expected a swap record"):
        check_swap(order, S.DONE, None)
    check_swap(order, S.DONE, SwapRecord("v1", "b1", "b2"))


def test_swap_forbidden_otherwise() -> None:
    """A swap record is refused for an inspection, and for any state other than done."""
    swap = SwapRecord("v1", "b1", "b2")
    with pytest.raises(SwapRecordError, match="Expected no swap record"):
        check_swap(make_order(K.INSPECTION), S.DONE, swap)
    with pytest.raises(SwapRecordError, match="to failed"):
        check_swap(make_order(), S.FAILED, swap)
    check_swap(make_order(K.INSPECTION), S.DONE, None)
    check_swap(make_order(), S.FAILED, None)


def test_swap_must_match_the_order() -> None:
    """The swap names the order's vehicle, and the battery out is the order's battery."""
    order = make_order()
    with pytest.raises(SwapRecordError, match=r"vehicle 'v1'.*got 'v9'"):
        check_swap(order, S.DONE, SwapRecord("v9", "b1", "b2"))
    with pytest.raises(SwapRecordError, match=r"battery 'b1'.*got 'b3'"):
        check_swap(order, S.DONE, SwapRecord("v1", "b3", "b2"))


def test_swap_record_validates_its_fields() -> None:
    """Empty ids and the same battery in and out are rejected with what arrived."""
    with pytest.raises(SwapRecordError, match="battery_in_id, got ''"):
        SwapRecord("v1", "b1", "")
    with pytest.raises(SwapRecordError, match="different batteries"):
        SwapRecord("v1", "b1", "b1")


def test_check_change_requires_technician_only_when_assigning() -> None:
    """Assigning needs a technician; any other move refuses one."""
    planned = make_order(state=S.PLANNED)
    check_change(planned, S.ASSIGNED, technician_id="t1")
    with pytest.raises(WorkOrderError, match="technician_id to assign"):
        check_change(planned, S.ASSIGNED)
    with pytest.raises(WorkOrderError, match="no technician_id"):
        check_change(planned, S.CANCELLED, technician_id="t1")


def test_check_change_checks_transition_and_swap() -> None:
    """check_change refuses a bad move first, then a missing swap record."""
    with pytest.raises(InvalidTransition, match="work order 7 from done"):
        check_change(make_order(state=S.DONE), S.DONE, swap=SwapRecord("v1", "b1", "b2"))
    with pytest.raises(SwapRecordError):
        check_change(make_order(), S.DONE)
    check_change(make_order(), S.DONE, swap=SwapRecord("v1", "b1", "b2"))


def test_work_order_validates_position_and_numbers() -> None:
    """Out-of-range coordinates and non-finite priority or value are rejected."""
    order = make_order()
    with pytest.raises(WorkOrderError, match="lat in"):
        replace(order, lat=91.0)
    with pytest.raises(WorkOrderError, match="finite"):
        replace(order, priority=float("nan"))


def test_open_states_are_exactly_the_non_terminal_ones() -> None:
    """OPEN_STATES (one order per battery among them) is every state that can still move."""
    assert {s for s, nxt in ALLOWED_TRANSITIONS.items() if nxt} == OPEN_STATES

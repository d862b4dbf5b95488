"""Vendor tickets: when a battery is to be replaced, tell the pack's vendor, with the evidence.

A vendor is a webhook subscription to ``vendor.ticket``. :meth:`VendorTickets.open` builds
the ticket (:func:`build_ticket`: the pack's data, the failure evidence, the history that
decides a warranty claim), records it (one per work order, however often it is asked for)
and queues it for the vendors' subscriptions under the ticket's message id. The vendor
replies ``{"status": "accepted" | "rejected" | "rma", "rma_number", "note"}`` either in the
answer to the webhook (:meth:`VendorTickets.on_response`, the dispatcher's ``on_success``)
or later through ``POST /api/v1/work-orders/{id}/vendor-reply``; each reply updates the
ticket and adds a note to the work order's history.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from alerts.delivery import WebhookDispatcher, json_safe
from contracts.alerts import Alert, AlertSeverity
from contracts.webhooks import (
    EventType,
    VendorTicket,
    VendorTicketStatus,
    WebhookDelivery,
    new_msg_id,
)
from contracts.work_orders import WorkOrder, WorkOrderKind

__all__ = [
    "InvalidVendorReply",
    "VendorReply",
    "VendorTicketStoreProtocol",
    "VendorTickets",
    "build_ticket",
    "parse_reply",
]

logger = logging.getLogger(__name__)

_S_PER_DAY = 86_400.0


class InvalidVendorReply(ValueError):
    """A vendor's reply that is not ``{"status", "rma_number"?, "note"?}`` as documented."""


class VendorReply(BaseModel):
    """A vendor's answer to a ticket (also the body of the vendor-reply route)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    status: Literal["accepted", "rejected", "rma"] = Field(
        description="accepted: the claim is taken; rejected: refused; rma: return the pack"
    )
    rma_number: str | None = Field(
        None, min_length=1, max_length=64, pattern=r"^[\x21-\x7e]+$",
        description="The vendor's return authorisation, required with status rma",
    )  # fmt: skip
    note: str | None = Field(
        None, max_length=2000, pattern=r"^[^\x00]*$", description="Free text from the vendor (no NUL: PostgreSQL text)"
    )

    @model_validator(mode="after")
    def _rma_has_number(self) -> VendorReply:
        if self.status == "rma" and self.rma_number is None:
            raise ValueError("Expected an rma_number with status 'rma', got none.")
        return self


def parse_reply(body: Mapping[str, Any]) -> tuple[VendorTicketStatus, str | None, str | None]:
    """``(status, rma_number, note)`` of a vendor's reply.

    Raises
    ------
    InvalidVendorReply
        Saying which field is wrong and what came (unknown fields are refused too).
    """
    if not isinstance(body, Mapping):
        raise InvalidVendorReply(
            f"Expected a JSON object as the vendor's reply, got {type(body).__name__}."
        )
    try:
        reply = VendorReply.model_validate(dict(body))
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']} (got {e.get('input')!r})"
            for e in err.errors()
        )
        raise InvalidVendorReply(
            f"Expected a vendor reply {{status, rma_number?, note?}}: {problems}."
        ) from None
    return VendorTicketStatus(reply.status), reply.rma_number, reply.note


def _first_seen_s(twin: Mapping[str, Any]) -> float | None:
    for name in ("first_seen_s", "first_ts"):
        value = twin.get(name)
        if isinstance(value, int | float):
            return float(value)
    return None


def build_ticket(
    order: WorkOrder, twin: Mapping[str, Any], alerts: Sequence[Alert]
) -> dict[str, Any]:
    """The ticket sent to the vendor for a battery replacement (JSON-able, NaN as ``None``).

    Parameters
    ----------
    order
        The ``battery_replacement`` work order.
    twin
        The battery's twin (:meth:`twins.battery_twin.TwinSnapshot.to_dict`, what
        ``GET /api/v1/batteries/{id}`` answers).
    alerts
        The battery's alerts that led to the replacement (its own, or fleet-wide ones
        naming no battery).

    Returns
    -------
    dict
        ``work_order_id``, ``battery_id``, ``vehicle_id``, ``requested_at_s``; ``pack``
        (rated capacity, capacity estimate, SOH estimates, health score, resistance);
        ``failure_evidence`` (anomaly flags and score, the alerts' kinds, summaries and
        evidence); ``history`` (equivalent full cycles, Ah throughput, hours hot, maximum
        temperature, depth-of-discharge histogram, first seen and age in days when the twin
        knows them).

    Raises
    ------
    ValueError
        The order is not a replacement, or the twin or an alert is about another battery.
    """
    if order.kind is not WorkOrderKind.BATTERY_REPLACEMENT:
        raise ValueError(
            f"Expected a battery_replacement work order for a vendor ticket, got work order "
            f"{order.id} of kind {order.kind.value}."
        )
    if twin.get("battery_id") != order.battery_id:
        raise ValueError(
            f"Expected the twin of battery {order.battery_id!r} (work order {order.id}), got "
            f"one of {twin.get('battery_id')!r}."
        )
    for alert in alerts:
        if alert.battery_id is not None and alert.battery_id != order.battery_id:
            raise ValueError(
                f"Expected alerts about battery {order.battery_id!r}, got {alert.key!r} about "
                f"{alert.battery_id!r}."
            )
    discharged = twin.get("ah_discharged_ah") or 0.0
    charged = twin.get("ah_charged_ah") or 0.0
    first_seen_s = _first_seen_s(twin)
    last_ts = twin.get("last_ts")
    age_days = (
        (float(last_ts) - first_seen_s) / _S_PER_DAY
        if first_seen_s is not None and isinstance(last_ts, int | float)
        else None
    )
    time_hot_s = twin.get("time_hot_s")
    ticket = {
        "work_order_id": order.id,
        "battery_id": order.battery_id,
        "vehicle_id": order.vehicle_id,
        "requested_at_s": order.created_at_s,
        "pack": {
            "rated_capacity_ah": twin.get("rated_capacity_ah"),
            "capacity_est_ah": twin.get("capacity_est_ah"),
            "capacity_estimates": twin.get("capacity_estimates"),
            "soh_pct_est": twin.get("soh_pct_est"),
            "soh_model_pct": twin.get("soh_model_pct"),
            "health_score": twin.get("health_score"),
            "health_band": twin.get("health_band"),
            "health_model_version": twin.get("health_model_version"),
            "resistance_est_ohm": twin.get("resistance_est_ohm"),
        },
        "failure_evidence": {
            "anomaly_flags": list(twin.get("anomaly_flags") or []),
            "anomaly_score": twin.get("anomaly_score"),
            "alerts": [
                {
                    "key": a.key,
                    "kind": a.kind,
                    "category": a.category.value,
                    "severity": a.severity.value,
                    "state": a.state.value,
                    "summary": a.summary,
                    "evidence": dict(a.evidence),
                    "started_at_s": a.started_at_s,
                    "fired_at_s": a.fired_at_s,
                }
                for a in alerts
            ],
        },
        "history": {
            "equivalent_full_cycles": twin.get("efc"),
            "cycles_completed": twin.get("cycles_completed"),
            "ah_discharged_ah": discharged,
            "ah_charged_ah": charged,
            "ah_throughput_ah": float(discharged) + float(charged),
            "time_hot_h": None if time_hot_s is None else float(time_hot_s) / 3600.0,
            "max_temp_c": twin.get("max_temp_c"),
            "dod_histogram": dict(twin.get("dod_histogram") or {}),
            "odometer_km": twin.get("odometer_km"),
            "first_seen_s": first_seen_s,
            "age_days": age_days,
        },
    }
    out: dict[str, Any] = json_safe(ticket)
    return out


class VendorTicketStoreProtocol(Protocol):
    """What vendor tickets need of the store (:class:`store.webhook_store.WebhookStore`)."""

    async def create_ticket(
        self, work_order_id: int, battery_id: str, msg_id: str, now_s: float
    ) -> tuple[VendorTicket, bool]:
        """The order's ticket, made now with ``msg_id`` unless it has one; and whether it
        was made by this call. ``KeyError`` for an unknown work order."""
        ...

    async def record_reply(
        self,
        work_order_id: int,
        status: VendorTicketStatus,
        rma_number: str | None,
        note: str | None,
        actor: str,
        now_s: float,
    ) -> VendorTicket:
        """Store a reply on the ticket and a note in the order's history, atomically;
        ``KeyError`` for an unknown order, :class:`contracts.webhooks.NoVendorTicket` when
        the order has no ticket."""
        ...


class VendorTickets:
    """Opens vendor tickets and records the vendors' replies.

    Wiring (the dispatcher hands each 2xx answer to :meth:`on_response`)::

        store = WebhookStore(conn)
        async with WebhookDispatcher(store, policy) as dispatcher:
            tickets = VendorTickets(store, dispatcher)
            dispatcher.on_success = tickets.on_response
            ...  # tickets.open(order, twin, alerts) when a replacement is ordered

    Parameters
    ----------
    store
        Tickets, and the work orders' history.
    dispatcher
        Queues the ``vendor.ticket`` events.
    now
        Wall clock, Unix seconds.
    """

    def __init__(
        self,
        store: VendorTicketStoreProtocol,
        dispatcher: WebhookDispatcher,
        *,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.dispatcher = dispatcher
        self._now = now

    async def open(
        self, order: WorkOrder, twin: Mapping[str, Any], alerts: Sequence[Alert]
    ) -> tuple[VendorTicket, int]:
        """Open (or find) the ticket of a replacement and queue it for the vendors.

        Idempotent: asked twice for one order, the ticket is the first one, and a vendor
        that already has its message gets no second delivery.

        Returns
        -------
        tuple
            The ticket, and how many deliveries this call queued.
        """
        payload = build_ticket(order, twin, alerts)
        ticket, created = await self.store.create_ticket(
            order.id, order.battery_id, new_msg_id(), self._now()
        )
        severity = max(
            (a.severity for a in alerts), key=lambda s: s.rank, default=AlertSeverity.WARNING
        )
        labels = {
            "battery_id": order.battery_id,
            "vehicle_id": order.vehicle_id,
            "work_order_kind": order.kind.value,
        }
        queued = await self.dispatcher.enqueue(
            EventType.VENDOR_TICKET, payload, severity=severity, labels=labels, msg_id=ticket.msg_id
        )
        if created and queued == 0:
            logger.warning(
                "Vendor ticket for work order %d recorded, but no enabled vendor.ticket "
                "subscription wants it: no vendor was told.", order.id,
            )  # fmt: skip
        return ticket, queued

    async def on_response(self, delivery: WebhookDelivery, status_code: int, body: bytes) -> None:
        """The dispatcher's ``on_success``: record a vendor's synchronous reply, if the
        answer to a ``vendor.ticket`` delivery is one (an empty or other answer is only an
        acknowledgement: the reply may come later through the API)."""
        if delivery.event_type != EventType.VENDOR_TICKET or not body.strip():
            return
        try:
            doc = json.loads(body)
        except ValueError:
            logger.info(
                "Answer to vendor ticket %s is not JSON; taken as an acknowledgement.",
                delivery.msg_id,
            )
            return
        if not isinstance(doc, dict) or "status" not in doc:
            return
        try:
            status, rma_number, note = parse_reply(doc)
        except InvalidVendorReply as err:
            logger.warning(
                "Vendor's answer to ticket %s is not a valid reply: %s", delivery.msg_id, err
            )
            return
        order_id = int(delivery.payload["work_order_id"])
        await self.store.record_reply(
            order_id,
            status,
            rma_number,
            note,
            f"vendor (webhook subscription {delivery.subscription_id})",
            self._now(),
        )

"""An in-memory webhook store: what :class:`store.webhook_store.WebhookStore` does, in dicts.

Implements the dispatcher's store (:class:`alerts.delivery.WebhookStoreProtocol`), the
vendor tickets' and the API's (:class:`serve.http.deps.WebhookAdmin`), with the same
refusals (``KeyError``, :class:`SubscriptionDisabled`, :class:`NoVendorTicket`), so the
dispatcher's and the routes' unit tests need no PostgreSQL. Work orders are the fakes'
orders dict; notes a reply adds to an order's history are kept in :attr:`notes`.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from contracts.alerts import AlertSeverity
from contracts.webhooks import (
    DeliveryAttempt,
    DeliveryState,
    DueDelivery,
    NoVendorTicket,
    SubscriptionDisabled,
    VendorTicket,
    VendorTicketStatus,
    WebhookDelivery,
    WebhookSubscription,
)
from contracts.work_orders import WorkOrder


@dataclass
class MemoryWebhooks:
    """Subscriptions, deliveries, attempts and vendor tickets in memory."""

    orders: dict[int, WorkOrder] = field(default_factory=dict)
    subs: dict[int, WebhookSubscription] = field(default_factory=dict)
    secrets: dict[int, str] = field(default_factory=dict)
    rows: dict[int, WebhookDelivery] = field(default_factory=dict)
    attempt_log: list[DeliveryAttempt] = field(default_factory=list)
    tickets: dict[int, VendorTicket] = field(default_factory=dict)
    #: Notes added to work orders' history: dicts with work_order_id, actor, note.
    notes: list[dict[str, Any]] = field(default_factory=list)
    #: Every claim made: (now_s, ids claimed).
    claims: list[tuple[float, list[int]]] = field(default_factory=list)

    # ------------------------------------------------------------------ subscriptions
    async def create_subscription(
        self,
        url: str,
        *,
        description: str,
        min_severity: AlertSeverity,
        event_types: frozenset[str],
        matchers: Mapping[str, str],
        secret: str,
        created_by: str,
    ) -> WebhookSubscription:
        sub = WebhookSubscription(
            id=len(self.subs) + 1, url=url, description=description, min_severity=min_severity,
            event_types=frozenset(event_types), matchers=dict(matchers), enabled=True,
            disabled_reason=None, created_by=created_by, created_at_s=1_000.0,
        )  # fmt: skip
        self.subs[sub.id] = sub
        self.secrets[sub.id] = secret
        return sub

    def add(self, url: str, secret: str, **kw: Any) -> WebhookSubscription:
        """Arrange a subscription (every event type, any severity, no matchers by default)."""
        fields: dict[str, Any] = {
            "id": len(self.subs) + 1, "url": url, "description": "", "min_severity": AlertSeverity.INFO,
            "event_types": frozenset({"alert.firing", "alert.acknowledged", "alert.resolved", "vendor.ticket"}),
            "matchers": {}, "enabled": True, "disabled_reason": None, "created_by": "test",
            "created_at_s": 1_000.0,
        }  # fmt: skip
        fields.update(kw)
        sub = WebhookSubscription(**fields)
        self.subs[sub.id] = sub
        self.secrets[sub.id] = secret
        return sub

    async def subscriptions(self) -> builtins.list[WebhookSubscription]:
        return [self.subs[k] for k in sorted(self.subs)]

    async def subscription(self, subscription_id: int) -> WebhookSubscription:
        try:
            return self.subs[subscription_id]
        except KeyError:
            raise KeyError(f"No webhook subscription with id {subscription_id}.") from None

    async def enabled_subscriptions(self, event_type: str) -> builtins.list[WebhookSubscription]:
        return [s for s in await self.subscriptions() if s.enabled and event_type in s.event_types]

    async def disable_subscription(
        self, subscription_id: int, reason: str, now_s: float
    ) -> WebhookSubscription:
        sub = await self.subscription(subscription_id)
        if sub.enabled:
            sub = self.subs[subscription_id] = replace(sub, enabled=False, disabled_reason=reason)
        for d in list(self.rows.values()):
            if d.subscription_id == subscription_id and d.state is DeliveryState.PENDING:
                self.rows[d.id] = replace(d, state=DeliveryState.CANCELLED, next_attempt_at_s=None)
        return sub

    # ------------------------------------------------------------------ queue
    async def create_deliveries(
        self,
        subscription_ids: Sequence[int],
        msg_id: str,
        event_type: str,
        payload: Mapping[str, Any],
        now_s: float,
        due_at_s: float | None = None,
    ) -> int:
        made = 0
        for sid in subscription_ids:
            sub = self.subs.get(sid)
            if sub is None or not sub.enabled:
                continue
            if any(d.subscription_id == sid and d.msg_id == msg_id for d in self.rows.values()):
                continue
            new_id = len(self.rows) + 1
            self.rows[new_id] = WebhookDelivery(
                id=new_id, subscription_id=sid, msg_id=msg_id, event_type=event_type,
                payload=dict(payload), state=DeliveryState.PENDING, attempts=0,
                next_attempt_at_s=now_s if due_at_s is None else due_at_s, last_status_code=None,
                last_error=None, last_latency_ms=None, created_at_s=now_s, delivered_at_s=None,
            )  # fmt: skip
            made += 1
        return made

    async def claim_due(
        self, now_s: float, limit: int, lease_s: float
    ) -> builtins.list[DueDelivery]:
        due = sorted(
            (
                d for d in self.rows.values()
                if d.state is DeliveryState.PENDING and d.next_attempt_at_s is not None
                and d.next_attempt_at_s <= now_s and self.subs[d.subscription_id].enabled
            ),
            key=lambda d: (d.next_attempt_at_s, d.id),
        )[:limit]  # fmt: skip
        out = []
        for d in due:
            leased = self.rows[d.id] = replace(d, next_attempt_at_s=now_s + lease_s)
            out.append(
                DueDelivery(
                    leased, self.subs[d.subscription_id].url, self.secrets[d.subscription_id]
                )
            )
        self.claims.append((now_s, [d.id for d in due]))
        return out

    async def finish_attempt(
        self, attempt: DeliveryAttempt, state: DeliveryState, next_attempt_at_s: float | None
    ) -> WebhookDelivery:
        d = await self.delivery(attempt.delivery_id)
        self.attempt_log.append(attempt)
        changes: dict[str, Any] = {
            "attempts": max(d.attempts, attempt.attempt), "last_status_code": attempt.status_code,
            "last_error": attempt.error, "last_latency_ms": attempt.latency_ms,
        }  # fmt: skip
        if d.state is DeliveryState.PENDING:
            changes.update(state=state, next_attempt_at_s=next_attempt_at_s)
            if state is DeliveryState.SUCCEEDED:
                changes["delivered_at_s"] = attempt.at_s
        self.rows[d.id] = replace(d, **changes)
        return self.rows[d.id]

    async def replay(self, delivery_id: int, actor: str, now_s: float) -> WebhookDelivery:
        d = await self.delivery(delivery_id)
        sub = self.subs[d.subscription_id]
        if not sub.enabled:
            raise SubscriptionDisabled(
                f"Cannot replay delivery {delivery_id}: webhook subscription {sub.id} is disabled "
                f"({sub.disabled_reason})."
            )
        self.rows[d.id] = replace(
            d, state=DeliveryState.PENDING, next_attempt_at_s=now_s, retry_base=d.attempts,
            replayed_by=actor, replayed_at_s=now_s, delivered_at_s=None,
        )  # fmt: skip
        return self.rows[d.id]

    async def deliveries(
        self, subscription_id: int, state: DeliveryState | None = None, limit: int = 100
    ) -> builtins.list[WebhookDelivery]:
        await self.subscription(subscription_id)
        found = [
            d for _, d in sorted(self.rows.items(), reverse=True)
            if d.subscription_id == subscription_id and (state is None or d.state is state)
        ]  # fmt: skip
        return found[:limit]

    async def delivery(self, delivery_id: int) -> WebhookDelivery:
        try:
            return self.rows[delivery_id]
        except KeyError:
            raise KeyError(f"No webhook delivery with id {delivery_id}.") from None

    async def attempts(self, delivery_id: int) -> builtins.list[DeliveryAttempt]:
        return sorted(
            (a for a in self.attempt_log if a.delivery_id == delivery_id), key=lambda a: a.attempt
        )

    # ------------------------------------------------------------------ vendor tickets
    async def create_ticket(
        self, work_order_id: int, battery_id: str, msg_id: str, now_s: float
    ) -> tuple[VendorTicket, bool]:
        if work_order_id not in self.orders:
            raise KeyError(f"No work order with id {work_order_id}.")
        if work_order_id in self.tickets:
            return self.tickets[work_order_id], False
        ticket = VendorTicket(
            work_order_id=work_order_id, battery_id=battery_id, msg_id=msg_id,
            status=VendorTicketStatus.SENT, rma_number=None, reply_note=None, replied_at_s=None,
            created_at_s=now_s,
        )  # fmt: skip
        self.tickets[work_order_id] = ticket
        return ticket, True

    async def ticket(self, work_order_id: int) -> VendorTicket:
        if work_order_id not in self.orders:
            raise KeyError(f"No work order with id {work_order_id}.")
        try:
            return self.tickets[work_order_id]
        except KeyError:
            raise KeyError(f"No vendor ticket for work order {work_order_id}.") from None

    async def record_reply(
        self,
        work_order_id: int,
        status: VendorTicketStatus,
        rma_number: str | None,
        note: str | None,
        actor: str,
        now_s: float,
    ) -> VendorTicket:
        if work_order_id not in self.orders:
            raise KeyError(f"No work order with id {work_order_id}.")
        if work_order_id not in self.tickets:
            raise NoVendorTicket(f"Work order {work_order_id} has no vendor ticket.")
        ticket = self.tickets[work_order_id] = replace(
            self.tickets[work_order_id], status=VendorTicketStatus(status), rma_number=rma_number,
            reply_note=note, replied_at_s=now_s,
        )  # fmt: skip
        self.notes.append(
            {
                "work_order_id": work_order_id,
                "actor": actor,
                "status": ticket.status.value,
                "note": note,
            }
        )
        return ticket

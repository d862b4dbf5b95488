"""Outgoing webhooks and vendor tickets: subscriptions, their deliveries, replays, replies.

::

    POST   /api/v1/webhooks                          {"url", "description"?, "min_severity"?,
                                                      "event_types", "matchers"?} -> 201, secret once
    GET    /api/v1/webhooks                          every subscription (never a secret)
    DELETE /api/v1/webhooks/{id}                     disable (its pending deliveries are cancelled)
    GET    /api/v1/webhooks/{id}/deliveries?state=&limit=   newest first
    GET    /api/v1/webhook-deliveries/{id}           one delivery and every attempt
    POST   /api/v1/webhook-deliveries/{id}/replay    send again (same msg id) -> 202
    POST   /api/v1/work-orders/{id}/vendor-reply     {"status", "rma_number"?, "note"?}
    GET    /api/v1/work-orders/{id}/vendor-ticket    the order's vendor ticket

For the fleet manager and ops. A subscription's URL is checked by the URL policy
(:func:`alerts.webhooks.check_url`: https, and no internal address unless allowed) before it
is stored, and again by the dispatcher before every attempt. Sending is the dispatcher's
(:class:`alerts.delivery.WebhookDispatcher`): a replay only makes the delivery due now.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query
from pydantic import BaseModel, ConfigDict, Field, field_validator

from alerts.vendor_tickets import VendorReply
from alerts.webhooks import UnsafeWebhookUrl, UrlPolicy, check_url, new_secret
from contracts.access import Principal, Role
from contracts.alerts import AlertSeverity
from contracts.webhooks import (
    DeliveryAttempt,
    DeliveryState,
    EventType,
    NoVendorTicket,
    SubscriptionDisabled,
    VendorTicket,
    VendorTicketStatus,
    WebhookDelivery,
    WebhookSubscription,
    check_matchers,
)
from serve.http.auth import AUTH_RESPONSES, RATE_LIMITED_RESPONSE, Allow, Operators, RateLimit
from serve.http.deps import ApiDeps, Deps
from serve.http.errors import BAD_BODY_RESPONSE, ERROR_RESPONSES, invalid_parameter
from serve.http.response_model import ApiModel

__all__ = [
    "AttemptOut",
    "CreateWebhookBody",
    "CreatedWebhook",
    "DeliveriesResponse",
    "DeliveryDetail",
    "DeliveryOut",
    "VendorTicketOut",
    "WebhookOut",
    "WebhooksResponse",
    "router",
]

router = APIRouter(tags=["webhooks"], responses=AUTH_RESPONSES)

# Every new subscription and every replay makes the system send requests to a URL of the
# caller's choosing: a stolen token must not turn that into a flood.
WebhookChanger = Annotated[
    Principal,
    Depends(
        Allow(
            Role.FLEET_MANAGER, Role.OPS, limit=RateLimit("webhook change", per_minute=30, burst=10)
        )
    ),
]
BigId = Annotated[int, Path(ge=1, le=2**63 - 1)]

_404: dict[int | str, dict[str, Any]] = {404: ERROR_RESPONSES[404]}
_409: dict[int | str, dict[str, Any]] = {409: ERROR_RESPONSES[409]}


class CreateWebhookBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(min_length=1, max_length=2000, description="The receiver, https://")
    description: str = Field("", max_length=500, pattern=r"^[^\x00-\x1f\x7f]*$")
    min_severity: AlertSeverity = Field(
        AlertSeverity.WARNING, description="Alert events below this severity are not sent"
    )
    event_types: list[EventType] = Field(min_length=1, max_length=4)
    matchers: dict[str, str] = Field(
        default_factory=dict,
        description="Label equalities the alert must match (battery_id, zone, kind, ...)",
    )

    @field_validator("matchers")
    @classmethod
    def _matchers(cls, value: dict[str, str]) -> dict[str, str]:
        check_matchers(value)
        return value


class WebhookOut(ApiModel):
    """A subscription (:class:`contracts.webhooks.WebhookSubscription`); never its secret."""

    id: int
    url: str
    description: str
    min_severity: AlertSeverity
    event_types: list[EventType]
    matchers: dict[str, str]
    enabled: bool
    disabled_reason: str | None
    created_by: str
    created_at_s: float

    @classmethod
    def of(cls, sub: WebhookSubscription) -> WebhookOut:
        return cls(
            id=sub.id, url=sub.url, description=sub.description, min_severity=sub.min_severity,
            event_types=[EventType(e) for e in sorted(sub.event_types)], matchers=dict(sub.matchers),
            enabled=sub.enabled, disabled_reason=sub.disabled_reason, created_by=sub.created_by,
            created_at_s=sub.created_at_s,
        )  # fmt: skip


class CreatedWebhook(WebhookOut):
    secret: str = Field(
        description="The signing secret (whsec_...): shown this once; receivers verify the "
        "webhook-signature header with it (Standard Webhooks)"
    )


class WebhooksResponse(ApiModel):
    webhooks: list[WebhookOut]


class DeliveryOut(ApiModel):
    """One event for one subscription (:class:`contracts.webhooks.WebhookDelivery`)."""

    id: int
    subscription_id: int
    msg_id: str = Field(description="The webhook-id header: the same on every retry and replay")
    event_type: EventType
    payload: dict[str, Any]
    state: DeliveryState
    attempts: int
    next_attempt_at_s: float | None
    last_status_code: int | None
    last_error: str | None
    last_latency_ms: float | None
    created_at_s: float
    delivered_at_s: float | None
    replayed_by: str | None
    replayed_at_s: float | None

    @classmethod
    def of(cls, d: WebhookDelivery) -> DeliveryOut:
        fields = {k: getattr(d, k) for k in cls.model_fields if k != "payload"}
        return cls(**fields, payload=dict(d.payload))


class DeliveriesResponse(ApiModel):
    deliveries: list[DeliveryOut] = Field(description="Newest first")


class AttemptOut(ApiModel):
    """One try (:class:`contracts.webhooks.DeliveryAttempt`)."""

    attempt: int
    at_s: float
    status_code: int | None = Field(description="Null when no answer came")
    error: str | None
    latency_ms: float

    @classmethod
    def of(cls, a: DeliveryAttempt) -> AttemptOut:
        return cls.model_validate(a, from_attributes=True)


class DeliveryDetail(DeliveryOut):
    attempts_made: list[AttemptOut] = Field(description="Every attempt, oldest first")


class VendorTicketOut(ApiModel):
    """A battery-replacement ticket sent to the vendor (:class:`contracts.webhooks.VendorTicket`)."""

    work_order_id: int
    battery_id: str
    msg_id: str = Field(description="The webhook-id of the vendor.ticket event")
    status: VendorTicketStatus
    rma_number: str | None
    reply_note: str | None
    replied_at_s: float | None
    created_at_s: float

    @classmethod
    def of(cls, t: VendorTicket) -> VendorTicketOut:
        return cls.model_validate(t, from_attributes=True)


def _policy(deps: ApiDeps) -> UrlPolicy:
    return UrlPolicy(deps.webhook_allow_cidrs, deps.webhook_allow_http)


@router.post(
    "/api/v1/webhooks",
    response_model=CreatedWebhook,
    status_code=201,
    responses={**RATE_LIMITED_RESPONSE, **BAD_BODY_RESPONSE},
)
async def create_webhook(
    deps: Deps, who: WebhookChanger, body: CreateWebhookBody
) -> CreatedWebhook:
    """Subscribe a URL; the answer holds its signing secret, the only time it is shown."""
    try:
        await check_url(body.url, _policy(deps))
    except UnsafeWebhookUrl as err:
        raise invalid_parameter(("body", "url"), str(err)) from None
    secret = new_secret()
    try:
        async with deps.stores.webhooks() as store:
            sub = await store.create_subscription(
                body.url, description=body.description, min_severity=body.min_severity,
                event_types=frozenset(e.value for e in body.event_types), matchers=body.matchers,
                secret=secret, created_by=who.subject,
            )  # fmt: skip
    except ValueError as err:
        raise invalid_parameter(("body",), str(err)) from None
    return CreatedWebhook(**WebhookOut.of(sub).model_dump(), secret=secret)


@router.get("/api/v1/webhooks", response_model=WebhooksResponse)
async def list_webhooks(deps: Deps, who: Operators) -> WebhooksResponse:
    """Every subscription, enabled or not, oldest first."""
    async with deps.stores.webhooks() as store:
        subs = await store.subscriptions()
    return WebhooksResponse(webhooks=[WebhookOut.of(s) for s in subs])


@router.delete("/api/v1/webhooks/{webhook_id}", response_model=WebhookOut, responses=_404)
async def disable_webhook(deps: Deps, who: Operators, webhook_id: BigId) -> WebhookOut:
    """Disable a subscription (idempotent); its pending deliveries are cancelled."""
    try:
        async with deps.stores.webhooks() as store:
            sub = await store.disable_subscription(
                webhook_id, f"disabled by {who.subject} through the API", time.time()
            )
    except KeyError:
        raise HTTPException(404, f"No webhook subscription with id {webhook_id}.") from None
    return WebhookOut.of(sub)


@router.get(
    "/api/v1/webhooks/{webhook_id}/deliveries", response_model=DeliveriesResponse, responses=_404
)
async def webhook_deliveries(
    deps: Deps,
    who: Operators,
    webhook_id: BigId,
    state: DeliveryState | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> DeliveriesResponse:
    """A subscription's deliveries, newest first, optionally in one state."""
    try:
        async with deps.stores.webhooks() as store:
            found = await store.deliveries(webhook_id, state, limit)
    except KeyError:
        raise HTTPException(404, f"No webhook subscription with id {webhook_id}.") from None
    return DeliveriesResponse(deliveries=[DeliveryOut.of(d) for d in found])


@router.get(
    "/api/v1/webhook-deliveries/{delivery_id}", response_model=DeliveryDetail, responses=_404
)
async def webhook_delivery(deps: Deps, who: Operators, delivery_id: BigId) -> DeliveryDetail:
    """One delivery and every attempt made to send it."""
    try:
        async with deps.stores.webhooks() as store:
            delivery = await store.delivery(delivery_id)
            attempts = await store.attempts(delivery_id)
    except KeyError:
        raise HTTPException(404, f"No webhook delivery with id {delivery_id}.") from None
    return DeliveryDetail(
        **DeliveryOut.of(delivery).model_dump(), attempts_made=[AttemptOut.of(a) for a in attempts]
    )


@router.post(
    "/api/v1/webhook-deliveries/{delivery_id}/replay",
    response_model=DeliveryOut,
    status_code=202,
    responses={**_404, **_409, **RATE_LIMITED_RESPONSE},
)
async def replay_delivery(deps: Deps, who: WebhookChanger, delivery_id: BigId) -> DeliveryOut:
    """Send a delivery again, with the same msg id; the dispatcher picks it up (202)."""
    try:
        async with deps.stores.webhooks() as store:
            delivery = await store.replay(delivery_id, who.subject, time.time())
    except KeyError:
        raise HTTPException(404, f"No webhook delivery with id {delivery_id}.") from None
    except SubscriptionDisabled as err:
        raise HTTPException(409, str(err)) from None
    return DeliveryOut.of(delivery)


@router.post(
    "/api/v1/work-orders/{order_id}/vendor-reply",
    response_model=VendorTicketOut,
    responses={**_404, **_409, **BAD_BODY_RESPONSE},
)
async def vendor_reply(
    deps: Deps, who: Operators, order_id: BigId, body: VendorReply
) -> VendorTicketOut:
    """Record a vendor's reply to a replacement ticket; it is noted in the order's history."""
    try:
        async with deps.stores.webhooks() as store:
            ticket = await store.record_reply(
                order_id, VendorTicketStatus(body.status), body.rma_number, body.note, who.subject,
                time.time(),
            )  # fmt: skip
    except KeyError:
        raise HTTPException(404, f"No work order with id {order_id}.") from None
    except NoVendorTicket as err:
        raise HTTPException(409, str(err)) from None
    return VendorTicketOut.of(ticket)


@router.get(
    "/api/v1/work-orders/{order_id}/vendor-ticket", response_model=VendorTicketOut, responses=_404
)
async def vendor_ticket(deps: Deps, who: Operators, order_id: BigId) -> VendorTicketOut:
    """The vendor ticket of a replacement work order."""
    try:
        async with deps.stores.webhooks() as store:
            ticket = await store.ticket(order_id)
    except KeyError as err:
        raise HTTPException(
            404, str(err.args[0]) if err.args else f"No vendor ticket for work order {order_id}."
        ) from None
    return VendorTicketOut.of(ticket)

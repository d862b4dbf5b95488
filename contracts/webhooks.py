"""Outgoing notifications: webhook subscriptions, deliveries, attempts and vendor tickets.

Plain records, no I/O. :mod:`alerts.webhooks` signs and checks, :mod:`alerts.delivery`
sends, :class:`store.webhook_store.WebhookStore` persists, :mod:`serve.http.webhooks` exposes
them. A delivery is one event for one subscription; its life::

    pending ──(2xx)──────────────────────────────> succeeded
       │ ╰─(error, timeout, other status)──> pending again (next_attempt_at_s later)
       ├──(the retry schedule is spent)──────────> failed
       └──(410 Gone, or the subscription disabled)> cancelled
    succeeded / failed ──(replay)──> pending   (same msg_id, attempt numbers go on)

``msg_id`` (``msg_<uuid hex>``) is the Standard Webhooks ``webhook-id``: it stays the same
across retries and replays, and every subscription that gets one event gets the same id, so
a receiver deduplicates on it.

Errors (all under :class:`contracts.errors.ContractError`)::

    WebhookError
    ├── SubscriptionDisabled    a replay or change asked of a disabled subscription
    └── NoVendorTicket          a vendor reply for a work order that has no ticket
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from contracts.alerts import AlertSeverity, matches
from contracts.errors import ContractError

__all__ = [
    "EVENT_TYPES",
    "MSG_ID_PATTERN",
    "DeliveryAttempt",
    "DeliveryState",
    "DueDelivery",
    "EventType",
    "NoVendorTicket",
    "SubscriptionDisabled",
    "VendorTicket",
    "VendorTicketStatus",
    "WebhookDelivery",
    "WebhookError",
    "WebhookSubscription",
    "check_matchers",
    "new_msg_id",
]


class WebhookError(ContractError):
    """Base class of the webhook refusals."""


class SubscriptionDisabled(WebhookError):
    """The subscription is disabled (by an operator, or by a receiver's 410 Gone)."""


class NoVendorTicket(WebhookError):
    """The work order exists, but no vendor ticket was opened for it."""


class EventType(StrEnum):
    """What a webhook can be told about."""

    ALERT_FIRING = "alert.firing"
    ALERT_ACKNOWLEDGED = "alert.acknowledged"
    ALERT_RESOLVED = "alert.resolved"
    VENDOR_TICKET = "vendor.ticket"


#: Every event type a subscription may ask for.
EVENT_TYPES: frozenset[str] = frozenset(e.value for e in EventType)


class DeliveryState(StrEnum):
    """Where a delivery is in its life (see the module docstring)."""

    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # the retry schedule is spent: the dispatcher gave up
    CANCELLED = "cancelled"  # the subscription was disabled before it succeeded


class VendorTicketStatus(StrEnum):
    """A vendor ticket's status: sent, then whatever the vendor last replied."""

    SENT = "sent"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    RMA = "rma"


#: ``msg_`` and the 32 hex digits of a UUID4.
MSG_ID_PATTERN = r"^msg_[0-9a-f]{32}$"
_MSG_ID_RE = re.compile(MSG_ID_PATTERN)
_LABEL_NAME_RE = re.compile(r"^[a-z_][a-z0-9_]{0,63}$")
_MAX_MATCHERS = 16


def new_msg_id() -> str:
    """A fresh message id, ``msg_`` and a UUID4 in hex."""
    return f"msg_{uuid.uuid4().hex}"


def _check_msg_id(msg_id: str) -> None:
    if not isinstance(msg_id, str) or _MSG_ID_RE.fullmatch(msg_id) is None:
        raise ValueError(f"Expected a msg_id like 'msg_<32 hex digits>', got {msg_id!r}.")


def check_matchers(matchers: Mapping[str, str]) -> None:
    """Raise ``ValueError`` unless ``matchers`` are at most 16 ``label name -> value`` pairs
    (names ``[a-z_][a-z0-9_]*`` up to 64 characters, values 1-200 printable characters)."""
    if len(matchers) > _MAX_MATCHERS:
        raise ValueError(f"Expected at most {_MAX_MATCHERS} matchers, got {len(matchers)}.")
    for name, value in matchers.items():
        if not isinstance(name, str) or _LABEL_NAME_RE.fullmatch(name) is None:
            raise ValueError(
                f"Expected matcher names like 'battery_id' ([a-z_][a-z0-9_]*, at most 64 "
                f"characters), got {name!r}."
            )
        if not isinstance(value, str) or not 0 < len(value) <= 200 or not value.isprintable():
            raise ValueError(
                f"Expected the value of matcher {name!r} to be 1-200 printable characters, "
                f"got {value!r}."
            )


def _check_event_types(event_types: frozenset[str]) -> None:
    unknown = sorted(set(event_types) - EVENT_TYPES)
    if not event_types or unknown:
        raise ValueError(
            f"Expected one or more event types of {sorted(EVENT_TYPES)}, got "
            f"{sorted(event_types)} (unknown: {unknown})."
        )


@dataclass(frozen=True)
class WebhookSubscription:
    """Where to send which events (one row of ``webhook_subscriptions``; never the secret).

    Parameters
    ----------
    id
        The store's key.
    url
        The receiver, ``https://`` (``http://`` only where the URL policy allows it).
    description
        What it is for (free text).
    min_severity
        Alert events below this severity are not sent (vendor tickets carry the severity
        of the alerts behind them).
    event_types
        Subset of :data:`EVENT_TYPES`, at least one.
    matchers
        Label equalities, as :func:`contracts.alerts.matches`; empty matches everything.
    enabled, disabled_reason
        A disabled subscription gets nothing; the reason says who or what disabled it.
    created_by, created_at_s
        Who made it (a token's subject) and when (Unix s).
    """

    id: int
    url: str
    description: str
    min_severity: AlertSeverity
    event_types: frozenset[str]
    matchers: Mapping[str, str]
    enabled: bool
    disabled_reason: str | None
    created_by: str
    created_at_s: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "event_types", frozenset(self.event_types))
        object.__setattr__(self, "min_severity", AlertSeverity(self.min_severity))
        _check_event_types(self.event_types)
        check_matchers(self.matchers)
        if not self.url:
            raise ValueError("Expected a non-empty url, got ''.")
        if self.enabled and self.disabled_reason is not None:
            raise ValueError(
                f"Expected no disabled_reason on an enabled subscription, got "
                f"{self.disabled_reason!r}."
            )

    def wants(self, event_type: str, severity: AlertSeverity, labels: Mapping[str, str]) -> bool:
        """Whether an event goes to this subscription: enabled, event type subscribed,
        ``severity`` at least ``min_severity``, every matcher holding in ``labels``."""
        return (
            self.enabled
            and event_type in self.event_types
            and AlertSeverity(severity).at_least(self.min_severity)
            and matches(self.matchers, labels)
        )


@dataclass(frozen=True)
class WebhookDelivery:
    """One event for one subscription (one row of ``webhook_deliveries``).

    Parameters
    ----------
    id, subscription_id
        The store's key, and whom it is for.
    msg_id
        The Standard Webhooks message id (``webhook-id``), stable across retries and replays.
    event_type, payload
        What happened: the body sent is ``{"type", "timestamp", "data": payload}``.
    state
        See :class:`DeliveryState`.
    attempts
        Attempts made so far (a replay keeps counting).
    next_attempt_at_s
        When the next attempt is due (Unix s); ``None`` unless pending.
    last_status_code, last_error, last_latency_ms
        How the last attempt went (status ``None`` when no answer came).
    created_at_s, delivered_at_s
        When the event was queued, and when a 2xx came (``None`` until then).
    retry_base
        Attempts made before the last replay: the retry schedule counts from there.
    replayed_by, replayed_at_s
        Who asked for the last replay, and when (``None`` when never replayed).
    """

    id: int
    subscription_id: int
    msg_id: str
    event_type: str
    payload: Mapping[str, Any]
    state: DeliveryState
    attempts: int
    next_attempt_at_s: float | None
    last_status_code: int | None
    last_error: str | None
    last_latency_ms: float | None
    created_at_s: float
    delivered_at_s: float | None
    retry_base: int = 0
    replayed_by: str | None = None
    replayed_at_s: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "state", DeliveryState(self.state))
        _check_msg_id(self.msg_id)
        if self.event_type not in EVENT_TYPES:
            raise ValueError(
                f"Expected an event type of {sorted(EVENT_TYPES)}, got {self.event_type!r}."
            )
        if not 0 <= self.retry_base <= self.attempts:
            raise ValueError(
                f"Expected 0 <= retry_base <= attempts, got {self.retry_base} and {self.attempts}."
            )
        if (self.state is DeliveryState.PENDING) != (self.next_attempt_at_s is not None):
            raise ValueError(
                f"Expected next_attempt_at_s exactly when pending, got state {self.state.value} "
                f"with next_attempt_at_s={self.next_attempt_at_s}."
            )

    @property
    def attempts_since_replay(self) -> int:
        """Attempts counted by the retry schedule (those since the last replay)."""
        return self.attempts - self.retry_base


@dataclass(frozen=True)
class DeliveryAttempt:
    """One try at sending a delivery (one row of ``webhook_attempts``).

    Parameters
    ----------
    delivery_id, attempt
        Which delivery, and its attempt number (1 for the first).
    at_s
        When it was sent (Unix s).
    status_code
        The receiver's HTTP status; ``None`` when none came (timeout, refused connection,
        unsafe address).
    error
        Why it did not succeed (``None`` on a 2xx).
    latency_ms
        From sending to the answer (or to giving up on it), milliseconds.
    """

    delivery_id: int
    attempt: int
    at_s: float
    status_code: int | None
    error: str | None
    latency_ms: float

    def __post_init__(self) -> None:
        if self.attempt < 1:
            raise ValueError(f"Expected attempt >= 1, got {self.attempt}.")
        if not (math.isfinite(self.latency_ms) and self.latency_ms >= 0):
            raise ValueError(f"Expected a finite latency_ms >= 0, got {self.latency_ms}.")
        if self.status_code is not None and not 100 <= self.status_code <= 599:
            raise ValueError(
                f"Expected an HTTP status in [100, 599] or None, got {self.status_code}."
            )


@dataclass(frozen=True)
class DueDelivery:
    """A delivery claimed for sending, with what sending it needs from its subscription."""

    delivery: WebhookDelivery
    url: str
    secret: str = field(repr=False)


@dataclass(frozen=True)
class VendorTicket:
    """A battery-replacement ticket sent to the pack vendor (one row of ``vendor_tickets``).

    Parameters
    ----------
    work_order_id, battery_id
        The replacement it is about (one ticket per work order).
    msg_id
        The ``webhook-id`` of the ``vendor.ticket`` event that carried it.
    status
        ``sent`` until the vendor replies, then the reply's status.
    rma_number, reply_note, replied_at_s
        From the vendor's latest reply (``None`` before one).
    created_at_s
        When the ticket was opened (Unix s).
    """

    work_order_id: int
    battery_id: str
    msg_id: str
    status: VendorTicketStatus
    rma_number: str | None
    reply_note: str | None
    replied_at_s: float | None
    created_at_s: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", VendorTicketStatus(self.status))
        _check_msg_id(self.msg_id)
        if self.status is VendorTicketStatus.RMA and not self.rma_number:
            raise ValueError(f"Expected an rma_number with status rma, got {self.rma_number!r}.")

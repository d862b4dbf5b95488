"""Webhooks in PostgreSQL: subscriptions, the delivery queue, attempts and vendor tickets.

Implements the dispatcher's store (:class:`alerts.delivery.WebhookStoreProtocol`), the
vendor tickets' (:class:`alerts.vendor_tickets.VendorTicketStoreProtocol`) and the API's
reads and changes (:class:`serve.http.deps.WebhookAdmin`). Times are passed in (Unix s)
where the caller's clock decides what is due; tables: ``store/migrations/0010_webhooks.sql``.

The queue is safe for several dispatchers: :meth:`WebhookStore.claim_due` takes the due rows
with ``SELECT ... FOR UPDATE SKIP LOCKED`` and, in the same transaction, moves their next
attempt past a lease, so a row claimed by one dispatcher is neither locked nor due for the
others while it is being sent.
"""

from __future__ import annotations

import builtins
import re
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from contracts.alerts import AlertSeverity
from contracts.webhooks import (
    EVENT_TYPES,
    DeliveryAttempt,
    DeliveryState,
    DueDelivery,
    NoVendorTicket,
    SubscriptionDisabled,
    VendorTicket,
    VendorTicketStatus,
    WebhookDelivery,
    WebhookSubscription,
    check_matchers,
)
from store.postgres import connection_turn, own_transaction, require_autocommit

__all__ = ["WebhookStore"]

_SUBSCRIPTION = (
    "s.id, s.url, s.description, s.min_severity, s.event_types, s.matchers, s.enabled,"
    " s.disabled_reason, s.created_by, extract(epoch FROM s.created_at)::float8 AS created_at_s"
)

_DELIVERY = (
    "d.id, d.subscription_id, d.msg_id, d.event_type, d.payload, d.state, d.attempts,"
    " d.retry_base, extract(epoch FROM d.next_attempt_at)::float8 AS next_attempt_at_s,"
    " d.last_status_code, d.last_error, d.last_latency_ms,"
    " extract(epoch FROM d.created_at)::float8 AS created_at_s,"
    " extract(epoch FROM d.delivered_at)::float8 AS delivered_at_s,"
    " d.replayed_by, extract(epoch FROM d.replayed_at)::float8 AS replayed_at_s"
)

_TICKET = (
    "t.work_order_id, t.battery_id, t.msg_id, t.status, t.rma_number, t.reply_note,"
    " extract(epoch FROM t.replied_at)::float8 AS replied_at_s,"
    " extract(epoch FROM t.created_at)::float8 AS created_at_s"
)

_INSERT_SUBSCRIPTION = f"""
INSERT INTO webhook_subscriptions AS s
    (url, description, min_severity, event_types, matchers, secret, created_by)
VALUES (%s, %s, %s, %s, %s, %s, %s)
RETURNING {_SUBSCRIPTION}
"""

_DISABLE = f"""
UPDATE webhook_subscriptions AS s
SET enabled = false,
    disabled_reason = coalesce(s.disabled_reason, %(reason)s),
    disabled_at = coalesce(s.disabled_at, to_timestamp(%(now)s::float8))
WHERE s.id = %(id)s
RETURNING {_SUBSCRIPTION}
"""

_CANCEL_PENDING = """
UPDATE webhook_deliveries SET state = 'cancelled', next_attempt_at = NULL
WHERE subscription_id = %s AND state = 'pending'
"""

_CREATE_DELIVERIES = """
INSERT INTO webhook_deliveries
    (subscription_id, msg_id, event_type, payload, state, next_attempt_at, created_at)
SELECT s.id, %(msg_id)s, %(event_type)s, %(payload)s, 'pending',
       to_timestamp(%(due)s::float8), to_timestamp(%(now)s::float8)
FROM webhook_subscriptions AS s
WHERE s.id = ANY(%(ids)s::bigint[]) AND s.enabled
ON CONFLICT (subscription_id, msg_id) DO NOTHING
"""

_CLAIM = f"""
WITH due AS (
    SELECT d.id
    FROM webhook_deliveries AS d
    JOIN webhook_subscriptions AS s ON s.id = d.subscription_id
    WHERE d.state = 'pending' AND d.next_attempt_at <= to_timestamp(%(now)s::float8) AND s.enabled
    ORDER BY d.next_attempt_at, d.id
    LIMIT %(limit)s
    FOR UPDATE OF d SKIP LOCKED
)
UPDATE webhook_deliveries AS d
SET next_attempt_at = to_timestamp(%(until)s::float8)
FROM due, webhook_subscriptions AS s
WHERE d.id = due.id AND s.id = d.subscription_id
RETURNING {_DELIVERY}, s.url AS sub_url, s.secret AS sub_secret
"""

_INSERT_ATTEMPT = """
INSERT INTO webhook_attempts (delivery_id, attempt, at, status_code, error, latency_ms)
VALUES (%s, %s, to_timestamp(%s::float8), %s, %s, %s)
"""

# A delivery that stopped being pending meanwhile (cancelled by a disable) keeps its state;
# the attempt is recorded either way.
_FINISH = f"""
UPDATE webhook_deliveries AS d
SET attempts = greatest(d.attempts, %(attempt)s),
    last_status_code = %(status)s,
    last_error = %(error)s,
    last_latency_ms = %(latency)s,
    state = CASE WHEN d.state = 'pending' THEN %(state)s::text ELSE d.state END,
    next_attempt_at = CASE
        WHEN d.state <> 'pending' THEN d.next_attempt_at
        WHEN %(state)s::text = 'pending' THEN to_timestamp(%(next)s::float8)
        ELSE NULL END,
    delivered_at = CASE
        WHEN d.state = 'pending' AND %(state)s::text = 'succeeded' THEN to_timestamp(%(at)s::float8)
        ELSE d.delivered_at END
WHERE d.id = %(id)s
RETURNING {_DELIVERY}
"""

_REPLAY_CHECK = """
SELECT s.id AS subscription_id, s.enabled, s.disabled_reason
FROM webhook_deliveries AS d JOIN webhook_subscriptions AS s ON s.id = d.subscription_id
WHERE d.id = %s
FOR UPDATE OF d
"""

_REPLAY = f"""
UPDATE webhook_deliveries AS d
SET state = 'pending', next_attempt_at = to_timestamp(%(now)s::float8), retry_base = d.attempts,
    replayed_by = %(actor)s, replayed_at = to_timestamp(%(now)s::float8), delivered_at = NULL
WHERE d.id = %(id)s
RETURNING {_DELIVERY}
"""

_INSERT_TICKET = f"""
INSERT INTO vendor_tickets AS t (work_order_id, battery_id, msg_id, status, created_at)
VALUES (%s, %s, %s, 'sent', to_timestamp(%s::float8))
ON CONFLICT (work_order_id) DO NOTHING
RETURNING {_TICKET}
"""

_TICKET_OF = f"SELECT {_TICKET} FROM vendor_tickets AS t WHERE t.work_order_id = %s"

_UPDATE_TICKET = f"""
UPDATE vendor_tickets AS t
SET status = %s, rma_number = %s, reply_note = %s, replied_at = to_timestamp(%s::float8)
WHERE t.work_order_id = %s
RETURNING {_TICKET}
"""

# A note on the order's history: no state change (from = to), attributed like any change.
_NOTE_EVENT = """
INSERT INTO work_order_events (work_order_id, from_state, to_state, actor, note)
VALUES (%s, %s, %s, %s, %s)
"""

_SECRET_RE = re.compile(r"^whsec_[A-Za-z0-9+/]+={0,2}$")
_MAX_ERROR_CHARS = 1000


def _subscription(row: Mapping[str, Any]) -> WebhookSubscription:
    return WebhookSubscription(
        id=row["id"],
        url=row["url"],
        description=row["description"],
        min_severity=AlertSeverity(row["min_severity"]),
        event_types=frozenset(row["event_types"]),
        matchers=dict(row["matchers"]),
        enabled=row["enabled"],
        disabled_reason=row["disabled_reason"],
        created_by=row["created_by"],
        created_at_s=row["created_at_s"],
    )


def _delivery(row: Mapping[str, Any]) -> WebhookDelivery:
    return WebhookDelivery(
        id=row["id"],
        subscription_id=row["subscription_id"],
        msg_id=row["msg_id"],
        event_type=row["event_type"],
        payload=row["payload"],
        state=DeliveryState(row["state"]),
        attempts=row["attempts"],
        next_attempt_at_s=row["next_attempt_at_s"],
        last_status_code=row["last_status_code"],
        last_error=row["last_error"],
        last_latency_ms=row["last_latency_ms"],
        created_at_s=row["created_at_s"],
        delivered_at_s=row["delivered_at_s"],
        retry_base=row["retry_base"],
        replayed_by=row["replayed_by"],
        replayed_at_s=row["replayed_at_s"],
    )


def _ticket(row: Mapping[str, Any]) -> VendorTicket:
    return VendorTicket(
        work_order_id=row["work_order_id"],
        battery_id=row["battery_id"],
        msg_id=row["msg_id"],
        status=VendorTicketStatus(row["status"]),
        rma_number=row["rma_number"],
        reply_note=row["reply_note"],
        replied_at_s=row["replied_at_s"],
        created_at_s=row["created_at_s"],
    )


def _check_text(name: str, value: str, max_chars: int, *, allow_empty: bool = False) -> None:
    if (not value.strip() and not allow_empty) or len(value) > max_chars or not value.isprintable():
        raise ValueError(
            f"Expected {name} to be {'0' if allow_empty else '1'}-{max_chars} printable "
            f"characters, got {value[:40]!r}{'...' if len(value) > 40 else ''} ({len(value)} characters)."
        )


class WebhookStore:
    """Subscriptions, deliveries, attempts and vendor tickets in PostgreSQL.

    Parameters
    ----------
    conn
        An autocommit connection with the migrations applied; other stores and concurrent
        tasks may share it (calls take turns, :func:`store.postgres.connection_turn`).
    """

    def __init__(self, conn: psycopg.AsyncConnection) -> None:
        require_autocommit(conn, "WebhookStore")
        self._conn = conn

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
        """Store a subscription with its signing secret (made by
        :func:`alerts.webhooks.new_secret`; the caller shows it once). The URL must have
        been checked by the URL policy already."""
        _check_text("url", url, 2000)
        _check_text("description", description, 500, allow_empty=True)
        _check_text("created_by", created_by, 200)
        if _SECRET_RE.fullmatch(secret) is None:
            raise ValueError("Expected a secret 'whsec_<base64>', got one that is not.")
        unknown = sorted(set(event_types) - EVENT_TYPES)
        if not event_types or unknown:
            raise ValueError(
                f"Expected event types of {sorted(EVENT_TYPES)}, got {sorted(event_types)}."
            )
        check_matchers(matchers)
        async with connection_turn(self._conn), self._conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                _INSERT_SUBSCRIPTION,
                (url, description, AlertSeverity(min_severity).value, sorted(event_types),
                 Jsonb(dict(matchers)), secret, created_by),
            )  # fmt: skip
            row = await cur.fetchone()
        assert row is not None  # INSERT ... RETURNING returns the row
        return _subscription(row)

    async def subscriptions(self) -> builtins.list[WebhookSubscription]:
        """Every subscription, enabled or not, oldest first."""
        async with connection_turn(self._conn), self._conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                f"SELECT {_SUBSCRIPTION} FROM webhook_subscriptions AS s ORDER BY s.id"
            )
            rows = await cur.fetchall()
        return [_subscription(r) for r in rows]

    async def subscription(self, subscription_id: int) -> WebhookSubscription:
        """One subscription; ``KeyError`` when there is none."""
        async with connection_turn(self._conn), self._conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                f"SELECT {_SUBSCRIPTION} FROM webhook_subscriptions AS s WHERE s.id = %s",
                (subscription_id,),
            )
            row = await cur.fetchone()
        if row is None:
            raise KeyError(f"No webhook subscription with id {subscription_id}.")
        return _subscription(row)

    async def enabled_subscriptions(self, event_type: str) -> builtins.list[WebhookSubscription]:
        """The enabled subscriptions that list ``event_type``, oldest first."""
        async with connection_turn(self._conn), self._conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                f"SELECT {_SUBSCRIPTION} FROM webhook_subscriptions AS s"
                " WHERE s.enabled AND %s = ANY(s.event_types) ORDER BY s.id",
                (event_type,),
            )
            rows = await cur.fetchall()
        return [_subscription(r) for r in rows]

    async def disable_subscription(
        self, subscription_id: int, reason: str, now_s: float
    ) -> WebhookSubscription:
        """Disable a subscription and cancel its pending deliveries, atomically.

        Idempotent: an already disabled subscription keeps its first reason and time.
        ``KeyError`` when there is no such subscription.
        """
        _check_text("reason", reason, 1000)
        action = f"disabling webhook subscription {subscription_id}"
        async with (
            own_transaction(self._conn, "webhook", action),
            self._conn.cursor(row_factory=dict_row) as cur,
        ):
            await cur.execute(_DISABLE, {"id": subscription_id, "reason": reason, "now": now_s})
            row = await cur.fetchone()
            if row is None:
                raise KeyError(f"No webhook subscription with id {subscription_id}.")
            await cur.execute(_CANCEL_PENDING, (subscription_id,))
        return _subscription(row)

    # ------------------------------------------------------------------ the queue
    async def create_deliveries(
        self,
        subscription_ids: Sequence[int],
        msg_id: str,
        event_type: str,
        payload: Mapping[str, Any],
        now_s: float,
        due_at_s: float | None = None,
    ) -> int:
        """One pending delivery per still-enabled subscription of ``subscription_ids``,
        due at ``due_at_s`` (``now_s`` when ``None``); a subscription that already has
        ``msg_id`` gets none. Returns how many were made."""
        if event_type not in EVENT_TYPES:
            raise ValueError(
                f"Expected an event type of {sorted(EVENT_TYPES)}, got {event_type!r}."
            )
        if not subscription_ids:
            return 0
        params = {
            "ids": list(subscription_ids), "msg_id": msg_id, "event_type": event_type,
            "payload": Jsonb(dict(payload)), "now": now_s, "due": now_s if due_at_s is None else due_at_s,
        }  # fmt: skip
        async with (
            own_transaction(self._conn, "webhook", f"queueing {event_type} {msg_id}"),
            self._conn.cursor() as cur,
        ):
            await cur.execute(_CREATE_DELIVERIES, params)
            made = cur.rowcount
        return max(made, 0)

    async def claim_due(
        self, now_s: float, limit: int, lease_s: float
    ) -> builtins.list[DueDelivery]:
        """Up to ``limit`` pending deliveries of enabled subscriptions due at ``now_s``,
        oldest due first, each leased until ``now_s + lease_s``; rows another transaction
        holds are skipped, not waited for."""
        if limit < 1 or lease_s <= 0:
            raise ValueError(f"Expected limit >= 1 and lease_s > 0, got {limit} and {lease_s}.")
        params = {"now": now_s, "limit": limit, "until": now_s + lease_s}
        async with (
            own_transaction(self._conn, "webhook", "claiming due deliveries"),
            self._conn.cursor(row_factory=dict_row) as cur,
        ):
            await cur.execute(_CLAIM, params)
            rows = await cur.fetchall()
        rows.sort(key=lambda r: (r["next_attempt_at_s"], r["id"]))
        return [DueDelivery(_delivery(r), r["sub_url"], r["sub_secret"]) for r in rows]

    async def finish_attempt(
        self, attempt: DeliveryAttempt, state: DeliveryState, next_attempt_at_s: float | None
    ) -> WebhookDelivery:
        """Record ``attempt`` and move its delivery to ``state`` (due at
        ``next_attempt_at_s`` when pending), atomically; a delivery that is no longer
        pending keeps its state. ``KeyError`` for an unknown delivery."""
        state = DeliveryState(state)
        if (state is DeliveryState.PENDING) != (next_attempt_at_s is not None):
            raise ValueError(
                f"Expected next_attempt_at_s exactly when the state is pending, got "
                f"{state.value} and {next_attempt_at_s}."
            )
        error = None if attempt.error is None else attempt.error[:_MAX_ERROR_CHARS]
        async with (
            own_transaction(
                self._conn,
                "webhook",
                f"recording attempt {attempt.attempt} of delivery {attempt.delivery_id}",
            ),
            self._conn.cursor(row_factory=dict_row) as cur,
        ):
            await cur.execute(
                _FINISH,
                {
                    "id": attempt.delivery_id, "attempt": attempt.attempt, "status": attempt.status_code,
                    "error": error, "latency": attempt.latency_ms, "state": state.value,
                    "next": next_attempt_at_s, "at": attempt.at_s,
                },
            )  # fmt: skip
            row = await cur.fetchone()
            if row is None:
                raise KeyError(f"No webhook delivery with id {attempt.delivery_id}.")
            await cur.execute(
                _INSERT_ATTEMPT,
                (attempt.delivery_id, attempt.attempt, attempt.at_s, attempt.status_code, error,
                 attempt.latency_ms),
            )  # fmt: skip
        return _delivery(row)

    async def replay(self, delivery_id: int, actor: str, now_s: float) -> WebhookDelivery:
        """Make a delivery pending and due at ``now_s`` again: same ``msg_id``, attempts
        kept, the retry schedule counted afresh, the replay attributed to ``actor``.

        Raises
        ------
        KeyError
            No such delivery.
        contracts.webhooks.SubscriptionDisabled
            Its subscription is disabled; nothing changes.
        """
        _check_text("actor", actor, 200)
        async with (
            own_transaction(self._conn, "webhook", f"replaying delivery {delivery_id}"),
            self._conn.cursor(row_factory=dict_row) as cur,
        ):
            await cur.execute(_REPLAY_CHECK, (delivery_id,))
            found = await cur.fetchone()
            if found is None:
                raise KeyError(f"No webhook delivery with id {delivery_id}.")
            if not found["enabled"]:
                raise SubscriptionDisabled(
                    f"Cannot replay delivery {delivery_id}: webhook subscription "
                    f"{found['subscription_id']} is disabled ({found['disabled_reason']})."
                )
            await cur.execute(_REPLAY, {"id": delivery_id, "actor": actor, "now": now_s})
            row = await cur.fetchone()
        assert row is not None  # the row is locked by this transaction
        return _delivery(row)

    async def deliveries(
        self, subscription_id: int, state: DeliveryState | None = None, limit: int = 100
    ) -> builtins.list[WebhookDelivery]:
        """A subscription's newest ``limit`` deliveries (only those in ``state`` when
        given), newest first; ``KeyError`` for an unknown subscription."""
        if limit < 1:
            raise ValueError(f"Expected limit >= 1, got {limit}.")
        state_value = None if state is None else DeliveryState(state).value
        async with connection_turn(self._conn), self._conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "SELECT 1 FROM webhook_subscriptions WHERE id = %s", (subscription_id,)
            )
            if await cur.fetchone() is None:
                raise KeyError(f"No webhook subscription with id {subscription_id}.")
            await cur.execute(
                f"SELECT {_DELIVERY} FROM webhook_deliveries AS d"
                " WHERE d.subscription_id = %(sub)s AND (%(state)s::text IS NULL OR d.state = %(state)s)"
                " ORDER BY d.id DESC LIMIT %(limit)s",
                {"sub": subscription_id, "state": state_value, "limit": limit},
            )
            rows = await cur.fetchall()
        return [_delivery(r) for r in rows]

    async def delivery(self, delivery_id: int) -> WebhookDelivery:
        """One delivery; ``KeyError`` when there is none."""
        async with connection_turn(self._conn), self._conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                f"SELECT {_DELIVERY} FROM webhook_deliveries AS d WHERE d.id = %s", (delivery_id,)
            )
            row = await cur.fetchone()
        if row is None:
            raise KeyError(f"No webhook delivery with id {delivery_id}.")
        return _delivery(row)

    async def attempts(self, delivery_id: int) -> builtins.list[DeliveryAttempt]:
        """Every attempt of a delivery, oldest first (empty for an unknown delivery)."""
        async with connection_turn(self._conn), self._conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "SELECT delivery_id, attempt, extract(epoch FROM at)::float8 AS at_s, status_code,"
                " error, latency_ms FROM webhook_attempts WHERE delivery_id = %s ORDER BY attempt, id",
                (delivery_id,),
            )
            rows = await cur.fetchall()
        return [DeliveryAttempt(**r) for r in rows]

    # ------------------------------------------------------------------ vendor tickets
    async def create_ticket(
        self, work_order_id: int, battery_id: str, msg_id: str, now_s: float
    ) -> tuple[VendorTicket, bool]:
        """The order's ticket, made now with ``msg_id`` unless it has one already; and
        whether this call made it. ``KeyError`` for an unknown work order."""
        async with (
            own_transaction(
                self._conn, "webhook", f"opening the vendor ticket of work order {work_order_id}"
            ),
            self._conn.cursor(row_factory=dict_row) as cur,
        ):
            await cur.execute("SELECT 1 FROM work_orders WHERE id = %s", (work_order_id,))
            if await cur.fetchone() is None:
                raise KeyError(f"No work order with id {work_order_id}.")
            await cur.execute(_INSERT_TICKET, (work_order_id, battery_id, msg_id, now_s))
            row = await cur.fetchone()
            created = row is not None
            if row is None:
                await cur.execute(_TICKET_OF, (work_order_id,))
                row = await cur.fetchone()
        assert row is not None  # inserted, or there already (unique on the order)
        return _ticket(row), created

    async def ticket(self, work_order_id: int) -> VendorTicket:
        """The order's vendor ticket; ``KeyError`` for an unknown order or one without a
        ticket (the message says which)."""
        async with connection_turn(self._conn), self._conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(_TICKET_OF, (work_order_id,))
            row = await cur.fetchone()
            if row is None:
                await cur.execute("SELECT 1 FROM work_orders WHERE id = %s", (work_order_id,))
                known = await cur.fetchone() is not None
        if row is None:
            raise KeyError(
                f"No vendor ticket for work order {work_order_id}."
                if known
                else f"No work order with id {work_order_id}."
            )
        return _ticket(row)

    async def record_reply(
        self,
        work_order_id: int,
        status: VendorTicketStatus,
        rma_number: str | None,
        note: str | None,
        actor: str,
        now_s: float,
    ) -> VendorTicket:
        """Store a vendor's reply on the ticket and a note in the order's history, in one
        transaction.

        Raises
        ------
        KeyError
            No such work order.
        contracts.webhooks.NoVendorTicket
            The order has no vendor ticket.
        ValueError
            ``sent`` as a reply's status, or ``rma`` without a number.
        """
        status = VendorTicketStatus(status)
        if status is VendorTicketStatus.SENT:
            raise ValueError("Expected a reply status of accepted, rejected or rma, got 'sent'.")
        if status is VendorTicketStatus.RMA and not rma_number:
            raise ValueError(f"Expected an rma_number with status rma, got {rma_number!r}.")
        _check_text("actor", actor, 200)
        text = f"vendor reply: {status.value}" + (f" (RMA {rma_number})" if rma_number else "")
        text += f": {note}" if note else ""
        async with (
            own_transaction(
                self._conn, "webhook", f"recording the vendor reply to work order {work_order_id}"
            ),
            self._conn.cursor(row_factory=dict_row) as cur,
        ):
            # Shared lock: a state change of the order waits, so the note's state is current.
            await cur.execute(
                "SELECT state FROM work_orders WHERE id = %s FOR SHARE", (work_order_id,)
            )
            order = await cur.fetchone()
            if order is None:
                raise KeyError(f"No work order with id {work_order_id}.")
            await cur.execute(
                _UPDATE_TICKET, (status.value, rma_number, note, now_s, work_order_id)
            )
            row = await cur.fetchone()
            if row is None:
                raise NoVendorTicket(
                    f"Work order {work_order_id} has no vendor ticket: a reply needs one "
                    "(tickets are opened for battery replacements)."
                )
            await cur.execute(
                _NOTE_EVENT, (work_order_id, order["state"], order["state"], actor, text)
            )
        return _ticket(row)

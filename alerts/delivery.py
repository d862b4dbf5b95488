"""The webhook dispatcher: queue events for the subscriptions that want them, send the due
deliveries (signed, concurrently, with retries), and record every attempt. Plain asyncio.

The store is the queue (:class:`WebhookStoreProtocol`; PostgreSQL in production,
:class:`store.webhook_store.WebhookStore`), so nothing is lost when the dispatcher stops:
:meth:`WebhookDispatcher.enqueue` writes one delivery per matching subscription, and
:meth:`WebhookDispatcher.run_due` claims the due ones (a claim is a lease: the rows' next
attempt moves past the send, and the PostgreSQL claim skips rows another dispatcher has
locked), sends each once and writes what happened. The outcome of one attempt:

======================================  ===================================================
2xx                                     succeeded; the body goes to ``on_success``
410 Gone                                the receiver asked to stop: the subscription is
                                        disabled (reason recorded), its pending deliveries
                                        (this one too) cancelled
any other status, a timeout, a refused  pending again after the :class:`RetrySchedule`'s
connection, an unsafe address           next wait, or failed when it is spent
======================================  ===================================================

Redirects are not followed (a 3xx is a failed attempt): following one would send the
request to a URL nobody checked.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Protocol

import httpx

from alerts.webhooks import RetrySchedule, UnsafeWebhookUrl, UrlPolicy, check_url, sign
from contracts.alerts import Alert, AlertSeverity, AlertState, AlertTransition
from contracts.webhooks import (
    EVENT_TYPES,
    DeliveryAttempt,
    DeliveryState,
    DueDelivery,
    EventType,
    WebhookDelivery,
    WebhookSubscription,
    new_msg_id,
)

__all__ = [
    "DispatcherStats",
    "Notification",
    "ResponseHandler",
    "WebhookDispatcher",
    "WebhookStoreProtocol",
    "alert_notification",
    "json_safe",
    "webhook_body",
]

logger = logging.getLogger(__name__)


class WebhookStoreProtocol(Protocol):
    """What the dispatcher needs of its store (:class:`store.webhook_store.WebhookStore`)."""

    async def enabled_subscriptions(self, event_type: str) -> list[WebhookSubscription]:
        """The enabled subscriptions that list ``event_type``."""
        ...

    async def create_deliveries(
        self,
        subscription_ids: Sequence[int],
        msg_id: str,
        event_type: str,
        payload: Mapping[str, Any],
        now_s: float,
        due_at_s: float | None = None,
    ) -> int:
        """One pending delivery per still-enabled subscription, made at ``now_s`` and due at
        ``due_at_s`` (``now_s`` when ``None``); a subscription that already has ``msg_id``
        gets none (idempotent). Returns how many were made."""
        ...

    async def claim_due(self, now_s: float, limit: int, lease_s: float) -> list[DueDelivery]:
        """Up to ``limit`` pending deliveries due at ``now_s``, oldest due first, each
        leased for ``lease_s`` (not due again until then) so no other claim takes it."""
        ...

    async def finish_attempt(
        self, attempt: DeliveryAttempt, state: DeliveryState, next_attempt_at_s: float | None
    ) -> WebhookDelivery:
        """Record ``attempt`` and move its delivery to ``state`` (due again at
        ``next_attempt_at_s`` when pending); a delivery no longer pending keeps its state."""
        ...

    async def disable_subscription(
        self, subscription_id: int, reason: str, now_s: float
    ) -> WebhookSubscription:
        """Disable a subscription (keeping the first reason) and cancel its pending
        deliveries; ``KeyError`` for an unknown one."""
        ...

    async def replay(self, delivery_id: int, actor: str, now_s: float) -> WebhookDelivery:
        """Make a delivery pending and due at ``now_s`` again, same ``msg_id``, attempts
        kept; ``KeyError`` when unknown, :class:`contracts.webhooks.SubscriptionDisabled`
        when its subscription is disabled."""
        ...


#: ``on_success(delivery, status_code, body)``: called after a 2xx was recorded, with up to
#: ``max_response_bytes`` of the answer (a vendor's synchronous reply).
ResponseHandler = Callable[[WebhookDelivery, int, bytes], Awaitable[None]]


@dataclass
class DispatcherStats:
    """Counters since the dispatcher started (for metrics).

    ``sent`` counts attempts; ``succeeded``, ``retried``, ``failed`` (gave up) and
    ``cancelled`` count attempt outcomes; ``disabled`` subscriptions disabled by a 410;
    ``errors`` rounds of :meth:`WebhookDispatcher.run_forever` that raised.
    """

    enqueued: int = 0
    sent: int = 0
    succeeded: int = 0
    retried: int = 0
    failed: int = 0
    cancelled: int = 0
    disabled: int = 0
    errors: int = 0


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float replaced by ``None`` (JSON has no NaN; the
    twins and alert evidence use NaN for "not known")."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [json_safe(v) for v in value]
    return value


def _iso(at_s: float) -> str:
    return (
        datetime.fromtimestamp(at_s, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


def webhook_body(delivery: WebhookDelivery) -> bytes:
    """The bytes sent for ``delivery``: compact JSON ``{"type", "timestamp", "data"}``.

    ``timestamp`` is when the event was queued, so every retry and replay sends the same
    body (only the ``webhook-timestamp`` header and the signature change).
    """
    doc = {
        "type": delivery.event_type,
        "timestamp": _iso(delivery.created_at_s),
        "data": delivery.payload,
    }
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode(
        "utf-8"
    )


@dataclass(frozen=True)
class Notification:
    """An event to enqueue: what :func:`alert_notification` makes of an alert's change."""

    event_type: EventType
    payload: dict[str, Any]
    severity: AlertSeverity
    labels: dict[str, str] = field(default_factory=dict)


_ALERT_EVENTS = {
    AlertState.FIRING: EventType.ALERT_FIRING,
    AlertState.ACKNOWLEDGED: EventType.ALERT_ACKNOWLEDGED,
    AlertState.RESOLVED: EventType.ALERT_RESOLVED,
}


def alert_notification(alert: Alert, transition: AlertTransition) -> Notification | None:
    """The webhook event of an alert's state change, or ``None`` when nobody is told.

    Nobody is told of a pending alert, of one that resolved without ever firing (nobody
    was told it started), or of a muted (silenced or inhibited) alert.
    """
    event_type = _ALERT_EVENTS.get(transition.to_state)
    if event_type is None or alert.muted:
        return None
    if event_type is EventType.ALERT_RESOLVED and alert.fired_at_s is None:
        return None
    payload = {
        "alert": alert.to_dict(),
        "transition": {
            "from_state": None if transition.from_state is None else transition.from_state.value,
            "to_state": transition.to_state.value,
            "at_s": transition.at_s,
            "actor": transition.actor,
            "note": transition.note,
        },
    }
    return Notification(event_type, json_safe(payload), alert.severity, alert.match_labels())


async def _read_capped(response: httpx.Response, max_bytes: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk[: max_bytes - size])
        size += len(chunks[-1])
        if size >= max_bytes:
            break  # a receiver cannot make us hold more than this
    return b"".join(chunks)


class WebhookDispatcher:
    """Sends webhook deliveries from a store: signed, concurrent, retried, recorded.

    Use it as an async context manager (it opens and closes its HTTP client)::

        async with WebhookDispatcher(WebhookStore(conn), UrlPolicy()) as dispatcher:
            await dispatcher.enqueue("alert.firing", payload, severity=..., labels=...)
            await dispatcher.run_forever()

    Parameters
    ----------
    store
        Subscriptions, the delivery queue and the attempt log.
    policy
        Which URLs may be reached; checked again before every attempt.
    now
        Wall clock, Unix seconds (tests pass a fake): due times, ``webhook-timestamp``.
    timeout_s
        Longest one attempt may take, connection to last byte read.
    transport
        The HTTP transport (``httpx.MockTransport`` in tests); a plain one when ``None``.
    resolve
        The resolver :func:`alerts.webhooks.check_url` uses (tests pass their own).
    schedule
        When to retry, and when to give up.
    rng
        Draws the retry jitter (seed it for repeatable tests).
    max_concurrency
        Attempts in flight at once, so one slow receiver does not stall the others.
    on_success
        Called with the answer of each 2xx (see :data:`ResponseHandler`); what it raises is
        logged, never turned into a failed delivery (the receiver did get it).
    max_response_bytes
        Most of an answer read (and handed to ``on_success``).
    """

    def __init__(
        self,
        store: WebhookStoreProtocol,
        policy: UrlPolicy | None = None,
        *,
        now: Callable[[], float] = time.time,
        timeout_s: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
        resolve: Callable[[str, int], Awaitable[Sequence[str]]] | None = None,
        schedule: RetrySchedule | None = None,
        rng: random.Random | None = None,
        max_concurrency: int = 8,
        on_success: ResponseHandler | None = None,
        max_response_bytes: int = 64 * 1024,
    ) -> None:
        if not (math.isfinite(timeout_s) and timeout_s > 0):
            raise ValueError(f"Expected a finite timeout_s > 0, got {timeout_s}.")
        if max_concurrency < 1:
            raise ValueError(f"Expected max_concurrency >= 1, got {max_concurrency}.")
        if max_response_bytes < 0:
            raise ValueError(f"Expected max_response_bytes >= 0, got {max_response_bytes}.")
        self.store = store
        self.policy = policy or UrlPolicy()
        self.timeout_s = timeout_s
        self.schedule = schedule or RetrySchedule()
        self.max_concurrency = max_concurrency
        self.max_response_bytes = max_response_bytes
        self.on_success = on_success
        # A claimed delivery is not due again until the lease ends: long enough for a whole
        # attempt and its bookkeeping; a dispatcher that died mid-send is retried after it.
        self.lease_s = max(60.0, 3.0 * timeout_s)
        self._now = now
        self._transport = transport
        self._resolve = resolve
        self._rng = rng or random.Random()
        self._client: httpx.AsyncClient | None = None
        self._stats = DispatcherStats()

    # ------------------------------------------------------------------ lifecycle
    async def __aenter__(self) -> WebhookDispatcher:
        if self._client is not None:
            raise RuntimeError("Cannot open the webhook dispatcher twice.")
        transport = self._transport or httpx.AsyncHTTPTransport(
            retries=0,
            # No pooled connections: attempts connect to a checked address under another
            # host's name (SNI), and a pooled connection must not carry a request to a host
            # its certificate was not checked for. Webhook rates make reuse worth nothing.
            limits=httpx.Limits(max_keepalive_connections=0),
        )
        self._client = httpx.AsyncClient(
            transport=transport,
            timeout=httpx.Timeout(self.timeout_s),
            follow_redirects=False,
            # Proxies from the environment would connect to the host by name, around the
            # address checked by the URL policy.
            trust_env=False,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP client (idempotent)."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    def _require_open(self) -> httpx.AsyncClient:
        if self._client is None:
            raise RuntimeError(
                "Cannot send webhooks: the dispatcher is not open (use 'async with "
                "WebhookDispatcher(...) as dispatcher')."
            )
        return self._client

    # ------------------------------------------------------------------ queueing
    async def enqueue(
        self,
        event_type: str,
        payload: Mapping[str, Any],
        *,
        severity: AlertSeverity,
        labels: Mapping[str, str],
        msg_id: str | None = None,
    ) -> int:
        """Queue an event for every enabled subscription that wants it.

        A subscription wants it when it lists ``event_type``, ``severity`` is at least its
        ``min_severity`` and its matchers hold in ``labels``.

        Parameters
        ----------
        event_type
            One of :data:`contracts.webhooks.EVENT_TYPES`.
        payload
            The event's data (JSON-able; non-finite floats are sent as ``null``).
        severity, labels
            What subscriptions filter on.
        msg_id
            The message id to use (a caller that must stay idempotent passes its own: a
            subscription that already has this id gets no second delivery); a fresh one
            when ``None``.

        Returns
        -------
        int
            Deliveries queued.
        """
        if event_type not in EVENT_TYPES:
            raise ValueError(
                f"Expected an event type of {sorted(EVENT_TYPES)}, got {event_type!r}."
            )
        data = json_safe(payload)
        try:
            json.dumps(data, allow_nan=False)
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"Expected a JSON-serialisable payload, got one that is not: {err}."
            ) from None
        severity = AlertSeverity(severity)
        subscriptions = await self.store.enabled_subscriptions(event_type)
        targets = [s.id for s in subscriptions if s.wants(event_type, severity, labels)]
        if not targets:
            return 0
        now_s = self._now()
        first_wait_s = self.schedule.next_delay_s(0, self._rng) or 0.0
        made = await self.store.create_deliveries(
            targets, msg_id or new_msg_id(), event_type, data, now_s, now_s + first_wait_s
        )
        self._stats.enqueued += made
        return made

    async def notify(self, alert: Alert, transition: AlertTransition) -> int:
        """Queue the webhook event of an alert's change (:func:`alert_notification`);
        the deliveries queued (0 when nobody is told)."""
        note = alert_notification(alert, transition)
        if note is None:
            return 0
        return await self.enqueue(
            note.event_type, note.payload, severity=note.severity, labels=note.labels
        )

    async def replay(self, delivery_id: int, actor: str) -> WebhookDelivery:
        """Send a delivery again: pending and due now, same ``msg_id``, attempts kept, the
        retry schedule started afresh.

        Raises
        ------
        KeyError
            No such delivery.
        contracts.webhooks.SubscriptionDisabled
            Its subscription is disabled; nothing changes.
        """
        if not actor.strip():
            raise ValueError(
                f"Expected a non-empty actor to attribute the replay to, got {actor!r}."
            )
        return await self.store.replay(delivery_id, actor, self._now())

    def stats(self) -> DispatcherStats:
        """A copy of the counters."""
        return DispatcherStats(**vars(self._stats))

    # ------------------------------------------------------------------ sending
    async def run_due(self, limit: int = 100) -> int:
        """Claim up to ``limit`` due deliveries and attempt each once, at most
        ``max_concurrency`` at a time; the number attempted.

        Every attempt is recorded even when another fails; an error of the store is raised
        after all of them finished.
        """
        if limit < 1:
            raise ValueError(f"Expected limit >= 1, got {limit}.")
        client = self._require_open()
        claimed = await self.store.claim_due(self._now(), limit, self.lease_s)
        if not claimed:
            return 0
        gate = asyncio.Semaphore(self.max_concurrency)

        async def one(due: DueDelivery) -> None:
            async with gate:
                await self._attempt(client, due)

        results = await asyncio.gather(*(one(d) for d in claimed), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]
        return len(claimed)

    async def run_forever(self, poll_s: float = 1.0) -> None:
        """Send due deliveries until cancelled, polling the store every ``poll_s``.

        A round that raised (the store unreachable) is logged and counted in
        ``stats().errors``, and the next round tries again.
        """
        if not (math.isfinite(poll_s) and poll_s > 0):
            raise ValueError(f"Expected a finite poll_s > 0, got {poll_s}.")
        limit = 100
        while True:
            try:
                done = await self.run_due(limit)
            except asyncio.CancelledError:
                raise
            except Exception:
                self._stats.errors += 1
                logger.exception("Webhook round failed; trying again in %.1f s.", poll_s)
                done = 0
            if done < limit:  # a full batch means more are due: go on at once
                await asyncio.sleep(poll_s)

    def _request(
        self, client: httpx.AsyncClient, due: DueDelivery, address: str, at_s: float
    ) -> httpx.Request:
        delivery = due.delivery
        body = webhook_body(delivery)
        url = httpx.URL(due.url)
        headers = {
            "content-type": "application/json",
            "user-agent": "bms-webhooks/1",
            # The request goes to the checked address, named as the URL names it.
            "host": url.netloc.decode("ascii"),
            **sign(due.secret, delivery.msg_id, int(at_s), body),
        }
        extensions = {"sni_hostname": url.host} if url.scheme == "https" else {}
        return client.build_request(
            "POST",
            url.copy_with(host=address),
            content=body,
            headers=headers,
            extensions=extensions,
        )

    async def _send(
        self, client: httpx.AsyncClient, due: DueDelivery, at_s: float
    ) -> tuple[int | None, str | None, bytes]:
        """``(status, error, body)`` of one attempt; nothing raised for a receiver's fault."""
        try:
            addresses = await check_url(due.url, self.policy, self._resolve)
            request = self._request(client, due, addresses[0], at_s)
            async with asyncio.timeout(self.timeout_s):
                response = await client.send(request, stream=True)
                try:
                    body = await _read_capped(response, self.max_response_bytes)
                finally:
                    await response.aclose()
        except UnsafeWebhookUrl as err:
            return None, f"unsafe URL: {err}", b""
        except TimeoutError:
            return None, f"no answer within {self.timeout_s:g} s", b""
        except httpx.HTTPError as err:
            return None, f"{type(err).__name__}: {err}" if str(err) else type(err).__name__, b""
        return response.status_code, None, body

    async def _attempt(self, client: httpx.AsyncClient, due: DueDelivery) -> None:
        delivery = due.delivery
        at_s = self._now()
        started = time.perf_counter()
        status, error, body = await self._send(client, due, at_s)
        latency_ms = (time.perf_counter() - started) * 1000.0
        self._stats.sent += 1
        next_at_s: float | None = None
        if status is not None and 200 <= status < 300:
            state = DeliveryState.SUCCEEDED
        elif status == 410:
            state, error = (
                DeliveryState.CANCELLED,
                "410 Gone: the receiver asked for no more deliveries",
            )
        else:
            if status is not None:
                error = f"HTTP {status}" + (
                    " (redirects are not followed)" if 300 <= status < 400 else ""
                )
            delay_s = self.schedule.next_delay_s(delivery.attempts_since_replay + 1, self._rng)
            if delay_s is None:
                state = DeliveryState.FAILED
            else:
                state, next_at_s = DeliveryState.PENDING, at_s + delay_s
        attempt = DeliveryAttempt(
            delivery.id, delivery.attempts + 1, at_s, status, error, latency_ms
        )
        recorded = await self.store.finish_attempt(attempt, state, next_at_s)
        self._count(state)
        if state is DeliveryState.CANCELLED:
            reason = (
                f"the receiver answered 410 Gone to delivery {delivery.id} ({delivery.msg_id}) "
                f"at {_iso(at_s)}"
            )
            await self.store.disable_subscription(delivery.subscription_id, reason, at_s)
            self._stats.disabled += 1
            logger.warning(
                "Webhook subscription %d disabled: %s.", delivery.subscription_id, reason
            )
        elif state is DeliveryState.FAILED:
            logger.warning(
                "Webhook delivery %d (%s) to subscription %d failed after %d attempts: %s.",
                delivery.id, delivery.msg_id, delivery.subscription_id, attempt.attempt, error,
            )  # fmt: skip
        if state is DeliveryState.SUCCEEDED and self.on_success is not None and status is not None:
            try:
                await self.on_success(recorded, status, body)
            except Exception:
                logger.exception(
                    "The answer handler failed on delivery %d (%s).", delivery.id, delivery.msg_id
                )

    def _count(self, state: DeliveryState) -> None:
        if state is DeliveryState.SUCCEEDED:
            self._stats.succeeded += 1
        elif state is DeliveryState.PENDING:
            self._stats.retried += 1
        elif state is DeliveryState.FAILED:
            self._stats.failed += 1
        else:
            self._stats.cancelled += 1

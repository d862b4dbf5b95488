"""Webhooks against the machine's real PostgreSQL and a real HTTP receiver on 127.0.0.1:
the queue, retries, 410, replays, the SKIP LOCKED claim, and vendor tickets.

Every test gets its own schema with the migrations applied (the ``conn`` fixture).
"""

from __future__ import annotations

import http.server
import json
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import psycopg
import pytest

from alerts.delivery import WebhookDispatcher
from alerts.vendor_tickets import VendorTickets
from alerts.webhooks import UrlPolicy, new_secret, verify
from contracts.alerts import AlertSeverity
from contracts.webhooks import (
    DeliveryAttempt,
    DeliveryState,
    NoVendorTicket,
    SubscriptionDisabled,
    VendorTicketStatus,
    new_msg_id,
)
from contracts.work_orders import WorkOrderKind
from store import open_postgres
from store.webhook_store import WebhookStore
from store.work_order_store import WorkOrderStore

pytestmark = pytest.mark.integration

LOCAL = UrlPolicy(allow_cidrs=("127.0.0.0/8",), allow_http=True)
ALL_EVENTS = frozenset({"alert.firing", "alert.acknowledged", "alert.resolved", "vendor.ticket"})


@dataclass
class Receiver:
    """What the HTTP receiver saw and answers: a status per path, in order, then 200."""

    secret: str
    statuses: dict[str, list[int]] = field(default_factory=dict)
    answers: dict[str, bytes] = field(default_factory=dict)
    seen: list[tuple[str, dict[str, str], bytes, bool]] = field(default_factory=list)
    port: int = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A real threaded HTTP server on 127.0.0.1 that verifies every signature."""
    state = Receiver(new_secret())

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            headers = {k.lower(): v for k, v in self.headers.items()}
            try:
                verify(state.secret, headers, body, now_s=time.time())
                ok = True
            except Exception:
                ok = False
            state.seen.append((self.path, headers, body, ok))
            queue = state.statuses.get(self.path, [])
            status = queue.pop(0) if queue else 200
            answer = state.answers.get(self.path, b"")
            self.send_response(status)
            self.send_header("content-length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


class Clock:
    def __init__(self) -> None:
        self.t = time.time()

    def __call__(self) -> float:
        return self.t


async def subscribe(store: WebhookStore, receiver: Receiver, path: str, **kw: object) -> int:
    fields: dict[str, object] = {
        "description": "it", "min_severity": AlertSeverity.INFO, "event_types": ALL_EVENTS,
        "matchers": {}, "secret": receiver.secret, "created_by": "ops-1",
    }  # fmt: skip
    fields.update(kw)
    sub = await store.create_subscription(receiver.url(path), **fields)  # type: ignore[arg-type]
    return sub.id


async def test_a_500_is_retried_and_a_200_succeeds(
    conn: psycopg.AsyncConnection, receiver: Receiver
) -> None:
    """First attempt 500, retried 5 s later, 200: succeeded with 2 attempts recorded; the
    receiver verified both signatures and saw one webhook-id."""
    store = WebhookStore(conn)
    sub_id = await subscribe(store, receiver, "/hook")
    receiver.statuses["/hook"] = [500, 200]
    clock = Clock()
    async with WebhookDispatcher(store, LOCAL, now=clock, rng=random.Random(1)) as d:
        assert (
            await d.enqueue("alert.firing", {"k": 1}, severity=AlertSeverity.WARNING, labels={})
            == 1
        )
        assert await d.run_due() == 1
        (pending,) = await store.deliveries(sub_id)
        assert pending.state is DeliveryState.PENDING and pending.last_status_code == 500
        assert pending.next_attempt_at_s is not None
        assert clock.t + 4.4 < pending.next_attempt_at_s < clock.t + 5.6
        assert await d.run_due() == 0  # not due yet
        clock.t += 6
        assert await d.run_due() == 1
    (done,) = await store.deliveries(sub_id)
    assert (
        done.state is DeliveryState.SUCCEEDED
        and done.attempts == 2
        and done.delivered_at_s is not None
    )
    attempts = await store.attempts(done.id)
    assert [(a.attempt, a.status_code) for a in attempts] == [(1, 500), (2, 200)]
    assert attempts[0].error == "HTTP 500" and attempts[1].error is None
    assert all(ok for *_, ok in receiver.seen) and len(receiver.seen) == 2
    assert {h["webhook-id"] for _, h, _, _ in receiver.seen} == {done.msg_id}
    assert json.loads(receiver.seen[0][2])["data"] == {"k": 1}


async def test_410_disables_the_subscription(
    conn: psycopg.AsyncConnection, receiver: Receiver
) -> None:
    """A 410 disables the subscription with the reason, cancels its other pending
    deliveries, and the store's enabled list and claims leave it out."""
    store = WebhookStore(conn)
    gone = await subscribe(store, receiver, "/gone")
    kept = await subscribe(store, receiver, "/kept")
    receiver.statuses["/gone"] = [410]
    clock = Clock()
    async with WebhookDispatcher(store, LOCAL, now=clock, max_concurrency=1) as d:
        await d.enqueue("alert.firing", {}, severity=AlertSeverity.INFO, labels={})
        clock.t += 1
        await d.enqueue("alert.resolved", {}, severity=AlertSeverity.INFO, labels={})
        clock.t += 1
        assert await d.run_due(limit=2) == 2
        assert d.stats().disabled == 1
    sub = await store.subscription(gone)
    assert not sub.enabled and sub.disabled_reason is not None and "410 Gone" in sub.disabled_reason
    assert {s.state for s in await store.deliveries(gone)} == {DeliveryState.CANCELLED}
    assert [s.id for s in await store.enabled_subscriptions("alert.firing")] == [kept]
    assert {d.state for d in await store.deliveries(kept)} == {
        DeliveryState.SUCCEEDED,
        DeliveryState.PENDING,
    }
    with pytest.raises(SubscriptionDisabled, match=f"subscription {gone} is disabled"):
        await store.replay((await store.deliveries(gone))[0].id, "ops-1", clock.t)


async def test_claims_skip_locked_rows_and_lease_what_they_take(
    conn: psycopg.AsyncConnection, schema_url: str, receiver: Receiver
) -> None:
    """A delivery locked by another transaction is skipped, not waited for; a claimed one
    is not due again until its lease ends."""
    store = WebhookStore(conn)
    sub_id = await subscribe(store, receiver, "/hook")
    now = time.time()
    for _ in range(3):
        await store.create_deliveries([sub_id], new_msg_id(), "alert.firing", {}, now)
    first, second, third = sorted(d.id for d in await store.deliveries(sub_id))
    async with open_postgres(schema_url) as other, other.transaction():
        await other.execute("SELECT 1 FROM webhook_deliveries WHERE id = %s FOR UPDATE", (first,))
        claimed = await store.claim_due(now + 1, 10, lease_s=60)
        assert [c.delivery.id for c in claimed] == [second, third]
        assert claimed[0].url == receiver.url("/hook") and claimed[0].secret == receiver.secret
    assert [c.delivery.id for c in await store.claim_due(now + 2, 10, lease_s=60)] == [first]
    assert await store.claim_due(now + 30, 10, lease_s=60) == []
    assert sorted(c.delivery.id for c in await store.claim_due(now + 62, 10, lease_s=60)) == [
        first,
        second,
        third,
    ]


async def test_finish_replay_and_idempotent_queueing(
    conn: psycopg.AsyncConnection, receiver: Receiver
) -> None:
    """Queueing one msg_id twice makes one delivery; a finished delivery replays with its
    msg_id and attempts kept, attributed; a cancelled delivery keeps its state when a late
    attempt is recorded."""
    store = WebhookStore(conn)
    sub_id = await subscribe(store, receiver, "/hook")
    now = time.time()
    msg = new_msg_id()
    assert await store.create_deliveries([sub_id], msg, "vendor.ticket", {"a": [1, None]}, now) == 1
    assert await store.create_deliveries([sub_id], msg, "vendor.ticket", {"a": 2}, now) == 0
    (d,) = await store.deliveries(sub_id)
    assert d.payload == {"a": [1, None]} and d.created_at_s == pytest.approx(now, abs=1e-3)
    done = await store.finish_attempt(
        DeliveryAttempt(d.id, 1, now, 204, None, 3.5), DeliveryState.SUCCEEDED, None
    )
    assert done.state is DeliveryState.SUCCEEDED and done.delivered_at_s == pytest.approx(
        now, abs=1e-3
    )
    again = await store.replay(d.id, "ops-1", now + 10)
    assert (again.state, again.msg_id, again.attempts, again.retry_base) == (
        DeliveryState.PENDING,
        msg,
        1,
        1,
    )
    assert again.replayed_by == "ops-1" and again.delivered_at_s is None
    assert again.next_attempt_at_s == pytest.approx(now + 10, abs=1e-3)
    assert [d.id for d in await store.deliveries(sub_id, DeliveryState.PENDING)] == [d.id]
    await store.disable_subscription(sub_id, "test", now + 11)
    late = await store.finish_attempt(
        DeliveryAttempt(d.id, 2, now + 12, 200, None, 1.0), DeliveryState.SUCCEEDED, None
    )
    assert late.state is DeliveryState.CANCELLED and late.attempts == 2
    assert [a.attempt for a in await store.attempts(d.id)] == [1, 2]
    with pytest.raises(KeyError):
        await store.replay(10_000, "ops-1", now)
    with pytest.raises(KeyError):
        await store.disable_subscription(10_000, "x", now)
    with pytest.raises(KeyError):
        await store.deliveries(10_000)


async def test_the_secret_is_stored_and_checked(conn: psycopg.AsyncConnection) -> None:
    """The secret is kept as is (a symmetric key) but never in what the store lists; a
    malformed secret or event type is refused before anything is written."""
    store = WebhookStore(conn)
    secret = new_secret()
    sub = await store.create_subscription(
        "https://8.8.8.8/x", description="", min_severity=AlertSeverity.WARNING,
        event_types=frozenset({"alert.firing"}), matchers={"zone": "z1"}, secret=secret, created_by="ops-1",
    )  # fmt: skip
    assert secret not in repr(await store.subscriptions())
    row = await (
        await conn.execute("SELECT secret FROM webhook_subscriptions WHERE id = %s", (sub.id,))
    ).fetchone()
    assert row == (secret,)
    with pytest.raises(ValueError, match="whsec_"):
        await store.create_subscription(
            "https://8.8.8.8/x", description="", min_severity=AlertSeverity.INFO,
            event_types=frozenset({"alert.firing"}), matchers={}, secret="plain", created_by="ops-1",
        )  # fmt: skip
    with pytest.raises(ValueError, match="event types"):
        await store.create_subscription(
            "https://8.8.8.8/x", description="", min_severity=AlertSeverity.INFO,
            event_types=frozenset({"alert.lost"}), matchers={}, secret=secret, created_by="ops-1",
        )  # fmt: skip


async def test_vendor_tickets_once_per_order_with_replies_in_the_history(
    conn: psycopg.AsyncConnection, receiver: Receiver
) -> None:
    """A replacement gets one ticket however often asked; the vendor's synchronous reply
    is stored and noted in the order's history (from = to state); an API reply replaces
    it; an order without ticket refuses a reply."""
    store = WebhookStore(conn)
    orders = WorkOrderStore(conn)
    order = await orders.create(
        WorkOrderKind.BATTERY_REPLACEMENT, "veh-1", "b-1", 52.5, 13.4, 90.0, 10.0, "planner"
    )
    swap = await orders.create(
        WorkOrderKind.BATTERY_SWAP, "veh-2", "b-2", 52.5, 13.4, 10.0, 1.0, "planner"
    )
    await subscribe(store, receiver, "/vendor", event_types=frozenset({"vendor.ticket"}))
    receiver.answers["/vendor"] = json.dumps({"status": "accepted", "note": "claim 12"}).encode()
    twin = {"battery_id": "b-1", "efc": 412.0, "ah_discharged_ah": 9000.0, "ah_charged_ah": 9100.0,
            "time_hot_s": 7200.0, "rated_capacity_ah": 20.0, "capacity_est_ah": float("nan")}  # fmt: skip
    clock = Clock()
    tickets = VendorTickets(store, WebhookDispatcher(store), now=clock)
    async with WebhookDispatcher(store, LOCAL, now=clock, on_success=tickets.on_response) as d:
        tickets.dispatcher = d
        first, queued = await tickets.open(order, twin, [])
        second, queued_again = await tickets.open(order, twin, [])
        assert queued == 1 and queued_again == 0 and second == first
        assert await d.run_due() == 1
    ((_, headers, body, ok),) = receiver.seen
    assert ok and headers["webhook-id"] == first.msg_id
    assert json.loads(body)["data"]["pack"]["capacity_est_ah"] is None
    got = await store.ticket(order.id)
    assert got.status is VendorTicketStatus.ACCEPTED and got.reply_note == "claim 12"
    rma = await store.record_reply(
        order.id, VendorTicketStatus.RMA, "RMA-9", None, "manager-1", clock.t + 5
    )
    assert rma.status is VendorTicketStatus.RMA and rma.rma_number == "RMA-9"
    notes = [h for h in await orders.history(order.id) if h["note"]]
    assert [(n["from_state"], n["to_state"], n["actor"], n["note"]) for n in notes] == [
        (
            "planned",
            "planned",
            "vendor (webhook subscription 1)",
            "vendor reply: accepted: claim 12",
        ),
        ("planned", "planned", "manager-1", "vendor reply: rma (RMA RMA-9)"),
    ]
    with pytest.raises(NoVendorTicket, match=f"Work order {swap.id} has no vendor ticket"):
        await store.record_reply(swap.id, VendorTicketStatus.ACCEPTED, None, None, "m", clock.t)
    with pytest.raises(KeyError, match="No work order with id 9999"):
        await store.record_reply(9999, VendorTicketStatus.ACCEPTED, None, None, "m", clock.t)
    with pytest.raises(KeyError, match="No vendor ticket for work order"):
        await store.ticket(swap.id)
    with pytest.raises(KeyError, match="No work order with id 9999"):
        await store.ticket(9999)
    with pytest.raises(KeyError, match="No work order"):
        await store.create_ticket(9999, "b", new_msg_id(), clock.t)

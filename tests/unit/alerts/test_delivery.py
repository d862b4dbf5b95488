"""The webhook dispatcher (alerts.delivery) over an in-memory store and httpx.MockTransport,
and once against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import http.server
import json
import random
import threading
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field

import httpx
import pytest

from alerts.delivery import WebhookDispatcher, alert_notification, json_safe, webhook_body
from alerts.webhooks import RetrySchedule, UrlPolicy, new_secret, verify
from contracts.alerts import Alert, AlertCategory, AlertSeverity, AlertState, AlertTransition
from contracts.webhooks import DeliveryState, SubscriptionDisabled, WebhookDelivery

from ..serve.http.fake_webhooks import MemoryWebhooks

T0 = 1_790_000_000.0
HOOK_URL = "https://hooks.example.com/bms"
PUBLIC_IP = "93.184.216.34"


@dataclass
class Clock:
    t: float = T0

    def __call__(self) -> float:
        return self.t


@dataclass
class Receiver:
    """A MockTransport handler that verifies signatures and answers scripted statuses."""

    secret: str
    clock: Clock
    statuses: list[int] = field(default_factory=list)
    answer: bytes = b""
    delay_s: float = 0.0
    requests: list[httpx.Request] = field(default_factory=list)

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        body = await request.aread()
        verify(self.secret, dict(request.headers), body, now_s=self.clock())
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        status = self.statuses.pop(0) if self.statuses else 200
        return httpx.Response(status, content=self.answer)


async def public(host: str, port: int) -> Sequence[str]:
    return [PUBLIC_IP]


def dispatcher(
    store: MemoryWebhooks,
    handler: Callable[[httpx.Request], Awaitable[httpx.Response]],
    clock: Clock,
    **kw: object,
) -> WebhookDispatcher:
    return WebhookDispatcher(
        store, UrlPolicy(), now=clock, transport=httpx.MockTransport(handler), resolve=public,
        rng=random.Random(7), **kw,  # type: ignore[arg-type]
    )  # fmt: skip


LABELS = {"battery_id": "b-00042", "zone": "z1", "kind": "pack_overtemp"}


async def enqueue_one(d: WebhookDispatcher, event: str = "alert.firing") -> int:
    return await d.enqueue(
        event, {"n": 1, "x": float("nan")}, severity=AlertSeverity.CRITICAL, labels=LABELS
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store() -> MemoryWebhooks:
    return MemoryWebhooks()


# ---------------------------------------------------------------------- enqueue
async def test_enqueue_picks_the_subscriptions_that_want_the_event(
    store: MemoryWebhooks, clock: Clock
) -> None:
    """Only enabled subscriptions with the event type, a low enough min_severity and
    matching matchers get a delivery; the count says how many."""
    secret = new_secret()
    want = store.add(HOOK_URL, secret)
    store.add(HOOK_URL, secret, event_types=frozenset({"alert.resolved"}))
    store.add(HOOK_URL, secret, min_severity=AlertSeverity.CRITICAL, matchers={"zone": "z2"})
    zone = store.add(HOOK_URL, secret, min_severity=AlertSeverity.CRITICAL, matchers={"zone": "z1"})
    store.add(HOOK_URL, secret, enabled=False, disabled_reason="gone")
    d = dispatcher(store, Receiver(secret, clock), clock)
    assert await enqueue_one(d) == 2
    assert {r.subscription_id for r in store.rows.values()} == {want.id, zone.id}
    assert await d.enqueue("alert.firing", {}, severity=AlertSeverity.WARNING, labels=LABELS) == 1
    row = store.rows[1]
    assert row.state is DeliveryState.PENDING and row.next_attempt_at_s == T0 and row.attempts == 0
    assert row.payload == {"n": 1, "x": None}  # NaN is sent as null
    assert row.msg_id == store.rows[2].msg_id  # one event, one message id for every subscriber
    assert d.stats().enqueued == 3


async def test_enqueue_under_one_msg_id_is_idempotent(store: MemoryWebhooks, clock: Clock) -> None:
    """A msg_id a subscription already has makes no second delivery."""
    store.add(HOOK_URL, new_secret())
    d = dispatcher(store, Receiver("", clock), clock)
    msg = "msg_" + "a" * 32
    assert (
        await d.enqueue("vendor.ticket", {}, severity=AlertSeverity.INFO, labels={}, msg_id=msg)
        == 1
    )
    assert (
        await d.enqueue("vendor.ticket", {}, severity=AlertSeverity.INFO, labels={}, msg_id=msg)
        == 0
    )


async def test_enqueue_refuses_unknown_events_and_unserialisable_payloads(
    store: MemoryWebhooks, clock: Clock
) -> None:
    """An unknown event type or a payload JSON cannot carry is a ValueError."""
    d = dispatcher(store, Receiver("", clock), clock)
    with pytest.raises(ValueError, match="event type of"):
        await d.enqueue("alert.exploded", {}, severity=AlertSeverity.INFO, labels={})
    with pytest.raises(ValueError, match="JSON-serialisable"):
        await d.enqueue("alert.firing", {"x": object()}, severity=AlertSeverity.INFO, labels={})


# ---------------------------------------------------------------------- sending
async def test_a_2xx_succeeds_with_a_signed_compact_body_sent_to_the_checked_address(
    store: MemoryWebhooks, clock: Clock
) -> None:
    """The receiver gets a valid Standard Webhooks signature over compact JSON {type,
    timestamp, data}, at the checked address under the URL's host name; the delivery
    succeeds with one attempt recorded."""
    secret = new_secret()
    store.add(HOOK_URL, secret)
    receiver = Receiver(secret, clock)
    async with dispatcher(store, receiver, clock) as d:
        await enqueue_one(d)
        clock.t += 1
        assert await d.run_due() == 1
    (request,) = receiver.requests
    assert request.url.host == PUBLIC_IP and request.headers["host"] == "hooks.example.com"
    assert request.extensions["sni_hostname"] == "hooks.example.com"
    assert request.headers["webhook-timestamp"] == str(int(T0 + 1))
    body = request.content
    assert body == webhook_body(store.rows[1])
    assert json.loads(body) == {
        "type": "alert.firing",
        "timestamp": "2026-09-21T14:13:20.000Z",
        "data": {"n": 1, "x": None},
    }
    assert b" " not in body
    row = store.rows[1]
    assert (
        row.state is DeliveryState.SUCCEEDED and row.attempts == 1 and row.delivered_at_s == T0 + 1
    )
    assert row.last_status_code == 200 and row.next_attempt_at_s is None
    (attempt,) = store.attempt_log
    assert (
        attempt.attempt == 1
        and attempt.status_code == 200
        and attempt.error is None
        and attempt.latency_ms >= 0
    )
    assert store.claims == [(T0 + 1, [1])]
    assert d.stats().sent == 1 and d.stats().succeeded == 1


async def test_a_failure_is_retried_on_schedule_with_the_same_msg_id(
    store: MemoryWebhooks, clock: Clock
) -> None:
    """A 500 leaves the delivery pending 5 s (+-10 %) later; it is not due before then;
    the retry carries the same webhook-id, and a 200 then succeeds with 2 attempts."""
    secret = new_secret()
    store.add(HOOK_URL, secret)
    receiver = Receiver(secret, clock, statuses=[500, 200])
    async with dispatcher(store, receiver, clock) as d:
        await enqueue_one(d)
        assert await d.run_due() == 1
        row = store.rows[1]
        assert (
            row.state is DeliveryState.PENDING
            and row.last_status_code == 500
            and row.last_error == "HTTP 500"
        )
        assert row.next_attempt_at_s is not None and T0 + 4.5 <= row.next_attempt_at_s <= T0 + 5.5
        clock.t += 4.4
        assert await d.run_due() == 0
        clock.t += 1.2
        assert await d.run_due() == 1
    assert store.rows[1].state is DeliveryState.SUCCEEDED and store.rows[1].attempts == 2
    assert [a.status_code for a in store.attempt_log] == [500, 200]
    ids = {r.headers["webhook-id"] for r in receiver.requests}
    assert ids == {store.rows[1].msg_id}
    assert d.stats().retried == 1 and d.stats().succeeded == 1


async def test_it_gives_up_after_the_schedule(store: MemoryWebhooks, clock: Clock) -> None:
    """After the last attempt of the schedule fails, the delivery is failed, not retried."""
    secret = new_secret()
    store.add(HOOK_URL, secret)
    receiver = Receiver(secret, clock, statuses=[503] * 10)
    schedule = RetrySchedule(delays_s=(0.0, 5.0, 300.0))
    async with dispatcher(store, receiver, clock, schedule=schedule) as d:
        await enqueue_one(d)
        for _ in range(3):
            assert await d.run_due() == 1
            clock.t += 1000
        assert await d.run_due() == 0
    row = store.rows[1]
    assert row.state is DeliveryState.FAILED and row.attempts == 3 and row.next_attempt_at_s is None
    assert len(receiver.requests) == 3 and d.stats().failed == 1


async def test_410_gone_disables_the_subscription_and_cancels_its_deliveries(
    store: MemoryWebhooks, clock: Clock
) -> None:
    """A 410 disables the subscription with the reason recorded, cancels its other pending
    deliveries, and leaves other subscriptions alone."""
    secret = new_secret()
    gone = store.add(HOOK_URL, secret)
    other = store.add("https://other.example.com/x", secret)
    statuses = {"/bms": 410}

    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(statuses.get(request.url.path, 200))

    async with dispatcher(store, handler, clock, max_concurrency=1) as d:
        await enqueue_one(d)
        clock.t += 10
        await enqueue_one(d)  # a second, later event for both
        clock.t += 10
        assert await d.run_due(limit=2) == 2  # the first event's two deliveries
    sub = store.subs[gone.id]
    assert not sub.enabled and sub.disabled_reason is not None and "410 Gone" in sub.disabled_reason
    states = {(r.subscription_id, r.id): r.state for r in store.rows.values()}
    assert states == {
        (gone.id, 1): DeliveryState.CANCELLED,
        (other.id, 2): DeliveryState.SUCCEEDED,
        (gone.id, 3): DeliveryState.CANCELLED,
        (other.id, 4): DeliveryState.PENDING,
    }
    assert store.rows[1].last_status_code == 410
    assert d.stats().disabled == 1 and d.stats().cancelled == 1


async def test_timeouts_connection_errors_and_redirects_are_failed_attempts(
    store: MemoryWebhooks, clock: Clock
) -> None:
    """No answer within timeout_s, a refused connection and a 3xx are recorded with their
    reason and retried (redirects are never followed)."""
    secret = new_secret()
    slow = store.add("https://slow.example.com/", secret)
    refused = store.add("https://refused.example.com/", secret)
    moved = store.add("https://moved.example.com/", secret)

    async def handler(request: httpx.Request) -> httpx.Response:
        host = request.headers["host"]
        if host.startswith("slow"):
            await asyncio.sleep(5)
        if host.startswith("refused"):
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(301, headers={"location": "http://169.254.169.254/"})

    async with dispatcher(store, handler, clock, timeout_s=0.05) as d:
        await enqueue_one(d)
        assert await d.run_due() == 3
    by_sub = {r.subscription_id: r for r in store.rows.values()}
    assert by_sub[slow.id].last_error == "no answer within 0.05 s"
    assert by_sub[refused.id].last_error == "ConnectError: connection refused"
    assert by_sub[moved.id].last_error == "HTTP 301 (redirects are not followed)"
    assert all(r.state is DeliveryState.PENDING and r.attempts == 1 for r in by_sub.values())


async def test_the_url_is_checked_again_before_every_attempt(
    store: MemoryWebhooks, clock: Clock
) -> None:
    """A host that resolves to an internal address by the time of the attempt (DNS
    rebinding) is not contacted: the attempt fails as unsafe and is retried."""
    secret = new_secret()
    store.add(HOOK_URL, secret)
    receiver = Receiver(secret, clock)

    async def rebound(host: str, port: int) -> Sequence[str]:
        return ["169.254.169.254"]

    d = WebhookDispatcher(
        store, UrlPolicy(), now=clock, transport=httpx.MockTransport(receiver), resolve=rebound
    )
    async with d:
        await enqueue_one(d)
        assert await d.run_due() == 1
    assert receiver.requests == []
    row = store.rows[1]
    assert row.state is DeliveryState.PENDING and row.last_status_code is None
    assert (
        row.last_error is not None
        and row.last_error.startswith("unsafe URL:")
        and "link-local" in row.last_error
    )


async def test_deliveries_run_concurrently_up_to_the_bound(
    store: MemoryWebhooks, clock: Clock
) -> None:
    """Twenty slow receivers are served eight at a time: one slow receiver does not stall
    the others, and no more than max_concurrency are in flight."""
    secret = new_secret()
    for k in range(20):
        store.add(f"https://r{k}.example.com/", secret)
    live, peak = 0, 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal live, peak
        live += 1
        peak = max(peak, live)
        await asyncio.sleep(0.05)
        live -= 1
        return httpx.Response(204)

    async with dispatcher(store, handler, clock, max_concurrency=8) as d:
        await enqueue_one(d)
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await d.run_due() == 20
        took_s = loop.time() - started
    assert peak == 8
    assert took_s < 20 * 0.05  # not one after another
    assert all(r.state is DeliveryState.SUCCEEDED for r in store.rows.values())


async def test_replay_sends_again_with_the_same_msg_id(store: MemoryWebhooks, clock: Clock) -> None:
    """A replay makes a delivery pending and due now, keeps its msg_id and attempt count,
    attributes it, and the next round sends it with the same webhook-id."""
    secret = new_secret()
    store.add(HOOK_URL, secret)
    receiver = Receiver(secret, clock)
    async with dispatcher(store, receiver, clock) as d:
        await enqueue_one(d)
        await d.run_due()
        clock.t += 60
        replayed = await d.replay(1, "ops-1")
        assert replayed.state is DeliveryState.PENDING and replayed.next_attempt_at_s == clock.t
        assert (
            replayed.attempts == 1 and replayed.retry_base == 1 and replayed.replayed_by == "ops-1"
        )
        assert await d.run_due() == 1
    row = store.rows[1]
    assert row.state is DeliveryState.SUCCEEDED and row.attempts == 2
    assert [a.attempt for a in store.attempt_log] == [1, 2]
    assert len({r.headers["webhook-id"] for r in receiver.requests}) == 1
    with pytest.raises(ValueError, match="non-empty actor"):
        await d.replay(1, " ")


async def test_replay_refuses_a_disabled_subscription_and_unknown_deliveries(
    store: MemoryWebhooks, clock: Clock
) -> None:
    """Replaying to a disabled subscription raises SubscriptionDisabled naming it; an unknown
    delivery raises KeyError."""
    sub = store.add(HOOK_URL, new_secret())
    d = dispatcher(store, Receiver("", clock), clock)
    await enqueue_one(d)
    await store.disable_subscription(sub.id, "disabled by ops-1", T0)
    with pytest.raises(SubscriptionDisabled, match=f"subscription {sub.id} is disabled"):
        await d.replay(1, "ops-1")
    with pytest.raises(KeyError):
        await d.replay(99, "ops-1")


async def test_on_success_gets_the_answer_and_its_errors_do_not_fail_the_delivery(
    store: MemoryWebhooks, clock: Clock
) -> None:
    """The answer body of a 2xx goes to on_success (capped); an exception there is logged,
    the delivery stays succeeded."""
    secret = new_secret()
    store.add(HOOK_URL, secret)
    seen: list[tuple[WebhookDelivery, int, bytes]] = []

    async def on_success(delivery: WebhookDelivery, status: int, body: bytes) -> None:
        seen.append((delivery, status, body))
        raise RuntimeError("handler bug")

    receiver = Receiver(secret, clock, answer=b"x" * 100)
    async with dispatcher(
        store, receiver, clock, on_success=on_success, max_response_bytes=10
    ) as d:
        await enqueue_one(d)
        await d.run_due()
    ((delivery, status, body),) = seen
    assert delivery.state is DeliveryState.SUCCEEDED and status == 200 and body == b"x" * 10
    assert store.rows[1].state is DeliveryState.SUCCEEDED


async def test_sending_needs_an_open_dispatcher(store: MemoryWebhooks, clock: Clock) -> None:
    """run_due outside 'async with' says how to open it; opening twice is refused."""
    d = dispatcher(store, Receiver("", clock), clock)
    with pytest.raises(RuntimeError, match="not open"):
        await d.run_due()
    async with d:
        with pytest.raises(RuntimeError, match="twice"):
            await d.__aenter__()


async def test_run_forever_sends_until_cancelled(store: MemoryWebhooks, clock: Clock) -> None:
    """run_forever picks up deliveries queued while it runs, and stops when cancelled."""
    secret = new_secret()
    store.add(HOOK_URL, secret)
    receiver = Receiver(secret, clock)
    async with dispatcher(store, receiver, clock) as d:
        task = asyncio.create_task(d.run_forever(poll_s=0.01))
        await enqueue_one(d)
        for _ in range(200):
            if store.rows[1].state is DeliveryState.SUCCEEDED:
                break
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert store.rows[1].state is DeliveryState.SUCCEEDED


def test_dispatcher_checks_its_params(store: MemoryWebhooks) -> None:
    """A non-positive timeout or concurrency is refused."""
    with pytest.raises(ValueError, match="timeout_s"):
        WebhookDispatcher(store, timeout_s=0)
    with pytest.raises(ValueError, match="max_concurrency"):
        WebhookDispatcher(store, max_concurrency=0)


# ---------------------------------------------------------------------- alerts
def alert(state: AlertState = AlertState.FIRING, **kw: object) -> Alert:
    fields: dict[str, object] = {
        "key": "pack_overtemp:b-00042", "kind": "pack_overtemp", "category": AlertCategory.HEALTH,
        "severity": AlertSeverity.CRITICAL, "state": state, "summary": "pack at 80.0 °C (limit 60.0 °C)",
        "source": "twins", "started_at_s": T0, "last_active_at_s": T0, "id": 7, "battery_id": "b-00042",
        "zone": "z1", "evidence": {"temp_c": 80.0, "score": float("nan")}, "fired_at_s": T0,
    }  # fmt: skip
    fields.update(kw)
    return Alert(**fields)  # type: ignore[arg-type]


def test_alert_notification_maps_changes_to_events() -> None:
    """Firing, acknowledged and resolved become their events with the alert, the change
    and its labels; pending, never-fired resolutions and muted alerts tell nobody."""
    t = AlertTransition("pack_overtemp:b-00042", AlertState.PENDING, AlertState.FIRING, T0, "book")
    note = alert_notification(alert(), t)
    assert (
        note is not None
        and note.event_type == "alert.firing"
        and note.severity is AlertSeverity.CRITICAL
    )
    assert note.labels["battery_id"] == "b-00042" and note.labels["kind"] == "pack_overtemp"
    assert note.payload["alert"]["evidence"] == {"temp_c": 80.0, "score": None}
    assert note.payload["transition"] == {
        "from_state": "pending", "to_state": "firing", "at_s": T0, "actor": "book", "note": None,
    }  # fmt: skip
    ack = AlertTransition("k", AlertState.FIRING, AlertState.ACKNOWLEDGED, T0, "ops-1", "on it")
    assert (
        alert_notification(alert(AlertState.ACKNOWLEDGED), ack).event_type == "alert.acknowledged"
    )  # type: ignore[union-attr]
    resolved = AlertTransition("k", AlertState.FIRING, AlertState.RESOLVED, T0, "book")
    assert alert_notification(alert(AlertState.RESOLVED), resolved).event_type == "alert.resolved"  # type: ignore[union-attr]
    assert alert_notification(alert(AlertState.RESOLVED, fired_at_s=None), resolved) is None
    assert (
        alert_notification(
            alert(AlertState.PENDING), AlertTransition("k", None, AlertState.PENDING, T0, "book")
        )
        is None
    )
    assert alert_notification(alert(silenced_by=3), t) is None


async def test_notify_enqueues_the_alert_event(store: MemoryWebhooks, clock: Clock) -> None:
    """notify() queues an alert change for the subscriptions matching its labels."""
    store.add(HOOK_URL, new_secret(), matchers={"battery_id": "b-00042"})
    store.add(HOOK_URL, new_secret(), matchers={"battery_id": "b-00001"})
    d = dispatcher(store, Receiver("", clock), clock)
    t = AlertTransition("pack_overtemp:b-00042", AlertState.PENDING, AlertState.FIRING, T0, "book")
    assert await d.notify(alert(), t) == 1
    assert (
        await d.notify(
            alert(AlertState.PENDING), AlertTransition("k", None, AlertState.PENDING, T0, "b")
        )
        == 0
    )


def test_json_safe_replaces_non_finite_floats() -> None:
    """NaN and infinities become None at any depth; tuples become lists."""
    assert json_safe({"a": [1.0, float("inf")], "b": {"c": float("nan")}, "d": (1, "x")}) == {
        "a": [1.0, None], "b": {"c": None}, "d": [1, "x"],
    }  # fmt: skip


# ---------------------------------------------------------------------- a real server
@dataclass
class RealReceiver:
    secret: str
    statuses: list[int]
    seen: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    verified: list[bool] = field(default_factory=list)


@pytest.fixture
def real_receiver() -> Iterator[tuple[RealReceiver, int]]:
    """A threaded http.server on 127.0.0.1 that verifies signatures (wall clock)."""
    state = RealReceiver(new_secret(), [500, 200])

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            headers = {k.lower(): v for k, v in self.headers.items()}
            state.seen.append((headers, body))
            try:
                import time

                verify(state.secret, headers, body, now_s=time.time())
                state.verified.append(True)
            except Exception:
                state.verified.append(False)
            self.send_response(state.statuses.pop(0) if state.statuses else 200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


async def test_against_a_real_local_server(
    store: MemoryWebhooks, real_receiver: tuple[RealReceiver, int]
) -> None:
    """Over real sockets: a 500 then a 200, both correctly signed, same webhook-id."""
    import time

    state, port = real_receiver
    store.add(f"http://127.0.0.1:{port}/hook", state.secret)
    clock = Clock(time.time())
    policy = UrlPolicy(allow_cidrs=("127.0.0.0/8",), allow_http=True)
    async with WebhookDispatcher(store, policy, now=clock, rng=random.Random(1)) as d:
        await enqueue_one(d)
        assert await d.run_due() == 1
        clock.t += 6
        assert await d.run_due() == 1
    assert state.verified == [True, True]
    assert len({h["webhook-id"] for h, _ in state.seen}) == 1
    assert store.rows[1].state is DeliveryState.SUCCEEDED and store.rows[1].attempts == 2
    assert [a.status_code for a in store.attempt_log] == [500, 200]

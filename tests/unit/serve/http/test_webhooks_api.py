"""The webhook and vendor-ticket routes (serve.http.webhooks) over the in-memory fakes."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from fastapi.testclient import TestClient

from contracts.access import Role
from contracts.alerts import AlertSeverity
from contracts.webhooks import (
    DeliveryAttempt,
    DeliveryState,
    VendorTicket,
    VendorTicketStatus,
    WebhookDelivery,
)
from contracts.work_orders import WorkOrderState
from serve.http import ApiDeps, create_api

from .conftest import Fakes, as_role, bearer
from .fake_webhooks import MemoryWebhooks

PUBLIC_URL = "https://8.8.8.8/hooks/bms"
BODY = {
    "url": PUBLIC_URL,
    "description": "pager",
    "min_severity": "critical",
    "event_types": ["alert.firing", "alert.resolved"],
    "matchers": {"zone": "z1"},
}


def webhooks(fakes: Fakes) -> MemoryWebhooks:
    return fakes.stores.webhook_store()


def queued(fakes: Fakes, state: DeliveryState = DeliveryState.PENDING) -> int:
    """Arrange subscription 1 with one delivery in ``state``; its id."""
    store = webhooks(fakes)
    if 1 not in store.subs:
        store.add(PUBLIC_URL, "whsec_" + "A" * 43 + "=")
    d = store.rows[len(store.rows) + 1] = _delivery(len(store.rows) + 1, state)
    return d.id


def _delivery(delivery_id: int, state: DeliveryState) -> WebhookDelivery:
    return WebhookDelivery(
        id=delivery_id, subscription_id=1, msg_id="msg_" + f"{delivery_id:032x}", event_type="alert.firing",
        payload={"alert": {"key": "k"}}, state=state, attempts=0 if state is DeliveryState.PENDING else 1,
        next_attempt_at_s=100.0 if state is DeliveryState.PENDING else None, last_status_code=None,
        last_error=None, last_latency_ms=None, created_at_s=90.0, delivered_at_s=None,
    )  # fmt: skip


# ---------------------------------------------------------------------- subscriptions
def test_create_answers_the_secret_once(fakes: Fakes, client: TestClient) -> None:
    """201 with the subscription and its whsec_ secret, attributed to the token's subject;
    the list never shows a secret."""
    r = client.post("/api/v1/webhooks", json=BODY)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["secret"].startswith("whsec_") and body["created_by"] == "manager-1"
    assert body["event_types"] == ["alert.firing", "alert.resolved"] and body["enabled"] is True
    assert body["matchers"] == {"zone": "z1"} and body["min_severity"] == "critical"
    assert webhooks(fakes).secrets[body["id"]] == body["secret"]
    listed = client.get("/api/v1/webhooks").json()["webhooks"]
    assert [w["id"] for w in listed] == [body["id"]] and "secret" not in listed[0]


def test_create_defaults(client: TestClient) -> None:
    """Without description, severity or matchers: empty, warning, none."""
    r = client.post("/api/v1/webhooks", json={"url": PUBLIC_URL, "event_types": ["vendor.ticket"]})
    assert r.status_code == 201, r.text
    assert (
        r.json()["min_severity"] == "warning"
        and r.json()["matchers"] == {}
        and r.json()["description"] == ""
    )


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("https://127.0.0.1/x", "loopback"),
        ("https://169.254.169.254/latest/meta-data", "link-local"),
        ("https://[::ffff:10.0.0.1]/", "private"),
        ("http://8.8.8.8/x", "scheme https"),
        ("https://user:pw@8.8.8.8/x", "without credentials"),
    ],
)
def test_create_refuses_unsafe_urls(fakes: Fakes, client: TestClient, url: str, why: str) -> None:
    """An internal address, plain http or credentials: 422 naming the URL field and why;
    nothing is stored."""
    r = client.post("/api/v1/webhooks", json=BODY | {"url": url})
    assert r.status_code == 422
    (err,) = r.json()["detail"]
    assert err["loc"] == ["body", "url"] and why in err["msg"]
    assert webhooks(fakes).subs == {}


def test_the_url_policy_comes_from_the_deps(fakes: Fakes) -> None:
    """With webhook_allow_cidrs and webhook_allow_http, an internal http receiver is allowed."""
    deps = dataclasses.replace(
        fakes.deps(), webhook_allow_cidrs=("127.0.0.0/8",), webhook_allow_http=True
    )
    token = fakes.stores.tokens_.issue(Role.OPS, "ops-1")
    with TestClient(create_api(deps), headers=bearer(token)) as c:
        r = c.post("/api/v1/webhooks", json=BODY | {"url": "http://127.0.0.1:9000/hook"})
    assert r.status_code == 201, r.text


def test_api_deps_check_the_cidrs(fakes: Fakes) -> None:
    """A CIDR that is not a network is refused when the deps are made."""
    with pytest.raises(ValueError, match=r"webhook_allow_cidrs.*'nope'"):
        dataclasses.replace(fakes.deps(), webhook_allow_cidrs=("nope",))
    assert isinstance(fakes.deps(), ApiDeps)


@pytest.mark.parametrize(
    "change",
    [
        {"event_types": []},
        {"event_types": ["alert.exploded"]},
        {"min_severity": "urgent"},
        {"matchers": {"Bad-Name": "x"}},
        {"matchers": {"zone": ""}},
        {"url": ""},
        {"secret": "whsec_mine"},
        {"description": "line\nbreak"},
    ],
)
def test_create_refuses_bad_bodies(client: TestClient, change: dict[str, Any]) -> None:
    """Unknown or no event types, a bad severity, bad matchers, an empty URL, extra fields
    (a client cannot choose the secret) and control characters: 422."""
    assert client.post("/api/v1/webhooks", json=BODY | change).status_code == 422


def test_create_refuses_a_body_that_is_not_json(client: TestClient) -> None:
    """A body that is not UTF-8: 400; malformed JSON: 422 (as on every body route)."""
    r = client.post(
        "/api/v1/webhooks", content=b"\xff\xfe{", headers={"content-type": "application/json"}
    )
    assert r.status_code == 400, r.text
    r = client.post(
        "/api/v1/webhooks", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert r.status_code == 422, r.text


def test_creating_is_rate_limited(client: TestClient) -> None:
    """The 11th subscription in a burst gets 429 with Retry-After."""
    codes = [client.post("/api/v1/webhooks", json=BODY).status_code for _ in range(11)]
    assert codes[:10] == [201] * 10 and codes[10] == 429


def test_delete_disables_and_cancels_pending(fakes: Fakes, ops_client: TestClient) -> None:
    """DELETE disables (attributed), cancels pending deliveries, is idempotent; 404 unknown."""
    pending = queued(fakes)
    r = ops_client.delete("/api/v1/webhooks/1")
    assert r.status_code == 200 and r.json()["enabled"] is False
    assert r.json()["disabled_reason"] == "disabled by ops-1 through the API"
    assert webhooks(fakes).rows[pending].state is DeliveryState.CANCELLED
    assert ops_client.delete("/api/v1/webhooks/1").status_code == 200
    assert ops_client.delete("/api/v1/webhooks/99").status_code == 404


# ---------------------------------------------------------------------- deliveries
def test_deliveries_newest_first_with_state_filter(fakes: Fakes, client: TestClient) -> None:
    """A subscription's deliveries, newest first, filtered by state and limited; 404 for an
    unknown subscription, 422 for an unknown state."""
    first = queued(fakes, DeliveryState.SUCCEEDED)
    second = queued(fakes, DeliveryState.PENDING)
    r = client.get("/api/v1/webhooks/1/deliveries")
    assert r.status_code == 200
    assert [d["id"] for d in r.json()["deliveries"]] == [second, first]
    only = client.get("/api/v1/webhooks/1/deliveries", params={"state": "succeeded"}).json()[
        "deliveries"
    ]
    assert [d["id"] for d in only] == [first]
    assert (
        len(client.get("/api/v1/webhooks/1/deliveries", params={"limit": 1}).json()["deliveries"])
        == 1
    )
    assert client.get("/api/v1/webhooks/7/deliveries").status_code == 404
    assert client.get("/api/v1/webhooks/1/deliveries", params={"state": "lost"}).status_code == 422


def test_one_delivery_with_its_attempts(fakes: Fakes, client: TestClient) -> None:
    """A delivery and its attempts, oldest first; 404 for an unknown one."""
    did = queued(fakes)
    store = webhooks(fakes)
    store.attempt_log += [
        DeliveryAttempt(did, 2, 110.0, 200, None, 12.5),
        DeliveryAttempt(did, 1, 100.0, None, "no answer within 10 s", 10000.0),
    ]
    r = client.get(f"/api/v1/webhook-deliveries/{did}")
    assert r.status_code == 200
    body = r.json()
    assert body["msg_id"].startswith("msg_") and body["payload"] == {"alert": {"key": "k"}}
    assert [(a["attempt"], a["status_code"], a["error"]) for a in body["attempts_made"]] == [
        (1, None, "no answer within 10 s"), (2, 200, None),
    ]  # fmt: skip
    assert client.get("/api/v1/webhook-deliveries/404").status_code == 404


def test_replay_is_accepted_and_attributed(fakes: Fakes, ops_client: TestClient) -> None:
    """202 with the delivery pending again under the same msg id, replayed by the caller;
    404 unknown; 409 when the subscription is disabled."""
    did = queued(fakes, DeliveryState.FAILED)
    msg_id = webhooks(fakes).rows[did].msg_id
    r = ops_client.post(f"/api/v1/webhook-deliveries/{did}/replay")
    assert r.status_code == 202, r.text
    body = r.json()
    assert (
        body["state"] == "pending" and body["msg_id"] == msg_id and body["replayed_by"] == "ops-1"
    )
    assert body["attempts"] == 1
    assert ops_client.post("/api/v1/webhook-deliveries/999/replay").status_code == 404
    ops_client.delete("/api/v1/webhooks/1")
    r = ops_client.post(f"/api/v1/webhook-deliveries/{did}/replay")
    assert r.status_code == 409 and "disabled" in r.json()["detail"]


# ---------------------------------------------------------------------- vendor tickets
def open_ticket(fakes: Fakes, order_id: int = 1) -> None:
    webhooks(fakes).tickets[order_id] = VendorTicket(
        work_order_id=order_id, battery_id="bat-a", msg_id="msg_" + "b" * 32, status=VendorTicketStatus.SENT,
        rma_number=None, reply_note=None, replied_at_s=None, created_at_s=50.0,
    )  # fmt: skip


def test_vendor_reply_is_recorded_and_noted(fakes: Fakes, client: TestClient) -> None:
    """A reply updates the ticket and adds a note attributed to the caller."""
    open_ticket(fakes)
    r = client.post(
        "/api/v1/work-orders/1/vendor-reply",
        json={"status": "rma", "rma_number": "RMA-9", "note": "ok"},
    )
    assert r.status_code == 200, r.text
    assert (
        r.json()["status"] == "rma"
        and r.json()["rma_number"] == "RMA-9"
        and r.json()["replied_at_s"] is not None
    )
    assert webhooks(fakes).notes == [
        {"work_order_id": 1, "actor": "manager-1", "status": "rma", "note": "ok"}
    ]
    got = client.get("/api/v1/work-orders/1/vendor-ticket")
    assert got.status_code == 200 and got.json()["status"] == "rma"


def test_vendor_reply_refusals(fakes: Fakes, client: TestClient) -> None:
    """404 for an unknown order, 409 for an order without a ticket, 422 for a bad reply."""
    assert (
        client.post("/api/v1/work-orders/77/vendor-reply", json={"status": "accepted"}).status_code
        == 404
    )
    r = client.post("/api/v1/work-orders/2/vendor-reply", json={"status": "accepted"})
    assert r.status_code == 409 and "no vendor ticket" in r.json()["detail"]
    open_ticket(fakes, 2)
    assert (
        client.post("/api/v1/work-orders/2/vendor-reply", json={"status": "rma"}).status_code == 422
    )
    assert (
        client.post(
            "/api/v1/work-orders/2/vendor-reply", json={"status": "accepted", "by": "x"}
        ).status_code
        == 422
    )
    assert (
        client.post("/api/v1/work-orders/2/vendor-reply", json={"status": "sent"}).status_code
        == 422
    )


def test_vendor_ticket_404s(fakes: Fakes, client: TestClient) -> None:
    """No ticket, or no order: 404 saying which."""
    r = client.get("/api/v1/work-orders/1/vendor-ticket")
    assert r.status_code == 404 and "No vendor ticket for work order 1" in r.json()["detail"]
    r = client.get("/api/v1/work-orders/55/vendor-ticket")
    assert r.status_code == 404 and "No work order with id 55" in r.json()["detail"]
    assert fakes.planner.orders[1].state is WorkOrderState.ASSIGNED


# ---------------------------------------------------------------------- roles
ROUTES = [
    ("POST", "/api/v1/webhooks", BODY),
    ("GET", "/api/v1/webhooks", None),
    ("DELETE", "/api/v1/webhooks/1", None),
    ("GET", "/api/v1/webhooks/1/deliveries", None),
    ("GET", "/api/v1/webhook-deliveries/1", None),
    ("POST", "/api/v1/webhook-deliveries/1/replay", None),
    ("POST", "/api/v1/work-orders/1/vendor-reply", {"status": "accepted"}),
    ("GET", "/api/v1/work-orders/1/vendor-ticket", None),
]


@pytest.mark.parametrize("role", [Role.TECHNICIAN, Role.CUSTOMER])
@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
def test_other_roles_are_refused(
    fakes: Fakes, role: Role, method: str, path: str, body: Any
) -> None:
    """Technicians and customers get 403 on every webhook route; nothing changes."""
    queued(fakes)
    open_ticket(fakes)
    with as_role(fakes, role) as c:
        r = c.request(method, path, json=body)
    assert r.status_code == 403, (method, path, r.text)
    assert (
        webhooks(fakes).subs[1].enabled
        and webhooks(fakes).tickets[1].status is VendorTicketStatus.SENT
    )
    assert len(webhooks(fakes).subs) == 1


@pytest.mark.parametrize("role", [Role.FLEET_MANAGER, Role.OPS])
@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
def test_fleet_managers_and_ops_may(
    fakes: Fakes, role: Role, method: str, path: str, body: Any
) -> None:
    """Fleet managers and ops reach every webhook route (2xx)."""
    queued(fakes)
    open_ticket(fakes)
    with as_role(fakes, role) as c:
        r = c.request(method, path, json=body)
    assert 200 <= r.status_code < 300, (method, path, r.text)


def test_routes_need_a_token(fakes: Fakes) -> None:
    """No token: 401 with a challenge."""
    with TestClient(create_api(fakes.deps())) as c:
        r = c.get("/api/v1/webhooks")
    assert r.status_code == 401 and "WWW-Authenticate" in r.headers
    assert AlertSeverity.CRITICAL.value == BODY["min_severity"]

"""Tests for :mod:`serve.http.work_orders`: listing, one order with history, transitions.

Order 1 is assigned to tech-01, order 2 is en route; both swap bat-a in veh-a. The fake
planner applies the real state machine and swap rules.
"""

from __future__ import annotations

from fastapi.testclient import TestClient

from .conftest import Fakes


def test_list_filters_by_state(client: TestClient) -> None:
    """The list answers every order, or only those in ``state``; an unknown state is a 422."""
    assert [o["id"] for o in client.get("/api/v1/work-orders").json()["orders"]] == [1, 2]
    body = client.get("/api/v1/work-orders", params={"state": "en_route"}).json()
    assert [(o["id"], o["state"]) for o in body["orders"]] == [(2, "en_route")]
    assert client.get("/api/v1/work-orders", params={"state": "flying"}).status_code == 422


def test_one_order_comes_with_its_history(client: TestClient) -> None:
    """GET /work-orders/{id} answers the order's fields and its attributed history."""
    body = client.get("/api/v1/work-orders/1").json()
    assert body["id"] == 1 and body["kind"] == "battery_swap" and body["technician_id"] == "tech-01"
    assert [(h["from_state"], h["to_state"], h["actor"]) for h in body["history"]] == [(None, "planned", "planner")]


def test_an_unknown_order_is_a_404(client: TestClient) -> None:
    """An id with no order is a 404 for reads and for changes alike."""
    assert client.get("/api/v1/work-orders/999999").status_code == 404
    r = client.post("/api/v1/work-orders/999999/transition", json={"state": "en_route"})
    assert r.status_code == 404 and r.json()["detail"] == "No work order with id 999999."


def test_a_transition_answers_the_changed_order(fakes: Fakes, client: TestClient) -> None:
    """assigned -> en_route is allowed: the answer and the planner both show the new state."""
    r = client.post("/api/v1/work-orders/1/transition", json={"state": "en_route"})
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "en_route" and fakes.planner.orders[1].state == "en_route"
    assert fakes.planner.actors == ["manager-1"]  # the token's subject, not a body field


def test_a_done_swap_carries_its_swap_record(fakes: Fakes, client: TestClient) -> None:
    """en_route -> done with the swap record naming the order's vehicle and battery is allowed."""
    swap = {"vehicle_id": "veh-a", "battery_out_id": "bat-a", "battery_in_id": "bat-spare"}
    r = client.post("/api/v1/work-orders/2/transition", json={"state": "done", "swap": swap})
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "done" and fakes.planner.actors == ["manager-1"]


def test_a_refused_transition_is_a_409_saying_why(client: TestClient) -> None:
    """A move the state machine forbids, a done swap without its record, and a swap that
    names one battery both ways are 409s with the rule's message."""
    r = client.post("/api/v1/work-orders/1/transition", json={"state": "done"})
    assert r.status_code == 409 and "from assigned to done" in r.json()["detail"]
    r = client.post("/api/v1/work-orders/2/transition", json={"state": "done"})
    assert r.status_code == 409 and "swap record" in r.json()["detail"]
    same = {"vehicle_id": "veh-a", "battery_out_id": "bat-a", "battery_in_id": "bat-a"}
    r = client.post("/api/v1/work-orders/2/transition", json={"state": "done", "swap": same})
    assert r.status_code == 409 and "different batteries" in r.json()["detail"]


def test_bad_bodies_are_422(fakes: Fakes, client: TestClient) -> None:
    """An unknown state, an unknown body field (``actor`` too: changes are attributed to
    the token, never to what the body claims) or a non-positive id is a 422."""
    assert client.post("/api/v1/work-orders/1/transition", json={"state": "flying"}).status_code == 422
    r = client.post("/api/v1/work-orders/1/transition", json={"state": "en_route", "why": "?"})
    assert r.status_code == 422
    r = client.post("/api/v1/work-orders/1/transition", json={"state": "en_route", "actor": "someone"})
    assert r.status_code == 422 and fakes.planner.actors == []
    assert client.get("/api/v1/work-orders/0").status_code == 422


def test_a_transition_without_a_planner_is_a_503(fakes: Fakes, client: TestClient) -> None:
    """Changes go through the planner: without one the transition is a 503, not a 500."""
    fakes.planner.running = False
    r = client.post("/api/v1/work-orders/1/transition", json={"state": "en_route"})
    assert r.status_code == 503

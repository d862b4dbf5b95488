"""Tests for :mod:`serve.http.planner`: queue, plans, roster and technician routes."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from planners.views import QueueEntry

from .conftest import Fakes
from .fakes import queued_job


def test_queue_lists_jobs_with_progress_and_the_total(fakes: Fakes, client: TestClient) -> None:
    """The queue answers at most ``limit`` jobs in the planner's order, each flagged when
    under way, and the total count of open jobs."""
    fakes.planner.entries = [
        QueueEntry(queued_job("bat-a", 40.0, work_order_id=1), in_progress=True),
        QueueEntry(queued_job("bat-b", 10.5), in_progress=False),
    ]
    body = client.get("/api/v1/planner/queue", params={"limit": 1}).json()
    assert body["total"] == 2 and len(body["jobs"]) == 1
    job = body["jobs"][0]
    assert job["battery_id"] == "bat-a" and job["in_progress"] is True and job["work_order_id"] == 1
    assert job["kind"] == "battery_swap" and job["severity"] == "normal" and job["deadline_s"] is None


def test_no_plan_yet_is_a_404_that_says_how_to_get_one(client: TestClient) -> None:
    """Before the first round GET /planner/plan is a 404 pointing at POST."""
    r = client.get("/api/v1/planner/plan")
    assert r.status_code == 404 and "POST" in r.json()["detail"]


def test_post_plan_pulls_then_plans_and_get_returns_it(fakes: Fakes, client: TestClient) -> None:
    """POST /planner/plan pulls candidates first, plans (reason "manual") and answers the
    plan; GET then answers the same plan."""
    posted = client.post("/api/v1/planner/plan").json()
    assert fakes.planner.pulls == 1 and posted["reason"] == "manual"
    stop = posted["routes"][0]["stops"][0]
    assert stop["battery_id"] == "bat-a" and stop["work_order_id"] == 1
    assert posted["dropped"] == ["bat-z"]
    assert client.get("/api/v1/planner/plan").json() == posted


def test_roster_lists_technicians_and_depots(client: TestClient) -> None:
    """The roster answers each technician with sorted skills, and each depot."""
    body = client.get("/api/v1/planner/roster").json()
    assert body["technicians"][0]["id"] == "tech-01"
    assert body["technicians"][0]["skills"] == ["inspect", "swap"]
    assert body["depots"] == [{"id": "depot-nw", "lat": 52.54, "lon": 13.38, "charged_stock": 120}]


def test_a_technicians_route_or_a_note_when_unplanned(client: TestClient) -> None:
    """A technician outside the latest plan gets empty stops and a note; inside it, the route."""
    r = client.get("/api/v1/technicians/tech-01/route").json()
    assert r == {"technician_id": "tech-01", "stops": [], "note": "not in the latest plan"}
    client.post("/api/v1/planner/plan")
    route = client.get("/api/v1/technicians/tech-01/route").json()
    assert route["depot_id"] == "depot-nw" and [s["battery_id"] for s in route["stops"]] == ["bat-a"]


def test_an_unknown_technician_is_a_404_with_the_plain_message(client: TestClient) -> None:
    """The planner's KeyError becomes a 404 whose detail is its message, without quotes."""
    r = client.get("/api/v1/technicians/nobody/route")
    assert r.status_code == 404
    assert r.json()["detail"] == "No technician 'nobody'; have ['tech-01']."


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/v1/planner/queue"),
        ("GET", "/api/v1/planner/plan"),
        ("POST", "/api/v1/planner/plan"),
        ("GET", "/api/v1/planner/roster"),
        ("GET", "/api/v1/technicians/tech-01/route"),
    ],
)
def test_every_planner_route_is_503_without_a_planner(
    fakes: Fakes, client: TestClient, method: str, path: str
) -> None:
    """With the planner not running each route answers 503 and the same message."""
    fakes.planner.running = False
    r = client.request(method, path)
    assert r.status_code == 503 and "planner is not running" in r.json()["detail"]

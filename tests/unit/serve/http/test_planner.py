"""Tests for :mod:`serve.http.planner`: queue, plans, re-plan jobs, roster and technician routes.

A re-plan is a job: POST answers 202 and the job, which the tests poll until it finished.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient

from planners.planner import PlanRecord
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


def wait_for_job(client: TestClient, status_url: str, timeout_s: float = 5.0) -> dict[str, Any]:
    """Poll a re-plan job until it has finished; its last answer."""
    deadline = time.monotonic() + timeout_s
    while True:
        r = client.get(status_url)
        assert r.status_code == 200, r.text
        job: dict[str, Any] = r.json()
        if job["state"] in ("succeeded", "failed"):
            return job
        assert time.monotonic() < deadline, f"job still {job['state']} after {timeout_s} s"
        time.sleep(0.01)


def test_post_plan_answers_202_with_a_job_to_poll(fakes: Fakes, client: TestClient) -> None:
    """POST /planner/plan pulls candidates first and answers 202 with a job (reason
    "manual", requested by the token's subject) and a Location to poll; the job succeeds
    with the plan's id, and GET /planner/plan then answers that plan."""
    r = client.post("/api/v1/planner/plan")
    assert r.status_code == 202, r.text
    job = r.json()
    assert fakes.planner.pulls == 1
    assert re.fullmatch(r"plan-[0-9a-f]{8}-[0-9]{1,9}", job["job_id"])
    assert job["status_url"] == f"/api/v1/planner/jobs/{job['job_id']}"
    assert r.headers["location"] == job["status_url"]
    assert job["state"] in ("queued", "running") and job["plan_id"] is None and job["error"] is None
    assert job["reason"] == "manual" and job["requested_by"] == "manager-1"
    done = wait_for_job(client, job["status_url"])
    assert done["job_id"] == job["job_id"] and done["state"] == "succeeded"
    assert done["plan_id"] == 1 and done["error"] is None
    assert done["started_at_s"] is not None and done["finished_at_s"] >= done["started_at_s"]
    plan = client.get("/api/v1/planner/plan").json()
    assert plan["plan_id"] == done["plan_id"] and plan["reason"] == "manual (manager-1)"
    stop = plan["routes"][0]["stops"][0]
    assert stop["battery_id"] == "bat-a" and stop["work_order_id"] == 1
    assert plan["dropped"] == ["bat-z"]


def test_a_second_post_while_a_round_runs_joins_it(fakes: Fakes, client: TestClient) -> None:
    """While a re-plan job runs, another POST answers the same job and starts no solve."""
    gate = threading.Event()
    plan = fakes.planner.plan

    async def slow_plan(reason: str) -> PlanRecord:
        while not gate.is_set():
            await asyncio.sleep(0.005)
        return await plan(reason)

    fakes.planner.plan = slow_plan  # type: ignore[method-assign]
    first = client.post("/api/v1/planner/plan").json()
    second = client.post("/api/v1/planner/plan")
    assert second.status_code == 202 and second.json()["job_id"] == first["job_id"]
    gate.set()
    assert wait_for_job(client, first["status_url"])["state"] == "succeeded"
    assert len(fakes.planner.plans) == 1


def test_a_failed_round_is_a_failed_job_with_its_error(fakes: Fakes, client: TestClient) -> None:
    """A planning round that raises leaves the job failed, saying why (no 500 anywhere)."""

    async def broken_plan(reason: str) -> PlanRecord:
        raise RuntimeError("solver crashed")

    fakes.planner.plan = broken_plan  # type: ignore[method-assign]
    job = client.post("/api/v1/planner/plan").json()
    done = wait_for_job(client, job["status_url"])
    assert done["state"] == "failed" and done["plan_id"] is None
    assert done["error"] == "RuntimeError: solver crashed"


@pytest.mark.parametrize(
    ("job_id", "status"), [("plan-0123abcd-7", 404), ("plan-nothex!-1", 422), ("42", 422)]
)
def test_an_unknown_or_malformed_job_id(client: TestClient, job_id: str, status: int) -> None:
    """A well-formed id of no job is a 404; any other id is a 422."""
    r = client.get(f"/api/v1/planner/jobs/{job_id}")
    assert r.status_code == status, r.text
    if status == 404:
        assert job_id in r.json()["detail"]


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
    job = client.post("/api/v1/planner/plan").json()
    assert wait_for_job(client, job["status_url"])["state"] == "succeeded"
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
        ("GET", "/api/v1/planner/jobs/plan-0123abcd-1"),
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

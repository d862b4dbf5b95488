"""The planner actor fed by real twin shards: candidates, plan, work orders, swaps into twins."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from bms.settings import Settings
from contracts.access import Role

from .conftest import ServiceHandles, api_client, issue_token
from .test_system import _ids, _message, _publish, _sample, _wait

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def api(fleet_system: Any, system_settings: Settings, api_tokens: dict[Role, str]) -> httpx.Client:
    """A fleet manager's client."""
    with api_client(system_settings, api_tokens[Role.FLEET_MANAGER], 120) as c:
        _wait(lambda: c.get("/healthz").status_code == 200, 120, "the HTTP app")
        _wait(lambda: c.get("/api/v1/planner/roster").status_code == 200, 120, "the planner")
        yield c


def _low_battery(api: httpx.Client, services: ServiceHandles) -> tuple[str, str]:
    """A riding vehicle whose battery is nearly empty, scored by the twins."""
    vehicle, battery = _ids(services, "p")
    t0 = time.time() - 60
    samples = [_sample(t0 + k, soc=8.0 - 0.01 * k, lat=52.5215, lon=13.4025) for k in range(20)]
    _publish(services, [(f"fleet/{vehicle}/telemetry", _message(vehicle, battery, 0, samples))])

    def scored() -> bool:
        r = api.get(f"/api/v1/batteries/{battery}")
        return r.status_code == 200 and r.json()["priority"] is not None

    _wait(scored, 90, "the low battery to be scored")
    return vehicle, battery


def _replan(api: httpx.Client) -> dict[str, Any]:
    """Ask for a re-plan (202 and a job), poll the job, then read the plan it made."""

    def asked() -> httpx.Response | None:
        # Re-plans are rate limited per token (a small burst, then one every few seconds).
        r = api.post("/api/v1/planner/plan")
        return None if r.status_code == 429 else r

    r = _wait(asked, 60, "a re-plan the rate limit lets through")
    assert r.status_code == 202, r.text
    job = r.json()
    assert r.headers["location"] == job["status_url"]

    def finished() -> bool:
        nonlocal job
        job = api.get(job["status_url"]).json()
        return bool(job["state"] in ("succeeded", "failed"))

    _wait(finished, 120, "the planning job")
    assert job["state"] == "succeeded" and job["requested_by"] == "it-manager", job
    plan: dict[str, Any] = api.get("/api/v1/planner/plan").json()
    assert plan["plan_id"] == job["plan_id"]
    return plan


def test_planner_routes_a_low_battery_and_a_done_swap_moves_the_batteries(
    api: httpx.Client, services: ServiceHandles, system_settings: Settings
) -> None:
    """Pull from the shards, plan, assign a work order with an ETA; the technician's reports
    (with the technician's own token) move it through the state machine and the swap updates
    both twins' vehicle link; another technician may not touch it."""
    vehicle, battery = _low_battery(api, services)
    assert api.get(f"/api/v1/batteries/{battery}").json()["priority"] >= 30

    plan = _replan(api)
    stops = {s["battery_id"]: (r["technician_id"], s) for r in plan["routes"] for s in r["stops"]}
    assert battery in stops, plan
    tech, stop = stops[battery]
    assert stop["kind"] == "battery_swap" and stop["eta_s"] >= plan["created_at_s"] - 1
    order_id = stop["work_order_id"]
    route = api.get(f"/api/v1/technicians/{tech}/route").json()
    assert battery in [s["battery_id"] for s in route["stops"]]
    queue = api.get("/api/v1/planner/queue").json()["jobs"]
    assert any(j["battery_id"] == battery and j["work_order_id"] == order_id for j in queue)

    order = api.get(f"/api/v1/work-orders/{order_id}").json()
    assert order["state"] == "assigned" and order["technician_id"] == tech

    other = next(t for t in ("it-tech-1", "it-tech-2") if t != tech)
    with (
        api_client(system_settings, issue_token(services, Role.TECHNICIAN, tech)) as mine,
        api_client(system_settings, issue_token(services, Role.TECHNICIAN, other)) as theirs,
    ):
        assert theirs.get(f"/api/v1/work-orders/{order_id}").status_code == 403
        assert theirs.get(f"/api/v1/technicians/{tech}/route").status_code == 403
        r = theirs.post(f"/api/v1/work-orders/{order_id}/transition", json={"state": "en_route"})
        assert r.status_code == 403
        assert order_id not in [o["id"] for o in theirs.get("/api/v1/work-orders").json()["orders"]]
        assert order_id in [o["id"] for o in mine.get("/api/v1/work-orders").json()["orders"]]

        r = mine.post(f"/api/v1/work-orders/{order_id}/transition", json={"state": "en_route"})
        assert r.status_code == 200 and r.json()["state"] == "en_route"
        # done without the swap record is refused: the record is the fleet's truth.
        r = mine.post(f"/api/v1/work-orders/{order_id}/transition", json={"state": "done"})
        assert r.status_code == 409 and "swap record" in r.text
        spare = f"{battery}-spare"
        r = mine.post(
            f"/api/v1/work-orders/{order_id}/transition",
            json={"state": "done",
                  "swap": {"vehicle_id": vehicle, "battery_out_id": battery, "battery_in_id": spare}},
        )  # fmt: skip
        assert r.status_code == 200, r.text

    assert api.get(f"/api/v1/batteries/{battery}").json()["vehicle_id"] is None
    assert api.get(f"/api/v1/batteries/{spare}").json()["vehicle_id"] == vehicle
    history = api.get(f"/api/v1/work-orders/{order_id}").json()["history"]
    assert [h["to_state"] for h in history] == ["planned", "assigned", "en_route", "done"]
    # Attributed to the token's subject: the planner assigned it, the technician did the rest.
    assert [h["actor"] for h in history[2:]] == [tech, tech]
    assert history[-1]["swap_battery_in"] == spare
    assert battery not in [j["battery_id"] for j in api.get("/api/v1/planner/queue").json()["jobs"]]


def test_work_order_errors_are_clear(api: httpx.Client) -> None:
    """Unknown orders are 404; bodies with unknown fields or states are 422."""
    assert api.get("/api/v1/work-orders/999999").status_code == 404
    r = api.post("/api/v1/work-orders/999999/transition", json={"state": "en_route"})
    assert r.status_code == 404
    r = api.post("/api/v1/work-orders/1/transition", json={"state": "flying"})
    assert r.status_code == 422
    r = api.post("/api/v1/work-orders/1/transition", json={"state": "en_route", "actor": "someone else"})
    assert r.status_code == 422  # the actor is the token's subject, never the body's
    assert api.get("/api/v1/technicians/nobody/route").status_code == 404


def test_a_killed_planner_resumes_from_postgres(api: httpx.Client, services: ServiceHandles) -> None:
    """Issue 12, fault 7: the planner process dies and Ray restarts it. The new one answers
    with the plan numbering carried on (the saved plan is back in force), keeps the battery's
    job on its work order, and a re-plan makes no second order for the battery."""
    import os

    import ray

    from runtime.names import PLANNER_NAME

    _, battery = _low_battery(api, services)
    plan = _replan(api)
    stops = {s["battery_id"]: s for r in plan["routes"] for s in r["stops"]}
    assert battery in stops, plan
    order_id = stops[battery]["work_order_id"]

    planner = ray.get_actor(PLANNER_NAME, namespace=services.namespace)

    def pid() -> int:
        got: Any = ray.get(planner.__ray_call__.remote(lambda self: os.getpid()), timeout=10)
        return int(got)

    before = pid()
    ray.kill(planner, no_restart=False)

    def restarted() -> bool:
        # ray.kill returns before the actor is gone: wait for the *new* process.
        try:
            return pid() != before
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            return False

    _wait(restarted, 120, "the restarted planner")
    # The saved plan (or a newer one, the restarted schedule's first round) is in force:
    # never no plan, and never a numbering started afresh.
    r = api.get("/api/v1/planner/plan")
    assert r.status_code == 200 and r.json()["plan_id"] >= plan["plan_id"], r.text
    queue = api.get("/api/v1/planner/queue").json()["jobs"]
    assert any(j["battery_id"] == battery and j["work_order_id"] == order_id for j in queue), queue

    again = _replan(api)
    assert again["plan_id"] > plan["plan_id"]
    stops = {s["battery_id"]: s for r in again["routes"] for s in r["stops"]}
    if battery in stops:
        assert stops[battery]["work_order_id"] == order_id
    orders = api.get("/api/v1/work-orders", params={"battery_id": battery}).json()["orders"]
    assert [o["id"] for o in orders] == [order_id]

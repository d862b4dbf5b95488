"""Who may call what, on the running system: real tokens in PostgreSQL, the real Serve app.

The unit tests (tests/unit/serve/http/test_auth.py) walk the whole role x route matrix over
fakes; these check that the deployed app enforces the same table end to end, that a token
revoked over the API is refused on the next request, and what a customer sees.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, cast

import httpx
import pytest

from bms.settings import Settings
from contracts.access import Role
from serve.http import create_api
from serve.http.auth import route_roles

from .conftest import ServiceHandles, api_client, issue_token
from .test_system import _message, _publish, _sample, _wait

pytestmark = pytest.mark.integration

# A path for every parameterised route; values that exist or not, the check is on auth.
_PATHS = {
    "{battery_id}": "nobody", "{technician_id}": "it-tech-1", "{order_id}": "999999",
    "{name}": "health", "{job_id}": "plan-00000000-1", "{token_id}": "999999",
}  # fmt: skip
_BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/api/v1/work-orders/{order_id}/transition"): {"state": "en_route"},
    ("POST", "/api/v1/models/{name}/promote"): {"version": 999},
    ("POST", "/api/v1/models/{name}/ab"): {"candidate_version": 999, "fraction": 0.5},
    ("POST", "/api/v1/tokens"): {"role": "customer", "subject": "auth-matrix", "ttl_s": 60},
}
_QUERIES: dict[str, dict[str, Any]] = {"/api/v1/availability": {"lat": 52.5, "lon": 13.4}}


_STREAMS = {"/api/v1/alerts/stream"}


def _table() -> dict[tuple[str, str], tuple[str, ...]]:
    return route_roles(create_api(cast(Any, None)))


def _call(client: httpx.Client, method: str, path: str) -> httpx.Response:
    url = path
    for k, v in _PATHS.items():
        url = url.replace(k, v)
    if path in _STREAMS:
        # A stream of server-sent events never ends: its status is all this test needs.
        with client.stream(method, url) as response:
            return response
    return client.request(
        method, url, json=_BODIES.get((method, path)), params=_QUERIES.get(path)
    )


@pytest.fixture(scope="module")
def clients(
    fleet_system: Any, services: ServiceHandles, system_settings: Settings, api_tokens: dict[Role, str]
) -> dict[Role | None, httpx.Client]:
    """A client per role with this module's own tokens (rate limits are per token: the
    session's tokens keep their budget for the other modules); ``None``: no token."""
    subjects = {Role.FLEET_MANAGER: "it-manager", Role.TECHNICIAN: "it-tech-1", Role.CUSTOMER: "it-customer", Role.OPS: "it-ops"}
    out: dict[Role | None, httpx.Client] = {
        r: api_client(system_settings, issue_token(services, r, s)) for r, s in subjects.items()
    }
    out[None] = api_client(system_settings, None)
    _wait(lambda: out[None].get("/healthz").status_code == 200, 120, "the HTTP app")
    return out


def test_every_route_enforces_its_roles_on_the_live_app(clients: dict[Role | None, httpx.Client]) -> None:
    """For every route and role: 401 without a token, 403 for a role not allowed, neither
    for an allowed one (404, 409, 422 or 503 are fine: the route ran)."""
    table = _table()
    assert len(table) >= 30
    wrong: list[str] = []
    for (method, path), roles in sorted(table.items()):
        if method == "POST" and path == "/api/v1/planner/plan":
            continue  # re-plans are rate-limited: checked alone below
        if roles == ("public",):
            code = _call(clients[None], method, path).status_code
            if code in (401, 403):
                wrong.append(f"{method} {path}: public, got {code}")
            continue
        code = _call(clients[None], method, path).status_code
        if code != 401:
            wrong.append(f"{method} {path} without a token: {code}")
        for role in Role:
            code = _call(clients[role], method, path).status_code
            allowed = role.value in roles
            if (allowed and code in (401, 403)) or (not allowed and code != 403):
                wrong.append(f"{method} {path} as {role.value}: {code} (allowed: {roles})")
    assert not wrong, "\n".join(wrong)


def test_replan_is_accepted_as_a_job_for_fleet_managers_only(clients: dict[Role | None, httpx.Client]) -> None:
    for role in (Role.TECHNICIAN, Role.CUSTOMER, Role.OPS):
        assert clients[role].post("/api/v1/planner/plan").status_code == 403
    r = clients[Role.FLEET_MANAGER].post("/api/v1/planner/plan")
    assert r.status_code in (202, 503), r.text  # 503 only while the planner starts
    if r.status_code == 202:
        assert r.json()["requested_by"] == "it-manager" and r.headers["location"] == r.json()["status_url"]


def test_a_token_revoked_over_the_api_is_refused_at_once(clients: dict[Role | None, httpx.Client], system_settings: Settings) -> None:
    ops = clients[Role.OPS]
    r = ops.post("/api/v1/tokens", json={"role": "customer", "subject": "rider-42", "ttl_s": 600})
    assert r.status_code == 201, r.text
    issued = r.json()
    assert issued["token"].startswith("bms_") and issued["created_by"] == "it-ops"
    listed = ops.get("/api/v1/tokens").json()["tokens"]
    assert issued["id"] in [t["id"] for t in listed] and all("token" not in t for t in listed)
    with api_client(system_settings, issued["token"]) as rider:
        assert rider.get("/api/v1/me").json() == {"token_id": issued["id"], "role": "customer", "subject": "rider-42"}
        assert ops.delete(f"/api/v1/tokens/{issued['id']}").json()["state"] == "revoked"
        r = rider.get("/api/v1/me")
        assert r.status_code == 401 and "revoked" in r.json()["detail"]
        assert r.headers["www-authenticate"].startswith("Bearer")


def test_a_customer_sees_rentable_vehicles_and_no_battery_internals(
    clients: dict[Role | None, httpx.Client], services: ServiceHandles
) -> None:
    """A charged vehicle reporting near a point is offered with its range; a nearly empty
    one is not; the answer has no battery id, health or anomaly."""
    u = uuid.uuid4().hex[:6]
    lat, lon = 52.6101, 13.5502  # away from the other tests' vehicles
    now = time.time()
    charged, empty = f"{services.id_prefix}-vc{u}", f"{services.id_prefix}-ve{u}"
    _publish(services, [
        (f"fleet/{charged}/telemetry", _message(charged, f"{charged}-b", 0, [_sample(now - 2, soc=80.0, lat=lat, lon=lon)])),
        (f"fleet/{empty}/telemetry", _message(empty, f"{empty}-b", 0, [_sample(now - 2, soc=5.0, lat=lat, lon=lon + 0.001)])),
    ])  # fmt: skip
    customer = clients[Role.CUSTOMER]

    def offered() -> list[dict[str, Any]]:
        r = customer.get("/api/v1/availability", params={"lat": lat, "lon": lon, "radius_m": 500})
        assert r.status_code == 200, r.text
        return [v for v in r.json()["vehicles"] if v["vehicle_id"] in (charged, empty)]

    vehicles = _wait(offered, 60, "the charged vehicle to be offered")
    assert [v["vehicle_id"] for v in vehicles] == [charged]
    v = vehicles[0]
    assert set(v) == {"vehicle_id", "lat", "lon", "distance_m", "soc_pct", "est_range_km"}
    assert v["distance_m"] < 5 and v["soc_pct"] == 80.0 and 10 < v["est_range_km"] < 100
    assert customer.get(f"/api/v1/batteries/{charged}-b").status_code == 403


def test_an_oversized_body_is_refused_before_any_route(clients: dict[Role | None, httpx.Client]) -> None:
    r = clients[Role.OPS].post("/api/v1/tokens", content=b"{" + b" " * 70_000 + b"}", headers={"content-type": "application/json"})
    assert r.status_code == 413 and "at most 65536 bytes" in r.json()["detail"]

"""Tests for :mod:`serve.http.auth` and the routes' access rules.

* the role x route matrix: every route of ``route_roles(app)`` with every role's token is a
  403 exactly when the role is not allowed, never a 401, and otherwise the answer the route
  gives a valid request;
* every non-public route is a 401 with ``WWW-Authenticate: Bearer`` for a missing,
  malformed, unknown, expired or revoked token; the public ones answer anyone;
* object-level rules: a technician sees and changes only their own orders and route;
* what a customer sees (vehicles, never batteries); issuing and revoking tokens;
* per-token rate limits (with a fake clock) and the request body limit.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from dataclasses import replace
from typing import Any, cast

import pytest
from fastapi.testclient import TestClient

from contracts.access import Role, hash_token, looks_like_token, new_token
from serve.http import ApiDeps, create_api
from serve.http.auth import RateLimiter, route_roles

from .conftest import Fakes, as_role, bearer
from .fakes import work_order

PUBLIC = ("public",)
SUBJECTS = {
    Role.FLEET_MANAGER: "manager-1",
    Role.TECHNICIAN: "tech-01",  # order 1 and 2 of the fakes are assigned to tech-01
    Role.CUSTOMER: "rider-1",
    Role.OPS: "ops-1",
}

#: The access table the API promises (docs/security.md): who may call what.
EXPECTED_ROLES: dict[tuple[str, str], set[str]] = {
    ("GET", "/"): {"public"},
    ("GET", "/healthz"): {"public"},
    ("GET", "/api/v1/me"): {"fleet_manager", "technician", "customer", "ops"},
    ("GET", "/api/v1/fleet/summary"): {"fleet_manager"},
    ("GET", "/api/v1/fleet/top"): {"fleet_manager"},
    ("GET", "/api/v1/fleet/groups"): {"fleet_manager"},
    ("GET", "/api/v1/anomalies"): {"fleet_manager"},
    ("GET", "/api/v1/batteries/{battery_id}"): {"fleet_manager"},
    ("GET", "/api/v1/batteries/{battery_id}/window"): {"fleet_manager"},
    ("GET", "/api/v1/batteries/{battery_id}/telemetry"): {"fleet_manager"},
    ("GET", "/api/v1/batteries/{battery_id}/health-history"): {"fleet_manager", "ops"},
    ("GET", "/api/v1/batteries/{battery_id}/forecast"): {"fleet_manager", "ops"},
    ("GET", "/api/v1/availability"): {"customer", "fleet_manager"},
    ("GET", "/api/v1/fleet/map"): {"fleet_manager", "ops"},
    ("GET", "/api/v1/planner/queue"): {"fleet_manager"},
    ("GET", "/api/v1/planner/plan"): {"fleet_manager"},
    ("POST", "/api/v1/planner/plan"): {"fleet_manager"},
    ("GET", "/api/v1/planner/jobs/{job_id}"): {"fleet_manager"},
    ("GET", "/api/v1/planner/roster"): {"fleet_manager"},
    ("GET", "/api/v1/technicians/{technician_id}/route"): {"fleet_manager", "technician"},
    ("GET", "/api/v1/work-orders"): {"fleet_manager", "technician"},
    ("GET", "/api/v1/work-orders/{order_id}"): {"fleet_manager", "technician"},
    ("POST", "/api/v1/work-orders/{order_id}/transition"): {"fleet_manager", "technician"},
    ("GET", "/api/v1/models"): {"ops"},
    ("GET", "/api/v1/models/alerts"): {"ops"},
    ("GET", "/api/v1/models/{name}"): {"ops"},
    ("POST", "/api/v1/models/{name}/promote"): {"ops"},
    ("POST", "/api/v1/models/{name}/rollback"): {"ops"},
    ("POST", "/api/v1/models/{name}/ab"): {"ops"},
    ("DELETE", "/api/v1/models/{name}/ab"): {"ops"},
    ("GET", "/api/v1/system/stats"): {"ops"},
    ("GET", "/api/v1/dead-letters"): {"ops"},
    ("POST", "/api/v1/tokens"): {"ops"},
    ("GET", "/api/v1/tokens"): {"ops"},
    ("DELETE", "/api/v1/tokens/{token_id}"): {"ops"},
    ("GET", "/api/v1/alerts"): {"fleet_manager", "ops"},
    ("GET", "/api/v1/alerts/stream"): {"fleet_manager", "ops"},
    ("GET", "/api/v1/alerts/{alert_id}"): {"fleet_manager", "ops"},
    ("POST", "/api/v1/alerts/{alert_id}/acknowledge"): {"fleet_manager", "ops"},
    ("GET", "/api/v1/silences"): {"fleet_manager", "ops"},
    ("POST", "/api/v1/silences"): {"fleet_manager", "ops"},
    ("DELETE", "/api/v1/silences/{silence_id}"): {"fleet_manager", "ops"},
    ("POST", "/api/v1/webhooks"): {"fleet_manager", "ops"},
    ("GET", "/api/v1/webhooks"): {"fleet_manager", "ops"},
    ("DELETE", "/api/v1/webhooks/{webhook_id}"): {"fleet_manager", "ops"},
    ("GET", "/api/v1/webhooks/{webhook_id}/deliveries"): {"fleet_manager", "ops"},
    ("GET", "/api/v1/webhook-deliveries/{delivery_id}"): {"fleet_manager", "ops"},
    ("POST", "/api/v1/webhook-deliveries/{delivery_id}/replay"): {"fleet_manager", "ops"},
    ("POST", "/api/v1/work-orders/{order_id}/vendor-reply"): {"fleet_manager", "ops"},
    ("GET", "/api/v1/work-orders/{order_id}/vendor-ticket"): {"fleet_manager", "ops"},
    ("GET", "/api/v1/simulations/presets"): {"fleet_manager", "ops"},
    ("POST", "/api/v1/simulations"): {"fleet_manager"},
    ("GET", "/api/v1/simulations"): {"fleet_manager", "ops"},
    ("GET", "/api/v1/simulations/{job_id}"): {"fleet_manager", "ops"},
    ("POST", "/api/v1/simulations/{job_id}/cancel"): {"fleet_manager"},
}

#: A valid request for each route, and what an allowed caller gets for it from the fakes
#: (so the matrix checks the access rule and nothing else: no 422 hides a 403).
REQUESTS: dict[tuple[str, str], tuple[str, dict[str, Any], int]] = {
    ("GET", "/"): ("/", {}, 200),
    ("GET", "/healthz"): ("/healthz", {}, 200),
    ("GET", "/api/v1/me"): ("/api/v1/me", {}, 200),
    ("GET", "/api/v1/fleet/summary"): ("/api/v1/fleet/summary", {}, 200),
    ("GET", "/api/v1/fleet/top"): ("/api/v1/fleet/top", {"params": {"by": "soc_pct", "n": 2}}, 200),
    ("GET", "/api/v1/fleet/groups"): ("/api/v1/fleet/groups", {}, 200),
    ("GET", "/api/v1/anomalies"): ("/api/v1/anomalies", {}, 200),
    ("GET", "/api/v1/batteries/{battery_id}"): ("/api/v1/batteries/bat-a", {}, 200),
    ("GET", "/api/v1/batteries/{battery_id}/window"): ("/api/v1/batteries/bat-a/window", {}, 200),
    ("GET", "/api/v1/batteries/{battery_id}/telemetry"): ("/api/v1/batteries/bat-a/telemetry", {}, 200),
    ("GET", "/api/v1/batteries/{battery_id}/health-history"): (
        "/api/v1/batteries/bat-a/health-history", {}, 200,
    ),
    ("GET", "/api/v1/batteries/{battery_id}/forecast"): ("/api/v1/batteries/bat-a/forecast", {}, 200),
    ("GET", "/api/v1/availability"): (
        "/api/v1/availability", {"params": {"lat": 52.52, "lon": 13.40}}, 200,
    ),
    ("GET", "/api/v1/fleet/map"): ("/api/v1/fleet/map", {}, 200),
    ("GET", "/api/v1/planner/queue"): ("/api/v1/planner/queue", {}, 200),
    ("GET", "/api/v1/planner/plan"): ("/api/v1/planner/plan", {}, 404),  # no plan yet
    ("POST", "/api/v1/planner/plan"): ("/api/v1/planner/plan", {}, 202),
    ("GET", "/api/v1/planner/jobs/{job_id}"): ("/api/v1/planner/jobs/plan-0123abcd-1", {}, 404),
    ("GET", "/api/v1/planner/roster"): ("/api/v1/planner/roster", {}, 200),
    ("GET", "/api/v1/technicians/{technician_id}/route"): ("/api/v1/technicians/tech-01/route", {}, 200),
    ("GET", "/api/v1/work-orders"): ("/api/v1/work-orders", {}, 200),
    ("GET", "/api/v1/work-orders/{order_id}"): ("/api/v1/work-orders/1", {}, 200),
    ("POST", "/api/v1/work-orders/{order_id}/transition"): (
        "/api/v1/work-orders/1/transition", {"json": {"state": "en_route"}}, 200,
    ),
    ("GET", "/api/v1/models"): ("/api/v1/models", {}, 200),
    ("GET", "/api/v1/models/alerts"): ("/api/v1/models/alerts", {}, 200),
    ("GET", "/api/v1/models/{name}"): ("/api/v1/models/health", {}, 200),
    ("POST", "/api/v1/models/{name}/promote"): (
        "/api/v1/models/health/promote", {"json": {"version": 2}}, 200,
    ),
    ("POST", "/api/v1/models/{name}/rollback"): ("/api/v1/models/health/rollback", {}, 409),
    ("POST", "/api/v1/models/{name}/ab"): (
        "/api/v1/models/health/ab", {"json": {"candidate_version": 2, "fraction": 0.25}}, 200,
    ),
    ("DELETE", "/api/v1/models/{name}/ab"): ("/api/v1/models/health/ab", {}, 409),  # no split
    ("GET", "/api/v1/system/stats"): ("/api/v1/system/stats", {}, 200),
    ("GET", "/api/v1/dead-letters"): ("/api/v1/dead-letters", {}, 200),
    ("POST", "/api/v1/tokens"): (
        "/api/v1/tokens", {"json": {"role": "customer", "subject": "rider-9"}}, 201,
    ),
    ("GET", "/api/v1/tokens"): ("/api/v1/tokens", {}, 200),
    ("DELETE", "/api/v1/tokens/{token_id}"): ("/api/v1/tokens/1", {}, 200),
    ("GET", "/api/v1/alerts"): ("/api/v1/alerts", {}, 200),
    ("GET", "/api/v1/alerts/stream"): ("/api/v1/alerts/stream", {}, 200),
    ("GET", "/api/v1/alerts/{alert_id}"): ("/api/v1/alerts/1", {}, 404),  # no alerts in the fakes
    ("POST", "/api/v1/alerts/{alert_id}/acknowledge"): ("/api/v1/alerts/1/acknowledge", {"json": {}}, 404),
    ("GET", "/api/v1/silences"): ("/api/v1/silences", {}, 200),
    ("POST", "/api/v1/silences"): (
        "/api/v1/silences", {"json": {"matchers": {"zone": "z1"}, "duration_s": 60}}, 201,
    ),
    ("DELETE", "/api/v1/silences/{silence_id}"): ("/api/v1/silences/99", {}, 404),
    ("POST", "/api/v1/webhooks"): (
        "/api/v1/webhooks", {"json": {"url": "https://8.8.8.8/hook", "event_types": ["alert.firing"]}}, 201,
    ),
    ("GET", "/api/v1/webhooks"): ("/api/v1/webhooks", {}, 200),
    ("DELETE", "/api/v1/webhooks/{webhook_id}"): ("/api/v1/webhooks/1", {}, 404),
    ("GET", "/api/v1/webhooks/{webhook_id}/deliveries"): ("/api/v1/webhooks/1/deliveries", {}, 404),
    ("GET", "/api/v1/webhook-deliveries/{delivery_id}"): ("/api/v1/webhook-deliveries/1", {}, 404),
    ("POST", "/api/v1/webhook-deliveries/{delivery_id}/replay"): ("/api/v1/webhook-deliveries/1/replay", {}, 404),
    ("POST", "/api/v1/work-orders/{order_id}/vendor-reply"): (
        "/api/v1/work-orders/1/vendor-reply", {"json": {"status": "accepted"}}, 409,
    ),
    ("GET", "/api/v1/work-orders/{order_id}/vendor-ticket"): ("/api/v1/work-orders/1/vendor-ticket", {}, 404),
    ("GET", "/api/v1/simulations/presets"): ("/api/v1/simulations/presets", {}, 200),
    ("POST", "/api/v1/simulations"): ("/api/v1/simulations", {"json": {"preset": "heatwave", "seeds": [1]}}, 202),
    ("GET", "/api/v1/simulations"): ("/api/v1/simulations", {}, 200),
    ("GET", "/api/v1/simulations/{job_id}"): ("/api/v1/simulations/sim-abcdef-1", {}, 404),  # no jobs yet
    ("POST", "/api/v1/simulations/{job_id}/cancel"): ("/api/v1/simulations/sim-abcdef-1/cancel", {}, 404),
}

# The routes as the app declares them (its deps are not called to build it).
ROUTES = route_roles(create_api(cast(ApiDeps, None)))
MATRIX = [(route, role) for route in sorted(ROUTES) for role in Role]


def _id(case: tuple[tuple[str, str], Role]) -> str:
    (method, path), role = case
    return f"{method} {path} as {role.value}"


def _send(client: TestClient, route: tuple[str, str], **extra: Any) -> Any:
    if route not in REQUESTS:
        pytest.fail(f"{route} is new: add a valid request for it to REQUESTS")
    url, kwargs, _ = REQUESTS[route]
    return client.request(route[0], url, **kwargs, **extra)


# ---------------------------------------------------------------------- the route table
def test_the_route_table_is_the_promised_one() -> None:
    """route_roles(app) reads back exactly the access table the API promises: a route that
    loses its role annotation (and becomes public) or gains a role fails here."""
    assert {k: set(v) for k, v in ROUTES.items()} == EXPECTED_ROLES
    assert set(REQUESTS) == set(ROUTES)


def test_only_liveness_and_the_dashboard_page_are_public() -> None:
    """Every route but GET /healthz and GET / needs a token."""
    assert sorted(r for r, roles in ROUTES.items() if roles == PUBLIC) == [("GET", "/"), ("GET", "/healthz")]


def test_the_document_declares_the_bearer_scheme_and_auth_errors(client: TestClient) -> None:
    """The OpenAPI document names the bearer scheme on every protected operation and
    declares its 401 and 403 answers (429 where a rate limit applies)."""
    doc = client.get("/openapi.json").json()
    schemes = doc["components"]["securitySchemes"]
    assert any(s == {**s, "type": "http", "scheme": "bearer"} for s in schemes.values())
    limited = {
        ("POST", "/api/v1/planner/plan"), ("POST", "/api/v1/tokens"), ("POST", "/api/v1/webhooks"),
        ("POST", "/api/v1/webhook-deliveries/{delivery_id}/replay"), ("POST", "/api/v1/simulations"),
    } | {
        (m, p) for m, p in ROUTES if m in ("POST", "DELETE") and p.startswith("/api/v1/models/")
    }
    for (method, path), roles in ROUTES.items():
        if roles == PUBLIC:
            continue
        op = doc["paths"][path][method.lower()]
        assert op.get("security"), (method, path)
        assert {"401", "403"} <= set(op["responses"]), (method, path)
        assert ("429" in op["responses"]) == ((method, path) in limited), (method, path)


# ---------------------------------------------------------------------- role x route
@pytest.mark.parametrize("case", MATRIX, ids=[_id(c) for c in MATRIX])
def test_a_role_gets_403_iff_the_route_does_not_allow_it(
    fakes: Fakes, case: tuple[tuple[str, str], Role]
) -> None:
    """A valid token of a role the route does not allow is a 403 naming the allowed roles;
    one it allows gets the route's own answer; no valid token is ever a 401."""
    route, role = case
    allowed = ROUTES[route]
    with as_role(fakes, role, SUBJECTS[role]) as c:
        r = _send(c, route)
    assert r.status_code != 401, r.text
    if allowed == PUBLIC or role.value in allowed:
        assert r.status_code == REQUESTS[route][2], r.text
    else:
        assert r.status_code == 403, r.text
        detail = r.json()["detail"]
        assert role.value in detail and all(a in detail for a in allowed), detail


def _bad_credentials(fakes: Fakes) -> dict[str, dict[str, str]]:
    tokens = fakes.stores.tokens_
    expired = tokens.issue(Role.OPS, "ops-expired")
    tokens.expire(expired)
    revoked = tokens.issue(Role.OPS, "ops-revoked")
    asyncio.run(tokens.revoke(tokens.rows[hash_token(revoked)].id))
    valid = tokens.issue(Role.OPS, "ops-1")
    return {
        "no header": {},
        "empty bearer": {"Authorization": "Bearer "},
        "another scheme": {"Authorization": "Basic b3BzOnNlY3JldA=="},
        "token without a scheme": {"Authorization": valid},
        "malformed": {"Authorization": "Bearer not-a-token"},
        "one character short": bearer(valid[:-1]),
        "one character too many": bearer(valid + "A"),
        "unknown": bearer(new_token()),
        "expired": bearer(expired),
        "revoked": bearer(revoked),
    }


@pytest.mark.parametrize(
    "kind",
    [
        "no header", "empty bearer", "another scheme", "token without a scheme", "malformed",
        "one character short", "one character too many", "unknown", "expired", "revoked",
    ],
)  # fmt: skip
def test_every_protected_route_is_401_with_a_challenge(fakes: Fakes, kind: str) -> None:
    """Without a usable token every non-public route answers 401, the JSON error body and
    ``WWW-Authenticate: Bearer``, and never echoes the token; public routes answer 200."""
    headers = _bad_credentials(fakes)[kind]
    wrong: list[tuple[object, ...]] = []
    with TestClient(create_api(fakes.deps())) as c:
        for route, roles in sorted(ROUTES.items()):
            r = _send(c, route, headers=headers)
            if roles == PUBLIC:
                if r.status_code != 200:
                    wrong.append((route, r.status_code))
                continue
            challenge = r.headers.get("www-authenticate", "")
            if r.status_code != 401 or not challenge.startswith("Bearer"):
                wrong.append((route, r.status_code, challenge))
                continue
            assert isinstance(r.json()["detail"], str)
            secret = headers.get("Authorization", "").removeprefix("Bearer ").strip()
            assert not looks_like_token(secret) or secret not in r.text
    assert wrong == []
    # Nothing was done on the callers' behalf.
    assert fakes.planner.pulls == 0 and fakes.planner.actors == []
    assert fakes.stores.models.configs["health"].production_version == 1


def test_the_reason_of_a_401_is_told(fakes: Fakes) -> None:
    """The 401 says whether the token was missing, malformed, unknown, expired or revoked."""
    creds = _bad_credentials(fakes)
    with TestClient(create_api(fakes.deps())) as c:
        said = {k: c.get("/api/v1/me", headers=creds[k]).json()["detail"] for k in creds}
    assert "got none" in said["no header"] and "malformed" in said["malformed"]
    assert "unknown" in said["unknown"]
    assert "expired" in said["expired"] and "revoked" in said["revoked"]


def test_the_scheme_is_case_insensitive(fakes: Fakes) -> None:
    """``bearer`` in lower case is the same scheme (RFC 7235)."""
    token = fakes.stores.tokens_.issue(Role.OPS, "ops-1")
    with TestClient(create_api(fakes.deps())) as c:
        r = c.get("/api/v1/me", headers={"Authorization": f"bearer {token}"})
    assert r.status_code == 200 and r.json()["subject"] == "ops-1"


@pytest.mark.parametrize("role", list(Role))
def test_me_tells_the_token_its_role_and_subject(fakes: Fakes, role: Role) -> None:
    """GET /me answers the calling token's id, role and subject, for any role."""
    with as_role(fakes, role, SUBJECTS[role]) as c:
        body = c.get("/api/v1/me").json()
    assert body == {"token_id": 1, "role": role.value, "subject": SUBJECTS[role]}


# ---------------------------------------------------------------------- technicians
@pytest.fixture
def tech(fakes: Fakes) -> Iterator[TestClient]:
    """A technician tech-01 client, with order 3 (assigned) of tech-02 added."""
    fakes.planner.orders[3] = replace(work_order(3), technician_id="tech-02")
    with as_role(fakes, Role.TECHNICIAN, "tech-01") as c:
        yield c


def test_a_technician_lists_only_their_own_orders(tech: TestClient) -> None:
    """The list answers the orders assigned to the token's technician, in any state filter."""
    assert [o["id"] for o in tech.get("/api/v1/work-orders").json()["orders"]] == [1, 2]
    body = tech.get("/api/v1/work-orders", params={"state": "assigned"}).json()
    assert [o["id"] for o in body["orders"]] == [1]


def test_a_technician_reads_their_order_but_not_anothers(tech: TestClient) -> None:
    """Their own order answers 200; another technician's is a 403 naming neither the
    order's content nor its technician; an unknown id is still a 404."""
    assert tech.get("/api/v1/work-orders/1").status_code == 200
    r = tech.get("/api/v1/work-orders/3")
    assert r.status_code == 403 and "tech-02" not in r.text and "veh-a" not in r.text
    assert tech.get("/api/v1/work-orders/999").status_code == 404


def test_a_technician_moves_their_own_order_attributed_to_them(fakes: Fakes, tech: TestClient) -> None:
    """assigned -> en_route on their own order is a 200, recorded as done by tech-01."""
    r = tech.post("/api/v1/work-orders/1/transition", json={"state": "en_route"})
    assert r.status_code == 200, r.text
    assert fakes.planner.orders[1].state == "en_route" and fakes.planner.actors == ["tech-01"]


def test_a_technician_cannot_move_anothers_order(fakes: Fakes, tech: TestClient) -> None:
    """A change to an order assigned to tech-02 is a 403 and reaches no planner."""
    r = tech.post("/api/v1/work-orders/3/transition", json={"state": "en_route"})
    assert r.status_code == 403, r.text
    assert fakes.planner.orders[3].state == "assigned" and fakes.planner.actors == []


@pytest.mark.parametrize("order_id", [1, 3])
def test_a_technician_cannot_assign_to_someone_else(fakes: Fakes, tech: TestClient, order_id: int) -> None:
    """Assigning any order (their own included) to another technician is a 403."""
    body = {"state": "assigned", "technician_id": "tech-02"}
    r = tech.post(f"/api/v1/work-orders/{order_id}/transition", json=body)
    assert r.status_code == 403 and "tech-02" in r.json()["detail"]
    assert fakes.planner.actors == [] and fakes.planner.orders[1].technician_id == "tech-01"


def test_a_technician_reads_only_their_own_route(tech: TestClient) -> None:
    """Their own route is a 200; another technician's, known or not, is a 403 (not a 404
    that would tell which technicians exist)."""
    r = tech.get("/api/v1/technicians/tech-01/route")
    assert r.status_code == 200 and r.json()["technician_id"] == "tech-01"
    assert tech.get("/api/v1/technicians/tech-02/route").status_code == 403
    assert tech.get("/api/v1/technicians/nobody/route").status_code == 403


def test_a_fleet_manager_sees_and_changes_every_order(fakes: Fakes, client: TestClient) -> None:
    """The object rules bind technicians only: a fleet manager reads tech-02's order and
    reassigns it, attributed to the manager."""
    fakes.planner.orders[3] = replace(work_order(3), technician_id="tech-02")
    assert [o["id"] for o in client.get("/api/v1/work-orders").json()["orders"]] == [1, 2, 3]
    assert client.get("/api/v1/work-orders/3").status_code == 200
    r = client.post("/api/v1/work-orders/3/transition", json={"state": "en_route"})
    assert r.status_code == 200 and fakes.planner.actors == ["manager-1"]


# ---------------------------------------------------------------------- customers
@pytest.fixture
def rider(fakes: Fakes) -> Iterator[TestClient]:
    with as_role(fakes, Role.CUSTOMER, "rider-1") as c:
        yield c


def test_a_customer_sees_rentable_vehicles_without_battery_fields(rider: TestClient) -> None:
    """Near the fleet's point the customer gets veh-b and veh-c (veh-a's battery is at 11 %,
    below the rentable 15 %), each with charge and range, and nothing about batteries."""
    r = rider.get("/api/v1/availability", params={"lat": 52.52, "lon": 13.40, "radius_m": 500})
    assert r.status_code == 200, r.text
    vehicles = r.json()["vehicles"]
    assert [v["vehicle_id"] for v in vehicles] == ["veh-b", "veh-c"]
    for v in vehicles:
        assert set(v) == {"vehicle_id", "lat", "lon", "distance_m", "soc_pct", "est_range_km"}
        assert v["distance_m"] == pytest.approx(0.0, abs=1.0) and v["est_range_km"] > 0
    assert [v["soc_pct"] for v in vehicles] == [60.0, 95.0]
    assert vehicles[1]["est_range_km"] > vehicles[0]["est_range_km"]
    for word in ("bat-", "battery", "health", "soh", "anomal", "temp"):
        assert word not in r.text


def test_availability_is_bounded_by_radius_and_limit(rider: TestClient) -> None:
    """About 8.9 km north of the fleet nothing is within 1 km; within 10 km both are, at
    that distance; ``limit`` caps the answer."""
    far = {"lat": 52.60, "lon": 13.40}
    assert rider.get("/api/v1/availability", params={**far, "radius_m": 1000}).json()["vehicles"] == []
    vehicles = rider.get("/api/v1/availability", params={**far, "radius_m": 10_000}).json()["vehicles"]
    assert len(vehicles) == 2 and all(v["distance_m"] == pytest.approx(8896, rel=0.01) for v in vehicles)
    one = rider.get("/api/v1/availability", params={**far, "radius_m": 10_000, "limit": 1}).json()
    assert len(one["vehicles"]) == 1


def test_a_flagged_battery_takes_its_vehicle_off_the_map(fakes: Fakes, rider: TestClient) -> None:
    """A vehicle whose battery carries an anomaly flag is not offered."""
    table = fakes.fleet.table
    table.anomaly_flags[table.index["bat-b"]] = 1
    vehicles = rider.get("/api/v1/availability", params={"lat": 52.52, "lon": 13.40}).json()["vehicles"]
    assert [v["vehicle_id"] for v in vehicles] == ["veh-c"]


@pytest.mark.parametrize(
    "params", [{"lat": 91, "lon": 13.4}, {"lat": 52.5}, {"lat": 52.5, "lon": 13.4, "radius_m": 0}]
)
def test_availability_refuses_bad_points(rider: TestClient, params: dict[str, float]) -> None:
    """A point off the globe, a missing coordinate or a non-positive radius is a 422."""
    assert rider.get("/api/v1/availability", params=params).status_code == 422


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/fleet/summary", "/api/v1/batteries/bat-a", "/api/v1/batteries/bat-a/window",
        "/api/v1/anomalies", "/api/v1/work-orders", "/api/v1/technicians/tech-01/route",
    ],
)  # fmt: skip
def test_a_customer_gets_nothing_about_batteries(rider: TestClient, path: str) -> None:
    """Fleet, battery, anomaly and work-order routes are 403 for a customer."""
    r = rider.get(path)
    assert r.status_code == 403 and "bat-a" not in r.text.replace(path, "")


# ---------------------------------------------------------------------- tokens
def test_ops_issues_a_token_that_works_until_revoked(fakes: Fakes, ops_client: TestClient) -> None:
    """POST /tokens answers 201 with the secret once; the list never shows a secret; the
    new token works at once, and after DELETE it is a 401 on its next request."""
    body = {"role": "technician", "subject": "tech-01", "ttl_s": 600, "label": "van 1"}
    r = ops_client.post("/api/v1/tokens", json=body)
    assert r.status_code == 201, r.text
    issued = r.json()
    secret = issued["token"]
    assert looks_like_token(secret)
    assert issued["role"] == "technician" and issued["subject"] == "tech-01"
    assert issued["label"] == "van 1" and issued["created_by"] == "ops-1"
    assert issued["state"] == "active" and issued["revoked_at_s"] is None
    assert issued["expires_at_s"] == pytest.approx(issued["created_at_s"] + 600, abs=1)

    listed = ops_client.get("/api/v1/tokens")
    assert listed.status_code == 200
    assert secret not in listed.text and hash_token(secret).hex() not in listed.text
    rows = {t["id"]: t for t in listed.json()["tokens"]}
    assert all("token" not in t for t in rows.values())
    assert rows[issued["id"]]["subject"] == "tech-01"

    with TestClient(ops_client.app, headers=bearer(secret)) as tech:
        assert tech.get("/api/v1/me").json()["subject"] == "tech-01"
        assert [o["id"] for o in tech.get("/api/v1/work-orders").json()["orders"]] == [1, 2]
        revoked = ops_client.delete(f"/api/v1/tokens/{issued['id']}")
        assert revoked.status_code == 200 and revoked.json()["state"] == "revoked"
        assert "token" not in revoked.json()
        r = tech.get("/api/v1/work-orders")
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    listed_after = {t["id"]: t for t in ops_client.get("/api/v1/tokens").json()["tokens"]}
    assert listed_after[issued["id"]]["state"] == "revoked"


def test_revoking_is_idempotent_and_unknown_ids_are_404(ops_client: TestClient) -> None:
    """Revoking twice answers the revoked record both times; an unknown id is a 404."""
    token_id = ops_client.post("/api/v1/tokens", json={"role": "customer", "subject": "r"}).json()["id"]
    first = ops_client.delete(f"/api/v1/tokens/{token_id}").json()
    second = ops_client.delete(f"/api/v1/tokens/{token_id}").json()
    assert first["state"] == second["state"] == "revoked" and first["revoked_at_s"] == second["revoked_at_s"]
    assert ops_client.delete("/api/v1/tokens/999").status_code == 404
    assert ops_client.delete("/api/v1/tokens/0").status_code == 422


@pytest.mark.parametrize(
    "body",
    [
        {"role": "admin", "subject": "x"},
        {"role": "ops", "subject": ""},
        {"role": "ops", "subject": " padded "},
        {"role": "ops", "subject": "x", "ttl_s": 0},
        {"role": "ops", "subject": "x", "created_by": "someone-else"},
    ],
)
def test_bad_token_requests_are_422(ops_client: TestClient, body: dict[str, Any]) -> None:
    """An unknown role, an empty or padded subject, a non-positive lifetime or a field
    such as ``created_by`` (always the caller) is a 422."""
    assert ops_client.post("/api/v1/tokens", json=body).status_code == 422


@pytest.mark.parametrize("role", [Role.FLEET_MANAGER, Role.TECHNICIAN, Role.CUSTOMER])
def test_only_ops_manages_tokens(fakes: Fakes, role: Role) -> None:
    """Issuing, listing and revoking tokens is a 403 for every other role, and issues
    nothing."""
    with as_role(fakes, role, SUBJECTS[role]) as c:
        assert c.post("/api/v1/tokens", json={"role": "ops", "subject": "me-now"}).status_code == 403
        assert c.get("/api/v1/tokens").status_code == 403
        assert c.delete("/api/v1/tokens/1").status_code == 403
    assert [i.subject for i in fakes.stores.tokens_.rows.values()] == [SUBJECTS[role]]
    assert all(i.revoked_at_s is None for i in fakes.stores.tokens_.rows.values())


# ---------------------------------------------------------------------- rate limits
class FakeClock:
    """Monotonic seconds that move only when told."""

    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def _retry_after(r: Any) -> int:
    assert r.status_code == 429, r.text
    value = r.headers["retry-after"]
    assert re.fullmatch(r"[0-9]+", value), value
    assert int(value) >= 1 and "retry in" in r.json()["detail"]
    return int(value)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def limited(fakes: Fakes, clock: FakeClock) -> Iterator[TestClient]:
    """A client (no token of its own) of an app whose rate limiter runs on ``clock``."""
    with TestClient(create_api(fakes.deps(), rate_limiter=RateLimiter(clock=clock))) as c:
        yield c


def test_replans_are_limited_per_token(fakes: Fakes, clock: FakeClock, limited: TestClient) -> None:
    """Two re-plans at once pass (burst 2), the third is a 429 with Retry-After (10 s at 6 a
    minute) and pulls nothing; another token is not limited; once the clock has moved on by
    Retry-After the first token may re-plan again."""
    first = bearer(fakes.stores.tokens_.issue(Role.FLEET_MANAGER, "manager-1"))
    other = bearer(fakes.stores.tokens_.issue(Role.FLEET_MANAGER, "manager-1"))
    url = "/api/v1/planner/plan"
    assert [limited.post(url, headers=first).status_code for _ in range(2)] == [202, 202]
    wait_s = _retry_after(limited.post(url, headers=first))
    assert wait_s == 10 and fakes.planner.pulls == 2
    assert limited.post(url, headers=other).status_code == 202
    clock.now_s += wait_s - 1
    assert _retry_after(limited.post(url, headers=first)) == 1
    clock.now_s += 1
    assert limited.post(url, headers=first).status_code == 202
    assert fakes.planner.pulls == 4
    # Reads of the same area are not limited.
    assert all(limited.get("/api/v1/planner/queue", headers=first).status_code == 200 for _ in range(5))


def test_model_changes_share_one_limit_per_token(fakes: Fakes, clock: FakeClock, limited: TestClient) -> None:
    """Promote, A/B start and stop and rollback draw on one bucket (burst 4, 12 a minute):
    the fifth change at once is a 429 (Retry-After 5 s) that changes nothing, even one the
    registry would refuse counts; another ops token is not limited; after 5 s it passes."""
    ops = bearer(fakes.stores.tokens_.issue(Role.OPS, "ops-1"))
    other = bearer(fakes.stores.tokens_.issue(Role.OPS, "ops-2"))
    base = "/api/v1/models/health"
    statuses = [
        limited.post(f"{base}/promote", json={"version": 2}, headers=ops).status_code,
        limited.post(f"{base}/ab", json={"candidate_version": 1, "fraction": 0.5}, headers=ops).status_code,
        limited.delete(f"{base}/ab", headers=ops).status_code,
        limited.delete(f"{base}/ab", headers=ops).status_code,  # no split: refused, still counted
    ]
    assert statuses == [200, 200, 200, 409]
    wait_s = _retry_after(limited.post(f"{base}/rollback", headers=ops))
    assert wait_s == 5 and fakes.stores.models.configs["health"].production_version == 2
    assert limited.post(f"{base}/rollback", headers=other).status_code == 200
    clock.now_s += wait_s
    assert limited.post(f"{base}/promote", json={"version": 2}, headers=ops).status_code == 200
    assert all(limited.get(base, headers=ops).status_code == 200 for _ in range(6))


def test_token_issue_is_limited(fakes: Fakes, clock: FakeClock, limited: TestClient) -> None:
    """Five tokens at once (burst 5), then a 429 that issues nothing; 6 s later (10 a
    minute) one more."""
    ops = bearer(fakes.stores.tokens_.issue(Role.OPS, "ops-1"))
    body = {"role": "customer", "subject": "rider"}
    assert [limited.post("/api/v1/tokens", json=body, headers=ops).status_code for _ in range(5)] == [201] * 5
    wait_s = _retry_after(limited.post("/api/v1/tokens", json=body, headers=ops))
    assert wait_s == 6 and len(fakes.stores.tokens_.rows) == 6
    clock.now_s += wait_s
    assert limited.post("/api/v1/tokens", json=body, headers=ops).status_code == 201


def test_refused_callers_never_reach_the_limit(fakes: Fakes, limited: TestClient) -> None:
    """The limit is checked after the token: a wrong role stays a 403 and no token a 401,
    however often they call, and they use up no one's bucket."""
    manager = bearer(fakes.stores.tokens_.issue(Role.FLEET_MANAGER, "manager-1"))
    for _ in range(6):
        assert limited.post("/api/v1/models/health/rollback", headers=manager).status_code == 403
        assert limited.post("/api/v1/planner/plan").status_code == 401
    assert limited.post("/api/v1/planner/plan", headers=manager).status_code == 202


# ---------------------------------------------------------------------- body size
def test_a_large_body_is_413_before_any_route(fakes: Fakes, client: TestClient) -> None:
    """A 70 KiB JSON body (over the 64 KiB default) is a 413 with a JSON detail; the
    route never ran."""
    r = client.post("/api/v1/work-orders/1/transition", json={"state": "en_route", "note": "x" * 70 * 1024})
    assert r.status_code == 413 and r.headers["content-type"] == "application/json"
    assert "at most 65536 bytes" in r.json()["detail"]
    assert fakes.planner.actors == [] and fakes.planner.orders[1].state == "assigned"


def test_the_limit_is_checked_before_the_token(fakes: Fakes) -> None:
    """An oversized body is refused without reading it, token or not."""
    with TestClient(create_api(fakes.deps())) as c:
        r = c.post("/api/v1/tokens", content=b"{" + b" " * 70 * 1024 + b"}", headers={"content-type": "application/json"})
    assert r.status_code == 413


def _chunks(total: int, size: int = 8192) -> Iterator[bytes]:
    """A transition body of about ``total`` bytes, sent in chunks (no Content-Length)."""
    yield b'{"state": "en_route", "note": "'
    for _ in range(total // size):
        yield b"x" * size
    yield b'"}'


def test_a_small_chunked_body_passes(fakes: Fakes, client: TestClient) -> None:
    """A chunked body under the limit reaches the route as any other."""
    # Three chunks, a 1,500-character note (the note's own limit is 2,000).
    r = client.post("/api/v1/work-orders/1/transition", content=_chunks(1500, 500), headers={"content-type": "application/json"})
    assert "content-length" not in r.request.headers
    assert r.status_code == 200, r.text[:300]
    assert fakes.planner.actors == ["manager-1"]


def test_a_chunked_body_over_the_limit_is_413(fakes: Fakes, client: TestClient) -> None:
    """A chunked body (no Content-Length) is counted as it arrives: over 64 KiB it is a 413
    with a JSON detail, and the route never ran."""
    r = client.post("/api/v1/work-orders/1/transition", content=_chunks(80 * 1024), headers={"content-type": "application/json"})
    assert "content-length" not in r.request.headers
    assert fakes.planner.actors == []
    assert r.status_code == 413, r.text[:300]
    assert "at most 65536 bytes" in json.loads(r.text)["detail"]


def test_the_limit_is_configurable(fakes: Fakes) -> None:
    """create_api(max_body_bytes=...) sets the limit: 1 KiB refuses a 2 KiB note."""
    token = fakes.stores.tokens_.issue(Role.FLEET_MANAGER, "manager-1")
    with TestClient(create_api(fakes.deps(), max_body_bytes=1024), headers=bearer(token)) as c:
        big = c.post("/api/v1/work-orders/1/transition", json={"state": "en_route", "note": "x" * 2048})
        small = c.post("/api/v1/work-orders/1/transition", json={"state": "en_route", "note": "ok"})
    assert big.status_code == 413 and "at most 1024 bytes" in big.json()["detail"]
    assert small.status_code == 200

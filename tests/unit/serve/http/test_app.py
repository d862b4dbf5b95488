"""Tests for :mod:`serve.http.app`: the OpenAPI document, error shapes, and no Ray.

The document is what clients (and schemathesis) generate requests and check answers
against, so every JSON route must declare a non-empty 200 schema, and every 422 the app
sends must have the declared validation-error shape.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

import pytest
from fastapi.testclient import TestClient

from contracts.access import Role
from serve.http import ApiDeps, create_api
from serve.http.auth import route_roles

from .conftest import Fakes, as_role

ROOT = Path(__file__).resolve().parents[4]
_METHODS = ("get", "post", "put", "patch", "delete")


def _resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if ref is None:
        return schema
    name = ref.removeprefix("#/components/schemas/")
    resolved: dict[str, Any] = doc["components"]["schemas"][name]
    return resolved


def _operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, op)
        for path, item in doc["paths"].items()
        for method, op in item.items()
        if method in _METHODS
    ]


#: Operations whose success is not a 200: a token is created, a re-plan job accepted.
_SUCCESS = {
    ("/api/v1/tokens", "post"): "201", ("/api/v1/planner/plan", "post"): "202",
    ("/api/v1/silences", "post"): "201", ("/api/v1/webhooks", "post"): "201",
    ("/api/v1/webhook-deliveries/{delivery_id}/replay", "post"): "202",
    ("/api/v1/simulations", "post"): "202",
}
#: Operations that answer a stream of server-sent events, not a JSON document.
_STREAMS = {("/api/v1/alerts/stream", "get")}


def test_every_api_route_declares_a_200_schema(client: TestClient) -> None:
    """Each operation under /api/v1 and /healthz documents its success body (200, or the
    201/202 of _SUCCESS, and no other 2xx) as a non-empty JSON schema (a model with
    properties, or a union of models)."""
    doc = client.get("/openapi.json").json()
    ops = [(p, m, op) for p, m, op in _operations(doc) if p.startswith(("/api/v1/", "/healthz"))]
    declared = {(p, m.lower()) for (m, p) in route_roles(create_api(cast(ApiDeps, None))) if p != "/"}
    assert {(p, m) for p, m, _ in ops} == declared
    for path, method, op in ops:
        success = _SUCCESS.get((path, method), "200")
        assert [c for c in op["responses"] if c.startswith("2")] == [success], (method, path)
        if (path, method) in _STREAMS:
            assert "text/event-stream" in op["responses"][success]["content"], (method, path)
            continue
        schema = op["responses"][success]["content"]["application/json"]["schema"]
        assert schema, (method, path)
        body = _resolve(doc, schema)
        assert body.get("properties") or body.get("anyOf"), (method, path, body)


def test_the_dashboard_is_served_but_not_in_the_schema(client: TestClient) -> None:
    """GET / answers the dashboard's HTML and is left out of the OpenAPI document."""
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "<title>Battery fleet twin</title>" in r.text
    assert "/" not in client.get("/openapi.json").json()["paths"]


def test_the_document_keeps_the_api_title_and_version(client: TestClient) -> None:
    """Title, version and description are those clients have known."""
    info = client.get("/openapi.json").json()["info"]
    assert info["title"] == "Battery fleet twin API" and info["version"] == "1"
    assert "swappable batteries" in info["description"]


def test_error_statuses_are_documented_with_their_body(client: TestClient) -> None:
    """404, 409 and 503 answers are declared with the {"detail": str} body they have."""
    doc = client.get("/openapi.json").json()
    transition = doc["paths"]["/api/v1/work-orders/{order_id}/transition"]["post"]["responses"]
    for status in ("404", "409", "503", "422"):
        assert status in transition
    body = _resolve(doc, transition["404"]["content"]["application/json"]["schema"])
    assert body["properties"]["detail"]["type"] == "string"
    assert "503" in doc["paths"]["/api/v1/planner/queue"]["get"]["responses"]


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/fleet/top?by=colour",
        "/api/v1/fleet/top?filter=soc_pct:lt",
        "/api/v1/fleet/groups?group_by=colour",
        "/api/v1/fleet/groups?fields=soc_pct,colour",
        "/api/v1/fleet/groups?filter=nonsense",
        "/api/v1/batteries/bat-a/telemetry?from=yesterday",
        "/api/v1/batteries/bat-a/telemetry?from=2026-01-01T00:00:00",
        "/api/v1/batteries/bat-a/telemetry?from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z",
        "/api/v1/fleet/top?n=0",
    ],
)
def test_every_422_has_the_declared_validation_error_shape(client: TestClient, path: str) -> None:
    """A bad parameter, whether FastAPI or the route refuses it, answers 422 with
    ``detail`` a list of {loc: list, msg: str, type: str}, as the document declares."""
    r = client.get(path)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, list) and detail
    for error in detail:
        assert isinstance(error["loc"], list) and isinstance(error["msg"], str)
        assert isinstance(error["type"], str)


def test_a_stopped_service_is_a_503_with_its_reason(fakes: Fakes) -> None:
    """A route whose planner is not running answers 503 with the message operators know."""
    fakes.planner.running = False
    with as_role(fakes, Role.FLEET_MANAGER) as client:
        r = client.get("/api/v1/planner/roster")
    assert r.status_code == 503
    assert r.json() == {
        "detail": "The planner is not running (needs [planner] enabled and the models)."
    }


def test_deps_refuse_a_history_cap_below_one(fakes: Fakes) -> None:
    """ApiDeps checks its one number: at least one history row per request."""
    with pytest.raises(ValueError, match="max_history_rows >= 1, got 0"):
        ApiDeps(fakes.fleet, fakes.planner, fakes.bridges, fakes.models, fakes.stores, 0)


def test_importing_the_app_loads_no_ray() -> None:
    """serve.http (the app and every router) imports in a fresh interpreter without Ray."""
    code = "import sys, json, serve.http.app; print(json.dumps('ray' in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) is False

"""Tests for :mod:`serve.http.models`: registry reads, live status, alerts and serving changes.

The fake registry has ``health`` v1 (production) and v2; its deployment reports a major
drift alert on ``age_days``. Every route is for ``ops`` tokens (``ops_client``, subject
``ops-1``); each serving change is attributed to the token's subject.
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from contracts.access import Role
from models.predictors import predictor
from models.served_model import ServedModel
from serve.http.models import LiveModelStatus

from .conftest import Fakes, as_role


def test_the_live_status_model_reads_what_a_replica_reports() -> None:
    """LiveModelStatus validates ServedModel.status() as it is, so the API and the replicas
    agree on the status fields."""
    status = LiveModelStatus.model_validate(ServedModel("health", predictor("health")).status())
    assert status.name == "health" and status.production_version is None


def test_models_lists_registered_and_deployed_models(fakes: Fakes, ops_client: TestClient) -> None:
    """Every model registered or deployed is listed with its serving versions and live status."""
    fakes.models.statuses["demand"] = RuntimeError("replica down")
    models = {m["name"]: m for m in ops_client.get("/api/v1/models").json()["models"]}
    assert sorted(models) == ["demand", "health"]
    assert models["health"]["serving"]["production_version"] == 1
    assert models["health"]["live"]["drift"]["1"]["psi"] == {"age_days": 1.7, "efc": None}
    assert models["demand"]["serving"] is None
    assert models["demand"]["live"] == {"error": "RuntimeError: replica down"}


def test_alerts_flatten_every_drifting_feature(fakes: Fakes, ops_client: TestClient) -> None:
    """/models/alerts lists one row per (model, version, feature) alert; a model whose
    replica cannot answer has none (and is not an error)."""
    fakes.models.statuses["demand"] = RuntimeError("replica down")
    alerts = ops_client.get("/api/v1/models/alerts").json()["alerts"]
    assert alerts == [{"model": "health", "version": 1, "feature": "age_days", "psi": 1.7, "level": "major"}]


def test_one_model_has_versions_events_and_live_status(ops_client: TestClient) -> None:
    """/models/{name} answers every version, the audit trail and the live status."""
    body = ops_client.get("/api/v1/models/health").json()
    assert [v["version"] for v in body["versions"]] == [1, 2]
    assert body["versions"][0]["stage"] == "production" and body["versions"][1]["metrics"] == {"val_mae": 0.06}
    assert body["events"] == [{"version": 1, "action": "promoted", "actor": "it", "at_s": body["events"][0]["at_s"], "detail": {"first": True}}]
    assert body["live"]["production_version"] == 1


def test_an_unknown_model_is_a_404(ops_client: TestClient) -> None:
    """A model name nobody registered is a 404 naming it, not a 500."""
    r = ops_client.get("/api/v1/models/nope")
    assert r.status_code == 404 and "nope" in r.json()["detail"]


def test_promote_answers_the_new_serving_config(fakes: Fakes, ops_client: TestClient) -> None:
    """Promoting v2 answers the serving config with v2 in production, attributed to the
    token's subject (the body names no actor)."""
    r = ops_client.post("/api/v1/models/health/promote", json={"version": 2})
    assert r.status_code == 200, r.text
    assert r.json() == {
        "production_version": 2, "candidate_version": None, "candidate_fraction": 0.0,
        "updated_at_s": r.json()["updated_at_s"], "updated_by": "ops-1",
    }  # fmt: skip
    assert fakes.stores.models.configs["health"].updated_by == "ops-1"


def test_ab_split_starts_and_stops(ops_client: TestClient) -> None:
    """POST /ab puts a candidate on a share of the batteries; DELETE /ab (no query, no
    body) ends the split; the audit trail attributes both to the token's subject."""
    r = ops_client.post("/api/v1/models/health/ab", json={"candidate_version": 2, "fraction": 0.25})
    assert r.status_code == 200 and r.json()["candidate_version"] == 2 and r.json()["candidate_fraction"] == 0.25
    assert r.json()["updated_by"] == "ops-1"
    r = ops_client.delete("/api/v1/models/health/ab")
    assert r.status_code == 200 and r.json()["candidate_version"] is None
    assert r.json()["updated_by"] == "ops-1"
    events = ops_client.get("/api/v1/models/health").json()["events"]
    assert [(e["action"], e["version"], e["actor"]) for e in events[1:]] == [
        ("ab_started", 2, "ops-1"),
        ("ab_stopped", 2, "ops-1"),
    ]


def test_rollback_takes_no_body_and_is_attributed(ops_client: TestClient) -> None:
    """After promoting v2, POST /rollback with no body returns to v1; both changes are in
    the audit trail under the token's subject."""
    assert ops_client.post("/api/v1/models/health/promote", json={"version": 2}).status_code == 200
    r = ops_client.post("/api/v1/models/health/rollback")
    assert r.status_code == 200, r.text
    assert r.json()["production_version"] == 1 and r.json()["updated_by"] == "ops-1"
    events = ops_client.get("/api/v1/models/health").json()["events"]
    assert [(e["action"], e["version"], e["actor"]) for e in events] == [
        ("promoted", 1, "it"),
        ("promoted", 2, "ops-1"),
        ("rolled_back", 1, "ops-1"),
    ]


def test_changes_are_attributed_to_another_ops_token_subject(fakes: Fakes) -> None:
    """The actor is whoever holds the token: a second ops token's subject is recorded."""
    with as_role(fakes, Role.OPS, "ops-night-shift") as c:
        r = c.post("/api/v1/models/health/promote", json={"version": 2})
    assert r.status_code == 200 and r.json()["updated_by"] == "ops-night-shift"
    assert fakes.stores.models.configs["health"].updated_by == "ops-night-shift"


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    [
        ("post", "/api/v1/models/health/promote", {"json": {"version": 999}}, 404),
        ("post", "/api/v1/models/nope/promote", {"json": {"version": 1}}, 404),
        ("post", "/api/v1/models/health/rollback", {}, 409),
        ("post", "/api/v1/models/nope/rollback", {}, 404),
        ("delete", "/api/v1/models/health/ab", {}, 409),
        ("post", "/api/v1/models/health/ab", {"json": {"candidate_version": 2, "fraction": 2.0}}, 422),
        ("post", "/api/v1/models/health/promote", {"json": {"version": 0}}, 422),
        ("post", "/api/v1/models/health/promote", {"json": {"version": 1, "extra": 1}}, 422),
        # Bodies no longer name an actor: a client that still sends one is told so.
        ("post", "/api/v1/models/health/promote", {"json": {"version": 1, "actor": "x"}}, 422),
        ("post", "/api/v1/models/health/ab", {"json": {"candidate_version": 2, "fraction": 0.5, "actor": "x"}}, 422),
    ],
)
def test_registry_refusals_map_to_clear_statuses(
    ops_client: TestClient, method: str, path: str, kwargs: dict[str, object], status: int
) -> None:
    """Unknown model or version → 404, a change the serving state forbids → 409, a bad
    argument or an unknown body field (``actor`` included) → 422."""
    r = ops_client.request(method.upper(), path, **kwargs)  # type: ignore[arg-type]
    assert r.status_code == status, r.text
    if status == 422:
        assert isinstance(r.json()["detail"], list)

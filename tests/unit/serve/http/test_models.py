"""Tests for :mod:`serve.http.models`: registry reads, live status, alerts and serving changes.

The fake registry has ``health`` v1 (production) and v2; its deployment reports a major
drift alert on ``age_days``.
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from models.predictors import predictor
from models.served_model import ServedModel
from serve.http.models import LiveModelStatus

from .conftest import Fakes


def test_the_live_status_model_reads_what_a_replica_reports() -> None:
    """LiveModelStatus validates ServedModel.status() as it is, so the API and the replicas
    agree on the status fields."""
    status = LiveModelStatus.model_validate(ServedModel("health", predictor("health")).status())
    assert status.name == "health" and status.production_version is None


def test_models_lists_registered_and_deployed_models(fakes: Fakes, client: TestClient) -> None:
    """Every model registered or deployed is listed with its serving versions and live status."""
    fakes.models.statuses["demand"] = RuntimeError("replica down")
    models = {m["name"]: m for m in client.get("/api/v1/models").json()["models"]}
    assert sorted(models) == ["demand", "health"]
    assert models["health"]["serving"]["production_version"] == 1
    assert models["health"]["live"]["drift"]["1"]["psi"] == {"age_days": 1.7, "efc": None}
    assert models["demand"]["serving"] is None
    assert models["demand"]["live"] == {"error": "RuntimeError: replica down"}


def test_alerts_flatten_every_drifting_feature(fakes: Fakes, client: TestClient) -> None:
    """/models/alerts lists one row per (model, version, feature) alert; a model whose
    replica cannot answer has none (and is not an error)."""
    fakes.models.statuses["demand"] = RuntimeError("replica down")
    alerts = client.get("/api/v1/models/alerts").json()["alerts"]
    assert alerts == [{"model": "health", "version": 1, "feature": "age_days", "psi": 1.7, "level": "major"}]


def test_one_model_has_versions_events_and_live_status(client: TestClient) -> None:
    """/models/{name} answers every version, the audit trail and the live status."""
    body = client.get("/api/v1/models/health").json()
    assert [v["version"] for v in body["versions"]] == [1, 2]
    assert body["versions"][0]["stage"] == "production" and body["versions"][1]["metrics"] == {"val_mae": 0.06}
    assert body["events"] == [{"version": 1, "action": "promoted", "actor": "it", "at_s": body["events"][0]["at_s"], "detail": {"first": True}}]
    assert body["live"]["production_version"] == 1


def test_an_unknown_model_is_a_404(client: TestClient) -> None:
    """A model name nobody registered is a 404 naming it, not a 500."""
    r = client.get("/api/v1/models/nope")
    assert r.status_code == 404 and "nope" in r.json()["detail"]


def test_promote_answers_the_new_serving_config(fakes: Fakes, client: TestClient) -> None:
    """Promoting v2 answers the serving config with v2 in production."""
    r = client.post("/api/v1/models/health/promote", json={"version": 2, "actor": "ops"})
    assert r.status_code == 200, r.text
    assert r.json() == {
        "production_version": 2, "candidate_version": None, "candidate_fraction": 0.0,
        "updated_at_s": r.json()["updated_at_s"], "updated_by": "ops",
    }  # fmt: skip


def test_ab_split_starts_and_stops(client: TestClient) -> None:
    """POST /ab puts a candidate on a share of the batteries; DELETE /ab ends the split."""
    r = client.post("/api/v1/models/health/ab", json={"candidate_version": 2, "fraction": 0.25, "actor": "ops"})
    assert r.status_code == 200 and r.json()["candidate_version"] == 2 and r.json()["candidate_fraction"] == 0.25
    r = client.delete("/api/v1/models/health/ab", params={"actor": "ops"})
    assert r.status_code == 200 and r.json()["candidate_version"] is None


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    [
        ("post", "/api/v1/models/health/promote", {"json": {"version": 999, "actor": "x"}}, 404),
        ("post", "/api/v1/models/nope/promote", {"json": {"version": 1, "actor": "x"}}, 404),
        ("post", "/api/v1/models/health/rollback", {"json": {"actor": "x"}}, 409),
        ("delete", "/api/v1/models/health/ab", {"params": {"actor": "x"}}, 409),
        ("delete", "/api/v1/models/health/ab", {"params": {"actor": " "}}, 422),
        ("post", "/api/v1/models/health/ab", {"json": {"candidate_version": 2, "fraction": 2.0, "actor": "x"}}, 422),
        ("post", "/api/v1/models/health/promote", {"json": {"version": 1, "actor": "x", "extra": 1}}, 422),
    ],
)
def test_registry_refusals_map_to_clear_statuses(
    client: TestClient, method: str, path: str, kwargs: dict[str, object], status: int
) -> None:
    """Unknown model or version → 404, a change the serving state forbids → 409, a bad
    argument or an unknown body field → 422."""
    r = client.request(method.upper(), path, **kwargs)  # type: ignore[arg-type]
    assert r.status_code == status, r.text
    if status == 422:
        assert isinstance(r.json()["detail"], list)

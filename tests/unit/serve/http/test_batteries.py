"""Tests for :mod:`serve.http.batteries`: a twin's state, window and telemetry history."""

from __future__ import annotations

import dataclasses

import pytest
from fastapi.testclient import TestClient

from contracts.access import Role
from contracts.samples import SAMPLE_FIELDS
from serve.http import create_api
from serve.http.batteries import TwinState
from twins.battery_twin import TwinSnapshot

from ...twins.factories import T0_S
from .conftest import Fakes, bearer


def test_the_state_model_lists_every_snapshot_field() -> None:
    """TwinState has exactly the fields of TwinSnapshot, so no twin field goes unanswered
    (a field added to the snapshot fails here, not as a 500 on the API)."""
    assert set(TwinState.model_fields) == {f.name for f in dataclasses.fields(TwinSnapshot)}


def test_a_twin_answers_its_state_with_unknowns_as_null(client: TestClient) -> None:
    """GET /batteries/{id} answers the twin's state; readings it never got are null."""
    r = client.get("/api/v1/batteries/bat-a")
    assert r.status_code == 200
    twin = r.json()
    assert twin["battery_id"] == "bat-a" and twin["vehicle_id"] == "veh-a"
    assert twin["soc_pct"] == pytest.approx(11.0) and twin["samples_total"] == 2
    assert twin["cell_min_v"] is None and twin["capacity_est_ah"] is None
    assert isinstance(twin["anomaly_flags"], list)


def test_an_unknown_battery_is_a_404_naming_it(client: TestClient) -> None:
    """A battery no shard has is a 404 whose message names it; a malformed id is a 422."""
    r = client.get("/api/v1/batteries/nobody-here")
    assert r.status_code == 404 and "nobody-here" in r.json()["detail"]
    assert client.get("/api/v1/batteries/nobody-here/window").status_code == 404
    assert client.get("/api/v1/batteries/bad id!").status_code == 422


def test_the_window_has_one_list_per_sample_column(client: TestClient) -> None:
    """The window answers every sample column, oldest first, NaN as null."""
    body = client.get("/api/v1/batteries/bat-a/window").json()
    assert body["battery_id"] == "bat-a" and set(body["samples"]) == set(SAMPLE_FIELDS)
    assert body["samples"]["ts"] == [T0_S, T0_S + 1.0]
    assert body["samples"]["cell_max_v"] == [None, None]


def test_telemetry_passes_the_range_and_caps_the_rows(fakes: Fakes) -> None:
    """from/to in ISO 8601 or Unix seconds reach the store as Unix seconds, and ``limit`` is
    capped at the deployment's max_history_rows."""
    fakes.stores.telemetry.rows["bat-a"] = {
        "ts": [T0_S, T0_S + 1, T0_S + 2], "vehicle_id": ["veh-a"] * 3, "seq": [0, 0, 1],
        "soc_pct": [12.0, float("nan"), 10.0],
    }  # fmt: skip
    token = fakes.stores.tokens_.issue(Role.FLEET_MANAGER, "manager-1")
    with TestClient(create_api(fakes.deps(max_history_rows=2)), headers=bearer(token)) as client:
        r = client.get(
            "/api/v1/batteries/bat-a/telemetry",
            # 2027-01-15T08:00:00Z is T0_S.
            params={"from": "2027-01-15T08:00:00Z", "to": str(T0_S + 10), "limit": 50},
        )
    assert r.status_code == 200, r.text
    body = r.json()
    assert fakes.stores.telemetry.calls == [("bat-a", T0_S, T0_S + 10, 2)]
    assert body["count"] == 2 and body["columns"]["seq"] == [0, 1]
    assert body["columns"]["soc_pct"] == [None, 10.0]


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ({"from": "yesterday"}, "ISO 8601"),
        ({"from": "2026-01-01T00:00:00"}, "timezone"),
        ({"from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, "from <= to"),
    ],
)
def test_telemetry_refuses_bad_times(client: TestClient, params: dict[str, str], says: str) -> None:
    """An unreadable time, one without a timezone, or an inverted range is a 422 saying so."""
    r = client.get("/api/v1/batteries/bat-a/telemetry", params=params)
    assert r.status_code == 422 and says in r.json()["detail"][0]["msg"]

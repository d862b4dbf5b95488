"""Tests for :mod:`serve.http.fleet`: summary, top-N, groups and anomaly events.

The fleet behind the app is a real three-twin table (:func:`.fakes.fleet_table`): bat-a at
11 % SoC, bat-b at 50 °C, bat-c full.
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from twins.clock import ManualClock
from twins.scoring import AnomalyEvent
from twins.twin_table import TwinTable, TwinTableParams

from .conftest import Fakes
from .fakes import NOW_S


def test_summary_counts_the_fleet_by_condition(client: TestClient) -> None:
    """The summary counts every twin, the low-SoC and hot ones, and the shards."""
    s = client.get("/api/v1/fleet/summary").json()
    assert s["batteries"] == 3 and s["shards"] == 1 and s["charging"] == 0
    assert s["low_soc_lt_20pct"] == 1 and s["hot_gt_45c"] == 1
    assert s["overall"]["count"] == 3
    assert s["overall"]["soc_pct"]["mean"] == pytest.approx((11.0 + 60.0 + 95.0) / 3)
    assert sum(g["count"] for g in s["by_health_band"].values()) == 3


def test_a_field_nobody_has_is_null_not_nan(client: TestClient) -> None:
    """No twin has a capacity estimate yet: its mean is null in JSON, not NaN."""
    overall = client.get("/api/v1/fleet/summary").json()["overall"]
    assert overall["soh_pct_est"] == {"mean": None, "min": None, "max": None, "n": 0}


def test_summary_of_an_empty_fleet_is_zeros(fakes: Fakes, client: TestClient) -> None:
    """With no twins the summary answers zero counts and an empty overall group."""
    fakes.fleet.table = TwinTable(TwinTableParams(window_samples=8), ManualClock(NOW_S))
    s = client.get("/api/v1/fleet/summary").json()
    assert s["batteries"] == 0 and s["overall"] == {"count": 0} and s["by_health_band"] == {}


def test_top_orders_by_the_field_and_applies_filters(client: TestClient) -> None:
    """top?by=soc_pct&order=asc ranks the emptiest first; filters narrow the candidates."""
    top = client.get("/api/v1/fleet/top", params={"by": "soc_pct", "order": "asc", "n": 2}).json()
    assert top["by"] == "soc_pct" and top["order"] == "asc"
    assert [r["battery_id"] for r in top["rows"]] == ["bat-a", "bat-b"]
    assert top["rows"][0]["value"] == pytest.approx(11.0) and top["rows"][0]["vehicle_id"] == "veh-a"
    hot = client.get("/api/v1/fleet/top", params={"by": "temp_c", "order": "desc", "filter": "temp_c:gt:45"})
    assert [r["battery_id"] for r in hot.json()["rows"]] == ["bat-b"]


def test_top_refuses_an_unknown_field_or_a_bad_filter(client: TestClient) -> None:
    """An unknown ``by`` or a filter that is not field:op:value is a 422 naming the parameter."""
    r = client.get("/api/v1/fleet/top", params={"by": "colour"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "by"]
    assert "colour" in r.json()["detail"][0]["msg"]
    r = client.get("/api/v1/fleet/top", params={"by": "soc_pct", "filter": "soc_pct:lt"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "filter"]
    assert "field:op:value" in r.json()["detail"][0]["msg"]


def test_groups_aggregate_the_requested_fields(client: TestClient) -> None:
    """groups?group_by=vehicle_id&fields=soc_pct gives one group per vehicle with SoC stats."""
    r = client.get("/api/v1/fleet/groups", params={"group_by": "vehicle_id", "fields": "soc_pct"})
    body = r.json()
    assert body["group_by"] == "vehicle_id" and sorted(body["groups"]) == ["veh-a", "veh-b", "veh-c"]
    assert body["groups"]["veh-a"] == {"count": 1, "soc_pct": {"mean": 11.0, "min": 11.0, "max": 11.0, "n": 1}}


@pytest.mark.parametrize(
    ("params", "loc"),
    [
        ({"group_by": "colour"}, ["query", "group_by"]),
        ({"fields": "soc_pct,colour"}, ["query", "fields"]),
        ({"filter": "health_band:lt:good"}, ["query", "filter"]),
    ],
)
def test_groups_refuse_bad_parameters(client: TestClient, params: dict[str, str], loc: list[str]) -> None:
    """An unknown group, field or filter is a 422 pointing at the parameter."""
    r = client.get("/api/v1/fleet/groups", params=params)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == loc


def test_anomalies_are_the_newest_across_shards(fakes: Fakes, client: TestClient) -> None:
    """Events from every shard come back newest first, at most ``limit``; a NaN score is null."""
    fakes.fleet.events = [
        AnomalyEvent("bat-a", "temp_rise", 0.9, NOW_S - 30),
        AnomalyEvent("bat-b", "voltage_sag", float("nan"), NOW_S - 10),
        AnomalyEvent("bat-c", "cell_imbalance", 0.4, NOW_S - 20),
    ]
    events = client.get("/api/v1/anomalies", params={"limit": 2}).json()["events"]
    assert [e["battery_id"] for e in events] == ["bat-b", "bat-c"]
    assert events[0] == {"battery_id": "bat-b", "kind": "voltage_sag", "score": None, "at_s": NOW_S - 10}

"""Tests for :mod:`serve.http.battery_history` and the per-battery filters the battery page uses.

A battery's health history (rows of ``health_history``), its degradation forecast band, and
the ``battery_id`` filters of the anomaly and work-order lists; the technician's route with
the battery facts of each stop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math

import pytest
from fastapi.testclient import TestClient

from contracts.access import Role
from contracts.anomaly_kinds import AnomalyKind
from contracts.candidates import Candidate
from contracts.health import HealthPoint
from planners.job_queue import JobQueue
from serve.http.battery_history import forecast_of
from twins.battery_twin import TwinSnapshot
from twins.scoring import AnomalyEvent

from .conftest import Fakes, as_role
from .fakes import NOW_S, plan_record


def _snapshot(fakes: Fakes, **changes: object) -> TwinSnapshot:
    snap = asyncio.run(fakes.fleet.get("bat-c"))
    assert snap is not None
    return dataclasses.replace(snap, **changes)  # type: ignore[arg-type]


def _band(p10: float | None, p50: float | None, p90: float | None) -> dict[str, float | None]:
    return {"p10": p10, "p50": p50, "p90": p90}


def test_health_history_answers_rows_oldest_first_in_the_range(fakes: Fakes, client: TestClient) -> None:
    """The battery's rows come back oldest first with their time as ``ts``; ``from``/``to``
    bound them and ``limit`` keeps the newest."""
    fakes.stores.health.points["bat-a"] = [
        HealthPoint(NOW_S + 3600.0 * k, 95.0 - k, 90.0 - 2 * k, 10.0 + k, 1) for k in range(5)
    ]
    body = client.get("/api/v1/batteries/bat-a/health-history").json()
    assert body["battery_id"] == "bat-a" and body["count"] == 5
    assert [p["ts"] for p in body["points"]] == [NOW_S + 3600.0 * k for k in range(5)]
    assert body["points"][0] == {
        "ts": NOW_S, "soh_pct": 95.0, "health_score": 90.0, "efc": 10.0, "model_version": 1,
    }  # fmt: skip
    ranged = client.get(
        "/api/v1/batteries/bat-a/health-history",
        params={"from": NOW_S + 3600.0, "to": NOW_S + 3 * 3600.0, "limit": 2},
    ).json()
    assert [p["soh_pct"] for p in ranged["points"]] == [93.0, 92.0]
    assert client.get("/api/v1/batteries/nobody/health-history").json()["points"] == []


def test_health_history_refuses_a_range_that_ends_before_it_starts(client: TestClient) -> None:
    """to < from is a 422 naming ``to``; a bad time is a 422 too."""
    r = client.get("/api/v1/batteries/bat-a/health-history", params={"from": 100, "to": 50})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "to"]
    assert client.get("/api/v1/batteries/bat-a/health-history", params={"from": "soon"}).status_code == 422


def test_ops_reads_health_history_and_forecast_but_a_technician_may_not(fakes: Fakes) -> None:
    """Both routes are for fleet managers and ops; a technician's token gets 403."""
    with as_role(fakes, Role.OPS) as ops, as_role(fakes, Role.TECHNICIAN, "tech-01") as tech:
        assert ops.get("/api/v1/batteries/bat-a/health-history").status_code == 200
        assert ops.get("/api/v1/batteries/bat-a/forecast").status_code == 200
        assert tech.get("/api/v1/batteries/bat-a/forecast").status_code == 403


def test_the_forecast_before_the_lstm_stepped_has_no_band(client: TestClient) -> None:
    """A twin whose LSTM never stepped answers its quantiles as null; an unknown SOH leaves
    ``now`` null too."""
    body = client.get("/api/v1/batteries/bat-c/forecast").json()
    assert body["battery_id"] == "bat-c" and body["lstm_steps"] == 0
    assert body["p10"] is None and body["p50"] is None and body["p90"] is None
    assert body["now"] is None and body["thresholds_pct"] == [80.0, 70.0]
    assert client.get("/api/v1/batteries/nobody/forecast").status_code == 404


def test_the_forecast_says_how_old_the_scores_are(fakes: Fakes, client: TestClient) -> None:
    """The forecast answers the twin's score_age_s and scores_stale: a degradation score
    kept 40 s while the model is down is stale."""
    t = fakes.fleet.table
    c = t.index["bat-c"]
    t.health_scored_at_s[c] = NOW_S - 1.0
    t.degradation_scored_at_s[c] = t.scored_at_s[c] = NOW_S - 40.0
    body = client.get("/api/v1/batteries/bat-c/forecast").json()
    assert body["score_age_s"] == {"health": 1.0, "anomaly": None, "degradation": 40.0, "priority": None}
    assert body["scores_stale"] is True and body["scored_at_s"] == NOW_S - 40.0


def test_the_forecast_joins_each_quantile_from_now_to_80_and_70_percent(fakes: Fakes) -> None:
    """Each quantile is now, then (cycles now + remaining cycles to 80 %, 80), then the same
    to 70 %: p10 reaches them soonest."""
    snap = _snapshot(
        fakes, efc=120.0, soh_pct_est=91.0, soh_model_pct=90.0, lstm_steps=4,
        rul_cycles_to_80pct=_band(300.0, 400.0, 520.0), rul_cycles_to_70pct=_band(600.0, 800.0, 1000.0),
    )  # fmt: skip
    f = forecast_of(snap.to_dict())
    assert f.now is not None and (f.now.cycles, f.now.soh_pct) == (120.0, 91.0)
    assert f.p10 is not None and f.p50 is not None and f.p90 is not None
    assert [(p.cycles, p.soh_pct) for p in f.p10] == [(120.0, 91.0), (420.0, 80.0), (720.0, 70.0)]
    assert [p.cycles for p in f.p50] == [120.0, 520.0, 920.0]
    assert [p.cycles for p in f.p90] == [120.0, 640.0, 1120.0]


def test_the_forecast_leaves_out_levels_passed_or_never_reached(fakes: Fakes) -> None:
    """A battery already below 80 % gets only the 70 % point; a quantile whose curve stopped
    falling (no crossing: null) has no point for that level."""
    snap = _snapshot(
        fakes, efc=800.0, soh_pct_est=76.0, lstm_steps=9,
        rul_cycles_to_80pct=_band(0.0, 0.0, 0.0), rul_cycles_to_70pct=_band(150.0, 260.0, None),
    )  # fmt: skip
    f = forecast_of(snap.to_dict())
    assert f.p10 is not None and f.p90 is not None
    assert [(p.cycles, p.soh_pct) for p in f.p10] == [(800.0, 76.0), (950.0, 70.0)]
    assert [(p.cycles, p.soh_pct) for p in f.p90] == [(800.0, 76.0)]


def test_anomalies_of_one_battery(fakes: Fakes, client: TestClient) -> None:
    """``battery_id`` keeps that battery's events only, newest first."""
    fakes.fleet.events = [
        AnomalyEvent("bat-a", "temp_rise", 3.0, NOW_S),
        AnomalyEvent("bat-b", "voltage_sag", 2.0, NOW_S + 1),
        AnomalyEvent("bat-a", "cell_imbalance", 1.5, NOW_S + 2),
    ]
    events = client.get("/api/v1/anomalies", params={"battery_id": "bat-a"}).json()["events"]
    assert [e["kind"] for e in events] == ["cell_imbalance", "temp_rise"]
    assert len(client.get("/api/v1/anomalies").json()["events"]) == 3
    assert client.get("/api/v1/anomalies", params={"battery_id": "bad id"}).status_code == 422


def test_work_orders_of_one_battery(fakes: Fakes, client: TestClient) -> None:
    """``battery_id`` keeps that battery's orders only."""
    other = dataclasses.replace(fakes.stores.orders.orders[2], id=3, battery_id="bat-b")
    fakes.stores.orders.orders[3] = other
    ids = [o["id"] for o in client.get("/api/v1/work-orders", params={"battery_id": "bat-a"}).json()["orders"]]
    assert ids == [1, 2]
    ids = [o["id"] for o in client.get("/api/v1/work-orders", params={"battery_id": "bat-b"}).json()["orders"]]
    assert ids == [3]


def test_a_technicians_route_carries_each_batterys_facts(fakes: Fakes) -> None:
    """Each stop of a route says the battery's SoC, health score and anomaly flags as the
    planner queued it, so a technician needs no battery read."""
    rec = plan_record()
    stop = dataclasses.replace(
        rec.routes[0].stops[0], soc_pct=11.0, health_score=42.5, anomaly_flags=("temp_rise",)
    )
    route = dataclasses.replace(rec.routes[0], stops=(stop,))
    fakes.planner.plans.append(dataclasses.replace(rec, routes=(route,)))
    with as_role(fakes, Role.TECHNICIAN, "tech-01") as tech:
        body = tech.get("/api/v1/technicians/tech-01/route").json()
    got = body["stops"][0]
    assert (got["soc_pct"], got["health_score"], got["anomaly_flags"]) == (11.0, 42.5, ["temp_rise"])
    assert got["vehicle_id"] == "veh-a" and got["lat"] == pytest.approx(52.52)


def test_a_queued_job_keeps_the_facts_its_shard_reported() -> None:
    """The job queue copies SoC, health score and anomaly flag names from the candidate
    (unknown values as None), which the planner's stops carry to the technician."""
    cand = Candidate(
        battery_id="bat-x", vehicle_id="veh-x", lat=52.5, lon=13.4, soc_pct=9.0, priority=80.0,
        lost_rides_6h=2.0, hours_to_empty=1.0, health_score=math.nan,
        anomaly_flags=int(AnomalyKind.TEMP_RISE), charging=False,
    )  # fmt: skip
    job = JobQueue().job_for(cand, NOW_S)
    assert job is not None
    assert (job.soc_pct, job.health_score, job.anomaly_flags) == (9.0, None, ("temp_rise",))

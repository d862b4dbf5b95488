"""The what-if routes over an in-memory job store: start (preset or scenario), caps and
their 422s naming the field, list, detail with the comparison, cancel, roles, the rate
limit, a full queue and no simulator."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from contracts.access import Role
from contracts.simulations import SimulationState
from serve.http import create_api
from serve.http.auth import RateLimiter
from serve.http.simulations import MAX_DAYS, MAX_SEEDS, MAX_VEHICLES
from sim.presets import load_preset, preset_names
from sim.scenario import Scenario

from .conftest import Fakes, as_role, bearer
from .fake_simulations import MemorySimulations, done_job


def _memory(fakes: Fakes) -> MemorySimulations:
    assert isinstance(fakes.simulations, MemorySimulations)
    return fakes.simulations


def _scenario_body(**changes: Any) -> dict[str, Any]:
    """A complete scenario as a request sends it: the baseline preset's values, renamed."""
    data = load_preset("baseline").model_dump(mode="json")
    return {**data, "name": "my_case", **changes}


def _loc(r: Any) -> list[list[Any]]:
    assert r.status_code == 422, r.text
    return [e["loc"] for e in r.json()["detail"]]


def _msg(r: Any) -> str:
    return " ".join(e["msg"] for e in r.json()["detail"])


def test_a_preset_is_queued_with_the_baseline_on_the_same_seeds(
    fakes: Fakes, client: TestClient
) -> None:
    """POST with a preset and seeds: 202, a Location to poll, the job attributed to the
    token; the store got the baseline first and the preset, both on the request's seeds."""
    r = client.post("/api/v1/simulations", json={"preset": "heatwave", "seeds": [4, 5]})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["state"] == "queued" and job["submitted_by"] == "manager-1"
    assert r.headers["location"] == job["status_url"] == f"/api/v1/simulations/{job['job_id']}"
    ((scenarios, baseline, who),) = _memory(fakes).submitted
    assert (
        [s.name for s in scenarios] == ["baseline", "heatwave"]
        and baseline == "baseline"
        and who == "manager-1"
    )
    assert [s.seeds for s in scenarios] == [[4, 5], [4, 5]]
    assert scenarios[1].weather.temp_offset_c == load_preset("heatwave").weather.temp_offset_c


def test_without_comparison_or_for_the_baseline_itself_only_one_scenario_runs(
    fakes: Fakes, client: TestClient
) -> None:
    assert (
        client.post(
            "/api/v1/simulations", json={"preset": "heatwave", "compare_with_baseline": False}
        ).status_code
        == 202
    )
    assert client.post("/api/v1/simulations", json={"preset": "baseline"}).status_code == 202
    runs = [
        ([s.name for s in sc], base, [s.seeds for s in sc])
        for sc, base, _ in _memory(fakes).submitted
    ]
    assert runs == [(["heatwave"], None, [[1, 2, 3]]), (["baseline"], None, [[1, 2, 3]])]


def test_a_complete_scenario_in_the_body_is_validated_and_queued(
    fakes: Fakes, client: TestClient
) -> None:
    body = _scenario_body(fleet={**_scenario_body()["fleet"], "vehicles": 500}, seeds=[7])
    r = client.post("/api/v1/simulations", json={"scenario": body})
    assert r.status_code == 202, r.text
    ((scenarios, baseline, _),) = _memory(fakes).submitted
    assert baseline == "baseline"
    assert [(s.name, s.seeds) for s in scenarios] == [("baseline", [7]), ("my_case", [7])]
    assert isinstance(scenarios[1], Scenario) and scenarios[1].fleet.vehicles == 500


def test_an_unknown_preset_is_a_422_listing_the_presets(client: TestClient) -> None:
    r = client.post("/api/v1/simulations", json={"preset": "tornado"})
    assert _loc(r) == [["body", "preset"]]
    assert "tornado" in _msg(r) and all(name in _msg(r) for name in preset_names())
    assert _loc(client.post("/api/v1/simulations", json={"preset": "../etc/passwd"})) == [
        ["body", "preset"]
    ]


@pytest.mark.parametrize(
    ("body", "loc", "words"),
    [
        ({}, ["body"], "either 'preset' or 'scenario', got neither"),
        ({"preset": "heatwave", "scenario": {"name": "x"}}, ["body"], "got both"),
        ({"preset": "heatwave", "seeds": [1, 1]}, ["body", "seeds"], "distinct"),
        ({"preset": "heatwave", "seeds": list(range(MAX_SEEDS + 1))}, ["body", "seeds"], "at most 10"),
        ({"preset": "heatwave", "seeds": []}, ["body", "seeds"], "at least 1"),
        ({"preset": "heatwave", "seeds": [-1]}, ["body", "seeds", 0], "greater than or equal to 0"),
        ({"preset": "heatwave", "colour": "red"}, ["body", "colour"], "Extra inputs"),
        ({"scenario": _scenario_body(days=MAX_DAYS + 1)}, ["body", "scenario", "days"], "days: expected at most 14"),
        ({"scenario": _scenario_body(fleet={"vehicles": MAX_VEHICLES + 1})}, ["body", "scenario", "fleet", "vehicles"], "at most 20000"),
        ({"scenario": _scenario_body(seeds=list(range(MAX_SEEDS + 2)))}, ["body", "scenario", "seeds"], "at most 10"),
        ({"scenario": {**_scenario_body(), "base": "baseline.yaml"}}, ["body", "scenario", "base"], "file on the server"),
        ({"scenario": _scenario_body(start={"source": "file", "path": "/etc/passwd"})}, ["body", "scenario", "start", "source"], "server's disk"),
        ({"scenario": _scenario_body(start={"source": "live"})}, ["body", "scenario", "start", "source"], "got 'live'"),
        ({"scenario": _scenario_body(weather={"recorded_csv": "/etc/passwd"})}, ["body", "scenario", "weather", "recorded_csv"], "server's disk"),
        ({"scenario": _scenario_body(name="baseline")}, ["body", "scenario", "name"], "other than 'baseline'"),
    ],
)  # fmt: skip
def test_what_a_request_may_not_ask_is_a_422_naming_the_field(
    fakes: Fakes, client: TestClient, body: dict[str, Any], loc: list[Any], words: str
) -> None:
    r = client.post("/api/v1/simulations", json=body)
    assert _loc(r) == [loc], r.text
    assert words in _msg(r)
    assert _memory(fakes).submitted == []


def test_an_invalid_scenario_is_a_422_with_the_scenarios_own_message(client: TestClient) -> None:
    """ScenarioError's text (every bad key, with what arrived) is the 422's message."""
    r = client.post(
        "/api/v1/simulations",
        json={"scenario": _scenario_body(depots=[], fleet={"vehicles": 0, "colour": 1})},
    )
    assert _loc(r) == [["body", "scenario"]]
    msg = _msg(r)
    assert (
        "scenario: invalid scenario" in msg
        and "depots" in msg
        and "fleet.vehicles" in msg
        and "fleet.colour" in msg
    )


def test_the_list_is_newest_first_and_the_detail_has_the_comparison(
    fakes: Fakes, client: TestClient
) -> None:
    """A finished job's detail has the summary per scenario, one comparison row per KPI with
    its interval, and each run's totals and days with the SOH summarised; the list has the
    jobs newest first without any of that."""
    memory = _memory(fakes)
    done = memory.add(done_job((1, 2, 3)))
    queued = client.post("/api/v1/simulations", json={"preset": "aged_fleet"}).json()
    listed = client.get("/api/v1/simulations").json()["simulations"]
    assert [j["job_id"] for j in listed] == [queued["job_id"], done.job_id]
    assert "comparison" not in listed[1] and listed[1]["progress"]["overall"] == 1.0
    detail = client.get(f"/api/v1/simulations/{done.job_id}").json()
    assert detail["state"] == "done" and detail["scenarios"] == ["baseline", "heatwave"]
    assert detail["summary"]["heatwave"]["rides_served"]["seeds"] == 3
    served = next(d for d in detail["comparison"] if d["kpi"] == "rides_served")
    assert served["mean_difference"] == pytest.approx(100.0) and served["seeds"] == [1, 2, 3]
    assert served["ci95_low"] == pytest.approx(100.0) and served["relative_difference_pct"] > 0
    assert len(detail["runs"]) == 6 and set(detail["runs"][0]["soh_end"]) == {
        "batteries",
        "mean",
        "min",
        "p10",
        "p50",
        "p90",
    }
    assert len(detail["runs"][0]["days"]) == 1 and "rides_served" in detail["runs"][0]["total"]
    assert client.get(f"/api/v1/simulations/{queued['job_id']}").json()["comparison"] == []


def test_a_job_without_a_baseline_has_a_summary_only(fakes: Fakes, client: TestClient) -> None:
    job = _memory(fakes).add(done_job((2,), with_baseline=False))
    detail = client.get(f"/api/v1/simulations/{job.job_id}").json()
    assert (
        detail["baseline"] is None
        and detail["comparison"] == []
        and list(detail["summary"]) == ["heatwave"]
    )


def test_an_unknown_job_is_a_404_and_a_malformed_id_a_422(client: TestClient) -> None:
    r = client.get("/api/v1/simulations/sim-abcdef-99")
    assert r.status_code == 404 and "sim-abcdef-99" in r.json()["detail"]
    assert client.post("/api/v1/simulations/sim-abcdef-99/cancel").status_code == 404
    assert client.get("/api/v1/simulations/anything").status_code == 422


def test_cancel_is_attributed_and_a_finished_job_is_a_409(fakes: Fakes, client: TestClient) -> None:
    job = client.post("/api/v1/simulations", json={"preset": "heatwave"}).json()
    r = client.post(f"/api/v1/simulations/{job['job_id']}/cancel")
    assert (
        r.status_code == 200
        and r.json()["state"] == "cancelled"
        and "manager-1" in r.json()["error"]
    )
    again = client.post(f"/api/v1/simulations/{job['job_id']}/cancel")
    assert again.status_code == 409 and "cancelled already" in again.json()["detail"]
    assert _memory(fakes).jobs[job["job_id"]].state is SimulationState.CANCELLED


def test_presets_list_names_descriptions_and_the_limits(
    client: TestClient, ops_client: TestClient
) -> None:
    body = client.get("/api/v1/simulations/presets").json()
    assert [p["name"] for p in body["presets"]] == preset_names() and body["baseline"] == "baseline"
    heat = next(p for p in body["presets"] if p["name"] == "heatwave")
    assert heat["description"] and heat["vehicles"] > 0 and heat["seeds"]
    assert body["limits"] == {
        "max_vehicles": MAX_VEHICLES,
        "max_days": MAX_DAYS,
        "max_seeds": MAX_SEEDS,
    }
    assert ops_client.get("/api/v1/simulations/presets").status_code == 200


@pytest.mark.parametrize("role", [Role.TECHNICIAN, Role.CUSTOMER])
def test_technicians_and_customers_are_refused(fakes: Fakes, role: Role) -> None:
    with as_role(fakes, role) as c:
        assert c.post("/api/v1/simulations", json={"preset": "heatwave"}).status_code == 403
        assert c.get("/api/v1/simulations").status_code == 403
        assert c.get("/api/v1/simulations/presets").status_code == 403
    assert _memory(fakes).submitted == []


def test_ops_reads_but_neither_starts_nor_cancels(fakes: Fakes, ops_client: TestClient) -> None:
    job = _memory(fakes).add(done_job((1,)))
    assert ops_client.get("/api/v1/simulations").status_code == 200
    assert ops_client.get(f"/api/v1/simulations/{job.job_id}").status_code == 200
    r = ops_client.post("/api/v1/simulations", json={"preset": "heatwave"})
    assert r.status_code == 403 and "fleet_manager" in r.json()["detail"]
    assert ops_client.post(f"/api/v1/simulations/{job.job_id}/cancel").status_code == 403


def test_starting_is_rate_limited_per_token(fakes: Fakes) -> None:
    """Two at once, then 4 a minute: the third in a row is a 429 with Retry-After."""
    now = [0.0]
    app = create_api(fakes.deps(), rate_limiter=RateLimiter(clock=lambda: now[0]))
    token = fakes.stores.tokens_.issue(Role.FLEET_MANAGER, "manager-1")
    with TestClient(app, headers=bearer(token)) as c:
        codes = [
            c.post("/api/v1/simulations", json={"preset": "heatwave"}).status_code for _ in range(3)
        ]
        assert codes == [202, 202, 429]
        r = c.post("/api/v1/simulations", json={"preset": "heatwave"})
        assert r.headers["retry-after"] == "15" and "what-if" in r.json()["detail"]
        now[0] += 15.0
        assert c.post("/api/v1/simulations", json={"preset": "heatwave"}).status_code == 202


def test_a_full_queue_is_a_429_that_says_so(fakes: Fakes, client: TestClient) -> None:
    _memory(fakes).full = True
    r = client.post("/api/v1/simulations", json={"preset": "heatwave"})
    assert (
        r.status_code == 429
        and "queue is full" in r.json()["detail"]
        and r.headers["retry-after"] == "60"
    )


def test_without_the_simulator_every_job_route_is_a_503(fakes: Fakes) -> None:
    fakes.simulations = None
    with as_role(fakes, Role.FLEET_MANAGER) as c:
        for method, path, body in [
            ("POST", "/api/v1/simulations", {"preset": "heatwave"}),
            ("GET", "/api/v1/simulations", None),
            ("GET", "/api/v1/simulations/sim-abcdef-1", None),
            ("POST", "/api/v1/simulations/sim-abcdef-1/cancel", None),
        ]:
            r = c.request(method, path, json=body)
            assert r.status_code == 503 and "needs the models" in r.json()["detail"], (method, path)
        assert c.get("/api/v1/simulations/presets").status_code == 200

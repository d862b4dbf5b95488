"""The alert routes over an in-memory alert book: list, detail, acknowledge, silences,
the live stream and its resume, roles."""

from __future__ import annotations

from contracts.access import Role
from contracts.alerts import AlertSeverity, AlertState

from .conftest import Fakes, TestClient, as_role
from .fake_alerts import alert


def _two(fakes: Fakes) -> None:
    fakes.alerts.add(alert(1, battery_id="b-1"))
    fakes.alerts.add(alert(2, kind="battery_silent", battery_id="b-2", severity=AlertSeverity.WARNING))


def test_list_filters_and_counts(fakes: Fakes, client: TestClient) -> None:
    """Open alerts newest first, filtered by severity and battery, with counts per state."""
    _two(fakes)
    body = client.get("/api/v1/alerts").json()
    assert {a["id"] for a in body["alerts"]} == {1, 2}
    assert body["counts"] == {"firing": 2}
    crit = client.get("/api/v1/alerts", params={"severity": "critical"}).json()["alerts"]
    assert [a["key"] for a in crit] == ["pack_overtemp:b-1"]
    assert client.get("/api/v1/alerts", params={"battery_id": "b-2"}).json()["alerts"][0]["kind"] == "battery_silent"
    assert client.get("/api/v1/alerts", params={"state": "resolved"}).json()["alerts"] == []
    assert client.get("/api/v1/alerts", params={"state": "bogus"}).status_code == 422


def test_detail_acknowledge_and_refusal(fakes: Fakes, client: TestClient) -> None:
    """Acknowledging a firing alert is attributed and in its history; a second one is a 409
    that says why; an unknown alert is a 404."""
    _two(fakes)
    r = client.post("/api/v1/alerts/1/acknowledge", json={"note": "on my way"})
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "acknowledged" and r.json()["acknowledged_by"] == "manager-1"
    detail = client.get("/api/v1/alerts/1").json()
    assert [h["to_state"] for h in detail["history"]] == ["pending", "firing", "acknowledged"]
    assert detail["history"][-1]["note"] == "on my way"
    again = client.post("/api/v1/alerts/1/acknowledge", json={})
    assert again.status_code == 409 and "firing" in again.json()["detail"]
    assert client.get("/api/v1/alerts/99").status_code == 404
    assert client.post("/api/v1/alerts/1/acknowledge", json={"bogus": 1}).status_code == 422


def test_silences_lifecycle(fakes: Fakes, client: TestClient) -> None:
    """A silence is attributed, listed while active, and expires on DELETE; an empty
    matcher set or a duration over 30 days is refused."""
    r = client.post("/api/v1/silences", json={"matchers": {"zone": "z1"}, "duration_s": 3600, "comment": "works"})
    assert r.status_code == 201, r.text
    s = r.json()
    assert s["author"] == "manager-1" and s["ends_at_s"] - s["starts_at_s"] == 3600
    assert [x["id"] for x in client.get("/api/v1/silences").json()["silences"]] == [s["id"]]
    assert client.delete(f"/api/v1/silences/{s['id']}").status_code == 200
    assert client.get("/api/v1/silences").json()["silences"] == []
    assert len(client.get("/api/v1/silences", params={"include_expired": True}).json()["silences"]) == 1
    assert client.delete(f"/api/v1/silences/{s['id']}").status_code == 404
    assert client.post("/api/v1/silences", json={"matchers": {}, "duration_s": 60}).status_code == 422
    assert client.post("/api/v1/silences", json={"matchers": {"a": "b"}, "duration_s": 4e6}).status_code == 422
    # What PostgreSQL could not store (NUL), a sub-second window or a bad label name: 422.
    bad = [
        {"matchers": {"zone": "z1"}, "duration_s": 60, "comment": "a\x00b"},
        {"matchers": {"zone": "z1"}, "duration_s": 1e-300},
        {"matchers": {"Bad Name": "x"}, "duration_s": 60},
    ]
    assert [client.post("/api/v1/silences", json=b).status_code for b in bad] == [422, 422, 422]
    assert client.post("/api/v1/alerts/1/acknowledge", json={"note": "\x00"}).status_code == 422


def _frames(text: str) -> list[dict[str, str]]:
    out = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and not line.startswith(":"))
        if "id" in fields:
            out.append(fields)
    return out


def test_stream_delivers_and_resumes(fakes: Fakes, client: TestClient) -> None:
    """The stream is text/event-stream; resuming with Last-Event-ID sends exactly the events
    after that id; an id that is not one of ours is a 400."""
    _two(fakes)
    client.post("/api/v1/alerts/1/acknowledge", json={})
    r = client.get("/api/v1/alerts/stream", headers={"Last-Event-ID": "0"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    frames = _frames(r.text)
    assert [f["id"] for f in frames] == ["1", "2", "3"]
    assert all(f["event"] == "alert" for f in frames)
    assert '"to_state":"acknowledged"' in frames[-1]["data"]
    assert ": keep-alive" in r.text
    resumed = _frames(client.get("/api/v1/alerts/stream", headers={"Last-Event-ID": "2"}).text)
    assert [f["id"] for f in resumed] == ["3"]
    assert _frames(client.get("/api/v1/alerts/stream").text) == []
    assert client.get("/api/v1/alerts/stream", headers={"Last-Event-ID": "x9"}).status_code == 400


def test_roles(fakes: Fakes) -> None:
    """Ops may act on alerts; technicians and customers may not see them."""
    _two(fakes)
    with as_role(fakes, Role.OPS) as ops:
        assert ops.post("/api/v1/alerts/2/acknowledge", json={}).json()["state"] == AlertState.ACKNOWLEDGED
    for role in (Role.TECHNICIAN, Role.CUSTOMER):
        with as_role(fakes, role) as c:
            assert c.get("/api/v1/alerts").status_code == 403
            assert c.get("/api/v1/alerts/stream").status_code == 403


def test_no_alert_manager_is_503(fakes: Fakes) -> None:
    """Without an alert manager the alert routes answer 503 with the reason."""
    from serve.http import create_api

    from .conftest import bearer

    token = fakes.stores.tokens_.issue(Role.FLEET_MANAGER, "m")
    deps = fakes.deps()
    from dataclasses import replace

    with TestClient(create_api(replace(deps, alerts=None)), headers=bearer(token)) as c:
        r = c.get("/api/v1/alerts")
    assert r.status_code == 503 and "alert manager" in r.json()["detail"]

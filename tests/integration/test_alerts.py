"""Alerts end to end on the real system: a pack published at 80 °C through the broker becomes
a firing critical alert on the first tick that sees it, reaches a webhook receiver with a
valid Standard Webhooks signature, becomes an urgent replacement job in the planner's queue,
and streams to the dashboard over server-sent events that resume with Last-Event-ID."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from alerts.webhooks import verify
from bms.settings import Settings
from contracts.access import Role

from .conftest import ServiceHandles, api_client
from .test_system import _ids, _message, _publish, _sample, _wait

pytestmark = pytest.mark.integration


class _Receiver:
    """A local webhook receiver: records every request (headers, body)."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                outer.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass  # quiet: pytest shows failures, not every request

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def receiver() -> Iterator[_Receiver]:
    r = _Receiver()
    try:
        yield r
    finally:
        r.close()


@pytest.fixture(scope="module")
def api(fleet_system: Any, system_settings: Settings, api_tokens: dict[Role, str]) -> Iterator[httpx.Client]:
    """A fleet manager's client, once the alert manager answers."""
    with api_client(system_settings, api_tokens[Role.FLEET_MANAGER], 60) as c:
        _wait(lambda: c.get("/api/v1/alerts").status_code == 200, 120, "the alert routes")
        yield c


def _events(lines: Iterator[str], until: Any, timeout_s: float) -> list[dict[str, Any]]:
    """Read server-sent events until ``until(events)`` holds (or the deadline passes)."""
    events: list[dict[str, Any]] = []
    current: dict[str, str] = {}
    deadline = time.time() + timeout_s
    for line in lines:
        if line == "":
            if "data" in current:
                events.append({"id": current.get("id"), "event": current.get("event"), "data": json.loads(current["data"])})
                if until(events):
                    return events
            current = {}
        elif not line.startswith(":") and ": " in line:
            name, value = line.split(": ", 1)
            current[name] = value
        if time.time() > deadline:
            break
    raise AssertionError(f"stream ended or timed out; got {[e['data']['transition'] for e in events]}")


def test_hot_pack_fires_notifies_and_becomes_an_urgent_job(
    api: httpx.Client, receiver: _Receiver, services: ServiceHandles
) -> None:
    """One sample at 80 °C among normal ones: a critical pack_overtemp alert that fired on
    the tick that first saw it (no hold), with the evidence; a signed webhook; an urgent
    replacement job for the battery; the SSE stream carries it and resumes after an id."""
    created = api.post("/api/v1/webhooks", json={
        "url": receiver.url, "description": "on-call", "min_severity": "critical",
        "event_types": ["alert.firing"], "matchers": {},
    })  # fmt: skip
    assert created.status_code == 201, created.text
    secret = created.json()["secret"]

    vehicle, battery = _ids(services, "hot")
    t0 = time.time() - 10
    samples = [_sample(t0 + k, lat=52.5212, lon=13.4015, temp_c=80.0 if k == 2 else 31.0) for k in range(5)]
    with api.stream("GET", "/api/v1/alerts/stream", timeout=httpx.Timeout(60.0, read=60.0)) as stream:
        assert stream.status_code == 200
        _publish(services, [(f"fleet/{vehicle}/telemetry", _message(vehicle, battery, 0, samples))])
        events = _events(
            stream.iter_lines(),
            lambda ev: any(e["data"]["alert"]["battery_id"] == battery and e["data"]["transition"]["to_state"] == "firing" for e in ev),
            90,
        )
    fired = next(e for e in events if e["data"]["alert"]["battery_id"] == battery)

    listed = api.get("/api/v1/alerts", params={"battery_id": battery}).json()["alerts"]
    alert = next(a for a in listed if a["kind"] == "pack_overtemp")
    assert alert["severity"] == "critical" and alert["state"] == "firing" and alert["vehicle_id"] == vehicle
    assert alert["evidence"]["temp_c"] == 80.0 and alert["key"] == f"pack_overtemp:{battery}"
    # Held for no time: it fired in the same tick that first saw the sample.
    assert alert["fired_at_s"] == alert["started_at_s"]
    history = api.get(f"/api/v1/alerts/{alert['id']}").json()["history"]
    assert [h["to_state"] for h in history][:2] == ["pending", "firing"]

    def delivered() -> tuple[dict[str, str], bytes] | None:
        for headers, body in receiver.requests:
            if battery.encode() in body:
                return headers, body
        return None

    headers, body = _wait(delivered, 60, "the webhook delivery")
    verify(secret, headers, body, now_s=time.time())
    payload = json.loads(body)
    assert payload["type"] == "alert.firing" and payload["data"]["alert"]["key"] == alert["key"]

    def urgent_job() -> dict[str, Any] | None:
        jobs = api.get("/api/v1/planner/queue").json()["jobs"]
        return next((j for j in jobs if j["battery_id"] == battery), None)

    job = _wait(urgent_job, 60, "the urgent job")
    assert job["kind"] == "battery_replacement" and job["severity"] == "critical"

    # Resume: from the firing event's id, only what came after it (nothing of it again).
    with api.stream("GET", "/api/v1/alerts/stream", headers={"Last-Event-ID": fired["id"]}) as again:
        ack = api.post(f"/api/v1/alerts/{alert['id']}/acknowledge", json={"note": "tech on the way"})
        assert ack.status_code == 200, ack.text
        after = _events(
            again.iter_lines(),
            lambda ev: any(e["data"]["alert"]["id"] == alert["id"] and e["data"]["transition"]["to_state"] == "acknowledged" for e in ev),
            30,
        )
    def position(event_id: str) -> tuple[int, int]:
        ms, n = event_id.split("-")
        return int(ms), int(n)

    assert all(position(e["id"]) > position(fired["id"]) for e in after)

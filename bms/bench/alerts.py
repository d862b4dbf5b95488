"""``bms bench alerts``: how long a critical sample takes to reach a webhook receiver.

One run starts the whole system with the simulated fleet (as ``make run`` does, with the
default ``[alerts]`` and ``[models]`` settings unless the config says otherwise), subscribes
a local receiver (127.0.0.1, allowed for this run only) to critical ``alert.firing``
events, waits until the fleet's twins are visible, then ``events`` times publishes one
message whose newest sample is a pack at 80 °C for a fresh battery (one every
``spacing_s``, so each one is its own tick) and measures, per event:

* **publish → firing**: until the alert's ``fired_at_s`` (broker, bridge, shard, the shard's
  alert tick, the manager, PostgreSQL);
* **publish → webhook**: until the receiver has the signed delivery (plus the live stream,
  the dispatcher's queue and the HTTP round trip).

The shard judges new samples every ``[alerts] interval_s`` (and right after each scoring
tick), so the figure includes a wait of up to one interval: its spread is the tick's phase.
The last line printed is one JSON object.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import numpy as np

from bms.bench.harness import bench_system
from bms.settings import Settings

__all__ = ["AlertBenchParams", "run_alert_bench"]


@dataclass(frozen=True)
class AlertBenchParams:
    vehicles: int = 1000
    events: int = 20
    spacing_s: float = 3.0
    wait_s: float = 600.0

    def __post_init__(self) -> None:
        if self.vehicles < 1 or self.events < 1 or self.spacing_s < 0:
            raise ValueError(
                f"Expected vehicles >= 1, events >= 1 and spacing_s >= 0, got {self.vehicles}, "
                f"{self.events} and {self.spacing_s}."
            )


class _Receiver:
    """Records when each battery's webhook arrived (and verifies nothing: the test does)."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                at = time.time()
                battery = json.loads(body).get("data", {}).get("alert", {}).get("battery_id")
                if battery is not None:
                    outer.arrived.setdefault(battery, at)
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def _tweak(settings: Settings) -> Settings:
    # Only the receiver's address is let through; everything else is the user's config.
    alerts = settings.alerts.model_copy(update={"webhook_allow_cidrs": ["127.0.0.1/32"], "webhook_allow_http": True})
    return settings.model_copy(update={"alerts": alerts})


def _hot_message(vehicle: str, battery: str, now_s: float) -> bytes:
    samples = [
        {"ts": now_s - 4 + k, "pack_voltage_v": 47.5, "current_a": 6.0, "temp_c": 80.0 if k == 4 else 31.0,
         "soc_pct": 70.0, "lat": 52.52, "lon": 13.405, "odometer_km": 10.0, "speed_kmh": 15.0,
         "cell_min_v": 3.64, "cell_max_v": 3.67}
        for k in range(5)
    ]  # fmt: skip
    return json.dumps({"schema_version": 2, "vehicle_id": vehicle, "battery_id": battery, "seq": 0, "samples": samples}).encode()


async def _publish(mqtt_url: str, login: Any, topic: str, payload: bytes) -> float:
    import aiomqtt

    from sim.publisher import parse_mqtt_url

    host, port = parse_mqtt_url(mqtt_url)
    async with aiomqtt.Client(
        host, port, identifier=f"bench-alerts-{uuid.uuid4().hex[:6]}",
        username=None if login is None else login.username,
        password=None if login is None else login.password.get_secret_value(),
    ) as client:  # fmt: skip
        sent = time.time()
        await client.publish(topic, payload, qos=1)
    return sent


def _stats(values_s: list[float]) -> dict[str, float | None]:
    if not values_s:
        return {"p50_s": None, "p90_s": None, "max_s": None, "mean_s": None}
    a = np.asarray(values_s)
    return {
        "p50_s": round(float(np.percentile(a, 50)), 2), "p90_s": round(float(np.percentile(a, 90)), 2),
        "max_s": round(float(a.max()), 2), "mean_s": round(float(a.mean()), 2),
    }  # fmt: skip


def run_alert_bench(p: AlertBenchParams, base: Settings | None = None) -> dict[str, Any]:
    """Run the benchmark; returns the result object (also printed by the CLI)."""
    receiver = _Receiver()
    with bench_system(base or Settings.load(), vehicles=p.vehicles, tweak=_tweak, loadgen=True) as bench:
        headers = {"Authorization": f"Bearer {bench.tokens['ops']}"}
        with httpx.Client(base_url=bench.base_url, headers=headers, timeout=30.0) as api:
            deadline = time.time() + p.wait_s
            while True:
                r = api.get("/api/v1/alerts")
                if r.status_code == 200:
                    break
                if time.time() > deadline:
                    raise RuntimeError(f"The alert routes did not answer within {p.wait_s} s: {r.status_code} {r.text}")
                time.sleep(1.0)
            created = api.post("/api/v1/webhooks", json={
                "url": receiver.url, "description": "bench", "min_severity": "critical",
                "event_types": ["alert.firing"], "matchers": {"kind": "pack_overtemp"},
            })  # fmt: skip
            created.raise_for_status()
            run = uuid.uuid4().hex[:6]
            sent: dict[str, float] = {}
            for k in range(p.events):
                vehicle, battery = f"vbench{run}-{k}", f"bbench{run}-{k}"
                sent[battery] = asyncio.run(_publish(
                    bench.urls.mqtt_url, bench.loadgen, f"fleet/{vehicle}/telemetry",
                    _hot_message(vehicle, battery, time.time()),
                ))  # fmt: skip
                time.sleep(p.spacing_s)
            deadline = time.time() + 120
            while len(receiver.arrived) < len(sent) and time.time() < deadline:
                time.sleep(0.2)
            fired: dict[str, float] = {}
            for battery in sent:
                rows = api.get("/api/v1/alerts", params={"battery_id": battery, "state": "firing"}).json()["alerts"]
                rows += api.get("/api/v1/alerts", params={"battery_id": battery, "state": "acknowledged"}).json()["alerts"]
                if rows and rows[0]["fired_at_s"] is not None:
                    fired[battery] = rows[0]["fired_at_s"]
        a = bench.settings.alerts
        return {
            "benchmark": "alerts",
            "vehicles": p.vehicles,
            "events": p.events,
            "fired": len(fired),
            "delivered": len(receiver.arrived),
            "publish_to_firing": _stats([fired[b] - sent[b] for b in fired]),
            "publish_to_webhook": _stats([receiver.arrived[b] - sent[b] for b in receiver.arrived if b in sent]),
            "alert_interval_s": a.interval_s,
            "score_interval_s": bench.settings.models.score_interval_s,
            "models": bench.settings.models.enabled,
            "startup_s": round(bench.startup_s, 1),
        }

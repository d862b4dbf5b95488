"""``bms bench dashboard``: how fast the fleet manager's dashboard loads on the real system.

One run:

1. starts the servers (embedded, or the ``BMS_*`` URLs) and the whole system (twins, bridge,
   Serve app with the models, planner, alerts) in a fresh data directory and Ray namespace,
   with a simulated fleet of ``vehicles`` publishing in real time, one MQTT login each;
2. waits until the twins of every vehicle exist (``GET /api/v1/fleet/summary`` with a real
   ``fleet_manager`` token, issued as ``bms run`` issues its demo tokens);
3. opens the dashboard in Chromium (Playwright) ``repeats`` times, each in a fresh browser
   context (nothing cached) with the token in the tab's session storage, and measures from
   navigation start: the map drawn with every twin that has a position (the canvas's
   ``data-points``), and the alert list loaded; and the map request's time and size;
4. with ``screenshots``, saves the fleet page, a battery page, the technician's route and the
   customer's page there.

The last line printed is one JSON object.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import statistics
import tempfile
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bms.bench.harness import free_port
from bms.settings import Settings

__all__ = ["DashboardBenchParams", "run_dashboard_bench"]

log = logging.getLogger(__name__)

_MAP_DRAWN_JS = """(n) => {
    const c = document.querySelector('#fleet-map');
    return c && Number(c.dataset.points) >= n ? performance.now() : false;
}"""
_ALERTS_LOADED_JS = """() => document.querySelector('#alerts[data-loaded]') ? performance.now() : false"""
_MAP_TIMING_JS = """() => {
    const e = performance.getEntriesByType('resource').find((r) => r.name.includes('/api/v1/fleet/map'));
    const nav = performance.getEntriesByType('navigation')[0];
    return {
        map_request_ms: e ? e.duration : null, map_bytes: e ? e.encodedBodySize : null,
        dom_content_loaded_ms: nav ? nav.domContentLoadedEventEnd : null,
    };
}"""


@dataclass(frozen=True)
class DashboardBenchParams:
    """What to measure.

    Parameters
    ----------
    vehicles
        Simulated vehicles (one battery each, plus the swap pool's).
    repeats
        Page loads measured, each in a fresh browser context.
    screenshots
        Folder for screenshots of the main pages, or ``None``.
    models
        Deploy the models (trained on the quick plan at start: about a minute) and so the
        planner; without them the map has no health scores and there is no plan.
    wait_s
        Longest wait for the twins of every vehicle.
    chromium
        The Chromium binary Playwright drives.
    settle_s
        Seconds to let the system run once the twins are visible, before the page loads:
        long enough (about 15 min) and the demo fleet's faults have raised alerts and the
        planner has routed them, so the pages show a fleet at work.
    """

    vehicles: int = 10_000
    repeats: int = 3
    screenshots: Path | None = None
    models: bool = True
    wait_s: float = 900.0
    chromium: str = "/usr/bin/chromium"
    settle_s: float = 0.0

    def __post_init__(self) -> None:
        if self.settle_s < 0:
            raise ValueError(f"Expected settle_s >= 0, got {self.settle_s}.")
        if self.vehicles < 1 or self.repeats < 1 or self.wait_s <= 0:
            raise ValueError(
                f"Expected vehicles >= 1, repeats >= 1 and wait_s > 0, got "
                f"{self.vehicles}, {self.repeats} and {self.wait_s}."
            )


def _get(url: str, token: str, timeout_s: float = 30.0) -> Any:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=timeout_s) as r:  # our own server on 127.0.0.1
        return json.loads(r.read())


class _Fleet:
    """The simulated fleet, publishing from its own thread and event loop until stopped."""

    def __init__(self, settings: Settings, mqtt_url: str, credentials: Any) -> None:
        from bms.system import fleet_params
        from sim.fleet import FleetSimulator

        self.sim = FleetSimulator(fleet_params(settings.sim), seq_start=int(time.time()))
        self.mqtt_url = mqtt_url
        self.credentials = credentials
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stop_event: asyncio.Event | None = None
        self.thread = threading.Thread(target=self._run, name="bench-fleet", daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        from sim.publisher import run_fleet

        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            self.stop_event = asyncio.Event()
            await run_fleet(self.sim, self.mqtt_url, None, tick_s=1.0, stop=self.stop_event, credentials=self.credentials)

        try:
            asyncio.run(main())
        except BaseException as err:  # reported by stop(): the bench must not hang on it
            self.error = err

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        if self.loop is not None and self.stop_event is not None:
            self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(30)
        if self.error is not None:
            log.warning("the simulated fleet stopped with %r", self.error)


def _wait_for_twins(base: str, token: str, vehicles: int, wait_s: float) -> tuple[int, float]:
    """Twins once there is one per vehicle (or at the deadline), and the seconds it took."""
    t0 = time.time()
    batteries = 0
    while time.time() - t0 < wait_s:
        with contextlib.suppress(OSError, ValueError):
            batteries = int(_get(f"{base}/api/v1/fleet/summary", token)["batteries"])
            if batteries >= vehicles:
                break
        time.sleep(2.0)
    return batteries, time.time() - t0


def _load_once(browser: Any, base: str, token: str, expected_points: int) -> dict[str, Any]:
    """One cold load of the fleet page; milliseconds from navigation start."""
    context = browser.new_context(viewport={"width": 1440, "height": 1000})
    try:
        page = context.new_page()
        page.goto(base + "/")
        page.evaluate("(t) => sessionStorage.setItem('bms.token', t)", token)
        page.reload()
        map_ms = page.wait_for_function(_MAP_DRAWN_JS, arg=expected_points, timeout=120_000, polling=20).json_value()
        drawn = int(page.get_attribute("#fleet-map", "data-points") or 0)
        try:
            alerts_ms = page.wait_for_function(_ALERTS_LOADED_JS, timeout=60_000, polling=20).json_value()
        except Exception:  # no alert manager: the list never loads; say so, keep the map time
            alerts_ms = None
        return {"map_drawn_ms": round(map_ms, 1), "alerts_loaded_ms": None if alerts_ms is None else round(alerts_ms, 1),
                "points_drawn": drawn, **page.evaluate(_MAP_TIMING_JS)}  # fmt: skip
    finally:
        context.close()


def _screenshots(browser: Any, base: str, tokens: dict[str, str], folder: Path, battery: str | None, centre: tuple[float, float]) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    saved: list[str] = []

    def shot(role: str, hash_: str, ready: str, name: str, before: Any = None) -> None:
        context = browser.new_context(viewport={"width": 1440, "height": 1000})
        try:
            page = context.new_page()
            page.goto(base + "/")
            page.evaluate("(t) => sessionStorage.setItem('bms.token', t)", tokens[role])
            page.goto(base + "/" + hash_)
            page.reload()
            if before is not None:
                before(page)
            with contextlib.suppress(Exception):
                page.wait_for_selector(ready, timeout=30_000)
            page.wait_for_timeout(1500)
            path = folder / f"{name}.png"
            page.screenshot(path=str(path), full_page=True)
            saved.append(str(path))
        finally:
            context.close()

    shot("fleet_manager", "#fleet", "#fleet-map[data-points]", "fleet")
    if battery is not None:
        shot("fleet_manager", f"#battery/{battery}", "#chart-soc_pct[data-drawn]", "battery")
    shot("technician", "#route", "#route-kpis .kpi", "technician")

    def near(page: Any) -> None:
        page.wait_for_selector("#near")
        page.fill("#lat", f"{centre[0]:.5f}")
        page.fill("#lon", f"{centre[1]:.5f}")
        page.click("#near button[type='submit']")

    shot("customer", "#near", "#vehicles li", "customer", before=near)
    return saved


def run_dashboard_bench(p: DashboardBenchParams, base_settings: Settings | None = None) -> dict[str, Any]:
    """Run the benchmark; returns the result object (also printed by the CLI)."""
    from playwright import sync_api

    from bms.services import EmbeddedServices
    from bms.system import FleetSystem, planner_spec, system_spec
    from bms.tokens_cli import issue_demo_tokens
    from runtime.system import shutdown_ray

    run = uuid.uuid4().hex[:6]
    base_settings = base_settings or Settings.load()
    tmp = tempfile.TemporaryDirectory(prefix="bms-bench-dashboard-")
    port = free_port()
    settings = base_settings.model_copy(update={
        "data_dir": Path(tmp.name),
        "sim": base_settings.sim.model_copy(update={"vehicles": p.vehicles}),
        "serve": base_settings.serve.model_copy(update={"http_host": "127.0.0.1", "http_port": port}),
        "ray": base_settings.ray.model_copy(update={"namespace": f"dash{run}"}),
        "models": base_settings.models.model_copy(update={"enabled": p.models}),
    })  # fmt: skip
    services = EmbeddedServices(settings)
    urls = services.start()
    shared = services.mqtt_supports_shared_subscriptions
    system = FleetSystem(system_spec(
        settings, urls, shared_subscriptions=shared, mqtt_v5=shared, include_dashboard=False,
        initial_shards=max(1, -(-p.vehicles // settings.twins.shard_size)),
    ))  # fmt: skip
    fleet: _Fleet | None = None
    base = f"http://127.0.0.1:{port}"
    try:
        t0 = time.time()
        system.start()
        startup_s = time.time() - t0
        tech = planner_spec(settings, urls).technicians[0].id
        tokens = {r.value: t for r, t in asyncio.run(issue_demo_tokens(urls.postgres_url, tech)).items()}
        fleet = _Fleet(settings, urls.mqtt_url, services.mqtt_identities.vehicles)
        fleet.start()
        twins, ready_s = _wait_for_twins(base, tokens["fleet_manager"], p.vehicles, p.wait_s)
        time.sleep(p.settle_s)
        snapshot = _get(f"{base}/api/v1/fleet/map", tokens["fleet_manager"], timeout_s=120)
        alerts = _get(f"{base}/api/v1/alerts?severity=critical", tokens["fleet_manager"])["alerts"]
        expected = sum(1 for a, b in zip(snapshot["lat"], snapshot["lon"], strict=True) if a is not None and b is not None)
        worst = min(
            range(snapshot["count"]), default=None,
            key=lambda i: snapshot["health_score"][i] if snapshot["health_score"][i] is not None else 101.0,
        )  # fmt: skip
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=p.chromium, args=["--no-sandbox"])
            try:
                loads = [_load_once(browser, base, tokens["fleet_manager"], expected) for _ in range(p.repeats)]
                shots = (
                    _screenshots(
                        browser, base, tokens, p.screenshots,
                        # The battery page of a battery with a critical alert, if one fired.
                        next((a["battery_id"] for a in alerts if a["battery_id"]), None)
                        or (None if worst is None else snapshot["battery_id"][worst]),
                        (settings.sim.center_lat, settings.sim.center_lon),
                    )
                    if p.screenshots is not None else []
                )  # fmt: skip
            finally:
                browser.close()

        def median(key: str) -> float | None:
            values = [r[key] for r in loads if r[key] is not None]
            return round(statistics.median(values), 1) if values else None

        return {
            "benchmark": "dashboard",
            "vehicles": p.vehicles,
            "twins": twins,
            "twins_on_map": expected,
            "models": p.models,
            "startup_s": round(startup_s, 1),
            "twins_ready_s": round(ready_s, 1),
            "settle_s": p.settle_s,
            "critical_alerts": len(alerts),
            "map_drawn_ms": median("map_drawn_ms"),
            "alerts_loaded_ms": median("alerts_loaded_ms"),
            "map_request_ms": median("map_request_ms"),
            "map_bytes": loads[-1]["map_bytes"],
            "loads": loads,
            "screenshots": shots,
        }
    finally:
        if fleet is not None:
            fleet.stop()
        with contextlib.suppress(Exception):
            system.stop()
        with contextlib.suppress(Exception):
            shutdown_ray()
        services.stop()
        tmp.cleanup()

"""The dashboard in a real browser: Playwright driving Debian's Chromium.

The API runs for real over HTTP (uvicorn, in a thread) on the in-memory fakes of the HTTP
unit tests, filled with a city (:mod:`.fake_pages`), so the page logic is what is tested:
sign-in with a token kept in session storage (never in a URL), each role's views, the live
map, the battery page's charts, alerts acknowledged and arriving over the event stream, a
technician's reports, a customer's search that shows nothing of the batteries, and the
map drawing 10,000 vehicles.

Each page is photographed into ``$BMS_SCREENSHOT_DIR`` (default: a pytest temp folder).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse
from fastapi.testclient import TestClient
from playwright import sync_api as playwright_sync

from contracts.access import Role
from contracts.alerts import AlertState
from contracts.work_orders import WorkOrderState
from serve.http import create_api

from .conftest import Fakes, as_role
from .fake_alerts import alert
from .fake_pages import FOCUS, arrange_city

_CHROMIUM = os.environ.get("BMS_CHROMIUM", "/usr/bin/chromium")
_BATTERY_ID = re.compile(r"\bb-\d{5}\b")

Page = Any  # playwright's sync Page (untyped here, like the rest of the browser API)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Served:
    """The app running in uvicorn: its URL, and a way to run code on its event loop."""

    url: str
    server: uvicorn.Server

    def call_soon(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` on the server's loop (the fakes are not thread-safe)."""
        self.server.servers[0].get_loop().call_soon_threadsafe(fn)


def _serve(app: FastAPI) -> Iterator[Served]:
    port = _free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started:
        if time.time() > deadline:
            raise AssertionError("uvicorn did not start within 20 s")
        time.sleep(0.05)
    try:
        yield Served(f"http://127.0.0.1:{port}", server)
    finally:
        # Pages may still hold the alert stream open: do not wait for them.
        server.should_exit = server.force_exit = True
        thread.join(10)


@pytest.fixture
def base_url(fakes: Fakes) -> Iterator[str]:
    """The API over the plain fakes (three twins), on a free port of 127.0.0.1."""
    for served in _serve(create_api(fakes.deps())):
        yield served.url


@pytest.fixture
def city(fakes: Fakes) -> Iterator[Served]:
    """The API over a city of 60 scored twins with a plan, history and live alerts."""
    arrange_city(fakes, 60)
    yield from _serve(create_api(fakes.deps()))


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if shutil.which(_CHROMIUM) is None and not Path(_CHROMIUM).exists():
        raise AssertionError(
            f"Expected Chromium at {_CHROMIUM} (Debian package 'chromium'; `make test` installs it), "
            "found none. Set BMS_CHROMIUM to another Chromium binary."
        )
    with playwright_sync.sync_playwright() as p:
        b = p.chromium.launch(executable_path=_CHROMIUM, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the screenshots go."""
    folder = os.environ.get("BMS_SCREENSHOT_DIR")
    path = Path(folder) if folder else tmp_path_factory.mktemp("dashboard-screens")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _page(browser: Any, errors: list[str] | None = None) -> Page:
    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    if errors is not None:
        page.on("pageerror", lambda e: errors.append(str(e)))
    return page


def _sign_in(page: Page, token: str) -> None:
    page.fill("#token", token)
    page.click("#login button[type=submit]")


def _signed_in(browser: Any, served: Served | str, fakes: Fakes, role: Role, subject: str, errors: list[str]) -> Page:
    url = served if isinstance(served, str) else served.url
    page = _page(browser, errors)
    page.goto(url + "/")
    _sign_in(page, fakes.stores.tokens_.issue(role, subject))
    return page


# ---------------------------------------------------------------------- sign-in
def test_a_fleet_manager_signs_in_sees_the_fleet_and_signs_out(
    fakes: Fakes, base_url: str, browser: Any
) -> None:
    """The token goes into this tab's session storage and into no URL; a reload stays
    signed in; signing out forgets it. The fleet view shows, the ops view does not."""
    token = fakes.stores.tokens_.issue(Role.FLEET_MANAGER, "manager-1")
    page = _page(browser)
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(base_url + "/")
    assert page.is_visible("#login") and not page.is_visible("#kpis")
    _sign_in(page, token)
    page.wait_for_selector("#low tbody tr:nth-child(2)")
    assert "manager-1" in page.inner_text("#who-text") and "fleet manager" in page.inner_text("#who-text")
    assert "batteries" in page.inner_text("#kpis").lower()
    low = page.inner_text("#low")
    assert "bat-a" in low and "veh-a" in low
    assert page.query_selector("#models") is None  # the ops view is not shown to a fleet manager
    assert page.evaluate("sessionStorage.getItem('bms.token')") == token
    assert requests and not any(token in u for u in requests)
    page.reload()
    page.wait_for_selector("#low tbody tr:nth-child(2)")
    page.click("#logout")
    assert page.is_visible("#login") and page.query_selector("#kpis") is None
    assert page.evaluate("sessionStorage.getItem('bms.token')") is None


def test_a_refused_token_shows_why_and_stays_signed_out(base_url: str, browser: Any) -> None:
    page = _page(browser)
    page.goto(base_url + "/")
    _sign_in(page, "bms_" + "x" * 43)
    page.wait_for_selector("#login-error:has-text('unknown token')")
    assert page.is_visible("#login") and page.evaluate("sessionStorage.getItem('bms.token')") is None


def test_a_revoked_token_signs_the_page_out(fakes: Fakes, base_url: str, browser: Any) -> None:
    """An ops token sees the models; once it expires the next refresh signs the tab out."""
    token = fakes.stores.tokens_.issue(Role.OPS, "ops-1")
    page = _page(browser)
    page.goto(base_url + "/")
    _sign_in(page, token)
    page.wait_for_selector("#models tbody tr")
    assert "health" in page.inner_text("#models")
    fakes.stores.tokens_.expire(token)
    page.wait_for_selector("#login-error:has-text('expired')", timeout=10_000)
    assert page.is_visible("#login")


# ---------------------------------------------------------------------- fleet manager
def test_the_fleet_page_maps_every_vehicle_with_zones_depots_routes_and_distributions(
    fakes: Fakes, city: Served, browser: Any, shots: Path
) -> None:
    """The map draws all 60 vehicles (coloured by charge, then by health), the zones that
    hold them, the depot and tech-01's route with its 4 stops; the histograms count every
    scored battery, the bands add up to the fleet, the plan and the queue are listed."""
    errors: list[str] = []
    page = _signed_in(browser, city, fakes, Role.FLEET_MANAGER, "manager-1", errors)
    page.wait_for_selector("#fleet-map[data-points='60'][data-routes='1'][data-stops='4'][data-depots='1']")
    # Selectors, not wait_for_function: the page's CSP forbids the eval its polling uses.
    page.wait_for_selector("#fleet-map[data-zones]:not([data-zones='0']):not([data-zones=''])", timeout=15_000)
    assert page.get_attribute("#hist-health", "data-count") == "60"
    assert page.get_attribute("#hist-soh", "data-count") == "60"
    bands = page.eval_on_selector_all("#bands [data-band]", "rows => rows.map(r => Number(r.dataset.count))")
    assert sum(bands) == 60
    page.wait_for_selector("#plan-kpis")
    assert "€84.00" in page.inner_text("#plan") and "14.8" in page.inner_text("#plan")
    assert page.get_attribute("#queue", "data-total") == "4"
    page.click("button[data-color='health']")
    assert page.get_attribute("#fleet-map", "data-points") == "60"
    page.click("button[data-color='soc']")
    page.wait_for_selector("#alerts-card[data-stream='live']")
    page.screenshot(path=str(shots / "fleet-manager.png"), full_page=True)
    # A battery in a list opens its page.
    page.click(f"#anom a:has-text('{FOCUS}')")
    page.wait_for_selector("#battery-facts")
    assert page.evaluate("location.hash") == f"#battery/{FOCUS}"
    assert errors == []


def test_the_battery_page_charts_telemetry_health_and_the_forecast_band(
    fakes: Fakes, city: Served, browser: Any, shots: Path
) -> None:
    """The battery page draws the six hours of telemetry (361 samples per chart), health
    score and SOH of 48 runs, the forecast with its p10-p90 band (3 + 3 points), and lists
    the battery's anomaly events, alert and work order; its priority, five minutes old, is
    marked stale."""
    errors: list[str] = []
    page = _signed_in(browser, city, fakes, Role.FLEET_MANAGER, "manager-1", errors)
    page.wait_for_selector("#kpis .kpi")
    page.evaluate(f"location.hash = '#battery/{FOCUS}'")
    for column in ("pack_voltage_v", "current_a", "temp_c", "soc_pct"):
        page.wait_for_selector(f"#chart-{column}[data-points='361']")
    page.wait_for_selector("#chart-health[data-points='96'][data-series='2']")
    page.wait_for_selector("#chart-forecast[data-stepped='1'][data-band-points='6']")
    assert "260" in page.inner_text("#forecast-info")  # median cycles to 80 %
    assert "71" in page.inner_text("[data-fact='health']") and "86.5" in page.inner_text("[data-fact='soh']")
    assert page.inner_text("#scores-stale") == "scores stale (5 min)"
    page.wait_for_selector("#battery-anomalies tbody tr:nth-child(2)")
    assert "temp rise" in page.inner_text("#battery-anomalies")
    page.wait_for_selector("#battery-orders tbody tr")
    assert "#15" in page.inner_text("#battery-orders")
    page.wait_for_selector("#alerts li[data-alert-id='1']")
    assert page.query_selector("#alerts li[data-alert-id='2']") is None  # another battery's
    page.click("[data-hours='1']")
    page.wait_for_selector("#chart-soc_pct[data-points='61']")
    page.click("[data-hours='6']")
    page.wait_for_selector("#chart-soc_pct[data-points='361']")
    page.screenshot(path=str(shots / "battery.png"), full_page=True)
    assert errors == []


def test_alerts_are_acknowledged_silenced_and_arrive_live(
    fakes: Fakes, city: Served, browser: Any
) -> None:
    """Acknowledge moves the firing alert to acknowledged in the store, by the token's
    subject; Silence adds a silence on the alert's key; an alert the manager raises while
    the page is open appears through the event stream (the list is only re-read every
    minute)."""
    errors: list[str] = []
    page = _signed_in(browser, city, fakes, Role.FLEET_MANAGER, "manager-1", errors)
    page.wait_for_selector("#alerts-card[data-stream='live']")
    page.wait_for_selector("#alerts li[data-alert-id='1'][data-state='firing']")
    page.click("#alerts li[data-alert-id='1'] button[data-action='ack']")
    page.wait_for_selector("#alerts li[data-alert-id='1'][data-state='acknowledged']")
    acked = fakes.alerts.alerts[1]
    assert acked.state is AlertState.ACKNOWLEDGED and acked.acknowledged_by == "manager-1"

    page.click("#alerts li[data-alert-id='2'] button[data-action='silence']")
    page.select_option("#alerts li[data-alert-id='2'] select[name='duration']", "14400")
    page.fill("#alerts li[data-alert-id='2'] input[name='comment']", "known, crew on it")
    page.click("#alerts li[data-alert-id='2'] .silence-form button[type='submit']")
    page.wait_for_selector("#silences [data-silence-id]", state="attached")
    (silence,) = fakes.alerts.silences_.values()
    assert silence.matchers == {"key": fakes.alerts.alerts[2].key} and silence.author == "manager-1"
    assert silence.ends_at_s - silence.starts_at_s == 14400 and silence.comment == "known, crew on it"

    events = int(page.get_attribute("#alerts-card", "data-events") or 0)
    city.call_soon(lambda: fakes.alerts.add(alert(9, "cell_imbalance", "b-00011")))
    page.wait_for_selector("#alerts li[data-alert-id='9'][data-state='firing']", timeout=10_000)
    assert int(page.get_attribute("#alerts-card", "data-events") or 0) > events
    assert "1 firing" in page.inner_text("#alert-counts")
    assert errors == []


def test_the_event_stream_reader_parses_frames_and_resumes_with_last_event_id(
    fakes: Fakes, browser: Any
) -> None:
    """BMS.EventStream reads ``id:``/``event:``/``data:`` frames split across chunks,
    multi-line data, CRLF line ends, comments and ``retry:``; after the server closes the
    stream it reconnects with ``Last-Event-ID`` of the last event and gets the rest."""
    app = create_api(fakes.deps())
    seen: list[str | None] = []

    async def frames(request: Request) -> StreamingResponse:
        last = request.headers.get("last-event-id")
        seen.append(last)

        async def body() -> Any:
            if last is None:
                for chunk in (b"retry: 100\n\n", b"id: 1\nevent: al", b"ert\ndata: {\"n\": 1}\n\n", b": keep-alive\n\n",
                              b"data: line one\ndata: line two\n\n", b"id: 2\r\nevent: alert\r\ndata: {\"n\": 2}\r\n\r\n"):
                    yield chunk
                    await asyncio.sleep(0.02)
            elif last == "2":
                yield b"id: 3\nevent: alert\ndata: {\"n\": 3}\n\n"
            else:
                await asyncio.sleep(30)

        return StreamingResponse(body(), media_type="text/event-stream")

    app.add_api_route("/test/sse", frames, methods=["GET"])
    for served in _serve(app):
        page = _page(browser)
        page.goto(served.url + "/")
        got = page.evaluate("""async () => {
            const got = [];
            const s = new BMS.EventStream("test/sse", { onEvent: (e) => got.push([e.type, e.id, e.data]) });
            s.start();
            for (let i = 0; i < 100 && got.length < 4; i++) await new Promise((r) => setTimeout(r, 50));
            s.stop();
            return { got, keepAlives: s.keepAlives, retry: s.retryMs };
        }""")
    assert got["got"] == [
        ["alert", "1", '{"n": 1}'],
        ["message", "1", "line one\nline two"],
        ["alert", "2", '{"n": 2}'],
        ["alert", "3", '{"n": 3}'],
    ]
    assert got["keepAlives"] == 1 and got["retry"] == 100
    assert seen[:2] == [None, "2"]


# ---------------------------------------------------------------------- technician
def test_a_technician_works_their_route_through_the_api(
    fakes: Fakes, city: Served, browser: Any, shots: Path
) -> None:
    """tech-01 sees their four stops in order with each battery's facts; marks the first
    en route, then done with the swap record (battery out, battery in), and the second en
    route, then failed with a reason; the store's history shows each change, attributed to
    tech-01, with the swap."""
    errors: list[str] = []
    page = _signed_in(browser, city, fakes, Role.TECHNICIAN, "tech-01", errors)
    page.wait_for_selector("#stops li:nth-child(4)")
    assert page.eval_on_selector_all("#stops li", "ls => ls.map(l => l.dataset.orderId)") == ["11", "12", "13", "14"]
    second = page.inner_text("#stops li[data-order-id='12']")
    assert "Replace" in second and "temp rise" in second and "v-00002" in second and "%" in second
    page.wait_for_selector("#route-map[data-stops='4']")

    first = "#stops li[data-order-id='11']"
    page.click(f"{first} button[data-action='en_route']")
    page.wait_for_selector(f"{first}[data-state='en_route']")
    page.click(f"{first} button[data-action='done']")
    assert page.input_value(f"{first} input[name='battery_out_id']") == "b-00001"
    page.fill(f"{first} input[name='battery_in_id']", "b-09999")
    page.click(f"{first} .done-form button[type='submit']")
    page.wait_for_selector(f"{first}[data-state='done']")

    second_sel = "#stops li[data-order-id='12']"
    page.click(f"{second_sel} button[data-action='en_route']")
    page.wait_for_selector(f"{second_sel}[data-state='en_route']")
    page.click(f"{second_sel} button[data-action='failed']")
    page.fill(f"{second_sel} input[name='reason']", "vehicle not at its position")
    page.click(f"{second_sel} .failed-form button[type='submit']")
    page.wait_for_selector(f"{second_sel}[data-state='failed']")
    page.wait_for_selector("#route-kpis:has-text('2 / 4')")
    page.screenshot(path=str(shots / "technician.png"), full_page=True)

    assert fakes.planner.orders[11].state is WorkOrderState.DONE
    assert fakes.planner.orders[12].state is WorkOrderState.FAILED
    with as_role(fakes, Role.FLEET_MANAGER) as manager:
        done = manager.get("/api/v1/work-orders/11").json()["history"]
        failed = manager.get("/api/v1/work-orders/12").json()["history"]
    assert [(e["to_state"], e["actor"]) for e in done[1:]] == [("en_route", "tech-01"), ("done", "tech-01")]
    assert (done[-1]["swap_vehicle_id"], done[-1]["swap_battery_out"], done[-1]["swap_battery_in"]) == (
        "v-00001", "b-00001", "b-09999",
    )
    assert failed[-1]["to_state"] == "failed" and failed[-1]["note"] == "vehicle not at its position"
    # The technician's page never asked for a battery or the fleet.
    assert page.query_selector("#fleet-map") is None and errors == []


# ---------------------------------------------------------------------- customer
def test_a_customer_sees_vehicles_near_them_and_no_battery_internals(
    fakes: Fakes, city: Served, browser: Any, shots: Path
) -> None:
    """The customer's search lists rentable vehicles with distance, charge and range, and
    maps them; no battery id or health figure reaches the page, and only the availability
    route is asked."""
    errors: list[str] = []
    page = _page(browser, errors)
    asked: list[str] = []
    page.on("request", lambda r: asked.append(r.url))
    page.goto(city.url + "/")
    _sign_in(page, fakes.stores.tokens_.issue(Role.CUSTOMER, "rider-1"))
    page.wait_for_selector("#near")
    page.fill("#lat", "52.515")
    page.fill("#lon", "13.40")
    page.select_option("#radius", "2000")
    page.click("#near button[type='submit']")
    page.wait_for_selector("#vehicles li.vehicle")
    page.wait_for_selector("#near-sub:has-text('2.0 km')")  # not wait_for_function: CSP forbids its eval
    n = int(page.get_attribute("#vehicles", "data-count") or 0)
    assert n > 0 and page.get_attribute("#near-map", "data-points") == str(n)
    assert "km" in page.inner_text("#vehicles") and "charged" in page.inner_text("#vehicles")
    html = page.content()
    assert not _BATTERY_ID.search(html), "a battery id reached the customer's page"
    body = page.inner_text("body").lower()
    assert "health" not in body and "soh" not in body and "anomal" not in body
    api_calls = {re.sub(r"\?.*", "", u.split("/api/v1/", 1)[1]) for u in asked if "/api/v1/" in u}
    assert api_calls == {"me", "availability"}
    page.screenshot(path=str(shots / "customer.png"), full_page=True)
    assert errors == []


# ---------------------------------------------------------------------- scale
def test_the_map_draws_ten_thousand_vehicles(fakes: Fakes, browser: Any, shots: Path) -> None:
    """With 10,000 batteries the map is drawn with every one of them, from one columnar
    request (the time it took is printed, not asserted)."""
    arrange_city(fakes, 10_000)
    for served in _serve(create_api(fakes.deps())):
        page = _page(browser)
        map_requests: list[str] = []
        page.on("request", lambda r, seen=map_requests: seen.append(r.url) if "/fleet/map" in r.url else None)
        page.goto(served.url + "/")
        t0 = time.perf_counter()
        _sign_in(page, fakes.stores.tokens_.issue(Role.FLEET_MANAGER, "manager-1"))
        page.wait_for_selector("#fleet-map[data-points='10000']", timeout=60_000)
        print(f"10,000 vehicles drawn {time.perf_counter() - t0:.2f} s after sign-in")
        assert page.get_attribute("#hist-health", "data-count") == "10000"
        assert len(map_requests) == 1
        page.screenshot(path=str(shots / "fleet-10000.png"), full_page=False)


# ---------------------------------------------------------------------- assets
def test_the_page_and_its_assets_are_open_hold_no_data_and_no_inline_code(fakes: Fakes) -> None:
    """``/`` and ``/static/*`` answer without a token; the page loads only scripts of its
    own (CSP without 'unsafe-inline'), every one of them exists, and they revalidate
    (ETag, ``no-cache``); a path out of the folder is a 404."""
    with TestClient(create_api(fakes.deps())) as anon:
        page = anon.get("/")
        assert page.status_code == 200
        csp = re.search(r'Content-Security-Policy" content="([^"]+)"', page.text)
        assert csp and "script-src 'self';" in csp.group(1) and "unsafe-inline" not in csp.group(1)
        assert "<script>" not in page.text and "bms_" not in page.text.replace("bms_…", "")
        assets = re.findall(r'(?:src|href)="(static/[^"]+)"', page.text)
        assert "static/app.js" in assets and "static/app.css" in assets
        for path in assets:
            r = anon.get("/" + path)
            assert r.status_code == 200, path
            assert r.headers["cache-control"] == "no-cache" and r.headers.get("etag")
            assert anon.get("/" + path, headers={"If-None-Match": r.headers["etag"]}).status_code == 304
        assert anon.get("/static/app.js").headers["content-type"].startswith(("text/javascript", "application/javascript"))
        assert anon.get("/static/../http/deps.py").status_code == 404
        assert anon.get("/static/nothing.js").status_code == 404

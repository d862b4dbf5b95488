"""The dashboard in a real browser: Playwright driving Debian's Chromium.

The API runs for real over HTTP (uvicorn, in a thread) on the in-memory fakes of the HTTP
unit tests, so the page logic is what is tested: sign-in with a token kept in session
storage (never in a URL), the views of each role, sign-out, a refused token.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from playwright import sync_api as playwright_sync

from contracts.access import Role
from serve.http import create_api

from .conftest import Fakes

_CHROMIUM = os.environ.get("BMS_CHROMIUM", "/usr/bin/chromium")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def base_url(fakes: Fakes) -> Iterator[str]:
    """The API over the fakes, served by uvicorn on a free port of 127.0.0.1."""
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_api(fakes.deps()), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started:
        if time.time() > deadline:
            raise AssertionError("uvicorn did not start within 20 s")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def browser() -> Iterator[object]:
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


def _sign_in(page: object, token: str) -> None:
    page.fill("#token", token)  # type: ignore[attr-defined]
    page.click("#login button[type=submit]")  # type: ignore[attr-defined]


def test_a_fleet_manager_signs_in_sees_the_fleet_and_signs_out(
    fakes: Fakes, base_url: str, browser: object, tmp_path: Path
) -> None:
    token = fakes.stores.tokens_.issue(Role.FLEET_MANAGER, "manager-1")
    page = browser.new_page()  # type: ignore[attr-defined]
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(base_url + "/")
    assert page.is_visible("#login") and not page.is_visible("#cards")
    _sign_in(page, token)
    page.wait_for_selector("#low tr:nth-child(2)")
    assert "manager-1 (fleet_manager)" in page.inner_text("#who-text")
    assert "batteries" in page.inner_text("#cards")
    low = page.inner_text("#low")
    assert "bat-a" in low and "veh-a" in low
    assert not page.is_visible("#models")  # the ops view is not shown to a fleet manager
    page.screenshot(path=str(tmp_path / "fleet_manager.png"), full_page=True)
    # The token is in this tab's session storage and in no URL the page asked for.
    assert page.evaluate("sessionStorage.getItem('bms.token')") == token
    assert requests and not any(token in u for u in requests)
    # A reload keeps the tab signed in; signing out forgets the token.
    page.reload()
    page.wait_for_selector("#low tr:nth-child(2)")
    page.click("#logout")
    assert page.is_visible("#login") and not page.is_visible("#cards")
    assert page.evaluate("sessionStorage.getItem('bms.token')") is None


def test_a_refused_token_shows_why_and_stays_signed_out(base_url: str, browser: object) -> None:
    page = browser.new_page()  # type: ignore[attr-defined]
    page.goto(base_url + "/")
    _sign_in(page, "bms_" + "x" * 43)
    page.wait_for_selector("#login-error:has-text('unknown token')")
    assert page.is_visible("#login") and page.evaluate("sessionStorage.getItem('bms.token')") is None


def test_a_revoked_token_signs_the_page_out(fakes: Fakes, base_url: str, browser: object) -> None:
    token = fakes.stores.tokens_.issue(Role.OPS, "ops-1")
    page = browser.new_page()  # type: ignore[attr-defined]
    page.goto(base_url + "/")
    _sign_in(page, token)
    page.wait_for_selector("#models tr:nth-child(2)")
    assert "health" in page.inner_text("#models")
    fakes.stores.tokens_.expire(token)
    page.wait_for_selector("#login-error:has-text('expired')", timeout=10_000)
    assert page.is_visible("#login")


def test_a_customer_sees_vehicles_near_them_and_no_batteries(
    fakes: Fakes, base_url: str, browser: object, tmp_path: Path
) -> None:
    token = fakes.stores.tokens_.issue(Role.CUSTOMER, "rider-1")
    page = browser.new_page()  # type: ignore[attr-defined]
    page.goto(base_url + "/")
    _sign_in(page, token)
    page.fill("#lat", "52.52")
    page.fill("#lon", "13.40")
    page.click("#near button")
    page.wait_for_selector("#vehicles tr:nth-child(2)")
    text = page.inner_text("#vehicles")
    assert "veh-c" in text and "veh-a" not in text  # veh-a's battery is at 11 %: not rentable
    assert "bat-" not in page.inner_text("body")
    assert not page.is_visible("#cards")
    page.screenshot(path=str(tmp_path / "customer.png"), full_page=True)

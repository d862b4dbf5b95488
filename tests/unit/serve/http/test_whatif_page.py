"""The what-if view in a real browser (Playwright and Chromium, as test_dashboard_page.py).

The API runs in uvicorn over the HTTP fakes, with the real simulation queue over a fake
runner (:class:`.fake_simulations.QueuedSimulations`): a fleet manager picks a preset and
seeds, starts it, watches it run, reads the comparison with the baseline and the headline
KPIs, then starts another and cancels it while it runs. The view is the fleet manager's
only.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from contracts.access import Role
from serve.http import create_api
from sim.kpis import DAY_KPIS
from sim.presets import preset_names

from ...runtime.fake_whatif import FakeRunner
from . import test_dashboard_page as pages
from .conftest import Fakes
from .fake_simulations import QueuedSimulations
from .test_dashboard_page import Served, _serve, _signed_in

# The dashboard tests' fixtures: one Chromium for this module, and the screenshot folder.
browser = pages.browser
shots = pages.shots


@pytest.fixture
def whatif(fakes: Fakes) -> Iterator[tuple[Served, FakeRunner]]:
    """The API with a what-if queue whose runs take about a second each."""
    runner = FakeRunner(steps=4, step_s=0.25)
    fakes.simulations = QueuedSimulations(runner)
    for served in _serve(create_api(fakes.deps())):
        yield served, runner


def test_a_fleet_manager_runs_a_what_if_reads_the_comparison_and_cancels_another(
    fakes: Fakes, whatif: tuple[Served, FakeRunner], browser: Any, shots: Path
) -> None:
    """heatwave on seeds 1 and 2 runs beside the baseline: the card shows it running with
    its progress, then done with the 8 headline tiles and one comparison row per KPI;
    a second job (plus2_technicians, the preset's own seeds) is cancelled while it runs,
    attributed to the manager, and its runner saw the cancellation."""
    served, runner = whatif
    errors: list[str] = []
    page = _signed_in(browser, served, fakes, Role.FLEET_MANAGER, "manager-1", errors)
    page.click("#nav a[data-view='whatif']")
    page.wait_for_selector("#whatif-preset option[value='heatwave']", state="attached")
    options = page.eval_on_selector_all("#whatif-preset option", "os => os.map(o => o.value)")
    assert sorted(options) == preset_names() and options[0] == "baseline"
    assert "20,000 vehicles" in page.inner_text("#whatif-limits")
    page.select_option("#whatif-preset", "heatwave")
    assert "2000 vehicles" in page.inner_text("#whatif-preset-info").replace(",", "")
    page.fill("#whatif-seeds", "1, 2")
    page.click("#whatif-start")
    page.wait_for_selector("#whatif-job[data-state='running'] #whatif-progress")
    first = page.get_attribute("#whatif-job", "data-job-id")
    assert first and page.evaluate("location.hash") == f"#whatif/{first}"
    page.wait_for_selector("#whatif-job[data-state='done']", timeout=20_000)
    assert runner.calls == [["baseline", "heatwave"]]
    assert page.eval_on_selector_all("#whatif-kpis .kpi", "ts => ts.length") == 8
    assert page.eval_on_selector_all("#whatif-compare tbody tr", "rs => rs.length") == len(DAY_KPIS)
    table = page.inner_text("#whatif-compare")
    assert "rides served" in table and "…" in table and "beyond noise" in table
    page.screenshot(path=str(shots / "whatif.png"), full_page=True)

    runner.step_s = 1.0
    page.select_option("#whatif-preset", "plus2_technicians")
    page.fill("#whatif-seeds", "")
    page.click("#whatif-start")
    page.wait_for_selector(f"#whatif-job[data-state='running']:not([data-job-id='{first}'])")
    page.click("#whatif-cancel")
    page.wait_for_selector("#whatif-job[data-state='cancelled']", timeout=10_000)
    assert "cancelled by manager-1" in page.inner_text("#whatif-error")
    assert runner.cancelled == [["baseline", "plus2_technicians"]]
    page.wait_for_selector("#whatif-jobs[data-count='2']")
    assert errors == []


@pytest.mark.parametrize("role", [Role.OPS, Role.TECHNICIAN])
def test_only_the_fleet_manager_sees_the_what_if_view(
    fakes: Fakes, browser: Any, role: Role
) -> None:
    """Other roles have no What-if link, and #whatif falls back to their own view."""
    for served in _serve(create_api(fakes.deps())):
        errors: list[str] = []
        page = _signed_in(
            browser, served, fakes, role, "tech-01" if role is Role.TECHNICIAN else "ops-1", errors
        )
        page.wait_for_selector("#nav a")
        assert page.query_selector("#nav a[data-view='whatif']") is None
        page.evaluate("location.hash = '#whatif'")
        # The shell puts the role's own view back in the hash (polled from here: the page's
        # CSP forbids the eval that wait_for_function's polling uses).
        deadline = time.monotonic() + 10
        while page.evaluate("location.hash") == "#whatif" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert page.evaluate("location.hash") in ("#ops", "#route")
        assert page.query_selector("#whatif-form") is None and errors == []

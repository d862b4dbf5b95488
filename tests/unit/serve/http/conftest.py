"""Fixtures of the HTTP API tests: the app over in-memory fakes, and clients for it.

No Ray and no servers: :func:`serve.http.app.create_api` gets :class:`ApiDeps` built from
:mod:`.fakes`, and FastAPI's ``TestClient`` calls it in process. ``client`` holds a
``fleet_manager`` token, ``ops_client`` an ``ops`` token; :func:`as_role` makes a client for
any role and subject.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from starlette.exceptions import StarletteDeprecationWarning

from contracts.access import Role
from contracts.work_orders import WorkOrderState
from serve.http import ApiDeps, create_api
from serve.http.deps import SimulationAccess

with warnings.catch_warnings():
    # Starlette asks for the httpx2 package; the installed httpx works the same for these
    # in-process calls, and warnings are errors in this suite.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from fastapi.testclient import TestClient

from .fake_alerts import MemoryAlerts
from .fake_simulations import MemorySimulations
from .fakes import (
    FakeBridges,
    FakeFleet,
    FakeModels,
    FakePlanner,
    MemoryDeadLetters,
    MemoryRegistry,
    MemoryStores,
    MemoryTelemetry,
    MemoryWorkOrders,
    bridge_stats,
    live_status,
    work_order,
)


@dataclass
class Fakes:
    """The fakes behind one app, for tests to arrange and inspect."""

    fleet: FakeFleet
    planner: FakePlanner
    bridges: FakeBridges
    models: FakeModels
    stores: MemoryStores
    alerts: MemoryAlerts = field(default_factory=MemoryAlerts)
    simulations: SimulationAccess | None = field(default_factory=MemorySimulations)

    def deps(self, max_history_rows: int = 10_000) -> ApiDeps:
        return ApiDeps(
            fleet=self.fleet, planner=self.planner, bridges=self.bridges, models=self.models,
            stores=self.stores, max_history_rows=max_history_rows, alerts=self.alerts,
            simulations=self.simulations,
        )  # fmt: skip


@pytest.fixture
def fakes() -> Fakes:
    """A three-twin fleet, a running planner with orders 1 (assigned) and 2 (en route), one
    running and one stopped bridge, the deployed model ``health`` (registered, with a drift
    alert), and empty history and dead letters."""
    orders = {1: work_order(1), 2: work_order(2, WorkOrderState.EN_ROUTE)}
    registry = MemoryRegistry()
    registry.add("health")
    return Fakes(
        fleet=FakeFleet(),
        planner=FakePlanner(orders),
        bridges=FakeBridges({"bms-bridge-0": bridge_stats(), "bms-bridge-1": None}),
        models=FakeModels({"health": live_status("health")}),
        stores=MemoryStores(MemoryTelemetry(), MemoryDeadLetters(), registry, MemoryWorkOrders(orders)),
    )


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def as_role(fakes: Fakes, role: Role, subject: str | None = None) -> TestClient:
    """A client (enter it) calling the API over ``fakes`` with a fresh token for ``role``."""
    token = fakes.stores.tokens_.issue(role, subject or f"{role.value}-1")
    return TestClient(create_api(fakes.deps()), headers=bearer(token))


@pytest.fixture
def client(fakes: Fakes) -> Iterator[TestClient]:
    """A ``fleet_manager`` client of the API over ``fakes`` (arrange the fakes first)."""
    with as_role(fakes, Role.FLEET_MANAGER, "manager-1") as c:
        yield c


@pytest.fixture
def ops_client(fakes: Fakes) -> Iterator[TestClient]:
    """An ``ops`` client of the API over ``fakes``."""
    with as_role(fakes, Role.OPS, "ops-1") as c:
        yield c

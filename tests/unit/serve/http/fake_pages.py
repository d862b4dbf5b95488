"""Data for the dashboard's browser tests: a city of scored twins, a day's plan, history.

:func:`arrange_city` fills the fakes of :mod:`.conftest` in place with what the pages draw:

* ``n`` twins around Berlin (one sample each, seeded), with the model outputs a scoring tick
  writes (health score, SOH, anomaly flags, swap priority) set on the table;
* the focus battery :data:`FOCUS` with six hours of telemetry, two days of hourly health
  history, a stepped degradation LSTM (remaining-life quantiles), anomaly events, and a
  swap priority kept from five minutes ago (the priority model is down: stale scores);
* a plan routing technician ``tech-01`` through :data:`STOPS` with one work order per stop
  (assigned), and the queue of those jobs;
* three alerts (critical firing on the focus battery, a pending warning, an acknowledged one),
  in :class:`LiveAlerts`, whose stream stays open as a browser's does;
* :class:`RecordingPlanner` and :class:`HistoryWorkOrders`, so each change a page makes to a
  work order (with its swap record) shows in the order's history, as the real store's.
"""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from contracts.alerts import AlertCategory, AlertSeverity, AlertState
from contracts.health import HealthPoint
from contracts.work_orders import SwapRecord, WorkOrder, WorkOrderKind, WorkOrderState
from planners.job_queue import QueuedJob, Severity
from planners.planner import PlannedStop, PlanRecord, TechnicianRoute
from planners.views import QueueEntry
from serve.http.deps import AlertEvent
from twins.clock import ManualClock
from twins.scoring import AnomalyEvent
from twins.twin_table import SCORED_MODELS, TwinTable, TwinTableParams

from ...twins.factories import T0_S, make_batch, message
from .conftest import Fakes
from .fake_alerts import MemoryAlerts, alert
from .fakes import FakePlanner, MemoryWorkOrders

__all__ = [
    "FOCUS",
    "STOPS",
    "HistoryWorkOrders",
    "LiveAlerts",
    "RecordingPlanner",
    "arrange_city",
    "battery_id",
    "city_table",
]

NOW_S = T0_S + 60.0
CENTRE = (52.515, 13.40)

#: The battery the battery-page tests open.
FOCUS = "b-00007"


@dataclass(frozen=True)
class Stop:
    battery_id: str
    kind: WorkOrderKind
    order_id: int


#: tech-01's route, in order, and the work order of each stop.
STOPS = (
    Stop("b-00001", WorkOrderKind.BATTERY_SWAP, 11),
    Stop("b-00002", WorkOrderKind.BATTERY_REPLACEMENT, 12),
    Stop("b-00003", WorkOrderKind.INSPECTION, 13),
    Stop("b-00004", WorkOrderKind.BATTERY_SWAP, 14),
)


@dataclass
class RecordingPlanner(FakePlanner):
    """The fake planner, keeping every change it accepted as a work-order event."""

    events: dict[int, list[dict[str, Any]]] = field(default_factory=dict)

    async def report(
        self,
        order_id: int,
        state: WorkOrderState,
        actor: str,
        technician_id: str | None,
        swap: SwapRecord | None,
        note: str | None,
        assigned_to: str | None = None,
    ) -> WorkOrder:
        before = self.orders.get(order_id)
        order = await super().report(order_id, state, actor, technician_id, swap, note, assigned_to)
        self.events.setdefault(order_id, []).append({
            "id": 100 + sum(len(v) for v in self.events.values()), "work_order_id": order_id,
            "at_s": order.updated_at_s, "from_state": None if before is None else before.state.value,
            "to_state": order.state.value, "actor": actor, "technician_id": order.technician_id, "note": note,
            "swap_vehicle_id": None if swap is None else swap.vehicle_id,
            "swap_battery_out": None if swap is None else swap.battery_out_id,
            "swap_battery_in": None if swap is None else swap.battery_in_id,
        })  # fmt: skip
        return order


@dataclass
class HistoryWorkOrders(MemoryWorkOrders):
    """Work orders whose history is their creation and the planner's recorded changes."""

    events: dict[int, list[dict[str, Any]]] = field(default_factory=dict)

    async def history(self, order_id: int) -> builtins.list[dict[str, Any]]:
        return [*await super().history(order_id), *self.events.get(order_id, [])]


@dataclass
class LiveAlerts(MemoryAlerts):
    """Alerts whose stream stays open and answers at once (a keep-alive first, as the real
    one does), so a browser is connected before anything happens."""

    finite: bool = False

    async def stream(self, last_event_id: str | None, keepalive_s: float) -> AsyncIterator[AlertEvent | None]:
        if last_event_id is not None and (not last_event_id.isdigit() or int(last_event_id) > len(self.events)):
            raise ValueError(f"expected an event id up to {len(self.events)}, got {last_event_id!r}")
        yield None
        async for event in super().stream(last_event_id, keepalive_s):
            yield event


def battery_id(i: int) -> str:
    return f"b-{i:05d}"


def city_table(n: int, seed: int = 7) -> TwinTable:
    """``n`` twins spread over about 12 x 9 km of Berlin, scored."""
    rng = np.random.default_rng(seed)
    lat = CENTRE[0] + rng.normal(0.0, 0.022, n)
    lon = CENTRE[1] + rng.normal(0.0, 0.045, n)
    soc = np.clip(rng.beta(4.0, 2.0, n) * 100.0, 3.0, 100.0)
    temp = rng.normal(24.0, 5.0, n)
    table = TwinTable(TwinTableParams(window_samples=8, lstm_hidden_size=4), ManualClock(NOW_S), initial_capacity=n)
    table.apply(make_batch(*(
        message(battery_id(i), 0, [T0_S], vehicle_id=f"v-{i:05d}", lat=lat[i], lon=lon[i], soc_pct=soc[i], temp_c=temp[i])
        for i in range(n)
    )))  # fmt: skip
    slots = np.array([table.index[battery_id(i)] for i in range(n)])
    soh = np.clip(rng.normal(88.0, 6.0, n), 62.0, 101.0)
    table.soh_model_pct[slots] = soh
    table.capacity_est_ah[slots] = soh / 100.0 * table.rated_capacity_ah[slots]
    table.capacity_estimates[slots] = 3
    table.health_score[slots] = np.clip((soh - 60.0) * 2.4 + rng.normal(0.0, 6.0, n), 0.0, 100.0)
    table.priority[slots] = np.clip(100.0 - soc + rng.normal(0.0, 8.0, n), 0.0, 100.0)
    table.lost_rides_6h[slots] = table.priority[slots] / 25.0
    table.efc[slots] = rng.uniform(20.0, 600.0, n)
    for model in SCORED_MODELS:
        table.scored_at_of(model)[slots] = NOW_S
    table.scored_at_s[slots] = NOW_S
    flagged = slots[rng.random(n) < 0.01]
    table.anomaly_flags[flagged] = 1  # temp_rise
    return table


def _focus(table: TwinTable) -> None:
    """The focus battery: a stepped LSTM with remaining-life quantiles, a temp_rise flag, and
    a priority last scored five minutes before the others (stale)."""
    s = table.index[FOCUS]
    table.priority_scored_at_s[s] = table.scored_at_s[s] = NOW_S - 300.0
    table.soh_model_pct[s] = 86.5
    table.capacity_est_ah[s] = 0.87 * table.rated_capacity_ah[s]
    table.health_score[s] = 71.0
    table.efc[s] = 240.0
    table.lstm_steps[s] = 12
    table.anomaly_flags[s] = 1
    for level, quantiles in (("rul80", (180.0, 260.0, 350.0)), ("rul70", (520.0, 690.0, 880.0))):
        for q, value in zip(("p10", "p50", "p90"), quantiles, strict=True):
            getattr(table, f"{level}_{q}_cycles")[s] = value


def _telemetry(hours: float = 6.0, step_s: float = 60.0) -> dict[str, list[float | str | int]]:
    """A day in the life of the focus battery: rides draining it, a rest, a charge."""
    ts = np.arange(T0_S - hours * 3600.0, T0_S + 1.0, step_s)
    phase = (ts - ts[0]) / 3600.0
    riding = (np.sin(phase * 2.1) > 0.2).astype(float)
    current = riding * (9.0 + 3.0 * np.sin(phase * 11.0)) - (phase > 4.5) * 6.0
    soc = np.clip(92.0 - np.cumsum(current) * step_s / 3600.0 / 15.0 * 100.0, 5.0, 100.0)
    temp = 22.0 + 6.0 * riding + 2.0 * np.sin(phase)
    voltage = 42.0 + soc * 0.12 - current * 0.05
    n = len(ts)
    return {
        "ts": ts.tolist(), "vehicle_id": ["v-00007"] * n, "seq": list(range(n)),
        "pack_voltage_v": voltage.round(3).tolist(), "current_a": current.round(3).tolist(),
        "temp_c": temp.round(2).tolist(), "soc_pct": soc.round(2).tolist(),
    }  # fmt: skip


def _order(stop: Stop, lat: float, lon: float) -> WorkOrder:
    return WorkOrder(
        id=stop.order_id, kind=stop.kind, state=WorkOrderState.ASSIGNED, vehicle_id=f"v-{stop.battery_id[2:]}",
        battery_id=stop.battery_id, lat=lat, lon=lon, priority=50.0, value=12.0, created_at_s=NOW_S,
        technician_id="tech-01", updated_at_s=NOW_S,
    )  # fmt: skip


def arrange_city(fakes: Fakes, n: int = 60, seed: int = 7) -> Fakes:
    """Fill ``fakes`` with a city of ``n`` twins (``n`` >= 8) and everything around it."""
    if n < 8:
        raise ValueError(f"Expected n >= 8 (the route and the focus battery are in the city), got {n}.")
    table = city_table(n, seed)
    _focus(table)
    fakes.fleet.table = table
    fakes.fleet.events = [
        AnomalyEvent(FOCUS, "temp_rise", 3.4, NOW_S - 600.0),
        AnomalyEvent(FOCUS, "voltage_residual", 2.1, NOW_S - 7200.0),
        AnomalyEvent("b-00002", "cell_imbalance", 2.7, NOW_S - 300.0),
    ]
    fakes.stores.telemetry.rows[FOCUS] = _telemetry()
    fakes.stores.health.points[FOCUS] = [
        HealthPoint(T0_S - 3600.0 * k, 88.0 + 0.03 * k, 71.0 + 0.2 * k + (k % 3), 240.0 - 0.6 * k, 1)
        for k in range(47, -1, -1)
    ]  # fmt: skip

    position = {b: (float(table.latest("lat")[table.index[b]]), float(table.latest("lon")[table.index[b]])) for b in (s.battery_id for s in STOPS)}
    orders = {s.order_id: _order(s, *position[s.battery_id]) for s in STOPS}
    orders[15] = WorkOrder(
        id=15, kind=WorkOrderKind.BATTERY_SWAP, state=WorkOrderState.DONE, vehicle_id="v-00007", battery_id=FOCUS,
        lat=position["b-00001"][0], lon=position["b-00001"][1], priority=60.0, value=9.0,
        created_at_s=NOW_S - 86400.0, technician_id="tech-01", updated_at_s=NOW_S - 80000.0,
    )  # fmt: skip
    planner = RecordingPlanner(orders)
    fakes.planner = planner
    fakes.stores.orders = HistoryWorkOrders(orders, events=planner.events)

    jobs = [
        QueuedJob(
            battery_id=s.battery_id, vehicle_id=f"v-{s.battery_id[2:]}", kind=s.kind, lat=position[s.battery_id][0],
            lon=position[s.battery_id][1], value=12.0 + 6.0 * k, priority=60.0 - k, service_s=360 if s.kind is WorkOrderKind.BATTERY_SWAP else 900,
            batteries_needed=0 if s.kind is WorkOrderKind.INSPECTION else 1, skill="swap", deadline_s=NOW_S + 7200.0,
            severity=Severity.CRITICAL if s.kind is WorkOrderKind.BATTERY_REPLACEMENT else Severity.NORMAL,
            queued_at_s=NOW_S, work_order_id=s.order_id,
            soc_pct=float(table.latest("soc_pct")[table.index[s.battery_id]]),
            health_score=float(table.health_score[table.index[s.battery_id]]),
            anomaly_flags=("temp_rise",) if s.kind is WorkOrderKind.BATTERY_REPLACEMENT else (),
        )
        for k, s in enumerate(STOPS)
    ]  # fmt: skip
    fakes.planner.entries = [QueueEntry(j, False) for j in sorted(jobs, key=lambda j: -j.value)]
    eta = NOW_S + 900.0
    stops = []
    for j in jobs:
        stops.append(PlannedStop(
            battery_id=j.battery_id, vehicle_id=j.vehicle_id, kind=j.kind.value, lat=j.lat, lon=j.lon, eta_s=eta,
            service_start_s=eta, service_s=j.service_s, value=j.value, work_order_id=j.work_order_id,
            soc_pct=j.soc_pct, health_score=j.health_score, anomaly_flags=j.anomaly_flags,
        ))  # fmt: skip
        eta += j.service_s + 1200.0
    route = TechnicianRoute(
        technician_id="tech-01", depot_id="depot-nw", depart_s=NOW_S + 300.0, return_s=eta + 900.0,
        distance_m=14_800, batteries_loaded=12, stops=tuple(stops),
    )  # fmt: skip
    fakes.planner.plans.append(PlanRecord(
        plan_id=3, reason="scheduled", created_at_s=NOW_S, routes=(route,), dropped=("b-00005",), jobs=5,
        value_collected=sum(j.value for j in jobs), value_dropped=8.5, distance_m=14_800, solve_time_s=1.7,
        warm_started=True,
    ))  # fmt: skip

    fakes.alerts = LiveAlerts()
    fakes.alerts.add(alert(1, "pack_overtemp", FOCUS))
    fakes.alerts.add(alert(
        2, "silent_battery", "b-00002", state=AlertState.PENDING, severity=AlertSeverity.WARNING,
        category=AlertCategory.OPERATIONS,
    ))  # fmt: skip
    fakes.alerts.add(replace(
        alert(3, "voltage_sag", "b-00003", severity=AlertSeverity.WARNING), state=AlertState.ACKNOWLEDGED,
        acknowledged_by="manager-2", acknowledged_at_s=NOW_S,
    ))  # fmt: skip
    return fakes

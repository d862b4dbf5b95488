"""What a what-if run measured: KPIs per day and in total, plus what the report plots.

:class:`RunResult` is plain data (JSON round-trips through :meth:`RunResult.to_dict` and
:meth:`RunResult.from_dict`), so a run made in a Ray job reaches the report and the HTTP
API unchanged.

KPI definitions (one name, one unit):

- ``vehicle_hours``: vehicles x hours simulated;
  ``available_vehicle_hours``: hours a vehicle was riding or parked with at least the
  rentable charge and no locked fault; ``availability_pct`` their ratio;
- ``rides_requested`` = ``rides_served`` + ``rides_lost_low_charge`` (a rider found only
  vehicles below the rentable charge in the zone) + ``rides_lost_no_vehicle`` (none at all);
- ``swaps_done`` (battery swaps and replacements, each with a swap record),
  ``inspections_done``, ``visits_failed`` (vehicle gone or van empty on arrival);
- ``technician_km`` driven, ``technician_hours`` on shift, ``technician_busy_hours``
  (driving or at a vehicle), ``technician_utilisation_pct`` their ratio;
- ``batteries_eol``: batteries whose SOH fell below the scenario's ``eol_soh`` in the run;
- ``energy_ride_kwh`` drawn by rides and standby, ``energy_charged_kwh`` from the grid
  (charger losses included);
- costs in EUR from the scenario's unit costs, ``cost_per_ride_eur`` their sum over rides
  served.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["DAY_KPIS", "RunResult", "TechnicianKpis", "ZoneKpis"]

#: KPIs kept per day and in total, in report column order.
DAY_KPIS: tuple[str, ...] = (
    "vehicle_hours", "available_vehicle_hours", "availability_pct",
    "rides_requested", "rides_served", "rides_lost_low_charge", "rides_lost_no_vehicle",
    "swaps_done", "inspections_done", "visits_failed",
    "technician_km", "technician_hours", "technician_busy_hours", "technician_utilisation_pct",
    "batteries_eol", "energy_ride_kwh", "energy_charged_kwh",
    "cost_technicians_eur", "cost_van_eur", "cost_energy_eur", "cost_batteries_eur",
    "cost_total_eur", "revenue_eur", "cost_per_ride_eur",
)  # fmt: skip


@dataclass
class ZoneKpis:
    """Rides of one demand zone over the whole run."""

    zone: str
    lat: float
    lon: float
    requested: int = 0
    served: int = 0
    lost_low_charge: int = 0
    lost_no_vehicle: int = 0


@dataclass
class TechnicianKpis:
    """One technician over the whole run."""

    id: str
    depot: str
    shift_hours: float = 0.0
    driving_hours: float = 0.0
    service_hours: float = 0.0
    km: float = 0.0
    jobs_done: int = 0
    jobs_failed: int = 0


@dataclass
class RunResult:
    """One scenario, one seed.

    ``days`` holds one dict per simulated day with every :data:`DAY_KPIS` key; ``total`` the
    same keys over the run. ``availability_by_hour_pct`` is the mean availability per local
    hour of day (24 values); ``soh_end`` every battery's SOH at the end (0-1).
    """

    scenario: str
    seed: int
    days: list[dict[str, float]]
    total: dict[str, float]
    availability_by_hour_pct: list[float]
    zones: list[ZoneKpis]
    technicians: list[TechnicianKpis]
    soh_end: list[float]
    run: dict[str, Any] = field(default_factory=dict)  # wall_s, samples, plans, ...

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunResult:
        d = dict(data)
        d["zones"] = [ZoneKpis(**z) for z in d["zones"]]
        d["technicians"] = [TechnicianKpis(**t) for t in d["technicians"]]
        return cls(**d)


def finish_costs(
    k: dict[str, float],
    *,
    technician_eur_per_h: float,
    van_eur_per_km: float,
    energy_eur_per_kwh: float,
    battery_eur: float,
    revenue_eur_per_ride: float,
) -> None:
    """Fill the derived KPIs (ratios and costs) of one day's or the total's raw counts."""
    vh = k["vehicle_hours"]
    k["availability_pct"] = 100.0 * k["available_vehicle_hours"] / vh if vh > 0 else 0.0
    th = k["technician_hours"]
    k["technician_utilisation_pct"] = 100.0 * k["technician_busy_hours"] / th if th > 0 else 0.0
    k["cost_technicians_eur"] = th * technician_eur_per_h
    k["cost_van_eur"] = k["technician_km"] * van_eur_per_km
    k["cost_energy_eur"] = k["energy_charged_kwh"] * energy_eur_per_kwh
    k["cost_batteries_eur"] = k["batteries_eol"] * battery_eur
    k["cost_total_eur"] = (
        k["cost_technicians_eur"]
        + k["cost_van_eur"]
        + k["cost_energy_eur"]
        + k["cost_batteries_eur"]
    )
    k["revenue_eur"] = k["rides_served"] * revenue_eur_per_ride
    k["cost_per_ride_eur"] = (
        k["cost_total_eur"] / k["rides_served"] if k["rides_served"] > 0 else 0.0
    )

"""The what-if simulation engine: a city, its riders, its batteries and its technicians.

Vectorised over vehicles and batteries (numpy), seeded and deterministic: two engines with
equal scenario and seed, fed the same routes, produce the same telemetry and KPIs. One
:meth:`WhatIfEngine.step` of ``tick_s`` runs, in this order:

1. **demand**: ride requests per zone, Poisson around the zone's hourly rate
   (:func:`sim.ride_demand.expected_rides`: zone popularity, hour of day, weekday, weather)
   times the scenario's multiplier. A request takes a random rentable vehicle of its zone
   (parked, at least ``rentable_min_soc_pct``, not being serviced); with none, it is lost,
   *to low charge* if the zone had parked vehicles below that charge, else *no vehicle*;
2. **rides**: length log-normal around ``ride_km_mean``, a heading, a speed; energy per km
   grows in the cold and the heat and with the rider's load; the pack delivers that power
   (:meth:`sim.battery_model.PackArray.current_for_power_a`); a ride ends at its
   destination or at the BMS cut-off (3 %), where the vehicle stands;
3. **batteries**: one electro-thermal step over every pack (in a vehicle: ride power or
   the telematics unit's standby draw; on a depot charger: constant current to full);
   every local midnight the packs age one day by :func:`sim.ageing.age_one_day` at the
   day's temperature, depth of discharge, C-rate and cycled charge;
4. **depots**: swapped-out batteries queue for the depot's chargers; charged ones go on
   the shelf, from which vans load at the start of a shift and when they come back;
5. **technicians** drive their current route (``assign_routes``, from the planner) at
   city speed with the planner's detour factor, report each stop ``en_route``, then
   ``done`` (a swap with its battery ids) or ``failed`` (the vehicle was ridden away or
   the van is empty), and go back to the depot when the route is done or the shift ends;
6. **telemetry**: vehicles report every ``report_interval_s`` and at every ride start and
   end; riding vehicles sample every tick, and a ride's samples leave as one message at
   its end (a vehicle buffers while it rides). :meth:`step` returns the messages as a
   :class:`contracts.samples.TelemetryBatch`, the bridge's format.

Everything is counted into the run's KPIs (:mod:`sim.kpis`) as it happens, and a ledger of
charge (Ah in, out, faded) lets tests check that no energy appears or vanishes.
"""

from __future__ import annotations

import csv
import datetime as dt
import math
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from contracts.samples import SAMPLE_FIELDS, TelemetryBatch
from contracts.weather import WeatherHours
from contracts.zones import ZoneGrid
from sim.ageing import AgeingParams, age_one_day, initial_fade
from sim.battery_model import PackArray, PackParams
from sim.fleet import fleet_ids
from sim.kpis import DAY_KPIS, RunResult, TechnicianKpis, ZoneKpis, finish_costs
from sim.ride_demand import RideDemandParams, expected_rides
from sim.scenario import Scenario
from sim.weather import SimWeather

__all__ = [
    "FleetStart",
    "RosterEntry",
    "RouteStop",
    "VisitEvent",
    "WhatIfEngine",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

_KM_PER_DEG_LAT = 111.32
_S_PER_H = 3600.0
_S_PER_DAY = 86_400.0
# Random streams inside one seed: a scenario that changes one part (more technicians)
# keeps every other draw (the same riders ask for the same rides), so paired comparisons
# by seed see the change, not noise.
_STREAM_FLEET, _STREAM_DEMAND, _STREAM_RIDES, _STREAM_PICK, _STREAM_AGE = range(5)
# The city's zone popularity is a property of the city, not of a seed.
_CITY_SEED = 0

_STANDBY_A = 0.015  # the telematics unit's draw while parked (0.36 Ah a day)
_CUTOFF_PCT = 3.0  # the BMS stops the motor here
_CHARGE_A = 7.5  # depot chargers: C/2 for a 15 Ah pack
_CHARGED_PCT = 98.0  # a battery this full goes on the shelf
_CHARGER_EFFICIENCY = 0.92
_VAN_SPEED_KMH = 20.0  # the planner's HaversineTravel: 20 km/h over a 1.3 detour
_DETOUR = 1.3
_FOUND_WITHIN_KM = 0.15  # a technician finds a vehicle parked this close to the planned stop
_RIDE_BUFFER = 64  # samples a vehicle holds while riding (one per tick)
_SAMPLE_COLS = {name: k for k, name in enumerate(SAMPLE_FIELDS)}
# Typical use behind a battery's stated age: what its fade so far is computed from.
_TYPICAL_EFC_PER_DAY = 0.35
_TYPICAL_TEMP_C = 15.0

_PLACE_VEHICLE, _PLACE_VAN, _PLACE_QUEUE, _PLACE_CHARGER, _PLACE_SHELF = range(5)


@dataclass(frozen=True)
class RosterEntry:
    """One technician as the engine staffs them (the planner gets the same roster)."""

    id: str
    depot_id: str
    start_h: float
    end_h: float
    van_capacity: int
    skills: tuple[str, ...]


@dataclass(frozen=True)
class RouteStop:
    """One stop of a technician's route, as the planner planned it."""

    order_id: int | None
    kind: str  # "battery_swap" | "battery_replacement" | "inspection"
    vehicle_id: str
    battery_id: str
    lat: float
    lon: float
    service_s: float


@dataclass(frozen=True)
class VisitEvent:
    """What a technician reports about a stop: ``en_route``, ``done`` or ``failed``."""

    kind: str
    technician_id: str
    stop: RouteStop
    at_s: float
    battery_in_id: str | None = None
    battery_out_id: str | None = None
    note: str | None = None


@dataclass(frozen=True)
class FleetStart:
    """A fleet to start from instead of a generated one (the live twins, or a file).

    One row per vehicle: its battery, where it stands, its charge and its battery's SOH
    (0-1; NaN where unknown, then drawn from the scenario's age mix).
    """

    vehicle_ids: tuple[str, ...]
    battery_ids: tuple[str, ...]
    lat: FloatArray
    lon: FloatArray
    soc_pct: FloatArray
    soh: FloatArray

    def __post_init__(self) -> None:
        n = len(self.vehicle_ids)
        if n == 0:
            raise ValueError("Expected at least one vehicle in the fleet start, got none.")
        for name in ("battery_ids", "lat", "lon", "soc_pct", "soh"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"Expected {n} values of {name}, got {len(getattr(self, name))}.")
        if len(set(self.battery_ids)) != n or len(set(self.vehicle_ids)) != n:
            raise ValueError(
                "Expected distinct vehicle ids and distinct battery ids in the fleet start."
            )

    def save(self, path: Path) -> None:
        """Write the fleet to ``path`` (numpy ``.npz``, no pickles)."""
        np.savez_compressed(
            path, vehicle_ids=np.array(self.vehicle_ids, dtype=str), battery_ids=np.array(self.battery_ids, dtype=str),
            lat=self.lat, lon=self.lon, soc_pct=self.soc_pct, soh=self.soh,
        )  # fmt: skip

    @classmethod
    def load(cls, path: Path) -> FleetStart:
        """Read a fleet :meth:`save` wrote; errors name the file and what is missing."""
        try:
            with np.load(path, allow_pickle=False) as f:
                return cls(
                    vehicle_ids=tuple(str(v) for v in f["vehicle_ids"]), battery_ids=tuple(str(b) for b in f["battery_ids"]),
                    lat=f["lat"].astype(np.float64), lon=f["lon"].astype(np.float64),
                    soc_pct=f["soc_pct"].astype(np.float64), soh=f["soh"].astype(np.float64),
                )  # fmt: skip
        except (OSError, KeyError, ValueError) as err:
            raise ValueError(
                f"start.path: expected a fleet snapshot (.npz from `bms whatif-snapshot`) at {path}, got: {err}"
            ) from None


@dataclass
class _Tech:
    entry: RosterEntry
    depot: int
    x_km: float
    y_km: float
    on_shift: bool = False
    van: list[int] = field(default_factory=list)  # charged batteries
    removed: list[int] = field(default_factory=list)  # batteries taken out, back to the depot
    route: list[RouteStop] = field(default_factory=list)
    current: RouteStop | None = None  # the stop driven to or worked at
    busy_until_s: float = -math.inf  # servicing until
    returning: bool = False
    kpis: TechnicianKpis | None = None


def _daily(n: int) -> dict[str, float]:
    return dict.fromkeys(DAY_KPIS, 0.0) | {"_n": float(n)}


class WhatIfEngine:
    """The simulated city of one scenario and seed (see the module docstring).

    Parameters
    ----------
    scenario
        The what-if.
    seed
        Seeds every random stream; the weather, demand and fleet of one seed are the same
        in every scenario that does not change them.
    start
        A fleet to start from (vehicles, batteries, positions, charge, SOH); by default one
        is generated from ``scenario.fleet``.
    """

    def __init__(self, scenario: Scenario, seed: int, start: FleetStart | None = None) -> None:
        self.scenario = sc = scenario
        self.seed = seed
        self.tick_s = sc.loop.tick_s
        self.pack_params = PackParams()
        self.ageing = AgeingParams()
        city = sc.city
        self._lat0, self._lon0 = city.center_lat, city.center_lon
        self._km_per_deg_lon = _KM_PER_DEG_LAT * math.cos(math.radians(city.center_lat))
        self.grid = ZoneGrid(city.zone_km)
        local_midnight = dt.datetime.combine(sc.start_date, dt.time(), tzinfo=dt.UTC).timestamp()
        self.start_s = local_midnight - city.utc_offset_h * _S_PER_H
        self.end_s = self.start_s + sc.days * _S_PER_DAY
        self.now_s = self.start_s
        rng_fleet = np.random.default_rng([seed, _STREAM_FLEET])
        self._rng_demand = np.random.default_rng([seed, _STREAM_DEMAND])
        self._rng_rides = np.random.default_rng([seed, _STREAM_RIDES])
        self._rng_pick = np.random.default_rng([seed, _STREAM_PICK])

        self._build_zones()
        self._build_weather()
        self._build_depots()
        self._build_fleet(rng_fleet, start)
        self._build_roster()

        # KPIs: one dict per day, zone and technician counters, the hour-of-day profile.
        self._days: list[dict[str, float]] = [_daily(0) for _ in range(sc.days)]
        self._avail_hour = np.zeros(24)
        self._avail_hour_n = np.zeros(24)
        self._zone_req = np.zeros(self.n_zones, dtype=np.int64)
        self._zone_served = np.zeros(self.n_zones, dtype=np.int64)
        self._zone_low = np.zeros(self.n_zones, dtype=np.int64)
        self._zone_none = np.zeros(self.n_zones, dtype=np.int64)
        self.ledger = {"ah_out": 0.0, "ah_in": 0.0, "ah_faded": 0.0}
        self.ledger["ah_stored_start"] = self.stored_ah()
        self.rides_cut_short = 0
        self.failed_visits: dict[str, int] = {}  # by reason
        self.samples_emitted = 0
        self.messages_emitted = 0
        self._events: list[VisitEvent] = []
        # Messages cut before their vehicle's battery changed, sent with the next telemetry.
        self._pending: list[tuple[int, int, FloatArray]] = []
        self._current = np.zeros(self.n_batteries)
        self._next_midnight_s = self.start_s + _S_PER_DAY

    # ------------------------------------------------------------------ construction
    def _build_zones(self) -> None:
        sc = self.scenario
        r = sc.city.radius_km
        step = sc.city.zone_km / 4.0
        g = np.arange(-r, r + step, step)
        gx, gy = np.meshgrid(g, g)
        inside = np.hypot(gx, gy) <= r
        lat, lon = self._latlon(gx[inside], gy[inside])
        ids = sorted(set(self.grid.zone_ids(lat, lon)))
        centres = [self.grid.centre_of(z) for z in ids]
        cx, cy = self._xy(
            np.array([c[0] for c in centres if c]), np.array([c[1] for c in centres if c])
        )
        keep = np.hypot(cx, cy) <= r  # zones whose centre is in the service area
        self.zone_ids: list[str] = [z for z, k in zip(ids, keep.tolist(), strict=True) if k]
        self.zone_x, self.zone_y = cx[keep], cy[keep]
        self.n_zones = len(self.zone_ids)
        self._zone_index = {z: k for k, z in enumerate(self.zone_ids)}

    def _build_weather(self) -> None:
        sc, w = self.scenario, self.scenario.weather
        hours = sc.days * 24 + 2
        if w.recorded_csv is None:
            gen = SimWeather(
                seed=self.seed, annual_mean_c=w.annual_mean_c,
                seasonal_amplitude_c=w.seasonal_amplitude_c, daily_amplitude_c=w.daily_amplitude_c,
            )  # fmt: skip
            base = gen.hourly(self.start_s, hours)
            temp, rain = np.asarray(base.temp_c), np.asarray(base.precipitation_mm)
        else:
            temp, rain = _recorded_weather(Path(w.recorded_csv), self.start_s, hours)
        self.weather = WeatherHours(
            ts=self.start_s + _S_PER_H * np.arange(hours, dtype=np.float64),
            temp_c=temp + w.temp_offset_c,
            precipitation_mm=rain * w.rain_scale,
        )
        params = RideDemandParams(
            rides_per_zone_per_day=sc.demand.rides_per_zone_per_day,
            utc_offset_h=sc.city.utc_offset_h,
        )
        self.demand_params = params
        # Expected requests per zone and hour; rows are zones.
        self.rates_per_h = (
            expected_rides(self.zone_ids, self.weather, _CITY_SEED, params) * sc.demand.multiplier
        )

    def _build_depots(self) -> None:
        sc = self.scenario
        self.depot_ids = [d.id for d in sc.depots]
        self.depot_open = np.array([not d.closed for d in sc.depots])
        self.depot_x = np.array([d.east_km for d in sc.depots])
        self.depot_y = np.array([d.north_km for d in sc.depots])
        self.depot_chargers = np.array(
            [0 if d.closed else d.chargers for d in sc.depots], dtype=np.int64
        )
        self._queues: list[deque[int]] = [deque() for _ in sc.depots]
        self._shelves: list[list[int]] = [[] for _ in sc.depots]

    def _build_fleet(self, rng: np.random.Generator, start: FleetStart | None) -> None:
        sc, p = self.scenario, self.pack_params
        n = sc.fleet.vehicles if start is None else len(start.vehicle_ids)
        spares = [0 if d.closed else d.charged_batteries for d in sc.depots]
        m = n + sum(spares)
        self.n_vehicles, self.n_batteries = n, m
        if start is None:
            self.vehicle_ids = fleet_ids("v-", n)
            self.battery_ids = fleet_ids("b-", m)
        else:
            self.vehicle_ids = list(start.vehicle_ids)
            taken = set(start.battery_ids)
            extra = [b for b in fleet_ids("b-", m + n) if b not in taken][: m - n]
            self.battery_ids = list(start.battery_ids) + extra
        # Ages: a share of the fleet per age group, fade from typical use over that age.
        groups = sc.fleet.battery_age
        which = rng.choice(len(groups), size=m, p=np.array([g.fraction for g in groups]))
        age_days = np.array([g.age_days for g in groups])[which]
        usage = rng.uniform(0.7, 1.3, m)
        q_cal, q_cyc = initial_fade(
            age_days, _TYPICAL_TEMP_C, _TYPICAL_EFC_PER_DAY * usage, self.ageing
        )
        spread = rng.uniform(1.0 - p.resistance_spread, 1.0 + p.resistance_spread, m)
        imbalance_draw = rng.uniform(0.5, 1.5, m)
        soc = rng.uniform(sc.fleet.initial_soc_min_pct, sc.fleet.initial_soc_max_pct, m)
        soc[n:] = _CHARGED_PCT  # spares wait charged
        if start is not None:
            known = np.isfinite(start.soh)
            loss = np.clip(1.0 - start.soh[known], 0.0, 0.7)
            # A known SOH replaces the drawn fade, split between calendar and cycle as drawn.
            share = q_cal[:n][known] / np.maximum(q_cal[:n][known] + q_cyc[:n][known], 1e-9)
            q_cal[:n][known] = loss * share
            q_cyc[:n][known] = loss * (1.0 - share)
            soc[:n] = np.clip(np.nan_to_num(start.soc_pct, nan=60.0), 0.0, 100.0)
        self.q_cal, self.q_cyc = q_cal, q_cyc
        self._r_new = p.series_cells * p.cell_resistance_new_ohm * spread
        self._imbalance_draw = imbalance_draw
        soh = 1.0 - q_cal - q_cyc
        self.packs = PackArray(
            params=p, soh=soh, capacity_ah=p.rated_capacity_ah * soh,
            resistance_ohm=self._resistance(q_cal, q_cyc), imbalance_v=self._imbalance(soh),
            soc_pct=soc, temp_c=np.full(m, float(self.weather.temp_c[0])),
        )  # fmt: skip
        self._eol_crossed = soh < sc.fleet.eol_soh  # already there: not counted as reaching it
        self.bat_vehicle = np.full(m, -1, dtype=np.int64)
        self.bat_vehicle[:n] = np.arange(n)
        self.bat_place = np.full(m, _PLACE_SHELF, dtype=np.int64)
        self.bat_place[:n] = _PLACE_VEHICLE
        self.bat_depot = np.full(m, -1, dtype=np.int64)
        k = n
        for d, count in enumerate(spares):
            self._shelves[d].extend(range(k, k + count))
            self.bat_depot[k : k + count] = d
            k += count
        self.bat_seq = np.zeros(m, dtype=np.int64)
        self.veh_battery = np.arange(n, dtype=np.int64)
        self._vehicle_index = {v: i for i, v in enumerate(self.vehicle_ids)}
        # Where vehicles stand: zones by popularity, anywhere in the cell.
        if start is None:
            pop = self.rates_per_h.sum(axis=1)
            if not pop.sum() > 0:  # no demand (multiplier 0): park by the city's popularity
                params = RideDemandParams(utc_offset_h=sc.city.utc_offset_h)
                pop = expected_rides(self.zone_ids, self.weather, _CITY_SEED, params).sum(axis=1)
            zone = rng.choice(self.n_zones, size=n, p=pop / pop.sum())
            self.veh_x = self.zone_x[zone] + rng.uniform(-0.45, 0.45, n) * sc.city.zone_km
            self.veh_y = self.zone_y[zone] + rng.uniform(-0.45, 0.45, n) * sc.city.zone_km
            self.veh_zone = self._zones_of(self.veh_x, self.veh_y)
        else:
            self.veh_x, self.veh_y = self._xy(np.asarray(start.lat), np.asarray(start.lon))
            self.veh_zone = self._zones_of(self.veh_x, self.veh_y)
        self.veh_riding = np.zeros(n, dtype=bool)
        self.veh_locked = np.zeros(n, dtype=bool)  # a technician is working on it
        self.ride_t0 = np.zeros(n)
        self.ride_t1 = np.zeros(n)
        self.ride_x0 = np.zeros(n)
        self.ride_y0 = np.zeros(n)
        self.ride_x1 = np.zeros(n)
        self.ride_y1 = np.zeros(n)
        self.ride_power_w = np.zeros(n)
        self.ride_speed_kmh = np.zeros(n)
        self.odometer_km = rng.uniform(50.0, 3000.0, n)
        self.next_report_s = self.start_s + rng.uniform(0.0, sc.loop.report_interval_s, n)
        self._buffer = np.zeros((n, _RIDE_BUFFER, len(SAMPLE_FIELDS)))
        self._buffered = np.zeros(n, dtype=np.int64)
        # Per-battery accumulators of the day, for ageing.
        self._day_temp_s = np.zeros(m)
        self._day_ah_out = np.zeros(m)
        self._day_ride_s = np.zeros(m)
        self._day_soc_min = soc.copy()
        self._day_soc_max = soc.copy()
        self._day_soc_sum_s = np.zeros(m)

    def _build_roster(self) -> None:
        sc = self.scenario
        open_depots = [k for k, d in enumerate(sc.depots) if not d.closed]
        self.roster: list[RosterEntry] = []
        self._techs: list[_Tech] = []
        turn = 0
        for shift in sc.shifts:
            for k in range(shift.technicians):
                if (
                    shift.depot is not None
                    and not sc.depots[self.depot_ids.index(shift.depot)].closed
                ):
                    d = self.depot_ids.index(shift.depot)
                else:  # no depot named, or it is closed: the vans spread over the open ones
                    d = open_depots[turn % len(open_depots)]
                    turn += 1
                entry = RosterEntry(
                    id=f"{shift.name}-{k + 1:02d}", depot_id=self.depot_ids[d], start_h=shift.start_h,
                    end_h=shift.end_h, van_capacity=shift.van_capacity, skills=tuple(shift.skills),
                )  # fmt: skip
                self.roster.append(entry)
                tech = _Tech(entry, d, float(self.depot_x[d]), float(self.depot_y[d]))
                tech.kpis = TechnicianKpis(id=entry.id, depot=entry.depot_id)
                self._techs.append(tech)
        self._tech_index = {t.entry.id: t for t in self._techs}

    # ------------------------------------------------------------------ geometry
    def _latlon(self, x_km: FloatArray, y_km: FloatArray) -> tuple[FloatArray, FloatArray]:
        return self._lat0 + y_km / _KM_PER_DEG_LAT, self._lon0 + x_km / self._km_per_deg_lon

    def _xy(self, lat: FloatArray, lon: FloatArray) -> tuple[FloatArray, FloatArray]:
        return (lon - self._lon0) * self._km_per_deg_lon, (lat - self._lat0) * _KM_PER_DEG_LAT

    def _zones_of(self, x_km: FloatArray, y_km: FloatArray) -> IntArray:
        lat, lon = self._latlon(x_km, y_km)
        ids = self.grid.zone_ids(lat, lon)
        out = np.empty(len(ids), dtype=np.int64)
        for k, z in enumerate(ids):
            j = self._zone_index.get(z)
            if j is None:  # at the edge of the area: the nearest zone of the service area
                j = int(np.argmin(np.hypot(self.zone_x - x_km[k], self.zone_y - y_km[k])))
            out[k] = j
        return out

    def depot_latlon(self, depot_id: str) -> tuple[float, float]:
        d = self.depot_ids.index(depot_id)
        lat, lon = self._latlon(self.depot_x[d : d + 1], self.depot_y[d : d + 1])
        return float(lat[0]), float(lon[0])

    def zone_latlon(self) -> tuple[FloatArray, FloatArray]:
        return self._latlon(self.zone_x, self.zone_y)

    # ------------------------------------------------------------------ battery physics
    def _resistance(self, q_cal: FloatArray, q_cyc: FloatArray) -> FloatArray:
        a = self.ageing
        out: FloatArray = self._r_new * (
            1.0 + a.resistance_growth_calendar * q_cal + a.resistance_growth_cycle * q_cyc
        )
        return out

    def _imbalance(self, soh: FloatArray) -> FloatArray:
        p = self.pack_params
        out: FloatArray = (
            p.imbalance_new_v + p.imbalance_per_soh_loss_v * (1.0 - soh)
        ) * self._imbalance_draw
        return out

    def stored_ah(self) -> float:
        """Charge held by every battery now (the ledger's balance)."""
        return float(np.sum(self.packs.soc_pct / 100.0 * self.packs.capacity_ah))

    # ------------------------------------------------------------------ reads for the loop
    @property
    def done(self) -> bool:
        return self.now_s >= self.end_s - 1e-6

    @property
    def fraction_done(self) -> float:
        return min(1.0, (self.now_s - self.start_s) / (self.end_s - self.start_s))

    def depot_stock(self) -> dict[str, int]:
        """Charged batteries on each depot's shelf now."""
        return {d: len(s) for d, s in zip(self.depot_ids, self._shelves, strict=True)}

    def van_stock(self) -> dict[str, int]:
        """Charged batteries in each on-shift technician's van now (what they would scan)."""
        return {t.entry.id: len(t.van) for t in self._techs if t.on_shift}

    def demand_forecast(self, hours: int = 6) -> dict[str, FloatArray]:
        """Expected ride requests per vehicle for the next ``hours`` hours, per zone.

        What the twins' priority model is told about demand in a what-if run: the
        scenario's own expected demand (a perfect forecast), shared by the zone's
        vehicles. A zone with no vehicle shares it with one.
        """
        h = int((self.now_s - self.start_s) // _S_PER_H)
        rates = self.rates_per_h[:, h : h + hours]
        if rates.shape[1] < hours:
            rates = np.pad(rates, ((0, 0), (0, hours - rates.shape[1])), mode="edge")
        vehicles = np.bincount(self.veh_zone, minlength=self.n_zones)
        per_vehicle = rates / np.maximum(vehicles, 1)[:, None]
        return {z: per_vehicle[k] for k, z in enumerate(self.zone_ids)}

    def drain_events(self) -> list[VisitEvent]:
        out, self._events = self._events, []
        return out

    def assign_routes(self, routes: dict[str, list[RouteStop]]) -> None:
        """The planner's latest routes: each technician follows theirs from now on.

        A stop already under way (driven to or worked at) stays the technician's current
        stop; the planner locks it at the head of the route, so it is skipped here.
        """
        for tech in self._techs:
            stops = list(routes.get(tech.entry.id, []))
            if tech.current is not None:
                stops = [s for s in stops if s.battery_id != tech.current.battery_id]
            tech.route = stops

    # ------------------------------------------------------------------ the tick
    def step(self) -> TelemetryBatch:
        """Advance one tick; return the telemetry messages that left the vehicles."""
        dt_s = min(self.tick_s, self.end_s - self.now_s)
        if dt_s <= 0:
            raise RuntimeError("Expected a run with simulated time left; it ended.")
        t0 = self.now_s
        t1 = t0 + dt_s
        hour = min(int((t0 - self.start_s) // _S_PER_H), self.rates_per_h.shape[1] - 1)
        frac = (t0 - self.start_s) / _S_PER_H - hour
        ambient_c = float(
            (1 - frac) * self.weather.temp_c[hour]
            + frac * self.weather.temp_c[min(hour + 1, len(self.weather) - 1)]
        )
        day = min(int((t0 - self.start_s) // _S_PER_DAY), self.scenario.days - 1)
        k = self._days[day]
        self._shifts(t0)
        report_due = np.zeros(self.n_vehicles, dtype=bool)
        self._demand(t0, dt_s, hour, ambient_c, k, report_due)
        self._batteries(t0, dt_s, ambient_c, k, report_due)
        self._chargers()
        self._technicians(t1, dt_s, k, report_due)
        self._availability(t0, dt_s, k)
        self.now_s = t1
        if self.now_s >= self._next_midnight_s - 1e-6 or self.done:
            self._age_day(k)
            self._next_midnight_s += _S_PER_DAY
        return self._telemetry(t1, report_due)

    def _demand(
        self,
        t0: float,
        dt_s: float,
        hour: int,
        ambient_c: float,
        k: dict[str, float],
        report_due: npt.NDArray[np.bool_],
    ) -> None:
        sc = self.scenario
        requests = self._rng_demand.poisson(self.rates_per_h[:, hour] * dt_s / _S_PER_H)
        if not requests.any():
            return
        soc = self.packs.soc_pct[self.veh_battery]
        parked = ~self.veh_riding & ~self.veh_locked
        rentable = parked & (soc >= sc.fleet.rentable_min_soc_pct)
        low = parked & ~rentable
        order = np.flatnonzero(rentable)
        order = order[np.argsort(self.veh_zone[order], kind="stable")]
        bounds = np.searchsorted(self.veh_zone[order], np.arange(self.n_zones + 1))
        low_count = np.bincount(self.veh_zone[low], minlength=self.n_zones)
        chosen: list[npt.NDArray[np.int64]] = []
        for z in np.flatnonzero(requests).tolist():
            want = int(requests[z])
            pool = order[bounds[z] : bounds[z + 1]]
            got = min(want, pool.size)
            if got:
                chosen.append(self._rng_pick.choice(pool, size=got, replace=False))
            lost = want - got
            self._zone_req[z] += want
            self._zone_served[z] += got
            if lost:
                if low_count[z] > 0:
                    self._zone_low[z] += lost
                    k["rides_lost_low_charge"] += lost
                else:
                    self._zone_none[z] += lost
                    k["rides_lost_no_vehicle"] += lost
            k["rides_requested"] += want
            k["rides_served"] += got
        if not chosen:
            return
        v = np.concatenate(chosen)
        self._start_rides(v, t0, hour, ambient_c, report_due)

    def _start_rides(
        self, v: IntArray, t0: float, hour: int, ambient_c: float, report_due: npt.NDArray[np.bool_]
    ) -> None:
        sc, rng = self.scenario, self._rng_rides
        n = v.size
        mean = sc.demand.ride_km_mean
        sigma = 0.6
        km = np.clip(rng.lognormal(math.log(mean) - 0.5 * sigma**2, sigma, n), 0.3, 6.0 * mean)
        heading = rng.uniform(0.0, 2.0 * math.pi, n)
        speed = np.clip(rng.normal(sc.demand.ride_speed_kmh, 2.0, n), 6.0, 25.0)
        load = rng.uniform(0.85, 1.2, n)
        straight = km / _DETOUR
        x1 = self.veh_x[v] + straight * np.cos(heading)
        y1 = self.veh_y[v] + straight * np.sin(heading)
        # Riders stay in the service area: a destination outside is mirrored back in.
        r = np.hypot(x1, y1)
        out = r > sc.city.radius_km
        scale = np.where(
            out, np.maximum(2.0 * sc.city.radius_km - r, 0.0) / np.maximum(r, 1e-9), 1.0
        )
        x1, y1 = x1 * scale, y1 * scale
        # Energy per km: more in the cold (the pack's resistance, the rider's heavier gear)
        # and in the heat (the cooling-limited motor), and with a heavier rider.
        temp_factor = 1.0 + 0.012 * max(0.0, 20.0 - ambient_c) + 0.006 * max(0.0, ambient_c - 30.0)
        wh = km * sc.demand.energy_wh_per_km * temp_factor * load
        hours = km / speed
        self.veh_riding[v] = True
        self.ride_t0[v] = t0
        self.ride_t1[v] = t0 + hours * _S_PER_H
        self.ride_x0[v], self.ride_y0[v] = self.veh_x[v], self.veh_y[v]
        self.ride_x1[v], self.ride_y1[v] = x1, y1
        self.ride_power_w[v] = wh / hours
        self.ride_speed_kmh[v] = speed
        report_due[v] = True  # the vehicle reports as it unlocks

    def _batteries(
        self,
        t0: float,
        dt_s: float,
        ambient_c: float,
        k: dict[str, float],
        report_due: npt.NDArray[np.bool_],
    ) -> None:
        packs, m = self.packs, self.n_batteries
        current = np.zeros(m)
        inside = self.veh_battery
        current[inside] = _STANDBY_A
        riding = np.flatnonzero(self.veh_riding)
        if riding.size:
            b = inside[riding]
            current[b] = packs.current_for_power_a(self.ride_power_w[riding], b)
        on_charger = self.bat_place == _PLACE_CHARGER
        if on_charger.any():
            room_ah = (100.0 - packs.soc_pct[on_charger]) / 100.0 * packs.capacity_ah[on_charger]
            current[on_charger] = -np.minimum(_CHARGE_A, room_ah * _S_PER_H / dt_s)
        # The BMS never lets a pack go below empty: the last tick of a ride draws what is left.
        avail_ah = packs.soc_pct / 100.0 * packs.capacity_ah
        current = np.minimum(current, avail_ah * _S_PER_H / dt_s)
        ah = current * dt_s / _S_PER_H
        out_ah = np.maximum(ah, 0.0)
        in_ah = np.maximum(-ah, 0.0)
        self.ledger["ah_out"] += float(out_ah.sum())
        self.ledger["ah_in"] += float(in_ah.sum())
        volts = packs.terminal_voltage_v(current)
        k["energy_ride_kwh"] += (
            float(np.sum(np.maximum(current, 0.0) * volts)) * dt_s / _S_PER_H / 1000.0
        )
        k["energy_charged_kwh"] += (
            float(np.sum(np.maximum(-current, 0.0) * volts))
            * dt_s
            / _S_PER_H
            / 1000.0
            / _CHARGER_EFFICIENCY
        )
        self._current = current
        self._volts = volts
        packs.step(dt_s, current, ambient_c)
        # Day accumulators for ageing.
        self._day_temp_s += packs.temp_c * dt_s
        self._day_ah_out += out_ah
        if riding.size:
            self._day_ride_s[inside[riding]] += dt_s
        np.minimum(self._day_soc_min, packs.soc_pct, out=self._day_soc_min)
        np.maximum(self._day_soc_max, packs.soc_pct, out=self._day_soc_max)
        self._day_soc_sum_s += packs.soc_pct * dt_s
        # Riding vehicles: where they are, a sample per tick into the buffer, ride ends.
        if riding.size:
            t1 = t0 + dt_s
            soc = packs.soc_pct[inside[riding]]
            ended = (self.ride_t1[riding] <= t1) | (soc <= _CUTOFF_PCT)
            cut = (soc <= _CUTOFF_PCT) & (self.ride_t1[riding] > t1)
            self.rides_cut_short += int(cut.sum())
            span = np.maximum(self.ride_t1[riding] - self.ride_t0[riding], 1e-9)
            f = np.clip((t1 - self.ride_t0[riding]) / span, 0.0, 1.0)
            x_new = self.ride_x0[riding] + f * (self.ride_x1[riding] - self.ride_x0[riding])
            y_new = self.ride_y0[riding] + f * (self.ride_y1[riding] - self.ride_y0[riding])
            moved = np.hypot(x_new - self.veh_x[riding], y_new - self.veh_y[riding]) * _DETOUR
            self.odometer_km[riding] += moved
            self.veh_x[riding], self.veh_y[riding] = x_new, y_new
            speed = np.where(ended, 0.0, self.ride_speed_kmh[riding])
            self._buffer_samples(riding, t1, speed)
            stop = riding[ended]
            if stop.size:
                self.veh_riding[stop] = False
                self.veh_zone[stop] = self._zones_of(self.veh_x[stop], self.veh_y[stop])
                report_due[stop] = True

    def _chargers(self) -> None:
        packs = self.packs
        for d in range(len(self.depot_ids)):
            charging = np.flatnonzero((self.bat_place == _PLACE_CHARGER) & (self.bat_depot == d))
            full = charging[packs.soc_pct[charging] >= _CHARGED_PCT]
            for b in full.tolist():
                self.bat_place[b] = _PLACE_SHELF
                self._shelves[d].append(b)
            free = int(self.depot_chargers[d]) - (charging.size - full.size)
            q = self._queues[d]
            while free > 0 and q:
                b = q.popleft()
                self.bat_place[b] = _PLACE_CHARGER
                free -= 1

    def _shifts(self, now_s: float) -> None:
        local_h = ((now_s - self.start_s) / _S_PER_H) % 24.0
        starting: list[_Tech] = []
        for tech in self._techs:
            e = tech.entry
            # A shift past midnight (end_h > 24) runs on into the next day's early hours.
            on = e.start_h <= local_h < e.end_h or (e.end_h > 24.0 and local_h < e.end_h - 24.0)
            if on and not tech.on_shift:
                tech.on_shift = True
                tech.returning = False
                starting.append(tech)
            elif not on and tech.on_shift:
                tech.on_shift = False
                tech.returning = True  # finish at the depot; the stops left are dropped
                tech.route = []
        # Vans starting together at a depot share its shelf evenly (the planner's rule too).
        for d in {t.depot for t in starting}:
            group = [t for t in starting if t.depot == d]
            share = len(self._shelves[d]) // len(group)
            for tech in group:
                self._load_van(tech, share)

    def _load_van(self, tech: _Tech, limit: int | None = None) -> None:
        shelf = self._shelves[tech.depot]
        want = tech.entry.van_capacity - len(tech.van)
        if limit is not None:
            want = min(want, limit)
        take = shelf[:want]
        del shelf[: len(take)]
        for b in take:
            self.bat_place[b] = _PLACE_VAN
        tech.van.extend(take)

    def _unload_van(self, tech: _Tech) -> None:
        q = self._queues[tech.depot]
        for b in tech.removed:
            self.bat_place[b] = _PLACE_QUEUE
            self.bat_depot[b] = tech.depot
            q.append(b)
        tech.removed = []

    def _technicians(
        self, t1: float, dt_s: float, k: dict[str, float], report_due: npt.NDArray[np.bool_]
    ) -> None:
        for tech in self._techs:
            kp = tech.kpis
            assert kp is not None
            if tech.on_shift:
                kp.shift_hours += dt_s / _S_PER_H
                k["technician_hours"] += dt_s / _S_PER_H
            left = dt_s
            while left > 1e-9:
                if tech.busy_until_s > t1 - left:  # servicing a vehicle
                    spent = min(left, tech.busy_until_s - (t1 - left))
                    kp.service_hours += spent / _S_PER_H
                    k["technician_busy_hours"] += spent / _S_PER_H
                    left -= spent
                    if tech.busy_until_s <= t1 - left + 1e-9:
                        self._finish_stop(tech, t1 - left, k, report_due)
                    continue
                if tech.current is None and tech.on_shift and tech.route:
                    tech.current = tech.route.pop(0)
                    self._events.append(
                        VisitEvent("en_route", tech.entry.id, tech.current, t1 - left)
                    )
                target: tuple[float, float] | None = None
                if tech.current is not None:
                    sx, sy = self._xy(np.array([tech.current.lat]), np.array([tech.current.lon]))
                    target = (float(sx[0]), float(sy[0]))
                elif (not tech.on_shift and tech.returning) or (
                    tech.on_shift and not tech.route and self._away(tech)
                ):
                    target = (float(self.depot_x[tech.depot]), float(self.depot_y[tech.depot]))
                if target is None:
                    break
                gap_km = math.hypot(target[0] - tech.x_km, target[1] - tech.y_km) * _DETOUR
                reach_km = _VAN_SPEED_KMH * left / _S_PER_H
                if gap_km > reach_km:
                    f = reach_km / gap_km
                    tech.x_km += f * (target[0] - tech.x_km)
                    tech.y_km += f * (target[1] - tech.y_km)
                    self._drive(tech, reach_km, left, k)
                    left = 0.0
                    break
                used = gap_km / _VAN_SPEED_KMH * _S_PER_H
                tech.x_km, tech.y_km = target
                self._drive(tech, gap_km, used, k)
                left -= used
                if tech.current is not None:
                    self._arrive(tech, t1 - left, k)
                else:  # back at the depot
                    self._unload_van(tech)
                    if tech.on_shift:
                        self._load_van(tech)
                    tech.returning = False
                    break

    def _away(self, tech: _Tech) -> bool:
        return (
            math.hypot(tech.x_km - self.depot_x[tech.depot], tech.y_km - self.depot_y[tech.depot])
            > 1e-6
        )

    def _drive(self, tech: _Tech, km: float, seconds: float, k: dict[str, float]) -> None:
        assert tech.kpis is not None
        tech.kpis.km += km
        tech.kpis.driving_hours += seconds / _S_PER_H
        k["technician_km"] += km
        if tech.on_shift:
            k["technician_busy_hours"] += seconds / _S_PER_H

    def _vehicle(self, vehicle_id: str) -> int | None:
        return self._vehicle_index.get(vehicle_id)

    def _arrive(self, tech: _Tech, at_s: float, k: dict[str, float]) -> None:
        stop = tech.current
        assert stop is not None
        v = self._vehicle(stop.vehicle_id)
        note = None
        if v is None:
            note = "no such vehicle"
        elif self.veh_riding[v]:
            note = "vehicle in use"
        else:
            sx, sy = self._xy(np.array([stop.lat]), np.array([stop.lon]))
            if math.hypot(self.veh_x[v] - sx[0], self.veh_y[v] - sy[0]) > _FOUND_WITHIN_KM:
                note = "vehicle not at the planned place"
            elif self.battery_ids[int(self.veh_battery[v])] != stop.battery_id:
                note = "the vehicle holds another battery"
            elif stop.kind != "inspection" and not tech.van:
                note = "van empty"
        if note is not None:
            self._fail(tech, at_s, note, k)
            return
        assert v is not None
        self.veh_locked[v] = True
        tech.busy_until_s = at_s + stop.service_s

    def _fail(self, tech: _Tech, at_s: float, note: str, k: dict[str, float]) -> None:
        assert tech.current is not None and tech.kpis is not None
        self._events.append(VisitEvent("failed", tech.entry.id, tech.current, at_s, note=note))
        self.failed_visits[note] = self.failed_visits.get(note, 0) + 1
        tech.kpis.jobs_failed += 1
        k["visits_failed"] += 1
        tech.current = None

    def _finish_stop(
        self, tech: _Tech, at_s: float, k: dict[str, float], report_due: npt.NDArray[np.bool_]
    ) -> None:
        stop = tech.current
        assert stop is not None and tech.kpis is not None
        v = self._vehicle(stop.vehicle_id)
        assert v is not None
        self.veh_locked[v] = False
        tech.busy_until_s = -math.inf
        if stop.kind == "inspection":
            self._events.append(VisitEvent("done", tech.entry.id, stop, at_s))
            k["inspections_done"] += 1
        else:
            b_out = int(self.veh_battery[v])
            b_in = tech.van.pop(0)
            # The vehicle's buffered ride samples leave under the battery that made them.
            self._flush_vehicle(v, at_s)
            self.veh_battery[v] = b_in
            self.bat_vehicle[b_in] = v
            self.bat_place[b_in] = _PLACE_VEHICLE
            self.bat_depot[b_in] = -1
            self.bat_vehicle[b_out] = -1
            self.bat_place[b_out] = _PLACE_VAN
            tech.removed.append(b_out)
            self._events.append(VisitEvent(
                "done", tech.entry.id, stop, at_s,
                battery_in_id=self.battery_ids[b_in], battery_out_id=self.battery_ids[b_out],
            ))  # fmt: skip
            k["swaps_done"] += 1
            report_due[v] = True
        tech.kpis.jobs_done += 1
        tech.current = None

    def _availability(self, t0: float, dt_s: float, k: dict[str, float]) -> None:
        soc = self.packs.soc_pct[self.veh_battery]
        ok = self.veh_riding | (
            ~self.veh_locked & (soc >= self.scenario.fleet.rentable_min_soc_pct)
        )
        share = float(ok.mean())
        hours = dt_s / _S_PER_H
        k["vehicle_hours"] += self.n_vehicles * hours
        k["available_vehicle_hours"] += float(ok.sum()) * hours
        local_h = int(((t0 - self.start_s) / _S_PER_H) % 24)
        self._avail_hour[local_h] += share * dt_s
        self._avail_hour_n[local_h] += dt_s

    def _age_day(self, k: dict[str, float]) -> None:
        packs, a = self.packs, self.ageing
        day_s = _S_PER_DAY
        temp = self._day_temp_s / day_s
        efc = self._day_ah_out / np.maximum(packs.capacity_ah, 1e-9)
        dod = np.clip((self._day_soc_max - self._day_soc_min) / 100.0, 0.05, 1.0)
        c_rate = np.where(
            self._day_ride_s > 0,
            self._day_ah_out
            / np.maximum(self._day_ride_s / _S_PER_H, 1e-9)
            / np.maximum(packs.capacity_ah, 1e-9),
            0.5,
        )
        store_soc = self._day_soc_sum_s / day_s / 100.0
        before_ah = packs.soc_pct / 100.0 * packs.capacity_ah
        self.q_cal, self.q_cyc = age_one_day(
            self.q_cal, self.q_cyc, temp, store_soc, efc, dod, c_rate, a
        )
        soh = np.clip(1.0 - self.q_cal - self.q_cyc, 0.05, 1.0)
        packs.soh = soh
        packs.capacity_ah = self.pack_params.rated_capacity_ah * soh
        packs.resistance_ohm = self._resistance(self.q_cal, self.q_cyc)
        packs.imbalance_v = self._imbalance(soh)
        # Fade takes capacity at constant charge fraction: that charge is gone.
        self.ledger["ah_faded"] += float(
            np.sum(before_ah - packs.soc_pct / 100.0 * packs.capacity_ah)
        )
        newly = (soh < self.scenario.fleet.eol_soh) & ~self._eol_crossed
        k["batteries_eol"] += int(newly.sum())
        self._eol_crossed |= newly
        self._day_temp_s[:] = 0.0
        self._day_ah_out[:] = 0.0
        self._day_ride_s[:] = 0.0
        self._day_soc_min[:] = packs.soc_pct
        self._day_soc_max[:] = packs.soc_pct
        self._day_soc_sum_s[:] = 0.0

    # ------------------------------------------------------------------ telemetry
    def _sample_rows(self, v: IntArray, ts: float, speed_kmh: FloatArray) -> FloatArray:
        b = self.veh_battery[v]
        packs = self.packs
        cur = self._current[b]
        lo, hi = packs.cell_voltage_range_v(cur, b)
        lat, lon = self._latlon(self.veh_x[v], self.veh_y[v])
        rows = np.empty((v.size, len(SAMPLE_FIELDS)))
        c = _SAMPLE_COLS
        rows[:, c["ts"]] = ts
        rows[:, c["pack_voltage_v"]] = packs.terminal_voltage_v(cur, b)
        rows[:, c["current_a"]] = cur
        rows[:, c["temp_c"]] = packs.temp_c[b]
        rows[:, c["soc_pct"]] = packs.soc_pct[b]
        rows[:, c["lat"]] = lat
        rows[:, c["lon"]] = lon
        rows[:, c["odometer_km"]] = self.odometer_km[v]
        rows[:, c["speed_kmh"]] = speed_kmh
        rows[:, c["cell_min_v"]] = lo
        rows[:, c["cell_max_v"]] = hi
        return rows

    def _buffer_samples(self, v: IntArray, ts: float, speed_kmh: FloatArray) -> None:
        full = v[self._buffered[v] >= _RIDE_BUFFER]
        for x in full.tolist():  # a very long ride: the vehicle sends what it holds
            self._flush_vehicle(x, ts)
        rows = self._sample_rows(v, ts, speed_kmh)
        self._buffer[v, self._buffered[v]] = rows
        self._buffered[v] += 1

    def _flush_vehicle(self, v: int, ts: float) -> None:
        """Send a vehicle's buffer now (before its battery changes)."""
        n = int(self._buffered[v])
        if n:
            self._pending.append((v, int(self.veh_battery[v]), self._buffer[v, :n].copy()))
            self._buffered[v] = 0

    def _telemetry(self, ts: float, report_due: npt.NDArray[np.bool_]) -> TelemetryBatch:
        due = report_due | (self.next_report_s <= ts)
        parked_due = np.flatnonzero(due & ~self.veh_riding & (self._buffered == 0))
        riding_due = np.flatnonzero(due & self.veh_riding & (self._buffered == 0))
        # Parked vehicles (and those just unlocked for a ride, which have no ride sample
        # yet) add a sample now; a ride's samples are already in the buffer, and a ride
        # that ended this tick holds its last one, at ``ts`` (a second would repeat it).
        add = np.union1d(parked_due, riding_due)
        if add.size:
            speed = np.where(self.veh_riding[add], self.ride_speed_kmh[add], 0.0)
            self._buffer_samples(add, ts, speed)
        send = np.flatnonzero(due & (self._buffered > 0))
        self.next_report_s[due] = ts + self.scenario.loop.report_interval_s
        pending, self._pending = self._pending, []
        counts = [p[2].shape[0] for p in pending] + self._buffered[send].tolist()
        bats = [p[1] for p in pending] + self.veh_battery[send].tolist()
        vehs = [p[0] for p in pending] + send.tolist()
        if not counts:
            return TelemetryBatch.empty()
        rows = np.concatenate(
            [p[2] for p in pending] + [self._buffer[x, : self._buffered[x]] for x in send.tolist()]
        ) if send.size or pending else np.zeros((0, len(SAMPLE_FIELDS)))  # fmt: skip
        self._buffered[send] = 0
        offsets = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        bat_arr = np.asarray(bats, dtype=np.int64)
        # One seq per message, in message order: a battery may send twice in a tick (a
        # ride's full buffer left as pending, then the rest of the ride).
        order = np.argsort(bat_arr, kind="stable")
        by_battery = bat_arr[order]
        rank = np.arange(by_battery.size) - np.searchsorted(by_battery, by_battery)
        seqs = np.empty_like(bat_arr)
        seqs[order] = self.bat_seq[by_battery] + 1 + rank
        np.add.at(self.bat_seq, bat_arr, 1)
        self.samples_emitted += int(offsets[-1])
        self.messages_emitted += len(counts)
        return TelemetryBatch(
            battery_ids=[self.battery_ids[b] for b in bats],
            vehicle_ids=[self.vehicle_ids[v] for v in vehs],
            seqs=seqs,
            msg_offsets=offsets,
            columns={name: rows[:, k].copy() for name, k in _SAMPLE_COLS.items()},
            received_at_s=np.full(len(counts), ts),
        )

    # ------------------------------------------------------------------ results
    def result(self) -> RunResult:
        """The KPIs of the run so far (complete once :attr:`done`)."""
        c = self.scenario.costs
        costs = dict(
            technician_eur_per_h=c.technician_eur_per_h, van_eur_per_km=c.van_eur_per_km,
            energy_eur_per_kwh=c.energy_eur_per_kwh, battery_eur=c.battery_eur,
            revenue_eur_per_ride=c.revenue_eur_per_ride,
        )  # fmt: skip
        days = []
        total = dict.fromkeys(DAY_KPIS, 0.0)
        for d in self._days:
            day = {key: float(d[key]) for key in DAY_KPIS}
            for key in DAY_KPIS:
                total[key] += day[key]
            finish_costs(day, **costs)
            days.append(day)
        finish_costs(total, **costs)
        lat, lon = self.zone_latlon()
        zones = [
            ZoneKpis(z, float(lat[i]), float(lon[i]), int(self._zone_req[i]), int(self._zone_served[i]),
                     int(self._zone_low[i]), int(self._zone_none[i]))
            for i, z in enumerate(self.zone_ids)
        ]  # fmt: skip
        hour = np.where(
            self._avail_hour_n > 0,
            100.0 * self._avail_hour / np.maximum(self._avail_hour_n, 1e-9),
            0.0,
        )
        techs = [t.kpis for t in self._techs if t.kpis is not None]
        return RunResult(
            scenario=self.scenario.name, seed=self.seed, days=days, total=total,
            availability_by_hour_pct=[round(x, 4) for x in hour.tolist()], zones=zones,
            technicians=[TechnicianKpis(**vars(t)) for t in techs],
            soh_end=[round(x, 5) for x in self.packs.soh.tolist()],
            run={"samples": self.samples_emitted, "messages": self.messages_emitted,
                 "rides_cut_short": self.rides_cut_short, "failed_visits": dict(sorted(self.failed_visits.items()))},
        )  # fmt: skip


def _recorded_weather(path: Path, start_s: float, hours: int) -> tuple[FloatArray, FloatArray]:
    """Hourly temperature and precipitation from a CSV (``ts``, ``temp_c``, ``precipitation_mm``),
    interpolated onto the run's hours; the file must cover them."""
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except OSError as err:
        raise ValueError(
            f"weather.recorded_csv: cannot read {path}: {err.strerror or err}"
        ) from None
    try:
        ts = np.array([float(r["ts"]) for r in rows])
        temp = np.array([float(r["temp_c"]) for r in rows])
        rain = np.array([float(r["precipitation_mm"]) for r in rows])
    except (KeyError, ValueError) as err:
        raise ValueError(
            f"weather.recorded_csv: expected numeric columns ts, temp_c, precipitation_mm in {path}, got {err}"
        ) from None
    want = start_s + _S_PER_H * np.arange(hours)
    if ts.size < 2 or ts[0] > want[0] or ts[-1] < want[-2] or np.any(np.diff(ts) <= 0):
        raise ValueError(
            f"weather.recorded_csv: expected increasing hours covering {want[0]:.0f}..{want[-2]:.0f} (Unix s) "
            f"in {path}, got {ts[0] if ts.size else 'none'}..{ts[-1] if ts.size else 'none'}"
        )
    return np.interp(want, ts, temp), np.interp(want, ts, np.maximum(rain, 0.0))

"""Everything that shapes a simulated fleet, validated in one frozen object."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from sim.ambient import AmbientProfile
from sim.battery_model import PackParams
from sim.demand import DemandProfile
from sim.faults import FaultKind
from sim.traction import TractionParams

__all__ = ["FAULT_FIELDS", "FleetParams"]

#: The fields that shape what goes wrong from now on, not the state a fleet is in: a saved
#: fleet may resume under other values (:func:`sim.fleet_snapshot.params_differences`).
FAULT_FIELDS = frozenset(
    {"fault_rate_per_vehicle_day", "initial_faults", "initial_fault_after_s", "initial_fault_window_s",
     "fault_kinds", "fault_response_s"}
)  # fmt: skip

_PREFIX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,50}$")


def _check_range(name: str, lo: float, hi: float, lower: float, upper: float) -> None:
    if not lower <= lo <= hi <= upper:
        raise ValueError(f"Expected {lower} <= {name} low <= high <= {upper}, got ({lo}, {hi}).")


@dataclass(frozen=True)
class FleetParams:
    """Parameters of a :class:`~sim.fleet.FleetSimulator`.

    Parameters
    ----------
    vehicles
        Fleet size; vehicle ``k`` is ``f"{vehicle_id_prefix}{k:05d}"``.
    seed
        Seed of the one random generator: the same params give the same messages.
    report_interval_s
        Sampling period while riding; parked vehicles sample
        ``parked_report_factor`` times less often.
    samples_per_message
        A vehicle publishes once it has buffered this many samples (or when it parks,
        or before its battery is swapped). Its first message after the start holds a
        random 1..samples_per_message, so a new fleet publishes at a steady rate.
    center_lat, center_lon, radius_km
        Operating area: vehicles stay inside this circle.
    utc_offset_h
        Local time offset of the city, for the demand and temperature profiles.
    trip_duration_min_s, trip_duration_max_s
        Trip lengths are uniform in this range.
    cruise_speed_min_kmh, cruise_speed_max_kmh
        Each trip's target speed is uniform in this range.
    speed_noise_kmh, speed_time_constant_s
        Speed follows an Ornstein-Uhlenbeck process around the trip's target with this
        stationary standard deviation and reversion time (traffic, junctions, riders).
    max_speed_kmh
        Hard cap (the controller's limit).
    heading_noise_rad
        Random-walk step of the heading per square-root second (street grid turns).
    parked_current_a
        Draw of the telematics unit while parked.
    current_noise_a
        Standard deviation of the sensor noise on the reported current.
    initial_soc_min_pct, initial_soc_max_pct
        State of charge of the installed batteries at start.
    min_trip_soc_pct
        Below this the app hides the vehicle: it takes no new trips.
    cutoff_soc_pct
        The BMS cuts motor power below this: a running trip ends.
    swap_below_soc_pct
        A parked vehicle whose battery is below this gets a charged spare.
    swapped_soc_min_pct, swapped_soc_max_pct
        Chargers stop each battery at a target drawn from this range.
    spare_fraction, min_spares
        Spare batteries in the charging pool: ``max(min_spares, ceil(spare_fraction
        * vehicles))``.
    charge_current_a
        Constant current of the pool's chargers.
    pool_rest_s
        A battery taken out of a vehicle stays in the pool at least this long before it
        goes into another (charging, cooling down, the depot round trip). The twins take a
        battery reporting from a new vehicle for a swap only after it has been silent for
        their ``claim_after_silence_s`` (1800 s), so this must not be shorter, or the
        fleet's own swaps look like forged claims. (At the default 7.5 A charging alone
        takes over an hour, 10 % to 95 % of an 11 Ah pack; a faster charger would not.)
    vehicle_id_prefix, battery_id_prefix
        Id prefixes; battery ``j`` is ``f"{battery_id_prefix}{j:05d}"``.
    fault_rate_per_vehicle_day
        Batteries in vehicles develop faults (:mod:`sim.faults`) as a Poisson process at
        this rate per vehicle and day; 0.002 gives a fleet of 1,000 about two a day.
    initial_faults
        This many batteries of a fresh fleet (at most one per vehicle) develop a fault,
        with onsets spread uniformly over ``initial_fault_window_s`` from
        ``initial_fault_after_s`` on: a new demo shows alerts soon after its twins have
        learned their packs. A restored fleet keeps the faults it had instead.
    initial_fault_after_s, initial_fault_window_s
        See ``initial_faults``.
    fault_kinds
        The kinds drawn (uniformly) for the Poisson faults, and taken in turn by the
        initial ones. A thermal runaway heats the pack by a few degrees a minute, faster
        and faster, to about 95 C; the vehicle takes no more rides (the BMS cuts the
        motor). A weak cell drags ``cell_min_v`` (and the pack voltage) down by tens of
        millivolts a minute, until the cell spread is past half a volt.
    fault_response_s
        A battery stays faulty until it is swapped out. The field team swaps a parked
        vehicle's battery once its fault has been active this long (as for a low battery,
        when a charged spare is ready); the battery taken out is repaired in the depot.
    pack, traction, demand, ambient
        Battery, vehicle, rider-demand and weather models.
    """

    vehicles: int = 1000
    seed: int = 7
    report_interval_s: float = 5.0
    parked_report_factor: float = 12.0
    samples_per_message: int = 5
    center_lat: float = 52.5200
    center_lon: float = 13.4050
    radius_km: float = 6.0
    utc_offset_h: float = 1.0
    trip_duration_min_s: float = 300.0
    trip_duration_max_s: float = 1500.0
    cruise_speed_min_kmh: float = 10.0
    cruise_speed_max_kmh: float = 25.0
    speed_noise_kmh: float = 2.5
    speed_time_constant_s: float = 5.0
    max_speed_kmh: float = 28.0
    heading_noise_rad: float = 0.15
    parked_current_a: float = 0.05
    current_noise_a: float = 0.02
    initial_soc_min_pct: float = 20.0
    initial_soc_max_pct: float = 100.0
    min_trip_soc_pct: float = 15.0
    cutoff_soc_pct: float = 2.0
    swap_below_soc_pct: float = 10.0
    swapped_soc_min_pct: float = 95.0
    swapped_soc_max_pct: float = 100.0
    spare_fraction: float = 0.06
    min_spares: int = 4
    charge_current_a: float = 7.5
    pool_rest_s: float = 1800.0
    vehicle_id_prefix: str = "v-"
    battery_id_prefix: str = "b-"
    fault_rate_per_vehicle_day: float = 0.0
    initial_faults: int = 0
    initial_fault_after_s: float = 0.0
    initial_fault_window_s: float = 600.0
    fault_kinds: tuple[FaultKind, ...] = (FaultKind.THERMAL_RUNAWAY, FaultKind.WEAK_CELL)
    fault_response_s: float = 3600.0
    pack: PackParams = field(default_factory=PackParams)
    traction: TractionParams = field(default_factory=TractionParams)
    demand: DemandProfile = field(default_factory=DemandProfile)
    ambient: AmbientProfile = field(default_factory=AmbientProfile)

    def __post_init__(self) -> None:
        if not 1 <= self.vehicles <= 1_000_000:
            raise ValueError(f"Expected vehicles in [1, 1000000], got {self.vehicles}.")
        if not 1 <= self.samples_per_message <= 500:
            raise ValueError(
                f"Expected samples_per_message in [1, 500] (the contract's maximum), got "
                f"{self.samples_per_message}."
            )
        if not self.report_interval_s > 0 or not self.parked_report_factor >= 1:
            raise ValueError(
                f"Expected report_interval_s > 0 and parked_report_factor >= 1, got "
                f"{self.report_interval_s} and {self.parked_report_factor}."
            )
        if not (-90 <= self.center_lat <= 90 and -180 <= self.center_lon <= 180):
            raise ValueError(
                f"Expected center_lat in [-90, 90] and center_lon in [-180, 180], got "
                f"{self.center_lat} and {self.center_lon}."
            )
        # The flat-earth conversion of positions only holds for a city-sized area away
        # from the poles.
        if not 0 < self.radius_km <= 100 or abs(self.center_lat) > 80:
            raise ValueError(
                f"Expected radius_km in (0, 100] and |center_lat| <= 80, got "
                f"{self.radius_km} and {self.center_lat}."
            )
        if not -14 <= self.utc_offset_h <= 14:
            raise ValueError(f"Expected utc_offset_h in [-14, 14], got {self.utc_offset_h}.")
        _check_range(
            "trip_duration_s", self.trip_duration_min_s, self.trip_duration_max_s, 1.0, 86_400.0
        )
        _check_range(
            "cruise_speed_kmh", self.cruise_speed_min_kmh, self.cruise_speed_max_kmh, 0.0,
            self.max_speed_kmh,
        )  # fmt: skip
        if not 0 < self.max_speed_kmh <= 90:
            raise ValueError(f"Expected max_speed_kmh in (0, 90], got {self.max_speed_kmh}.")
        for name in ("speed_noise_kmh", "heading_noise_rad", "parked_current_a", "current_noise_a"):
            if getattr(self, name) < 0:
                raise ValueError(f"Expected {name} >= 0, got {getattr(self, name)}.")
        if not self.speed_time_constant_s > 0:
            raise ValueError(
                f"Expected speed_time_constant_s > 0, got {self.speed_time_constant_s}."
            )
        _check_range(
            "initial_soc_pct", self.initial_soc_min_pct, self.initial_soc_max_pct, 0.0, 100.0
        )
        _check_range(
            "swapped_soc_pct", self.swapped_soc_min_pct, self.swapped_soc_max_pct, 0.0, 100.0
        )
        if not (
            0 <= self.cutoff_soc_pct <= self.swap_below_soc_pct <= self.swapped_soc_min_pct
            and self.cutoff_soc_pct <= self.min_trip_soc_pct <= 100
        ):
            raise ValueError(
                f"Expected 0 <= cutoff_soc_pct <= swap_below_soc_pct <= swapped_soc_min_pct "
                f"and cutoff_soc_pct <= min_trip_soc_pct <= 100, got cutoff "
                f"{self.cutoff_soc_pct}, swap below {self.swap_below_soc_pct}, swapped min "
                f"{self.swapped_soc_min_pct}, min trip {self.min_trip_soc_pct}."
            )
        if not 0 <= self.spare_fraction <= 10 or self.min_spares < 0:
            raise ValueError(
                f"Expected spare_fraction in [0, 10] and min_spares >= 0, got "
                f"{self.spare_fraction} and {self.min_spares}."
            )
        if not self.charge_current_a > 0:
            raise ValueError(f"Expected charge_current_a > 0, got {self.charge_current_a}.")
        if not self.pool_rest_s >= 0:
            raise ValueError(f"Expected pool_rest_s >= 0, got {self.pool_rest_s}.")
        for name in ("vehicle_id_prefix", "battery_id_prefix"):
            if not _PREFIX.match(getattr(self, name)):
                raise ValueError(
                    f"Expected {name} to start an id of the contract (letters, digits, "
                    f"_ . : -, at most 51 characters), got {getattr(self, name)!r}."
                )
        self._check_faults()

    def _check_faults(self) -> None:
        if not 0.0 <= self.fault_rate_per_vehicle_day <= 100.0:
            raise ValueError(
                f"Expected fault_rate_per_vehicle_day in [0, 100], got "
                f"{self.fault_rate_per_vehicle_day}."
            )
        if not 0 <= self.initial_faults <= 1_000_000:
            raise ValueError(f"Expected initial_faults in [0, 1000000], got {self.initial_faults}.")
        if not 0.0 <= self.initial_fault_after_s <= 86_400.0:
            raise ValueError(f"Expected initial_fault_after_s in [0, 86400], got {self.initial_fault_after_s}.")
        if not 0.0 < self.initial_fault_window_s <= 86_400.0:
            raise ValueError(
                f"Expected initial_fault_window_s in (0, 86400], got {self.initial_fault_window_s}."
            )
        if not 0.0 <= self.fault_response_s <= 30 * 86_400.0:
            raise ValueError(
                f"Expected fault_response_s in [0, 2592000] (30 days), got {self.fault_response_s}."
            )
        kinds = self.fault_kinds
        if (
            not isinstance(kinds, tuple) or not kinds
            or not all(isinstance(k, FaultKind) for k in kinds) or len(set(kinds)) != len(kinds)
        ):  # fmt: skip
            raise ValueError(
                f"Expected fault_kinds as a non-empty tuple of distinct FaultKind members "
                f"({', '.join(k.name for k in FaultKind)}), got {kinds!r}."
            )

    def replace(self, **changes: Any) -> FleetParams:
        """A copy with some fields changed (and validated again)."""
        return dataclasses.replace(self, **changes)

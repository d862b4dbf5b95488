"""What-if scenarios: a fleet, its city, its people and its decisions, in one YAML file.

A scenario is validated by pydantic models that forbid unknown keys, so a typo is an
error that names the key, not a silently ignored setting. A scenario may be a *delta*:
``base: baseline.yaml`` (a path relative to the file) loads that file first and deep-merges
this one over it (mappings merge key by key; lists and scalars replace), so
``plus2_technicians.yaml`` states only what differs from the baseline.

Every quantity carries its unit in its name. Shifts are local hours; depots sit at offsets
in km from the city centre (north and east), so a scenario moves to another city by
changing ``city.center_lat`` / ``center_lon`` alone.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

__all__ = [
    "AgeGroup",
    "CityConfig",
    "CostConfig",
    "DemandConfig",
    "DepotConfig",
    "FleetConfig",
    "LoopConfig",
    "Scenario",
    "ScenarioError",
    "ShiftConfig",
    "StartConfig",
    "SwapPolicyConfig",
    "WeatherConfig",
    "load_scenario",
    "scenario_from_mapping",
]

_MAX_BASE_DEPTH = 8


class ScenarioError(ValueError):
    """A scenario file that cannot be read or is not valid; the message names the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CityConfig(_Strict):
    """The service area: a disc around the centre, cut into square zones."""

    center_lat: float = Field(52.52, ge=-80.0, le=80.0)
    center_lon: float = Field(13.405, ge=-180.0, le=180.0)
    radius_km: float = Field(5.0, gt=0.2, le=50.0, description="Service area radius")
    zone_km: float = Field(1.0, ge=0.2, le=10.0, description="Side of a demand zone")
    utc_offset_h: float = Field(
        1.0, ge=-14.0, le=14.0, description="Local time of shifts and demand"
    )


class AgeGroup(_Strict):
    """A share of the batteries that has been in service ``age_days`` (at typical use)."""

    fraction: float = Field(gt=0.0, le=1.0)
    age_days: float = Field(ge=0.0, le=3650.0)


class FleetConfig(_Strict):
    vehicles: int = Field(2000, ge=1, le=200_000)
    battery_age: list[AgeGroup] = Field(
        default_factory=lambda: [AgeGroup(fraction=1.0, age_days=180.0)],
        description="Age mix of the batteries; fractions sum to 1",
    )
    rentable_min_soc_pct: float = Field(
        15.0, ge=0.0, le=90.0, description="A vehicle below this charge cannot be rented"
    )
    initial_soc_min_pct: float = Field(30.0, ge=0.0, le=100.0)
    initial_soc_max_pct: float = Field(100.0, ge=0.0, le=100.0)
    eol_soh: float = Field(
        0.7, gt=0.3, lt=1.0, description="A battery below this SOH is at end of life"
    )

    @field_validator("battery_age")
    @classmethod
    def _fractions(cls, groups: list[AgeGroup]) -> list[AgeGroup]:
        if not groups:
            raise ValueError("expected at least one age group")
        total = sum(g.fraction for g in groups)
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise ValueError(f"expected fractions summing to 1, got {total:g}")
        return groups

    @model_validator(mode="after")
    def _soc_range(self) -> FleetConfig:
        if self.initial_soc_min_pct > self.initial_soc_max_pct:
            raise ValueError(
                f"expected initial_soc_min_pct <= initial_soc_max_pct, got {self.initial_soc_min_pct} "
                f"and {self.initial_soc_max_pct}"
            )
        return self


class DepotConfig(_Strict):
    """A yard: vans start and end here; swapped-out batteries charge here."""

    id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    north_km: float = Field(ge=-50.0, le=50.0, description="Offset from the city centre")
    east_km: float = Field(ge=-50.0, le=50.0)
    chargers: int = Field(ge=0, le=10_000, description="Batteries that can charge at once")
    charged_batteries: int = Field(
        ge=0, le=100_000, description="Charged spares on the shelf at the start"
    )
    closed: bool = Field(False, description="A closed depot has no vans, no chargers and no stock")


_Skill = Literal["swap", "replace", "inspect"]
_ALL_SKILLS: tuple[_Skill, ...] = ("swap", "replace", "inspect")


class ShiftConfig(_Strict):
    """Technicians working the same hours from the same depot."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    start_h: float = Field(ge=0.0, lt=24.0, description="Local hour the shift starts")
    end_h: float = Field(
        gt=0.0, le=30.0, description="Local hour it ends (past 24: after midnight)"
    )
    technicians: int = Field(ge=0, le=1000)
    depot: str | None = Field(
        None, description="Depot id; none: the shift's vans spread over the open depots"
    )
    van_capacity: int = Field(30, ge=1, le=500, description="Charged batteries a van carries")
    skills: list[_Skill] = Field(default_factory=lambda: list(_ALL_SKILLS))

    @model_validator(mode="after")
    def _hours(self) -> ShiftConfig:
        if self.end_h <= self.start_h:
            raise ValueError(f"expected end_h > start_h, got {self.start_h} and {self.end_h}")
        return self


class SwapPolicyConfig(_Strict):
    """Which batteries the planner is asked to swap.

    ``priority_model``: production's decision (the Random Forest's expected lost rides).
    ``threshold``: every vehicle whose battery is below ``threshold_soc_pct``, all of equal
    value, the rule many operators start with.
    """

    kind: Literal["priority_model", "threshold"] = "priority_model"
    threshold_soc_pct: float | None = Field(None, gt=0.0, lt=100.0)
    soft_anomaly_inspections: bool = Field(
        False,
        description=(
            "Soft anomaly flags (voltage residual, sequence error) raise inspections as in production; off by "
            "default: those detectors are calibrated on seconds-apart telemetry, not the loop's coarse samples"
        ),
    )

    @model_validator(mode="after")
    def _threshold(self) -> SwapPolicyConfig:
        if (self.kind == "threshold") != (self.threshold_soc_pct is not None):
            raise ValueError("expected threshold_soc_pct with kind 'threshold', and only then")
        return self


class WeatherConfig(_Strict):
    """The seeded weather generator's climate, shifted, or a recorded weather file.

    ``recorded_csv`` (columns ``ts``, ``temp_c``, ``precipitation_mm``, hourly, Unix s) replaces
    the generator; the offset and rain scale still apply to it.
    """

    annual_mean_c: float = Field(10.0, ge=-30.0, le=40.0)
    seasonal_amplitude_c: float = Field(9.5, ge=0.0, le=30.0)
    daily_amplitude_c: float = Field(4.0, ge=0.0, le=20.0)
    temp_offset_c: float = Field(
        0.0, ge=-30.0, le=30.0, description="Added to every hour (a heatwave: +10)"
    )
    rain_scale: float = Field(
        1.0, ge=0.0, le=10.0, description="Multiplies every hour's precipitation"
    )
    recorded_csv: str | None = None


class DemandConfig(_Strict):
    rides_per_zone_per_day: float = Field(
        60.0, ge=0.0, le=100_000.0, description="An average zone's weekday rides"
    )
    multiplier: float = Field(1.0, ge=0.0, le=20.0, description="Scales every zone and hour")
    ride_km_mean: float = Field(2.2, gt=0.1, le=30.0)
    ride_speed_kmh: float = Field(15.0, gt=3.0, le=45.0)
    energy_wh_per_km: float = Field(
        16.0, gt=1.0, le=200.0, description="At 20 C with an average rider"
    )


class CostConfig(_Strict):
    """Unit costs, stated so every cost figure of a report can be checked by hand."""

    technician_eur_per_h: float = Field(32.0, ge=0.0)
    van_eur_per_km: float = Field(0.30, ge=0.0)
    energy_eur_per_kwh: float = Field(0.25, ge=0.0)
    battery_eur: float = Field(380.0, ge=0.0, description="Replacing a battery at end of life")
    revenue_eur_per_ride: float = Field(3.5, ge=0.0)


class LoopConfig(_Strict):
    """How finely the loop runs; coarser is faster, finer is closer to production."""

    tick_s: float = Field(60.0, ge=5.0, le=600.0, description="Simulation step")
    report_interval_s: float = Field(
        3600.0,
        ge=10.0,
        le=7200.0,
        description="A parked vehicle reports this often (riding: every tick, sent at the ride's end)",
    )
    score_interval_s: float = Field(7200.0, ge=60.0, le=86_400.0, description="Twins' scoring tick")
    plan_interval_s: float = Field(3600.0, ge=60.0, le=86_400.0, description="Scheduled re-plans")
    solve_time_limit_s: float = Field(5.0, gt=0.0, le=600.0, description="Safety cap of one solve")
    solution_limit: int = Field(
        10,
        ge=1,
        le=100_000,
        description="Improving solutions per solve: a solve stops at the same point on any machine",
    )
    candidates_per_shard: int = Field(300, ge=1, le=100_000)
    max_jobs_per_plan: int = Field(
        400, ge=1, le=100_000, description="Most jobs one planning round routes (critical, then most valuable)"
    )
    shard_size: int = Field(5000, ge=10, le=200_000, description="Twins per shard actor")


class StartConfig(_Strict):
    """Where the fleet starts: generated from ``fleet``, the live twins, or a saved snapshot."""

    source: Literal["generated", "live", "file"] = "generated"
    path: str | None = Field(None, description="Snapshot file (with source: file)")

    @model_validator(mode="after")
    def _path(self) -> StartConfig:
        if (self.source == "file") != (self.path is not None):
            raise ValueError("expected path with source 'file', and only then")
        return self


class Scenario(_Strict):
    """One what-if: everything a run needs besides its seed."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.+-]+$")
    description: str = Field("", max_length=2000)
    start_date: dt.date = Field(
        dt.date(2026, 6, 1), description="First simulated day (local midnight)"
    )
    days: int = Field(1, ge=1, le=3650)
    seeds: list[int] = Field(default_factory=lambda: [1, 2, 3], min_length=1, max_length=100)
    city: CityConfig = Field(default_factory=CityConfig)
    fleet: FleetConfig = Field(default_factory=FleetConfig)
    depots: list[DepotConfig] = Field(min_length=1)
    shifts: list[ShiftConfig] = Field(default_factory=list)
    swap_policy: SwapPolicyConfig = Field(default_factory=SwapPolicyConfig)
    weather: WeatherConfig = Field(default_factory=WeatherConfig)
    demand: DemandConfig = Field(default_factory=DemandConfig)
    costs: CostConfig = Field(default_factory=CostConfig)
    loop: LoopConfig = Field(default_factory=LoopConfig)
    start: StartConfig = Field(default_factory=StartConfig)

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds) or min(seeds) < 0:
            raise ValueError(f"expected distinct seeds >= 0, got {seeds}")
        return seeds

    @model_validator(mode="after")
    def _references(self) -> Scenario:
        # These checks span sections, so pydantic reports them at the top; each message
        # starts with the key path itself, as field errors do.
        ids = [d.id for d in self.depots]
        if len(set(ids)) != len(ids):
            raise ValueError(f"depots: expected distinct ids, got {ids}")
        open_ids = {d.id for d in self.depots if not d.closed}
        if not open_ids:
            raise ValueError(f"depots: expected at least one open depot, got all closed: {ids}")
        names = [s.name for s in self.shifts]
        if len(set(names)) != len(names):
            raise ValueError(f"shifts: expected distinct names, got {names}")
        for i, s in enumerate(self.shifts):
            if s.depot is not None and s.depot not in ids:
                raise ValueError(
                    f"shifts.{i}.depot: shift {s.name!r}: expected a depot among {sorted(ids)}, got {s.depot!r}"
                )
        for i, d in enumerate(self.depots):
            if math.hypot(d.north_km, d.east_km) > self.city.radius_km * 1.5:
                raise ValueError(
                    f"depots.{i}: depot {d.id!r}: expected within 1.5 x city.radius_km "
                    f"({1.5 * self.city.radius_km:g} km) of the centre, "
                    f"got {math.hypot(d.north_km, d.east_km):.1f} km"
                )
        return self

    @property
    def technicians(self) -> int:
        return sum(s.technicians for s in self.shifts)

    def with_seeds(self, seeds: list[int]) -> Scenario:
        return self.model_validate({**self.model_dump(), "seeds": seeds})


def _merge(base: Mapping[str, Any], delta: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in delta.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _read_mapping(path: Path, depth: int = 0) -> dict[str, Any]:
    if depth > _MAX_BASE_DEPTH:
        raise ScenarioError(
            f"{path}: expected at most {_MAX_BASE_DEPTH} nested 'base' files (a cycle?)"
        )
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ScenarioError(f"{path}: cannot read the scenario: {err.strerror or err}") from None
    except yaml.YAMLError as err:
        raise ScenarioError(f"{path}: expected YAML, got a syntax error: {err}") from None
    if not isinstance(raw, dict):
        raise ScenarioError(f"{path}: expected a mapping at the top, got {type(raw).__name__}")
    base = raw.pop("base", None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise ScenarioError(f"{path}: base: expected a file name, got {base!r}")
    return _merge(_read_mapping((path.parent / base).resolve(), depth + 1), raw)


def _format_errors(source: str, err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"])
        if e["type"] == "missing":
            lines.append(f"  {where}: missing")
        elif not where:
            # A cross-section check: its input is the whole scenario, too long to quote, and
            # its message names the key itself.
            lines.append(f"  {e['msg']}")
        else:
            lines.append(f"  {where}: {e['msg']} (got {e.get('input')!r})")
    return f"{source}: invalid scenario:\n" + "\n".join(lines)


def scenario_from_mapping(data: Mapping[str, Any], source: str = "scenario") -> Scenario:
    """Validate a scenario given as a mapping (a parsed file, an HTTP body)."""
    try:
        return Scenario.model_validate(dict(data))
    except ValidationError as err:
        raise ScenarioError(_format_errors(source, err)) from None


def load_scenario(path: str | Path) -> Scenario:
    """Read, merge (``base:``) and validate a scenario file.

    Raises
    ------
    ScenarioError
        Unreadable file, bad YAML, unknown keys, impossible values; the message names
        the file and the key.
    """
    p = Path(path)
    return scenario_from_mapping(_read_mapping(p), str(p))

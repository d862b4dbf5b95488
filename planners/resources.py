"""What the planner routes with: technicians (shifts, vans, skills) and depots (charged stock).

Validated values, no I/O. Times are Unix seconds; a shift is one window per day given as
seconds after local midnight, so the same roster describes every day.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from planners.errors import ProblemError

__all__ = ["Depot", "Technician", "default_roster", "shift_window_s"]

SKILLS = frozenset({"swap", "replace", "inspect"})


@dataclass(frozen=True, kw_only=True)
class Depot:
    """A yard where vans start and end, with charged batteries in stock.

    Parameters
    ----------
    id
        Name of the depot.
    lat, lon
        Where it is, degrees.
    charged_stock
        Charged batteries on the shelf now; a van is loaded from it at the start of a shift.
    """

    id: str
    lat: float
    lon: float
    charged_stock: int

    def __post_init__(self) -> None:
        if not self.id.strip():
            raise ProblemError(f"Expected a non-empty depot id, got {self.id!r}.")
        if not (-90 <= self.lat <= 90 and -180 <= self.lon <= 180):
            raise ProblemError(f"Expected depot {self.id} at valid (lat, lon), got ({self.lat}, {self.lon}).")
        if self.charged_stock < 0:
            raise ProblemError(f"Expected charged_stock >= 0 at depot {self.id}, got {self.charged_stock}.")


@dataclass(frozen=True, kw_only=True)
class Technician:
    """One technician and their van.

    Parameters
    ----------
    id
        Name of the technician.
    depot_id
        Where the shift starts and ends.
    shift_start_h, shift_end_h
        Local hours of the shift, e.g. 7.0 and 15.0.
    van_capacity
        Charged batteries the van carries.
    skills
        Subset of ``{"swap", "replace", "inspect"}``.
    fixed_cost_m
        Cost of sending this technician out at all, in metres of driving (the objective's
        unit): it keeps a lightly loaded day from using every van.
    """

    id: str
    depot_id: str
    shift_start_h: float
    shift_end_h: float
    van_capacity: int
    skills: frozenset[str] = field(default_factory=lambda: frozenset({"swap"}))
    fixed_cost_m: int = 2000

    def __post_init__(self) -> None:
        if not self.id.strip():
            raise ProblemError(f"Expected a non-empty technician id, got {self.id!r}.")
        if not 0.0 <= self.shift_start_h < self.shift_end_h <= 48.0:
            raise ProblemError(
                f"Expected 0 <= shift_start_h < shift_end_h <= 48 for {self.id}, got "
                f"{self.shift_start_h} and {self.shift_end_h}."
            )
        if self.van_capacity < 0 or self.fixed_cost_m < 0:
            raise ProblemError(
                f"Expected van_capacity >= 0 and fixed_cost_m >= 0 for {self.id}, got "
                f"{self.van_capacity} and {self.fixed_cost_m}."
            )
        skills = frozenset(self.skills)
        if not skills <= SKILLS:
            raise ProblemError(f"Expected skills within {sorted(SKILLS)} for {self.id}, got {sorted(skills)}.")
        object.__setattr__(self, "skills", skills)


def shift_window_s(tech: Technician, now_s: float, utc_offset_h: float) -> tuple[float, float] | None:
    """Today's shift of ``tech`` as Unix seconds, or ``None`` when it has already ended."""
    local = now_s + utc_offset_h * 3600.0
    midnight = math.floor(local / 86_400.0) * 86_400.0 - utc_offset_h * 3600.0
    start = midnight + tech.shift_start_h * 3600.0
    end = midnight + tech.shift_end_h * 3600.0
    return None if end <= now_s else (start, end)


def default_roster(center_lat: float, center_lon: float, technicians: int = 6) -> tuple[tuple[Technician, ...], tuple[Depot, ...]]:
    """Two depots 3 km north-west and south-east of the centre; early and late shifts.

    Every third technician can also replace batteries and inspect vehicles; vans carry 30
    charged batteries; each depot starts the day with 120.
    """
    dlat = 3.0 / 111.32 / math.sqrt(2)
    dlon = dlat / math.cos(math.radians(center_lat))
    depots = (
        Depot(id="depot-nw", lat=center_lat + dlat, lon=center_lon - dlon, charged_stock=120),
        Depot(id="depot-se", lat=center_lat - dlat, lon=center_lon + dlon, charged_stock=120),
    )
    techs = tuple(
        Technician(
            id=f"tech-{k + 1:02d}", depot_id=depots[k % 2].id,
            shift_start_h=(7.0, 14.0)[(k // 2) % 2], shift_end_h=(15.0, 22.0)[(k // 2) % 2],
            van_capacity=30,
            skills=frozenset({"swap", "replace", "inspect"}) if k % 3 == 0 else frozenset({"swap"}),
        )
        for k in range(technicians)
    )
    return techs, depots

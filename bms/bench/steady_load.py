"""Telemetry of a fleet in steady service: the load ``bms bench soak`` offers.

:class:`~bms.bench.ingest.SyntheticLoad` draws current, temperature and speed afresh for
every sample: cheap, and enough to load the ingest path, but no pack behaves like that, and
a soak runs the models too: within a minute its anomaly detectors flagged 15-60 % of 10,000
such batteries, and the planner got a job for every one of them. A soak should measure a
fleet, not a fleet on fire, so :class:`SteadyLoad` names, places and stamps its batteries
as ``SyntheticLoad`` does, but each one is a pack of the simulator's physics
(:class:`sim.battery_model.PackArray`: terminal and cell voltages from the state of charge,
the current and the pack's own ageing) in steady service:

* a quarter ride (a few amperes, at a cruising speed that follows the current, round a
  loop a kilometre or so across, so they stay where they are), the rest are parked (the
  telematics unit's draw, standing still); a rider whose pack falls under 20 % parks;
* each battery's current drifts slowly round its own level (an Ornstein-Uhlenbeck process,
  two-minute memory): no current steps, so nothing looks like a sudden sag;
* the temperature follows the lumped thermal model from the equilibrium of that level (a
  pack that has been at it a while), so it moves by hundredths of a degree per sample;
* the state of charge falls by coulomb counting: slowly, and never up.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from bms.bench.ingest import SyntheticLoad
from sim.battery_model import PackArray, PackParams
from sim.fleet_params import FleetParams

__all__ = ["SteadyLoad"]

FloatArray = npt.NDArray[np.float64]

_M_PER_DEG_LAT = 111_320.0
_FLEET = FleetParams()


def _settles_at_c(p: PackParams, air_c: FloatArray, resistance_ohm: FloatArray, current_a: FloatArray) -> FloatArray:
    """Where a pack's temperature settles at a steady current: Joule heat against the air,
    the lumped model of :meth:`sim.battery_model.PackArray.step`."""
    out: FloatArray = air_c + current_a * current_a * resistance_ohm * p.cooling_time_constant_s / p.heat_capacity_j_per_k
    return out


class SteadyLoad(SyntheticLoad):
    """:class:`~bms.bench.ingest.SyntheticLoad` whose batteries behave like packs in service.

    Same batteries, vehicles, places, ``seq`` and timestamps as ``SyntheticLoad`` (same
    seed); only the sample values differ (see the module docstring). Deterministic for a
    seed and a sequence of :meth:`messages` calls.
    """

    #: Share of the batteries riding at the start.
    RIDING_FRACTION = 0.25
    #: Air temperature of the city (each battery's own air is within a degree or two).
    AMBIENT_C = 15.0
    #: A rider parks under this state of charge.
    PARK_BELOW_SOC_PCT = 20.0
    #: Memory (1/theta) of the current's drift, and its spread round a rider's level.
    CURRENT_MEMORY_S = 120.0
    RIDING_CURRENT_SD_A = 0.4
    PARKED_CURRENT_SD_A = 0.01

    def __init__(self, run: str, n: int, m: int, seed: int = 11) -> None:
        super().__init__(run, n, m, seed)
        rng = self.rng
        self.packs = PackArray.create(n, PackParams(), rng, soc_pct=self.soc)
        self.riding = rng.random(n) < self.RIDING_FRACTION
        self.level_a = np.where(self.riding, rng.uniform(2.0, 6.0, n), _FLEET.parked_current_a)
        self.current_a = self.level_a.copy()
        self.cruise_kmh = rng.uniform(12.0, 22.0, n)
        self.heading_rad = rng.uniform(0.0, 2.0 * math.pi, n)
        # A loop every 5-15 minutes, either way round: 0.4-1.8 km across at cruising speed.
        self.turn_rad_s = rng.choice([-1.0, 1.0], n) * 2.0 * math.pi / rng.uniform(300.0, 900.0, n)
        self.ambient_c = self.AMBIENT_C + rng.normal(0.0, 1.5, n)
        self.packs.temp_c[:] = _settles_at_c(self.packs.params, self.ambient_c, self.packs.resistance_ohm, self.level_a)

    def _values(self, idx: np.ndarray, ts_ms: np.ndarray, previous_ms: np.ndarray) -> np.ndarray:
        k, m = ts_ms.shape
        rng, packs, c = self.rng, self.packs, self.col
        # Seconds since each battery's previous sample (0 for its very first).
        before = np.where(previous_ms > 0, previous_ms, ts_ms[:, 0])
        dt_s = np.diff(np.concatenate([before[:, None], ts_ms], axis=1), axis=1) / 1000.0
        elapsed_s = np.cumsum(dt_s, axis=1)
        span_s = elapsed_s[:, -1]

        # The current drifts from where it was to an Ornstein-Uhlenbeck step over the span
        # (exact for any span), in a straight line through the samples between.
        theta = 1.0 / self.CURRENT_MEMORY_S
        riding = self.riding[idx]
        level = self.level_a[idx]
        start = self.current_a[idx]
        keep = np.exp(-theta * span_s)
        sd = np.where(riding, self.RIDING_CURRENT_SD_A, self.PARKED_CURRENT_SD_A) * np.sqrt(1.0 - keep * keep)
        end = np.maximum(level + (start - level) * keep + sd * rng.standard_normal(k), 0.0)
        frac = np.divide(elapsed_s, span_s[:, None], out=np.zeros_like(elapsed_s), where=span_s[:, None] > 0)
        current = start[:, None] + (end - start)[:, None] * frac

        # Coulomb counting, and the thermal model from where each pack was.
        capacity = packs.capacity_ah[idx][:, None]
        soc = np.clip(packs.soc_pct[idx][:, None] - np.cumsum(current * dt_s, axis=1) / 36.0 / capacity, 0.0, 100.0)
        settle = _settles_at_c(packs.params, self.ambient_c[idx][:, None], packs.resistance_ohm[idx][:, None], current)
        tau_s = packs.params.cooling_time_constant_s
        temp = settle + (packs.temp_c[idx][:, None] - settle) * np.exp(-elapsed_s / tau_s)

        # Riders cruise at a speed that follows the current, round their loop.
        speed = np.where(riding[:, None], np.minimum(self.cruise_kmh[idx][:, None] * current / level[:, None], 25.0), 0.0)
        heading = self.heading_rad[idx][:, None] + self.turn_rad_s[idx][:, None] * elapsed_s
        step_m = speed / 3.6 * dt_s
        lat0 = self.lat[idx]
        lat = lat0[:, None] + np.cumsum(step_m * np.cos(heading), axis=1) / _M_PER_DEG_LAT
        lon = self.lon[idx][:, None] + np.cumsum(step_m * np.sin(heading), axis=1) / (
            _M_PER_DEG_LAT * np.cos(np.radians(lat0))[:, None]
        )
        odo = self.odo[idx][:, None] + np.cumsum(step_m, axis=1) / 1000.0

        # Voltages by the pack model, sample by sample (each sample a pack in its state).
        each = np.repeat(idx, m)
        at = PackArray(
            params=packs.params, soh=packs.soh[each], capacity_ah=packs.capacity_ah[each],
            resistance_ohm=packs.resistance_ohm[each], imbalance_v=packs.imbalance_v[each],
            soc_pct=soc.ravel(), temp_c=temp.ravel(),
        )  # fmt: skip
        flat = current.ravel()
        cell_min, cell_max = at.cell_voltage_range_v(flat)
        v = np.empty((k * m, len(c)))
        v[:, c["ts"]] = (ts_ms / 1000.0).ravel()
        v[:, c["pack_voltage_v"]] = at.terminal_voltage_v(flat)
        # The sensor's noise, as the simulator's vehicles report it.
        v[:, c["current_a"]] = flat + _FLEET.current_noise_a * rng.standard_normal(k * m)
        v[:, c["temp_c"]] = at.temp_c
        v[:, c["soc_pct"]] = at.soc_pct
        v[:, c["lat"]] = lat.ravel()
        v[:, c["lon"]] = lon.ravel()
        v[:, c["odometer_km"]] = odo.ravel()
        v[:, c["speed_kmh"]] = speed.ravel()
        v[:, c["cell_min_v"]] = cell_min
        v[:, c["cell_max_v"]] = cell_max

        # Where each battery is now; a rider low on charge parks.
        packs.soc_pct[idx] = soc[:, -1]
        packs.temp_c[idx] = temp[:, -1]
        self.current_a[idx] = end
        self.lat[idx], self.lon[idx], self.odo[idx] = lat[:, -1], lon[:, -1], odo[:, -1]
        self.heading_rad[idx] = heading[:, -1] % (2.0 * math.pi)
        parks = idx[riding & (soc[:, -1] < self.PARK_BELOW_SOC_PCT)]
        self.riding[parks] = False
        self.level_a[parks] = self.current_a[parks] = _FLEET.parked_current_a
        return v

"""Physics-informed ageing of many packs over their service life, vectorised with numpy.

Capacity fade is the sum of a calendar and a cycle term, each a semi-empirical power law
with stress factors, the form of Schmalstieg et al., "A holistic aging model for
Li(NiMnCo)O2 based 18650 lithium-ion batteries" (J. Power Sources 257, 2014) and Wang et
al., "Cycle-life model for graphite-LiFePO4 cells" (J. Power Sources 196, 2011)::

    calendar loss  q_cal = a_cal * A(T, Ea_cal) * (1 + k_soc (SOC_store - 0.5)) * t_days^0.75
    cycle loss     q_cyc = b_cyc * A(T, Ea_cyc) * (0.6 + 0.8 DoD) * exp(k_c (C - 0.5)) * EFC^0.5
    Arrhenius      A(T, Ea) = exp(Ea / R * (1/T_ref - 1/T))
    SOH            = 1 - q_cal - q_cyc
    resistance     R / R_new = 1 + g_cal q_cal + g_cyc q_cyc

Stresses change from day to day (seasons, a new operating area), so the power laws are
advanced by the *equivalent-time* method: the loss so far is converted into the time (or
throughput) that would have produced it under today's stress, and the law continues from
there. The constants are calibrated so that a pack at 25 C cycled once a day at 60 % depth
reaches 80 % SOH after about 900 equivalent full cycles (2.5 years), in the range makers of
scooter packs quote; they are assumptions, not fitted to this fleet.

The model is the label source for the health model: :class:`LifetimeSimulator` produces,
for each pack and snapshot day, the counters a live twin derives from telemetry (equivalent
full cycles, Ah throughput, depth-of-discharge histogram, time hot, estimates of capacity and
resistance with the scatter of the twin's estimators) next to the true SOH and resistance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = [
    "AgeingParams",
    "LifetimeSample",
    "LifetimeSimulator",
    "UsageParams",
    "age_one_day",
    "initial_fade",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

_GAS_CONSTANT_J_PER_MOL_K = 8.314
_KELVIN = 273.15
_N_DOD_BINS = 10


@dataclass(frozen=True)
class AgeingParams:
    """Constants of the calendar and cycle ageing laws (see the module docstring)."""

    a_cal: float = 2.85e-4
    calendar_exponent: float = 0.75
    ea_cal_j_per_mol: float = 50_000.0
    k_soc: float = 0.8
    b_cyc: float = 3.6e-3
    cycle_exponent: float = 0.5
    ea_cyc_j_per_mol: float = 30_000.0
    k_c_rate: float = 0.45
    t_ref_c: float = 25.0
    resistance_growth_calendar: float = 2.5
    resistance_growth_cycle: float = 4.5

    def __post_init__(self) -> None:
        for name in ("a_cal", "b_cyc", "calendar_exponent", "cycle_exponent"):
            if not getattr(self, name) > 0.0:
                raise ValueError(f"Expected {name} > 0, got {getattr(self, name)}.")
        if not 0.0 < self.calendar_exponent <= 1.0 or not 0.0 < self.cycle_exponent <= 1.0:
            raise ValueError(
                f"Expected ageing exponents in (0, 1], got {self.calendar_exponent} and "
                f"{self.cycle_exponent}."
            )

    def arrhenius(self, temp_c: FloatArray, ea_j_per_mol: float) -> FloatArray:
        t_k = temp_c + _KELVIN
        t_ref_k = self.t_ref_c + _KELVIN
        return np.exp(ea_j_per_mol / _GAS_CONSTANT_J_PER_MOL_K * (1.0 / t_ref_k - 1.0 / t_k))


@dataclass(frozen=True)
class UsageParams:
    """Ranges from which each simulated pack draws how it is used (uniform draws).

    Scooter packs see between a light and a heavy duty day; the climate range spans a
    northern-European to a Mediterranean city.
    """

    rated_capacity_ah: float = 15.0
    resistance_new_ohm: float = 0.117
    efc_per_day: tuple[float, float] = (0.2, 1.6)
    mean_dod: tuple[float, float] = (0.25, 0.9)
    climate_mean_c: tuple[float, float] = (4.0, 26.0)
    seasonal_amplitude_c: tuple[float, float] = (3.0, 12.0)
    self_heating_c: tuple[float, float] = (3.0, 14.0)
    c_rate: tuple[float, float] = (0.3, 1.6)
    storage_soc: tuple[float, float] = (0.35, 0.9)
    hot_threshold_c: float = 45.0
    capacity_estimate_noise: float = 0.025
    resistance_estimate_noise: float = 0.08

    def __post_init__(self) -> None:
        for name in (
            "efc_per_day", "mean_dod", "climate_mean_c", "seasonal_amplitude_c",
            "self_heating_c", "c_rate", "storage_soc",
        ):  # fmt: skip
            lo, hi = getattr(self, name)
            if not lo <= hi:
                raise ValueError(
                    f"Expected {name} as (low, high) with low <= high, got {(lo, hi)}."
                )
        if not 0.0 < self.mean_dod[0] and self.mean_dod[1] <= 1.0:
            raise ValueError(f"Expected mean_dod within (0, 1], got {self.mean_dod}.")
        if self.rated_capacity_ah <= 0.0 or self.resistance_new_ohm <= 0.0:
            raise ValueError(
                f"Expected rated_capacity_ah > 0 and resistance_new_ohm > 0, got "
                f"{self.rated_capacity_ah} and {self.resistance_new_ohm}."
            )


@dataclass(frozen=True)
class LifetimeSample:
    """One row per (pack, snapshot day): what a twin would have derived, and the truth.

    The counter columns carry the names of the :class:`twins.twin_table.TwinTable`
    columns they stand in for.
    """

    pack: IntArray
    age_days: FloatArray
    efc: FloatArray
    ah_discharged_ah: FloatArray
    ah_charged_ah: FloatArray
    cycles_completed: IntArray
    dod_hist: IntArray
    time_hot_s: FloatArray
    max_temp_c: FloatArray
    rated_capacity_ah: FloatArray
    capacity_est_ah: FloatArray
    capacity_estimates: IntArray
    resistance_est_ohm: FloatArray
    resistance_samples: IntArray
    soh: FloatArray
    resistance_ratio: FloatArray

    def __len__(self) -> int:
        return int(self.pack.shape[0])


class LifetimeSimulator:
    """Ages ``n_packs`` packs day by day and snapshots their counters.

    Parameters
    ----------
    ageing, usage
        The laws and the usage ranges.
    seed
        Fixes every draw: the same seed gives the same fleet history.
    """

    def __init__(
        self,
        ageing: AgeingParams = AgeingParams(),
        usage: UsageParams = UsageParams(),
        seed: int = 0,
    ) -> None:
        self.ageing = ageing
        self.usage = usage
        self.seed = seed

    def run(self, n_packs: int, days: int, snapshots_per_pack: int = 4) -> LifetimeSample:
        """Simulate ``days`` of service and take ``snapshots_per_pack`` random snapshots each.

        Each pack enters service on a random day, so the snapshots cover packs from new to
        ``days`` old.
        """
        if n_packs < 1 or days < 1 or snapshots_per_pack < 1:
            raise ValueError(
                f"Expected n_packs, days and snapshots_per_pack >= 1, got {n_packs}, {days} "
                f"and {snapshots_per_pack}."
            )
        rng = np.random.default_rng(self.seed)
        u, a = self.usage, self.ageing

        def draw(bounds: tuple[float, float]) -> FloatArray:
            return rng.uniform(bounds[0], bounds[1], n_packs)

        efc_day = draw(u.efc_per_day)
        dod = draw(u.mean_dod)
        climate = draw(u.climate_mean_c)
        season_amp = draw(u.seasonal_amplitude_c)
        heat = draw(u.self_heating_c)
        c_rate = draw(u.c_rate)
        store_soc = draw(u.storage_soc)
        season_phase = rng.uniform(0.0, 2.0 * np.pi)
        start_day = rng.integers(0, days, n_packs)
        # Snapshots spread over each pack's own service time, so ages cover new to old.
        span = (days - start_day)[:, None]
        snap_day = start_day[:, None] + (rng.random((n_packs, snapshots_per_pack)) * span).astype(
            np.int64
        )

        q_cal = np.zeros(n_packs)
        q_cyc = np.zeros(n_packs)
        efc = np.zeros(n_packs)
        cycles = np.zeros(n_packs, dtype=np.int64)
        hist = np.zeros((n_packs, _N_DOD_BINS), dtype=np.int64)
        hot_s = np.zeros(n_packs)
        max_temp = np.full(n_packs, -np.inf)
        ah_dis = np.zeros(n_packs)
        rows: list[dict[str, npt.NDArray[np.generic]]] = []
        cal_k = 1.0 + a.k_soc * (store_soc - 0.5)
        dod_stress = 0.6 + 0.8 * dod
        c_stress = np.exp(a.k_c_rate * (c_rate - 0.5))
        for day in range(days):
            active = day >= start_day
            ambient = climate + season_amp * np.sin(2.0 * np.pi * day / 365.0 + season_phase)
            ambient = ambient + rng.normal(0.0, 2.5, n_packs)
            # Calendar ageing at the daily ambient; cycling at ambient plus self-heating.
            k_cal = a.a_cal * a.arrhenius(ambient, a.ea_cal_j_per_mol) * cal_k
            t_eq = (q_cal / k_cal) ** (1.0 / a.calendar_exponent)
            q_cal = np.where(active, k_cal * (t_eq + 1.0) ** a.calendar_exponent, q_cal)
            cycled_efc = np.where(active, rng.gamma(4.0, efc_day / 4.0), 0.0)
            ride_temp = ambient + heat * c_rate
            k_cyc = a.b_cyc * a.arrhenius(ride_temp, a.ea_cyc_j_per_mol) * dod_stress * c_stress
            x_eq = (q_cyc / k_cyc) ** (1.0 / a.cycle_exponent)
            q_cyc = k_cyc * (x_eq + cycled_efc) ** a.cycle_exponent
            soh = 1.0 - q_cal - q_cyc
            efc += cycled_efc
            ah_dis += cycled_efc * u.rated_capacity_ah
            # Discharge segments of the day, each with its own depth around the pack's mean.
            n_seg = rng.poisson(np.where(active, cycled_efc / dod, 0.0))
            cycles += n_seg
            total = int(n_seg.sum())
            if total:
                owners = np.repeat(np.arange(n_packs), n_seg)
                depth = rng.beta(8.0 * dod[owners], 8.0 * (1.0 - dod[owners]) + 1e-6)
                bins = np.minimum((depth * _N_DOD_BINS).astype(np.int64), _N_DOD_BINS - 1)
                np.add.at(hist, (owners, bins), 1)
            ride_hours = cycled_efc / np.maximum(c_rate, 1e-3)
            hot_frac = 1.0 / (1.0 + np.exp(-(ride_temp - u.hot_threshold_c) / 2.0))
            hot_s += ride_hours * 3600.0 * hot_frac
            peak = np.where(
                active & (cycled_efc > 0), ride_temp + rng.gamma(2.0, 1.5, n_packs), -np.inf
            )
            max_temp = np.fmax(max_temp, peak)
            for pack_idx, snap_idx in zip(*np.nonzero(snap_day == day), strict=True):
                rows.append(self._row(
                    int(pack_idx), day - int(start_day[pack_idx]), efc, ah_dis, cycles, hist,
                    hot_s, max_temp, soh, q_cal, q_cyc, rng,
                ))  # fmt: skip
                del snap_idx
        return _stack(rows)

    def _row(
        self,
        i: int,
        age_days: int,
        efc: FloatArray,
        ah_dis: FloatArray,
        cycles: IntArray,
        hist: IntArray,
        hot_s: FloatArray,
        max_temp: FloatArray,
        soh: FloatArray,
        q_cal: FloatArray,
        q_cyc: FloatArray,
        rng: np.random.Generator,
    ) -> dict[str, npt.NDArray[np.generic]]:
        u, a = self.usage, self.ageing
        r_ratio = (
            1.0 + a.resistance_growth_calendar * q_cal[i] + a.resistance_growth_cycle * q_cyc[i]
        )
        n_cap = int(min(cycles[i], 10_000))
        # The twin's coulomb-counted capacity is an EWMA of per-segment estimates: its
        # scatter shrinks with the first few estimates, then stays at the EWMA's floor.
        cap_noise = u.capacity_estimate_noise * (1.0 + 2.0 / np.sqrt(max(n_cap, 1)))
        cap = u.rated_capacity_ah * soh[i] * (1.0 + rng.normal(0.0, cap_noise)) if n_cap else np.nan
        n_res = int(min(efc[i] * 20.0, 100_000))
        res = (
            u.resistance_new_ohm * r_ratio * (1.0 + rng.normal(0.0, u.resistance_estimate_noise))
            if n_res
            else np.nan
        )
        return {
            "pack": np.array([i]),
            "age_days": np.array([float(age_days)]),
            "efc": np.array([efc[i]]),
            "ah_discharged_ah": np.array([ah_dis[i]]),
            # Charged throughput exceeds discharged by the coulombic and charger losses.
            "ah_charged_ah": np.array([ah_dis[i] * 1.02]),
            "cycles_completed": np.array([cycles[i]]),
            "dod_hist": hist[i][None, :].copy(),
            "time_hot_s": np.array([hot_s[i]]),
            "max_temp_c": np.array([max_temp[i] if np.isfinite(max_temp[i]) else np.nan]),
            "rated_capacity_ah": np.array([u.rated_capacity_ah]),
            "capacity_est_ah": np.array([cap]),
            "capacity_estimates": np.array([n_cap]),
            "resistance_est_ohm": np.array([res]),
            "resistance_samples": np.array([n_res]),
            "soh": np.array([soh[i]]),
            "resistance_ratio": np.array([r_ratio]),
        }


def _stack(rows: list[dict[str, npt.NDArray[np.generic]]]) -> LifetimeSample:
    names = LifetimeSample.__dataclass_fields__
    cols = {name: np.concatenate([r[name] for r in rows]) for name in names}
    int_cols = {"pack", "cycles_completed", "dod_hist", "capacity_estimates", "resistance_samples"}
    out = {k: v.astype(np.int64 if k in int_cols else np.float64) for k, v in cols.items()}
    return LifetimeSample(**out)  # type: ignore[arg-type]


def age_one_day(
    q_cal: FloatArray,
    q_cyc: FloatArray,
    temp_c: FloatArray,
    store_soc: FloatArray,
    efc: FloatArray,
    dod: FloatArray,
    c_rate: FloatArray,
    params: AgeingParams = AgeingParams(),
) -> tuple[FloatArray, FloatArray]:
    """Calendar and cycle fade after one more day at these stresses (equivalent-time method).

    The same laws as :class:`LifetimeSimulator`, for packs whose day was simulated in
    detail (what-if runs): mean temperature, mean stored charge (0-1), equivalent full
    cycles, depth of discharge (0-1) and C-rate of that day, one value per pack.
    """
    a = params
    k_cal = a.a_cal * a.arrhenius(temp_c, a.ea_cal_j_per_mol) * (1.0 + a.k_soc * (store_soc - 0.5))
    t_eq = (q_cal / k_cal) ** (1.0 / a.calendar_exponent)
    new_cal = k_cal * (t_eq + 1.0) ** a.calendar_exponent
    k_cyc = (
        a.b_cyc
        * a.arrhenius(temp_c, a.ea_cyc_j_per_mol)
        * (0.6 + 0.8 * dod)
        * np.exp(a.k_c_rate * (c_rate - 0.5))
    )
    x_eq = (q_cyc / k_cyc) ** (1.0 / a.cycle_exponent)
    new_cyc = k_cyc * (x_eq + efc) ** a.cycle_exponent
    return new_cal, new_cyc


def initial_fade(
    age_days: FloatArray,
    temp_c: float,
    efc_per_day: FloatArray,
    params: AgeingParams = AgeingParams(),
) -> tuple[FloatArray, FloatArray]:
    """Calendar and cycle fade of packs ``age_days`` old that lived at ``temp_c``, half
    charged, cycling ``efc_per_day`` at 60 % depth and C/2: the start of an aged fleet."""
    a = params
    t = np.full_like(np.asarray(age_days, dtype=np.float64), temp_c)
    k_cal = a.a_cal * a.arrhenius(t, a.ea_cal_j_per_mol)
    k_cyc = a.b_cyc * a.arrhenius(t, a.ea_cyc_j_per_mol) * (0.6 + 0.8 * 0.6)
    q_cal: FloatArray = k_cal * np.asarray(age_days) ** a.calendar_exponent
    q_cyc: FloatArray = k_cyc * (np.asarray(age_days) * efc_per_day) ** a.cycle_exponent
    return q_cal, q_cyc

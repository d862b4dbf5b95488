"""Equivalent-circuit model of many scooter Li-ion packs at once, vectorised with numpy.

Each pack is ``series_cells`` NMC cell groups in series with one lumped resistance
(an R0 model: no RC branches, which only matter below the seconds the fleet reports at)::

    terminal voltage = series_cells * OCV(SOC) - I * R        (I > 0 while discharging)
    dSOC/dt          = -I / (SOH * rated capacity)            (coulomb counting)
    C_th dT/dt       = I^2 R - C_th (T - T_ambient) / tau     (lumped thermal model)

Ageing enters through the state of health (SOH): it scales the usable capacity, raises the
resistance and widens the spread between the weakest and strongest cell group.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["PackArray", "PackParams", "ocv_cell_v"]

FloatArray = npt.NDArray[np.float64]
IndexArray = npt.NDArray[np.intp]

# Open-circuit voltage of one NMC cell against state of charge, resting at about 25 C.
# Shaped after published NMC 18650/21700 curves: the steep knee below 10 % and the
# shallow plateau around 30-60 % are what make a low pack voltage a late warning.
_OCV_SOC_PCT = np.array(
    [0.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 95.0, 100.0]
)
_OCV_CELL_V = np.array(
    [3.00, 3.20, 3.33, 3.46, 3.53, 3.57, 3.62, 3.66, 3.71, 3.78, 3.86, 3.95, 4.06, 4.12, 4.20]
)
_SECONDS_PER_HOUR = 3600.0


def ocv_cell_v(soc_pct: FloatArray | float) -> FloatArray:
    """Open-circuit voltage of one NMC cell (V) at a state of charge in percent."""
    return np.asarray(np.interp(soc_pct, _OCV_SOC_PCT, _OCV_CELL_V), dtype=np.float64)


@dataclass(frozen=True)
class PackParams:
    """Design and ageing parameters shared by all packs of a fleet.

    Parameters
    ----------
    series_cells
        Cell groups in series: 10S (36 V nominal) to 13S (48 V nominal).
    rated_capacity_ah
        Capacity of a new pack.
    soh_min, soh_max
        Each pack draws its state of health uniformly from this range.
    cell_resistance_new_ohm
        Internal resistance of one series cell group of a new pack.
    resistance_growth_per_soh_loss
        Resistance grows as ``R_new * (1 + growth * (1 - SOH))``: 4 doubles it at 75 % SOH,
        in line with the end-of-life criteria used for Li-ion (capacity 80 %, R x2).
    resistance_spread
        Relative pack-to-pack manufacturing spread of the resistance (uniform, +-).
    imbalance_new_v, imbalance_per_soh_loss_v
        Open-circuit spread between the highest and lowest cell group: new, and added
        per unit of lost SOH (cells age at different rates, so the spread widens).
    heat_capacity_j_per_k
        Lumped heat capacity of the pack (cells, busbars, casing).
    cooling_time_constant_s
        Time constant of relaxation to ambient air.
    """

    series_cells: int = 13
    rated_capacity_ah: float = 15.0
    soh_min: float = 0.75
    soh_max: float = 1.0
    cell_resistance_new_ohm: float = 0.009
    resistance_growth_per_soh_loss: float = 4.0
    resistance_spread: float = 0.1
    imbalance_new_v: float = 0.005
    imbalance_per_soh_loss_v: float = 0.12
    heat_capacity_j_per_k: float = 3000.0
    cooling_time_constant_s: float = 1800.0

    def __post_init__(self) -> None:
        if not 10 <= self.series_cells <= 13:
            raise ValueError(
                f"Expected series_cells in [10, 13] (a 36-48 V scooter pack), got "
                f"{self.series_cells}."
            )
        if not 0.0 < self.rated_capacity_ah <= 200.0:
            raise ValueError(
                f"Expected rated_capacity_ah in (0, 200], got {self.rated_capacity_ah}."
            )
        if not 0.0 < self.soh_min <= self.soh_max <= 1.0:
            raise ValueError(
                f"Expected 0 < soh_min <= soh_max <= 1, got {self.soh_min} and {self.soh_max}."
            )
        if self.cell_resistance_new_ohm <= 0.0 or self.resistance_growth_per_soh_loss < 0.0:
            raise ValueError(
                f"Expected cell_resistance_new_ohm > 0 and resistance_growth_per_soh_loss "
                f">= 0, got {self.cell_resistance_new_ohm} and "
                f"{self.resistance_growth_per_soh_loss}."
            )
        if not 0.0 <= self.resistance_spread < 1.0:
            raise ValueError(f"Expected resistance_spread in [0, 1), got {self.resistance_spread}.")
        if self.imbalance_new_v < 0.0 or self.imbalance_per_soh_loss_v < 0.0:
            raise ValueError(
                f"Expected non-negative imbalance_new_v and imbalance_per_soh_loss_v, got "
                f"{self.imbalance_new_v} and {self.imbalance_per_soh_loss_v}."
            )
        if self.heat_capacity_j_per_k <= 0.0 or self.cooling_time_constant_s <= 0.0:
            raise ValueError(
                f"Expected heat_capacity_j_per_k > 0 and cooling_time_constant_s > 0, got "
                f"{self.heat_capacity_j_per_k} and {self.cooling_time_constant_s}."
            )


def _as_index(index: IndexArray | slice | None) -> IndexArray | slice:
    return slice(None) if index is None else index


@dataclass(eq=False)
class PackArray:
    """The state of ``n`` packs as parallel arrays; :meth:`step` advances all of them.

    Create with :meth:`create`. The per-pack constants (``soh``, ``capacity_ah``,
    ``resistance_ohm``, ``imbalance_v``) are fixed for the life of the object; ``soc_pct``
    and ``temp_c`` evolve. Methods that read the state take an optional ``index`` (an
    integer array or slice) to work on a subset without copying the whole fleet.
    """

    params: PackParams
    soh: FloatArray
    capacity_ah: FloatArray
    resistance_ohm: FloatArray
    imbalance_v: FloatArray
    soc_pct: FloatArray
    temp_c: FloatArray

    @classmethod
    def create(
        cls,
        n: int,
        params: PackParams,
        rng: np.random.Generator,
        soc_pct: FloatArray | float = 100.0,
        temp_c: FloatArray | float = 20.0,
    ) -> PackArray:
        """``n`` packs with random ageing, drawn from ``rng``.

        Parameters
        ----------
        n
            Number of packs.
        params
            Shared design parameters.
        rng
            Source of the per-pack state of health and manufacturing spread.
        soc_pct, temp_c
            Initial state of charge and temperature, scalar or one per pack.
        """
        if n < 0:
            raise ValueError(f"Expected n >= 0 packs, got {n}.")
        soh = rng.uniform(params.soh_min, params.soh_max, n)
        loss = 1.0 - soh
        spread = rng.uniform(1.0 - params.resistance_spread, 1.0 + params.resistance_spread, n)
        resistance = (
            params.series_cells
            * params.cell_resistance_new_ohm
            * (1.0 + params.resistance_growth_per_soh_loss * loss)
            * spread
        )
        # Cell-group ageing is not uniform: two packs of equal SOH differ in balance.
        imbalance = (params.imbalance_new_v + params.imbalance_per_soh_loss_v * loss) * rng.uniform(
            0.5, 1.5, n
        )
        return cls(
            params=params,
            soh=soh,
            capacity_ah=params.rated_capacity_ah * soh,
            resistance_ohm=resistance,
            imbalance_v=imbalance,
            soc_pct=np.clip(np.broadcast_to(np.asarray(soc_pct, dtype=np.float64), (n,)), 0, 100),
            temp_c=np.broadcast_to(np.asarray(temp_c, dtype=np.float64), (n,)).copy(),
        )

    def __len__(self) -> int:
        return int(self.soc_pct.shape[0])

    def open_circuit_voltage_v(self, index: IndexArray | slice | None = None) -> FloatArray:
        """Pack voltage at rest."""
        return self.params.series_cells * ocv_cell_v(self.soc_pct[_as_index(index)])

    def terminal_voltage_v(
        self, current_a: FloatArray, index: IndexArray | slice | None = None
    ) -> FloatArray:
        """Pack voltage while ``current_a`` flows (positive discharging: the voltage sags)."""
        idx = _as_index(index)
        return self.open_circuit_voltage_v(idx) - current_a * self.resistance_ohm[idx]

    def cell_voltage_range_v(
        self, current_a: FloatArray, index: IndexArray | slice | None = None
    ) -> tuple[FloatArray, FloatArray]:
        """Lowest and highest cell-group voltage while ``current_a`` flows.

        The weak group (lowest capacity, highest resistance) sits below the mean and sags
        further under load; the spread also opens up below 20 % SOC, where the OCV curve
        is steep and a small capacity mismatch becomes a large voltage difference.
        """
        idx = _as_index(index)
        mean_cell_v = self.terminal_voltage_v(current_a, idx) / self.params.series_cells
        low_soc_gain = 1.0 + 2.0 * np.clip((20.0 - self.soc_pct[idx]) / 20.0, 0.0, 1.0)
        spread_v = self.imbalance_v[idx] * low_soc_gain
        # The weak group's extra resistance grows with age like its capacity mismatch.
        weak_extra_ohm = (
            self.resistance_ohm[idx] / self.params.series_cells * (1.0 - self.soh[idx]) * 2.0
        )
        cell_min = mean_cell_v - 0.6 * spread_v - current_a * weak_extra_ohm
        cell_max = mean_cell_v + 0.4 * spread_v
        return cell_min, cell_max

    def current_for_power_a(
        self, power_w: FloatArray, index: IndexArray | slice | None = None
    ) -> FloatArray:
        """The current that delivers ``power_w`` at the terminals (negative: charging).

        Solves ``P = I (V_oc - I R)`` for the smaller root, so a higher resistance or a
        lower voltage needs more current for the same power. Power beyond the pack's
        maximum (``V_oc^2 / 4R``) is capped at the current of maximum power.
        """
        idx = _as_index(index)
        ocv = self.open_circuit_voltage_v(idx)
        r = self.resistance_ohm[idx]
        disc = np.maximum(ocv * ocv - 4.0 * r * power_w, 0.0)
        return (ocv - np.sqrt(disc)) / (2.0 * r)

    def step(self, dt_s: float, current_a: FloatArray, ambient_c: FloatArray | float) -> None:
        """Advance every pack by ``dt_s`` with a constant current over the interval.

        Parameters
        ----------
        dt_s
            Interval length; any positive value (the thermal update is the exact
            solution for constant current, so it is stable for long steps).
        current_a
            One current per pack, positive while discharging.
        ambient_c
            Air temperature, scalar or one per pack.
        """
        if not dt_s > 0.0:
            raise ValueError(f"Expected dt_s > 0, got {dt_s}.")
        if current_a.shape != self.soc_pct.shape:
            raise ValueError(
                f"Expected one current per pack, shape {self.soc_pct.shape}, got {current_a.shape}."
            )
        heat_w = current_a * current_a * self.resistance_ohm
        charge_pct = current_a * (dt_s / _SECONDS_PER_HOUR * 100.0) / self.capacity_ah
        np.clip(self.soc_pct - charge_pct, 0.0, 100.0, out=self.soc_pct)
        tau_s = self.params.cooling_time_constant_s
        equilibrium_c = ambient_c + heat_w * tau_s / self.params.heat_capacity_j_per_k
        decay = np.exp(-dt_s / tau_s)
        self.temp_c = equilibrium_c + (self.temp_c - equilibrium_c) * decay

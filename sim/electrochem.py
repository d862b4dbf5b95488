"""Pack telemetry from a physics-based electrochemical model (PyBaMM), with a vehicle BMS's flaws.

Every telemetry model here was trained on :mod:`sim`'s packs, whose voltage comes from one
open-circuit table, with no relaxation and an exact state of charge. This module makes
telemetry nobody here designed: a single-particle model with electrolyte (SPMe, PyBaMM) and
a lumped thermal model, for any of PyBaMM's published parameter sets (NMC, NCA, LFP, LCO
cells of several makers), scaled to a pack, aged by a chosen mechanism, driven through rides,
parked periods and CC-CV charges, and read the way a vehicle BMS reads it:

* **ageing**: loss of lithium inventory (``"lli"``: less cyclable lithium in the negative
  electrode), loss of active material (``"lam"``: both electrodes), each calibrated to a
  target state of health measured by a C/3 discharge; resistance growth on top (``contact
  resistance``, as a multiple of the fresh cell's DC resistance);
* **the BMS**: state of charge by coulomb counting with a gain error (drifting up to
  ``soc_gain_error``) recalibrated to 100 % at the end of each full charge; Gaussian sensor
  noise and quantisation on voltage, current and temperature; samples every
  ``sample_period_s``, with random gaps.

A :class:`PackRun` holds the telemetry (the columns of the telemetry contract) and the truth
the models should recover (SOH, resistance multiple). Runs are deterministic per spec and
cached on disk by :func:`pack_run` (``cache_dir``), since the solver takes seconds per pack-hour.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

__all__ = [
    "AGEING_MODES",
    "PARAMETER_SETS",
    "BmsArtefacts",
    "PackRun",
    "PackSpec",
    "pack_run",
    "simulate_pack",
]

FloatArray = npt.NDArray[np.float64]

#: PyBaMM parameter sets this module drives, with the chemistry they describe.
PARAMETER_SETS: dict[str, str] = {
    "Chen2020": "NMC811/graphite-SiOx (LG M50)",
    "OKane2022": "NMC811/graphite-SiOx (LG M50, degradation-ready)",
    "Mohtat2020": "NMC532/graphite",
    "Ecker2015": "NMC/graphite (Kokam)",
    "Marquis2019": "LCO/graphite (Kokam)",
    "NCA_Kim2011": "NCA/graphite",
    "Prada2013": "LFP/graphite (A123)",
}
AGEING_MODES: tuple[str, ...] = ("lli", "lam")
AgeingMode = Literal["lli", "lam"]

# What the calibration may change, per mode: the factor scales these parameters.
_AGEING_PARAMETERS: dict[str, tuple[str, ...]] = {
    "lli": ("Initial concentration in negative electrode [mol.m-3]",),
    "lam": (
        "Negative electrode active material volume fraction",
        "Positive electrode active material volume fraction",
    ),
}
_CACHE_VERSION = 1


@dataclass(frozen=True)
class BmsArtefacts:
    """How the vehicle's BMS distorts what the cells do (see the module docstring).

    Parameters
    ----------
    sample_period_s
        Seconds between samples.
    gap_probability
        Chance that a sample is lost (radio, reboot).
    soc_gain_error
        Largest relative gain error of the coulomb counter (drawn per pack, either sign).
    voltage_noise_v, current_noise_a, temp_noise_c
        Standard deviation of the Gaussian sensor noise (pack voltage, pack current, sensor).
    voltage_step_v, current_step_a, temp_step_c
        Quantisation steps of the reported values.
    """

    sample_period_s: float = 10.0
    gap_probability: float = 0.01
    soc_gain_error: float = 0.01
    voltage_noise_v: float = 0.02
    current_noise_a: float = 0.05
    temp_noise_c: float = 0.3
    voltage_step_v: float = 0.01
    current_step_a: float = 0.01
    temp_step_c: float = 0.5

    def __post_init__(self) -> None:
        if not self.sample_period_s >= 1.0:
            raise ValueError(f"Expected sample_period_s >= 1, got {self.sample_period_s}.")
        if not 0.0 <= self.gap_probability < 0.5:
            raise ValueError(f"Expected gap_probability in [0, 0.5), got {self.gap_probability}.")
        for name in ("soc_gain_error", "voltage_noise_v", "current_noise_a", "temp_noise_c",
                     "voltage_step_v", "current_step_a", "temp_step_c"):  # fmt: skip
            if not getattr(self, name) >= 0.0:
                raise ValueError(f"Expected {name} >= 0, got {getattr(self, name)}.")


@dataclass(frozen=True)
class PackSpec:
    """One pack to simulate.

    Parameters
    ----------
    parameter_set
        A key of :data:`PARAMETER_SETS`.
    soh
        Target state of health: capacity at C/3 as a fraction of the fresh cell's.
    ageing_mode
        How the capacity was lost (:data:`AGEING_MODES`); ignored at ``soh`` 1.
    resistance_multiple
        Pack DC resistance as a multiple of the fresh one (>= 1): resistance growth.
    series, parallel
        Cells in series and in parallel.
    ambient_c
        Ambient temperature.
    hours
        Length of the duty: rides and parked periods, with a CC-CV charge whenever the
        pack is low, and one at the end.
    seed
        Seeds the duty and the BMS artefacts.
    bms
        The BMS's flaws.
    """

    parameter_set: str = "Chen2020"
    soh: float = 1.0
    ageing_mode: AgeingMode = "lli"
    resistance_multiple: float = 1.0
    series: int = 13
    parallel: int = 3
    ambient_c: float = 25.0
    hours: float = 4.0
    seed: int = 0
    bms: BmsArtefacts = BmsArtefacts()

    def __post_init__(self) -> None:
        if self.parameter_set not in PARAMETER_SETS:
            raise ValueError(f"Expected parameter_set among {sorted(PARAMETER_SETS)}, got {self.parameter_set!r}.")
        if not 0.5 <= self.soh <= 1.0:
            raise ValueError(f"Expected soh in [0.5, 1], got {self.soh}.")
        if self.ageing_mode not in AGEING_MODES:
            raise ValueError(f"Expected ageing_mode among {AGEING_MODES}, got {self.ageing_mode!r}.")
        if not 1.0 <= self.resistance_multiple <= 5.0:
            raise ValueError(f"Expected resistance_multiple in [1, 5], got {self.resistance_multiple}.")
        if not (1 <= self.series <= 40 and 1 <= self.parallel <= 20):
            raise ValueError(f"Expected 1-40 cells in series and 1-20 in parallel, got {self.series}S{self.parallel}P.")
        if not -20.0 <= self.ambient_c <= 50.0:
            raise ValueError(f"Expected ambient_c in [-20, 50], got {self.ambient_c}.")
        if not 0.5 <= self.hours <= 48.0:
            raise ValueError(f"Expected hours in [0.5, 48], got {self.hours}.")

    def key(self) -> str:
        """A stable hash of everything that shapes the run: the cache file's name."""
        data = {"v": _CACHE_VERSION, **dataclasses.asdict(self)}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:20]


@dataclass(frozen=True)
class PackRun:
    """Telemetry of one simulated pack and the truth behind it.

    ``ts``, ``pack_voltage_v``, ``current_a`` (positive discharging), ``temp_c``, ``soc_pct``,
    ``cell_min_v``, ``cell_max_v`` are as the BMS reports them (one row per kept sample);
    ``true_soc_pct`` is the cells' own state of charge; ``rated_capacity_ah`` the fresh pack's
    capacity, ``capacity_ah`` its measured capacity now (``soh`` = their ratio);
    ``resistance_multiple`` as in the spec.
    """

    spec: PackSpec
    ts: FloatArray
    pack_voltage_v: FloatArray
    current_a: FloatArray
    temp_c: FloatArray
    soc_pct: FloatArray
    cell_min_v: FloatArray
    cell_max_v: FloatArray
    true_soc_pct: FloatArray
    rated_capacity_ah: float
    capacity_ah: float

    @property
    def soh(self) -> float:
        """Capacity now over the fresh pack's: what a health model should recover."""
        return self.capacity_ah / self.rated_capacity_ah

    def to_npz(self, path: Path) -> None:
        arrays = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "spec"}
        np.savez(path, spec=json.dumps(dataclasses.asdict(self.spec)), **arrays)

    @classmethod
    def from_npz(cls, path: Path) -> PackRun:
        data = np.load(path)
        spec_dict = json.loads(str(data["spec"]))
        spec = PackSpec(**{**spec_dict, "bms": BmsArtefacts(**spec_dict["bms"])})
        kw: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name == "spec":
                continue
            value = data[f.name]
            kw[f.name] = float(value) if value.ndim == 0 else value.astype(np.float64)
        return cls(spec=spec, **kw)


def _pybamm() -> Any:
    # PyBaMM is heavy to import and asks nothing of a server: load it only to simulate.
    os.environ.setdefault("PYBAMM_DISABLE_TELEMETRY", "true")
    import pybamm

    return pybamm


def _parameters(spec: PackSpec, factor: float) -> Any:
    pybamm = _pybamm()
    params = pybamm.ParameterValues(spec.parameter_set)
    # Some sets (Prada2013, NCA_Kim2011) lack what the lumped thermal model needs (current
    # collectors, heat capacities, cooling): those come from Chen2020's cell, the rest is
    # the set's own chemistry.
    base = pybamm.ParameterValues("Chen2020")
    missing = {k: base[k] for k in base.keys() if k not in params.keys()}
    if missing:
        params.update(missing, check_already_exists=False)
    if factor != 1.0:
        for name in _AGEING_PARAMETERS[spec.ageing_mode]:
            value = params[name]
            if callable(value):
                raise ValueError(f"Expected a number for {name!r} in {spec.parameter_set}, got a function.")
            params.update({name: float(value) * factor})
    params.update({"Ambient temperature [K]": spec.ambient_c + 273.15,
                   "Initial temperature [K]": spec.ambient_c + 273.15})  # fmt: skip
    return params


def _model(contact: bool) -> Any:
    pybamm = _pybamm()
    options = {"thermal": "lumped"}
    if contact:
        options["contact resistance"] = "true"
    return pybamm.lithium_ion.SPMe(options=options)


def _c3_capacity_ah(params: Any) -> float:
    """Capacity of one cell at C/3 from full, as a lab would measure it."""
    pybamm = _pybamm()
    nominal = float(params["Nominal cell capacity [A.h]"])
    v_min = float(params["Lower voltage cut-off [V]"])
    experiment = pybamm.Experiment([f"Discharge at {nominal / 3:.6g} A until {v_min} V"])
    sim = pybamm.Simulation(_model(False), parameter_values=params, experiment=experiment)
    sol = sim.solve(initial_soc=1.0)
    return float(sol["Discharge capacity [A.h]"].entries[-1])


def _pulse_resistance_ohm(params: Any) -> float:
    """The cell's resistance to a 10 s 1C discharge pulse at half charge."""
    pybamm = _pybamm()
    nominal = float(params["Nominal cell capacity [A.h]"])
    experiment = pybamm.Experiment(["Rest for 60 seconds", f"Discharge at {nominal:.6g} A for 10 seconds"], period="1 second")
    sol = pybamm.Simulation(_model(False), parameter_values=params, experiment=experiment).solve(initial_soc=0.5)
    v = sol["Voltage [V]"].entries
    return float((v[0] - v[-1]) / nominal)


def _calibrate(spec: PackSpec) -> tuple[Any, float, float]:
    """Parameters aged to the spec's SOH, and the fresh and aged cell capacities (Ah)."""
    fresh = _c3_capacity_ah(_parameters(spec, 1.0))
    if spec.soh >= 0.999:
        return _parameters(spec, 1.0), fresh, fresh
    # Capacity falls monotonically with the factor: bisect on it (a few C/3 discharges).
    lo, hi = 0.3, 1.0
    aged = fresh
    for _ in range(12):
        mid = 0.5 * (lo + hi)
        aged = _c3_capacity_ah(_parameters(spec, mid))
        if abs(aged / fresh - spec.soh) < 0.002:
            break
        if aged / fresh > spec.soh:
            hi = mid
        else:
            lo = mid
    if abs(aged / fresh - spec.soh) > 0.01:
        # Some sets do not lose capacity through a given parameter (Mohtat2020's negative
        # electrode concentration is not what limits it): say so, never hand back a pack
        # whose label is not its truth.
        raise ValueError(
            f"Expected {spec.ageing_mode!r} ageing of {spec.parameter_set} to reach SOH {spec.soh}, "
            f"got {aged / fresh:.3f} at the strongest setting; use another ageing_mode."
        )
    return _parameters(spec, mid), fresh, aged


def _duty(spec: PackSpec, cell_capacity_ah: float, v_max: float, v_min: float, rng: np.random.Generator) -> list[Any]:
    """Rides and parked periods until the duty's hours are filled; a CC-CV charge whenever
    about 70 % of the capacity has been ridden, and at the end."""
    pybamm = _pybamm()
    steps: list[Any] = []
    elapsed_s, since_charge_ah = 0.0, 0.0
    total_s = spec.hours * 3600.0

    def charge() -> None:
        steps.append(pybamm.step.string(f"Charge at {0.5 * cell_capacity_ah:.6g} A until {v_max} V"))
        steps.append(pybamm.step.string(f"Hold at {v_max} V until {cell_capacity_ah / 20:.6g} A"))
        steps.append(pybamm.step.string("Rest for 900 seconds"))

    while elapsed_s < total_s:
        ride_s = float(rng.uniform(600, 1800))
        t = np.arange(0.0, ride_s, 1.0)
        # Accelerations and cruising: a mean around 0.6C with bursts to 2C; brief regeneration.
        base = rng.uniform(0.3, 0.9) * cell_capacity_ah
        bursts = np.maximum(0.0, np.sin(t / rng.uniform(20, 60))) ** 4 * rng.uniform(0.5, 1.4) * cell_capacity_ah
        current = base + bursts + rng.normal(0.0, 0.05 * cell_capacity_ah, t.size)
        current = np.where(rng.uniform(size=t.size) < 0.03, -0.3 * cell_capacity_ah, current)
        steps.append(pybamm.step.current(np.column_stack([t, current]), termination=f"< {v_min + 0.2:.4g} V"))
        since_charge_ah += float(np.sum(current)) / 3600.0
        elapsed_s += ride_s
        park_s = float(rng.uniform(900, 5400))
        steps.append(pybamm.step.string(f"Rest for {park_s:.0f} seconds"))
        elapsed_s += park_s
        if since_charge_ah > 0.7 * cell_capacity_ah:
            charge()
            elapsed_s += 5400.0
            since_charge_ah = 0.0
    charge()
    return steps


def simulate_pack(spec: PackSpec) -> PackRun:
    """Run the pack's duty through the electrochemical model and read it as the BMS would."""
    pybamm = _pybamm()
    rng = np.random.default_rng(spec.seed)
    params, fresh_ah, aged_ah = _calibrate(spec)
    contact = spec.resistance_multiple > 1.0
    if contact:
        # The growth is a contact resistance, sized from the cell's own 10 s pulse
        # resistance (what a BMS measures at load steps), so the multiple is the one a twin
        # should see.
        r_fresh = _pulse_resistance_ohm(params)
        params.update({"Contact resistance [Ohm]": r_fresh * (spec.resistance_multiple - 1.0)}, check_already_exists=False)
    v_max = float(params["Upper voltage cut-off [V]"])
    v_min = float(params["Lower voltage cut-off [V]"])
    steps = _duty(spec, aged_ah, v_max, v_min, rng)
    experiment = pybamm.Experiment(steps, period=f"{spec.bms.sample_period_s:.6g} seconds")
    sim = pybamm.Simulation(_model(contact), parameter_values=params, experiment=experiment)
    sol = sim.solve(initial_soc=1.0)
    t = sol["Time [s]"].entries
    grid = np.arange(0.0, float(t[-1]), spec.bms.sample_period_s)
    cell_v = np.interp(grid, t, sol["Voltage [V]"].entries)
    cell_i = np.interp(grid, t, sol["Current [A]"].entries)
    temp = np.interp(grid, t, sol["Volume-averaged cell temperature [K]"].entries) - 273.15
    q_dis = np.interp(grid, t, sol["Discharge capacity [A.h]"].entries)
    true_soc = 100.0 * np.clip(1.0 - q_dis / aged_ah, 0.0, 1.0)
    return _read_as_bms(spec, rng, grid, cell_v, cell_i, temp, true_soc, fresh_ah, aged_ah)


def _quantise(x: FloatArray, step: float) -> FloatArray:
    return np.round(x / step) * step if step > 0 else x


def _read_as_bms(
    spec: PackSpec, rng: np.random.Generator, grid: FloatArray, cell_v: FloatArray, cell_i: FloatArray,
    temp: FloatArray, true_soc: FloatArray, fresh_ah: float, aged_ah: float,
) -> PackRun:  # fmt: skip
    b = spec.bms
    pack_v = cell_v * spec.series
    pack_i = cell_i * spec.parallel
    pack_ah = aged_ah * spec.parallel
    # Coulomb counting with a gain error, reset to 100 % when a charge has tapered off
    # (the CV hold ends below C/20 at the top of charge).
    gain = 1.0 + rng.uniform(-b.soc_gain_error, b.soc_gain_error)
    soc = np.empty_like(grid)
    level = 100.0
    dt = np.diff(grid, prepend=grid[0])
    full = (cell_v >= 0.995 * float(np.max(cell_v))) & (np.abs(cell_i) < aged_ah / 15.0)
    for k in range(grid.size):
        level -= 100.0 * gain * pack_i[k] * dt[k] / 3600.0 / pack_ah
        if full[k]:
            level = 100.0
        soc[k] = min(max(level, 0.0), 100.0)
    # Cell groups differ a little (their resistance), so min and max cell voltages spread
    # under load.
    spread = np.abs(cell_i) * 0.002 * rng.uniform(0.5, 1.5) + 0.003
    keep = rng.uniform(size=grid.size) >= b.gap_probability
    keep[0] = keep[-1] = True
    noisy_v = _quantise(pack_v + rng.normal(0.0, b.voltage_noise_v, grid.size), b.voltage_step_v)
    noisy_i = _quantise(pack_i + rng.normal(0.0, b.current_noise_a, grid.size), b.current_step_a)
    noisy_t = _quantise(temp + rng.normal(0.0, b.temp_noise_c, grid.size), b.temp_step_c)
    return PackRun(
        spec=spec,
        ts=grid[keep],
        pack_voltage_v=noisy_v[keep],
        current_a=noisy_i[keep],
        temp_c=noisy_t[keep],
        soc_pct=np.round(soc[keep], 1),
        cell_min_v=_quantise(cell_v - spread, 0.001)[keep],
        cell_max_v=_quantise(cell_v + spread, 0.001)[keep],
        true_soc_pct=true_soc[keep],
        rated_capacity_ah=fresh_ah * spec.parallel,
        capacity_ah=aged_ah * spec.parallel,
    )


def pack_run(spec: PackSpec, cache_dir: Path | None = None) -> PackRun:
    """:func:`simulate_pack`, read from ``cache_dir`` when this exact spec ran before."""
    if cache_dir is None:
        return simulate_pack(spec)
    cache_dir = Path(cache_dir)
    path = cache_dir / f"pack-{spec.parameter_set}-{spec.key()}.npz"
    if path.is_file():
        return PackRun.from_npz(path)
    run = simulate_pack(spec)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    run.to_npz(tmp)
    tmp.replace(path)
    return run


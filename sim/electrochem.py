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
  ``sample_period_s``, with random gaps;
* **faults** (:class:`PackFault`), from an onset on: a cell group whose resistance jumps, a
  weak cell group (a parallel cell lost: less capacity, more resistance), an internal short
  (one group discharging itself, unseen by the current sensor), a thermal excursion, a
  pack-voltage sensor offset and a stuck temperature sensor.

The model solves one cell (the pack is ``series`` x ``parallel`` identical cells); a fault
in one cell group is added to that solution from the group's own state (its charge, its
open-circuit voltage, its resistance), so a faulty pack and its healthy twin share one
solve.

A :class:`PackRun` holds the telemetry (the columns of the telemetry contract) and the truth
the models should recover (SOH, resistance multiple, the fault and its onset). Runs are
deterministic per spec and cached on disk by :func:`pack_run` (``cache_dir``): the solve
(seconds per pack-hour) by the spec's physics, the BMS reading by the whole spec.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

__all__ = [
    "AGEING_MODES",
    "FAULT_KINDS",
    "PARAMETER_SETS",
    "BmsArtefacts",
    "CellSolution",
    "PackFault",
    "PackRun",
    "PackSpec",
    "pack_run",
    "read_as_bms",
    "simulate_pack",
    "solve_cell",
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
_CACHE_VERSION = 2

#: What can go wrong in a pack (see :class:`PackFault`).
FAULT_KINDS: tuple[str, ...] = (
    "resistance_jump", "weak_cell", "internal_short", "thermal_excursion", "sensor_offset", "stuck_sensor",
)  # fmt: skip
FaultKind = Literal[
    "resistance_jump", "weak_cell", "internal_short", "thermal_excursion", "sensor_offset", "stuck_sensor"
]
#: Each kind's magnitude: what it means, its default and its allowed range.
_FAULT_MAGNITUDE: dict[str, tuple[str, float, float, float]] = {
    "resistance_jump": ("the group's resistance as a multiple of the others'", 3.0, 1.2, 20.0),
    "weak_cell": ("parallel cells of the group still connected, as a fraction", 2.0 / 3.0, 0.2, 0.95),
    "internal_short": ("the leak through the group, in C (1/h)", 0.05, 0.001, 1.0),
    "thermal_excursion": ("the temperature rise in degrees C", 15.0, 3.0, 60.0),
    "sensor_offset": ("the pack-voltage reading's offset in V", -1.5, -10.0, 10.0),
    "stuck_sensor": ("unused: the temperature reading freezes at its value at onset", 0.0, 0.0, 0.0),
}


@dataclass(frozen=True)
class PackFault:
    """A fault from ``onset_h`` hours into the duty on (see the module docstring).

    ``magnitude`` by kind: ``resistance_jump`` the group's resistance multiple (3);
    ``weak_cell`` the fraction of the group's parallel cells still connected (2/3: one of
    three lost); ``internal_short`` the leak in C (0.05: a fully charged group empties in 20
    hours); ``thermal_excursion`` the rise in degrees C (15, reached in 10 minutes, held 30);
    ``sensor_offset`` the pack-voltage reading's offset in V (-1.5); ``stuck_sensor`` none
    (the temperature reading freezes). None takes the kind's default.
    """

    kind: FaultKind
    onset_h: float
    magnitude: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"Expected a fault kind among {FAULT_KINDS}, got {self.kind!r}.")
        if not 0.0 <= self.onset_h <= 48.0:
            raise ValueError(f"Expected onset_h in [0, 48], got {self.onset_h}.")
        what, _, lo, hi = _FAULT_MAGNITUDE[self.kind]
        if self.magnitude is not None and not lo <= self.magnitude <= hi:
            raise ValueError(f"Expected the {self.kind} magnitude ({what}) in [{lo}, {hi}], got {self.magnitude}.")

    @property
    def size(self) -> float:
        """The magnitude, or the kind's default."""
        return self.magnitude if self.magnitude is not None else _FAULT_MAGNITUDE[self.kind][1]


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
    fault
        What goes wrong in the pack, from when (None: a healthy pack).
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
    fault: PackFault | None = None

    def __post_init__(self) -> None:
        if self.parameter_set not in PARAMETER_SETS:
            raise ValueError(f"Expected parameter_set among {sorted(PARAMETER_SETS)}, got {self.parameter_set!r}.")
        if not 0.5 <= self.soh <= 1.0:
            raise ValueError(f"Expected soh in [0.5, 1], got {self.soh}.")
        if self.ageing_mode not in AGEING_MODES:
            raise ValueError(f"Expected ageing_mode among {AGEING_MODES}, got {self.ageing_mode!r}.")
        if not 1.0 <= self.resistance_multiple <= 5.0:
            raise ValueError(f"Expected resistance_multiple in [1, 5], got {self.resistance_multiple}.")
        # Up to 128 in parallel: a 15 Ah pack of Ecker2015's 0.17 Ah cells needs 88.
        if not (1 <= self.series <= 40 and 1 <= self.parallel <= 128):
            raise ValueError(f"Expected 1-40 cells in series and 1-128 in parallel, got {self.series}S{self.parallel}P.")
        if not -20.0 <= self.ambient_c <= 50.0:
            raise ValueError(f"Expected ambient_c in [-20, 50], got {self.ambient_c}.")
        if not 0.5 <= self.hours <= 48.0:
            raise ValueError(f"Expected hours in [0.5, 48], got {self.hours}.")
        if self.fault is not None and self.fault.onset_h >= self.hours:
            raise ValueError(f"Expected the fault's onset within the {self.hours} h duty, got {self.fault.onset_h} h.")

    def key(self) -> str:
        """A stable hash of everything that shapes the run: the cache file's name."""
        data = {"v": _CACHE_VERSION, **dataclasses.asdict(self)}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:20]

    def physics_key(self) -> str:
        """A stable hash of what shapes the solve (not the BMS's reading, not the fault)."""
        data = {"v": _CACHE_VERSION, **dataclasses.asdict(self)}
        del data["bms"], data["fault"]
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:20]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PackSpec:
        fault = d.get("fault")
        return cls(**{
            **d, "bms": BmsArtefacts(**d["bms"]), "fault": PackFault(**fault) if fault is not None else None,
        })  # fmt: skip


@dataclass(frozen=True)
class PackRun:
    """Telemetry of one simulated pack and the truth behind it.

    ``ts``, ``pack_voltage_v``, ``current_a`` (positive discharging), ``temp_c``, ``soc_pct``,
    ``cell_min_v``, ``cell_max_v`` are as the BMS reports them (one row per kept sample);
    ``true_soc_pct`` is the cells' own state of charge; ``rated_capacity_ah`` the fresh pack's
    capacity, ``capacity_ah`` its measured capacity now (``soh`` = their ratio);
    ``resistance_multiple`` and the fault as in the spec (:attr:`fault_onset_s`: when it
    began, in the run's time).
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

    @property
    def fault_onset_s(self) -> float:
        """Seconds into the run the fault began (NaN for a healthy pack)."""
        return self.spec.fault.onset_h * 3600.0 if self.spec.fault is not None else math.nan

    def to_npz(self, path: Path) -> None:
        arrays = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "spec"}
        np.savez(path, spec=json.dumps(dataclasses.asdict(self.spec)), **arrays)

    @classmethod
    def from_npz(cls, path: Path) -> PackRun:
        data = np.load(path)
        spec = PackSpec.from_dict(json.loads(str(data["spec"])))
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


@dataclass(frozen=True)
class CellSolution:
    """One cell's solved duty, sampled every ``sample_period_s``: what every reading of the
    pack (its BMS, its faults) is made from. ``r_cell_ohm`` is the aged cell's 10 s pulse
    resistance (contact resistance included) and ``ocv_v`` by ``ocv_soc_pct`` its C/20
    discharge curve (its open-circuit voltage, near enough): they size a group fault's
    voltage."""

    t_s: FloatArray
    cell_v: FloatArray
    cell_i: FloatArray
    temp_c: FloatArray
    true_soc_pct: FloatArray
    fresh_ah: float
    aged_ah: float
    r_cell_ohm: float
    ocv_soc_pct: FloatArray
    ocv_v: FloatArray

    def to_npz(self, path: Path) -> None:
        np.savez(path, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)})

    @classmethod
    def from_npz(cls, path: Path) -> CellSolution:
        data = np.load(path)
        kw: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            v = data[f.name]
            kw[f.name] = float(v) if v.ndim == 0 else v.astype(np.float64)
        return cls(**kw)


def solve_cell(spec: PackSpec) -> CellSolution:
    """Run the pack's duty through the electrochemical model (one cell of it)."""
    pybamm = _pybamm()
    rng = np.random.default_rng(spec.seed)
    params, fresh_ah, aged_ah = _calibrate(spec)
    contact = spec.resistance_multiple > 1.0
    r_fresh = _pulse_resistance_ohm(params)
    if contact:
        # The growth is a contact resistance, sized from the cell's own 10 s pulse
        # resistance (what a BMS measures at load steps), so the multiple is the one a twin
        # should see.
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
    ocv_soc, ocv_v = _ocv_table(params, aged_ah)
    return CellSolution(
        grid, cell_v, cell_i, temp, true_soc, fresh_ah, aged_ah, r_fresh * spec.resistance_multiple, ocv_soc, ocv_v
    )


def _ocv_table(params: Any, aged_ah: float) -> tuple[FloatArray, FloatArray]:
    """The aged cell's C/20 discharge from full: voltage by state of charge (percent of the
    C/3 capacity, as ``true_soc_pct``), rising with charge."""
    pybamm = _pybamm()
    v_min = float(params["Lower voltage cut-off [V]"])
    experiment = pybamm.Experiment([f"Discharge at {aged_ah / 20:.6g} A until {v_min} V"], period="60 seconds")
    sol = pybamm.Simulation(_model(False), parameter_values=params, experiment=experiment).solve(initial_soc=1.0)
    soc = 100.0 * (1.0 - sol["Discharge capacity [A.h]"].entries / aged_ah)
    v = sol["Voltage [V]"].entries
    order = np.argsort(soc)
    return np.asarray(soc[order], dtype=np.float64), np.maximum.accumulate(np.asarray(v[order], dtype=np.float64))


def simulate_pack(spec: PackSpec) -> PackRun:
    """Solve the pack's duty and read it as its BMS would (no cache)."""
    return read_as_bms(spec, solve_cell(spec))


def _group_voltage_delta(spec: PackSpec, sol: CellSolution) -> FloatArray:
    """How far the faulty group's voltage sits from a healthy group's, per sample (V)."""
    fault = spec.fault
    n = sol.t_s.size
    delta = np.zeros(n)
    if fault is None or fault.kind not in ("resistance_jump", "weak_cell", "internal_short"):
        return delta
    after = sol.t_s >= fault.onset_h * 3600.0
    i_cell = sol.cell_i  # each healthy cell's current; the group carries parallel x this
    if fault.kind == "resistance_jump":
        delta[after] = -i_cell[after] * sol.r_cell_ohm * (fault.size - 1.0)
        return delta
    soc_c, ocv_v = sol.ocv_soc_pct, sol.ocv_v
    dt_h = np.diff(sol.t_s, prepend=sol.t_s[0]) / 3600.0
    if fault.kind == "weak_cell":
        # The group's remaining cells carry its current: their charge moves 1/f as fast,
        # and each sees 1/f of the resistive drop.
        f = fault.size
        dq_pct = np.cumsum(np.where(after, i_cell * dt_h, 0.0)) / sol.aged_ah * 100.0
        soc_g = np.clip(sol.true_soc_pct - dq_pct * (1.0 / f - 1.0), 0.0, 100.0)
        resistive = -i_cell * sol.r_cell_ohm * (1.0 / f - 1.0)
    else:  # internal_short: the leak drains the group, riding or parked, unseen by the sensor
        leak_pct = np.cumsum(np.where(after, fault.size * dt_h, 0.0)) * 100.0
        soc_g = np.clip(sol.true_soc_pct - leak_pct, 0.0, 100.0)
        resistive = np.zeros(n)
    ocv_delta = np.interp(soc_g, soc_c, ocv_v) - np.interp(sol.true_soc_pct, soc_c, ocv_v)
    delta[after] = (ocv_delta + resistive)[after]
    return delta


def _temperature_reading(spec: PackSpec, sol: CellSolution) -> FloatArray:
    """The cells' temperature as the sensor reports it, with a thermal fault's effect."""
    temp = sol.temp_c.copy()
    fault = spec.fault
    if fault is None:
        return temp
    onset_s = fault.onset_h * 3600.0
    since = sol.t_s - onset_s
    if fault.kind == "thermal_excursion":
        # Up over 10 minutes, held 30, back down over 30: a cell heating from within.
        ramp = np.clip(since / 600.0, 0.0, 1.0) * np.clip(1.0 - (since - 2400.0) / 1800.0, 0.0, 1.0)
        temp += fault.size * np.where(since >= 0, ramp, 0.0)
    elif fault.kind == "stuck_sensor":
        k = int(np.searchsorted(sol.t_s, onset_s))
        if k < temp.size:
            temp[k:] = temp[k]
    return temp


def read_as_bms(spec: PackSpec, sol: CellSolution) -> PackRun:
    """The pack (``spec``'s cells, fault and BMS) read from one cell's solution."""
    rng = np.random.default_rng([spec.seed, 1])  # the BMS's own stream, apart from the duty's
    b = spec.bms
    grid = sol.t_s
    delta = _group_voltage_delta(spec, sol)
    pack_v = sol.cell_v * spec.series + delta
    pack_i = sol.cell_i * spec.parallel
    pack_ah = sol.aged_ah * spec.parallel
    cell_v = sol.cell_v
    # Coulomb counting with a gain error, reset to 100 % when a charge has tapered off
    # (the CV hold ends below C/20 at the top of charge).
    gain = 1.0 + rng.uniform(-b.soc_gain_error, b.soc_gain_error)
    soc = np.empty_like(grid)
    level = 100.0
    dt = np.diff(grid, prepend=grid[0])
    full = (cell_v >= 0.995 * float(np.max(cell_v))) & (np.abs(sol.cell_i) < sol.aged_ah / 15.0)
    for k in range(grid.size):
        level -= 100.0 * gain * pack_i[k] * dt[k] / 3600.0 / pack_ah
        if full[k]:
            level = 100.0
        soc[k] = min(max(level, 0.0), 100.0)
    # Cell groups differ a little (their resistance), so min and max cell voltages spread
    # under load; a faulty group is the lowest (or, above the others, the highest).
    spread = np.abs(sol.cell_i) * 0.002 * rng.uniform(0.5, 1.5) + 0.003
    cell_min = np.minimum(cell_v - spread, cell_v + delta)
    cell_max = np.maximum(cell_v + spread, cell_v + delta)
    keep = rng.uniform(size=grid.size) >= b.gap_probability
    keep[0] = keep[-1] = True
    noisy_v = pack_v + rng.normal(0.0, b.voltage_noise_v, grid.size)
    if spec.fault is not None and spec.fault.kind == "sensor_offset":
        noisy_v = np.where(grid >= spec.fault.onset_h * 3600.0, noisy_v + spec.fault.size, noisy_v)
    noisy_v = _quantise(noisy_v, b.voltage_step_v)
    noisy_i = _quantise(pack_i + rng.normal(0.0, b.current_noise_a, grid.size), b.current_step_a)
    temp = _temperature_reading(spec, sol)
    noisy_t = temp + rng.normal(0.0, b.temp_noise_c, grid.size)
    if spec.fault is not None and spec.fault.kind == "stuck_sensor":
        stuck = grid >= spec.fault.onset_h * 3600.0
        noisy_t[stuck] = noisy_t[int(np.argmax(stuck))]
    noisy_t = _quantise(noisy_t, b.temp_step_c)
    return PackRun(
        spec=spec,
        ts=grid[keep],
        pack_voltage_v=noisy_v[keep],
        current_a=noisy_i[keep],
        temp_c=noisy_t[keep],
        soc_pct=np.round(soc[keep], 1),
        cell_min_v=_quantise(cell_min, 0.001)[keep],
        cell_max_v=_quantise(cell_max, 0.001)[keep],
        true_soc_pct=sol.true_soc_pct[keep],
        rated_capacity_ah=sol.fresh_ah * spec.parallel,
        capacity_ah=sol.aged_ah * spec.parallel,
    )


def _quantise(x: FloatArray, step: float) -> FloatArray:
    return np.round(x / step) * step if step > 0 else x


def pack_run(spec: PackSpec, cache_dir: Path | None = None) -> PackRun:
    """:func:`simulate_pack`, its solve and its reading cached in ``cache_dir``: a spec that
    differs only in its BMS or its fault reuses the solve."""
    if cache_dir is None:
        return simulate_pack(spec)
    cache_dir = Path(cache_dir)
    path = cache_dir / f"pack-{spec.parameter_set}-{spec.key()}.npz"
    if path.is_file():
        return PackRun.from_npz(path)
    cell_path = cache_dir / f"cell-{spec.parameter_set}-{spec.physics_key()}.npz"
    if cell_path.is_file():
        sol = CellSolution.from_npz(cell_path)
    else:
        sol = solve_cell(spec)
        _save(cache_dir, cell_path, sol.to_npz)
    run = read_as_bms(spec, sol)
    _save(cache_dir, path, run.to_npz)
    return run


def _save(cache_dir: Path, path: Path, write: Any) -> None:
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    write(tmp)
    tmp.replace(path)

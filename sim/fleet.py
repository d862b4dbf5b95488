"""A shared e-scooter fleet that rides, drains, gets its batteries swapped and reports.

Every vehicle is a small state machine, parked <-> riding, and all of them advance together
as numpy arrays; only the JSON of the messages that are due is built per message. One tick
(:meth:`FleetSimulator.advance`) runs, in this order:

0. batteries in vehicles develop faults (``FleetParams.fault_rate_per_vehicle_day``; the
   physics is :mod:`sim.faults`), written into their samples from the onset on;
1. motion of the riding vehicles (speed, heading, position, odometer) and the pack current
   each one draws; parked vehicles draw the telematics unit's current, spare batteries in
   the pool charge;
2. the battery model over every pack (on a vehicle or in the pool);
3. trips that reached their end or the BMS cut-off end (a low battery or a thermal
   runaway): the vehicle parks;
4. vehicles due a sample (and those that just parked) append one to their buffer;
5. full buffers, vehicles that just parked and vehicles about to get a new battery
   become messages, so every sample leaves under the battery that produced it;
6. parked vehicles with a nearly empty or a faulty battery get a charged spare from the
   pool (a battery taken out leaves its fault in the depot); the vehicle reports under
   its new battery at the next tick;
7. available parked vehicles start trips, a Poisson process with a time-of-day rate.

Batteries and vehicles are separate: ``battery_of`` maps vehicle -> battery and the
reverse map marks pool batteries, so swaps change the link as they would in the field.

A fleet outlives the process that simulates it, as a real one outlives a server restart:
:meth:`FleetSimulator.snapshot` saves its whole state (format: :mod:`sim.fleet_snapshot`),
:meth:`FleetSimulator.restore` brings it back, and :meth:`FleetSimulator.stand_still_until`
lets it resume after a downtime.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from contracts.telemetry import topic_for
from sim.battery_model import PackArray
from sim.faults import FaultKind, FaultParams, FaultSpec, draw_fault_spec, fault_offsets
from sim.fleet_params import FleetParams
from sim.fleet_snapshot import FleetSnapshotError, decode_snapshot, encode_snapshot, params_record
from sim.telemetry_encoder import SAMPLE_COLUMNS, encode_messages

__all__ = ["FleetSimulator", "SwapEvent", "fleet_ids"]

FloatArray = npt.NDArray[np.float64]
IndexArray = npt.NDArray[np.intp]

_KM_PER_DEG_LAT = 110.574
_KM_PER_DEG_LON_EQUATOR = 111.320
_NO_VEHICLE = -1
_COL = {name: i for i, name in enumerate(SAMPLE_COLUMNS)}
# The contract's timestamp range: a clock outside it is a caller's mistake, not data.
_MIN_TS_S, _MAX_TS_S = 1.0e9, 1.0e10
_SECONDS_PER_DAY = 86_400.0

# A battery's fault is a code in the state arrays: 0 for none, else 1 + the kind's index
# here. Saved fleets hold the codes, so new kinds go at the end of FaultKind.
_FAULT_KINDS: tuple[FaultKind, ...] = tuple(FaultKind)
_NO_FAULT = 0
_RUNAWAY = 1 + _FAULT_KINDS.index(FaultKind.THERMAL_RUNAWAY)
#: The fault arrays and their "no fault" value: what a snapshot from before live faults
#: (which lacks them) restores to.
_FAULT_STATE: dict[str, float] = {
    "fault_kind": _NO_FAULT, "fault_onset_s": math.inf, "fault_magnitude": 0.0,
    "fault_drift_per_min": 0.0,
}  # fmt: skip
# Live faults are there to be seen, so they are stronger than the offline defaults of
# sim/faults.py (which test how early a detector notices a subtle fault): a runaway gains
# 90 C or more within 10 minutes, so it reports 80 C from any air temperature the ambient
# model gives; a weak cell opens the cell spread past 0.3 V within about 15 minutes.
_LIVE_FAULTS = FaultParams(
    runaway_rate_c_per_min=(4.0, 6.0), runaway_drift_c_per_min2=(1.0, 2.0),
    weak_cell_extra_ohm=(0.01, 0.03), weak_cell_fade_v_per_min=(0.02, 0.04),
)  # fmt: skip
# A runaway levels off here: the cells have vented and the pack smoulders. (The formula
# alone would leave the contract's range, and the bridge would refuse every message.)
_RUNAWAY_PEAK_C = 95.0
# A weak cell group's fade stops here: it is empty, over half a volt below the others.
_WEAK_CELL_MAX_FADE_V = 0.6


@dataclass(frozen=True)
class SwapEvent:
    """One battery swap: the field team replaced a vehicle's battery with a charged one."""

    time_s: float
    vehicle_id: str
    removed_battery_id: str
    installed_battery_id: str


def fleet_ids(prefix: str, n: int) -> list[str]:
    """The ids a simulator of ``n`` vehicles (or batteries) gives them: ``prefix`` and a
    zero-padded index, at least 5 digits (``v-00000`` ... ``v-00999``).

    ``bms vehicles provision --count`` and the embedded broker provision the same ids.
    """
    width = max(5, len(str(max(n - 1, 0))))
    return [f"{prefix}{k:0{width}d}" for k in range(n)]


class FleetSimulator:
    """``params.vehicles`` scooters and their batteries, advanced together.

    Parameters
    ----------
    params
        Fleet, battery, vehicle, demand and weather parameters. Everything random is
        drawn from one generator seeded with ``params.seed``, so two simulators with
        equal params fed the same ``advance`` calls emit the same bytes.

    Examples
    --------
    >>> sim = FleetSimulator(FleetParams(vehicles=100))
    >>> messages = sim.advance(1.0, now_s=1_764_170_000.0)  # list of (topic, payload)
    """

    def __init__(self, params: FleetParams, seq_start: int = 0) -> None:
        if seq_start < 0:
            raise ValueError(f"Expected seq_start >= 0, got {seq_start}.")
        self.params = p = params
        self._rng = rng = np.random.default_rng(p.seed)
        n = p.vehicles
        n_spares = max(p.min_spares, math.ceil(p.spare_fraction * n))
        n_batteries = n + n_spares
        self._vehicle_ids = fleet_ids(p.vehicle_id_prefix, n)
        self._battery_ids = fleet_ids(p.battery_id_prefix, n_batteries)
        self._topics = [topic_for(v) for v in self._vehicle_ids]
        self._vehicle_index: dict[str, int] | None = None
        self._battery_index: dict[str, int] | None = None

        # Batteries: the first n are installed, the rest wait charged in the pool.
        self._charge_target_pct = rng.uniform(
            p.swapped_soc_min_pct, p.swapped_soc_max_pct, n_batteries
        )
        soc = self._charge_target_pct.copy()
        soc[:n] = rng.uniform(p.initial_soc_min_pct, p.initial_soc_max_pct, n)
        self._packs = PackArray.create(
            n_batteries, p.pack, rng, soc_pct=soc, temp_c=p.ambient.mean_c
        )
        self._battery_of = np.arange(n, dtype=np.intp)
        self._vehicle_of = np.full(n_batteries, _NO_VEHICLE, dtype=np.intp)
        self._vehicle_of[:n] = np.arange(n)
        # When each battery went into the pool (the first spares: ready from the start).
        self._pooled_at_s = np.full(n_batteries, -np.inf)
        self._current_a = np.zeros(n_batteries)
        # Real vehicles keep their seq counter across reboots. A restored simulator keeps
        # its own (restore); a fresh one that replaces an earlier fleet gets the same
        # effect from a seq_start above anything that one sent (bms run passes the Unix
        # time), so restored twins do not take its messages for replays.
        self._seq = np.full(n_batteries, seq_start, dtype=np.int64)

        # Vehicles: uniform over the disc, parked.
        radius = p.radius_km * np.sqrt(rng.random(n))
        angle = rng.uniform(0.0, 2.0 * np.pi, n)
        self._x_km = radius * np.cos(angle)
        self._y_km = radius * np.sin(angle)
        self._heading_rad = rng.uniform(0.0, 2.0 * np.pi, n)
        self._odometer_km = rng.uniform(50.0, 3000.0, n)
        self._riding = np.zeros(n, dtype=bool)
        self._trip_end_s = np.zeros(n)
        self._cruise_kmh = np.zeros(n)
        self._speed_kmh = np.zeros(n)
        # Spread the first samples over one parked period so the fleet does not report
        # in lockstep; the phases become times at the first advance.
        self._sample_phase_s = rng.uniform(0.0, p.report_interval_s * p.parked_report_factor, n)
        self._next_sample_s = np.zeros(n)
        # Zeros, not np.empty: unused slots are saved in snapshots, which should not differ
        # by whatever memory held before.
        self._buffer = np.zeros((n, p.samples_per_message, len(SAMPLE_COLUMNS)))
        self._buffered = np.zeros(n, dtype=np.int64)
        # Each vehicle's first message is cut short at a random count, so a fresh fleet
        # publishes at its steady rate at once instead of in a burst one buffer later.
        self._flush_at = rng.integers(1, p.samples_per_message, n, endpoint=True)
        self._km_per_deg_lon = _KM_PER_DEG_LON_EQUATOR * math.cos(math.radians(p.center_lat))

        self._now_s: float | None = None
        self._swap_events: list[SwapEvent] = []
        self._swap_count = 0

        # Battery faults (kind code, onset, strength, growth). Until the first tick the
        # onsets count from the start, like the sample phases. Drawn last, and only when
        # asked for, so a fleet without faults draws exactly what it did before they came.
        self._fault_kind = np.zeros(n_batteries, dtype=np.int8)
        self._fault_onset_s = np.full(n_batteries, math.inf)
        self._fault_magnitude = np.zeros(n_batteries)
        self._fault_drift_per_min = np.zeros(n_batteries)
        k = min(p.initial_faults, n)
        if k:
            vehicles = rng.choice(n, size=k, replace=False).tolist()
            onsets_s = (p.initial_fault_after_s + rng.uniform(0.0, p.initial_fault_window_s, k)).tolist()
            for j, (v, onset_s) in enumerate(zip(vehicles, onsets_s, strict=True)):
                kind = p.fault_kinds[j % len(p.fault_kinds)]  # the kinds in turn
                self._set_fault(int(self._battery_of[v]), kind, onset_s)

    # -- read-only views -------------------------------------------------------------

    @property
    def vehicle_ids(self) -> tuple[str, ...]:
        """Vehicle ids, in index order."""
        return tuple(self._vehicle_ids)

    @property
    def battery_ids(self) -> tuple[str, ...]:
        """Battery ids (installed ones first, then the pool), in index order."""
        return tuple(self._battery_ids)

    @property
    def packs(self) -> PackArray:
        """The battery model state of every battery, in battery index order."""
        return self._packs

    @property
    def now_s(self) -> float | None:
        """Time of the last :meth:`advance`, or None before the first."""
        return self._now_s

    @property
    def riding_count(self) -> int:
        """Vehicles on a trip right now."""
        return int(np.count_nonzero(self._riding))

    @property
    def swap_count(self) -> int:
        """Battery swaps since the start."""
        return self._swap_count

    def battery_of(self, vehicle_id: str) -> str:
        """The battery installed in a vehicle."""
        return self._battery_ids[int(self._battery_of[self._vehicle(vehicle_id)])]

    def vehicle_of(self, battery_id: str) -> str | None:
        """The vehicle a battery is installed in, or None while it is in the pool."""
        if self._battery_index is None:
            self._battery_index = {b: i for i, b in enumerate(self._battery_ids)}
        try:
            index = self._battery_index[battery_id]
        except KeyError:
            raise KeyError(f"Expected a battery id of this fleet, got {battery_id!r}.") from None
        vehicle = int(self._vehicle_of[index])
        return None if vehicle == _NO_VEHICLE else self._vehicle_ids[vehicle]

    def links(self) -> dict[str, str]:
        """Vehicle id -> installed battery id, for every vehicle."""
        ids = self._battery_ids
        return {
            v: ids[b] for v, b in zip(self._vehicle_ids, self._battery_of.tolist(), strict=True)
        }

    def drain_swap_events(self) -> list[SwapEvent]:
        """The swaps since the last call, oldest first."""
        events, self._swap_events = self._swap_events, []
        return events

    def faults(self) -> dict[str, FaultSpec]:
        """Battery id -> its fault, for every battery that has one (started or not yet).

        A fault stays until its battery is swapped out. Before the first :meth:`advance`
        the onsets count from the start of the simulation, after it they are Unix seconds.
        """
        ids = self._battery_ids
        return {
            ids[b]: FaultSpec(
                _FAULT_KINDS[int(self._fault_kind[b]) - 1], float(self._fault_onset_s[b]),
                float(self._fault_magnitude[b]), float(self._fault_drift_per_min[b]),
            )
            for b in np.flatnonzero(self._fault_kind != _NO_FAULT).tolist()
        }  # fmt: skip

    # -- snapshots -------------------------------------------------------------------

    def _state_arrays(self) -> dict[str, npt.NDArray[Any]]:
        """Every array of the fleet's state, by snapshot member name: the live arrays.

        Everything else follows from the params (ids, topics, look-ups) or is a scalar of
        the snapshot's record (the clock, the swap count, the random generator).
        """
        packs = self._packs
        return {
            # Batteries: the links, the pool, the charger targets, seq counters, packs.
            "battery_of": self._battery_of,
            "vehicle_of": self._vehicle_of,
            "pooled_at_s": self._pooled_at_s,
            "charge_target_pct": self._charge_target_pct,
            "current_a": self._current_a,
            "seq": self._seq,
            "pack_soh": packs.soh,
            "pack_capacity_ah": packs.capacity_ah,
            "pack_resistance_ohm": packs.resistance_ohm,
            "pack_imbalance_v": packs.imbalance_v,
            "pack_soc_pct": packs.soc_pct,
            "pack_temp_c": packs.temp_c,
            # Vehicles: position and motion, the ride, the report schedule and buffer.
            "x_km": self._x_km,
            "y_km": self._y_km,
            "heading_rad": self._heading_rad,
            "odometer_km": self._odometer_km,
            "riding": self._riding,
            "trip_end_s": self._trip_end_s,
            "cruise_kmh": self._cruise_kmh,
            "speed_kmh": self._speed_kmh,
            "sample_phase_s": self._sample_phase_s,
            "next_sample_s": self._next_sample_s,
            "buffer": self._buffer,
            "buffered": self._buffered,
            "flush_at": self._flush_at,
            # Battery faults (optional members: older snapshots have none).
            **self._fault_arrays(),
        }

    def _fault_arrays(self) -> dict[str, npt.NDArray[Any]]:
        """The fault state, by snapshot member name (the keys of ``_FAULT_STATE``)."""
        return {
            "fault_kind": self._fault_kind,
            "fault_onset_s": self._fault_onset_s,
            "fault_magnitude": self._fault_magnitude,
            "fault_drift_per_min": self._fault_drift_per_min,
        }

    def snapshot(self) -> bytes:
        """The fleet's whole state as bytes, for :meth:`restore`.

        Links, pool, packs (charge, temperature, ageing), positions, rides, report
        buffers, ``seq`` counters, battery faults, the random generator and the clock: a
        restored fleet
        fed the same :meth:`advance` calls emits the same bytes as this one would. Swap
        events not yet drained (:meth:`drain_swap_events`) are its consumer's queue, not
        fleet state, and are left out. Call it between ticks, never during one.
        """
        meta = {
            "params": params_record(self.params),
            "rng": self._rng.bit_generator.state,
            "now_s": self._now_s,
            "swap_count": self._swap_count,
        }
        return encode_snapshot(meta, self._state_arrays())

    @classmethod
    def restore(cls, data: bytes, params: FleetParams, *, seq_margin: int = 0) -> FleetSimulator:
        """The fleet a :meth:`snapshot` saved, continuing from where it stood.

        Parameters
        ----------
        data
            Bytes from :meth:`snapshot`.
        params
            Must equal the params of the saved fleet, but for the fault settings
            (:data:`~sim.fleet_params.FAULT_FIELDS`): the restored fleet keeps the faults
            it had and develops new ones under ``params``. A snapshot from before live
            faults restores with none.
        seq_margin
            Added to every battery's ``seq`` counter. A snapshot taken a while before the
            process died misses the messages sent since; restarting their counters there
            would repeat ``seq`` values the receivers already saw (as duplicates). A
            margin above the messages one battery can send between two snapshots skips
            past them.

        Raises
        ------
        FleetSnapshotError
            Not a snapshot, a damaged or inconsistent one, or one made with other params
            (the message names the differences).
        ValueError
            If ``seq_margin`` is negative.
        """
        if seq_margin < 0:
            raise ValueError(f"Expected seq_margin >= 0, got {seq_margin}.")
        sim = cls(params)
        live = sim._state_arrays()
        meta, arrays = decode_snapshot(
            data, params, {name: (a.shape, a.dtype) for name, a in live.items()},
            optional=_FAULT_STATE.keys(),
        )  # fmt: skip
        _check_state(arrays, params)
        now_s, swap_count = meta.get("now_s"), meta.get("swap_count")
        if now_s is not None and not (
            isinstance(now_s, float | int) and _MIN_TS_S < now_s < _MAX_TS_S
        ):
            raise FleetSnapshotError(
                f"Expected the snapshot's clock as Unix seconds in (1e9, 1e10) or null, got "
                f"{now_s!r}."
            )
        if not (isinstance(swap_count, int) and not isinstance(swap_count, bool) and swap_count >= 0):
            raise FleetSnapshotError(f"Expected a swap count >= 0, got {swap_count!r}.")
        rng_state = meta.get("rng")
        try:
            if not (isinstance(rng_state, dict) and rng_state.get("bit_generator") == "PCG64"):
                raise ValueError("not a PCG64 state")
            sim._rng.bit_generator.state = rng_state
        except (TypeError, ValueError, KeyError) as err:
            raise FleetSnapshotError(
                f"Expected the snapshot's random generator state (PCG64), got one numpy "
                f"refuses: {err}"
            ) from None
        for name, arr in live.items():
            if name in arrays:
                np.copyto(arr, arrays[name])
            else:
                arr.fill(_FAULT_STATE[name])
        sim._seq += seq_margin
        sim._now_s = None if now_s is None else float(now_s)
        sim._swap_count = swap_count
        return sim

    def stand_still_until(self, now_s: float) -> None:
        """Move the clock to ``now_s`` as if the fleet stood still since its last tick.

        What a restored fleet does for the time the system was down: nothing charged,
        drained or moved, and no message was sent (``seq`` continues where it was). Rides
        whose end passed in the meantime end at the next tick, where the vehicle stands;
        each vehicle's report schedule keeps its phase (so the fleet does not report all
        at once); faults went no further (their onsets move with the clock); a battery's
        time in the pool counts towards its rest. A fleet that
        never ticked has nothing to resume: the call does nothing.

        Raises
        ------
        ValueError
            If ``now_s`` is before the last tick, or not Unix seconds.
        """
        if not _MIN_TS_S < now_s < _MAX_TS_S:
            raise ValueError(f"Expected now_s as Unix seconds in (1e9, 1e10), got {now_s}.")
        if self._now_s is None:
            return
        if now_s < self._now_s:
            raise ValueError(
                f"Expected now_s at or after the last tick ({self._now_s}), got {now_s}."
            )
        self._next_sample_s += now_s - self._now_s
        self._fault_onset_s += now_s - self._now_s  # inf (no fault) stays inf
        self._now_s = now_s

    def _vehicle(self, vehicle_id: str) -> int:
        if self._vehicle_index is None:
            self._vehicle_index = {v: i for i, v in enumerate(self._vehicle_ids)}
        try:
            return self._vehicle_index[vehicle_id]
        except KeyError:
            raise KeyError(f"Expected a vehicle id of this fleet, got {vehicle_id!r}.") from None

    # -- the tick --------------------------------------------------------------------

    def advance(self, dt_s: float, now_s: float) -> list[tuple[str, bytes]]:
        """Simulate the interval ``(now_s - dt_s, now_s]`` and return the due messages.

        Parameters
        ----------
        dt_s
            Interval length. Samples are taken at tick times, so a ``dt_s`` longer than
            ``report_interval_s`` thins the reports out (one sample per vehicle per tick).
        now_s
            Unix time at the end of the interval; every new sample carries it as ``ts``.
            Must increase from call to call.

        Returns
        -------
        list of (topic, payload)
            ``TelemetryMessageV2`` JSON messages on ``fleet/<vehicle_id>/telemetry``,
            in vehicle index order.
        """
        if not (math.isfinite(dt_s) and dt_s > 0.0):
            raise ValueError(f"Expected dt_s > 0, got {dt_s}.")
        if not _MIN_TS_S < now_s < _MAX_TS_S:
            raise ValueError(f"Expected now_s as Unix seconds in (1e9, 1e10), got {now_s}.")
        if self._now_s is None:
            self._next_sample_s = (now_s - dt_s) + self._sample_phase_s
            self._fault_onset_s += now_s - dt_s
        elif not now_s > self._now_s:
            raise ValueError(
                f"Expected now_s after the previous tick ({self._now_s}), got {now_s}."
            )
        self._now_s = now_s
        p = self.params
        hour_of_day = ((now_s - 0.5 * dt_s) / 3600.0 + p.utc_offset_h) % 24.0

        self._develop_faults(dt_s, now_s)
        self._move_and_draw(dt_s)
        charging = self._pool_charging()
        self._packs.step(dt_s, self._current_a, p.ambient.temp_c(hour_of_day))
        if charging.size:
            # Chargers stop at the target (constant-current model, no CV taper).
            soc = self._packs.soc_pct
            soc[charging] = np.minimum(soc[charging], self._charge_target_pct[charging])
        soc_v = self._packs.soc_pct[self._battery_of]
        halted = self._halted(now_s)
        parked_now = self._end_trips(now_s, soc_v, halted)
        self._take_samples(now_s, parked_now)
        swap_vehicles, new_batteries = self._plan_swaps(soc_v, now_s)
        messages = self._emit(parked_now, swap_vehicles)
        self._swap(now_s, swap_vehicles, new_batteries)
        soc_v[swap_vehicles] = self._packs.soc_pct[new_batteries]
        if halted is not None:
            halted[swap_vehicles] = False  # a fresh battery: the vehicle rides again
        self._start_trips(dt_s, now_s, hour_of_day, soc_v, halted)
        return messages

    # -- faults ----------------------------------------------------------------------

    def _set_fault(self, battery: int, kind: FaultKind, onset_s: float) -> None:
        spec = draw_fault_spec(kind, onset_s, _LIVE_FAULTS, self._rng)
        self._fault_kind[battery] = 1 + _FAULT_KINDS.index(kind)
        self._fault_onset_s[battery] = spec.onset_ts_s
        self._fault_magnitude[battery] = spec.magnitude
        self._fault_drift_per_min[battery] = spec.drift_per_min

    def _develop_faults(self, dt_s: float, now_s: float) -> None:
        """New faults in the interval: a Poisson process over the installed batteries."""
        p, rng = self.params, self._rng
        if not p.fault_rate_per_vehicle_day > 0.0:
            return
        rate_per_s = p.fault_rate_per_vehicle_day * p.vehicles / _SECONDS_PER_DAY
        count = int(rng.poisson(rate_per_s * dt_s))
        if not count:
            return
        # A battery that already has a fault does not get a second one.
        healthy = np.flatnonzero(self._fault_kind[self._battery_of] == _NO_FAULT)
        vehicles = rng.choice(healthy, size=min(count, healthy.size), replace=False)
        kinds = rng.integers(0, len(p.fault_kinds), vehicles.size)
        for v, k in zip(vehicles.tolist(), kinds.tolist(), strict=True):
            self._set_fault(int(self._battery_of[v]), p.fault_kinds[k], now_s)

    def _active_faults(self, now_s: float) -> npt.NDArray[np.int8] | None:
        """Each vehicle's battery's fault code if it has started, else 0; None when no
        battery of the fleet has a fault (the common case, kept cheap)."""
        if not self._fault_kind.any():
            return None
        b = self._battery_of
        started = self._fault_onset_s[b] <= now_s
        return np.where(started, self._fault_kind[b], _NO_FAULT).astype(np.int8)

    def _halted(self, now_s: float) -> npt.NDArray[np.bool_] | None:
        """Vehicles whose battery is in a thermal runaway: the BMS has cut the motor, so a
        ride ends and no new one starts (None: no vehicle)."""
        active = self._active_faults(now_s)
        return None if active is None else active == _RUNAWAY

    def _apply_faults(
        self, rows: FloatArray, batteries: IndexArray, current_a: FloatArray, now_s: float
    ) -> None:
        """Write the batteries' faults into their new sample ``rows`` (in place)."""
        codes = self._fault_kind[batteries]
        minutes = (now_s - self._fault_onset_s[batteries]) / 60.0
        for code in np.unique(codes[(codes != _NO_FAULT) & (minutes >= 0.0)]).tolist():
            kind = _FAULT_KINDS[code - 1]
            sel = np.flatnonzero((codes == code) & (minutes >= 0.0))
            b = batteries[sel]
            drift, t = self._fault_drift_per_min[b], minutes[sel]
            if kind is FaultKind.WEAK_CELL:
                # The fade stops once the group is empty.
                limit = np.full(t.shape, np.inf)
                np.divide(_WEAK_CELL_MAX_FADE_V, drift, out=limit, where=drift > 0)
                t = np.minimum(t, limit)
            d = fault_offsets(kind, t, self._fault_magnitude[b], drift, current_a[sel])
            temp = rows[sel, _COL["temp_c"]]
            # Levelled off at the peak (a pack already hotter than that keeps its reading).
            hot = np.minimum(temp + d.temp_c, _RUNAWAY_PEAK_C)
            rows[sel, _COL["temp_c"]] = np.maximum(temp, hot)
            rows[sel, _COL["pack_voltage_v"]] += d.pack_voltage_v
            rows[sel, _COL["cell_min_v"]] += d.cell_min_v

    def _move_and_draw(self, dt_s: float) -> None:
        """Advance the riders' motion and set every battery's current for the interval."""
        p, rng = self.params, self._rng
        current = self._current_a
        current.fill(0.0)
        current[self._battery_of] = p.parked_current_a
        ride = np.flatnonzero(self._riding)
        if not ride.size:
            return
        v0_kmh = self._speed_kmh[ride]
        target_kmh = self._cruise_kmh[ride]
        # Exact Ornstein-Uhlenbeck transition: the speed statistics do not depend on dt_s.
        decay = math.exp(-dt_s / p.speed_time_constant_s)
        noise_kmh = p.speed_noise_kmh * math.sqrt(1.0 - decay * decay)
        v1_kmh = target_kmh + (v0_kmh - target_kmh) * decay
        v1_kmh += noise_kmh * rng.standard_normal(ride.size)
        np.clip(v1_kmh, 0.0, p.max_speed_kmh, out=v1_kmh)
        accel_m_s2 = (v1_kmh - v0_kmh) / (3.6 * dt_s)
        dist_km = 0.5 * (v0_kmh + v1_kmh) * dt_s / 3600.0

        heading = self._heading_rad[ride]
        heading += p.heading_noise_rad * math.sqrt(dt_s) * rng.standard_normal(ride.size)
        x = self._x_km[ride] + dist_km * np.cos(heading)
        y = self._y_km[ride] + dist_km * np.sin(heading)
        r = np.hypot(x, y)
        out = np.flatnonzero(r > p.radius_km)
        if out.size:
            # Bounce back in: put the vehicle on the boundary, heading roughly inward.
            scale = p.radius_km / r[out]
            x[out] *= scale
            y[out] *= scale
            heading[out] = np.arctan2(-y[out], -x[out]) + rng.uniform(-0.6, 0.6, out.size)
        self._x_km[ride] = x
        self._y_km[ride] = y
        self._heading_rad[ride] = heading
        self._odometer_km[ride] += dist_km
        self._speed_kmh[ride] = v1_kmh

        power_w = p.traction.battery_power_w(v1_kmh / 3.6, accel_m_s2)
        batteries = self._battery_of[ride]
        current[batteries] = self._packs.current_for_power_a(power_w, batteries)

    def _pool_charging(self) -> IndexArray:
        """Pool batteries below their charge target; sets their charging current."""
        in_pool = self._vehicle_of == _NO_VEHICLE
        charging = np.flatnonzero(in_pool & (self._packs.soc_pct < self._charge_target_pct))
        self._current_a[charging] = -self.params.charge_current_a
        return charging

    def _end_trips(
        self, now_s: float, soc_v: FloatArray, halted: npt.NDArray[np.bool_] | None
    ) -> IndexArray:
        """Park riders whose trip is over, whose battery hit the cut-off or is halted."""
        ride = np.flatnonzero(self._riding)
        done = (self._trip_end_s[ride] <= now_s) | (soc_v[ride] <= self.params.cutoff_soc_pct)
        if halted is not None:
            done |= halted[ride]
        parked = ride[done]
        self._riding[parked] = False
        self._speed_kmh[parked] = 0.0
        self._current_a[self._battery_of[parked]] = self.params.parked_current_a
        return parked

    def _take_samples(self, now_s: float, parked_now: IndexArray) -> None:
        """Append a sample to the buffer of every vehicle that is due one."""
        p = self.params
        due_mask = self._next_sample_s <= now_s
        due_mask[parked_now] = True
        due = np.flatnonzero(due_mask)
        if not due.size:
            return
        batteries = self._battery_of[due]
        packs = self._packs
        true_current = self._current_a[batteries]
        cell_min, cell_max = packs.cell_voltage_range_v(true_current, batteries)
        rows = np.empty((due.size, len(SAMPLE_COLUMNS)))
        rows[:, _COL["ts"]] = now_s
        rows[:, _COL["pack_voltage_v"]] = packs.terminal_voltage_v(true_current, batteries)
        rows[:, _COL["current_a"]] = true_current + p.current_noise_a * self._rng.standard_normal(
            due.size
        )
        rows[:, _COL["temp_c"]] = packs.temp_c[batteries]
        rows[:, _COL["soc_pct"]] = packs.soc_pct[batteries]
        rows[:, _COL["lat"]] = p.center_lat + self._y_km[due] / _KM_PER_DEG_LAT
        rows[:, _COL["lon"]] = p.center_lon + self._x_km[due] / self._km_per_deg_lon
        rows[:, _COL["odometer_km"]] = self._odometer_km[due]
        rows[:, _COL["speed_kmh"]] = self._speed_kmh[due]
        rows[:, _COL["cell_min_v"]] = cell_min
        rows[:, _COL["cell_max_v"]] = cell_max
        if self._fault_kind.any():
            self._apply_faults(rows, batteries, true_current, now_s)
        self._buffer[due, self._buffered[due]] = rows
        self._buffered[due] += 1
        interval_s = np.where(
            self._riding[due], p.report_interval_s, p.report_interval_s * p.parked_report_factor
        )
        self._next_sample_s[due] = now_s + interval_s

    def _plan_swaps(self, soc_v: FloatArray, now_s: float) -> tuple[IndexArray, IndexArray]:
        """Parked vehicles below the swap threshold or with a battery faulty for
        ``fault_response_s`` (those first), paired with charged pool batteries that have
        rested ``pool_rest_s`` since they were taken out."""
        low_mask = ~self._riding & (soc_v < self.params.swap_below_soc_pct)
        active = self._active_faults(now_s)
        if active is None:
            low = np.flatnonzero(low_mask)
        else:
            b = self._battery_of
            due = (
                ~self._riding & (active != _NO_FAULT)
                & (now_s - self._fault_onset_s[b] >= self.params.fault_response_s)
            )  # fmt: skip
            low = np.concatenate([np.flatnonzero(due), np.flatnonzero(low_mask & ~due)])
        if not low.size:
            return low, low
        ready = np.flatnonzero(
            (self._vehicle_of == _NO_VEHICLE)
            & (self._packs.soc_pct >= self._charge_target_pct)
            & (now_s - self._pooled_at_s >= self.params.pool_rest_s)
        )
        # With too few charged spares the rest wait for the next tick.
        k = min(low.size, ready.size)
        return low[:k], ready[:k]

    def _emit(self, parked_now: IndexArray, swap_vehicles: IndexArray) -> list[tuple[str, bytes]]:
        """Turn the buffers that are due into messages and empty them."""
        flush = self._buffered >= self._flush_at
        flush[parked_now] = True
        # A parked vehicle sends each (rare) sample at once, like a heartbeat: batching
        # five of them would leave its twin minutes behind.
        flush |= ~self._riding
        flush[swap_vehicles] = True
        flush &= self._buffered > 0
        emitters = np.flatnonzero(flush)
        if not emitters.size:
            return []
        counts = self._buffered[emitters]
        held = np.arange(self.params.samples_per_message) < counts[:, None]
        values = self._buffer[emitters][held]
        batteries = self._battery_of[emitters]
        seqs = self._seq[batteries]
        self._seq[batteries] += 1
        self._buffered[emitters] = 0
        self._flush_at[emitters] = self.params.samples_per_message
        vehicle_ids, battery_ids = self._vehicle_ids, self._battery_ids
        return encode_messages(
            [vehicle_ids[i] for i in emitters.tolist()],
            [battery_ids[i] for i in batteries.tolist()],
            seqs,
            counts,
            values,
        )

    def _swap(self, now_s: float, vehicles: IndexArray, new_batteries: IndexArray) -> None:
        """Install pool batteries in ``vehicles``; the removed ones go to the chargers."""
        if not vehicles.size:
            return
        p = self.params
        old = self._battery_of[vehicles]
        self._battery_of[vehicles] = new_batteries
        self._vehicle_of[new_batteries] = vehicles
        self._vehicle_of[old] = _NO_VEHICLE
        self._pooled_at_s[old] = now_s
        # The depot repairs a faulty battery before it goes back into the pool.
        for name, arr in self._fault_arrays().items():
            arr[old] = _FAULT_STATE[name]
        self._charge_target_pct[old] = self._rng.uniform(
            p.swapped_soc_min_pct, p.swapped_soc_max_pct, old.size
        )
        self._current_a[new_batteries] = p.parked_current_a
        # The telematics unit wakes with the new battery and reports at the next tick: the
        # twins hear from it at once, not up to a parked period after the swap was recorded.
        self._next_sample_s[vehicles] = now_s
        self._swap_count += int(vehicles.size)
        ids_v, ids_b = self._vehicle_ids, self._battery_ids
        self._swap_events.extend(
            SwapEvent(now_s, ids_v[v], ids_b[o], ids_b[b])
            for v, o, b in zip(vehicles.tolist(), old.tolist(), new_batteries.tolist(), strict=True)
        )

    def _start_trips(
        self, dt_s: float, now_s: float, hour_of_day: float, soc_v: FloatArray,
        halted: npt.NDArray[np.bool_] | None,
    ) -> None:  # fmt: skip
        """Rent out available parked vehicles at the demand profile's rate."""
        p, rng = self.params, self._rng
        free = ~self._riding & (soc_v >= p.min_trip_soc_pct)
        if halted is not None:
            free &= ~halted
        available = np.flatnonzero(free)
        rate = p.demand.trip_rate_per_s(hour_of_day)
        start_probability = -math.expm1(-rate * dt_s)
        starts = available[rng.random(available.size) < start_probability]
        if not starts.size:
            return
        k = starts.size
        self._riding[starts] = True
        self._trip_end_s[starts] = now_s + rng.uniform(
            p.trip_duration_min_s, p.trip_duration_max_s, k
        )
        self._cruise_kmh[starts] = rng.uniform(p.cruise_speed_min_kmh, p.cruise_speed_max_kmh, k)
        self._heading_rad[starts] = rng.uniform(0.0, 2.0 * np.pi, k)
        self._next_sample_s[starts] = np.minimum(
            self._next_sample_s[starts], now_s + p.report_interval_s
        )


def _check_state(arrays: dict[str, npt.NDArray[Any]], params: FleetParams) -> None:
    """Refuse restored arrays that break the simulator's invariants (a doctored file): the
    links, index and count ranges, finite values, ``seq`` far from overflow."""
    n = params.vehicles
    battery_of, vehicle_of = arrays["battery_of"], arrays["vehicle_of"]
    n_batteries = vehicle_of.size
    problems: list[str] = []
    if battery_of.size and not (
        battery_of.min() >= 0 and battery_of.max() < n_batteries
        and np.unique(battery_of).size == n
    ):  # fmt: skip
        problems.append("battery_of: each vehicle one distinct battery index")
    elif not (
        vehicle_of.min() >= _NO_VEHICLE and vehicle_of.max() < n
        and np.count_nonzero(vehicle_of != _NO_VEHICLE) == n
        and np.array_equal(vehicle_of[battery_of], np.arange(n))
    ):  # fmt: skip
        problems.append("vehicle_of: the inverse of battery_of, -1 for the pool")
    spm = params.samples_per_message
    if not (arrays["buffered"].min() >= 0 and arrays["buffered"].max() <= spm):
        problems.append(f"buffered: in [0, {spm}]")
    if not (arrays["flush_at"].min() >= 1 and arrays["flush_at"].max() <= spm):
        problems.append(f"flush_at: in [1, {spm}]")
    if not (arrays["seq"].min() >= 0 and arrays["seq"].max() < 2**62):
        problems.append("seq: in [0, 2**62)")
    soc = arrays["pack_soc_pct"]
    if not (np.all(soc >= 0.0) and np.all(soc <= 100.0)):
        problems.append("pack_soc_pct: in [0, 100]")
    if not (np.all(arrays["pack_capacity_ah"] > 0.0) and np.all(arrays["pack_resistance_ohm"] > 0.0)):
        problems.append("pack_capacity_ah, pack_resistance_ohm: > 0")
    pooled = arrays["pooled_at_s"]
    if np.isnan(pooled).any() or np.isposinf(pooled).any():
        problems.append("pooled_at_s: finite or -inf")
    present = [name for name in _FAULT_STATE if name in arrays]
    if present and len(present) != len(_FAULT_STATE):
        problems.append(f"fault arrays: all of {sorted(_FAULT_STATE)} or none")
    elif present:
        kind, onset = arrays["fault_kind"], arrays["fault_onset_s"]
        none = kind == _NO_FAULT
        if not (kind.min() >= _NO_FAULT and kind.max() <= len(_FAULT_KINDS)):
            problems.append(f"fault_kind: in [0, {len(_FAULT_KINDS)}]")
        elif not (np.isposinf(onset[none]).all() and np.isfinite(onset[~none]).all()):
            problems.append("fault_onset_s: finite for a battery with a fault, inf for one without")
    # The report buffer's unused slots hold stale samples (or whatever a doctored file put
    # there, never sent): only the rest must be finite.
    floats = [
        name for name, a in arrays.items()
        if a.dtype.kind == "f" and name not in ("buffer", "pooled_at_s", "fault_onset_s")
        and not np.isfinite(a).all()
    ]  # fmt: skip
    if floats:
        problems.append(f"{', '.join(sorted(floats))}: finite")
    if problems:
        raise FleetSnapshotError(
            f"Expected a consistent fleet state, got a snapshot whose arrays break: "
            f"{'; '.join(problems)}."
        )

"""Tiny hand-made telemetry for the twin tests.

``message`` describes one MQTT message (one battery, one ``seq``, a few samples) and
``make_batch`` stacks messages into the columnar :class:`TelemetryBatch` a shard applies.
Every column not given takes a plain default: a parked 48 V pack at 25 °C, 80 % SoC, in
Berlin, drawing no current.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from contracts.samples import SAMPLE_FIELDS, TelemetryBatch
from contracts.telemetry import decode_batch
from sim.demand import DemandProfile
from sim.fleet import FleetSimulator
from sim.fleet_params import FleetParams
from twins.twin_table import ApplyResult, TwinTable

#: Start of every hand-made series (Unix seconds, inside the contract's ts bounds).
T0_S = 1.8e9

DEFAULTS: dict[str, float] = {
    "pack_voltage_v": 48.0,
    "current_a": 0.0,
    "temp_c": 25.0,
    "soc_pct": 80.0,
    "lat": 52.52,
    "lon": 13.40,
    "odometer_km": 100.0,
    "speed_kmh": 0.0,
    "cell_min_v": np.nan,
    "cell_max_v": np.nan,
}


@dataclass(frozen=True)
class Message:
    battery_id: str
    seq: int
    columns: dict[str, npt.NDArray[np.float64]]
    vehicle_id: str = "veh-1"
    received_at_s: float = 0.0

    @property
    def n_samples(self) -> int:
        return len(self.columns["ts"])


def message(
    battery_id: str,
    seq: int,
    ts: npt.ArrayLike,
    *,
    vehicle_id: str = "veh-1",
    received_at_s: float = 0.0,
    **columns: npt.ArrayLike,
) -> Message:
    """One message; scalars in ``columns`` are repeated for every sample."""
    ts_arr = np.atleast_1d(np.asarray(ts, dtype=np.float64))
    n = ts_arr.size
    unknown = set(columns) - set(SAMPLE_FIELDS)
    if unknown:
        raise ValueError(f"Expected columns from {SAMPLE_FIELDS}, got {sorted(unknown)}.")
    cols = {"ts": ts_arr}
    for name in SAMPLE_FIELDS[1:]:
        raw = np.atleast_1d(np.asarray(columns.get(name, DEFAULTS[name]), dtype=np.float64))
        cols[name] = np.full(n, raw[0]) if raw.size == 1 else raw
    return Message(battery_id, seq, cols, vehicle_id, received_at_s)


def make_batch(*messages: Message) -> TelemetryBatch:
    """The columnar batch of ``messages``, in the given order."""
    offsets = np.zeros(len(messages) + 1, dtype=np.int64)
    np.cumsum([m.n_samples for m in messages], out=offsets[1:])
    return TelemetryBatch(
        battery_ids=[m.battery_id for m in messages],
        vehicle_ids=[m.vehicle_id for m in messages],
        seqs=np.array([m.seq for m in messages], dtype=np.int64),
        msg_offsets=offsets,
        columns={
            k: np.concatenate([m.columns[k] for m in messages]) if messages else np.zeros(0)
            for k in SAMPLE_FIELDS
        },
        received_at_s=np.array([m.received_at_s for m in messages], dtype=np.float64),
    )


def permuted(batch: TelemetryBatch, order: Sequence[int]) -> TelemetryBatch:
    """The same samples in one message per original message, reordered *within* messages."""
    idx = np.asarray(order, dtype=np.int64)
    return TelemetryBatch(
        battery_ids=list(batch.battery_ids),
        vehicle_ids=list(batch.vehicle_ids),
        seqs=batch.seqs,
        msg_offsets=batch.msg_offsets,
        columns={k: v[idx] for k, v in batch.columns.items()},
        received_at_s=batch.received_at_s,
    )


@dataclass
class RandomWalk:
    """Seeded random-walk telemetry for many batteries (drives, regen, charges, gaps)."""

    seed: int
    n_batteries: int
    n_samples: int
    batteries: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.batteries = [f"bat-{i:03d}" for i in range(self.n_batteries)]

    def messages(self, samples_per_message: int) -> list[Message]:
        rng = np.random.default_rng(self.seed)
        out: list[Message] = []
        for b in self.batteries:
            dt = rng.choice([1.0, 2.0, 30.0, 600.0], size=self.n_samples, p=[0.5, 0.3, 0.15, 0.05])
            ts = T0_S + np.cumsum(dt)
            current = np.clip(np.cumsum(rng.normal(0.0, 4.0, self.n_samples)), -20.0, 40.0)
            speed = np.where(
                rng.random(self.n_samples) < 0.7, rng.uniform(5, 30, self.n_samples), 0.0
            )
            soc = np.clip(90.0 - np.cumsum(np.abs(rng.normal(0.0, 1.5, self.n_samples))), 0, 100)
            # Charged while offline: SoC jumps only after a 10-minute gap, so the series stays
            # physically possible (the twins reject faster rises as implausible).
            charged = (dt == 600.0) & (rng.random(self.n_samples) < 0.6)
            soc = np.where(charged, np.minimum(soc + 40.0, 100.0), soc)
            # Each battery somewhere in the city, then a walk of a few metres a sample.
            lat0, lon0 = 52.5 + rng.normal(0, 0.01), 13.4 + rng.normal(0, 0.01)
            cols: Mapping[str, npt.NDArray[np.float64]] = {
                "pack_voltage_v": 48.0 - 0.05 * current + rng.normal(0, 0.01, self.n_samples),
                "current_a": current,
                "temp_c": rng.uniform(20.0, 55.0, self.n_samples),
                "soc_pct": soc,
                "lat": lat0 + np.cumsum(rng.normal(0, 2e-5, self.n_samples)),
                "lon": lon0 + np.cumsum(rng.normal(0, 2e-5, self.n_samples)),
                "odometer_km": 100.0 + np.cumsum(rng.uniform(0, 0.01, self.n_samples)),
                "speed_kmh": speed,
                "cell_min_v": rng.uniform(3.5, 3.7, self.n_samples),
                "cell_max_v": rng.uniform(3.7, 3.9, self.n_samples),
            }
            for seq, start in enumerate(range(0, self.n_samples, samples_per_message)):
                sl = slice(start, start + samples_per_message)
                out.append(
                    message(
                        b, seq, ts[sl], vehicle_id=f"veh-{b}", **{k: v[sl] for k, v in cols.items()}
                    )
                )
        return out


#: 30 busy vehicles, low batteries and 3 spares: batteries go round vehicle → pool → vehicle
#: (the twins' claim check and the simulator's restart are both tested on it).
SWAPPY_FLEET = FleetParams(
    vehicles=30, seed=3, initial_soc_min_pct=10.0, initial_soc_max_pct=30.0,
    spare_fraction=0.0, min_spares=3, demand=DemandProfile(trips_per_vehicle_per_day=150.0),
)  # fmt: skip


def feed_fleet(
    table: TwinTable, sim: FleetSimulator, start_s: float, seconds: float, dt_s: float = 10.0
) -> ApplyResult:
    """Advance ``sim`` from ``start_s`` for ``seconds`` and apply every tick's messages to
    ``table``; the summed result (messages, samples, duplicates, refusals, vehicle changes)."""
    total = ApplyResult()
    for k in range(1, int(seconds / dt_s) + 1):
        now_s = start_s + k * dt_s
        raws = sim.advance(dt_s, now_s)
        if not raws:
            continue
        batch, _, bad = decode_batch(raws, now_s)
        assert not bad
        res = table.apply(batch)
        total.messages += res.messages
        total.applied_samples += res.applied_samples
        total.duplicate_messages += res.duplicate_messages
        total.rejected += res.rejected
        total.vehicle_changes += res.vehicle_changes
    return total

"""Columnar telemetry batches: the unit of work that travels from the bridge to a shard.

A batch holds many messages (each one battery, one ``seq``) and all their samples as
flat numpy columns, so a shard applies it with vectorised numpy and Ray ships it as a
few buffers instead of thousands of Python objects.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["SAMPLE_FIELDS", "WINDOW_FIELDS", "TelemetryBatch"]

#: Per-sample columns, in wire order. ``current_a`` is positive while discharging.
SAMPLE_FIELDS: tuple[str, ...] = (
    "ts",
    "pack_voltage_v",
    "current_a",
    "temp_c",
    "soc_pct",
    "lat",
    "lon",
    "odometer_km",
    "speed_kmh",
    "cell_min_v",
    "cell_max_v",
)

#: Columns kept in a twin's rolling window (``ts`` is kept apart as float64 seconds).
WINDOW_FIELDS: tuple[str, ...] = SAMPLE_FIELDS[1:]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class TelemetryBatch:
    """Messages and their samples, columnar.

    Parameters
    ----------
    battery_ids, vehicle_ids
        One entry per message.
    seqs
        Per-battery message sequence numbers, one per message.
    msg_offsets
        ``len(messages) + 1`` offsets: message ``k`` owns samples
        ``msg_offsets[k]:msg_offsets[k + 1]``.
    columns
        One float64 array per name in :data:`SAMPLE_FIELDS`, all of the same length.
        Missing optional values (cell voltages) are NaN.
    received_at_s
        Wall-clock time the bridge received each message (for freshness metrics).
    """

    battery_ids: Sequence[str]
    vehicle_ids: Sequence[str]
    seqs: IntArray
    msg_offsets: IntArray
    columns: Mapping[str, FloatArray]
    received_at_s: FloatArray | None = None

    def __post_init__(self) -> None:
        n_msgs = len(self.battery_ids)
        if self.received_at_s is None or len(self.received_at_s) == 0:
            # Unknown receive times are 0.0, one per message, so every batch has the same
            # shape and selecting or joining never has to special-case them.
            object.__setattr__(self, "received_at_s", np.zeros(n_msgs))
        elif len(self.received_at_s) != n_msgs:
            raise ValueError(
                f"Expected one received_at_s per message ({n_msgs}), got {len(self.received_at_s)}."
            )
        if len(self.vehicle_ids) != n_msgs or len(self.seqs) != n_msgs:
            raise ValueError(
                f"Expected one vehicle_id and seq per message ({n_msgs}), got "
                f"{len(self.vehicle_ids)} vehicle ids and {len(self.seqs)} seqs."
            )
        if len(self.msg_offsets) != n_msgs + 1:
            raise ValueError(
                f"Expected {n_msgs + 1} msg_offsets, got {len(self.msg_offsets)}."
            )
        missing = set(SAMPLE_FIELDS) - set(self.columns)
        if missing:
            raise ValueError(f"Expected columns {SAMPLE_FIELDS}, missing {sorted(missing)}.")
        n = self.n_samples
        for name in SAMPLE_FIELDS:
            if len(self.columns[name]) != n:
                raise ValueError(
                    f"Expected {n} values in column {name!r} (msg_offsets[-1]), "
                    f"got {len(self.columns[name])}."
                )

    @property
    def recv(self) -> FloatArray:
        """``received_at_s``, never None (filled in by the constructor)."""
        assert self.received_at_s is not None
        return self.received_at_s

    @property
    def n_messages(self) -> int:
        return len(self.battery_ids)

    @property
    def n_samples(self) -> int:
        return int(self.msg_offsets[-1]) if len(self.msg_offsets) else 0

    def message_index(self) -> IntArray:
        """Message number of every sample (length ``n_samples``)."""
        counts = np.diff(self.msg_offsets)
        return np.repeat(np.arange(self.n_messages, dtype=np.int64), counts)

    def select_messages(self, keep: npt.NDArray[np.bool_]) -> TelemetryBatch:
        """A new batch with only the messages where ``keep`` is true."""
        if keep.all():
            return self
        idx = np.flatnonzero(keep)
        counts = np.diff(self.msg_offsets)[idx]
        offsets = np.zeros(len(idx) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        sample_keep = np.repeat(keep, np.diff(self.msg_offsets))
        return TelemetryBatch(
            battery_ids=[self.battery_ids[i] for i in idx.tolist()],
            vehicle_ids=[self.vehicle_ids[i] for i in idx.tolist()],
            seqs=self.seqs[idx],
            msg_offsets=offsets,
            columns={k: v[sample_keep] for k, v in self.columns.items()},
            received_at_s=self.recv[idx],
        )

    @staticmethod
    def concat(batches: Sequence[TelemetryBatch]) -> TelemetryBatch:
        """Join batches in order (message order is preserved)."""
        if len(batches) == 1:
            return batches[0]
        if not batches:
            return TelemetryBatch.empty()
        sizes = [b.n_samples for b in batches]
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        offsets = np.concatenate(
            [b.msg_offsets[:-1] + s for b, s in zip(batches, starts, strict=True)]
            + [np.array([sum(sizes)], dtype=np.int64)]
        )
        return TelemetryBatch(
            battery_ids=[x for b in batches for x in b.battery_ids],
            vehicle_ids=[x for b in batches for x in b.vehicle_ids],
            seqs=np.concatenate([b.seqs for b in batches]),
            msg_offsets=offsets,
            columns={k: np.concatenate([b.columns[k] for b in batches]) for k in SAMPLE_FIELDS},
            received_at_s=np.concatenate([b.recv for b in batches]),
        )

    @staticmethod
    def empty() -> TelemetryBatch:
        return TelemetryBatch(
            battery_ids=[],
            vehicle_ids=[],
            seqs=np.zeros(0, dtype=np.int64),
            msg_offsets=np.zeros(1, dtype=np.int64),
            columns={k: np.zeros(0) for k in SAMPLE_FIELDS},
            received_at_s=np.zeros(0),
        )

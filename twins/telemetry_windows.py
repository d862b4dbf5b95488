"""Dense, time-ordered telemetry windows: the one input shape of every anomaly detector.

A twin keeps its last ``W`` samples in a ring buffer (:class:`~twins.twin_table.TwinTable`).
Detectors want them as a dense ``(n, W, F)`` block, oldest first, so that every statistic is
one numpy pass over many batteries. Windows are **right-aligned**: the newest sample of every
battery sits at position ``W - 1`` and a battery with fewer than ``W`` samples is padded with
NaN at the *front*, so "the last k samples" is the same slice ``[W - k:]`` for every battery.

Two builders produce bit-identical arrays for the same samples:

* :func:`windows_from_table`: the live path, straight from a shard's ring buffers;
* :func:`windows_from_columns`: the offline path (training, evaluation), from plain
  per-battery sample columns as the simulator or the history store yields them.

Values stay ``float32`` as in the ring buffer (the offline path rounds the same way), and
timestamps ``float64`` seconds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from contracts.samples import WINDOW_FIELDS
from twins.pack_watch import EVIDENCE_NAMES, evidence
from twins.twin_table import TwinTable

__all__ = [
    "FIELD_INDEX",
    "TelemetryWindows",
    "sliding_windows",
    "windows_from_columns",
    "windows_from_table",
]

FloatArray = npt.NDArray[np.float64]
Float32Array = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

#: Position of each :data:`~contracts.samples.WINDOW_FIELDS` name on the last axis of ``values``.
FIELD_INDEX: dict[str, int] = {name: i for i, name in enumerate(WINDOW_FIELDS)}


@dataclass(frozen=True, eq=False)
class TelemetryWindows:
    """The last ``W`` samples of ``n`` batteries, oldest first and right-aligned.

    Parameters
    ----------
    values
        ``(n, W, len(WINDOW_FIELDS))`` float32 sample values, fields in
        :data:`~contracts.samples.WINDOW_FIELDS` order; NaN where a battery has no sample.
    ts_s
        ``(n, W)`` float64 Unix timestamps, NaN where there is no sample.
    lengths
        ``(n,)`` number of valid samples of each battery (the last ``lengths[i]``
        positions of its row).
    battery_ids
        One id per row.
    evidence
        ``(n, len(EVIDENCE_NAMES))`` what each twin learned about its own pack says about
        its newest samples (:func:`twins.pack_watch.evidence`; NaN while it warms up), or
        None where the windows come from plain sample columns (training, offline scoring).
    """

    values: Float32Array
    ts_s: FloatArray
    lengths: IntArray
    battery_ids: tuple[str, ...]
    evidence: FloatArray | None = None

    def __post_init__(self) -> None:
        if self.values.ndim != 3 or self.values.shape[2] != len(WINDOW_FIELDS):
            raise ValueError(
                f"Expected values of shape (n, W, {len(WINDOW_FIELDS)}), got {self.values.shape}."
            )
        n, w = self.values.shape[:2]
        if self.ts_s.shape != (n, w) or self.lengths.shape != (n,):
            raise ValueError(
                f"Expected ts_s of shape {(n, w)} and lengths of shape {(n,)}, got "
                f"{self.ts_s.shape} and {self.lengths.shape}."
            )
        if len(self.battery_ids) != n:
            raise ValueError(f"Expected {n} battery_ids, got {len(self.battery_ids)}.")
        if self.evidence is not None and self.evidence.shape != (n, len(EVIDENCE_NAMES)):
            raise ValueError(
                f"Expected evidence of shape {(n, len(EVIDENCE_NAMES))}, got {self.evidence.shape}."
            )
        if n and not (0 <= int(self.lengths.min()) and int(self.lengths.max()) <= w):
            raise ValueError(
                f"Expected lengths in [0, {w}], got {self.lengths.min()}..{self.lengths.max()}."
            )

    @property
    def n(self) -> int:
        """Number of batteries (rows)."""
        return int(self.values.shape[0])

    @property
    def window_samples(self) -> int:
        """Window length ``W``."""
        return int(self.values.shape[1])

    @property
    def valid(self) -> BoolArray:
        """``(n, W)`` True where a row holds a sample."""
        w = self.window_samples
        out: BoolArray = np.arange(w)[None, :] >= (w - self.lengths)[:, None]
        return out

    def recent(self, k: int) -> BoolArray:
        """``(n, W)`` True at each row's last ``k`` valid samples."""
        w = self.window_samples
        out: BoolArray = self.valid & (np.arange(w) >= w - k)[None, :]
        return out

    def reference(self, fraction: float, recent_samples: int) -> BoolArray:
        """``(n, W)`` True at each row's oldest ``floor(fraction * length)`` valid samples,
        never reaching into its last ``recent_samples``.

        Detectors compare the recent samples with this older part. Keeping a gap between
        the two means a fault that began a little before the recent part has not yet
        leaked into the reference it is measured against.
        """
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"Expected fraction in (0, 1], got {fraction}.")
        w = self.window_samples
        count = np.minimum(
            np.floor(fraction * self.lengths).astype(np.int64),
            np.maximum(self.lengths - recent_samples, 0),
        )
        first = w - self.lengths
        pos = np.arange(w)[None, :]
        out: BoolArray = (pos >= first[:, None]) & (pos < (first + count)[:, None])
        return out

    def column(self, name: str) -> FloatArray:
        """``(n, W)`` float64 copy of the field ``name`` (NaN where there is no sample)."""
        try:
            i = FIELD_INDEX[name]
        except KeyError:
            raise KeyError(f"Expected a field of {WINDOW_FIELDS}, got {name!r}.") from None
        return self.values[:, :, i].astype(np.float64)

    def take(self, rows: npt.ArrayLike) -> TelemetryWindows:
        """The windows of ``rows`` (an index or boolean array), in that order."""
        idx = np.arange(self.n)[np.asarray(rows)]
        return TelemetryWindows(
            values=self.values[idx],
            ts_s=self.ts_s[idx],
            lengths=self.lengths[idx],
            battery_ids=tuple(self.battery_ids[i] for i in idx.tolist()),
            evidence=None if self.evidence is None else self.evidence[idx],
        )

    @staticmethod
    def concat(parts: Sequence[TelemetryWindows]) -> TelemetryWindows:
        """Stack windows of equal ``W`` row-wise."""
        if not parts:
            raise ValueError("Expected at least one TelemetryWindows to concatenate, got none.")
        widths = {p.window_samples for p in parts}
        if len(widths) != 1:
            raise ValueError(f"Expected windows of one length W, got lengths {sorted(widths)}.")
        with_evidence = [p.evidence is not None for p in parts]
        return TelemetryWindows(
            values=np.concatenate([p.values for p in parts]),
            ts_s=np.concatenate([p.ts_s for p in parts]),
            lengths=np.concatenate([p.lengths for p in parts]),
            battery_ids=tuple(b for p in parts for b in p.battery_ids),
            # Evidence only where every part has it: a row without would read as "calm".
            evidence=np.concatenate([p.evidence for p in parts if p.evidence is not None]) if all(with_evidence) else None,
        )


def windows_from_table(table: TwinTable, slots: npt.ArrayLike) -> TelemetryWindows:
    """Windows of the twins in ``slots``, read from their ring buffers in one gather.

    Parameters
    ----------
    table
        The shard's columnar twin state.
    slots
        Slot numbers (``table.slot(battery_id)``), any order, repeats allowed.

    Returns
    -------
    TelemetryWindows
        Row ``i`` is the window of ``slots[i]``.
    """
    slot_arr = np.asarray(slots, dtype=np.int64).reshape(-1)
    if slot_arr.size and not (0 <= slot_arr.min() and slot_arr.max() < len(table)):
        raise IndexError(
            f"Expected slots in [0, {len(table)}), got {slot_arr.min()}..{slot_arr.max()}."
        )
    w = table.params.window_samples
    # Position j of the output is ring index head - W + j: the oldest of the W newest
    # writes comes first and the newest (head - 1) lands at W - 1, for every twin at once.
    ring = (table.head[slot_arr][:, None] - w + np.arange(w)[None, :]) % w
    rows = slot_arr[:, None]
    values = table.window[rows, ring]
    ts_s = table.window_ts[rows, ring]
    lengths = table.count[slot_arr].astype(np.int64)
    # Positions a young twin never wrote are NaN already; masking anyway keeps the contract
    # ("NaN where there is no sample") independent of how the table initialises its rings.
    pad = np.arange(w)[None, :] < (w - lengths)[:, None]
    values[pad] = np.nan
    ts_s[pad] = np.nan
    return TelemetryWindows(
        values=values,
        ts_s=ts_s,
        lengths=lengths,
        battery_ids=tuple(table.ids[s] for s in slot_arr.tolist()),
        evidence=evidence(table.pack_watch[slot_arr], table.params.pack_watch),
    )


def windows_from_columns(
    columns: Sequence[Mapping[str, npt.ArrayLike]],
    window_samples: int = 64,
    *,
    battery_ids: Sequence[str] | None = None,
    source: npt.ArrayLike | None = None,
    end: npt.ArrayLike | None = None,
) -> TelemetryWindows:
    """Windows built from per-battery sample columns, identical to the live ones.

    Parameters
    ----------
    columns
        One mapping per battery with ``"ts"`` and every name of
        :data:`~contracts.samples.WINDOW_FIELDS`, equal lengths, ``ts`` strictly increasing
        (a twin drops samples that do not move its clock forward).
    window_samples
        ``W``; the twin table's ``window_samples``.
    battery_ids
        One id per entry of ``columns``; ``"0"``, ``"1"``, ... if not given.
    source, end
        Optional, for many windows per battery (training): window ``k`` holds the up to
        ``W`` samples of ``columns[source[k]]`` before sample index ``end[k]``
        (exclusive). By default one window per battery, ending at its last sample.

    Returns
    -------
    TelemetryWindows
        The same arrays :func:`windows_from_table` returns once these samples have been
        applied to a twin.
    """
    if window_samples < 1:
        raise ValueError(f"Expected window_samples >= 1, got {window_samples}.")
    n_series = len(columns)
    ids = [str(i) for i in range(n_series)] if battery_ids is None else list(battery_ids)
    if len(ids) != n_series:
        raise ValueError(f"Expected {n_series} battery_ids (one per series), got {len(ids)}.")
    names = ("ts", *WINDOW_FIELDS)
    flat: dict[str, list[FloatArray]] = {name: [] for name in names}
    sizes = np.zeros(n_series, dtype=np.int64)
    for i, series in enumerate(columns):
        missing = [name for name in names if name not in series]
        if missing:
            raise ValueError(f"Expected columns {names} for series {i}, missing {missing}.")
        arrays = [np.asarray(series[name], dtype=np.float64).reshape(-1) for name in names]
        size = arrays[0].size
        if any(a.size != size for a in arrays):
            raise ValueError(
                f"Expected equal column lengths in series {i}, got "
                f"{ {name: a.size for name, a in zip(names, arrays, strict=True)} }."
            )
        if size > 1 and not bool(np.all(np.diff(arrays[0]) > 0)):
            raise ValueError(f"Expected strictly increasing ts in series {i}.")
        sizes[i] = size
        for name, a in zip(names, arrays, strict=True):
            flat[name].append(a)
    offsets = np.zeros(n_series + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])

    src = np.arange(n_series) if source is None else np.asarray(source, dtype=np.int64).reshape(-1)
    if src.size and not (0 <= src.min() and src.max() < n_series):
        raise IndexError(f"Expected source in [0, {n_series}), got {src.min()}..{src.max()}.")
    stop = sizes[src] if end is None else np.asarray(end, dtype=np.int64).reshape(-1)
    if stop.shape != src.shape:
        raise ValueError(f"Expected one end per source ({src.size}), got {stop.size}.")
    if stop.size and not (bool(np.all(stop >= 0)) and bool(np.all(stop <= sizes[src]))):
        raise ValueError("Expected every end in [0, len(series)] of its source series.")

    w = window_samples
    lengths = np.minimum(stop, w)
    local = stop[:, None] - w + np.arange(w)[None, :]  # sample index inside its series
    pad = local < 0
    gather = offsets[src][:, None] + np.maximum(local, 0)
    n_total = int(offsets[-1])

    def take(name: str) -> FloatArray:
        col = np.concatenate(flat[name]) if n_total else np.zeros(1)
        out: FloatArray = col[np.minimum(gather, max(n_total - 1, 0))]
        return out

    # Stack as float64 and round once to float32: exactly the cast the twin table does.
    values = np.stack([take(name) for name in WINDOW_FIELDS], axis=2).astype(np.float32)
    ts_s = take("ts")
    values[pad] = np.nan
    ts_s[pad] = np.nan
    return TelemetryWindows(
        values=values,
        ts_s=ts_s,
        lengths=lengths,
        battery_ids=tuple(ids[i] for i in src.tolist()),
    )


def sliding_windows(
    columns: Sequence[Mapping[str, npt.ArrayLike]],
    window_samples: int = 64,
    stride: int = 16,
    *,
    battery_ids: Sequence[str] | None = None,
) -> TelemetryWindows:
    """Every full window of every series, ``stride`` samples apart (training data).

    Window ends run from ``window_samples`` to the series length in steps of ``stride``;
    a series shorter than one window contributes nothing.
    """
    if stride < 1:
        raise ValueError(f"Expected stride >= 1, got {stride}.")
    sizes = [len(np.asarray(c["ts"]).reshape(-1)) if "ts" in c else 0 for c in columns]
    ends = [np.arange(window_samples, size + 1, stride, dtype=np.int64) for size in sizes]
    source = np.repeat(np.arange(len(columns), dtype=np.int64), [e.size for e in ends])
    end = np.concatenate(ends) if ends else np.zeros(0, dtype=np.int64)
    return windows_from_columns(
        columns, window_samples, battery_ids=battery_ids, source=source, end=end
    )

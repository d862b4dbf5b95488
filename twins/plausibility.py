"""Is a message physically possible for one battery? SoC and position steps between samples.

A forged message carries values no pack can reach from where its twin is: a SoC that
jumps up faster than any charger fills a pack, or a position further away than the
battery could have travelled. :func:`message_ends` checks the consecutive samples inside
every message of a batch at once (numpy); :func:`step_problem` checks the step from the
twin's newest sample to a message's first, which the table does message by message.
Both answer with ``implausible_telemetry`` and a detail naming the check, the values and
the interval. The limits are :class:`~twins.twin_table.TwinTableParams` fields.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from contracts.samples import TelemetryBatch
from contracts.telemetry import RejectReason

if TYPE_CHECKING:  # the table imports this module; the params type is only annotation
    from twins.twin_table import TwinTableParams

__all__ = [
    "MessageEnds",
    "Sample",
    "SampleColumns",
    "haversine_m",
    "implausible_steps",
    "message_ends",
    "step_problem",
]

FloatArray = npt.NDArray[np.float64]
#: One sample as the checks see it: (ts, SoC %, lat, lon).
Sample = tuple[float, float, float, float]
#: The same for many samples, one array each.
SampleColumns = tuple[FloatArray, FloatArray, FloatArray, FloatArray]
Problem = tuple[RejectReason, str]

_EARTH_RADIUS_M = 6_371_000.0


def haversine_m(
    lat0: FloatArray | float, lon0: FloatArray | float, lat1: FloatArray | float, lon1: FloatArray | float
) -> FloatArray:
    """Great-circle distance in metres (NaN where a position is NaN)."""
    p0, p1 = np.radians(lat0), np.radians(lat1)
    a = np.sin((p1 - p0) / 2.0) ** 2 + np.cos(p0) * np.cos(p1) * np.sin(np.radians(np.subtract(lon1, lon0)) / 2.0) ** 2
    out: FloatArray = 2.0 * _EARTH_RADIUS_M * np.arcsin(np.sqrt(np.minimum(a, 1.0)))
    return out


def _implausible(
    dt_s: float, soc0: float, soc1: float, dist_m: float, where: str, p: TwinTableParams
) -> Problem | None:
    """The first check a step of ``dt_s`` seconds fails, or None (NaN values pass)."""
    limit_pct = p.soc_jump_slack_pct + p.max_soc_rise_pct_per_s * dt_s
    if soc1 - soc0 > limit_pct:
        return RejectReason.IMPLAUSIBLE_TELEMETRY, (
            f"soc_rise: SoC rose from {soc0:.1f} % to {soc1:.1f} % in {dt_s:.1f} s {where}; "
            f"expected at most +{limit_pct:.1f} % ({p.soc_jump_slack_pct:g} % + "
            f"{p.max_soc_rise_pct_per_s:g} %/s)"
        )
    if dist_m > p.max_speed_mps * dt_s:
        return RejectReason.IMPLAUSIBLE_TELEMETRY, (
            f"speed: the position moved {dist_m:.0f} m in {dt_s:.1f} s {where} "
            f"({dist_m / dt_s:.0f} m/s); expected at most {p.max_speed_mps:g} m/s"
        )
    return None


def step_problem(last: Sample, first: Sample, p: TwinTableParams) -> Problem | None:
    """Why a message's first sample cannot follow the twin's newest, or None.

    Only a step forward in time is judged: a late message (at or before the newest) is
    history arriving out of order and has no "previous" sample to be compared with.
    """
    dt_s = first[0] - last[0]
    if not (dt_s > 0.0 and math.isfinite(dt_s)):
        return None
    dist_m = float(haversine_m(last[2], last[3], first[2], first[3]))
    return _implausible(dt_s, last[1], first[1], dist_m, "since the twin's last sample", p)


def implausible_steps(last: SampleColumns, first: SampleColumns, p: TwinTableParams) -> npt.NDArray[np.bool_]:
    """:func:`step_problem` for many steps at once: True where it would find one."""
    dt_s = first[0] - last[0]
    with np.errstate(invalid="ignore"):
        forward = np.isfinite(dt_s) & (dt_s > 0.0)
        dist_m = haversine_m(last[2], last[3], first[2], first[3])
        bad: npt.NDArray[np.bool_] = forward & (
            (first[1] - last[1] > p.soc_jump_slack_pct + p.max_soc_rise_pct_per_s * dt_s)
            | (dist_m > p.max_speed_mps * dt_s)
        )
    return bad


@dataclass(frozen=True)
class MessageEnds:
    """Per message of a batch: its first and last sample in time, and what failed inside it.

    ``inner`` maps a message index to the first implausible step between two of its own
    samples; messages without samples have NaN ends.
    """

    first: SampleColumns
    last: SampleColumns
    inner: dict[int, Problem]

    @property
    def first_ts(self) -> FloatArray:
        return self.first[0]

    @property
    def last_ts(self) -> FloatArray:
        return self.last[0]

    def first_of(self, k: int) -> Sample:
        ts, soc, lat, lon = (float(a[k]) for a in self.first)
        return ts, soc, lat, lon

    def last_of(self, k: int) -> Sample:
        ts, soc, lat, lon = (float(a[k]) for a in self.last)
        return ts, soc, lat, lon


def message_ends(batch: TelemetryBatch, p: TwinTableParams) -> MessageEnds:
    """Ends of every message of ``batch`` and the implausible steps inside each (vectorised)."""
    n = batch.n_messages
    counts = np.diff(batch.msg_offsets)
    msg = np.repeat(np.arange(n, dtype=np.int64), counts)
    # Samples of a message may come in any order; the checks follow time.
    order = np.lexsort((batch.columns["ts"], msg))
    ts, soc, lat, lon = (batch.columns[name][order] for name in ("ts", "soc_pct", "lat", "lon"))
    # A sample with the timestamp of the one before it is a duplicate that apply drops
    # (the first in batch order wins, and lexsort is stable): judge without it.
    dup = np.zeros(msg.size, dtype=bool)
    dup[1:] = (msg[1:] == msg[:-1]) & (ts[1:] == ts[:-1])
    if dup.any():
        kept = ~dup
        msg = msg[kept]
        ts, soc, lat, lon = ts[kept], soc[kept], lat[kept], lon[kept]
    has = counts > 0
    k_all = np.arange(n, dtype=np.int64)
    first_idx = np.searchsorted(msg, k_all, side="left")[has]
    last_idx = np.searchsorted(msg, k_all, side="right")[has] - 1

    def ends(idx: npt.NDArray[np.int64]) -> SampleColumns:
        return _at(ts, has, idx), _at(soc, has, idx), _at(lat, has, idx), _at(lon, has, idx)

    same = msg[1:] == msg[:-1]
    dt_s = np.diff(ts)
    with np.errstate(invalid="ignore"):
        dist_m = haversine_m(lat[:-1], lon[:-1], lat[1:], lon[1:])
        step = same & (dt_s > 0.0)
        bad = step & (
            (np.diff(soc) > p.soc_jump_slack_pct + p.max_soc_rise_pct_per_s * dt_s)
            | (dist_m > p.max_speed_mps * dt_s)
        )
    first, last = ends(first_idx), ends(last_idx)
    inner: dict[int, Problem] = {}
    for i in np.flatnonzero(bad).tolist():  # rare: forged or broken messages only
        k = int(msg[i])
        if k in inner:
            continue
        problem = _implausible(
            float(dt_s[i]), float(soc[i]), float(soc[i + 1]), float(dist_m[i]),
            "between two samples of the message", p,
        )  # fmt: skip
        if problem is not None:
            inner[k] = problem
    return MessageEnds(first, last, inner)


def _at(col: FloatArray, has: npt.NDArray[np.bool_], idx: npt.NDArray[np.int64]) -> FloatArray:
    out = np.full(has.size, np.nan)
    out[has] = col[idx]
    return out

"""The degradation model's input of one step, and when a step is due, computed by the twin.

This is feature code both sides need: the twin shard builds it online after a trusted
capacity measurement and :mod:`models.degradation_lstm` builds the same rows offline from
lab histories. It lives with the twins (below the model code) so a shard process never
imports torch to compute it.

Time is counted in cycles (equivalent full cycles for a twin, recorded cycles for a lab
cell), but the model reads it *relative to the cycles already lived*: a step happens when the
cycle count has grown by at least ``step_fraction`` of itself since the previous step
(:func:`step_due`), and the inputs carry no absolute cycle count. So a cell living 150 cycles
and one living 2,500 look alike when their fade has the same shape, and the LSTM takes about
the same number of steps over either life (about ``1/f + ln(f L)/f`` for a life of L cycles:
180 for L = 2,500 at f = 0.03), however often capacity is measured.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = [
    "CYCLE_INPUT_NAMES",
    "DEFAULT_STEP_FRACTION",
    "SLOPE_EWMA_COLUMN",
    "SLOPE_SCALE",
    "cycle_inputs",
    "smooth_slopes",
    "step_due",
    "step_indices",
]

Float32Array = npt.NDArray[np.float32]
BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int64]

#: Columns of :func:`cycle_inputs`, in order.
CYCLE_INPUT_NAMES: tuple[str, ...] = (
    "soh_centred", "soh_change", "log_advance", "log_time_slope", "fade_so_far", "slope_ewma",
)

#: Smallest growth of the cycle count, as a fraction of it, between two LSTM steps.
DEFAULT_STEP_FRACTION = 0.03
#: Column of :func:`cycle_inputs` holding the smoothed slope, and its scale: the twin keeps
#: the column's value as state, and the model's forecast is in units of it.
SLOPE_EWMA_COLUMN = 5
#: Weight of the newest step in the smoothed slope: about the last 7 steps, i.e. the last
#: ~20 % of the cycles lived, count.
_SLOPE_EWMA_WEIGHT = 0.25

# Input scaling. SOH of interest spans about 0.6..1.1 of rated. Between steps it changes by
# ~0.01 (up to 0.05 when capacity recovers after a rest). The advance (k - k_prev) / k lies
# in [step_fraction, 1], its log in [-3.5, 0]. The fade per unit of log-time, dSOH / d ln k,
# is about 0.1 for any cell half-way through its life, long-lived or not.
_SOH_CENTRE = 0.9
_SOH_SCALE = 0.1
_CHANGE_SCALE = 0.02
_LOG_ADVANCE_SCALE = 2.0
SLOPE_SCALE = 0.1
_SLOPE_CLIP = 5.0


def step_due(cycle: npt.ArrayLike, last_step_cycle: npt.ArrayLike, step_fraction: float) -> BoolArray:
    """Whether a measurement at ``cycle`` is an LSTM step, given the previous step's cycle.

    ``last_step_cycle`` is 0 before the first step (so the first measurement always steps).
    The comparison ``cycle * (1 - f) >= last`` is the one :func:`step_indices` makes, so the
    twin and the offline path pick the same measurements.
    """
    k = np.asarray(cycle, dtype=np.float64)
    last = np.asarray(last_step_cycle, dtype=np.float64)
    return np.asarray((k > 0) & ((last <= 0) | (k * (1.0 - step_fraction) >= last)))


def step_indices(cycles: npt.ArrayLike, step_fraction: float) -> IntArray:
    """Indices of the measurements of one history that are LSTM steps (:func:`step_due`).

    Parameters
    ----------
    cycles
        Cycle count of each measurement, increasing, > 0.
    step_fraction
        As in :func:`step_due`.
    """
    k = np.asarray(cycles, dtype=np.float64)
    if k.size == 0:
        return np.zeros(0, dtype=np.int64)
    scaled = k * (1.0 - step_fraction)
    out = [0]
    while True:
        # First later measurement with k * (1 - f) >= the last step's k (scaled is sorted).
        j = int(np.searchsorted(scaled, k[out[-1]], side="left"))
        j = max(j, out[-1] + 1)
        if j >= k.size:
            return np.asarray(out, dtype=np.int64)
        out.append(j)


def _ewma_step(prev: npt.NDArray[np.float64], slope: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    out: npt.NDArray[np.float64] = (1.0 - _SLOPE_EWMA_WEIGHT) * prev + _SLOPE_EWMA_WEIGHT * slope
    return out


def smooth_slopes(x: Float32Array) -> Float32Array:
    """Fill the ``slope_ewma`` column of one history's consecutive steps (rows in order).

    The offline path builds every step's row at once with ``prev_slope_ewma`` 0, then this
    runs the recurrence the twin runs one step at a time, with the same float32 values.
    """
    out = x.copy()
    for j in range(1, len(out)):
        # Python floats are IEEE doubles: the same arithmetic as _ewma_step's.
        prev, slope = float(out[j - 1, SLOPE_EWMA_COLUMN]), float(out[j, 3])
        out[j, SLOPE_EWMA_COLUMN] = np.float32((1.0 - _SLOPE_EWMA_WEIGHT) * prev + _SLOPE_EWMA_WEIGHT * slope)
    return out


def cycle_inputs(
    soh_frac: npt.ArrayLike,
    cycle: npt.ArrayLike,
    prev_soh_frac: npt.ArrayLike,
    prev_cycle: npt.ArrayLike,
    first_soh_frac: npt.ArrayLike,
    prev_slope_ewma: npt.ArrayLike,
) -> Float32Array:
    """The model input of one step: the one feature code, offline and online.

    Parameters
    ----------
    soh_frac
        SOH of the measurement (capacity / nominal), shape (n,) or scalar.
    cycle
        Cycles lived at the measurement (> 0).
    prev_soh_frac
        SOH at the previous step; NaN before the first step (change taken as 0).
    prev_cycle
        Cycles lived at the previous step; 0 before the first step.
    first_soh_frac
        SOH at the first step (NaN before it: this is the first).
    prev_slope_ewma
        Column ``slope_ewma`` of the previous step's inputs (0 before the first step).

    Returns
    -------
    numpy.ndarray
        float32 array of shape (n, 6), columns :data:`CYCLE_INPUT_NAMES`. The last,
        ``slope_ewma``, is an exponentially weighted mean of the clipped slope column over
        the steps so far: the recent fade rate per unit of log-time, which the model's
        forecast is scaled by.
    """
    soh = np.atleast_1d(np.asarray(soh_frac, dtype=np.float64))
    prev = np.atleast_1d(np.asarray(prev_soh_frac, dtype=np.float64))
    k = np.atleast_1d(np.asarray(cycle, dtype=np.float64))
    k_prev = np.atleast_1d(np.asarray(prev_cycle, dtype=np.float64))
    first_soh = np.atleast_1d(np.asarray(first_soh_frac, dtype=np.float64))
    prev_ewma = np.atleast_1d(np.asarray(prev_slope_ewma, dtype=np.float64))
    soh, prev, k, k_prev, first_soh, prev_ewma = np.broadcast_arrays(soh, prev, k, k_prev, first_soh, prev_ewma)
    if soh.ndim != 1:
        raise ValueError(f"Expected 1-D soh_frac, cycle and the previous ones, got {soh.shape}.")
    if not bool(np.all(np.isfinite(soh))):
        raise ValueError(f"Expected finite soh_frac, got {soh.tolist()[:10]}.")
    if not bool(np.all(k > 0)) or not bool(np.all((k_prev >= 0) & (k_prev < k))):
        raise ValueError(
            f"Expected 0 <= prev_cycle < cycle, got cycle {k.tolist()[:10]} and prev_cycle "
            f"{k_prev.tolist()[:10]}."
        )
    first = ~np.isfinite(prev) | (k_prev <= 0)
    change = np.where(first, 0.0, soh - np.where(first, soh, prev))
    advance = (k - k_prev) / k
    with np.errstate(divide="ignore"):
        log_time = np.log(k / np.where(first, k, k_prev))
    slope = np.where(first, 0.0, change / np.where(first, 1.0, log_time))
    # Rounded to float32 before it is smoothed, so smooth_slopes() can redo the recurrence
    # from the returned column bit for bit.
    slope_scaled = np.clip(slope / SLOPE_SCALE, -_SLOPE_CLIP, _SLOPE_CLIP).astype(np.float32).astype(np.float64)
    ewma = np.where(first, 0.0, _ewma_step(np.nan_to_num(prev_ewma), slope_scaled))
    return np.stack(
        [
            (soh - _SOH_CENTRE) / _SOH_SCALE,
            change / _CHANGE_SCALE,
            np.log(advance) / _LOG_ADVANCE_SCALE,
            slope_scaled,
            # Fade since the first step: with the slope it tells an accelerating history
            # (little faded, fading fast now) from a decelerating one.
            np.where(np.isfinite(first_soh), first_soh - soh, 0.0) / _SOH_SCALE,
            ewma,
        ],
        axis=1,
    ).astype(np.float32)

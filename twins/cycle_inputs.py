"""The degradation model's input of one completed cycle, computed by the twin.

This is feature code both sides need: the twin shard builds it online after every trusted
capacity measurement and :mod:`models.degradation_lstm` builds the same rows offline from
lab histories. It lives with the twins (below the model code) so a shard process never
imports torch to compute it.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["CYCLE_INPUT_NAMES", "cycle_inputs"]

Float32Array = npt.NDArray[np.float32]

#: Columns of :func:`cycle_inputs`, in order.
CYCLE_INPUT_NAMES: tuple[str, ...] = ("soh_centred", "soh_change_scaled", "cycle_scaled")

# Input scaling: SOH of interest spans about 0.6..1.05, a cycle changes it by ~0.003 (0.05
# when capacity recovers after a rest), lab cells live for 100..200 cycles. The scales keep
# every input of order one.
_SOH_CENTRE = 0.85
_SOH_SCALE = 0.15
_CHANGE_SCALE = 0.02
_CYCLE_SCALE = 100.0

def cycle_inputs(
    soh_frac: npt.ArrayLike,
    cycle_index: npt.ArrayLike,
    prev_soh_frac: npt.ArrayLike,
) -> Float32Array:
    """The model input of one completed cycle: the one feature code, offline and online.

    Parameters
    ----------
    soh_frac
        SOH of the cycle just completed (capacity / nominal), shape (n,) or scalar.
    cycle_index
        How many trusted cycles the battery has completed, this one included (1-based).
    prev_soh_frac
        SOH of the previous trusted cycle; NaN for the first cycle (change taken as 0).

    Returns
    -------
    numpy.ndarray
        float32 array of shape (n, 3), columns :data:`CYCLE_INPUT_NAMES`.
    """
    soh = np.atleast_1d(np.asarray(soh_frac, dtype=np.float64))
    prev = np.atleast_1d(np.asarray(prev_soh_frac, dtype=np.float64))
    cycle = np.atleast_1d(np.asarray(cycle_index, dtype=np.float64))
    soh, prev, cycle = np.broadcast_arrays(soh, prev, cycle)
    if soh.ndim != 1:
        raise ValueError(f"Expected 1-D soh_frac, prev_soh_frac, cycle_index, got {soh.shape}.")
    if not bool(np.all(np.isfinite(soh))):
        raise ValueError(f"Expected finite soh_frac, got {soh.tolist()[:10]}.")
    if not bool(np.all(cycle >= 1)):
        raise ValueError(f"Expected cycle_index >= 1, got {cycle.tolist()[:10]}.")
    change = np.where(np.isfinite(prev), soh - prev, 0.0)
    return np.stack(
        [
            (soh - _SOH_CENTRE) / _SOH_SCALE,
            change / _CHANGE_SCALE,
            cycle / _CYCLE_SCALE,
        ],
        axis=1,
    ).astype(np.float32)

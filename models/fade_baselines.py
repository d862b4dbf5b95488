"""Three reference forecasts of remaining capacity that any learned model has to beat.

All work on the clean SOH series of a cell (capacity / nominal, one entry per trusted
cycle) and count cycles as 1-based positions in that series, the convention of
:meth:`models.cell_data.CellHistory.end_of_life_cycle`. End-of-life thresholds passed to
them are SOH of nominal (:meth:`models.cell_data.CellHistory.eol_threshold_soh`), so a
threshold relative to the initial capacity is just another number here.

* :class:`FadeCurve`, the curve-fitting baseline common in the RUL literature: fit
  ``soh = a + b k`` and ``soh = a + b exp(c k)`` to the cycles seen so far, keep the one with
  the lower RMSE on those cycles and extrapolate it.
* :class:`LastSlope`, the "current fade rate" baseline: a straight line through the last
  cycles seen, extrapolated. It knows nothing of knees, but follows a cell whose fade has
  changed pace better than a curve fitted to the whole history.
* :class:`MeanLifetime`, the "no information" baseline: every cell lives as long as the
  average training cell. Its trajectory is a straight ramp from the last seen SOH to the
  end-of-life threshold at that cycle, continued at the same slope; the ramp is a choice made
  only so that the baseline also has a capacity RMSE, it carries no information of its own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from models.cell_data import CellHistory, EolBasis

__all__ = ["FadeCurve", "LastSlope", "MeanLifetime", "first_cycle_at_or_below"]

FloatArray = npt.NDArray[np.float64]

# Rate constants tried for the exponential, as c * n_seen (scale-free in the number of
# cycles seen): from nearly linear (|c n| = 0.01) to a knee within the seen window (30).
_EXP_RATE_GRID = np.geomspace(0.01, 30.0, 60)
_REFINE_STEPS = 40
# LastSlope's window: the last max(_LAST_SLOPE_MIN, round(_LAST_SLOPE_SHARE * n_seen)) cycles.
_LAST_SLOPE_MIN = 5
_LAST_SLOPE_SHARE = 0.2


def first_cycle_at_or_below(
    soh_frac: npt.ArrayLike, threshold_frac: float, first_cycle: int
) -> int | None:
    """The first cycle of a trajectory at or below a threshold.

    Parameters
    ----------
    soh_frac
        SOH of consecutive cycles, the first of them being cycle ``first_cycle``.
    threshold_frac
        End-of-life threshold as a fraction of nominal capacity.
    first_cycle
        Cycle number (1-based position) of ``soh_frac[0]``.

    Returns
    -------
    int or None
        Cycle number of the first entry ``<= threshold_frac``, None if there is none.
    """
    below = np.flatnonzero(np.asarray(soh_frac, dtype=np.float64) <= threshold_frac)
    return first_cycle + int(below[0]) if len(below) else None


def _seen_series(soh_seen: npt.ArrayLike, minimum: int) -> FloatArray:
    soh = np.asarray(soh_seen, dtype=np.float64).ravel()
    if len(soh) < minimum or not bool(np.all(np.isfinite(soh))):
        raise ValueError(
            f"Expected at least {minimum} finite SOH values of seen cycles, got {soh.tolist()}."
        )
    return soh


def _linear_fit(k: FloatArray, soh: FloatArray) -> tuple[float, float, float]:
    slope, intercept = np.polyfit(k, soh, 1)
    rmse = float(np.sqrt(np.mean((intercept + slope * k - soh) ** 2)))
    return float(intercept), float(slope), rmse


def _exp_fit_given_rate(k: FloatArray, soh: FloatArray, c: float) -> tuple[float, float, float]:
    # With c fixed the model is linear in (a, b): solve it exactly. exp is taken relative to
    # the last seen cycle so that large c k cannot overflow.
    k_ref = float(k[-1])
    basis = np.exp(c * (k - k_ref))
    design = np.column_stack([np.ones_like(k), basis])
    (a, b_ref), *_ = np.linalg.lstsq(design, soh, rcond=None)
    rmse = float(np.sqrt(np.mean((design @ np.array([a, b_ref]) - soh) ** 2)))
    return float(a), float(b_ref) * math.exp(-c * k_ref), rmse


@dataclass(frozen=True)
class FadeCurve:
    """A fitted fade curve ``soh(k) = a + b k`` or ``a + b exp(c k)``, k the cycle number.

    Parameters
    ----------
    kind
        ``"linear"`` or ``"exponential"``.
    a, b, c
        Curve parameters (``c`` is 0 for the linear curve).
    rmse_seen_frac
        RMSE of the curve on the cycles it was fitted to, as a fraction of nominal.
    n_seen
        Number of cycles it was fitted to (cycles 1..n_seen).
    """

    kind: Literal["linear", "exponential"]
    a: float
    b: float
    c: float
    rmse_seen_frac: float
    n_seen: int

    @classmethod
    def fit(cls, soh_seen: npt.ArrayLike) -> FadeCurve:
        """Fit both curves to the seen cycles and keep the one with the lower RMSE.

        Parameters
        ----------
        soh_seen
            SOH (fraction of nominal) of cycles 1..n, n >= 2; the exponential needs n >= 3
            and is only tried then.

        Returns
        -------
        FadeCurve
            The better-fitting curve.
        """
        soh = _seen_series(soh_seen, 2)
        n = len(soh)
        k = np.arange(1, n + 1, dtype=np.float64)
        a, b, rmse = _linear_fit(k, soh)
        best = cls("linear", a, b, 0.0, rmse, n)
        if n < 3:
            return best
        # Coarse grid over the rate (both signs: accelerating and saturating fade), then a
        # finer grid around the best; deterministic and free of optimiser start points.
        rates = np.concatenate([-_EXP_RATE_GRID[::-1], _EXP_RATE_GRID]) / n
        fits = [(_exp_fit_given_rate(k, soh, float(c)), float(c)) for c in rates]
        (ea, eb, ermse), ec = min(fits, key=lambda f: f[0][2])
        i = int(np.flatnonzero(rates == ec)[0])
        lo, hi = rates[max(i - 1, 0)], rates[min(i + 1, len(rates) - 1)]
        for c in np.linspace(lo, hi, _REFINE_STEPS):
            fa, fb, frmse = _exp_fit_given_rate(k, soh, float(c))
            if frmse < ermse:
                ea, eb, ermse, ec = fa, fb, frmse, float(c)
        if ermse < best.rmse_seen_frac:
            best = cls("exponential", ea, eb, ec, ermse, n)
        return best

    def soh_at(self, cycle: npt.ArrayLike) -> FloatArray:
        """SOH the curve gives at the given cycle numbers."""
        k = np.asarray(cycle, dtype=np.float64)
        if self.kind == "linear":
            return self.a + self.b * k
        # Clip the exponent: far extrapolation of a fast exponential would overflow, and
        # anything past exp(50) is off the chart anyway.
        return self.a + self.b * np.exp(np.clip(self.c * k, -50.0, 50.0))

    def forecast(self, horizon_cycles: int) -> FloatArray:
        """SOH of cycles ``n_seen + 1 .. n_seen + horizon_cycles``, floored at zero.

        The floor only matters for an accelerating exponential extrapolated far: a capacity
        below zero is no forecast, and would swamp any error measure.
        """
        if horizon_cycles < 1:
            raise ValueError(f"Expected horizon_cycles >= 1, got {horizon_cycles}.")
        k = np.arange(self.n_seen + 1, self.n_seen + horizon_cycles + 1)
        return np.maximum(self.soh_at(k), 0.0)

    def end_of_life_cycle(self, fraction: float, horizon_cycles: int) -> int | None:
        """First cycle after the seen ones at or below ``fraction``, None within the horizon."""
        return first_cycle_at_or_below(
            self.forecast(horizon_cycles), fraction, first_cycle=self.n_seen + 1
        )


@dataclass(frozen=True)
class LastSlope:
    """A straight line through the last seen cycles, ``soh(k) = a + b k``, k the cycle number.

    The window is the last ``max(5, round(0.2 * n_seen))`` cycles (all of them if fewer were
    seen). A fifth of the history scales with the cell: on a 1,000-cycle LFP cell it averages
    the slope over ~200 cycles, so cycle-to-cycle noise (about 0.2 % of nominal) moves it
    little, while it still only sees the *current* pace of fade, not the early life. At least
    5 cycles, because over fewer the noise alone can flip the sign of the slope.

    Parameters
    ----------
    a, b
        Intercept and slope (SOH per cycle) of the line.
    n_seen
        Number of seen cycles (cycles 1..n_seen).
    n_fit
        Number of last cycles the line was fitted to.
    """

    a: float
    b: float
    n_seen: int
    n_fit: int

    @staticmethod
    def window(n_seen: int) -> int:
        """How many of the last ``n_seen`` cycles the line is fitted to."""
        return min(n_seen, max(_LAST_SLOPE_MIN, round(_LAST_SLOPE_SHARE * n_seen)))

    @classmethod
    def fit(cls, soh_seen: npt.ArrayLike) -> LastSlope:
        """Least-squares line through the last :meth:`window` seen cycles.

        Parameters
        ----------
        soh_seen
            SOH (fraction of nominal) of cycles 1..n, n >= 2.
        """
        soh = _seen_series(soh_seen, 2)
        n = len(soh)
        m = cls.window(n)
        k = np.arange(n - m + 1, n + 1, dtype=np.float64)
        a, b, _ = _linear_fit(k, soh[-m:])
        return cls(a, b, n, m)

    def forecast(self, horizon_cycles: int) -> FloatArray:
        """SOH of cycles ``n_seen + 1 .. n_seen + horizon_cycles``, floored at zero."""
        if horizon_cycles < 1:
            raise ValueError(f"Expected horizon_cycles >= 1, got {horizon_cycles}.")
        k = np.arange(self.n_seen + 1, self.n_seen + horizon_cycles + 1, dtype=np.float64)
        return np.maximum(self.a + self.b * k, 0.0)

    def end_of_life_cycle(self, fraction: float, horizon_cycles: int) -> int | None:
        """First cycle after the seen ones at or below ``fraction``, None within the horizon."""
        return first_cycle_at_or_below(
            self.forecast(horizon_cycles), fraction, first_cycle=self.n_seen + 1
        )


@dataclass(frozen=True)
class MeanLifetime:
    """Every cell reaches end of life at the mean end-of-life cycle of the training cells.

    Parameters
    ----------
    mean_eol_cycle
        Mean end-of-life cycle (1-based clean-cycle position) of the training cells.
    eol_fraction
        End of life as a fraction of the ``eol_basis`` capacity.
    n_cells
        How many training cells reached end of life (the others do not enter the mean).
    eol_basis
        ``"nominal"`` or ``"initial"``; with ``"initial"`` each training cell's end of life
        is taken at its own threshold (:meth:`models.cell_data.CellHistory.eol_threshold_soh`).
    """

    mean_eol_cycle: float
    eol_fraction: float
    n_cells: int
    eol_basis: EolBasis = "nominal"

    @classmethod
    def fit(
        cls,
        histories: Sequence[CellHistory],
        eol_fraction: float = 0.7,
        eol_basis: EolBasis = "nominal",
    ) -> MeanLifetime:
        """Average the end-of-life cycle over the training cells that reach it.

        Raises
        ------
        ValueError
            If none of the cells reaches ``eol_fraction`` of its basis capacity.
        """
        eols = [
            e for h in histories if (e := h.end_of_life_cycle(eol_fraction, eol_basis)) is not None
        ]
        if not eols:
            raise ValueError(
                f"Expected at least one training cell reaching {eol_fraction:.0%} of "
                f"{eol_basis} capacity, got none among {[h.cell_id for h in histories]}."
            )
        return cls(float(np.mean(eols)), eol_fraction, len(eols), eol_basis)

    def end_of_life_cycle(self, n_seen: int) -> float:
        """Predicted end of life of a cell seen for ``n_seen`` cycles without reaching it.

        The cell has already survived ``n_seen`` cycles, so the prediction is never earlier
        than the next one.
        """
        return max(self.mean_eol_cycle, float(n_seen + 1))

    def forecast(
        self, soh_seen: npt.ArrayLike, horizon_cycles: int, threshold_frac: float | None = None
    ) -> FloatArray:
        """SOH of the next ``horizon_cycles`` cycles: a ramp to the threshold at the mean EOL,
        continued at the same slope and floored at zero.

        Parameters
        ----------
        soh_seen
            SOH of the seen cycles 1..n (only the last value and n are used).
        horizon_cycles
            Number of future cycles to return.
        threshold_frac
            The forecast cell's end-of-life threshold as SOH of nominal; None means
            ``eol_fraction``, which is that threshold only for basis ``"nominal"``.
        """
        soh = _seen_series(soh_seen, 1)
        if horizon_cycles < 1:
            raise ValueError(f"Expected horizon_cycles >= 1, got {horizon_cycles}.")
        if threshold_frac is None:
            if self.eol_basis != "nominal":
                raise ValueError(
                    "Expected threshold_frac (the cell's threshold as SOH of nominal) for "
                    f"eol_basis {self.eol_basis!r}, got None."
                )
            threshold_frac = self.eol_fraction
        n = len(soh)
        steps = self.end_of_life_cycle(n) - n
        # Already at or below the threshold: nothing to ramp down to, hold the level.
        slope = max(float(soh[-1]) - threshold_frac, 0.0) / steps
        ramp = float(soh[-1]) - slope * np.arange(1, horizon_cycles + 1, dtype=np.float64)
        # As for the fade curve: no capacity below zero, however steep the ramp.
        return np.maximum(ramp, 0.0)

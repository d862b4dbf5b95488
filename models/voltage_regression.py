"""Expected pack voltage from current, state of charge and temperature; residual z-scores.

A pack's terminal voltage is, to first order, its open-circuit voltage (a nonlinear function
of SOC) minus the current times its internal resistance (which rises in the cold)::

    V ≈ f(SOC) - I * (r0 + r1 * T + r2 * SOC) + c * T

:class:`VoltageRegression` fits that shape fleet-wide by least squares: ``f`` is linear in a
piecewise-linear (hinge) basis of SOC with knots where the NMC curve bends, and the current
enters alone and times temperature and SOC.

**Old packs are not anomalies.** The fleet fit carries the *average* resistance, so an aged
pack (twice the resistance of a new one) leaves a residual of ``-I * dR`` that is large but
steady. Each battery therefore gets its own baseline, a line ``a + b * I`` through the
residuals of the oldest part of its window: its own offset ``a`` and its own extra
resistance ``-b``. Two statistics are scored:

* the **step**: the mean residual of the last ``recent_samples`` samples *after* that
  baseline. A sudden sag, a voltage offset or a dropping cell moves it; a merely old pack
  does not;
* the **offset**: the intercept ``a`` (the residual at zero current) against the fleet.
  Ageing changes the slope, not the intercept; a sensor offset, or a voltage inconsistent
  with the reported SOC, moves the intercept even when it started before the window.

The slope is a Bayesian estimate: its prior is the fleet's spread of per-battery slopes, so
a window with little current variation (a parked scooter) keeps the prior instead of
inventing a resistance, and its *uncertainty* is carried into the step's standard error.
A scooter that was parked for the reference part and rides in the recent part therefore
gets a wide error bar (its resistance is unknown), not a false alarm.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from twins.telemetry_windows import TelemetryWindows

__all__ = ["VoltageRegression", "VoltageRegressionParams", "VoltageResidualScores"]

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

# 1.4826 * MAD estimates the standard deviation of normal data.
_MAD_TO_STD = 1.4826
_FIT_FIELDS = ("pack_voltage_v", "current_a", "temp_c", "soc_pct")


@dataclass(frozen=True)
class VoltageRegressionParams:
    """Shape of the fleet fit, of the per-battery baseline, and the flag threshold.

    Parameters
    ----------
    soc_knots_pct
        Knots of the hinge basis ``max(0, SOC - knot)``, increasing, inside (0, 100).
    recent_samples
        The last this-many samples of a window are scored.
    reference_fraction
        The baseline is fitted on the oldest this fraction of the window (see
        :meth:`~twins.telemetry_windows.TelemetryWindows.reference`). The default, 24 of
        64 samples, keeps a fault that began up to 40 samples ago out of the reference.
    min_reference_samples
        Fewer baseline samples than this: the window is not evaluable (score 0).
    well_determined_sxx_a2
        Training windows whose reference current varies by at least this much (summed
        squared deviation, A²) pin down their own slope; the fleet's spread of those
        slopes becomes the slope prior.
    min_scale_v
        Floor of the per-sample residual noise learnt in :meth:`VoltageRegression.fit`
        (the wire's 0.01 V rounding), so clean training data cannot make z arbitrarily sharp.
    min_slope_std_ohm
        Floor of the learnt prior spread of per-battery slopes.
    z_threshold
        A battery is flagged when ``|step z|`` or ``|offset z|`` exceeds this.
    """

    soc_knots_pct: tuple[float, ...] = (
        5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 95.0,
    )  # fmt: skip
    recent_samples: int = 8
    reference_fraction: float = 0.375
    min_reference_samples: int = 16
    well_determined_sxx_a2: float = 200.0
    min_scale_v: float = 0.02
    min_slope_std_ohm: float = 0.005
    z_threshold: float = 8.0

    def __post_init__(self) -> None:
        knots = np.asarray(self.soc_knots_pct, dtype=np.float64)
        if knots.size and not (
            bool(np.all(np.diff(knots) > 0)) and knots[0] > 0.0 and knots[-1] < 100.0
        ):
            raise ValueError(
                f"Expected increasing soc_knots_pct inside (0, 100), got {self.soc_knots_pct}."
            )
        if self.recent_samples < 1 or self.min_reference_samples < 3:
            raise ValueError(
                f"Expected recent_samples >= 1 and min_reference_samples >= 3, got "
                f"{self.recent_samples} and {self.min_reference_samples}."
            )
        if not 0 < self.reference_fraction <= 1:
            raise ValueError(
                f"Expected reference_fraction in (0, 1], got {self.reference_fraction}."
            )
        for name in ("well_determined_sxx_a2", "min_scale_v", "min_slope_std_ohm", "z_threshold"):
            if not getattr(self, name) > 0:
                raise ValueError(f"Expected {name} > 0, got {getattr(self, name)}.")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VoltageRegressionParams:
        """Inverse of :meth:`to_dict`."""
        values = dict(data)
        if "soc_knots_pct" in values:
            values["soc_knots_pct"] = tuple(float(x) for x in values["soc_knots_pct"])
        return cls(**values)


@dataclass(frozen=True, eq=False)
class VoltageResidualScores:
    """Per-battery output of :meth:`VoltageRegression.score` (arrays of length n).

    Attributes
    ----------
    latest_z
        Newest sample's residual after the battery's baseline, in per-sample noise units.
    step_z
        Recent mean residual after the baseline, as a z against training windows
        (signed: negative is a voltage below what the battery's own history predicts).
    offset_z
        Baseline intercept as a z against the fleet (signed).
    step_v, offset_v
        The two statistics in volts.
    score
        ``max(|step_z|, |offset_z|)``; 0 where not evaluable.
    flag
        ``score > z_threshold``.
    evaluable
        Enough samples for a baseline and a recent part.
    """

    latest_z: FloatArray
    step_z: FloatArray
    offset_z: FloatArray
    step_v: FloatArray
    offset_v: FloatArray
    score: FloatArray
    flag: BoolArray
    evaluable: BoolArray


@dataclass(frozen=True)
class _Baseline:
    """Each window's residuals after its own line, and the two statistics standardised."""

    residual_v: FloatArray  # (n, W)
    step_v: FloatArray  # (n,)
    step_u: FloatArray  # step_v / its standard error
    intercept_v: FloatArray  # (n,)
    intercept_se_v: FloatArray  # (n,) standard error of the intercept
    evaluable: BoolArray  # (n,)


@dataclass(frozen=True)
class _RefStats:
    """Sufficient statistics of each window's reference residuals against current."""

    residual_v: FloatArray  # (n, W) fleet-model residuals
    current_a: FloatArray  # (n, W)
    recent: BoolArray  # (n, W)
    n_ref: FloatArray
    i_mean: FloatArray
    r_mean: FloatArray
    sxx: FloatArray
    sxy: FloatArray
    evaluable: BoolArray


class VoltageRegression:
    """Fleet-wide least-squares voltage model with per-battery residual baselines.

    Parameters
    ----------
    params
        Basis, baseline and threshold knobs.

    Examples
    --------
    >>> model = VoltageRegression().fit(training_windows)    # doctest: +SKIP
    >>> model.score(live_windows).step_z                      # doctest: +SKIP
    """

    def __init__(self, params: VoltageRegressionParams | None = None) -> None:
        self.params = params or VoltageRegressionParams()
        self.coef_: FloatArray | None = None
        self.temp_range_c = (-math.inf, math.inf)
        self.noise_v = 0.0
        self.slope_center_ohm = 0.0
        self.slope_std_ohm = 0.0
        self.intercept_std_v = 0.0
        self.step_center = 0.0
        self.step_scale = 1.0
        self.offset_center = 0.0
        self.offset_scale = 1.0

    # ------------------------------------------------------------------ fleet model
    def _design(self, soc_pct: FloatArray, current_a: FloatArray, temp_c: FloatArray) -> FloatArray:
        """Basis functions, stacked on a new last axis."""
        s = soc_pct / 100.0
        cols = [np.ones_like(s), s]
        cols += [np.maximum(s - k / 100.0, 0.0) for k in self.params.soc_knots_pct]
        # Clipped to the temperatures seen in training: the fit has no business
        # extrapolating, and a pack heating up abnormally is the temperature detector's
        # finding, not a voltage anomaly. Centred at 20 C so the current's own coefficient
        # is the resistance of a pack at room temperature.
        lo, hi = self.temp_range_c
        dt_c = (np.clip(temp_c, lo, hi) - 20.0) / 10.0
        cols += [current_a, current_a * dt_c, current_a * s, dt_c]
        return np.stack(cols, axis=-1)

    def _fitted(self) -> FloatArray:
        if self.coef_ is None:
            raise RuntimeError("VoltageRegression is not fitted: call fit() or from_dict() first.")
        return self.coef_

    def expected_voltage_v(self, windows: TelemetryWindows) -> FloatArray:
        """``(n, W)`` fleet-model voltage of every sample (NaN where there is none)."""
        coef = self._fitted()
        x = self._design(
            windows.column("soc_pct"), windows.column("current_a"), windows.column("temp_c")
        )
        out: FloatArray = x @ coef
        return out

    # ------------------------------------------------------------------ fit
    def fit(self, windows: TelemetryWindows) -> VoltageRegression:
        """Fit on normal windows: the fleet model on every valid sample, then the noise,
        the prior spread of per-battery slopes, and the scales of both statistics.
        """
        p = self.params
        cols = {name: windows.column(name) for name in _FIT_FIELDS}
        mask = windows.valid & np.all([np.isfinite(c) for c in cols.values()], axis=0)
        n_basis = 6 + len(p.soc_knots_pct)
        if int(mask.sum()) < 4 * n_basis:
            raise ValueError(
                f"Expected at least {4 * n_basis} valid samples to fit {n_basis} "
                f"coefficients, got {int(mask.sum())}."
            )
        temp_c = cols["temp_c"][mask]
        self.temp_range_c = (float(temp_c.min()), float(temp_c.max()))
        x = self._design(cols["soc_pct"][mask], cols["current_a"][mask], temp_c)
        self.coef_, *_ = np.linalg.lstsq(x, cols["pack_voltage_v"][mask], rcond=None)

        ref = self._ref_stats(windows)
        ok = ref.evaluable
        good = ok & (ref.sxx >= p.well_determined_sxx_a2)
        if int(good.sum()) < 10:
            raise ValueError(
                f"Expected >= 10 training windows whose reference current varies by >= "
                f"{p.well_determined_sxx_a2} A² (riding), got {int(good.sum())}."
            )
        # Noise and slope prior from windows that pin their own line down (plain OLS).
        ols = ref.sxy[good] / ref.sxx[good]
        line = ref.r_mean[good, None] + ols[:, None] * (
            ref.current_a[good] - ref.i_mean[good, None]
        )
        ref_mask = windows.reference(p.reference_fraction, p.recent_samples)[good]
        noise = (ref.residual_v[good] - line)[ref_mask & np.isfinite(line)]
        self.noise_v = max(_robust_scale(noise), p.min_scale_v)
        self.slope_center_ohm = float(np.median(ols))
        self.slope_std_ohm = max(_robust_scale(ols), p.min_slope_std_ohm)
        intercepts = ref.r_mean[good] - ols * ref.i_mean[good]
        self.intercept_std_v = max(_robust_scale(intercepts), p.min_scale_v)

        base = self._baseline(ref)
        step_u = base.step_u[ok]
        self.step_center = float(np.median(step_u))
        # The step is already in units of its own standard error; the floor of 1 keeps the
        # calibration from sharpening it further on very clean data.
        self.step_scale = max(_robust_scale(step_u), 1.0)
        offset_u = base.intercept_v[ok] / base.intercept_se_v[ok]
        self.offset_center = float(np.median(offset_u))
        self.offset_scale = max(_robust_scale(offset_u), 1.0)
        return self

    # ------------------------------------------------------------------ baseline
    def _ref_stats(self, windows: TelemetryWindows) -> _RefStats:
        p = self.params
        coef = self._fitted()
        current = windows.column("current_a")
        temp_c = windows.column("temp_c")
        ref = windows.reference(p.reference_fraction, p.recent_samples) & np.isfinite(temp_c)
        # Within a window the temperature is held at the baseline's mean. The I x T term is
        # learnt across packs and seasons; inside a few minutes a normal pack barely warms,
        # and one that heats abnormally is the temperature detector's finding; letting it
        # move the expected voltage would report it again as a voltage step.
        temp_ref = np.where(ref, temp_c, 0.0).sum(axis=1) / np.maximum(ref.sum(axis=1), 1)
        x = self._design(
            windows.column("soc_pct"), current, np.broadcast_to(temp_ref[:, None], temp_c.shape)
        )
        residual = windows.column("pack_voltage_v") - x @ coef
        finite = np.isfinite(residual) & np.isfinite(current)
        recent = windows.recent(p.recent_samples) & finite
        ref &= finite
        n_ref = ref.sum(axis=1).astype(np.float64)
        n_safe = np.maximum(n_ref, 1.0)
        r0 = np.where(ref, residual, 0.0)
        i0 = np.where(ref, current, 0.0)
        i_mean = i0.sum(axis=1) / n_safe
        r_mean = r0.sum(axis=1) / n_safe
        di = np.where(ref, current - i_mean[:, None], 0.0)
        dr = np.where(ref, residual - r_mean[:, None], 0.0)
        return _RefStats(
            residual_v=residual,
            current_a=current,
            recent=recent,
            n_ref=n_ref,
            i_mean=i_mean,
            r_mean=r_mean,
            sxx=(di * di).sum(axis=1),
            sxy=(di * dr).sum(axis=1),
            evaluable=(n_ref >= p.min_reference_samples) & recent.any(axis=1),
        )

    def _baseline(self, ref: _RefStats) -> _Baseline:
        noise2 = self.noise_v**2
        # Conjugate normal update of the slope: prior N(center, std²), noise variance
        # noise², so the prior weighs like ``noise² / std²`` A² of reference current spread.
        prior_a2 = noise2 / self.slope_std_ohm**2
        slope = (ref.sxy + prior_a2 * self.slope_center_ohm) / (ref.sxx + prior_a2)
        slope_var = noise2 / (ref.sxx + prior_a2)
        intercept = ref.r_mean - slope * ref.i_mean
        corrected = ref.residual_v - intercept[:, None] - slope[:, None] * ref.current_a
        k = np.maximum(ref.recent.sum(axis=1), 1)
        step_v = np.where(ref.recent, corrected, 0.0).sum(axis=1) / k
        i_recent = np.where(ref.recent, ref.current_a, 0.0).sum(axis=1) / k
        n_ref = np.maximum(ref.n_ref, 1.0)
        step_var = noise2 / k + noise2 / n_ref + (i_recent - ref.i_mean) ** 2 * slope_var
        intercept_se = np.sqrt(noise2 / n_ref + ref.i_mean**2 * slope_var + self.intercept_std_v**2)
        return _Baseline(
            residual_v=corrected,
            step_v=step_v,
            step_u=step_v / np.sqrt(step_var),
            intercept_v=intercept,
            intercept_se_v=intercept_se,
            evaluable=ref.evaluable,
        )

    # ------------------------------------------------------------------ score
    def score(self, windows: TelemetryWindows) -> VoltageResidualScores:
        """Residual z-scores of every battery, against its own baseline and the fleet."""
        self._fitted()
        base = self._baseline(self._ref_stats(windows))
        ok = base.evaluable
        step_z = np.where(ok, (base.step_u - self.step_center) / self.step_scale, 0.0)
        offset_u = base.intercept_v / base.intercept_se_v
        offset_z = np.where(ok, (offset_u - self.offset_center) / self.offset_scale, 0.0)
        last = base.residual_v[:, -1] if windows.window_samples else np.zeros(windows.n)
        latest_z = np.where(ok & np.isfinite(last), last / self.noise_v, 0.0)
        score = np.maximum(np.abs(step_z), np.abs(offset_z))
        return VoltageResidualScores(
            latest_z=latest_z,
            step_z=step_z,
            offset_z=offset_z,
            step_v=np.where(ok, base.step_v, 0.0),
            offset_v=np.where(ok, base.intercept_v, 0.0),
            score=score,
            flag=score > self.params.z_threshold,
            evaluable=ok,
        )

    # ------------------------------------------------------------------ persistence
    _STATE = (
        "noise_v",
        "slope_center_ohm",
        "slope_std_ohm",
        "intercept_std_v",
        "step_center",
        "step_scale",
        "offset_center",
        "offset_scale",
    )

    def to_dict(self) -> dict[str, Any]:
        """Parameters, coefficients and learnt scales, JSON-ready."""
        out: dict[str, Any] = {
            "params": self.params.to_dict(),
            "coef": self._fitted().tolist(),
            "temp_range_c": list(self.temp_range_c),
        }
        out.update({name: getattr(self, name) for name in self._STATE})
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VoltageRegression:
        """A fitted model from :meth:`to_dict` output."""
        model = cls(VoltageRegressionParams.from_dict(data["params"]))
        coef = np.asarray(data["coef"], dtype=np.float64)
        n_basis = 6 + len(model.params.soc_knots_pct)
        if coef.shape != (n_basis,):
            raise ValueError(
                f"Expected {n_basis} coefficients for the configured knots, got {coef.shape}."
            )
        model.coef_ = coef
        lo, hi = (float(x) for x in data["temp_range_c"])
        model.temp_range_c = (lo, hi)
        for name in cls._STATE:
            setattr(model, name, float(data[name]))
        return model


def _robust_scale(x: FloatArray) -> float:
    """1.4826 * MAD: a standard deviation that a few outliers cannot inflate."""
    x = x[np.isfinite(x)]
    if x.size == 0:
        return 0.0
    return float(_MAD_TO_STD * np.median(np.abs(x - np.median(x))))

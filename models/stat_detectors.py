"""Statistical detectors over telemetry windows: temperature rise, voltage sag, cell imbalance.

Each detector reduces a window to one physical statistic per battery, positive in the
anomalous direction, and scores it as a robust z (median and MAD) against the same
statistic over normal training windows:

``TEMP_RISE``
    Temperature rise rate beyond what the current explains (°C/min). Joule heating goes with
    I², so the expected rate ``kappa * I²`` (``kappa`` fitted fleet-wide) is subtracted from
    every interval's rate; the excess is smoothed by a time-based EWMA, so the score reads
    the last minute or so without the 0.1 °C rounding of single intervals. An internal
    short heats the pack at rest too, and there is nothing normal about it: this statistic
    is compared with the fleet, not with the battery's own past.
``VOLTAGE_SAG``
    Sudden increase of the sag per ampere. Every pair of consecutive samples with a current
    step of at least ``sag_min_current_step_a`` gives ``R = -dV/dI`` (the open-circuit
    voltage barely moves in seconds). The statistic is the median ``R`` of the recent
    steps minus the median of the older ones, so an old pack (high but steady ``R``) scores
    0 and a voltage sensor offset (which cancels in ``dV``) does not register at all.
    Medians rather than an EWMA here: the one interval that straddles a voltage glitch gives
    a wild ``R``, which a median of a handful of steps ignores and an average does not.
``CELL_IMBALANCE``
    Growth of the spread ``cell_max_v - cell_min_v``. The spread widens under load (the
    weak group also has the highest resistance), so each battery's spread is first
    corrected by its own spread-per-ampere, fitted on the older part of the window; the
    statistic is the EWMA of the corrected spread at the newest sample minus its median
    over the older part. The spread-per-ampere is a Bayesian estimate with the fleet's
    spread of slopes as prior, and its uncertainty widens the z's denominator: a scooter
    parked through the reference part and ridden in the recent part has an unknown
    slope, and its load-widened spread is not taken for a growing imbalance.

The z of the self-referenced statistics (sag, imbalance) divides by the larger of the fleet
scale and the battery's own MAD (plus, for imbalance, the slope's uncertainty), so a battery
with noisy history needs a larger change.
A window too short, or (sag) without enough current steps, is not evaluable: score 0.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from twins.telemetry_windows import TelemetryWindows

__all__ = ["DetectorScores", "StatDetectorParams", "StatDetectors", "StatScores"]

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

_MAD_TO_STD = 1.4826


@dataclass(frozen=True)
class StatDetectorParams:
    """Windows, smoothing and thresholds of the three statistical detectors.

    Parameters
    ----------
    recent_samples
        Size of the scored recent part (temperature, imbalance).
    reference_fraction
        The oldest this fraction of a window is the battery's reference (see
        :meth:`~twins.telemetry_windows.TelemetryWindows.reference`). The default, 24 of
        64 samples, keeps a fault that began up to 40 samples ago out of the reference.
    min_reference_samples
        Fewer reference samples: not evaluable.
    temp_ewma_time_constant_s
        Time constant of the EWMA over the excess temperature rate.
    min_temp_scale_c_per_min
        Floor of the learnt temperature-rate scale (the 0.1 °C rounding over a minute).
    sag_recent_samples
        Size of the recent part for the sag detector; larger than ``recent_samples``
        because only intervals with a current step count.
    sag_min_current_step_a, sag_max_step_dt_s
        An interval gives a resistance sample if the current moves by at least this much
        within at most this long.
    sag_min_steps
        Fewer resistance samples in the recent or the reference part: not evaluable.
    min_sag_scale_ohm
        Floor of the sag scale.
    imbalance_ewma_alpha
        Per-sample EWMA weight of the newest corrected spread.
    imbalance_well_determined_sxx_a2
        Training windows whose reference current varies by at least this much (summed
        squared deviation, A²) pin their own spread-per-ampere down; the fleet's spread
        of those slopes is the prior of every battery's slope.
    min_imbalance_scale_v
        Floor of the imbalance scale (the wire rounds cell voltages to 1 mV).
    temp_z_threshold, sag_z_threshold, imbalance_z_threshold
        Flag when the z-score exceeds these (one-sided: only rises, more sag, more spread).
    """

    recent_samples: int = 8
    reference_fraction: float = 0.375
    min_reference_samples: int = 16
    temp_ewma_time_constant_s: float = 60.0
    min_temp_scale_c_per_min: float = 0.05
    sag_recent_samples: int = 12
    sag_min_current_step_a: float = 2.0
    sag_max_step_dt_s: float = 15.0
    sag_min_steps: int = 2
    min_sag_scale_ohm: float = 0.003
    imbalance_ewma_alpha: float = 0.3
    imbalance_well_determined_sxx_a2: float = 200.0
    min_imbalance_scale_v: float = 0.005
    temp_z_threshold: float = 8.0
    sag_z_threshold: float = 8.0
    imbalance_z_threshold: float = 8.0

    def __post_init__(self) -> None:
        for name in ("recent_samples", "sag_recent_samples", "sag_min_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"Expected {name} >= 1, got {getattr(self, name)}.")
        if self.min_reference_samples < 2:
            raise ValueError(
                f"Expected min_reference_samples >= 2, got {self.min_reference_samples}."
            )
        for name in (
            "temp_ewma_time_constant_s",
            "min_temp_scale_c_per_min",
            "sag_min_current_step_a",
            "sag_max_step_dt_s",
            "min_sag_scale_ohm",
            "imbalance_well_determined_sxx_a2",
            "min_imbalance_scale_v",
            "temp_z_threshold",
            "sag_z_threshold",
            "imbalance_z_threshold",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"Expected {name} > 0, got {getattr(self, name)}.")
        if not 0 < self.reference_fraction <= 1:
            raise ValueError(
                f"Expected reference_fraction in (0, 1], got {self.reference_fraction}."
            )
        if not 0 < self.imbalance_ewma_alpha <= 1:
            raise ValueError(
                f"Expected imbalance_ewma_alpha in (0, 1], got {self.imbalance_ewma_alpha}."
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StatDetectorParams:
        """Inverse of :meth:`to_dict`."""
        return cls(**data)


@dataclass(frozen=True, eq=False)
class DetectorScores:
    """One detector's verdict on n batteries (arrays of length n).

    Attributes
    ----------
    score
        Robust z-score, positive in the anomalous direction; 0 where not evaluable.
    flag
        ``score`` above the detector's threshold.
    level
        The recent value of the statistic in physical units (°C/min of excess rise, Ω of
        sag per ampere, V of load-corrected cell spread); NaN where not evaluable.
    baseline
        What ``level`` is compared with: the fleet median (temperature) or the battery's
        own reference median (sag, imbalance); NaN where not evaluable.
    evaluable
        Enough data to score.
    """

    score: FloatArray
    flag: BoolArray
    level: FloatArray
    baseline: FloatArray
    evaluable: BoolArray


@dataclass(frozen=True, eq=False)
class StatScores:
    """The three statistical detectors' verdicts."""

    temp_rise: DetectorScores
    voltage_sag: DetectorScores
    cell_imbalance: DetectorScores


@dataclass(frozen=True)
class _Raw:
    """Statistic, own scale and comparison level of one detector, before calibration."""

    stat: FloatArray  # (n,) level - baseline, anomalous direction positive
    own_scale: FloatArray  # (n,) the battery's own spread (0 if not used)
    extra_var: FloatArray  # (n,) variance the statistic owes to estimated corrections
    level: FloatArray
    baseline: FloatArray
    evaluable: BoolArray


class StatDetectors:
    """Temperature-rise, voltage-sag and cell-imbalance detectors, calibrated together.

    Parameters
    ----------
    params
        Windows, smoothing and thresholds.
    """

    _NAMES = ("temp_rise", "voltage_sag", "cell_imbalance")

    def __init__(self, params: StatDetectorParams | None = None) -> None:
        self.params = params or StatDetectorParams()
        self.heating_c_per_min_per_a2 = 0.0
        # Prior of each battery's cell spread per ampere (V/A) and the spread's noise (V).
        self.spread_slope_center_v_per_a = 0.0
        self.spread_slope_std_v_per_a = 1.0
        self.spread_noise_v = 1.0
        self.centers: dict[str, float] = {}
        self.scales: dict[str, float] = {}

    # ------------------------------------------------------------------ fit
    def fit(self, windows: TelemetryWindows) -> StatDetectors:
        """Fit the heating coefficient and each statistic's median and MAD on normal windows."""
        self.heating_c_per_min_per_a2 = _fit_heating(windows)
        self._fit_spread_prior(windows)
        floors = {
            "temp_rise": self.params.min_temp_scale_c_per_min,
            "voltage_sag": self.params.min_sag_scale_ohm,
            "cell_imbalance": self.params.min_imbalance_scale_v,
        }
        for name, raw in zip(self._NAMES, self._raw(windows), strict=True):
            x = raw.stat[raw.evaluable]
            if x.size == 0:
                raise ValueError(f"Expected evaluable training windows for {name}, got none.")
            center, scale = _robust(x)
            self.centers[name] = center
            self.scales[name] = max(scale, floors[name])
        return self

    # ------------------------------------------------------------------ score
    def score(self, windows: TelemetryWindows) -> StatScores:
        """Score every battery with the three detectors."""
        if not self.scales:
            raise RuntimeError("StatDetectors are not fitted: call fit() or from_dict() first.")
        p = self.params
        thresholds = (p.temp_z_threshold, p.sag_z_threshold, p.imbalance_z_threshold)
        out: list[DetectorScores] = []
        for name, raw, threshold in zip(self._NAMES, self._raw(windows), thresholds, strict=True):
            scale = np.sqrt(np.maximum(self.scales[name], raw.own_scale) ** 2 + raw.extra_var)
            z = np.where(raw.evaluable, (raw.stat - self.centers[name]) / scale, 0.0)
            z = np.where(np.isfinite(z), z, 0.0)
            out.append(
                DetectorScores(
                    score=z,
                    flag=z > threshold,
                    level=np.where(raw.evaluable, raw.level, np.nan),
                    baseline=np.where(raw.evaluable, raw.baseline, np.nan),
                    evaluable=raw.evaluable,
                )
            )
        return StatScores(*out)

    def _raw(self, windows: TelemetryWindows) -> tuple[_Raw, _Raw, _Raw]:
        return (self._temp_rise(windows), self._voltage_sag(windows), self._imbalance(windows))

    def _temp_rise(self, windows: TelemetryWindows) -> _Raw:
        p = self.params
        ts, temp, current = windows.ts_s, windows.column("temp_c"), windows.column("current_a")
        dt_s, pair = _pairs(windows, ts, temp, current)
        d_temp = np.where(pair, np.diff(temp, axis=1), 0.0)
        i2 = np.where(pair, 0.5 * (current[:, 1:] ** 2 + current[:, :-1] ** 2), 0.0)
        minutes = dt_s / 60.0
        excess_c = d_temp - self.heating_c_per_min_per_a2 * i2 * minutes
        # Time-based EWMA of the excess *rate*, each interval weighted by its length: the
        # result is a smoothed slope (°C/min) that sample spacing does not bias.
        age_s = np.where(pair, ts[:, -1:] - ts[:, 1:], np.inf)
        weight = np.exp(-age_s / p.temp_ewma_time_constant_s)
        den = (weight * minutes).sum(axis=1)
        rate = (weight * excess_c).sum(axis=1) / np.where(den > 0, den, 1.0)
        evaluable = windows.lengths >= p.min_reference_samples + p.recent_samples
        evaluable &= pair[:, -p.recent_samples :].any(axis=1)
        center = self.centers.get("temp_rise", 0.0)
        zeros = np.zeros(windows.n)
        return _Raw(rate, zeros, zeros, rate, np.full(windows.n, center), evaluable)

    def _voltage_sag(self, windows: TelemetryWindows) -> _Raw:
        p = self.params
        ts, v, current = windows.ts_s, windows.column("pack_voltage_v"), windows.column("current_a")
        dt_s, pair = _pairs(windows, ts, v, current)
        d_i = np.where(pair, np.diff(current, axis=1), 0.0)
        d_v = np.where(pair, np.diff(v, axis=1), 0.0)
        step = pair & (np.abs(d_i) >= p.sag_min_current_step_a) & (dt_s <= p.sag_max_step_dt_s)
        r_ohm = -d_v / np.where(step, d_i, 1.0)
        # Pair j ends at sample j + 1: it is recent when that sample is.
        recent = step & windows.recent(p.sag_recent_samples)[:, 1:]
        ref = step & windows.reference(p.reference_fraction, p.sag_recent_samples)[:, 1:]
        level = _masked_median(r_ohm, recent)
        baseline = _masked_median(r_ohm, ref)
        own = _MAD_TO_STD * _masked_median(np.abs(r_ohm - baseline[:, None]), ref)
        evaluable = (recent.sum(axis=1) >= p.sag_min_steps) & (ref.sum(axis=1) >= p.sag_min_steps)
        stat = np.where(evaluable, level - baseline, 0.0)
        zeros = np.zeros(windows.n)
        return _Raw(stat, np.where(evaluable, own, 0.0), zeros, level, baseline, evaluable)

    def _spread(self, windows: TelemetryWindows) -> tuple[FloatArray, FloatArray, BoolArray]:
        """Cell spread, current, and where both are usable."""
        spread = windows.column("cell_max_v") - windows.column("cell_min_v")
        current = windows.column("current_a")
        return spread, current, windows.valid & np.isfinite(spread) & np.isfinite(current)

    def _fit_spread_prior(self, windows: TelemetryWindows) -> None:
        """Fleet prior of the spread-per-ampere, from windows that pin their own slope down."""
        p = self.params
        spread, current, finite = self._spread(windows)
        ref = finite & windows.reference(p.reference_fraction, p.recent_samples)
        line = _LineStats.of(current, spread, ref)
        good = (line.n >= p.min_reference_samples) & (
            line.sxx >= p.imbalance_well_determined_sxx_a2
        )
        if int(good.sum()) < 10:
            raise ValueError(
                f"Expected >= 10 training windows whose reference current varies by >= "
                f"{p.imbalance_well_determined_sxx_a2} A² (riding) and that report cell "
                f"voltages, got {int(good.sum())}."
            )
        ols = line.sxy[good] / line.sxx[good]
        fit = line.y_mean[good, None] + ols[:, None] * (current[good] - line.x_mean[good, None])
        noise = (spread[good] - fit)[ref[good]]
        self.spread_noise_v = max(_robust(noise)[1], p.min_imbalance_scale_v)
        center, scale = _robust(ols)
        self.spread_slope_center_v_per_a = center
        # Floored at a tenth of a milliohm-equivalent so a fleet of identical simulated
        # packs cannot make the prior absolute.
        self.spread_slope_std_v_per_a = max(scale, 1e-4)

    def _imbalance(self, windows: TelemetryWindows) -> _Raw:
        p = self.params
        spread, current, finite = self._spread(windows)
        recent = windows.recent(p.recent_samples)
        ref = finite & windows.reference(p.reference_fraction, p.recent_samples)
        line = _LineStats.of(current, spread, ref)
        # Conjugate normal update of the slope (prior N(center, std²), noise variance
        # noise²): the prior weighs like noise² / std² A² of reference current spread.
        noise2 = self.spread_noise_v**2
        prior_a2 = noise2 / self.spread_slope_std_v_per_a**2
        slope = (line.sxy + prior_a2 * self.spread_slope_center_v_per_a) / (line.sxx + prior_a2)
        slope_var = noise2 / (line.sxx + prior_a2)
        corrected = spread - slope[:, None] * current
        level = _ewma_last(corrected, finite, p.imbalance_ewma_alpha)
        i_level = _ewma_last(current, finite, p.imbalance_ewma_alpha)
        baseline = _masked_median(corrected, ref)
        own = _MAD_TO_STD * _masked_median(np.abs(corrected - baseline[:, None]), ref)
        evaluable = (line.n >= p.min_reference_samples) & (finite & recent).any(axis=1)
        stat = np.where(evaluable, level - baseline, 0.0)
        extra_var = np.where(evaluable, (i_level - line.x_mean) ** 2 * slope_var, 0.0)
        return _Raw(stat, np.where(evaluable, own, 0.0), extra_var, level, baseline, evaluable)

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, Any]:
        """Parameters and calibration, JSON-ready."""
        if not self.scales:
            raise RuntimeError("StatDetectors are not fitted: nothing to save.")
        return {
            "params": self.params.to_dict(),
            "heating_c_per_min_per_a2": self.heating_c_per_min_per_a2,
            "spread_slope_center_v_per_a": self.spread_slope_center_v_per_a,
            "spread_slope_std_v_per_a": self.spread_slope_std_v_per_a,
            "spread_noise_v": self.spread_noise_v,
            "centers": dict(self.centers),
            "scales": dict(self.scales),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StatDetectors:
        """Fitted detectors from :meth:`to_dict` output."""
        model = cls(StatDetectorParams.from_dict(data["params"]))
        for name in (
            "heating_c_per_min_per_a2",
            "spread_slope_center_v_per_a",
            "spread_slope_std_v_per_a",
            "spread_noise_v",
        ):
            setattr(model, name, float(data[name]))
        for attr in ("centers", "scales"):
            values = {str(k): float(v) for k, v in data[attr].items()}
            if set(values) != set(cls._NAMES):
                raise ValueError(f"Expected {attr} for {cls._NAMES}, got {sorted(values)}.")
            setattr(model, attr, values)
        return model


# ---------------------------------------------------------------------------- helpers
def _pairs(
    windows: TelemetryWindows, ts: FloatArray, *cols: FloatArray
) -> tuple[FloatArray, BoolArray]:
    """``(n, W - 1)`` interval lengths and whether both ends of each interval are usable."""
    ok = windows.valid & np.isfinite(ts)
    for c in cols:
        ok &= np.isfinite(c)
    pair = ok[:, 1:] & ok[:, :-1]
    dt_s = np.where(pair, np.diff(np.where(ok, ts, 0.0), axis=1), 0.0)
    pair &= dt_s > 0
    return dt_s, pair


def _fit_heating(windows: TelemetryWindows) -> float:
    """Least-squares ``dT/dt = kappa * I² + c`` over every interval of normal windows."""
    ts, temp, current = windows.ts_s, windows.column("temp_c"), windows.column("current_a")
    dt_s, pair = _pairs(windows, ts, temp, current)
    minutes = dt_s[pair] / 60.0
    if minutes.size < 2:
        raise ValueError(
            f"Expected at least 2 sample intervals to fit heating, got {minutes.size}."
        )
    d_temp = np.diff(temp, axis=1)[pair]
    i2 = 0.5 * (current[:, 1:] ** 2 + current[:, :-1] ** 2)[pair]
    # Rates weighted by interval length, so ΔT over a long parked interval counts as much as
    # the same ΔT over many short riding ones: this is a fit of ΔT = (kappa I² + c) Δt.
    x = np.stack([i2 * minutes, minutes], axis=1)
    coef, *_ = np.linalg.lstsq(x, d_temp, rcond=None)
    return max(float(coef[0]), 0.0)


def _masked_median(x: FloatArray, mask: BoolArray) -> FloatArray:
    """Row-wise median of ``x`` where ``mask``; NaN for rows with nothing selected.

    Sorting with the unselected entries pushed to the end avoids ``nanmedian``'s warning on
    empty rows (warnings are errors in the test suite, and empty rows are normal here).
    """
    k = mask.sum(axis=1)
    s = np.sort(np.where(mask, x, np.inf), axis=1)
    lo = np.clip((k - 1) // 2, 0, max(x.shape[1] - 1, 0))
    hi = np.clip(k // 2, 0, max(x.shape[1] - 1, 0))
    rows = np.arange(x.shape[0])
    if x.shape[1] == 0:
        return np.full(x.shape[0], np.nan)
    out: FloatArray = np.where(k > 0, 0.5 * (s[rows, lo] + s[rows, hi]), np.nan)
    return out


@dataclass(frozen=True)
class _LineStats:
    """Row-wise sufficient statistics of a straight-line fit of ``y`` on ``x`` over a mask."""

    n: FloatArray
    x_mean: FloatArray
    y_mean: FloatArray
    sxx: FloatArray
    sxy: FloatArray

    @classmethod
    def of(cls, x: FloatArray, y: FloatArray, mask: BoolArray) -> _LineStats:
        n = mask.sum(axis=1).astype(np.float64)
        n_safe = np.maximum(n, 1.0)
        x_mean = np.where(mask, x, 0.0).sum(axis=1) / n_safe
        y_mean = np.where(mask, y, 0.0).sum(axis=1) / n_safe
        dx = np.where(mask, x - x_mean[:, None], 0.0)
        dy = np.where(mask, y - y_mean[:, None], 0.0)
        return cls(n, x_mean, y_mean, (dx * dx).sum(axis=1), (dx * dy).sum(axis=1))


def _robust(x: FloatArray) -> tuple[float, float]:
    """Median and 1.4826 * MAD of the finite values (0, 0 if there are none)."""
    x = x[np.isfinite(x)]
    if x.size == 0:
        return 0.0, 0.0
    center = float(np.median(x))
    return center, float(_MAD_TO_STD * np.median(np.abs(x - center)))


def _ewma_last(x: FloatArray, mask: BoolArray, alpha: float) -> FloatArray:
    """Value at the newest selected sample of an EWMA over the selected samples of each row.

    Closed form: sample ``j`` weighs ``(1 - alpha) ** (selected samples after j)``; the
    weights are normalised, so a short row is not pulled toward 0.
    """
    after: npt.NDArray[np.int64] = np.cumsum(mask[:, ::-1], axis=1)[:, ::-1] - mask
    weight = np.where(mask, (1.0 - alpha) ** after, 0.0)
    den = weight.sum(axis=1)
    out: FloatArray = np.where(
        den > 0, (weight * np.where(mask, x, 0.0)).sum(axis=1) / np.where(den > 0, den, 1.0), np.nan
    )
    return out

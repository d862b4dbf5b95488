"""What each pack normally looks like, learned online: the evidence the anomaly model reads.

A fixed voltage table or one fleet-wide threshold cannot hold across cells: a pack of another
chemistry sags, spreads and warms differently, and every difference reads as a fault (the
first detectors raised 1,819 false alarms per 1,000 healthy pack-hours on packs the simulator
did not make). So each twin learns its own pack from its first hour of samples, and keeps
learning slowly while nothing looks wrong:

* ``voltage_consistency``: the pack voltage against its cells (``cell_min_v`` and
  ``cell_max_v``): a learned linear model of their mean, the current and their spread. A
  pack-voltage sensor that drifts or is offset breaks it; the cells do not.
* ``cell_spread``: ``cell_max_v - cell_min_v`` against a learned linear model of the
  discharge current, the charge current and a low-charge term. A cell group whose resistance
  jumps, which lost a cell, or which leaks charge (an internal short) leaves the others.
* ``ocv_residual``: the voltage of a pack that has rested 10 minutes against the
  open-circuit curve it showed at rest before, learned per 5 % of state of charge: a cell
  group that leaks or loses capacity, or a state of charge that no longer matches the
  charge, moves it.
* ``thermal``: the rate of temperature change against a learned lumped model
  ``dT/dt = a I^2 + b I + c T + d`` (Joule heat, reversible heat, cooling towards ambient), smoothed over
  about 20 samples so the sensor's noise and quantisation average out. Only unexplained
  heating counts.
* ``temp_stuck``: how far the current's heat (the thermal model's ``a I^2 + b I``) should have
  warmed the pack while its reading stayed exactly the same, against the most the pack
  showed while learning (a pack under load warms, and a live sensor shows it; a parked
  one may read one value for hours); and for a sensor that showed noise while learning
  (its readings jitter back and forth), how many samples under load repeated one reading,
  against the longest such run while learning.

The linear models are least squares on exponentially weighted moments, with each sensor's
resolution counted as measurement error (:func:`_regress`), so a reading the pack has barely
moved cannot get a coefficient that turns its quantisation into volts. An operating regime the
pack has not shown yet (its first charge, its first time below 20 %, a state of charge it never
rested at) is learned, not judged. Each channel's residual is divided by its own learned
scale (its mean absolute residual while learning), so the evidence is in "times the usual",
whatever the pack. The evidence a channel
reports is the *smallest* of its last three values: one odd sample is never evidence, only
a deviation that persists (30 s at a 10 s sample period). The twin keeps the state; the
thresholds that turn evidence into flags belong to the anomaly model
(:mod:`models.anomaly`), calibrated on healthy telemetry of chemistries it never saw, so they
travel through the registry and its A/B machinery like any other model.

The state is one float64 row per twin (:data:`STATE_WIDTH` values), updated sample by sample
in time order but vectorised across twins: :func:`apply_samples` steps all twins' k-th new
sample at once, so the result never depends on how a stream was cut into batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["EVIDENCE_NAMES", "STATE_WIDTH", "PackWatchParams", "apply_samples", "evidence", "learned"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

#: The evidence channels, in column order of :func:`evidence`.
EVIDENCE_NAMES: tuple[str, ...] = ("voltage_consistency", "cell_spread", "ocv_residual", "thermal", "temp_stuck")
_C = len(EVIDENCE_NAMES)
_PERSIST = 3  # samples a deviation must last
_SOC_BIN_PCT = 5.0
_N_BINS = int(100 / _SOC_BIN_PCT)
#: Each channel's smallest scale: what the sensors resolve (V, V, V, degC/s, degC).
_FLOOR = np.array([0.02, 0.002, 0.02, 0.0005, 0.5])

# Column layout of a twin's state row.
# _RUN: the temperature change expected since the reading last moved (degC); _RUN_REF: the
# largest such change seen while warming up.
_N, _PREV_TS, _PREV_T, _RUN_S, _RUN_REF, _E_TH, _FIRST_TS = 0, 1, 2, 3, 4, 5, 6
_LAST_LOAD = 7  # the last sample time the pack carried current (NaN: never)
_SPARE = 8  # free: room for one more per-twin value without moving the rest
# Three linear models, each kept as the EW mean of the outer product of (1, features, target):
# pack volts on the cells' mean, current and spread (3 features); the spread on discharge
# current, charge current and a low-charge term (3); the heating rate on I^2 (Joule heat),
# I (reversible heat, which changes sign with the current) and T (cooling) (3).
_K_CONS, _K_SP, _K_TH = 3, 3, 3
_CONS = 9
_SP = _CONS + (_K_CONS + 2) ** 2
_TH = _SP + (_K_SP + 2) ** 2
# Samples learned in each operating regime: (rest, discharge, charge) x (SOC above, below 20 %).
_N_REGIMES = 6
_REG = _TH + (_K_TH + 2) ** 2
# What the features' sensors resolve (mean cell V, A, spread V; A, A, low-charge term;
# A^2, A, degC): see _regress.
_RES_CONS = np.array([0.001, 0.05, 0.001])
_RES_SP = np.array([0.05, 0.05, 0.01])
_RES_TH = np.array([1.0, 0.05, 0.3])
_SCALE = _REG + _N_REGIMES  # one learned scale per channel (_C values)
_Z = _SCALE + _C  # the last _PERSIST raw evidence values per channel (_C x _PERSIST)
# Per SOC bin, a line through the settled samples: their count, then the EW means of SOC, V,
# SOC^2 and SOC V (one block of _N_BINS each).
_OCV = _Z + _C * _PERSIST
_RES_SOC = 0.2  # % state of charge a BMS resolves (see _regress)
# The temperature sensor's jitter: the sign of its last change, how many of its changes
# reversed the one before, and how many changed at all (while warming up); the samples under
# load in the current run of one reading, and the longest such run while warming up.
_T_SIGN, _T_FLIPS, _T_MOVES, _RUN_N, _RUN_N_REF = (_OCV + 5 * _N_BINS + k for k in range(5))
STATE_WIDTH = _RUN_N_REF + 1
#: A sensor whose changes reverse this often (fraction of samples) while warming up is noisy.
_NOISY_FLIP_FRACTION = 0.1
#: The shortest reference run, in samples.
_MIN_RUN_N = 3.0
#: A regime is judged once the twin has learned from this many of its samples.
_MIN_REGIME_SAMPLES = 20
#: Channels that depend on the operating regime (stuck: only judged under load anyway).
_REGIME_CHANNELS = np.array([True, True, True, True, False])


@dataclass(frozen=True)
class PackWatchParams:
    """How a twin learns its pack.

    Parameters
    ----------
    warmup_samples, warmup_s
        A twin learns from at least this many samples spanning at least this long before it
        reports any evidence (60 samples and an hour: a pack's first rides and parks, whether
        it reports every 10 s or, parked, every minute). A regime it has not met by then (its
        first charge, its first time below 20 %) is learned, not judged, when it comes.
    learn_alpha
        The slowest learning rate after warm-up (per sample): the pack's expectations follow
        its ageing over days, not a fault over minutes.
    learn_gate
        After warm-up a channel only learns from samples whose evidence is below this, so
        a fault is not learned as normal.
    thermal_alpha
        Smoothing of the thermal residual (0.05: about 20 samples).
    max_gap_s
        Longer gaps between samples are not differenced (rates, stuck runs restart).
    rest_current_a
        Below this current (either way) a pack is at rest: the regimes are rest,
        discharge and charge.
    settle_s
        A pack at rest this long reads its open-circuit voltage (near enough).
    """

    warmup_samples: int = 60
    warmup_s: float = 3600.0
    learn_alpha: float = 1.0 / 2000.0
    learn_gate: float = 4.0
    thermal_alpha: float = 0.05
    max_gap_s: float = 60.0
    rest_current_a: float = 1.0
    settle_s: float = 600.0

    def __post_init__(self) -> None:
        if self.warmup_samples < 10 or self.warmup_s < 0:
            raise ValueError(
                f"Expected warmup_samples >= 10 and warmup_s >= 0, got {self.warmup_samples} and {self.warmup_s}."
            )
        if not 0.0 < self.learn_alpha < 1.0 or not 0.0 < self.thermal_alpha < 1.0:
            raise ValueError(
                f"Expected learn_alpha and thermal_alpha in (0, 1), got {self.learn_alpha} and {self.thermal_alpha}."
            )
        if self.learn_gate <= 0 or self.max_gap_s <= 0:
            raise ValueError(f"Expected positive learn_gate and max_gap_s, got {self.learn_gate} and {self.max_gap_s}.")


def learned(state: FloatArray, params: PackWatchParams = PackWatchParams()) -> npt.NDArray[np.bool_]:
    """Which twins have finished warming up (report evidence)."""
    out: npt.NDArray[np.bool_] = (state[:, _N] >= params.warmup_samples) & (
        state[:, _PREV_TS] - state[:, _FIRST_TS] >= params.warmup_s
    )
    return out


def evidence(state: FloatArray, params: PackWatchParams = PackWatchParams()) -> FloatArray:
    """``(n, len(EVIDENCE_NAMES))`` persisted evidence of each twin: the smallest of each
    channel's last three values, in multiples of the pack's usual residual; NaN while a twin
    warms up or a channel has nothing to say (no cell readings, no resistance yet)."""
    z = state[:, _Z : _Z + _C * _PERSIST].reshape(-1, _C, _PERSIST)
    with np.errstate(invalid="ignore"):
        out = np.where(np.isnan(z).any(axis=2), np.nan, z.min(axis=2))
    out[~learned(state, params)] = np.nan
    return out


def _regress_update(m: FloatArray, f: FloatArray, y: FloatArray, alpha: FloatArray, use: npt.NDArray[np.bool_]) -> None:
    """One EW step, in place, of the moments ``E[z z^T]``, ``z = (1, f, y)`` (flattened rows)
    of the rows where ``use`` and every value is finite."""
    z = np.empty((f.shape[0], f.shape[1] + 2))
    z[:, 0] = 1.0
    z[:, 1:-1] = f
    z[:, -1] = y
    ok = use & np.isfinite(z).all(axis=1)
    if ok.all():  # the usual case: no gather and scatter of rows
        m += alpha[:, None] * ((z[:, :, None] * z[:, None, :]).reshape(z.shape[0], -1) - m)
        return
    rows = np.flatnonzero(ok)
    zr = z[rows]
    outer = (zr[:, :, None] * zr[:, None, :]).reshape(rows.size, z.shape[1] ** 2)
    m[rows] += alpha[rows, None] * (outer - m[rows])


def _regress(m: FloatArray, f: FloatArray, resolution: FloatArray) -> tuple[FloatArray, FloatArray]:
    """The least-squares prediction of the target from the features, and the coefficients,
    per row (NaN where the row has learned nothing yet).

    The fit is on centred moments, with each feature's ``resolution`` (what its sensor
    resolves) added to its variance, as measurement error: a feature the pack has barely
    moved (the cells' mean while parked, a charge current never seen) gets a coefficient
    near 0 instead of one that turns a 1 mV step of a reading into a volt.
    """
    k = f.shape[1]
    full = m.reshape(m.shape[0], k + 2, k + 2)
    mean_f, mean_y = full[:, 0, 1 : k + 1], full[:, 0, k + 1]
    c_ff = full[:, 1 : k + 1, 1 : k + 1] - mean_f[:, :, None] * mean_f[:, None, :]
    c_fy = full[:, 1 : k + 1, k + 1] - mean_f * mean_y[:, None]
    c_ff = c_ff + np.diag(np.asarray(resolution) ** 2)[None]
    bad = (full[:, 0, 0] <= 0) | ~np.isfinite(c_ff).all(axis=(1, 2)) | ~np.isfinite(c_fy).all(axis=1)
    c_ff[bad], c_fy[bad] = np.eye(k), 0.0
    beta: FloatArray = np.linalg.solve(c_ff, c_fy[:, :, None])[:, :, 0].astype(np.float64)
    out: FloatArray = mean_y + np.einsum("ij,ij->i", f - mean_f, beta)
    out[bad] = np.nan
    beta[bad] = np.nan
    return out, beta


def step(
    state: FloatArray, ts: FloatArray, pack_v: FloatArray, current_a: FloatArray, temp_c: FloatArray,
    soc_pct: FloatArray, cell_min_v: FloatArray, cell_max_v: FloatArray, params: PackWatchParams = PackWatchParams(),
) -> FloatArray:  # fmt: skip
    """One new sample for each row of ``state``, updated in place (and returned)."""
    s = state
    n = s[:, _N]
    rows = np.arange(s.shape[0])
    warm = learned(s, params)
    alpha = np.maximum(1.0 / (n + 1.0), params.learn_alpha)
    dt = ts - s[:, _PREV_TS]
    dt_ok = np.isfinite(dt) & (dt > 0) & (dt <= params.max_gap_s)
    scale = s[:, _SCALE : _SCALE + _C]
    resid = np.full((s.shape[0], _C), np.nan)
    i = np.where(np.isfinite(current_a), current_a, np.nan)
    mid = 0.5 * (cell_min_v + cell_max_v)
    spread = cell_max_v - cell_min_v
    low = np.clip((20.0 - soc_pct) / 20.0, 0.0, 1.0)
    # Which operating regime the sample is in, and whether the twin has learned it yet: a
    # pack first seen charging after its first hour is learned, not judged.
    moving = np.where(np.abs(i) < params.rest_current_a, 0, np.where(i > 0, 1, 2))
    regime = np.where(np.isfinite(i), moving + 3 * (soc_pct < 20.0), -1)
    seen = np.where(regime >= 0, s[rows, _REG + np.maximum(regime, 0)] >= _MIN_REGIME_SAMPLES, False)

    # Voltage consistency: pack volts against the cells (their mean, the spread) and current.
    f_cons = np.stack([mid, i, spread], axis=1)
    resid[:, 0] = pack_v - _regress(s[:, _CONS:_SP], f_cons, _RES_CONS)[0]
    # Cell spread against discharge current, charge current and a low state of charge.
    f_sp = np.stack([np.maximum(i, 0.0), np.maximum(-i, 0.0), low], axis=1)
    resid[:, 1] = spread - _regress(s[:, _SP:_TH], f_sp, _RES_SP)[0]
    # Open-circuit voltage: a pack that has rested long enough reads its open-circuit voltage,
    # judged against the curve it showed at this state of charge before (a first visit to a
    # state of charge is learned, not judged). Under load, and while it relaxes, it says
    # nothing: the voltage then depends on the minutes before as much as on the charge.
    at_rest = np.abs(i) < params.rest_current_a
    last_load = np.where(at_rest, s[:, _LAST_LOAD], ts)
    settled = at_rest & (ts - np.where(np.isnan(last_load), -np.inf, last_load) >= params.settle_s)
    bins = np.clip(np.nan_to_num(np.floor(soc_pct / _SOC_BIN_PCT)), 0, _N_BINS - 1).astype(np.int64)
    bin_cols = _OCV + bins[:, None] + _N_BINS * np.arange(5)[None, :]
    ocv_m = s[rows[:, None], bin_cols]  # count, E[SOC], E[V], E[SOC^2], E[SOC V] of the bin
    bin_n = ocv_m[:, 0]
    slope = (ocv_m[:, 4] - ocv_m[:, 1] * ocv_m[:, 2]) / (ocv_m[:, 3] - ocv_m[:, 1] ** 2 + _RES_SOC**2)
    ocv = ocv_m[:, 2] + slope * (soc_pct - ocv_m[:, 1])
    resid[:, 2] = np.where(settled & (bin_n >= _MIN_REGIME_SAMPLES), pack_v - ocv, np.nan)
    # Thermal: unexplained heating, smoothed.
    rate = np.where(dt_ok, (temp_c - s[:, _PREV_T]) / np.where(dt_ok, dt, 1.0), np.nan)
    f_th = np.stack([i**2, i, s[:, _PREV_T]], axis=1)
    pred, beta_th = _regress(s[:, _TH:_REG], f_th, _RES_TH)
    e_old = s[:, _E_TH]
    fresh = np.isfinite(rate - pred)
    e_new = np.where(fresh, np.where(np.isnan(e_old), 0.0, e_old) + params.thermal_alpha * (rate - pred - np.where(np.isnan(e_old), 0.0, e_old)), e_old)
    resid[:, 3] = np.where(dt_ok & (n > 10), e_new, np.nan)
    # Stuck temperature reading: how far the current's heat (the learned I^2 and I terms) should
    # have warmed the pack while the reading stayed exactly the same. A pack at rest may
    # legitimately read one value for hours (and where ambient drifts, the model's cooling
    # term is no guide); one that carries current heats, and a live sensor shows it.
    same = dt_ok & (temp_c == s[:, _PREV_T])
    heat = np.maximum(np.nan_to_num(beta_th[:, 0] * i**2 + beta_th[:, 1] * i), 0.0)
    expected = np.where(dt_ok & np.isfinite(heat), heat * np.where(dt_ok, dt, 0.0), 0.0)
    run = np.where(same, s[:, _RUN_S] + expected, 0.0)
    # A noisy sensor (most are) never repeats one reading for long, whatever the heat: there
    # the run is also counted in samples under load, against the longest while warming up.
    loaded = np.abs(i) >= params.rest_current_a
    run_n = np.where(same, s[:, _RUN_N] + loaded, 0.0)
    noisy = s[:, _T_FLIPS] >= _NOISY_FLIP_FRACTION * np.maximum(n, 1.0)
    d_sign = np.where(dt_ok, np.sign(temp_c - s[:, _PREV_T]), 0.0)
    d_sign = np.where(np.isfinite(d_sign), d_sign, 0.0)

    with np.errstate(invalid="ignore", divide="ignore"):
        floor_scale = np.maximum(np.where(np.isfinite(scale), scale, 0.0), _FLOOR)
        z = resid / floor_scale
        z[:, 0:3] = np.abs(z[:, 0:3])  # voltages: either way; heating: only up
        ref = s[:, _RUN_REF]
        z_heat = run / np.maximum(np.where(np.isfinite(ref), ref, 0.0), _FLOOR[4])
        z_count = np.where(noisy, run_n / np.maximum(s[:, _RUN_N_REF], _MIN_RUN_N), 0.0)
        z[:, 4] = np.maximum(z_heat, z_count)
    # A regime the twin has not learned yet says nothing (and is learned below).
    z[~seen[:, None] & _REGIME_CHANNELS[None, :]] = np.nan

    # Learn: everything while warming up; afterwards a channel only from a sample it finds
    # unremarkable, at the slow rate.
    calm = ~warm[:, None] | ~(z > params.learn_gate)  # NaN evidence (nothing to say) is calm
    _regress_update(s[:, _CONS:_SP], f_cons, pack_v, alpha, calm[:, 0])
    _regress_update(s[:, _SP:_TH], f_sp, spread, alpha, calm[:, 1])
    _regress_update(s[:, _TH:_REG], f_th, rate, alpha, calm[:, 3])
    s[:, _E_TH] = e_new
    s[:, _LAST_LOAD] = last_load
    absr = np.abs(resid)
    absr[:, 4] = np.nan  # the stuck run's scale is its reference run, below
    a = alpha[:, None]
    s[:, _SCALE : _SCALE + _C] = np.where(
        calm & np.isfinite(absr), np.where(np.isnan(scale), absr, scale + a * (np.nan_to_num(absr) - scale)), scale
    )
    # The reference run: the longest seen while warming up.
    s[:, _RUN_REF] = np.where(warm, s[:, _RUN_REF], np.fmax(s[:, _RUN_REF], run))
    s[:, _RUN_N_REF] = np.where(warm, s[:, _RUN_N_REF], np.maximum(s[:, _RUN_N_REF], run_n))
    s[:, _T_FLIPS] += ~warm & (d_sign != 0) & (d_sign == -s[:, _T_SIGN])
    s[:, _T_MOVES] += ~warm & (d_sign != 0)
    s[:, _T_SIGN] = np.where(d_sign != 0, d_sign, s[:, _T_SIGN])
    s[:, _RUN_N] = run_n
    known = regime >= 0
    s[rows[known], _REG + regime[known]] += 1.0
    # The open-circuit curve: the sample's bin.
    use_ocv = calm[:, 2] & settled & np.isfinite(pack_v) & np.isfinite(soc_pct)
    sel = np.flatnonzero(use_ocv)
    m_sel = ocv_m[sel]
    w = np.maximum(1.0 / (m_sel[:, 0] + 1.0), params.learn_alpha * 10.0)[:, None]
    x, v = soc_pct[sel], pack_v[sel]
    new_m = np.stack([m_sel[:, 0] + 1.0, x, v, x * x, x * v], axis=1)
    m_sel[:, 1:] += w * (new_m[:, 1:] - m_sel[:, 1:])
    m_sel[:, 0] = new_m[:, 0]
    s[sel[:, None], bin_cols[sel]] = m_sel

    # The last _PERSIST raw values, oldest first.
    zs = s[:, _Z : _Z + _C * _PERSIST].reshape(-1, _C, _PERSIST)
    zs[:, :, :-1] = zs[:, :, 1:]
    zs[:, :, -1] = z
    s[:, _Z : _Z + _C * _PERSIST] = zs.reshape(-1, _C * _PERSIST)
    s[:, _RUN_S] = run
    s[:, _PREV_TS] = ts
    s[:, _FIRST_TS] = np.where(np.isnan(s[:, _FIRST_TS]), ts, s[:, _FIRST_TS])
    s[:, _PREV_T] = np.where(np.isfinite(temp_c), temp_c, s[:, _PREV_T])
    s[:, _N] = n + 1.0
    return s


def new_state(n: int) -> FloatArray:
    """Rows for ``n`` twins that have seen nothing."""
    s = np.zeros((n, STATE_WIDTH))
    s[:, [_PREV_TS, _PREV_T, _E_TH, _RUN_REF, _FIRST_TS, _LAST_LOAD]] = np.nan
    s[:, _SCALE : _SCALE + _C] = np.nan
    s[:, _Z : _Z + _C * _PERSIST] = np.nan
    return s


def apply_samples(
    state: FloatArray, slots: IntArray, starts: IntArray, cols: dict[str, FloatArray],
    params: PackWatchParams = PackWatchParams(),
) -> None:  # fmt: skip
    """Step ``state[slots]`` through new samples in place. ``slots`` and the columns of ``cols``
    (``ts`` and the readings) are sorted by twin, then time; ``starts`` marks each twin's
    first sample. The k-th samples of all twins are stepped together."""
    n = slots.size
    if n == 0:
        return
    ends = np.r_[starts[1:], n]
    sizes = ends - starts
    gslots = slots[starts]
    for k in range(int(sizes.max())):
        live = sizes > k
        idx = starts[live] + k
        g = gslots[live]
        state[g] = step(
            state[g], cols["ts"][idx], cols["pack_voltage_v"][idx], cols["current_a"][idx], cols["temp_c"][idx],
            cols["soc_pct"][idx], cols["cell_min_v"][idx], cols["cell_max_v"][idx], params,
        )  # fmt: skip

"""LSTM forecaster of capacity fade and remaining useful life (RUL) whose reach scales with life.

What the model is
-----------------
A one-layer LSTM reads one input vector per *step*, built by :func:`cycle_inputs` from a
trusted capacity measurement: its state of health (SOH, capacity / nominal), the change since
the previous step, and how far the cycle count has advanced, all *relative to the cycles
already lived*. A step is taken when the cycle count has grown by ``step_fraction`` (3 %) of
itself since the last one (:func:`twins.cycle_inputs.step_due`), so the LSTM takes a similar
number of steps over a 150-cycle lab cell and a 2,500-cycle LFP cell, and no input carries an
absolute cycle count.

After each step a linear head maps the LSTM output ``h`` to quantiles (p10, p50, p90) of the
SOH *drop* ``soh_now - soh(k_now (1 + tau))`` at a set of *relative* horizons ``tau`` (the
knots, 0.02 to 4 times the cycles lived). So a cell half-way through its life reaches its end
within the knots (tau = 1) whether it lives 150 or 2,500 cycles; beyond the last knot the
drop is extrapolated along the last segment. This is the direct multi-horizon quantile design
(MQ-RNN, Wen et al. 2017), not an autoregressive roll-out: errors do not compound, and the
band is a quantile band learned with the pinball loss, not a Monte-Carlo spread.

The head is shaped so that every quantile curve is non-decreasing in the horizon and the three
never cross (increments between knots are ``softplus`` outputs; p10 <= p50 <= p90). Only the
drop at the first knot is free in sign, since capacity often recovers after a rest.

Remaining useful life to a threshold is the first future cycle whose forecast SOH is at or
below it, read off each quantile curve (the pessimistic curve, p90 of the drop, gives the
RUL's p10), which equals the quantiles of the crossing time when one latent severity drives
the future drop (the curves are comonotone).

Everything is in SOH of nominal and relative time, so cells of any rated capacity and any
lifetime share one model, and the live twins keep only ``(h, c)`` of width ``hidden_size``
plus the SOH and cycle count of their last step: :meth:`DegradationLSTM.step` is the
stateless batched step they call when a step is due.

Training (:func:`train`) supervises every step of every history with all future knots the
history covers. Each batch is freshly drawn:

* training histories *replayed at another ageing speed* (the time axis stretched, with a
  drifting stretch), measured irregularly (a random share of the measurements dropped),
  shifted in SOH and with measurement noise on the inputs;
* a share (``synthetic_frac``) of *generic synthetic fade curves*: decelerating, linear and
  knee-shaped fade in any mix, lives of 60 to 3,000 cycles, capacity recoveries after rests
  (``_synthetic_history``).

The synthetic share teaches the rule that generalises across chemistries (the fade shape
read from the history so far tends to persist, with a knee possible), the real histories
what real cells do near their end of life.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from models.cell_data import CellHistory
from models.inference_device import InferenceDevice
from twins.cycle_inputs import (
    CYCLE_INPUT_NAMES,
    DEFAULT_STEP_FRACTION,
    SLOPE_EWMA_COLUMN,
    SLOPE_SCALE,
    cycle_inputs,
    smooth_slopes,
    step_due,
    step_indices,
)

__all__ = [
    "CYCLE_INPUT_NAMES",
    "QUANTILES",
    "DegradationLSTM",
    "DegradationParams",
    "Encoded",
    "Forecast",
    "StepOutput",
    "cycle_inputs",
    "step_due",
    "train",
]

_LOG = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
Float32Array = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]

#: Quantile levels of every band the model gives.
QUANTILES: tuple[float, float, float] = (0.1, 0.5, 0.9)
# The head's outputs are in units of the recent fade rate per unit of log-time (the
# smoothed slope, SOH per unit of ln k; see unit_of), plus this floor so that a cell whose
# capacity has been flat or rising can still be forecast to fade.
_RATE_FLOOR = 0.01


def unit_of(slope_ewma: torch.Tensor) -> torch.Tensor:
    """The head's unit of drop per unit of tau, from the ``slope_ewma`` input column.

    A drop of ``unit * tau`` is the recent fade continued at a constant rate per cycle (for
    a rate r per cycle over k cycles lived, the slope in log-time is r k and the drop over
    tau k more cycles is r k tau), so an output of 1 per unit of tau reproduces that
    extrapolation and the LSTM learns how the fade will bend away from it.
    """
    return torch.clamp(-slope_ewma * SLOPE_SCALE, min=0.0) + _RATE_FLOOR
_WEIGHTS_FILE = "degradation_lstm.pt"
_META_FILE = "degradation_lstm.json"
_FORMAT_VERSION = 2


def _steps_of(cycles: FloatArray, soh: FloatArray, step_fraction: float) -> tuple[Float32Array, IntArray]:
    """Inputs (len, 6) of the steps of one history and the indices of the measurements used."""
    idx = step_indices(cycles, step_fraction)
    k, s = cycles[idx], soh[idx]
    prev_k = np.concatenate([[0.0], k[:-1]])
    prev_s = np.concatenate([[np.nan], s[:-1]])
    return smooth_slopes(cycle_inputs(s, k, prev_s, prev_k, s[0], 0.0)), idx


@dataclass(frozen=True)
class DegradationParams:
    """Architecture and training knobs of :class:`DegradationLSTM`.

    Parameters
    ----------
    hidden_size
        Width of the LSTM state; the live twins store ``h`` and ``c`` of this width.
    horizon_knots_rel
        Relative horizons tau (future cycle = cycles lived x (1 + tau)) at which the head
        predicts the drop; strictly increasing, > 0.
    step_fraction
        Smallest growth of the cycle count, as a fraction of it, between two steps.
    train_steps
        Optimiser steps (each on one freshly augmented batch).
    batch_size
        Augmented histories per step.
    learning_rate
        Peak Adam learning rate (cosine decay to 5 % of it).
    weight_decay
        AdamW weight decay.
    grad_clip_norm
        Gradient norm clip.
    stretch_min, stretch_max
        Range of the time-stretch factor of a replayed training history (log-uniform).
    stretch_drift
        The stretch also drifts smoothly, its log by up to this much (either sign) over the
        life: ageing speeds change within a history too.
    keep_min
        A replayed history keeps a uniform share in [keep_min, 1] of its measurements:
        capacity is not measured every cycle in the field.
    soh_shift_frac
        Half-width of the uniform SOH shift added to a whole replayed history.
    synthetic_frac
        Share of each batch drawn from the generic synthetic fade model (``_synthetic_history``).
    noise_frac
        Largest standard deviation of the Gaussian noise added to the inputs' SOH.
    torch_threads
        Threads torch may use while training and predicting (None leaves torch's setting);
        1 makes training bit-for-bit reproducible on a given machine.
    """

    hidden_size: int = 32
    horizon_knots_rel: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0)
    step_fraction: float = DEFAULT_STEP_FRACTION
    train_steps: int = 800
    batch_size: int = 32
    learning_rate: float = 1e-2
    weight_decay: float = 1e-4
    grad_clip_norm: float = 1.0
    stretch_min: float = 0.7
    stretch_max: float = 1.4
    stretch_drift: float = 0.0
    keep_min: float = 0.3
    soh_shift_frac: float = 0.02
    synthetic_frac: float = 0.3
    noise_frac: float = 0.003
    torch_threads: int | None = 1

    def __post_init__(self) -> None:
        if not 1 <= self.hidden_size <= 1024:
            raise ValueError(f"Expected hidden_size in [1, 1024], got {self.hidden_size}.")
        knots = self.horizon_knots_rel
        if not knots or knots[0] <= 0 or any(b <= a for a, b in itertools.pairwise(knots)):
            raise ValueError(f"Expected horizon_knots_rel strictly increasing from above 0, got {knots}.")
        if not 0 < self.step_fraction < 1:
            raise ValueError(f"Expected step_fraction in (0, 1), got {self.step_fraction}.")
        for name in ("train_steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"Expected {name} >= 1, got {getattr(self, name)}.")
        for name in ("learning_rate", "grad_clip_norm"):
            if not getattr(self, name) > 0:
                raise ValueError(f"Expected {name} > 0, got {getattr(self, name)}.")
        for name in ("weight_decay", "soh_shift_frac", "noise_frac", "stretch_drift"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"Expected {name} >= 0, got {getattr(self, name)}.")
        if self.stretch_drift >= 1:
            raise ValueError(f"Expected stretch_drift < 1 (time must run forward), got {self.stretch_drift}.")
        for name in ("synthetic_frac", "keep_min"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"Expected {name} in [0, 1], got {getattr(self, name)}.")
        if not 0 < self.stretch_min <= self.stretch_max:
            raise ValueError(
                "Expected 0 < stretch_min <= stretch_max, "
                f"got {self.stretch_min} and {self.stretch_max}."
            )
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ValueError(f"Expected torch_threads >= 1 or None, got {self.torch_threads}.")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DegradationParams:
        """Params from a mapping (e.g. saved metadata); unknown keys raise."""
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Expected keys among {sorted(known)}, got unknown {unknown}.")
        values = dict(data)
        if "horizon_knots_rel" in values:
            values["horizon_knots_rel"] = tuple(float(k) for k in values["horizon_knots_rel"])
        return cls(**values)


@dataclass(frozen=True)
class StepOutput:
    """What the model says after one step, for a batch of n batteries.

    Parameters
    ----------
    horizons_rel
        The knots, shape (K,): relative horizons tau.
    drop_quantiles
        p10, p50, p90 of the SOH drop ``soh_now - soh(k_now (1 + tau))`` at each knot,
        shape (n, K, 3).
    """

    horizons_rel: FloatArray
    drop_quantiles: FloatArray


@dataclass(frozen=True)
class Forecast:
    """Forecast of n batteries from their current state.

    Parameters
    ----------
    soh
        p10, p50, p90 of SOH for the next cycles 1..horizon after "now", shape (n, horizon, 3).
    rul_80_cycles, rul_70_cycles
        p10, p50, p90 of the cycles from now until SOH is first at or below 80 % / 70 % of
        rated, shape (n, 3): 0 if it is already there; counted by the extrapolated curves, so
        it may exceed the horizon (``inf`` only if a curve stops falling).
    """

    soh: FloatArray
    rul_80_cycles: FloatArray
    rul_70_cycles: FloatArray


@dataclass(frozen=True)
class Encoded:
    """Where the forecasts of n batteries start: their state after their last step.

    Parameters
    ----------
    h, c
        LSTM state after the last step, float32, shape (n, hidden_size) (the head reads
        ``h``; ``c`` carries memory into the next step).
    step_soh
        SOH at that step, shape (n,): the drop curves start there.
    step_cycle
        Cycles lived at that step, shape (n,): relative horizons are multiples of it.
    step_slope_ewma
        The step's ``slope_ewma`` input, shape (n,): the unit of the forecast drop.
    """

    h: Float32Array
    c: Float32Array
    step_soh: FloatArray
    step_cycle: FloatArray
    step_slope_ewma: FloatArray


class _Net(nn.Module):
    def __init__(self, n_inputs: int, hidden_size: int, n_knots: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(n_inputs, hidden_size, num_layers=1, batch_first=True)
        self.head = nn.Linear(hidden_size, 3 * n_knots)
        self.n_knots = n_knots

    def drops(self, out: torch.Tensor, widths: torch.Tensor, slope_ewma: torch.Tensor) -> torch.Tensor:
        """Monotone, non-crossing drop quantiles (..., K, 3) from LSTM outputs (..., H).

        ``widths`` are the knots' spacings, the first one measured from tau = 0;
        ``slope_ewma`` (...) is the step's ``slope_ewma`` input, which sets the unit.
        """
        raw = self.head(out).unflatten(-1, (3, self.n_knots))
        unit = unit_of(slope_ewma).unsqueeze(-1)
        first = raw[..., 0, :1] * unit * widths[0]
        # Increments between knots, per unit of tau, in units of the recent fade rate.
        rate50 = nn.functional.softplus(raw[..., 0, 1:]) * unit
        below = nn.functional.softplus(raw[..., 1, :1]) * unit * widths[0]
        above = nn.functional.softplus(raw[..., 2, :]) * unit
        w = widths[1:]
        d50 = torch.cat([first, first + torch.cumsum(rate50 * w, dim=-1)], dim=-1)
        # p10 grows by a fraction of p50's increments, p90 by more: neither crosses p50.
        frac10 = torch.sigmoid(raw[..., 1, 1:])
        d10_inc = torch.cumsum(rate50 * frac10 * w, dim=-1)
        d90_inc = torch.cumsum((rate50 + above[..., 1:]) * w, dim=-1)
        lift = above[..., :1] * widths[0]
        d10 = torch.cat([first - below, first - below + d10_inc], dim=-1)
        d90 = torch.cat([first + lift, first + lift + d90_inc], dim=-1)
        return torch.stack([d10, d50, d90], dim=-1)


@contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    # The machine is shared (twins, Ray, other jobs): cap torch's pool while it works and
    # give the previous setting back afterwards.
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _as_state(name: str, arr: npt.ArrayLike, n: int, hidden: int) -> torch.Tensor:
    a = np.asarray(arr, dtype=np.float32)
    if a.shape != (n, hidden):
        raise ValueError(f"Expected {name} of shape ({n}, {hidden}), got {a.shape}.")
    return torch.from_numpy(np.ascontiguousarray(a))


def _to_numpy32(t: torch.Tensor) -> Float32Array:
    """A float32 numpy copy of a result tensor, from any device and float type."""
    if t.device.type == "cpu" and t.dtype == torch.float32:
        # A view into the step's own output: hand out an owned, contiguous copy.
        out: Float32Array = t.numpy().copy()
        return out
    moved: Float32Array = t.to(device="cpu", dtype=torch.float32).numpy()
    return moved


def _as_column(name: str, arr: npt.ArrayLike, n: int, positive: bool = False) -> FloatArray:
    a = np.asarray(arr, dtype=np.float64).reshape(-1)
    ok = a.shape == (n,) and bool(np.all(np.isfinite(a))) and (not positive or bool(np.all(a > 0)))
    if not ok:
        raise ValueError(
            f"Expected {'positive ' if positive else ''}finite {name} of shape ({n},), "
            f"got shape {a.shape}: {a.tolist()[:10]}."
        )
    return a


class DegradationLSTM:
    """A trained (or freshly initialised) degradation forecaster; see the module docstring.

    Parameters
    ----------
    params
        Architecture (and the training knobs it was trained with).
    seed
        Seed of the initial weights when no ``state_dict`` is given.
    state_dict
        Weights to load.
    metrics
        Training metrics kept with the model and written by :meth:`save`.
    """

    def __init__(
        self,
        params: DegradationParams,
        seed: int = 0,
        state_dict: dict[str, torch.Tensor] | None = None,
        metrics: dict[str, Any] | None = None,
    ) -> None:
        self.params = params
        # Seed the initial weights without touching the caller's global torch RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self._net = _Net(len(CYCLE_INPUT_NAMES), params.hidden_size, len(params.horizon_knots_rel))
        if state_dict is not None:
            self._net.load_state_dict(state_dict)
        self._net.eval()
        self._knots = np.asarray(params.horizon_knots_rel, dtype=np.float64)
        self._widths = torch.tensor(np.diff(np.concatenate([[0.0], self._knots])), dtype=torch.float32)
        self.metrics: dict[str, Any] = dict(metrics or {})
        self._device = InferenceDevice()

    @property
    def device(self) -> InferenceDevice:
        """Where (and in which float type) the LSTM runs its inference."""
        return self._device

    def on_device(self, device: InferenceDevice) -> DegradationLSTM:
        """A copy of this model whose inference runs on ``device``; this one is unchanged.

        The LSTM's weights move (and, for ``bfloat16``, are cast) once; the head stays
        float32. The copy is for inference: :meth:`save` refuses it, since its weights may
        be rounded. On the default device (CPU, float32) this model itself is returned.
        """
        if not self._device.is_default:
            raise ValueError(f"Expected a model on cpu float32 to copy, got one on {self._device.describe()}.")
        if device.is_default:
            return self
        placed = DegradationLSTM(self.params, state_dict=self._net.state_dict(), metrics=self.metrics)
        placed._net.lstm.to(device=device.torch_device, dtype=device.torch_dtype)
        placed._net.head.to(device=device.torch_device)
        placed._widths = placed._widths.to(device.torch_device)
        placed._device = device
        return placed

    def _to_device(self, t: torch.Tensor, lstm_input: bool = True) -> torch.Tensor:
        # Across to the device first, then cast there: a GPU casts far faster than the CPU.
        # On the default device both are no-ops that return ``t`` itself.
        moved = t.to(device=self._device.torch_device)
        return moved.to(dtype=self._device.torch_dtype) if lstm_input else moved

    @property
    def hidden_size(self) -> int:
        """Width of ``h`` and ``c``."""
        return self.params.hidden_size

    @property
    def n_inputs(self) -> int:
        """Width of one :func:`cycle_inputs` row."""
        return len(CYCLE_INPUT_NAMES)

    def initial_state(self, n: int) -> tuple[Float32Array, Float32Array]:
        """``(h, c)`` of n batteries before their first step: zeros, shape (n, hidden)."""
        z = np.zeros((n, self.hidden_size), dtype=np.float32)
        return z, z.copy()

    def _head(self, out: torch.Tensor, slope_ewma: torch.Tensor) -> torch.Tensor:
        return self._net.drops(out, self._widths, slope_ewma)

    def step(
        self, x: npt.ArrayLike, h: npt.ArrayLike, c: npt.ArrayLike
    ) -> tuple[StepOutput, Float32Array, Float32Array]:
        """Advance n batteries by one step each (stateless, batched).

        Parameters
        ----------
        x
            :func:`cycle_inputs` of the measurement stepped on, shape (n, n_inputs), float32.
        h, c
            LSTM state of each battery before this step, shape (n, hidden_size).

        Returns
        -------
        tuple
            ``(StepOutput, h_new, c_new)``; the new state is float32 of shape (n, hidden).
        """
        xa = np.asarray(x, dtype=np.float32)
        if xa.ndim != 2 or xa.shape[1] != self.n_inputs:
            raise ValueError(f"Expected x of shape (n, {self.n_inputs}), got {xa.shape}.")
        n = xa.shape[0]
        h0 = _as_state("h", h, n, self.hidden_size)
        c0 = _as_state("c", c, n, self.hidden_size)
        with torch.no_grad(), _torch_threads(self.params.torch_threads):
            # Inputs and state go to the device once per batch; the head reads float32.
            out, (h1, c1) = self._net.lstm(
                self._to_device(torch.from_numpy(np.ascontiguousarray(xa))).unsqueeze(1),
                (self._to_device(h0).unsqueeze(0), self._to_device(c0).unsqueeze(0)),
            )
            slope = self._to_device(torch.from_numpy(np.ascontiguousarray(xa[:, SLOPE_EWMA_COLUMN])), lstm_input=False)
            drops = self._head(out[:, 0].float(), slope).double().cpu().numpy()
        return (
            StepOutput(horizons_rel=self._knots.copy(), drop_quantiles=drops),
            _to_numpy32(h1[0]),
            _to_numpy32(c1[0]),
        )

    def encode(
        self, soh_histories: Sequence[npt.ArrayLike], cycle_histories: Sequence[npt.ArrayLike] | None = None
    ) -> Encoded:
        """State after running each history's steps from a zero state, all at once.

        Parameters
        ----------
        soh_histories
            n SOH series of any lengths >= 1.
        cycle_histories
            Cycle count of each measurement (increasing, > 0); None: 1, 2, ... (one
            measurement per cycle, the lab convention).

        Returns
        -------
        Encoded
            The state, the same as calling :meth:`step` on each due measurement, and what the
            forecast needs of each history's last step.
        """
        series = [np.asarray(s, dtype=np.float64).ravel() for s in soh_histories]
        if not series or any(len(s) < 1 for s in series):
            raise ValueError(
                f"Expected one or more non-empty SOH histories, got lengths {[len(s) for s in series]}."
            )
        cycles = _cycles_of(series, cycle_histories)
        xs, last_soh, last_cycle, last_slope = [], np.empty(len(series)), np.empty(len(series)), np.empty(len(series))
        for i, (s, k) in enumerate(zip(series, cycles, strict=True)):
            x, idx = _steps_of(k, s, self.params.step_fraction)
            xs.append(x)
            last_soh[i], last_cycle[i] = s[idx[-1]], k[idx[-1]]
            last_slope[i] = x[-1, SLOPE_EWMA_COLUMN]
        x, lengths = _pad(xs)
        with torch.no_grad(), _torch_threads(self.params.torch_threads):
            packed = nn.utils.rnn.pack_padded_sequence(
                self._to_device(torch.from_numpy(x)), torch.from_numpy(lengths), batch_first=True, enforce_sorted=False
            )
            _, (h, c) = self._net.lstm(packed)
        return Encoded(_to_numpy32(h[0]), _to_numpy32(c[0]), last_soh, last_cycle, last_slope)

    def drop_quantiles(self, h: npt.ArrayLike, step_slope_ewma: npt.ArrayLike) -> FloatArray:
        """p10/p50/p90 of the SOH drop at each knot, shape (n, K, 3), from LSTM outputs ``h``
        and the ``slope_ewma`` input of the same step."""
        ha = np.asarray(h, dtype=np.float32)
        if ha.ndim != 2 or ha.shape[1] != self.hidden_size:
            raise ValueError(f"Expected h of shape (n, {self.hidden_size}), got {ha.shape}.")
        slope = _as_column("step_slope_ewma", step_slope_ewma, ha.shape[0]).astype(np.float32)
        with torch.no_grad(), _torch_threads(self.params.torch_threads):
            out = self._head(
                self._to_device(torch.from_numpy(np.ascontiguousarray(ha)), lstm_input=False),
                self._to_device(torch.from_numpy(slope), lstm_input=False),
            )
            drops: FloatArray = out.double().cpu().numpy()
            return drops

    def remaining_useful_life(
        self, start: Encoded, threshold_frac: float, cycle_now: npt.ArrayLike | None = None
    ) -> FloatArray:
        """Cycles from now until SOH is first at or below ``threshold_frac``, p10/p50/p90, (n, 3).

        Parameters
        ----------
        start
            The batteries' state after their last step (:meth:`encode`, or a twin's columns).
        threshold_frac
            End of life as SOH of nominal.
        cycle_now
            Cycles lived now (>= the step's; None: the step's): cycles lived since the step
            are taken off.

        Returns
        -------
        numpy.ndarray
            0 where a battery is already at or below the threshold (by the step's SOH or the
            curve); may exceed any horizon (curves are extrapolated past the last knot);
            ``inf`` only where a curve has stopped falling.
        """
        if not 0 < threshold_frac < 1.5:
            raise ValueError(f"Expected threshold_frac in (0, 1.5), got {threshold_frac}.")
        drops, soh_ref, k_ref, k_now = self._reference(start, cycle_now)
        tau = _tau_to(self._knots, drops, soh_ref, threshold_frac)
        cycles = np.where(np.isfinite(tau), np.ceil(tau * k_ref[:, None] - 1e-9), math.inf)
        return np.maximum(cycles - (k_now - k_ref)[:, None], 0.0)

    def forecast(
        self, start: Encoded, horizon_cycles: int = 200, cycle_now: npt.ArrayLike | None = None
    ) -> Forecast:
        """Forecast SOH trajectories and RUL of n batteries from their last step.

        Parameters
        ----------
        start
            The batteries' state after their last step.
        horizon_cycles
            Number of future cycles in :attr:`Forecast.soh`.
        cycle_now
            Cycles lived now (None: the step's); the trajectory covers cycles now+1 .. now+horizon.
        """
        if horizon_cycles < 1:
            raise ValueError(f"Expected horizon_cycles >= 1, got {horizon_cycles}.")
        drops, soh_ref, k_ref, k_now = self._reference(start, cycle_now)
        future = k_now[:, None] + np.arange(1, horizon_cycles + 1, dtype=np.float64)[None, :]
        drop_curve = _interp_knots(self._knots, drops, (future - k_ref[:, None]) / k_ref[:, None])
        # p10 of SOH comes from p90 of the drop: reverse the last axis.
        soh = soh_ref[:, None, None] - drop_curve[..., ::-1]
        rul = {level: self.remaining_useful_life(start, level, k_now) for level in (0.8, 0.7)}
        return Forecast(soh=soh, rul_80_cycles=rul[0.8], rul_70_cycles=rul[0.7])

    def _reference(
        self, start: Encoded, cycle_now: npt.ArrayLike | None
    ) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
        drops = self.drop_quantiles(start.h, start.step_slope_ewma)
        n = drops.shape[0]
        soh_ref = _as_column("step_soh", start.step_soh, n)
        k_ref = _as_column("step_cycle", start.step_cycle, n, positive=True)
        k_now = k_ref if cycle_now is None else _as_column("cycle_now", cycle_now, n)
        if bool(np.any(k_now < k_ref)):
            raise ValueError(f"Expected cycle_now >= step_cycle, got {k_now.tolist()[:10]} < {k_ref.tolist()[:10]}.")
        return drops, soh_ref, k_ref, k_now

    def forecast_histories(
        self,
        soh_histories: Sequence[npt.ArrayLike],
        horizon_cycles: int = 200,
        cycle_histories: Sequence[npt.ArrayLike] | None = None,
    ) -> Forecast:
        """:meth:`encode` then :meth:`forecast` from each history's last measurement.

        With ``cycle_histories`` None, history i's entry j is cycle j + 1, and the trajectory
        covers cycles len + 1 .. len + horizon.
        """
        start = self.encode(soh_histories, cycle_histories)
        return self.forecast(start, horizon_cycles, _last_cycles(soh_histories, cycle_histories))

    def remaining_useful_life_histories(
        self,
        soh_histories: Sequence[npt.ArrayLike],
        threshold_frac: float,
        cycle_histories: Sequence[npt.ArrayLike] | None = None,
    ) -> FloatArray:
        """:meth:`remaining_useful_life` of cells from their SOH so far, counted from their last
        measurement, p10/p50/p90, shape (n, 3)."""
        start = self.encode(soh_histories, cycle_histories)
        return self.remaining_useful_life(start, threshold_frac, _last_cycles(soh_histories, cycle_histories))

    def save(self, directory: Path) -> None:
        """Write the weights (torch state dict) and JSON metadata (params, metrics)."""
        if not self._device.is_default:
            raise ValueError(
                f"Expected a model on cpu float32 to save, got a copy for inference on {self._device.describe()}."
            )
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        torch.save(self._net.state_dict(), directory / _WEIGHTS_FILE)
        meta = {
            "format_version": _FORMAT_VERSION,
            "model": "degradation_lstm",
            "params": asdict(self.params),
            "cycle_inputs": list(CYCLE_INPUT_NAMES),
            "quantiles": list(QUANTILES),
            "metrics": self.metrics,
        }
        (directory / _META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))

    @classmethod
    def load(cls, directory: Path) -> DegradationLSTM:
        """Read a model written by :meth:`save`."""
        directory = Path(directory)
        meta_path = directory / _META_FILE
        if not meta_path.is_file():
            raise ValueError(f"Expected {_META_FILE} in {directory}, found no such file.")
        meta = json.loads(meta_path.read_text())
        if meta.get("format_version") != _FORMAT_VERSION:
            raise ValueError(
                f"Expected format_version {_FORMAT_VERSION} in {meta_path}, "
                f"got {meta.get('format_version')!r}: retrain it with `bms models train`."
            )
        if meta.get("cycle_inputs") != list(CYCLE_INPUT_NAMES):
            raise ValueError(
                f"Expected cycle_inputs {list(CYCLE_INPUT_NAMES)} in {meta_path}, "
                f"got {meta.get('cycle_inputs')!r}."
            )
        state = torch.load(directory / _WEIGHTS_FILE, weights_only=True)
        return cls(DegradationParams.from_dict(meta["params"]), state_dict=state, metrics=meta["metrics"])


def _cycles_of(series: Sequence[FloatArray], cycle_histories: Sequence[npt.ArrayLike] | None) -> list[FloatArray]:
    if cycle_histories is None:
        return [np.arange(1, len(s) + 1, dtype=np.float64) for s in series]
    cycles = [np.asarray(k, dtype=np.float64).ravel() for k in cycle_histories]
    for i, (s, k) in enumerate(zip(series, cycles, strict=True)):
        if len(k) != len(s) or not bool(np.all(k > 0)) or bool(np.any(np.diff(k) <= 0)):
            raise ValueError(
                f"Expected history {i}'s cycles positive, increasing and one per SOH value "
                f"({len(s)}), got {k.tolist()[:10]} ({len(k)})."
            )
    return cycles


def _last_cycles(soh_histories: Sequence[npt.ArrayLike], cycle_histories: Sequence[npt.ArrayLike] | None) -> FloatArray:
    if cycle_histories is None:
        return np.array([float(np.asarray(s).size) for s in soh_histories])
    return np.array([float(np.asarray(k, dtype=np.float64).ravel()[-1]) for k in cycle_histories])


def _pad(seqs: Sequence[Float32Array]) -> tuple[Float32Array, IntArray]:
    lengths = np.array([len(s) for s in seqs], dtype=np.int64)
    out = np.zeros((len(seqs), int(lengths.max()), seqs[0].shape[1]), dtype=np.float32)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
    return out, lengths


def _interp_knots(knots: FloatArray, drops: FloatArray, tau: FloatArray) -> FloatArray:
    """Drop curves (n, m, 3) at relative horizons ``tau`` (n, m), from (0, 0) through the
    knots, linear past the last knot."""
    k = np.concatenate([[0.0], knots])
    d = np.concatenate([np.zeros_like(drops[:, :1, :]), drops], axis=1)
    seg = np.clip(np.searchsorted(k, tau, side="right") - 1, 0, len(k) - 2)
    w = (tau - k[seg]) / (k[seg + 1] - k[seg])
    rows = np.arange(d.shape[0])[:, None]
    lo, hi = d[rows, seg, :], d[rows, seg + 1, :]
    out: FloatArray = lo + w[..., None] * (hi - lo)
    return out


def _tau_to(knots: FloatArray, drops: FloatArray, soh_now: FloatArray, threshold_frac: float) -> FloatArray:
    """First relative horizon at which each quantile curve reaches the threshold, (n, 3)."""
    k = np.concatenate([[0.0], knots])
    # RUL quantile q comes from drop quantile 1 - q.
    d = np.concatenate([np.zeros_like(drops[:, :1, :]), drops], axis=1)[..., ::-1]
    need = (soh_now - threshold_frac)[:, None]  # drop still to go, (n, 1)
    n = d.shape[0]
    rows = np.arange(n)
    out = np.empty((n, 3), dtype=np.float64)
    for q in range(3):
        dq = d[:, :, q]
        reached = dq[:, 1:] >= need
        first = np.argmax(reached, axis=1) + 1
        any_reached = reached.any(axis=1)
        d_lo, d_hi = dq[rows, first - 1], dq[rows, first]
        k_lo, k_hi = k[first - 1], k[first]
        with np.errstate(divide="ignore", invalid="ignore"):
            inside = np.where(d_hi > d_lo, k_lo + (need[:, 0] - d_lo) / (d_hi - d_lo) * (k_hi - k_lo), k_hi)
            slope = (dq[:, -1] - dq[:, -2]) / (k[-1] - k[-2])
            beyond = np.where(slope > 0, k[-1] + (need[:, 0] - dq[:, -1]) / slope, math.inf)
        tau = np.where(any_reached, np.maximum(inside, 0.0), beyond)
        out[:, q] = np.where(need[:, 0] <= 0, 0.0, tau)
    return out


def _synthetic_history(rng: np.random.Generator) -> tuple[FloatArray, FloatArray]:
    """Cycles and SOH of one synthetic fading cell (see :class:`DegradationParams`).

    The fade to about end of life, ``D`` at ``u = k / L = 1``, mixes a decelerating term
    ``u^p1`` (p1 in 0.4..1: SEI growth, calendar-like) and an accelerating one ``u^p2`` (p2 in
    1.5..5: the knee of lithium plating or electrode drying) in a random proportion; a life L
    is drawn from 60 to 3,000 cycles; some cells first gain capacity (LFP formation); capacity
    recoveries after rests and measurement noise sit on top. It teaches the rule two or three
    lab datasets cannot: the fade shape read so far tends to persist, and a knee may come.
    """
    life = math.exp(rng.uniform(math.log(60), math.log(3000)))
    n = int(life * rng.uniform(0.9, 1.4))
    k = np.arange(1, n + 1, dtype=np.float64)
    u = k / life
    fade = rng.uniform(0.15, 0.35)
    w = rng.uniform()
    shape = w * u ** rng.uniform(0.4, 1.0) + (1 - w) * u ** rng.uniform(1.5, 5.0)
    soh = rng.uniform(0.88, 1.1) - fade * shape
    if rng.uniform() < 0.3:
        soh += rng.uniform(0.0, 0.02) * (1 - np.exp(-u / rng.uniform(0.02, 0.15)))
    if rng.uniform() < 0.3:
        rest = rng.uniform(5, 40)
        while rest < n:
            tau = rng.uniform(1.0, 6.0)
            after = k >= int(rest)
            soh[after] += rng.uniform(0.0, 0.03) * np.exp(-(k[after] - int(rest)) / tau)
            rest += rng.uniform(10, 40)
    return k, soh + rng.normal(0.0, rng.uniform(0.0, 0.002), size=n)


@dataclass(frozen=True)
class _Augmenter:
    """Random variants of the training histories (see :class:`DegradationParams`)."""

    series: tuple[tuple[FloatArray, FloatArray], ...]  # (cycles, soh)
    params: DegradationParams
    knots: FloatArray
    weights: FloatArray = field(init=False)

    def __post_init__(self) -> None:
        # Every history counts alike, long or short: the model works in relative time.
        object.__setattr__(self, "weights", np.full(len(self.series), 1.0 / len(self.series)))

    def replayed(self, rng: np.random.Generator) -> tuple[FloatArray, FloatArray]:
        """A training history replayed at another, smoothly drifting, ageing speed."""
        p = self.params
        k, soh = self.series[int(rng.choice(len(self.series), p=self.weights))]
        stretch = math.exp(rng.uniform(math.log(p.stretch_min), math.log(p.stretch_max)))
        drift = rng.uniform(-p.stretch_drift, p.stretch_drift)
        # k -> stretch k exp(drift k / L): increasing for |drift| < 1; SOH levels stay real.
        warped = stretch * k * np.exp(drift * k / k[-1])
        return warped, soh + rng.uniform(-p.soh_shift_frac, p.soh_shift_frac)

    def batch(self, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Inputs (B, T, 6), drop targets (B, T, K) and their mask (B, T, K)."""
        p = self.params
        xs, ys = [], []
        for _ in range(p.batch_size):
            k, soh = _synthetic_history(rng) if rng.uniform() < p.synthetic_frac else self.replayed(rng)
            # The field measures capacity now and then, not every cycle.
            keep = rng.uniform(size=len(k)) < rng.uniform(p.keep_min, 1.0)
            keep[0] = True
            noisy = soh + rng.normal(0.0, rng.uniform(0.0, p.noise_frac), size=len(soh))
            x, idx = _steps_of(k[keep], noisy[keep], p.step_fraction)
            k_step = k[keep][idx]
            # Targets are the recorded (not noised) SOH at every knot the history reaches,
            # measured from the step's SOH as the model saw it: a forecast starts from a
            # measurement, noise and all.
            at = k_step[:, None] * (1.0 + self.knots[None, :])
            y = noisy[keep][idx][:, None] - np.interp(at, k, soh)
            ys.append(np.where(at <= k[-1], y, np.nan).astype(np.float32))
            xs.append(x)
        x_pad, _ = _pad(xs)
        y_pad = np.full((len(ys), x_pad.shape[1], len(self.knots)), np.nan, dtype=np.float32)
        for i, yi in enumerate(ys):
            y_pad[i, : len(yi)] = yi
        mask = np.isfinite(y_pad)
        return torch.from_numpy(x_pad), torch.from_numpy(np.nan_to_num(y_pad)), torch.from_numpy(mask.astype(np.float32))


def _pinball(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Pinball (quantile) loss of (B, T, K, 3) predictions, averaged per knot, then over knots.

    Per knot, because far knots have few targets (only the early steps of a history see that
    far ahead) and yet decide the remaining life: averaged over all targets, they would be
    drowned by the many near ones.
    """
    q = torch.tensor(QUANTILES, dtype=pred.dtype)
    err = target.unsqueeze(-1) - pred
    loss = torch.maximum(q * err, (q - 1) * err).sum(-1)
    per_knot = (loss * mask).sum(dim=(0, 1)) / mask.sum(dim=(0, 1)).clamp(min=1.0)
    return per_knot[mask.sum(dim=(0, 1)) > 0].mean()


def train(
    histories: Sequence[CellHistory],
    params: DegradationParams | None = None,
    seed: int = 0,
    progress: Callable[[int, float], None] | None = None,
) -> DegradationLSTM:
    """Train a forecaster on any cell histories (lab cells, simulated fleet trajectories).

    Parameters
    ----------
    histories
        Training cells; each is used through :meth:`CellHistory.clean`, in SOH, at its
        recorded cycle numbers.
    params
        Architecture and training knobs (defaults if None).
    seed
        Seeds the weights, the augmentation and the batch order: same inputs, same model,
        bit for bit on one machine with ``torch_threads`` 1.
    progress
        Called as ``progress(step, loss)`` every 50 steps and at the end.

    Returns
    -------
    DegradationLSTM
        The model, with ``metrics`` holding the loss history and training time.
    """
    params = params or DegradationParams()
    with _torch_threads(params.torch_threads), _deterministic():
        return _train(histories, params, seed, progress)


@contextmanager
def _deterministic() -> Iterator[None]:
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def _train(
    histories: Sequence[CellHistory],
    params: DegradationParams,
    seed: int,
    progress: Callable[[int, float], None] | None,
) -> DegradationLSTM:
    series = tuple(
        (h.cycle.astype(np.float64), h.soh()) for h in (c.clean() for c in histories) if len(h) >= 2
    )
    if not series:
        raise ValueError(
            "Expected at least one training history with 2 or more clean cycles, got "
            f"{[(h.cell_id, len(h.clean())) for h in histories]}."
        )
    model = DegradationLSTM(params, seed=seed)
    net = model._net
    net.train()
    rng = np.random.default_rng(seed)
    aug = _Augmenter(series, params, model._knots)
    opt = torch.optim.AdamW(net.parameters(), lr=params.learning_rate, weight_decay=params.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * i / params.train_steps))
    )
    started = time.perf_counter()
    losses: list[float] = []
    for i in range(params.train_steps):
        x, y, mask = aug.batch(rng)
        out, _ = net.lstm(x)
        loss = _pinball(net.drops(out, model._widths, x[..., SLOPE_EWMA_COLUMN]), y, mask)
        opt.zero_grad()
        torch.autograd.backward(loss)
        nn.utils.clip_grad_norm_(net.parameters(), params.grad_clip_norm)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if progress is not None and ((i + 1) % 50 == 0 or i + 1 == params.train_steps):
            progress(i + 1, losses[-1])
    net.eval()
    # Report smoothed losses: single batches are noisy because each one is freshly augmented.
    window = max(1, min(20, len(losses) // 5))
    model.metrics = {
        "train_seconds": round(time.perf_counter() - started, 3),
        "train_histories": len(series),
        "train_cells": [h.cell_id for h in histories],
        "seed": seed,
        "loss_first": float(np.mean(losses[:window])),
        "loss_last": float(np.mean(losses[-window:])),
        "loss_history": [round(v, 6) for v in losses[:: max(1, len(losses) // 50)]],
    }
    _LOG.info(
        "Trained degradation LSTM on %d histories in %.1f s, loss %.4f -> %.4f.",
        len(series), model.metrics["train_seconds"], model.metrics["loss_first"], model.metrics["loss_last"],
    )  # fmt: skip
    return model

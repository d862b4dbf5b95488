"""LSTM forecaster of capacity fade and remaining useful life (RUL), one step per cycle.

What the model is
-----------------
A one-layer LSTM reads one input vector per completed (trusted) cycle, built by
:func:`cycle_inputs` from the cycle's state of health (SOH, capacity / nominal), its change
since the previous cycle and the cycle count. After each cycle a linear head maps the LSTM
output ``h_t`` to quantiles (p10, p50, p90) of the SOH *drop* ``soh_t - soh_{t+k}`` at a fixed
set of horizons ``k`` (the *knots*, 1 to 128 cycles by default); between knots the drop is
interpolated linearly, beyond the last knot it is extrapolated along the last segment. This is
the direct multi-horizon quantile design (MQ-RNN, Wen et al. 2017) rather than autoregressive
roll-outs: errors do not compound over a 100-cycle horizon, and the band is a calibrated
quantile band, learned with the pinball loss, not a Monte-Carlo spread.

The head is shaped so that every quantile curve is non-decreasing in the horizon (capacity
fade is monotone on average, even though single cycles recover after rests) and the three
curves never cross: increments between knots are ``softplus`` outputs, p10 <= p50 <= p90.
Only the drop at the first knot is free in sign, because a cycle right after a dip is often
followed by a recovery.

Remaining useful life to a threshold (80 % and 70 % of rated) is the first future cycle whose
forecast SOH is at or below it, read off each quantile curve: the pessimistic curve (p90 of the
drop) gives the RUL's p10, the median its p50. That equals the quantiles of the crossing time
when the future drop is driven by one latent severity (the curves are comonotone), which is the
assumption made here.

Everything is in SOH space, so cells of any rated capacity share one model, and the live
twins keep only ``(h, c)`` of width ``hidden_size`` per battery: :meth:`DegradationLSTM.step`
is the stateless batched step they call once per completed cycle.

Training (:func:`train`) uses every prefix of every history at once: the head is supervised
after each step with all future knots the history covers. Each batch is freshly drawn:

* training histories *replayed at another ageing speed*: stretched in time by a random factor
  whose log also drifts over the life, shifted in SOH and with measurement noise added, so a
  real cell stands for a family of faster and slower ones with the same SOH-dependent shape;
* a share (``synthetic_frac``) of *generic synthetic fade curves* (random rate and curvature,
  capacity recoveries after rests, noise; ``_synthetic_history``).

Why both: with three or four lab cells an LSTM learns to recognise *which* cell it is looking
at from the early cycles and replays that cell's future. The replayed and synthetic histories
break that shortcut and teach the rule that generalises, that the fade rate shown by the
recent history tends to persist; the real histories keep what happens near end of life.
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
from twins.cycle_inputs import CYCLE_INPUT_NAMES, cycle_inputs

__all__ = [
    "CYCLE_INPUT_NAMES",
    "QUANTILES",
    "DegradationLSTM",
    "DegradationParams",
    "Forecast",
    "StepOutput",
    "cycle_inputs",
    "train",
]

_LOG = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]
Float32Array = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]

#: Quantile levels of every band the model gives.
QUANTILES: tuple[float, float, float] = (0.1, 0.5, 0.9)
# Typical fade per cycle in SOH; the head's increment outputs are in these units.
_RATE_UNIT = 0.003
_WEIGHTS_FILE = "degradation_lstm.pt"
_META_FILE = "degradation_lstm.json"
_FORMAT_VERSION = 1


def _sequence_inputs(soh_frac: FloatArray) -> Float32Array:
    """:func:`cycle_inputs` of every cycle of one history, shape (len, 3)."""
    prev = np.concatenate([[np.nan], soh_frac[:-1]])
    return cycle_inputs(soh_frac, np.arange(1, len(soh_frac) + 1), prev)


@dataclass(frozen=True)
class DegradationParams:
    """Architecture and training knobs of :class:`DegradationLSTM`.

    Parameters
    ----------
    hidden_size
        Width of the LSTM state; the live twins store ``h`` and ``c`` of this width.
    horizon_knots_cycles
        Horizons (cycles ahead) at which the head predicts the drop; strictly increasing,
        starting at 1.
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
        Range of the time-stretch factor of a replayed training history (log-uniform); 1.25
        makes it 25 % longer, i.e. ageing 25 % slower.
    stretch_drift
        The ageing speed of a replayed history also drifts smoothly, its log by up to this
        much (uniform, either sign) over the life: rates change within a history too.
    soh_shift_frac
        Half-width of the uniform SOH shift added to a whole replayed history.
    synthetic_frac
        Share of each batch drawn from the generic synthetic fade model instead of the
        training histories (see ``_synthetic_history``); 0 trains on the histories only.
    noise_frac
        Standard deviation of the Gaussian noise added to each replayed cycle's SOH.
    torch_threads
        Threads torch may use while training and predicting (None leaves torch's setting).
    """

    hidden_size: int = 32
    horizon_knots_cycles: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 96, 128)
    train_steps: int = 1000
    batch_size: int = 32
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    grad_clip_norm: float = 1.0
    stretch_min: float = 0.6
    stretch_max: float = 1.6
    stretch_drift: float = 0.5
    soh_shift_frac: float = 0.03
    synthetic_frac: float = 0.5
    noise_frac: float = 0.002
    torch_threads: int | None = 1

    def __post_init__(self) -> None:
        if not 1 <= self.hidden_size <= 1024:
            raise ValueError(f"Expected hidden_size in [1, 1024], got {self.hidden_size}.")
        knots = self.horizon_knots_cycles
        if not knots or knots[0] != 1 or any(b <= a for a, b in itertools.pairwise(knots)):
            raise ValueError(
                f"Expected horizon_knots_cycles strictly increasing from 1, got {knots}."
            )
        for name in ("train_steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"Expected {name} >= 1, got {getattr(self, name)}.")
        for name in ("learning_rate", "grad_clip_norm"):
            if not getattr(self, name) > 0:
                raise ValueError(f"Expected {name} > 0, got {getattr(self, name)}.")
        for name in ("weight_decay", "soh_shift_frac", "noise_frac", "stretch_drift"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"Expected {name} >= 0, got {getattr(self, name)}.")
        if not 0 <= self.synthetic_frac <= 1:
            raise ValueError(f"Expected synthetic_frac in [0, 1], got {self.synthetic_frac}.")
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
        if "horizon_knots_cycles" in values:
            values["horizon_knots_cycles"] = tuple(int(k) for k in values["horizon_knots_cycles"])
        return cls(**values)


@dataclass(frozen=True)
class StepOutput:
    """What the model says after one cycle, for a batch of n batteries.

    Parameters
    ----------
    horizons_cycles
        The knots, shape (K,): cycles ahead.
    drop_quantiles
        p10, p50, p90 of the SOH drop ``soh_now - soh_{now+k}`` at each knot, shape (n, K, 3).
    """

    horizons_cycles: IntArray
    drop_quantiles: FloatArray


@dataclass(frozen=True)
class Forecast:
    """Forecast of n batteries from their current state.

    Parameters
    ----------
    soh
        p10, p50, p90 of SOH for the next cycles 1..horizon, shape (n, horizon, 3).
    rul_80_cycles, rul_70_cycles
        p10, p50, p90 of the cycles until SOH is first at or below 80 % / 70 % of rated,
        shape (n, 3): 0 if it is already there; counted by the extrapolated curves, so it may
        exceed the horizon (``inf`` only if a curve stops falling).
    """

    soh: FloatArray
    rul_80_cycles: FloatArray
    rul_70_cycles: FloatArray


class _Net(nn.Module):
    def __init__(self, n_inputs: int, hidden_size: int, n_knots: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(n_inputs, hidden_size, num_layers=1, batch_first=True)
        self.head = nn.Linear(hidden_size, 3 * n_knots)
        self.n_knots = n_knots

    def drops(self, out: torch.Tensor, widths: torch.Tensor) -> torch.Tensor:
        """Monotone, non-crossing drop quantiles (..., K, 3) from LSTM outputs (..., H)."""
        raw = self.head(out).unflatten(-1, (3, self.n_knots))
        first = raw[..., 0, :1] * _RATE_UNIT
        # Increments between knots, per cycle of horizon, in units of a typical fade rate.
        rate50 = nn.functional.softplus(raw[..., 0, 1:]) * _RATE_UNIT
        # Channel 1: p10's offset at the first knot, then p10's share of p50's increments;
        # channel 2: p90's offset, then its extra increments.
        below = nn.functional.softplus(raw[..., 1, :1]) * _RATE_UNIT
        above = nn.functional.softplus(raw[..., 2, :]) * _RATE_UNIT
        d50 = torch.cat([first, first + torch.cumsum(rate50 * widths, dim=-1)], dim=-1)
        # p10 grows by a fraction of p50's increments, p90 by more: neither crosses p50.
        frac10 = torch.sigmoid(raw[..., 1, 1:])
        d10_inc = torch.cumsum(rate50 * frac10 * widths, dim=-1)
        d90_inc = torch.cumsum((rate50 + above[..., 1:]) * widths, dim=-1)
        d10 = torch.cat([first - below, first - below + d10_inc], dim=-1)
        d90 = torch.cat([first + above[..., :1], first + above[..., :1] + d90_inc], dim=-1)
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
            self._net = _Net(
                len(CYCLE_INPUT_NAMES), params.hidden_size, len(params.horizon_knots_cycles)
            )
        if state_dict is not None:
            self._net.load_state_dict(state_dict)
        self._net.eval()
        knots = np.asarray(params.horizon_knots_cycles, dtype=np.int64)
        self._knots = knots
        self._widths = torch.tensor(np.diff(knots), dtype=torch.float32)
        self.metrics: dict[str, Any] = dict(metrics or {})

    @property
    def hidden_size(self) -> int:
        """Width of ``h`` and ``c``."""
        return self.params.hidden_size

    @property
    def n_inputs(self) -> int:
        """Width of one :func:`cycle_inputs` row."""
        return len(CYCLE_INPUT_NAMES)

    def initial_state(self, n: int) -> tuple[Float32Array, Float32Array]:
        """``(h, c)`` of n batteries before their first cycle: zeros, shape (n, hidden)."""
        z = np.zeros((n, self.hidden_size), dtype=np.float32)
        return z, z.copy()

    def _head(self, out: torch.Tensor) -> torch.Tensor:
        return self._net.drops(out, self._widths)

    def step(
        self, x: npt.ArrayLike, h: npt.ArrayLike, c: npt.ArrayLike
    ) -> tuple[StepOutput, Float32Array, Float32Array]:
        """Advance n batteries by one completed cycle each (stateless, batched).

        Parameters
        ----------
        x
            :func:`cycle_inputs` of the cycle just completed, shape (n, n_inputs), float32.
        h, c
            LSTM state of each battery before this cycle, shape (n, hidden_size).

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
            out, (h1, c1) = self._net.lstm(
                torch.from_numpy(np.ascontiguousarray(xa)).unsqueeze(1),
                (h0.unsqueeze(0), c0.unsqueeze(0)),
            )
            drops = self._head(out[:, 0]).double().numpy()
        return (
            StepOutput(horizons_cycles=self._knots.copy(), drop_quantiles=drops),
            h1[0].numpy().copy(),
            c1[0].numpy().copy(),
        )

    def encode(
        self, soh_histories: Sequence[npt.ArrayLike]
    ) -> tuple[Float32Array, Float32Array]:
        """State after running each history from a zero state, all at once.

        Parameters
        ----------
        soh_histories
            n SOH series (clean cycles 1..len), of any lengths >= 1.

        Returns
        -------
        tuple
            ``(h, c)``, each float32 of shape (n, hidden_size); the same as calling
            :meth:`step` once per cycle.
        """
        series = [np.asarray(s, dtype=np.float64).ravel() for s in soh_histories]
        if not series or any(len(s) < 1 for s in series):
            raise ValueError(
                f"Expected one or more non-empty SOH histories, got lengths {[len(s) for s in series]}."
            )
        x, lengths = _pad([_sequence_inputs(s) for s in series])
        with torch.no_grad(), _torch_threads(self.params.torch_threads):
            packed = nn.utils.rnn.pack_padded_sequence(
                torch.from_numpy(x), torch.from_numpy(lengths), batch_first=True, enforce_sorted=False
            )
            _, (h, c) = self._net.lstm(packed)
        return h[0].numpy().copy(), c[0].numpy().copy()

    def drop_quantiles(self, h: npt.ArrayLike) -> FloatArray:
        """p10/p50/p90 of the SOH drop at each knot from LSTM outputs ``h``, shape (n, K, 3)."""
        ha = np.asarray(h, dtype=np.float32)
        if ha.ndim != 2 or ha.shape[1] != self.hidden_size:
            raise ValueError(f"Expected h of shape (n, {self.hidden_size}), got {ha.shape}.")
        with torch.no_grad(), _torch_threads(self.params.torch_threads):
            return self._head(torch.from_numpy(np.ascontiguousarray(ha))).double().numpy()

    def _drops_and_soh(
        self, h: npt.ArrayLike, last_soh_frac: npt.ArrayLike
    ) -> tuple[FloatArray, FloatArray]:
        drops = self.drop_quantiles(h)
        soh_now = np.asarray(last_soh_frac, dtype=np.float64).reshape(-1)
        if soh_now.shape != (drops.shape[0],) or not bool(np.all(np.isfinite(soh_now))):
            raise ValueError(
                f"Expected finite last_soh_frac of shape ({drops.shape[0]},), "
                f"got shape {soh_now.shape}: {soh_now.tolist()[:10]}."
            )
        return drops, soh_now

    def remaining_useful_life(
        self, h: npt.ArrayLike, last_soh_frac: npt.ArrayLike, threshold_frac: float
    ) -> FloatArray:
        """Cycles until SOH is first at or below ``threshold_frac``, p10/p50/p90, shape (n, 3).

        Whole cycles after the last completed one; 0 if a battery is already at or below the
        threshold. The drop curves are extrapolated past the last knot, so the RUL may exceed
        any forecast horizon; it is ``inf`` only where a curve has stopped falling.
        """
        if not 0 < threshold_frac < 1.5:
            raise ValueError(f"Expected threshold_frac in (0, 1.5), got {threshold_frac}.")
        drops, soh_now = self._drops_and_soh(h, last_soh_frac)
        return _cycles_to(self._knots, drops, soh_now, threshold_frac)

    def forecast(
        self, h: npt.ArrayLike, last_soh_frac: npt.ArrayLike, horizon_cycles: int = 200
    ) -> Forecast:
        """Forecast SOH trajectories and RUL of n batteries from their current state.

        Parameters
        ----------
        h
            LSTM output after each battery's last completed cycle, shape (n, hidden_size)
            (the head reads ``h`` only; ``c`` carries memory into the next step).
        last_soh_frac
            SOH of that last cycle, shape (n,): the forecast is relative to it.
        horizon_cycles
            Number of future cycles in :attr:`Forecast.soh`.

        Returns
        -------
        Forecast
            Trajectory quantiles and RUL quantiles to 80 % and 70 % of rated.
        """
        if horizon_cycles < 1:
            raise ValueError(f"Expected horizon_cycles >= 1, got {horizon_cycles}.")
        drops, soh_now = self._drops_and_soh(h, last_soh_frac)
        future = np.arange(1, horizon_cycles + 1, dtype=np.float64)
        drop_curve = _interp_knots(self._knots, drops, future)
        # p10 of SOH comes from p90 of the drop: reverse the last axis.
        soh = soh_now[:, None, None] - drop_curve[..., ::-1]
        return Forecast(
            soh=soh,
            rul_80_cycles=_cycles_to(self._knots, drops, soh_now, 0.8),
            rul_70_cycles=_cycles_to(self._knots, drops, soh_now, 0.7),
        )

    def forecast_histories(
        self, soh_histories: Sequence[npt.ArrayLike], horizon_cycles: int = 200
    ) -> Forecast:
        """:meth:`encode` then :meth:`forecast`: forecast cells from their SOH so far."""
        h, _ = self.encode(soh_histories)
        last = np.array([float(np.asarray(s, dtype=np.float64).ravel()[-1]) for s in soh_histories])
        return self.forecast(h, last, horizon_cycles)

    def save(self, directory: Path) -> None:
        """Write the weights (torch state dict) and JSON metadata (params, metrics)."""
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
                f"got {meta.get('format_version')!r}."
            )
        if meta.get("cycle_inputs") != list(CYCLE_INPUT_NAMES):
            raise ValueError(
                f"Expected cycle_inputs {list(CYCLE_INPUT_NAMES)} in {meta_path}, "
                f"got {meta.get('cycle_inputs')!r}."
            )
        state = torch.load(directory / _WEIGHTS_FILE, weights_only=True)
        return cls(DegradationParams.from_dict(meta["params"]), state_dict=state, metrics=meta["metrics"])


def _pad(seqs: Sequence[Float32Array]) -> tuple[Float32Array, IntArray]:
    lengths = np.array([len(s) for s in seqs], dtype=np.int64)
    out = np.zeros((len(seqs), int(lengths.max()), seqs[0].shape[1]), dtype=np.float32)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
    return out, lengths


def _interp_knots(knots: IntArray, drops: FloatArray, at: FloatArray) -> FloatArray:
    """Drop curves (n, len(at), 3) at horizons ``at`` (>= 1), linear past the last knot."""
    k = knots.astype(np.float64)
    if len(k) == 1:
        return np.broadcast_to(drops[:, :1, :], (drops.shape[0], len(at), 3)).copy()
    seg = np.clip(np.searchsorted(k, at, side="right") - 1, 0, len(k) - 2)
    w = (at - k[seg]) / (k[seg + 1] - k[seg])
    lo, hi = drops[:, seg, :], drops[:, seg + 1, :]
    return lo + w[None, :, None] * (hi - lo)


def _cycles_to(
    knots: IntArray, drops: FloatArray, soh_now: FloatArray, threshold_frac: float
) -> FloatArray:
    """First whole future cycle at or below the threshold per battery and quantile, (n, 3)."""
    k = knots.astype(np.float64)
    # RUL quantile q comes from drop quantile 1 - q.
    d = drops[..., ::-1]
    need = (soh_now - threshold_frac)[:, None]  # drop still to go, (n, 1)
    n = d.shape[0]
    out = np.empty((n, 3), dtype=np.float64)
    for q in range(3):
        dq = d[:, :, q]
        reached = dq >= need
        first = np.argmax(reached, axis=1)
        any_reached = reached.any(axis=1)
        prev = np.maximum(first - 1, 0)
        d_lo, d_hi = dq[np.arange(n), prev], dq[np.arange(n), first]
        k_lo, k_hi = k[prev], k[first]
        with np.errstate(divide="ignore", invalid="ignore"):
            inside = np.where(
                d_hi > d_lo, k_lo + (need[:, 0] - d_lo) / (d_hi - d_lo) * (k_hi - k_lo), k_hi
            )
            inside = np.where(first == 0, k[0], inside)
            if len(k) > 1:
                slope = (dq[:, -1] - dq[:, -2]) / (k[-1] - k[-2])
            else:
                slope = np.zeros(n)
            beyond = np.where(slope > 0, k[-1] + (need[:, 0] - dq[:, -1]) / slope, math.inf)
        cycles = np.where(any_reached, inside, beyond)
        out[:, q] = np.where(need[:, 0] <= 0, 0.0, np.ceil(cycles - 1e-9))
    return out


def _synthetic_history(rng: np.random.Generator) -> FloatArray:
    """One synthetic SOH history of a generic fading cell (see :class:`DegradationParams`).

    The trend fades at a base rate (log-uniform 0.1 %..0.4 % of rated per cycle) that changes
    linearly over the life by up to +-60 % (decelerating and accelerating fade equally likely)
    after an early slow phase of up to 30 % of the life. On top sit the capacity recoveries
    seen after rest periods in lab data (every 10..40 cycles a jump of up to 4 % that relaxes
    within a few cycles) and measurement noise. It teaches the one thing three or four lab
    cells cannot: that a fade rate read from the recent history tends to persist.
    """
    n = int(rng.integers(80, 260))
    k = np.arange(n, dtype=np.float64)
    soh_start = rng.uniform(0.88, 1.02)
    rate = math.exp(rng.uniform(math.log(0.001), math.log(0.004)))
    accel = rng.uniform(-0.6, 0.6)
    onset = rng.uniform(0.0, 0.3) * n
    rates = rate * (1.0 + accel * k / n) * np.where(k < onset, 0.3, 1.0)
    soh = soh_start - np.cumsum(np.maximum(rates, 0.0))
    rest = rng.uniform(5, 40)
    while rest < n:
        tau = rng.uniform(1.0, 6.0)
        jump = rng.uniform(0.0, 0.04)
        after = k >= int(rest)
        soh[after] += jump * np.exp(-(k[after] - int(rest)) / tau)
        rest += rng.uniform(10, 40)
    out: FloatArray = soh + rng.normal(0.0, rng.uniform(0.0005, 0.003), size=n)
    return out


@dataclass(frozen=True)
class _Augmenter:
    """Random variants of the training histories (see :class:`DegradationParams`)."""

    series: tuple[FloatArray, ...]
    params: DegradationParams
    knots: IntArray
    weights: FloatArray = field(init=False)

    def __post_init__(self) -> None:
        lengths = np.array([len(s) for s in self.series], dtype=np.float64)
        # Long histories carry most of the information about the later horizons.
        object.__setattr__(self, "weights", lengths / lengths.sum())

    def warped(self, rng: np.random.Generator) -> FloatArray:
        """A training history replayed at another, smoothly drifting, ageing speed."""
        p = self.params
        base = self.series[int(rng.choice(len(self.series), p=self.weights))]
        stretch = math.exp(rng.uniform(math.log(p.stretch_min), math.log(p.stretch_max)))
        drift = rng.uniform(-p.stretch_drift, p.stretch_drift)
        # Source cycles advanced per new cycle: 1/stretch at the start, changing (in log) by
        # `drift` per expected life. SOH levels, and whatever happens at them, stay real.
        n_guess = max(1, round(len(base) * stretch))
        speed = np.exp(-math.log(stretch) + drift * np.arange(4 * n_guess + 8) / n_guess)
        pos = np.concatenate([[0.0], np.cumsum(speed)])
        pos = pos[pos <= len(base) - 1]
        soh = np.interp(pos, np.arange(len(base)), base)
        soh = soh + rng.uniform(-p.soh_shift_frac, p.soh_shift_frac)
        out: FloatArray = soh + rng.normal(0.0, p.noise_frac, size=len(soh))
        return out

    def batch(self, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Inputs (B, T, 3), drop targets (B, T, K) and their mask (B, T, K)."""
        seqs = [
            _synthetic_history(rng) if rng.uniform() < self.params.synthetic_frac else self.warped(rng)
            for _ in range(self.params.batch_size)
        ]
        x, _ = _pad([_sequence_inputs(s) for s in seqs])
        t_max, n_k = x.shape[1], len(self.knots)
        y = np.zeros((len(seqs), t_max, n_k), dtype=np.float32)
        mask = np.zeros_like(y)
        for i, s in enumerate(seqs):
            for j, kk in enumerate(self.knots):
                if kk < len(s):
                    # Every prefix is a training example: the drop from each cycle to kk later.
                    y[i, : len(s) - kk, j] = s[: len(s) - kk] - s[kk:]
                    mask[i, : len(s) - kk, j] = 1.0
        return torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(mask)


def _pinball(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean pinball (quantile) loss of (..., K, 3) predictions over the unmasked targets."""
    q = torch.tensor(QUANTILES, dtype=pred.dtype)
    err = target.unsqueeze(-1) - pred
    loss = torch.maximum(q * err, (q - 1) * err).sum(-1)
    return (loss * mask).sum() / mask.sum().clamp(min=1.0)


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
        Training cells; each is used through :meth:`CellHistory.clean`, in SOH.
    params
        Architecture and training knobs (defaults if None).
    seed
        Seeds the weights, the augmentation and the batch order: same inputs, same model.
    progress
        Called as ``progress(step, loss)`` every 50 steps and at the end.

    Returns
    -------
    DegradationLSTM
        The model, with ``metrics`` holding the loss history and training time.
    """
    params = params or DegradationParams()
    with _torch_threads(params.torch_threads):
        return _train(histories, params, seed, progress)


def _train(
    histories: Sequence[CellHistory],
    params: DegradationParams,
    seed: int,
    progress: Callable[[int, float], None] | None,
) -> DegradationLSTM:
    series = tuple(s for h in histories if len(s := h.clean().soh()) >= 2)
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
        loss = _pinball(net.drops(out, model._widths), y, mask)
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
    _LOG.info("Trained degradation LSTM on %d histories: %s", len(series), model.metrics)
    return model

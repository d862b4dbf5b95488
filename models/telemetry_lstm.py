"""LSTM prediction-error detector: how surprising is each battery's next sample?

A small LSTM reads a telemetry window step by step and predicts the next sample's change in
pack voltage and temperature. At step ``t`` it sees the sample (voltage, current,
temperature, SOC, cell spread) and, for the interval it predicts, the time step and the
current the rider *will* draw: the voltage answers the current within the same sample
(``V = OCV - I R``), so without the next current most of the error would be the rider's
throttle rather than the battery. Along the window the LSTM can learn the battery's own
resistance and heating, so a pack whose behaviour changes mid-window is mispredicted.

The network predicts a mean and a variance for every step (trained by Gaussian likelihood),
so each error is read in units of the spread expected for that step. The anomaly score is
a z of the recent error: the root mean square of the last ``recent_samples`` standardised
errors, against the median and MAD of that statistic over held-out normal windows.

Training and scoring run on the CPU with ``torch_threads`` threads (1 by default: the
detector shares its host with the twin shard).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from twins.telemetry_windows import TelemetryWindows

__all__ = ["TelemetryLSTM", "TelemetryLSTMParams"]

FloatArray = npt.NDArray[np.float64]
Float32Array = npt.NDArray[np.float32]
BoolArray = npt.NDArray[np.bool_]

_MAD_TO_STD = 1.4826
#: Input channels: sample values at t, then what is known about the interval t -> t + 1.
INPUT_NAMES = (
    "pack_voltage_v",
    "current_a",
    "temp_rise_c",
    "soc_pct",
    "cell_spread_v",
    "log_dt_s",
    "next_current_a",
)
#: Predicted: change over the interval t -> t + 1.
TARGET_NAMES = ("d_pack_voltage_v", "d_temp_c")
_WEIGHTS_FILE = "telemetry_lstm.pt"
_META_FILE = "telemetry_lstm.json"


@dataclass(frozen=True)
class TelemetryLSTMParams:
    """Network size, training schedule and scoring knobs.

    Parameters
    ----------
    hidden_size, num_layers
        LSTM width and depth.
    epochs, batch_size, learning_rate
        Adam over shuffled training windows.
    validation_fraction
        Share of the training windows held out to learn the error distribution: errors
        on windows the network was fitted to would be optimistic.
    recent_samples
        The score reads the errors of this many latest predicted samples.
    min_samples
        Windows with fewer valid samples are not evaluable (score 0).
    z_threshold
        Flag above this z.
    seed
        Seeds weights, shuffling and the validation split.
    torch_threads
        ``torch.set_num_threads`` while training and scoring (restored afterwards).
    score_batch_size
        Windows per forward pass when scoring.
    """

    hidden_size: int = 32
    num_layers: int = 1
    epochs: int = 20
    batch_size: int = 128
    learning_rate: float = 3e-3
    validation_fraction: float = 0.2
    recent_samples: int = 8
    min_samples: int = 24
    z_threshold: float = 8.0
    seed: int = 0
    torch_threads: int = 1
    score_batch_size: int = 4096

    def __post_init__(self) -> None:
        for name in (
            "hidden_size",
            "num_layers",
            "epochs",
            "batch_size",
            "recent_samples",
            "torch_threads",
            "score_batch_size",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"Expected {name} >= 1, got {getattr(self, name)}.")
        if self.min_samples < self.recent_samples + 1:
            raise ValueError(
                f"Expected min_samples > recent_samples ({self.recent_samples}), got "
                f"{self.min_samples}."
            )
        if not 0.0 < self.validation_fraction < 1.0:
            raise ValueError(
                f"Expected validation_fraction in (0, 1), got {self.validation_fraction}."
            )
        if not self.learning_rate > 0 or not self.z_threshold > 0:
            raise ValueError(
                f"Expected learning_rate > 0 and z_threshold > 0, got {self.learning_rate} "
                f"and {self.z_threshold}."
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TelemetryLSTMParams:
        """Inverse of :meth:`to_dict`."""
        return cls(**data)


class _Net(nn.Module):
    """LSTM over the steps of a window; linear read-out of the next change's mean and
    log-variance (one pair per target)."""

    def __init__(self, n_inputs: int, hidden_size: int, num_layers: int, n_outputs: int) -> None:
        super().__init__()
        self.n_outputs = n_outputs
        self.lstm = nn.LSTM(n_inputs, hidden_size, num_layers=num_layers, batch_first=True)
        self.head = nn.Linear(hidden_size, 2 * n_outputs)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, _ = self.lstm(x)
        y: torch.Tensor = self.head(out)
        mean, log_var = y[..., : self.n_outputs], y[..., self.n_outputs :]
        # Bounded so one badly fitted step can neither blow up nor zero the likelihood.
        return mean, log_var.clamp(-12.0, 6.0)


@dataclass(frozen=True)
class _Steps:
    """Raw (unnormalised) inputs and targets of every step of every window."""

    x: FloatArray  # (n, W - 1, len(INPUT_NAMES))
    y: FloatArray  # (n, W - 1, len(TARGET_NAMES))
    ok: BoolArray  # (n, W - 1) both ends of the step are valid samples


def _steps(windows: TelemetryWindows) -> _Steps:
    v = windows.column("pack_voltage_v")
    i = windows.column("current_a")
    t = windows.column("temp_c")
    # Temperature enters relative to the window's oldest sample: the absolute level follows
    # the weather, and a network that keys on it mistakes a cold night for an anomaly.
    first_t = t[np.arange(windows.n), windows.window_samples - np.maximum(windows.lengths, 1)]
    t_rel = t - first_t[:, None]
    soc = windows.column("soc_pct")
    spread = windows.column("cell_max_v") - windows.column("cell_min_v")
    ts = windows.ts_s
    dt_s = np.diff(ts, axis=1)
    x = np.stack(
        [
            v[:, :-1],
            i[:, :-1],
            t_rel[:, :-1],
            soc[:, :-1],
            spread[:, :-1],
            np.log1p(np.where(dt_s > 0, dt_s, np.nan)),
            i[:, 1:],
        ],
        axis=2,
    )
    y = np.stack([np.diff(v, axis=1), np.diff(t, axis=1)], axis=2)
    valid = windows.valid
    # Cell spread is optional telemetry: a missing one must not void the step.
    core = np.delete(x, INPUT_NAMES.index("cell_spread_v"), axis=2)
    ok = valid[:, 1:] & valid[:, :-1] & np.isfinite(core).all(axis=2) & np.isfinite(y).all(axis=2)
    return _Steps(x, y, ok)


class TelemetryLSTM:
    """Next-sample prediction-error detector.

    Parameters
    ----------
    params
        Network, training and scoring knobs.
    """

    def __init__(self, params: TelemetryLSTMParams | None = None) -> None:
        self.params = params or TelemetryLSTMParams()
        p = self.params
        self.net = _Net(len(INPUT_NAMES), p.hidden_size, p.num_layers, len(TARGET_NAMES))
        self.x_mean = np.zeros(len(INPUT_NAMES))
        self.x_std = np.ones(len(INPUT_NAMES))
        self.y_std = np.ones(len(TARGET_NAMES))
        self.score_center = 0.0
        self.score_scale = 1.0
        self.fitted = False
        self.train_losses: list[float] = []

    # ------------------------------------------------------------------ tensors
    def _tensors(self, steps: _Steps) -> tuple[Float32Array, Float32Array]:
        x = (steps.x - self.x_mean) / self.x_std
        x = np.where(np.isfinite(x) & steps.ok[:, :, None], x, 0.0)
        y = steps.y / self.y_std
        y = np.where(steps.ok[:, :, None], y, 0.0)
        return x.astype(np.float32), y.astype(np.float32)

    @contextmanager
    def _threads(self) -> Iterator[None]:
        before = torch.get_num_threads()
        torch.set_num_threads(self.params.torch_threads)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    # ------------------------------------------------------------------ train
    def train(self, windows: TelemetryWindows) -> TelemetryLSTM:
        """Fit on normal windows, then learn the error distribution on a held-out share.

        Returns
        -------
        TelemetryLSTM
            ``self``; ``train_losses`` holds the mean training loss of every epoch.
        """
        p = self.params
        eligible = np.flatnonzero(windows.lengths >= p.min_samples)
        if eligible.size < 10:
            raise ValueError(
                f"Expected >= 10 training windows with >= {p.min_samples} samples, got "
                f"{eligible.size}."
            )
        rng = np.random.default_rng(p.seed)
        order = rng.permutation(eligible)
        n_val = max(1, round(p.validation_fraction * order.size))
        train_idx, val_idx = np.sort(order[n_val:]), np.sort(order[:n_val])
        steps = _steps(windows.take(train_idx))
        ok = steps.ok
        x_ok = steps.x[ok]
        self.x_mean = np.nanmean(x_ok, axis=0)
        self.x_std = np.maximum(np.nanstd(x_ok, axis=0), 1e-6)
        self.y_std = np.maximum(steps.y[ok].std(axis=0), 1e-6)
        x, y = self._tensors(steps)
        mask = ok.astype(np.float32)

        torch.manual_seed(p.seed)
        self.net = _Net(len(INPUT_NAMES), p.hidden_size, p.num_layers, len(TARGET_NAMES))
        opt = torch.optim.Adam(self.net.parameters(), lr=p.learning_rate)
        xt, yt, mt = torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(mask)
        self.train_losses = []
        with self._threads():
            self.net.train()
            for _ in range(p.epochs):
                perm = torch.from_numpy(rng.permutation(xt.shape[0]))
                total, weight = 0.0, 0.0
                for start in range(0, xt.shape[0], p.batch_size):
                    b = perm[start : start + p.batch_size]
                    m = mt[b]
                    mean, log_var = self.net(xt[b])
                    # Gaussian negative log-likelihood: the network also learns how
                    # uncertain each step is (a minute parked after a ride is less
                    # predictable than five seconds of cruising), so errors are judged
                    # against the spread expected for that very step.
                    nll = 0.5 * (log_var + (yt[b] - mean) ** 2 * torch.exp(-log_var))
                    loss = (nll.mean(dim=2) * m).sum() / m.sum().clamp(min=1.0)
                    opt.zero_grad()
                    loss.backward()
                    # Clipped: a window with a long parked gap can still give a large step.
                    nn.utils.clip_grad_norm_(self.net.parameters(), 1.0)
                    opt.step()
                    n_steps = float(m.sum())
                    total += loss.item() * n_steps
                    weight += n_steps
                self.train_losses.append(total / max(weight, 1.0))
            self.net.eval()

        val = windows.take(val_idx)
        err, ok_val = self._errors(val)
        self.fitted = True
        raw = self._raw_scores(val, err, ok_val)
        raw = raw[val.lengths >= p.min_samples]
        self.score_center = float(np.median(raw))
        self.score_scale = max(_robust_scale(raw), 1e-6)
        return self

    # ------------------------------------------------------------------ score
    def _errors(self, windows: TelemetryWindows) -> tuple[FloatArray, BoolArray]:
        """Prediction minus truth in units of the predicted std, ``(n, W - 1, outputs)``."""
        steps = _steps(windows)
        x, y = self._tensors(steps)
        z = np.empty(y.shape, dtype=np.float64)
        with self._threads(), torch.no_grad():
            for start in range(0, x.shape[0], self.params.score_batch_size):
                chunk = torch.from_numpy(x[start : start + self.params.score_batch_size])
                mean, log_var = self.net(chunk)
                stop = start + chunk.shape[0]
                z[start:stop] = (mean.numpy() - y[start:stop]) * np.exp(-0.5 * log_var.numpy())
        return z, steps.ok

    def _raw_scores(self, windows: TelemetryWindows, err: FloatArray, ok: BoolArray) -> FloatArray:
        k = self.params.recent_samples
        # Step j predicts sample j + 1: it is recent when that sample is.
        recent = ok & windows.recent(k)[:, 1:]
        e2 = (err**2).mean(axis=2)
        n = recent.sum(axis=1)
        out: FloatArray = np.sqrt(np.where(recent, e2, 0.0).sum(axis=1) / np.maximum(n, 1))
        return np.where(n > 0, out, 0.0)

    def score(self, windows: TelemetryWindows) -> FloatArray:
        """Prediction-error z of every battery (0 where the window is too short).

        Returns
        -------
        numpy.ndarray
            ``(n,)`` float64; positive is worse than typical normal windows.
        """
        if not self.fitted:
            raise RuntimeError("TelemetryLSTM is not trained: call train() or load() first.")
        if windows.n == 0:
            return np.zeros(0)
        err, ok = self._errors(windows)
        raw = self._raw_scores(windows, err, ok)
        z = (raw - self.score_center) / self.score_scale
        out: FloatArray = np.where(windows.lengths >= self.params.min_samples, z, 0.0)
        return out

    def flags(self, scores: FloatArray) -> BoolArray:
        """``scores`` above the threshold."""
        out: BoolArray = scores > self.params.z_threshold
        return out

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | Path) -> None:
        """Write the weights (``telemetry_lstm.pt``) and metadata (``telemetry_lstm.json``)."""
        if not self.fitted:
            raise RuntimeError("TelemetryLSTM is not trained: nothing to save.")
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        torch.save(self.net.state_dict(), path / _WEIGHTS_FILE)
        meta = {
            "params": self.params.to_dict(),
            "inputs": list(INPUT_NAMES),
            "targets": list(TARGET_NAMES),
            "x_mean": self.x_mean.tolist(),
            "x_std": self.x_std.tolist(),
            "y_std": self.y_std.tolist(),
            "score_center": self.score_center,
            "score_scale": self.score_scale,
            "train_losses": self.train_losses,
        }
        (path / _META_FILE).write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(cls, directory: str | Path) -> TelemetryLSTM:
        """A trained detector written by :meth:`save`."""
        path = Path(directory)
        meta = json.loads((path / _META_FILE).read_text())
        if meta["inputs"] != list(INPUT_NAMES) or meta["targets"] != list(TARGET_NAMES):
            raise ValueError(
                f"Expected inputs {INPUT_NAMES} and targets {TARGET_NAMES}, got "
                f"{meta['inputs']} and {meta['targets']} in {path / _META_FILE}."
            )
        model = cls(TelemetryLSTMParams.from_dict(meta["params"]))
        state = torch.load(path / _WEIGHTS_FILE, weights_only=True)
        model.net.load_state_dict(state)
        model.net.eval()
        model.x_mean = np.asarray(meta["x_mean"], dtype=np.float64)
        model.x_std = np.asarray(meta["x_std"], dtype=np.float64)
        model.y_std = np.asarray(meta["y_std"], dtype=np.float64)
        model.score_center = float(meta["score_center"])
        model.score_scale = float(meta["score_scale"])
        model.train_losses = [float(v) for v in meta["train_losses"]]
        model.fitted = True
        return model


def _robust_scale(x: FloatArray) -> float:
    """1.4826 * MAD."""
    if x.size == 0:
        return 0.0
    return float(_MAD_TO_STD * np.median(np.abs(x - np.median(x))))

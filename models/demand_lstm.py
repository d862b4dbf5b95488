"""Ride demand per zone for the next 24 hours: an LSTM over recent rides, weather-aware.

For a batch of zones at one forecast time, the model sees each zone's rides over the last
``history_hours`` (one week by default), the calendar, the weather of those hours and the
weather forecast for the next 24 hours, and returns the expected rides of each of the next
24 hours. One model serves busy and quiet zones alike: every zone's rides are divided by
its own mean over the history (its *scale*), the network predicts a multiple of that
scale, and the forecast is multiplied back.

Pipeline, shared by training and serving::

    DemandInputs --build_features--> DemandFeatures --_DemandNet--> multiplier * scale

* encoder: an LSTM over the last ``encoder_hours`` hours, each step holding the zone's
  relative rides, hour of day (sin, cos), weekend flag, temperature and precipitation;
* head: for each of the 24 future hours, an MLP on the encoder's last state, that hour's
  calendar and forecast weather, the zone's relative rides at the same hour yesterday and
  a week ago, its mean at that hour over the history, the rain at those two lags (so the
  model can discount a lag that fell in rain) and the log of the zone's scale.

The LSTM reads the last two days hourly; weekly seasonality reaches the head through the
lag features rather than through a 168-step recurrence, which would cost 3.5 times the
compute for information the lags carry directly.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn
from torch.nn import functional

from contracts.ride_history import DEMAND_HORIZON_HOURS, RideHistory
from contracts.weather import WeatherHours
from models.inference_device import InferenceDevice

__all__ = [
    "DECODER_FEATURES",
    "ENCODER_FEATURES",
    "HORIZON_HOURS",
    "DemandEvaluation",
    "DemandFeatures",
    "DemandInputs",
    "DemandLSTM",
    "DemandLstmParams",
    "ForecastErrors",
    "build_features",
    "evaluate",
    "train",
]

FloatArray = npt.NDArray[np.float64]
Float32Array = npt.NDArray[np.float32]

HORIZON_HOURS = DEMAND_HORIZON_HOURS
#: Per-step inputs of the encoder LSTM, in order.
ENCODER_FEATURES: tuple[str, ...] = (
    "rides_rel",
    "hour_sin",
    "hour_cos",
    "weekend",
    "temp",
    "precipitation",
)
#: Per-future-hour inputs of the head (besides the encoder state), in order.
DECODER_FEATURES: tuple[str, ...] = (
    "hour_sin",
    "hour_cos",
    "weekend",
    "temp",
    "precipitation",
    "precipitation_lag_24h",
    "precipitation_lag_168h",
    "rides_rel_lag_24h",
    "rides_rel_lag_168h",
    "rides_rel_same_hour_mean",
    "log_scale",
)

_S_PER_HOUR = 3600
_S_PER_DAY = 86_400
_EPOCH_WEEKDAY = 3  # 1970-01-01 was a Thursday (Monday = 0).
_WEEK_H = 168
# Fixed, not fitted, feature scaling: nothing to persist or to drift between training and
# serving, and temperatures of -20..40 °C map to -3.5..2.5.
_TEMP_CENTRE_C = 15.0
_TEMP_SPREAD_C = 10.0
_FORMAT = "demand_lstm/1"
_WEIGHTS_FILE = "weights.pt"
_META_FILE = "meta.json"
_PREDICT_CHUNK_ZONES = 8192


@dataclass(frozen=True, kw_only=True)
class DemandLstmParams:
    """Shape of the forecaster and how it is trained.

    Parameters
    ----------
    history_hours
        Hours of past rides per forecast; at least a week (the head's same-hour-last-week
        lag) and whole days (the same-hour mean).
    encoder_hours
        The most recent hours the LSTM runs over (the rest reaches the head as lags).
    hidden_size, num_layers, dropout
        LSTM width, depth and dropout between layers (only with ``num_layers > 1``); the
        head's hidden layer is ``hidden_size`` wide too.
    epochs, batch_size, learning_rate, weight_decay
        Adam over all training windows, shuffled every epoch, with a cosine-decaying
        learning rate and gradient norm clipped at 1.
    origin_stride_hours
        Hours between the forecast times of consecutive training windows. Every window
        covers all zones, so 1 gives ``zones * (hours - history_hours - 23)`` samples.
    min_scale_rides_per_h
        Floor of a zone's scale, so that a zone without rides in its history neither
        divides by zero nor blows its few future rides up into huge relative targets.
    utc_offset_h
        Local time offset of the city, for hour of day and weekend.
    torch_threads
        Threads torch may use while training (restored afterwards); 1 keeps a shared
        machine responsive, and single-threaded CPU training is reproducible.
    """

    history_hours: int = 168
    encoder_hours: int = 48
    hidden_size: int = 32
    num_layers: int = 1
    dropout: float = 0.0
    epochs: int = 6
    batch_size: int = 128
    learning_rate: float = 3e-3
    weight_decay: float = 0.0
    origin_stride_hours: int = 1
    min_scale_rides_per_h: float = 0.05
    utc_offset_h: float = 1.0
    torch_threads: int = 1

    def __post_init__(self) -> None:
        ints: tuple[tuple[str, int, int], ...] = (
            ("history_hours", _WEEK_H, 24 * 56),
            ("encoder_hours", 1, 24 * 56),
            ("hidden_size", 1, 1024),
            ("num_layers", 1, 8),
            ("epochs", 1, 10_000),
            ("batch_size", 1, 1 << 20),
            ("origin_stride_hours", 1, 24 * 7),
            ("torch_threads", 1, 256),
        )
        for name, lo, hi in ints:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise ValueError(f"Expected an integer {name} in [{lo}, {hi}], got {value!r}.")
        floats: tuple[tuple[str, float, float], ...] = (
            ("dropout", 0.0, 0.9),
            ("learning_rate", 1e-6, 1.0),
            ("weight_decay", 0.0, 1.0),
            ("min_scale_rides_per_h", 1e-6, 1e3),
            ("utc_offset_h", -14.0, 14.0),
        )
        for name, low, high in floats:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"Expected a number {name}, got {value!r}.")
            if not low <= value <= high:
                raise ValueError(f"Expected {name} in [{low}, {high}], got {value}.")
        if self.history_hours % 24 != 0:
            raise ValueError(f"Expected history_hours in whole days, got {self.history_hours}.")
        if self.encoder_hours > self.history_hours:
            raise ValueError(
                f"Expected encoder_hours <= history_hours ({self.history_hours}), got "
                f"{self.encoder_hours}."
            )

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> DemandLstmParams:
        """Params from a config section or saved metadata; missing keys take defaults.

        Raises
        ------
        ValueError
            If a key is not a field, or a value is out of range.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"Unknown DemandLstmParams fields {unknown}; expected some of {sorted(known)}."
            )
        return cls(**dict(values))

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_DEFAULT_PARAMS = DemandLstmParams()


@dataclass(frozen=True, eq=False)
class DemandInputs:
    """Everything one forecast needs, for a batch of zones at one forecast time.

    Parameters
    ----------
    history_rides
        ``(n_zones, history_hours)`` rides per zone in each past hour, oldest first; the
        last column is the hour just before the forecast.
    weather_past
        Weather of the ``history_hours`` past hours (observed, or the best estimate).
    weather_next
        Forecast weather of the next 24 hours; ``weather_next.ts[0]`` is the forecast
        time, one hour after ``weather_past.ts[-1]``.
    """

    history_rides: FloatArray
    weather_past: WeatherHours
    weather_next: WeatherHours

    def __post_init__(self) -> None:
        rides = np.array(self.history_rides, dtype=np.float64)
        if rides.ndim != 2 or rides.shape[0] == 0:
            raise ValueError(
                f"Expected history_rides of shape (n_zones >= 1, history_hours), got {rides.shape}."
            )
        if not np.isfinite(rides).all() or rides.min() < 0.0:
            raise ValueError("Expected finite, non-negative history_rides, got others.")
        if len(self.weather_past) != rides.shape[1]:
            raise ValueError(
                f"Expected weather_past for the {rides.shape[1]} history hours, got "
                f"{len(self.weather_past)} hours."
            )
        if len(self.weather_next) != HORIZON_HOURS:
            raise ValueError(
                f"Expected weather_next for {HORIZON_HOURS} hours, got {len(self.weather_next)}."
            )
        if self.weather_past.ts[-1] + _S_PER_HOUR != self.weather_next.ts[0]:
            raise ValueError(
                f"Expected weather_next to start one hour after weather_past ends "
                f"({self.weather_past.ts[-1] + _S_PER_HOUR}), got {self.weather_next.ts[0]}."
            )
        rides.flags.writeable = False
        object.__setattr__(self, "history_rides", rides)

    @property
    def start_ts(self) -> float:
        """Start of the first forecast hour, Unix seconds (UTC)."""
        return float(self.weather_next.ts[0])

    @property
    def n_zones(self) -> int:
        return int(self.history_rides.shape[0])


@dataclass(frozen=True, eq=False)
class DemandFeatures:
    """Network inputs built from :class:`DemandInputs` by :func:`build_features`.

    Parameters
    ----------
    encoder
        ``(n_zones, encoder_hours, len(ENCODER_FEATURES))``, float32.
    decoder
        ``(n_zones, 24, len(DECODER_FEATURES))``, float32.
    scale
        ``(n_zones,)`` rides per hour that a multiplier of 1 stands for.
    """

    encoder: Float32Array
    decoder: Float32Array
    scale: FloatArray


def _calendar(ts: FloatArray, utc_offset_h: float) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Hour-of-day sine and cosine and weekend flag of the hours starting at ``ts``."""
    centre_s = ts + 0.5 * _S_PER_HOUR + utc_offset_h * _S_PER_HOUR
    angle = 2.0 * np.pi * (centre_s % _S_PER_DAY) / _S_PER_DAY
    weekday = (np.floor(centre_s / _S_PER_DAY).astype(np.int64) + _EPOCH_WEEKDAY) % 7
    return np.sin(angle), np.cos(angle), (weekday >= 5).astype(np.float64)


def _temp(temp_c: FloatArray) -> FloatArray:
    return (temp_c - _TEMP_CENTRE_C) / _TEMP_SPREAD_C


def _rain(precipitation_mm: FloatArray) -> FloatArray:
    # log1p: the effect of rain on riding saturates, and downpours should not dominate.
    return np.log1p(precipitation_mm)


def build_features(inputs: DemandInputs, params: DemandLstmParams) -> DemandFeatures:
    """The network inputs of a forecast: the one feature code of training and serving.

    Parameters
    ----------
    inputs
        Rides and weather of one forecast time for a batch of zones.
    params
        The model's params (history and encoder length, scale floor, UTC offset).

    Returns
    -------
    DemandFeatures
        Encoder and head inputs in the order of ``ENCODER_FEATURES`` and
        ``DECODER_FEATURES``, and each zone's scale.
    """
    history_h = params.history_hours
    rides = inputs.history_rides
    if rides.shape[1] != history_h:
        raise ValueError(
            f"Expected {history_h} history hours (the model's history_hours), got {rides.shape[1]}."
        )
    n_zones = rides.shape[0]
    scale = np.maximum(rides.mean(axis=1), params.min_scale_rides_per_h)
    relative = rides / scale[:, None]

    enc_h = params.encoder_hours
    past = inputs.weather_past
    sin_p, cos_p, weekend_p = _calendar(past.ts[-enc_h:], params.utc_offset_h)
    encoder_shared = np.stack(
        [
            sin_p,
            cos_p,
            weekend_p,
            _temp(past.temp_c[-enc_h:]),
            _rain(past.precipitation_mm[-enc_h:]),
        ],
        axis=-1,
    )
    encoder = np.concatenate(
        [relative[:, -enc_h:, None], np.broadcast_to(encoder_shared, (n_zones, enc_h, 5))],
        axis=-1,
    )

    nxt = inputs.weather_next
    ahead = np.arange(HORIZON_HOURS)
    lag_day = history_h - 24 + ahead
    lag_week = history_h - _WEEK_H + ahead
    # Same hour of each past day: future hour k, d days back, is history column
    # history_h + k - 24 d, for d = 1 .. history_h / 24 (all >= 0).
    days_back = np.arange(1, history_h // 24 + 1)
    same_hour = history_h + ahead[None, :] - 24 * days_back[:, None]
    sin_n, cos_n, weekend_n = _calendar(nxt.ts, params.utc_offset_h)
    decoder_shared = np.stack(
        [
            sin_n,
            cos_n,
            weekend_n,
            _temp(nxt.temp_c),
            _rain(nxt.precipitation_mm),
            _rain(past.precipitation_mm[lag_day]),
            _rain(past.precipitation_mm[lag_week]),
        ],
        axis=-1,
    )
    log_scale = np.broadcast_to(np.log(scale)[:, None], (n_zones, HORIZON_HOURS))
    decoder_zone = np.stack(
        [
            relative[:, lag_day],
            relative[:, lag_week],
            relative[:, same_hour].mean(axis=1),
            log_scale,
        ],
        axis=-1,
    )
    decoder = np.concatenate(
        [np.broadcast_to(decoder_shared, (n_zones, HORIZON_HOURS, 7)), decoder_zone], axis=-1
    )
    return DemandFeatures(
        encoder=encoder.astype(np.float32),
        decoder=decoder.astype(np.float32),
        scale=scale,
    )


class _DemandNet(nn.Module):
    """Encoder LSTM and per-hour MLP head; returns multipliers of each zone's scale.

    The head treats the 24 future hours independently given the encoder state and that
    hour's features: hours of one forecast share their information through the state,
    and a decoder recurrence would add compute without new inputs.
    """

    def __init__(self, hidden_size: int, num_layers: int, dropout: float) -> None:
        super().__init__()
        self.encoder = nn.LSTM(
            len(ENCODER_FEATURES),
            hidden_size,
            num_layers=num_layers,
            batch_first=True,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.head = nn.Sequential(
            nn.Linear(hidden_size + len(DECODER_FEATURES), hidden_size),
            nn.ReLU(),
            nn.Linear(hidden_size, 1),
        )

    def forward(self, encoder: torch.Tensor, decoder: torch.Tensor) -> torch.Tensor:
        _, (hidden, _) = self.encoder(encoder)
        # The encoder may run in bfloat16 (DemandLSTM.on_device); the head reads float32.
        state = hidden[-1].to(decoder.dtype).unsqueeze(1).expand(-1, decoder.shape[1], -1)
        raw = self.head(torch.cat([state, decoder], dim=-1)).squeeze(-1)
        # softplus: a smooth, strictly positive rate (Poisson NLL needs rate > 0).
        return functional.softplus(raw)


class _Meta(BaseModel):
    """``meta.json`` of a saved model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["demand_lstm/1"]
    params: dict[str, Any]
    encoder_features: list[str]
    decoder_features: list[str]
    metrics: dict[str, float]


class DemandLSTM:
    """A trained demand forecaster; build one with :func:`train` or :meth:`load`.

    Parameters
    ----------
    net
        The trained network.
    params
        The params it was built and trained with.
    metrics
        Numbers recorded at training time (loss, duration, windows).
    """

    def __init__(
        self, net: _DemandNet, params: DemandLstmParams, metrics: Mapping[str, float]
    ) -> None:
        self._net = net.eval()
        self.params = params
        self.metrics: Mapping[str, float] = dict(metrics)
        self._device = InferenceDevice()

    @property
    def device(self) -> InferenceDevice:
        """Where (and in which float type) the encoder LSTM runs its inference."""
        return self._device

    def on_device(self, device: InferenceDevice) -> DemandLSTM:
        """A copy of this model whose inference runs on ``device``; this one is unchanged.

        The encoder LSTM moves (and, for ``bfloat16``, is cast) once; the head stays
        float32. The copy is for inference: :meth:`save` refuses it. On the default device
        (CPU, float32) this model itself is returned.
        """
        if not self._device.is_default:
            raise ValueError(
                f"Expected a model on cpu float32 to copy, got one on {self._device.describe()}."
            )
        if device.is_default:
            return self
        net = _DemandNet(self.params.hidden_size, self.params.num_layers, self.params.dropout)
        net.load_state_dict(self._net.state_dict())
        net.encoder.to(device=device.torch_device, dtype=device.torch_dtype)
        net.head.to(device=device.torch_device)
        placed = DemandLSTM(net, self.params, self.metrics)
        placed._device = device
        return placed

    def predict(self, inputs: DemandInputs) -> FloatArray:
        """Expected rides of each zone in each of the next 24 hours.

        Parameters
        ----------
        inputs
            History and weather of ``n_zones`` zones at one forecast time; the history must
            span the model's ``history_hours``.

        Returns
        -------
        numpy.ndarray
            ``(n_zones, 24)`` non-negative float64; column ``k`` is the hour starting at
            ``inputs.start_ts + k * 3600``.

        Notes
        -----
        Runs with torch's current thread settings. Batches here are small, and on a CPU
        shared with other busy processes torch's multi-threaded kernels were seen to take
        about a second per call waiting for descheduled threads (against under a
        millisecond on one thread), so serving processes should call
        ``torch.set_num_threads(1)`` (or set ``OMP_NUM_THREADS=1``).
        """
        features = build_features(inputs, self.params)
        multipliers = np.empty((inputs.n_zones, HORIZON_HOURS), dtype=np.float64)
        dev = self._device
        with torch.inference_mode():
            for lo in range(0, inputs.n_zones, _PREDICT_CHUNK_ZONES):
                hi = lo + _PREDICT_CHUNK_ZONES
                # Across to the device, then cast there; no-ops on the default device.
                out = self._net(
                    torch.from_numpy(features.encoder[lo:hi])
                    .to(dev.torch_device)
                    .to(dev.torch_dtype),
                    torch.from_numpy(features.decoder[lo:hi]).to(dev.torch_device),
                )
                multipliers[lo:hi] = out.cpu().numpy()
        rides: FloatArray = multipliers * features.scale[:, None]
        return rides

    def save(self, directory: str | Path, extra_metrics: Mapping[str, float] | None = None) -> Path:
        """Write ``weights.pt`` (state dict) and ``meta.json`` (params, features, metrics).

        Parameters
        ----------
        directory
            Created if missing; existing files of a previous save are replaced.
        extra_metrics
            Added to the saved metrics, e.g. :meth:`DemandEvaluation.as_metrics`.

        Returns
        -------
        pathlib.Path
            The directory.
        """
        if not self._device.is_default:
            raise ValueError(
                f"Expected a model on cpu float32 to save, got a copy for inference on {self._device.describe()}."
            )
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        torch.save(self._net.state_dict(), path / _WEIGHTS_FILE)
        meta = _Meta(
            format=_FORMAT,
            params=self.params.as_dict(),
            encoder_features=list(ENCODER_FEATURES),
            decoder_features=list(DECODER_FEATURES),
            metrics={**self.metrics, **(extra_metrics or {})},
        )
        (path / _META_FILE).write_text(json.dumps(meta.model_dump(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> DemandLSTM:
        """A model written by :meth:`save`.

        Raises
        ------
        FileNotFoundError
            If either file is missing.
        ValueError
            If the metadata is malformed, was written for other features, or the weights
            do not fit the params.
        """
        path = Path(directory)
        try:
            meta = _Meta.model_validate_json((path / _META_FILE).read_bytes())
        except ValidationError as err:
            raise ValueError(f"Malformed {path / _META_FILE}: {err}") from err
        for name, saved, current in (
            ("encoder", meta.encoder_features, ENCODER_FEATURES),
            ("decoder", meta.decoder_features, DECODER_FEATURES),
        ):
            if tuple(saved) != current:
                raise ValueError(
                    f"Expected {name} features {list(current)} in {path / _META_FILE}, got "
                    f"{saved}: the model was trained with other feature code."
                )
        params = DemandLstmParams.from_mapping(meta.params)
        net = _DemandNet(params.hidden_size, params.num_layers, params.dropout)
        state = torch.load(path / _WEIGHTS_FILE, map_location="cpu", weights_only=True)
        try:
            net.load_state_dict(state)
        except RuntimeError as err:
            raise ValueError(
                f"Weights in {path / _WEIGHTS_FILE} do not fit the params: {err}"
            ) from err
        return cls(net, params, meta.metrics)


def _inputs_at(history: RideHistory, origin: int, history_hours: int) -> DemandInputs:
    """The inputs of a forecast made at hour ``origin`` of ``history`` (by position)."""
    return DemandInputs(
        history_rides=history.rides[:, origin - history_hours : origin].astype(np.float64),
        weather_past=history.weather.window(origin - history_hours, origin),
        weather_next=history.weather.window(origin, origin + HORIZON_HOURS),
    )


@contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train(
    history: RideHistory, params: DemandLstmParams = _DEFAULT_PARAMS, seed: int = 0
) -> DemandLSTM:
    """Fit a forecaster on every window of ``history``.

    A window is a forecast time ``t`` (every ``origin_stride_hours``) with the
    ``history_hours`` before it as input and the 24 hours from ``t`` as target, for every
    zone. Hold out a later time range yourself (``history.window``) and score it with
    :func:`evaluate`.

    The loss is the Poisson negative log-likelihood of the observed rides, with the rate
    ``scale * multiplier``, divided by each zone's scale. Poisson, because rides are counts
    whose variance grows with their mean, and because its minimiser is the conditional
    mean, which is what the consumers of "expected rides" want (MSE on log1p targets a
    geometric-type mean and under-predicts quiet hours). Dividing by the scale makes it
    the Poisson NLL of ``rides / scale`` around the multiplier, so busy zones do not
    dominate the gradient.

    Parameters
    ----------
    history
        Rides and weather, at least ``history_hours + 24`` hours long.
    params
        Model shape and training knobs.
    seed
        Seed of the initial weights and of the shuffling: same inputs, same model.

    Returns
    -------
    DemandLSTM
        With metrics ``train_loss`` (mean loss of the last epoch), ``train_s``,
        ``train_windows`` and ``train_zones``.
    """
    history_h = params.history_hours
    last_origin = history.hours - HORIZON_HOURS
    if last_origin < history_h:
        raise ValueError(
            f"Expected at least history_hours + {HORIZON_HOURS} = "
            f"{history_h + HORIZON_HOURS} hours of history, got {history.hours}."
        )
    if not 0 <= seed < 2**63:
        raise ValueError(f"Expected seed in [0, 2**63), got {seed}.")
    started = time.perf_counter()
    encoders, decoders, targets = [], [], []
    for origin in range(history_h, last_origin + 1, params.origin_stride_hours):
        features = build_features(_inputs_at(history, origin, history_h), params)
        encoders.append(features.encoder)
        decoders.append(features.decoder)
        window_rides = history.rides[:, origin : origin + HORIZON_HOURS]
        targets.append((window_rides / features.scale[:, None]).astype(np.float32))
    encoder = torch.from_numpy(np.concatenate(encoders))
    decoder = torch.from_numpy(np.concatenate(decoders))
    target = torch.from_numpy(np.concatenate(targets))
    n_windows = len(target)

    with _torch_threads(params.torch_threads), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = _DemandNet(params.hidden_size, params.num_layers, params.dropout)
        optimizer = torch.optim.Adam(
            net.parameters(), lr=params.learning_rate, weight_decay=params.weight_decay
        )
        steps_per_epoch = math.ceil(n_windows / params.batch_size)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=params.epochs * steps_per_epoch
        )
        shuffle = torch.Generator().manual_seed(seed)
        net.train()
        epoch_loss = math.nan
        for _ in range(params.epochs):
            order = torch.randperm(n_windows, generator=shuffle)
            total = 0.0
            for lo in range(0, n_windows, params.batch_size):
                batch = order[lo : lo + params.batch_size]
                multiplier = net(encoder[batch], decoder[batch])
                loss = functional.poisson_nll_loss(
                    multiplier, target[batch], log_input=False, full=False, eps=1e-6
                )
                optimizer.zero_grad()
                torch.autograd.backward(loss)
                nn.utils.clip_grad_norm_(net.parameters(), max_norm=1.0)
                optimizer.step()
                schedule.step()
                total += float(loss.detach()) * len(batch)
            epoch_loss = total / n_windows
    metrics = {
        "train_loss": epoch_loss,
        "train_s": time.perf_counter() - started,
        "train_windows": float(n_windows),
        "train_zones": float(len(history.zone_ids)),
    }
    return DemandLSTM(net, params, metrics)


@dataclass(frozen=True)
class ForecastErrors:
    """Errors of hourly ride forecasts, over all zones, hours and forecast times.

    Parameters
    ----------
    mae
        Mean absolute error, rides per zone-hour.
    rmse
        Root mean squared error, rides per zone-hour.
    """

    mae: float
    rmse: float

    @classmethod
    def of(cls, forecast: FloatArray, actual: FloatArray) -> ForecastErrors:
        error = forecast - actual
        return cls(mae=float(np.abs(error).mean()), rmse=float(np.sqrt((error**2).mean())))


@dataclass(frozen=True)
class DemandEvaluation:
    """The model against two seasonal-naive baselines on the same forecasts.

    The reference baseline is *same hour last week* (it knows weekdays from weekends);
    *same hour yesterday* is reported too.

    Parameters
    ----------
    model, same_hour_last_week, same_hour_yesterday
        Errors of the forecaster and of the two baselines.
    forecasts
        Number of forecast times scored (each covers every zone for 24 hours).
    zones
        Number of zones.
    """

    model: ForecastErrors
    same_hour_last_week: ForecastErrors
    same_hour_yesterday: ForecastErrors
    forecasts: int
    zones: int

    @property
    def mae_improvement(self) -> float:
        """Relative MAE reduction of the model against same hour last week (0.2 = 20 %)."""
        return 1.0 - self.model.mae / self.same_hour_last_week.mae

    def as_metrics(self) -> dict[str, float]:
        """Flat numbers for ``DemandLSTM.save(..., extra_metrics=...)`` and logs."""
        return {
            "eval_model_mae": self.model.mae,
            "eval_model_rmse": self.model.rmse,
            "eval_last_week_mae": self.same_hour_last_week.mae,
            "eval_last_week_rmse": self.same_hour_last_week.rmse,
            "eval_yesterday_mae": self.same_hour_yesterday.mae,
            "eval_yesterday_rmse": self.same_hour_yesterday.rmse,
            "eval_forecasts": float(self.forecasts),
            "eval_zones": float(self.zones),
        }


def evaluate(
    model: DemandLSTM,
    history: RideHistory,
    from_ts: float,
    *,
    origin_stride_hours: int = 24,
) -> DemandEvaluation:
    """Score forecasts made at or after ``from_ts`` against what happened.

    Forecast times run from the first hour at or after ``from_ts`` every
    ``origin_stride_hours`` while their 24 hours lie inside ``history``. Their inputs may
    reach back before ``from_ts`` (what a deployed model would see); their targets do
    not, so a model trained on ``history`` up to ``from_ts`` is scored on unseen hours.

    Parameters
    ----------
    model
        The forecaster.
    history
        Rides and weather covering the held-out range and the history before it.
    from_ts
        Start of the held-out range, Unix seconds (UTC).
    origin_stride_hours
        Hours between forecast times; 24 scores each held-out hour once.

    Raises
    ------
    ValueError
        If no forecast time fits.
    """
    if not 1 <= origin_stride_hours <= 24 * 7:
        raise ValueError(f"Expected origin_stride_hours in [1, 168], got {origin_stride_hours}.")
    history_h = model.params.history_hours
    first = max(int(np.searchsorted(history.ts, from_ts, side="left")), history_h)
    origins = range(first, history.hours - HORIZON_HOURS + 1, origin_stride_hours)
    if len(origins) == 0:
        raise ValueError(
            f"Expected at least one forecast time: {history_h} hours of history before it "
            f"and {HORIZON_HOURS} after, at or after from_ts={from_ts}; the history has "
            f"{history.hours} hours from {history.ts[0]}."
        )
    predicted, last_week, yesterday, actual = [], [], [], []
    for origin in origins:
        predicted.append(model.predict(_inputs_at(history, origin, history_h)))
        target = slice(origin, origin + HORIZON_HOURS)
        actual.append(history.rides[:, target])
        last_week.append(history.rides[:, origin - _WEEK_H : origin - _WEEK_H + HORIZON_HOURS])
        yesterday.append(history.rides[:, origin - 24 : origin])
    truth = np.stack(actual).astype(np.float64)
    return DemandEvaluation(
        model=ForecastErrors.of(np.stack(predicted), truth),
        same_hour_last_week=ForecastErrors.of(np.stack(last_week).astype(np.float64), truth),
        same_hour_yesterday=ForecastErrors.of(np.stack(yesterday).astype(np.float64), truth),
        forecasts=len(origins),
        zones=len(history.zone_ids),
    )

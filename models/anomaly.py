"""Battery anomaly detection: three detector families combined into one verdict per battery.

:class:`AnomalyDetector` runs, over the same :class:`~twins.telemetry_windows.TelemetryWindows`,

* the voltage regression (:mod:`models.voltage_regression`): ``VOLTAGE_RESIDUAL``;
* the statistical detectors (:mod:`models.stat_detectors`): ``TEMP_RISE``, ``VOLTAGE_SAG``,
  ``CELL_IMBALANCE``;
* the LSTM prediction-error detector (:mod:`models.telemetry_lstm`): ``SEQUENCE_ERROR``.

Each sets one bit of :class:`AnomalyKind` in the report's ``flags`` when its score passes its
own threshold. The combined ``anomaly_score`` is the largest score-to-threshold ratio, so it
exceeds 1 exactly when some bit is set and reads as "how far past the nearest alarm".
:func:`anomaly_events` turns a report into one event record per flagged battery and kind,
the form in which anomalies reach the twin's event stream.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import numpy.typing as npt

from contracts.anomaly_kinds import DETECTOR_KINDS, AnomalyKind
from models.stat_detectors import StatDetectorParams, StatDetectors
from models.telemetry_lstm import TelemetryLSTM, TelemetryLSTMParams
from models.voltage_regression import VoltageRegression, VoltageRegressionParams
from twins.telemetry_windows import TelemetryWindows

__all__ = [
    "DETECTOR_KINDS",
    "AnomalyDetector",
    "AnomalyEvent",
    "AnomalyKind",
    "AnomalyParams",
    "AnomalyReport",
    "anomaly_events",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

_META_FILE = "anomaly_detector.json"
_LSTM_DIR = "lstm"
_FORMAT_VERSION = 1


@dataclass(frozen=True)
class AnomalyParams:
    """Parameters of every detector, one section each.

    Parameters
    ----------
    regression, stats, lstm
        The three families' parameters (their thresholds included).
    use_lstm
        Without the LSTM, ``SEQUENCE_ERROR`` is never set and fitting needs no torch time.
    """

    regression: VoltageRegressionParams = field(default_factory=VoltageRegressionParams)
    stats: StatDetectorParams = field(default_factory=StatDetectorParams)
    lstm: TelemetryLSTMParams = field(default_factory=TelemetryLSTMParams)
    use_lstm: bool = True

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready sections."""
        return {
            "regression": self.regression.to_dict(),
            "stats": self.stats.to_dict(),
            "lstm": self.lstm.to_dict(),
            "use_lstm": self.use_lstm,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AnomalyParams:
        """Sections from :meth:`to_dict` (or a config file); a missing section is default."""
        unknown = set(data) - {"regression", "stats", "lstm", "use_lstm"}
        if unknown:
            raise ValueError(
                f"Expected sections regression, stats, lstm, use_lstm; got unknown {sorted(unknown)}."
            )
        return cls(
            regression=VoltageRegressionParams.from_dict(data.get("regression", {})),
            stats=StatDetectorParams.from_dict(data.get("stats", {})),
            lstm=TelemetryLSTMParams.from_dict(data.get("lstm", {})),
            use_lstm=bool(data.get("use_lstm", True)),
        )

    def threshold(self, kind: AnomalyKind) -> float:
        """The flag threshold of one detector."""
        thresholds = {
            AnomalyKind.VOLTAGE_RESIDUAL: self.regression.z_threshold,
            AnomalyKind.TEMP_RISE: self.stats.temp_z_threshold,
            AnomalyKind.VOLTAGE_SAG: self.stats.sag_z_threshold,
            AnomalyKind.CELL_IMBALANCE: self.stats.imbalance_z_threshold,
            AnomalyKind.SEQUENCE_ERROR: self.lstm.z_threshold,
        }
        try:
            return thresholds[kind]
        except KeyError:
            raise ValueError(
                f"Expected one detector kind of {DETECTOR_KINDS}, got {kind!r}."
            ) from None


@dataclass(frozen=True, eq=False)
class AnomalyReport:
    """The verdict on n batteries; every array has length n, row i is ``battery_ids[i]``.

    Attributes
    ----------
    battery_ids
        Row order.
    flags
        int64 bitmask of :class:`AnomalyKind`.
    anomaly_score
        Largest score / threshold over the detectors (> 1 exactly where ``flags != 0``).
    scores
        Each detector's z-score (positive is anomalous), keyed by kind.
    evaluable
        Some detector had enough data for this battery.
    details
        Physical values behind the scores, for event texts: ``step_v``, ``offset_v``,
        ``temp_excess_c_per_min``, ``sag_ohm``, ``sag_baseline_ohm``, ``spread_v``,
        ``spread_baseline_v``.
    recent_samples
        Length of the scored recent part (for the event texts).
    thresholds
        Each detector's threshold, keyed by kind.
    """

    battery_ids: tuple[str, ...]
    flags: IntArray
    anomaly_score: FloatArray
    scores: dict[AnomalyKind, FloatArray]
    evaluable: BoolArray
    details: dict[str, FloatArray]
    recent_samples: int
    thresholds: dict[AnomalyKind, float]

    @property
    def n(self) -> int:
        """Number of batteries."""
        return len(self.battery_ids)

    def flagged(self, kind: AnomalyKind | None = None) -> BoolArray:
        """Rows with any flag, or with the bit(s) of ``kind``."""
        mask = int(kind) if kind is not None else ~0
        out: BoolArray = (self.flags & mask) != 0
        return out

    def kinds_of(self, row: int) -> AnomalyKind:
        """The flags of one row as an :class:`AnomalyKind`."""
        return AnomalyKind(int(self.flags[row]))


class AnomalyEvent(TypedDict):
    """One flagged (battery, detector): what the twin records as an event."""

    battery_id: str
    kind: str
    score: float
    detail: str


class AnomalyDetector:
    """All anomaly detectors, fitted together and scored together.

    Parameters
    ----------
    params
        One section per detector family.

    Examples
    --------
    >>> detector = AnomalyDetector().fit(normal_windows)        # doctest: +SKIP
    >>> report = detector.score(windows_from_table(table, slots))  # doctest: +SKIP
    >>> anomaly_events(report)                                    # doctest: +SKIP
    """

    def __init__(self, params: AnomalyParams | None = None) -> None:
        self.params = params or AnomalyParams()
        self.regression = VoltageRegression(self.params.regression)
        self.stats = StatDetectors(self.params.stats)
        self.lstm: TelemetryLSTM | None = (
            TelemetryLSTM(self.params.lstm) if self.params.use_lstm else None
        )
        self.fitted = False

    def fit(self, windows: TelemetryWindows) -> AnomalyDetector:
        """Fit every detector on normal windows (many per battery is fine)."""
        self.regression.fit(windows)
        self.stats.fit(windows)
        if self.lstm is not None:
            self.lstm.train(windows)
        self.fitted = True
        return self

    def score(self, windows: TelemetryWindows) -> AnomalyReport:
        """Score every window; one report row per window."""
        if not self.fitted:
            raise RuntimeError("AnomalyDetector is not fitted: call fit() or load() first.")
        reg = self.regression.score(windows)
        stat = self.stats.score(windows)
        seq = self.lstm.score(windows) if self.lstm is not None else np.zeros(windows.n)
        scores = {
            AnomalyKind.VOLTAGE_RESIDUAL: reg.score,
            AnomalyKind.TEMP_RISE: stat.temp_rise.score,
            AnomalyKind.VOLTAGE_SAG: stat.voltage_sag.score,
            AnomalyKind.CELL_IMBALANCE: stat.cell_imbalance.score,
            AnomalyKind.SEQUENCE_ERROR: seq,
        }
        thresholds = {kind: self.params.threshold(kind) for kind in DETECTOR_KINDS}
        flags = np.zeros(windows.n, dtype=np.int64)
        ratio = np.zeros(windows.n)
        for kind in DETECTOR_KINDS:
            r = scores[kind] / thresholds[kind]
            flags |= np.where(r > 1.0, int(kind), 0)
            ratio = np.maximum(ratio, r)
        evaluable = (
            reg.evaluable
            | stat.temp_rise.evaluable
            | stat.voltage_sag.evaluable
            | stat.cell_imbalance.evaluable
        )
        details = {
            "step_v": reg.step_v,
            "offset_v": reg.offset_v,
            "temp_excess_c_per_min": stat.temp_rise.level,
            "sag_ohm": stat.voltage_sag.level,
            "sag_baseline_ohm": stat.voltage_sag.baseline,
            "spread_v": stat.cell_imbalance.level,
            "spread_baseline_v": stat.cell_imbalance.baseline,
        }
        return AnomalyReport(
            battery_ids=windows.battery_ids,
            flags=flags,
            anomaly_score=ratio,
            scores=scores,
            evaluable=evaluable,
            details=details,
            recent_samples=self.params.regression.recent_samples,
            thresholds=thresholds,
        )

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | Path) -> None:
        """Write ``anomaly_detector.json`` (params, regression, statistics) and ``lstm/``."""
        if not self.fitted:
            raise RuntimeError("AnomalyDetector is not fitted: nothing to save.")
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        meta = {
            "format_version": _FORMAT_VERSION,
            "params": self.params.to_dict(),
            "regression": self.regression.to_dict(),
            "stats": self.stats.to_dict(),
        }
        (path / _META_FILE).write_text(json.dumps(meta, indent=2))
        if self.lstm is not None:
            self.lstm.save(path / _LSTM_DIR)

    @classmethod
    def load(cls, directory: str | Path) -> AnomalyDetector:
        """A fitted detector written by :meth:`save`."""
        path = Path(directory)
        meta = json.loads((path / _META_FILE).read_text())
        if meta.get("format_version") != _FORMAT_VERSION:
            raise ValueError(
                f"Expected format_version {_FORMAT_VERSION} in {path / _META_FILE}, got "
                f"{meta.get('format_version')!r}."
            )
        detector = cls(AnomalyParams.from_dict(meta["params"]))
        detector.regression = VoltageRegression.from_dict(meta["regression"])
        detector.stats = StatDetectors.from_dict(meta["stats"])
        if detector.params.use_lstm:
            detector.lstm = TelemetryLSTM.load(path / _LSTM_DIR)
        detector.fitted = True
        return detector


def _detail(report: AnomalyReport, kind: AnomalyKind, row: int) -> str:
    d = {name: float(values[row]) for name, values in report.details.items()}
    z, threshold = float(report.scores[kind][row]), report.thresholds[kind]
    tail = f"(z {z:.1f}, threshold {threshold:g})"
    if kind is AnomalyKind.VOLTAGE_RESIDUAL:
        return (
            f"pack voltage {d['step_v']:+.2f} V off its own baseline over the last "
            f"{report.recent_samples} samples, {d['offset_v']:+.2f} V off the fleet model at "
            f"zero current {tail}"
        )
    if kind is AnomalyKind.TEMP_RISE:
        return (
            f"temperature rising {d['temp_excess_c_per_min']:.2f} °C/min faster than the "
            f"current explains {tail}"
        )
    if kind is AnomalyKind.VOLTAGE_SAG:
        return (
            f"voltage sag {1000 * d['sag_ohm']:.0f} mΩ per ampere, up from "
            f"{1000 * d['sag_baseline_ohm']:.0f} mΩ earlier in the window {tail}"
        )
    if kind is AnomalyKind.CELL_IMBALANCE:
        return (
            f"load-corrected cell spread {1000 * d['spread_v']:.0f} mV, up from "
            f"{1000 * d['spread_baseline_v']:.0f} mV earlier in the window {tail}"
        )
    return f"next samples far from the sequence model's prediction {tail}"


def anomaly_events(report: AnomalyReport) -> list[AnomalyEvent]:
    """One event per flagged (battery, kind), most anomalous battery first.

    Returns
    -------
    list of AnomalyEvent
        ``{"battery_id", "kind", "score", "detail"}``; ``kind`` is the lower-case name of
        the :class:`AnomalyKind` bit (``"temp_rise"``), ``score`` its z.
    """
    rows = np.flatnonzero(report.flags != 0)
    rows = rows[np.argsort(-report.anomaly_score[rows], kind="stable")]
    events: list[AnomalyEvent] = []
    for row in rows.tolist():
        for kind in DETECTOR_KINDS:
            if int(report.flags[row]) & int(kind):
                events.append(
                    AnomalyEvent(
                        battery_id=report.battery_ids[row],
                        kind=str(kind.name).lower(),
                        score=round(float(report.scores[kind][row]), 2),
                        detail=_detail(report, kind, row),
                    )
                )
    return events

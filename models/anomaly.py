"""Battery anomaly detection: what each pack learned about itself, and three fleet-trained
detector families, combined into one verdict per battery.

:class:`AnomalyDetector` reads :class:`~twins.telemetry_windows.TelemetryWindows`:

* the twins' own evidence (:mod:`twins.pack_watch`: each pack's learned voltage, spread and
  thermal behaviour) against one threshold per channel (:class:`PackEvidenceParams`), set
  from a false-alarm budget on healthy packs of chemistries left out
  (``bms models eval-telemetry``): ``SENSOR_FAULT``, ``CELL_IMBALANCE``,
  ``VOLTAGE_RESIDUAL``, ``TEMP_RISE``;
* the voltage regression (:mod:`models.voltage_regression`): ``VOLTAGE_RESIDUAL``;
* the statistical detectors (:mod:`models.stat_detectors`): ``TEMP_RISE``, ``VOLTAGE_SAG``,
  ``CELL_IMBALANCE``;
* the LSTM prediction-error detector (:mod:`models.telemetry_lstm`): ``SEQUENCE_ERROR``.

The three window families learned one fleet (the simulator's) and raised 1,819 false alarms
per 1,000 healthy pack-hours on packs of other cells; production therefore trains them with
``window_flags`` off: their scores are still computed and served, and only the packs' own
evidence raises flags (:func:`models.training.production_anomaly_params`).

Each source sets one bit of :class:`AnomalyKind` in the report's ``flags`` when its score
passes its threshold. The combined ``anomaly_score`` is the largest score-to-threshold ratio
among the sources that may flag, so it exceeds 1 exactly when some bit is set and reads as
"how far past the nearest alarm".
:func:`anomaly_events` turns a report into one event record per flagged battery and kind,
the form in which anomalies reach the twin's event stream.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import numpy.typing as npt

from contracts.anomaly_kinds import DETECTOR_KINDS, AnomalyKind
from models.stat_detectors import StatDetectorParams, StatDetectors
from models.telemetry_lstm import TelemetryLSTM, TelemetryLSTMParams
from models.voltage_regression import VoltageRegression, VoltageRegressionParams
from twins.pack_watch import EVIDENCE_NAMES
from twins.telemetry_windows import TelemetryWindows

__all__ = [
    "DETECTOR_KINDS",
    "EVIDENCE_KINDS",
    "AnomalyDetector",
    "AnomalyEvent",
    "AnomalyKind",
    "AnomalyParams",
    "AnomalyReport",
    "PackEvidenceParams",
    "anomaly_events",
    "evidence_flags",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

_META_FILE = "anomaly_detector.json"
_LSTM_DIR = "lstm"
# 2: the pack-evidence section and window_flags. A format-1 artifact (window detectors that
# flag) is refused, so a system upgraded in place trains and promotes a new one at start.
_FORMAT_VERSION = 2

#: The kind each evidence channel of :mod:`twins.pack_watch` raises.
EVIDENCE_KINDS: dict[str, AnomalyKind] = {
    "voltage_consistency": AnomalyKind.SENSOR_FAULT,
    "cell_spread": AnomalyKind.CELL_IMBALANCE,
    "ocv_residual": AnomalyKind.VOLTAGE_RESIDUAL,
    "thermal": AnomalyKind.TEMP_RISE,
    "temp_stuck": AnomalyKind.SENSOR_FAULT,
}
_EVIDENCE_DETAIL = {
    "voltage_consistency": "pack voltage {x:.0f} times its usual distance from its cells' mean x series count",
    "cell_spread": "cell spread {x:.0f} times its usual distance from this pack's learned spread at this current",
    "ocv_residual": "pack voltage {x:.0f} times its usual distance from this pack's learned open-circuit curve",
    "thermal": "heating {x:.0f} times faster than this pack's learned thermal model explains",
    "temp_stuck": "temperature reading unchanged {x:.1f} times longer than this pack ever showed",
}


@dataclass(frozen=True)
class PackEvidenceParams:
    """Thresholds on the twins' own evidence (:func:`twins.pack_watch.evidence`), one per
    channel, in multiples of the pack's usual residual. Evidence above its threshold flags the
    channel's kind (:data:`EVIDENCE_KINDS`).

    The defaults are the shipped calibration (``models/data/pack_watch_thresholds.json``,
    written by ``bms models eval-telemetry``): the largest evidence any healthy pack showed,
    times a margin; a channel missing from a mapping never flags.
    """

    thresholds: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        for name, value in self.thresholds:
            if name not in EVIDENCE_KINDS:
                raise ValueError(f"Expected evidence channels among {list(EVIDENCE_NAMES)}, got {name!r}.")
            if not value > 0:
                raise ValueError(f"Expected a positive threshold for {name!r}, got {value}.")

    def threshold(self, name: str) -> float:
        """The channel's threshold (infinite: it never flags)."""
        return dict(self.thresholds).get(name, float("inf"))

    def to_dict(self) -> dict[str, Any]:
        return {"thresholds": dict(self.thresholds)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PackEvidenceParams:
        unknown = set(data) - {"thresholds"}
        if unknown:
            raise ValueError(f"Expected the key thresholds in the pack section, got unknown {sorted(unknown)}.")
        return cls(tuple((str(k), float(v)) for k, v in dict(data.get("thresholds", {})).items()))


def evidence_flags(evidence: FloatArray, params: PackEvidenceParams) -> tuple[IntArray, FloatArray]:
    """Flags and largest evidence-to-threshold ratio of ``(n, len(EVIDENCE_NAMES))`` evidence
    (NaN, a twin still learning its pack, never flags)."""
    flags = np.zeros(evidence.shape[0], dtype=np.int64)
    ratio = np.zeros(evidence.shape[0])
    for c, name in enumerate(EVIDENCE_NAMES):
        r = evidence[:, c] / params.threshold(name)
        flags |= np.where(r > 1.0, int(EVIDENCE_KINDS[name]), 0)
        ratio = np.maximum(ratio, np.where(np.isfinite(r), r, 0.0))
    return flags, ratio


@dataclass(frozen=True)
class AnomalyParams:
    """Parameters of every detector, one section each.

    Parameters
    ----------
    regression, stats, lstm
        The three families' parameters (their thresholds included).
    use_lstm
        Without the LSTM, ``SEQUENCE_ERROR`` is never set and fitting needs no torch time.
    pack
        Thresholds on the twins' own evidence.
    window_flags
        Whether the window families (regression, statistics, LSTM) may raise flags; off,
        they only score.
    """

    regression: VoltageRegressionParams = field(default_factory=VoltageRegressionParams)
    stats: StatDetectorParams = field(default_factory=StatDetectorParams)
    lstm: TelemetryLSTMParams = field(default_factory=TelemetryLSTMParams)
    use_lstm: bool = True
    pack: PackEvidenceParams = field(default_factory=PackEvidenceParams)
    window_flags: bool = True

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready sections."""
        return {
            "regression": self.regression.to_dict(),
            "stats": self.stats.to_dict(),
            "lstm": self.lstm.to_dict(),
            "use_lstm": self.use_lstm,
            "pack": self.pack.to_dict(),
            "window_flags": self.window_flags,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AnomalyParams:
        """Sections from :meth:`to_dict` (or a config file); a missing section is default."""
        unknown = set(data) - {"regression", "stats", "lstm", "use_lstm", "pack", "window_flags"}
        if unknown:
            raise ValueError(
                f"Expected sections regression, stats, lstm, use_lstm, pack, window_flags; got unknown {sorted(unknown)}."
            )
        return cls(
            regression=VoltageRegressionParams.from_dict(data.get("regression", {})),
            stats=StatDetectorParams.from_dict(data.get("stats", {})),
            lstm=TelemetryLSTMParams.from_dict(data.get("lstm", {})),
            use_lstm=bool(data.get("use_lstm", True)),
            # An artifact from before the twins learned their packs: its windows flagged.
            pack=PackEvidenceParams.from_dict(data.get("pack", {})),
            window_flags=bool(data.get("window_flags", True)),
        )

    def threshold(self, kind: AnomalyKind) -> float:
        """The flag threshold of one detector."""
        thresholds = {
            AnomalyKind.VOLTAGE_RESIDUAL: self.regression.z_threshold,
            AnomalyKind.TEMP_RISE: self.stats.temp_z_threshold,
            AnomalyKind.VOLTAGE_SAG: self.stats.sag_z_threshold,
            AnomalyKind.CELL_IMBALANCE: self.stats.imbalance_z_threshold,
            AnomalyKind.SEQUENCE_ERROR: self.lstm.z_threshold,
            AnomalyKind.SENSOR_FAULT: math.inf,  # raised by the packs' evidence only
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
    evidence, evidence_thresholds
        Each evidence channel's value (NaN: no evidence) and threshold, keyed by channel
        (:data:`twins.pack_watch.EVIDENCE_NAMES`); empty for windows without evidence.
    """

    battery_ids: tuple[str, ...]
    flags: IntArray
    anomaly_score: FloatArray
    scores: dict[AnomalyKind, FloatArray]
    evaluable: BoolArray
    details: dict[str, FloatArray]
    recent_samples: int
    thresholds: dict[AnomalyKind, float]
    evidence: dict[str, FloatArray] = field(default_factory=dict)
    evidence_thresholds: dict[str, float] = field(default_factory=dict)

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
            AnomalyKind.SENSOR_FAULT: np.zeros(windows.n),
        }
        thresholds = {kind: self.params.threshold(kind) for kind in DETECTOR_KINDS}
        flags = np.zeros(windows.n, dtype=np.int64)
        ratio = np.zeros(windows.n)
        if self.params.window_flags:
            for kind in DETECTOR_KINDS:
                r = scores[kind] / thresholds[kind]
                flags |= np.where(r > 1.0, int(kind), 0)
                ratio = np.maximum(ratio, r)
        evidence: dict[str, FloatArray] = {}
        evidence_thresholds = {name: self.params.pack.threshold(name) for name in EVIDENCE_NAMES}
        if windows.evidence is not None:
            evidence = {name: windows.evidence[:, c] for c, name in enumerate(EVIDENCE_NAMES)}
            e_flags, e_ratio = evidence_flags(windows.evidence, self.params.pack)
            flags |= e_flags
            ratio = np.maximum(ratio, e_ratio)
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
            evidence=evidence,
            evidence_thresholds=evidence_thresholds if evidence else {},
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
    own = [
        (name, float(e[row]) / report.evidence_thresholds[name]) for name, e in report.evidence.items()
        if EVIDENCE_KINDS[name] is kind and float(e[row]) > report.evidence_thresholds[name]
    ]  # fmt: skip
    if own:
        name, r = max(own, key=lambda x: x[1])
        x = float(report.evidence[name][row])
        return f"{_EVIDENCE_DETAIL[name].format(x=x)} ({r:.1f} x its threshold, learned from this pack's own history)"
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


def _event_score(report: AnomalyReport, kind: AnomalyKind, row: int) -> float:
    """The flag's score: the strongest evidence of its kind (in multiples of the pack's usual
    residual) where the pack's own evidence raised it, else the window detector's z."""
    own = [
        float(e[row]) for name, e in report.evidence.items()
        if EVIDENCE_KINDS[name] is kind and float(e[row]) > report.evidence_thresholds[name]
    ]  # fmt: skip
    return max(own) if own else float(report.scores[kind][row])


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
                        score=round(_event_score(report, kind, row), 2),
                        detail=_detail(report, kind, row),
                    )
                )
    return events

"""The twins' alert rules: what a shard reports to the alert manager every tick.

Vectorised over a shard's whole table (one pass, no per-twin Python except for twins that
raise a signal). Four families (:class:`contracts.alerts.AlertCategory`):

* **health**, critical on a single sample: pack temperature at or above
  ``pack_temp_critical_c``; cell imbalance (``cell_max_v - cell_min_v``) at or above
  ``cell_imbalance_critical_v``; voltage sag (a cell group under ``cell_sag_v`` while
  discharging, from ``cell_min_v`` or, without it, the pack voltage over ``series_cells``).
  Judged on every sample that arrived since the previous evaluation, so one hot sample in
  a message of five raises it; a twin with no new sample keeps its last verdict (the
  condition is about its latest state, and a parked vehicle reports once a minute) until
  it leaves its vehicle (a recorded swap or replacement).
* **anomaly**: each flag the anomaly models set (critical for temperature rise, sag and
  imbalance; warning for the softer ones), with the score.
* **maintenance**: remaining life to 80 % (p50) under ``rul_horizon_cycles``; health score
  falling faster than ``health_drop_per_day`` over at least ``health_rate_min_span_s``.
* **operations**: a battery in a vehicle silent for ``silent_after_s`` (and seen within
  ``silent_forget_s``: a battery parked in a depot shelf for weeks is not an alert).

The report is *complete* for its source (the shard): a signal it no longer carries is clear,
and the alert book's hysteresis decides when that resolves the alert.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from contracts.alerts import AlertCategory, AlertSeverity, AlertSignal
from contracts.anomaly_kinds import AnomalyKind
from contracts.samples import WINDOW_FIELDS
from twins.twin_table import TwinTable
from twins.zones import ZoneGrid

__all__ = ["TwinAlertParams", "TwinAlertReport", "TwinAlertRules"]

_F = {name: i for i, name in enumerate(WINDOW_FIELDS)}
_CRITICAL_FLAGS = AnomalyKind.TEMP_RISE | AnomalyKind.VOLTAGE_SAG | AnomalyKind.CELL_IMBALANCE
# Health conditions as bits of one per-twin mask (the verdict kept between samples).
_HOT, _IMBALANCE, _SAG = 1, 2, 4


@dataclass(frozen=True)
class TwinAlertParams:
    """Thresholds of the twins' alert rules (``[alerts]`` in the config).

    ``pack_temp_critical_c`` 60 °C is the usual discharge limit of NMC cells (datasheets
    allow -20..60 °C); above it ageing races and, further up, thermal runaway starts.
    ``cell_sag_v`` 2.7 V is below any cell's normal discharge cut-off (2.8-3.0 V).
    """

    pack_temp_critical_c: float = 60.0
    cell_imbalance_critical_v: float = 0.30
    cell_sag_v: float = 2.7
    series_cells: int = 13
    discharging_a: float = 1.0
    rul_horizon_cycles: float = 50.0
    health_drop_per_day: float = 2.0
    health_rate_min_span_s: float = 6 * 3600.0
    health_rate_window_s: float = 24 * 3600.0
    silent_after_s: float = 15 * 60.0
    silent_forget_s: float = 7 * 24 * 3600.0

    def __post_init__(self) -> None:
        if not 0.0 < self.pack_temp_critical_c < 150.0:
            raise ValueError(f"Expected pack_temp_critical_c in (0, 150) °C, got {self.pack_temp_critical_c}.")
        if not 0.0 < self.cell_imbalance_critical_v < 2.0 or not 0.0 < self.cell_sag_v < 5.0:
            raise ValueError(
                f"Expected cell_imbalance_critical_v in (0, 2) V and cell_sag_v in (0, 5) V, got "
                f"{self.cell_imbalance_critical_v} and {self.cell_sag_v}."
            )
        if self.series_cells < 1 or self.rul_horizon_cycles <= 0 or self.health_drop_per_day <= 0:
            raise ValueError(
                f"Expected series_cells >= 1, rul_horizon_cycles > 0 and health_drop_per_day > 0, got "
                f"{self.series_cells}, {self.rul_horizon_cycles} and {self.health_drop_per_day}."
            )
        if not 0 < self.silent_after_s < self.silent_forget_s:
            raise ValueError(
                f"Expected 0 < silent_after_s < silent_forget_s, got {self.silent_after_s} and "
                f"{self.silent_forget_s}."
            )


@dataclass(frozen=True)
class TwinAlertReport:
    """One shard's complete report: every signal that holds now, and how many batteries in
    vehicles it watches per zone (the denominators of area-outage rules)."""

    source: str
    at_s: float
    signals: list[AlertSignal]
    watched_by_zone: dict[str, int] = field(default_factory=dict)


class TwinAlertRules:
    """Evaluates a :class:`TwinTable` into a :class:`TwinAlertReport`.

    Keeps, per slot, the newest sample time it has judged, the health verdict bits with
    their evidence, and the anchor of the health-score rate. These are not checkpointed:
    after a restart the whole window is judged again (the alert book deduplicates by key),
    and the health rate starts a new span.
    """

    def __init__(self, source: str, params: TwinAlertParams = TwinAlertParams(), zones: ZoneGrid = ZoneGrid()) -> None:
        self.source = source
        self.params = params
        self.zones = zones
        self._judged_ts = np.full(0, -math.inf)
        self._bits = np.zeros(0, dtype=np.int64)
        self._peak = np.full((0, 3), np.nan)  # worst temperature, imbalance, sag cell voltage
        self._anchor = np.full((0, 2), np.nan)  # health score, at time

    def _fit(self, cap: int) -> None:
        n = self._bits.shape[0]
        if n >= cap:
            return
        self._judged_ts = np.concatenate([self._judged_ts, np.full(cap - n, -math.inf)])
        self._bits = np.concatenate([self._bits, np.zeros(cap - n, dtype=np.int64)])
        self._peak = np.concatenate([self._peak, np.full((cap - n, 3), np.nan)])
        self._anchor = np.concatenate([self._anchor, np.full((cap - n, 2), np.nan)])

    def evaluate(self, t: TwinTable, now_s: float) -> TwinAlertReport:
        """Judge the samples that arrived since the last call; report every signal that holds."""
        n = len(t)
        self._fit(t.capacity)
        slots = np.flatnonzero(t.count[:n] > 0)
        self._judge_new_samples(t, slots)
        self._update_health_anchor(t, slots, now_s)
        signals: list[AlertSignal] = []
        zones = self.zones.zone_ids(t.last_lat[slots], t.last_lon[slots]) if slots.size else []
        zone_of = dict(zip(slots.tolist(), zones, strict=True))
        # A battery out of any vehicle (swapped or replaced: with the field team, on a depot
        # shelf) sends nothing more; its last hot sample or anomaly flag is no longer news.
        in_field = slots[np.array([t.vehicle_ids[s] is not None for s in slots.tolist()], dtype=bool)]
        signals += self._health_signals(t, in_field, zone_of, now_s)
        signals += self._anomaly_signals(t, in_field, zone_of, now_s)
        signals += self._maintenance_signals(t, slots, zone_of, now_s)
        watched = self._watched(t, slots, now_s)
        signals += self._silent_signals(t, watched, zone_of, now_s)
        by_zone: dict[str, int] = {}
        for s in watched.tolist():
            by_zone[zone_of[s]] = by_zone.get(zone_of[s], 0) + 1
        return TwinAlertReport(self.source, now_s, signals, by_zone)

    # ------------------------------------------------------------------ health
    def _judge_new_samples(self, t: TwinTable, slots: npt.NDArray[np.intp]) -> None:
        p = self.params
        ts = t.window_ts[slots]  # (k, w): NaN where the ring is not filled yet
        with np.errstate(invalid="ignore"):
            new = ts > self._judged_ts[slots, None]
        has_new = new.any(axis=1)
        if not has_new.any():
            return
        s, new, ts = slots[has_new], new[has_new], ts[has_new]
        w = t.window[s]  # (k, w, f) float32
        temp = np.where(new, w[:, :, _F["temp_c"]], np.nan)
        cmin = np.where(new, w[:, :, _F["cell_min_v"]], np.nan)
        cmax = np.where(new, w[:, :, _F["cell_max_v"]], np.nan)
        pack = np.where(new, w[:, :, _F["pack_voltage_v"]], np.nan)
        cur = np.where(new, w[:, :, _F["current_a"]], np.nan)
        with np.errstate(invalid="ignore"):
            # The worst reading among the new samples is the evidence; NaN-aware reductions
            # of an all-NaN row give NaN (and a RuntimeWarning we do not want).
            max_temp = _nan_reduce(np.fmax.reduce, temp)
            max_spread = _nan_reduce(np.fmax.reduce, cmax - cmin)
            per_cell = np.where(np.isfinite(cmin), cmin, pack / p.series_cells)
            sag_cell = _nan_reduce(np.fmin.reduce, np.where(cur > p.discharging_a, per_cell, np.nan))
            bits = (
                np.where(max_temp >= p.pack_temp_critical_c, _HOT, 0)
                | np.where(max_spread >= p.cell_imbalance_critical_v, _IMBALANCE, 0)
                | np.where(sag_cell < p.cell_sag_v, _SAG, 0)
            )
        self._bits[s] = bits
        self._peak[s] = np.stack([max_temp, max_spread, sag_cell], axis=1)
        self._judged_ts[s] = np.nanmax(ts, axis=1)

    def _health_signals(
        self, t: TwinTable, slots: npt.NDArray[np.intp], zone_of: dict[int, str], now_s: float
    ) -> list[AlertSignal]:
        p = self.params
        out = []
        for s in slots[self._bits[slots] != 0].tolist():
            bits = int(self._bits[s])
            temp, spread, cell = (float(x) for x in self._peak[s])
            if bits & _HOT:
                out.append(self._signal(
                    t, s, zone_of, now_s, "pack_overtemp", AlertCategory.HEALTH, AlertSeverity.CRITICAL,
                    f"pack at {temp:.1f} °C (limit {p.pack_temp_critical_c:.0f} °C)",
                    {"temp_c": round(temp, 2), "limit_c": p.pack_temp_critical_c},
                ))  # fmt: skip
            if bits & _IMBALANCE:
                out.append(self._signal(
                    t, s, zone_of, now_s, "cell_imbalance", AlertCategory.HEALTH, AlertSeverity.CRITICAL,
                    f"cell groups {spread * 1000:.0f} mV apart (limit {p.cell_imbalance_critical_v * 1000:.0f} mV)",
                    {"cell_spread_v": round(spread, 4), "limit_v": p.cell_imbalance_critical_v},
                ))  # fmt: skip
            if bits & _SAG:
                out.append(self._signal(
                    t, s, zone_of, now_s, "voltage_sag", AlertCategory.HEALTH, AlertSeverity.CRITICAL,
                    f"a cell group at {cell:.2f} V under load (limit {p.cell_sag_v:.2f} V)",
                    {"cell_v": round(cell, 3), "limit_v": p.cell_sag_v},
                ))  # fmt: skip
        return out

    # ------------------------------------------------------------------ anomaly
    def _anomaly_signals(
        self, t: TwinTable, slots: npt.NDArray[np.intp], zone_of: dict[int, str], now_s: float
    ) -> list[AlertSignal]:
        out = []
        for s in slots[t.anomaly_flags[slots] != 0].tolist():
            for flag in AnomalyKind(int(t.anomaly_flags[s])):
                name = str(flag.name).lower()
                critical = bool(flag & _CRITICAL_FLAGS)
                score = float(t.anomaly_score[s])
                out.append(self._signal(
                    t, s, zone_of, now_s, f"anomaly_{name}", AlertCategory.ANOMALY,
                    AlertSeverity.CRITICAL if critical else AlertSeverity.WARNING,
                    f"anomaly model flags {name.replace('_', ' ')} (score {score:.1f})",
                    {"anomaly_score": _finite(score), "flags": int(t.anomaly_flags[s])},
                ))  # fmt: skip
        return out

    # ------------------------------------------------------------------ maintenance
    def _update_health_anchor(self, t: TwinTable, slots: npt.NDArray[np.intp], now_s: float) -> None:
        # The rate is measured from an anchor at most health_rate_window_s old: re-anchor
        # when it is older (or missing), so the rate follows the recent trend.
        score = t.health_score[slots]
        stale = ~np.isfinite(self._anchor[slots, 1]) | (now_s - self._anchor[slots, 1] > self.params.health_rate_window_s)
        fresh = slots[stale & np.isfinite(score)]
        self._anchor[fresh, 0] = t.health_score[fresh]
        self._anchor[fresh, 1] = now_s

    def _maintenance_signals(
        self, t: TwinTable, slots: npt.NDArray[np.intp], zone_of: dict[int, str], now_s: float
    ) -> list[AlertSignal]:
        p = self.params
        out = []
        with np.errstate(invalid="ignore"):
            low = slots[t.rul80_p50_cycles[slots] < p.rul_horizon_cycles]
        for s in low.tolist():
            out.append(self._signal(
                t, s, zone_of, now_s, "rul_low", AlertCategory.MAINTENANCE, AlertSeverity.WARNING,
                f"about {t.rul80_p50_cycles[s]:.0f} cycles to 80 % SOH (p10 {t.rul80_p10_cycles[s]:.0f})",
                {"rul80_p10_cycles": _finite(t.rul80_p10_cycles[s]), "rul80_p50_cycles": _finite(t.rul80_p50_cycles[s]),
                 "rul80_p90_cycles": _finite(t.rul80_p90_cycles[s]), "horizon_cycles": p.rul_horizon_cycles},
            ))  # fmt: skip
        span = now_s - self._anchor[slots, 1]
        with np.errstate(invalid="ignore", divide="ignore"):
            per_day = (self._anchor[slots, 0] - t.health_score[slots]) / span * 86400.0
            falling = slots[(span >= p.health_rate_min_span_s) & (per_day > p.health_drop_per_day)]
        for s in falling.tolist():
            drop = float((self._anchor[s, 0] - t.health_score[s]) / (now_s - self._anchor[s, 1]) * 86400.0)
            out.append(self._signal(
                t, s, zone_of, now_s, "health_falling", AlertCategory.MAINTENANCE, AlertSeverity.WARNING,
                f"health score falling {drop:.1f} points/day (limit {p.health_drop_per_day:.1f})",
                {"health_score": _finite(t.health_score[s]), "points_per_day": round(drop, 3),
                 "limit_per_day": p.health_drop_per_day, "model_version": int(t.health_model_version[s])},
            ))  # fmt: skip
        return out

    # ------------------------------------------------------------------ operations
    def _watched(self, t: TwinTable, slots: npt.NDArray[np.intp], now_s: float) -> npt.NDArray[np.intp]:
        """Twins in a vehicle seen within ``silent_forget_s``: the ones expected to report."""
        in_vehicle = np.array([t.vehicle_ids[s] is not None for s in slots.tolist()], dtype=bool)
        watched: npt.NDArray[np.intp] = slots[in_vehicle & (now_s - t.last_ts[slots] < self.params.silent_forget_s)]
        return watched

    def _silent_signals(
        self, t: TwinTable, watched: npt.NDArray[np.intp], zone_of: dict[int, str], now_s: float
    ) -> list[AlertSignal]:
        p = self.params
        out = []
        for s in watched[(now_s - t.last_ts[watched]) >= p.silent_after_s].tolist():
            quiet_s = float(now_s - t.last_ts[s])
            out.append(self._signal(
                t, s, zone_of, now_s, "battery_silent", AlertCategory.OPERATIONS, AlertSeverity.WARNING,
                f"no telemetry for {quiet_s / 60:.0f} min (expected within {p.silent_after_s / 60:.0f} min)",
                {"silent_s": round(quiet_s, 1), "last_ts": float(t.last_ts[s]), "limit_s": p.silent_after_s},
            ))  # fmt: skip
        return out

    def _signal(
        self, t: TwinTable, s: int, zone_of: dict[int, str], now_s: float, kind: str,
        category: AlertCategory, severity: AlertSeverity, summary: str,
        evidence: dict[str, float | int | str | bool | None],
    ) -> AlertSignal:
        battery = t.ids[s]
        lat, lon = float(t.last_lat[s]), float(t.last_lon[s])
        return AlertSignal(
            key=f"{kind}:{battery}", kind=kind, category=category, severity=severity, summary=summary,
            at_s=now_s, battery_id=battery, vehicle_id=t.vehicle_ids[s], zone=zone_of.get(s),
            lat=lat if math.isfinite(lat) else None, lon=lon if math.isfinite(lon) else None,
            labels={"source": self.source}, evidence=evidence,
        )  # fmt: skip


def _nan_reduce(reduce: object, x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    out: npt.NDArray[np.float64] = reduce(x, axis=1)  # type: ignore[operator]
    return out


def _finite(x: float) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None

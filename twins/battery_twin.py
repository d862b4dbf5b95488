"""One battery's twin: the per-battery face of the columnar :class:`TwinTable`.

A :class:`BatteryTwin` is a handle (table, slot). It reads and updates exactly the state
a standalone object would hold, so per-battery logic reads naturally and is testable
without Ray, while the shard keeps thousands of twins in one set of arrays.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

import numpy as np
import numpy.typing as npt

from contracts.anomaly_kinds import flag_names
from contracts.samples import SAMPLE_FIELDS, TelemetryBatch
from twins.clock import Clock
from twins.twin_table import (
    DOD_BIN_EDGES_PCT,
    SCORED_MODELS,
    ApplyResult,
    TwinTable,
    TwinTableParams,
)
from twins.zones import ZoneGrid

__all__ = [
    "DEFAULT_SCORE_STALE_AFTER_S",
    "BatteryTwin",
    "HealthBand",
    "TwinSnapshot",
    "health_band",
    "health_bands",
    "score_ages",
]

#: How long a model may go without scoring a twin before the twin's scores read as stale,
#: where no shard says otherwise (a twin outside a shard: tests, notebooks). A shard passes
#: ``ScoringParams.stale_after_ticks`` times its own ``score_interval_s``; this is that
#: for the defaults (three ticks of 10 s).
DEFAULT_SCORE_STALE_AFTER_S = 30.0


class HealthBand(StrEnum):
    """Coarse state of health, from the estimated capacity as % of rated."""

    GOOD = "good"  # >= 90 %
    FAIR = "fair"  # 80-90 %
    POOR = "poor"  # 70-80 %
    END_OF_LIFE = "end_of_life"  # < 70 %: the usual second-life / recycle threshold
    UNKNOWN = "unknown"  # no full enough discharge seen yet


_BAND_EDGES = ((90.0, HealthBand.GOOD), (80.0, HealthBand.FAIR), (70.0, HealthBand.POOR))


def health_band(soh_pct: float) -> HealthBand:
    if math.isnan(soh_pct):
        return HealthBand.UNKNOWN
    for edge, band in _BAND_EDGES:
        if soh_pct >= edge:
            return band
    return HealthBand.END_OF_LIFE


def health_bands(soh_pct: npt.NDArray[np.float64]) -> list[str]:
    """Vectorised :func:`health_band` (as strings, for grouping)."""
    out = np.full(soh_pct.shape, HealthBand.END_OF_LIFE.value, dtype=object)
    out[soh_pct >= 70.0] = HealthBand.POOR.value
    out[soh_pct >= 80.0] = HealthBand.FAIR.value
    out[soh_pct >= 90.0] = HealthBand.GOOD.value
    out[np.isnan(soh_pct)] = HealthBand.UNKNOWN.value
    return list(out)


def _f(x: Any) -> float | None:
    """JSON-friendly float: NaN and infinities become None."""
    x = float(x)
    return x if math.isfinite(x) else None


def score_ages(
    scored_at_s: Mapping[str, float], now_s: float, stale_after_s: float
) -> tuple[dict[str, float | None], bool]:
    """How old a twin's scores are at ``now_s``, and whether they are stale.

    Parameters
    ----------
    scored_at_s
        Per model, when it last scored the twin successfully (NaN: never).
    now_s
        The time the ages are measured at.
    stale_after_s
        A model that has scored the twin but not for longer than this makes it stale.

    Returns
    -------
    tuple
        Per model, seconds since its last score (``None``: it never scored the twin;
        never negative: a reader's clock behind the scorer's reads as just scored), and
        whether any model that has scored the twin is older than ``stale_after_s``.
    """
    ages = {
        model: round(max(0.0, now_s - float(at)), 3) if math.isfinite(at) else None
        for model, at in scored_at_s.items()
    }
    return ages, any(age is not None and age > stale_after_s for age in ages.values())


@dataclass(frozen=True)
class TwinSnapshot:
    """Everything a twin knows, at one instant, as plain values."""

    battery_id: str
    vehicle_id: str | None
    last_ts: float | None
    updated_at_s: float | None
    samples_total: int
    pack_voltage_v: float | None
    current_a: float | None
    temp_c: float | None
    soc_pct: float | None
    speed_kmh: float | None
    odometer_km: float | None
    cell_min_v: float | None
    cell_max_v: float | None
    lat: float | None
    lon: float | None
    zone: str
    charging: bool
    efc: float
    ah_discharged_ah: float
    ah_charged_ah: float
    time_hot_s: float
    max_temp_c: float | None
    dod_histogram: dict[str, int]
    cycles_completed: int
    rated_capacity_ah: float
    capacity_est_ah: float | None
    capacity_estimates: int
    soh_pct_est: float | None
    health_band: str
    resistance_est_ohm: float | None
    resistance_samples: int
    lstm_steps: int
    soh_model_pct: float | None
    health_score: float | None
    health_model_version: int
    anomaly_flags: list[str]
    anomaly_score: float | None
    rul_cycles_to_80pct: dict[str, float | None]
    rul_cycles_to_70pct: dict[str, float | None]
    rul_days_to_80pct: dict[str, float | None]
    rul_days_to_70pct: dict[str, float | None]
    priority: float | None
    lost_rides_6h: float | None
    idle_h: float | None
    #: The oldest of the models' last successful score times (``TwinTable``, "Score times").
    scored_at_s: float | None
    #: Per model of ``SCORED_MODELS``, seconds since it last scored the twin; None: never.
    score_age_s: dict[str, float | None]
    #: A model that has scored the twin has not succeeded for longer than the threshold.
    scores_stale: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def anomaly_flag_names(flags: int) -> list[str]:
    """Names of the anomaly kinds set in a twin's bitmask, e.g. ``["temp_rise"]``
    (:func:`contracts.anomaly_kinds.flags_from_names` maps them back)."""
    return flag_names(flags)


def _band(t: TwinTable, level: str, s: int, scale: float) -> dict[str, float | None]:
    """Remaining-life quantiles of one twin, scaled (1: cycles; days per cycle: days)."""
    return {q: _f(getattr(t, f"{level}_{q}_cycles")[s] * scale) for q in ("p10", "p50", "p90")}


def _days_per_cycle(t: TwinTable, s: int) -> float:
    """Calendar days one equivalent full cycle takes this twin, from its usage so far."""
    age_days = (float(t.last_ts[s]) - float(t.first_ts[s])) / 86_400.0
    efc = float(t.efc[s])
    # Under a day of history or no cycling: no usage rate to turn cycles into days.
    return age_days / efc if age_days >= 1.0 and efc > 0 else math.nan


class BatteryTwin:
    """The twin of one battery pack.

    Parameters
    ----------
    table
        The columnar store the twin lives in.
    slot
        Its row in ``table``.
    zones
        The grid used to name the twin's zone.
    score_stale_after_s
        The snapshot's ``scores_stale`` threshold (see :func:`score_ages`); a shard passes
        its own, from its scoring interval.
    """

    def __init__(
        self,
        table: TwinTable,
        slot: int,
        zones: ZoneGrid = ZoneGrid(),
        *,
        score_stale_after_s: float = DEFAULT_SCORE_STALE_AFTER_S,
    ) -> None:
        if not 0 <= slot < len(table):
            raise IndexError(f"Expected a slot in [0, {len(table)}), got {slot}.")
        if not score_stale_after_s > 0:
            raise ValueError(f"Expected score_stale_after_s > 0, got {score_stale_after_s}.")
        self.table = table
        self.slot = slot
        self.zones = zones
        self.score_stale_after_s = score_stale_after_s

    @classmethod
    def standalone(
        cls, battery_id: str, params: TwinTableParams = TwinTableParams(), clock: Clock | None = None
    ) -> BatteryTwin:
        """A twin in a table of its own (tests, notebooks, what-if runs)."""
        table = TwinTable(params, clock, initial_capacity=1)
        slot, _ = table.ensure(battery_id)
        return cls(table, slot)

    @property
    def battery_id(self) -> str:
        return self.table.ids[self.slot]

    @property
    def vehicle_id(self) -> str | None:
        return self.table.vehicle_ids[self.slot]

    def ingest(
        self, vehicle_id: str, seq: int, samples: dict[str, npt.ArrayLike]
    ) -> ApplyResult:
        """Apply one message's samples (columns named as in :data:`SAMPLE_FIELDS`)."""
        cols = {k: np.atleast_1d(np.asarray(samples.get(k, np.nan), dtype=np.float64)) for k in SAMPLE_FIELDS}
        n = len(cols["ts"])
        for k, arr in cols.items():
            if arr.size == 1 and n > 1:
                cols[k] = np.full(n, arr[0])
        batch = TelemetryBatch(
            battery_ids=[self.battery_id],
            vehicle_ids=[vehicle_id],
            seqs=np.array([seq], dtype=np.int64),
            msg_offsets=np.array([0, n], dtype=np.int64),
            columns=cols,
        )
        return self.table.apply(batch)

    def window(self) -> dict[str, npt.NDArray[np.float64]]:
        """Rolling window of samples, oldest first."""
        return self.table.window_of(self.slot)

    @property
    def lstm_state(self) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """The LSTM (h, c) the model deployments read and replace step by step."""
        return self.table.lstm_h[self.slot], self.table.lstm_c[self.slot]

    def set_lstm_state(self, h: npt.ArrayLike, c: npt.ArrayLike) -> None:
        hs = self.table.params.lstm_hidden_size
        h_arr = np.asarray(h, dtype=np.float32)
        c_arr = np.asarray(c, dtype=np.float32)
        if h_arr.shape != (hs,) or c_arr.shape != (hs,):
            raise ValueError(f"Expected h and c of shape ({hs},), got {h_arr.shape} and {c_arr.shape}.")
        self.table.lstm_h[self.slot] = h_arr
        self.table.lstm_c[self.slot] = c_arr
        self.table.lstm_steps[self.slot] += 1

    def snapshot(self) -> TwinSnapshot:
        t, s = self.table, self.slot
        has = t.count[s] > 0
        pos = (int(t.head[s]) - 1) % t.params.window_samples
        last = {name: _f(t.window[s, pos, i]) if has else None for i, name in enumerate(SAMPLE_FIELDS[1:])}
        cap = float(t.capacity_est_ah[s])
        rated = float(t.rated_capacity_ah[s])
        soh = 100.0 * cap / rated if not math.isnan(cap) else math.nan
        lat, lon = float(t.last_lat[s]), float(t.last_lon[s])
        edges = DOD_BIN_EDGES_PCT
        now_s = t.clock.now_s()
        ages, stale = score_ages(
            {m: float(t.scored_at_of(m)[s]) for m in SCORED_MODELS}, now_s, self.score_stale_after_s
        )
        return TwinSnapshot(
            battery_id=self.battery_id,
            vehicle_id=self.vehicle_id,
            last_ts=_f(t.last_ts[s]),
            updated_at_s=_f(t.updated_at_s[s]),
            samples_total=int(t.samples_total[s]),
            pack_voltage_v=last["pack_voltage_v"],
            current_a=last["current_a"],
            temp_c=last["temp_c"],
            soc_pct=last["soc_pct"],
            speed_kmh=last["speed_kmh"],
            odometer_km=last["odometer_km"],
            cell_min_v=last["cell_min_v"],
            cell_max_v=last["cell_max_v"],
            lat=_f(lat),
            lon=_f(lon),
            zone=self.zones.zone_id(lat, lon),
            charging=bool(t.charging[s]),
            efc=float(t.efc[s]),
            ah_discharged_ah=float(t.ah_discharged_ah[s]),
            ah_charged_ah=float(t.ah_charged_ah[s]),
            time_hot_s=float(t.time_hot_s[s]),
            max_temp_c=_f(t.max_temp_c[s]),
            dod_histogram={
                f"{edges[i]:g}-{edges[i + 1]:g}": int(c) for i, c in enumerate(t.dod_hist[s])
            },
            cycles_completed=int(t.cycles_completed[s]),
            rated_capacity_ah=rated,
            capacity_est_ah=_f(cap),
            capacity_estimates=int(t.capacity_estimates[s]),
            soh_pct_est=_f(soh),
            # The model's SOH when the twin has been scored, else its own coulomb estimate.
            health_band=health_band(
                float(t.soh_model_pct[s]) if math.isfinite(t.soh_model_pct[s]) else soh
            ).value,
            resistance_est_ohm=_f(t.resistance_est_ohm[s]),
            resistance_samples=int(t.resistance_samples[s]),
            lstm_steps=int(t.lstm_steps[s]),
            soh_model_pct=_f(t.soh_model_pct[s]),
            health_score=_f(t.health_score[s]),
            health_model_version=int(t.health_model_version[s]),
            anomaly_flags=anomaly_flag_names(int(t.anomaly_flags[s])),
            anomaly_score=_f(t.anomaly_score[s]),
            rul_cycles_to_80pct=_band(t, "rul80", s, 1.0),
            rul_cycles_to_70pct=_band(t, "rul70", s, 1.0),
            rul_days_to_80pct=_band(t, "rul80", s, _days_per_cycle(t, s)),
            rul_days_to_70pct=_band(t, "rul70", s, _days_per_cycle(t, s)),
            priority=_f(t.priority[s]),
            lost_rides_6h=_f(t.lost_rides_6h[s]),
            idle_h=_f((now_s - t.last_moving_ts[s]) / 3600.0),
            scored_at_s=_f(t.scored_at_s[s]),
            score_age_s=ages,
            scores_stale=stale,
        )

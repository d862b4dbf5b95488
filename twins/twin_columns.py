"""Every twin's latest state as aligned columns: what an HTTP replica reads between refreshes.

A shard hands out the :class:`TwinColumns` of its whole table in one call
(:meth:`twins.shard.TwinShard.columns`), and the HTTP replicas keep the columns of every
shard (:mod:`serve.http.read_snapshot`), so a single-battery read, an availability query
or the fleet map costs no call to a shard. :meth:`TwinColumns.state_of` answers one twin's
state with exactly the values :meth:`twins.battery_twin.BatteryTwin.snapshot` gives for
it (``tests/unit/twins/test_twin_columns.py`` holds them equal).

The columns are copies: the table they came from keeps changing while a replica holds
them, and :attr:`TwinColumns.as_of_s` says when they were taken.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from contracts.samples import WINDOW_FIELDS
from twins.battery_twin import (
    DEFAULT_SCORE_STALE_AFTER_S,
    anomaly_flag_names,
    health_band,
    health_bands,
    score_ages,
)
from twins.fleet_query import RentableInputs
from twins.twin_table import DOD_BIN_EDGES_PCT, SCORED_MODELS, TwinTable
from twins.zones import ZoneGrid

__all__ = ["TwinColumns"]

_EDGES = DOD_BIN_EDGES_PCT
_DOD_KEYS = tuple(f"{_EDGES[i]:g}-{_EDGES[i + 1]:g}" for i in range(len(_EDGES) - 1))
_READING = {name: i for i, name in enumerate(WINDOW_FIELDS)}
_QUANTILES = ("p10", "p50", "p90")
#: The table's per-twin arrays a twin's state is made of, copied as they are.
_COPIED = (
    "last_ts", "first_ts", "updated_at_s", "samples_total", "last_lat", "last_lon", "charging",
    "efc", "ah_discharged_ah", "ah_charged_ah", "time_hot_s", "max_temp_c", "dod_hist",
    "cycles_completed", "rated_capacity_ah", "capacity_est_ah", "capacity_estimates",
    "resistance_est_ohm", "resistance_samples", "lstm_steps", "soh_model_pct", "health_score",
    "health_model_version", "anomaly_flags", "anomaly_score", "rul70_p10_cycles",
    "rul70_p50_cycles", "rul70_p90_cycles", "rul80_p10_cycles", "rul80_p50_cycles",
    "rul80_p90_cycles", "priority", "lost_rides_6h", "last_moving_ts", "scored_at_s",
    "health_scored_at_s", "anomaly_scored_at_s", "degradation_scored_at_s",
    "priority_scored_at_s",
)  # fmt: skip


def _f(x: Any) -> float | None:
    """JSON-friendly float: NaN and infinities become None (as the twin's snapshot does)."""
    x = float(x)
    return x if math.isfinite(x) else None


@functools.lru_cache(maxsize=256)
def _flag_names(flags: int) -> tuple[str, ...]:
    return tuple(anomaly_flag_names(flags))


@functools.lru_cache(maxsize=1 << 16)
def _zone_of(cell_km: float, lat: float, lon: float) -> str:
    # Remembered: naming one position goes through numpy (tens of microseconds, a tenth of
    # a read), and parked vehicles are read at the same position again and again.
    return ZoneGrid(cell_km).zone_id(lat, lon)


@dataclass(frozen=True, eq=False)
class TwinColumns:
    """The latest state of many twins, one row per twin, in aligned numpy columns.

    Parameters
    ----------
    as_of_s
        Unix time the columns were taken (the shard's clock).
    zone_cell_km
        Cell size of the zone grid the twins are named on (:class:`twins.zones.ZoneGrid`).
    score_stale_after_s
        The ``scores_stale`` threshold of :meth:`state_of`, from the shard that took the
        columns (its scoring interval): carried with the columns so an HTTP replica judges
        staleness as the shard would, without a setting of its own.
    battery_ids, vehicle_ids
        One entry per row; ``None`` where the battery is in no vehicle.
    latest
        The newest sample's readings, ``(rows, len(WINDOW_FIELDS))`` float32 as the twin's
        window holds them; NaN where the twin has no sample.
    last_ts ... priority_scored_at_s
        The twin table's arrays of the same names (:class:`twins.twin_table.TwinTable`).
    """

    as_of_s: float
    zone_cell_km: float
    score_stale_after_s: float
    battery_ids: list[str]
    vehicle_ids: list[str | None]
    latest: npt.NDArray[np.float32]
    last_ts: npt.NDArray[np.float64]
    first_ts: npt.NDArray[np.float64]
    updated_at_s: npt.NDArray[np.float64]
    samples_total: npt.NDArray[np.int64]
    last_lat: npt.NDArray[np.float64]
    last_lon: npt.NDArray[np.float64]
    charging: npt.NDArray[np.bool_]
    efc: npt.NDArray[np.float64]
    ah_discharged_ah: npt.NDArray[np.float64]
    ah_charged_ah: npt.NDArray[np.float64]
    time_hot_s: npt.NDArray[np.float64]
    max_temp_c: npt.NDArray[np.float64]
    dod_hist: npt.NDArray[np.int64]
    cycles_completed: npt.NDArray[np.int64]
    rated_capacity_ah: npt.NDArray[np.float64]
    capacity_est_ah: npt.NDArray[np.float64]
    capacity_estimates: npt.NDArray[np.int64]
    resistance_est_ohm: npt.NDArray[np.float64]
    resistance_samples: npt.NDArray[np.int64]
    lstm_steps: npt.NDArray[np.int64]
    soh_model_pct: npt.NDArray[np.float64]
    health_score: npt.NDArray[np.float64]
    health_model_version: npt.NDArray[np.int64]
    anomaly_flags: npt.NDArray[np.int64]
    anomaly_score: npt.NDArray[np.float64]
    rul70_p10_cycles: npt.NDArray[np.float64]
    rul70_p50_cycles: npt.NDArray[np.float64]
    rul70_p90_cycles: npt.NDArray[np.float64]
    rul80_p10_cycles: npt.NDArray[np.float64]
    rul80_p50_cycles: npt.NDArray[np.float64]
    rul80_p90_cycles: npt.NDArray[np.float64]
    priority: npt.NDArray[np.float64]
    lost_rides_6h: npt.NDArray[np.float64]
    last_moving_ts: npt.NDArray[np.float64]
    scored_at_s: npt.NDArray[np.float64]
    health_scored_at_s: npt.NDArray[np.float64]
    anomaly_scored_at_s: npt.NDArray[np.float64]
    degradation_scored_at_s: npt.NDArray[np.float64]
    priority_scored_at_s: npt.NDArray[np.float64]

    def __post_init__(self) -> None:
        if not self.score_stale_after_s > 0:
            raise ValueError(f"Expected score_stale_after_s > 0, got {self.score_stale_after_s}.")
        n = len(self.battery_ids)
        if len(self.vehicle_ids) != n or self.latest.shape != (n, len(WINDOW_FIELDS)):
            raise ValueError(
                f"Expected {n} vehicle ids and latest readings of shape ({n}, "
                f"{len(WINDOW_FIELDS)}), got {len(self.vehicle_ids)} and {self.latest.shape}."
            )
        bad = [name for name in _COPIED if len(getattr(self, name)) != n]
        if bad:
            raise ValueError(f"Expected {n} rows in every column, got other lengths in {bad}.")

    def __len__(self) -> int:
        return len(self.battery_ids)

    # ------------------------------------------------------------------ building
    @classmethod
    def from_table(
        cls,
        table: TwinTable,
        zones: ZoneGrid,
        as_of_s: float,
        *,
        score_stale_after_s: float = DEFAULT_SCORE_STALE_AFTER_S,
    ) -> TwinColumns:
        """Copy the state of every twin of ``table``, taken at ``as_of_s``."""
        n = len(table)
        pos = (table.head[:n] - 1) % table.params.window_samples
        latest = table.window[np.arange(n), pos, :].copy()
        latest[table.count[:n] == 0] = np.nan
        return cls(
            as_of_s=float(as_of_s),
            zone_cell_km=zones.cell_km,
            score_stale_after_s=score_stale_after_s,
            battery_ids=list(table.ids),
            vehicle_ids=list(table.vehicle_ids),
            latest=latest,
            **{name: getattr(table, name)[:n].copy() for name in _COPIED},
        )

    @classmethod
    def concat(cls, parts: Sequence[TwinColumns]) -> TwinColumns:
        """One set of columns from several (one per shard); as of the oldest part.

        Raises ``ValueError`` when there are no parts or they name zones on different grids.
        """
        if not parts:
            raise ValueError("Expected at least one part to concatenate, got none.")
        cells = {p.zone_cell_km for p in parts}
        if len(cells) != 1:
            raise ValueError(f"Expected every part on one zone grid, got cell sizes {sorted(cells)} km.")
        if len(parts) == 1:
            return parts[0]
        arrays = {name: np.concatenate([getattr(p, name) for p in parts]) for name in ("latest", *_COPIED)}
        return cls(
            as_of_s=min(p.as_of_s for p in parts),
            zone_cell_km=parts[0].zone_cell_km,
            # The shards of one system share one scoring interval; while a restart mixes
            # two, the longer threshold keeps a slower shard's twins from reading stale.
            score_stale_after_s=max(p.score_stale_after_s for p in parts),
            battery_ids=[b for p in parts for b in p.battery_ids],
            vehicle_ids=[v for p in parts for v in p.vehicle_ids],
            **arrays,
        )

    # ------------------------------------------------------------------ derived columns
    def reading(self, name: str) -> npt.NDArray[np.float64]:
        """The newest value of one sample column (``soc_pct``, ``temp_c``...) for every row."""
        return self.latest[:, _READING[name]].astype(np.float64)

    @functools.cached_property
    def soh_pct_est(self) -> npt.NDArray[np.float64]:
        """State of health from the twins' own capacity estimates, % of rated."""
        out: npt.NDArray[np.float64] = 100.0 * self.capacity_est_ah / self.rated_capacity_ah
        return out

    @functools.cached_property
    def soh_pct(self) -> npt.NDArray[np.float64]:
        """The health model's SOH where a twin was scored, else its own estimate."""
        return np.where(np.isfinite(self.soh_model_pct), self.soh_model_pct, self.soh_pct_est)

    @functools.cached_property
    def health_band(self) -> list[str]:
        """Each twin's health band, from :attr:`soh_pct`."""
        return health_bands(self.soh_pct)

    def anomaly_names(self) -> list[list[str]]:
        """Each twin's anomaly flags by name (``[]`` for none), as in its state."""
        return [list(_flag_names(f)) for f in self.anomaly_flags.tolist()]

    @functools.cached_property
    def rentable(self) -> RentableInputs:
        """What the availability query reads (:func:`twins.fleet_query.nearest_rentable`)."""
        return RentableInputs.of(
            vehicle_ids=self.vehicle_ids, lat=self.last_lat, lon=self.last_lon,
            last_ts=self.last_ts, soc_pct=self.reading("soc_pct"),
            pack_voltage_v=self.reading("pack_voltage_v"), capacity_est_ah=self.capacity_est_ah,
            rated_capacity_ah=self.rated_capacity_ah, charging=self.charging,
            anomaly_flags=self.anomaly_flags,
        )  # fmt: skip

    # ------------------------------------------------------------------ one twin
    def state_of(self, row: int, now_s: float) -> dict[str, Any]:
        """One twin's state as plain values, keyed and valued as :class:`TwinSnapshot`.

        ``now_s`` dates ``idle_h`` (hours since the twin last moved) and ``score_age_s``.
        """
        s = row
        lat, lon = float(self.last_lat[s]), float(self.last_lon[s])
        cap = float(self.capacity_est_ah[s])
        rated = float(self.rated_capacity_ah[s])
        soh = 100.0 * cap / rated if not math.isnan(cap) else math.nan
        soh_model = float(self.soh_model_pct[s])
        readings = self.latest[s].tolist()
        # Calendar days one equivalent full cycle takes, from the twin's usage so far;
        # under a day of history or no cycling there is no rate to turn cycles into days.
        age_days = (float(self.last_ts[s]) - float(self.first_ts[s])) / 86_400.0
        efc = float(self.efc[s])
        days_per_cycle = age_days / efc if age_days >= 1.0 and efc > 0 else math.nan
        rul70 = (self.rul70_p10_cycles[s], self.rul70_p50_cycles[s], self.rul70_p90_cycles[s])
        rul80 = (self.rul80_p10_cycles[s], self.rul80_p50_cycles[s], self.rul80_p90_cycles[s])
        r = _READING
        ages, stale = score_ages(
            {m: float(getattr(self, f"{m}_scored_at_s")[s]) for m in SCORED_MODELS},
            now_s,
            self.score_stale_after_s,
        )
        return {
            "battery_id": self.battery_ids[s],
            "vehicle_id": self.vehicle_ids[s],
            "last_ts": _f(self.last_ts[s]),
            "updated_at_s": _f(self.updated_at_s[s]),
            "samples_total": int(self.samples_total[s]),
            "pack_voltage_v": _f(readings[r["pack_voltage_v"]]),
            "current_a": _f(readings[r["current_a"]]),
            "temp_c": _f(readings[r["temp_c"]]),
            "soc_pct": _f(readings[r["soc_pct"]]),
            "speed_kmh": _f(readings[r["speed_kmh"]]),
            "odometer_km": _f(readings[r["odometer_km"]]),
            "cell_min_v": _f(readings[r["cell_min_v"]]),
            "cell_max_v": _f(readings[r["cell_max_v"]]),
            "lat": _f(lat),
            "lon": _f(lon),
            "zone": _zone_of(self.zone_cell_km, lat, lon),
            "charging": bool(self.charging[s]),
            "efc": efc,
            "ah_discharged_ah": float(self.ah_discharged_ah[s]),
            "ah_charged_ah": float(self.ah_charged_ah[s]),
            "time_hot_s": float(self.time_hot_s[s]),
            "max_temp_c": _f(self.max_temp_c[s]),
            "dod_histogram": dict(zip(_DOD_KEYS, self.dod_hist[s].tolist(), strict=True)),
            "cycles_completed": int(self.cycles_completed[s]),
            "rated_capacity_ah": rated,
            "capacity_est_ah": _f(cap),
            "capacity_estimates": int(self.capacity_estimates[s]),
            "soh_pct_est": _f(soh),
            "health_band": health_band(soh_model if math.isfinite(soh_model) else soh).value,
            "resistance_est_ohm": _f(self.resistance_est_ohm[s]),
            "resistance_samples": int(self.resistance_samples[s]),
            "lstm_steps": int(self.lstm_steps[s]),
            "soh_model_pct": _f(soh_model),
            "health_score": _f(self.health_score[s]),
            "health_model_version": int(self.health_model_version[s]),
            "anomaly_flags": list(_flag_names(int(self.anomaly_flags[s]))),
            "anomaly_score": _f(self.anomaly_score[s]),
            "rul_cycles_to_80pct": {q: _f(v) for q, v in zip(_QUANTILES, rul80, strict=True)},
            "rul_cycles_to_70pct": {q: _f(v) for q, v in zip(_QUANTILES, rul70, strict=True)},
            "rul_days_to_80pct": {
                q: _f(v * days_per_cycle) for q, v in zip(_QUANTILES, rul80, strict=True)
            },
            "rul_days_to_70pct": {
                q: _f(v * days_per_cycle) for q, v in zip(_QUANTILES, rul70, strict=True)
            },
            "priority": _f(self.priority[s]),
            "lost_rides_6h": _f(self.lost_rides_6h[s]),
            "idle_h": _f((now_s - self.last_moving_ts[s]) / 3600.0),
            "scored_at_s": _f(self.scored_at_s[s]),
            "score_age_s": ages,
            "scores_stale": stale,
        }

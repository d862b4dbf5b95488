"""The one feature code: the same functions feed training and the live twins.

A feature store's job, done by construction: every model input is computed here from a
:class:`TwinCounters` (the derived counters a twin keeps) or from explicit priority inputs.
There are three ways to obtain counters, and all end in the same :func:`health_features`:

* online, :meth:`TwinCounters.from_table`: the live columns of a shard's
  :class:`~twins.twin_table.TwinTable`;
* offline from history, :func:`counters_from_history`: stored telemetry replayed through a
  fresh ``TwinTable`` (the same estimators, so a retraining job sees what the twin saw);
* synthetic, :meth:`TwinCounters.from_lifetime`: the ageing simulator's snapshots, which
  stand in for years of telemetry when training the health model.

``tests/unit/models/test_features.py`` proves the online and history paths agree exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Protocol

import numpy as np
import numpy.typing as npt

from contracts.samples import TelemetryBatch
from twins.twin_table import DOD_BIN_EDGES_PCT, TwinTable, TwinTableParams

__all__ = [
    "HEALTH_FEATURE_NAMES",
    "PRIORITY_FEATURE_NAMES",
    "LifetimeCounters",
    "PriorityInputs",
    "TwinCounters",
    "counters_from_history",
    "health_features",
    "priority_features",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

_DOD_NAMES = tuple(
    f"dod_frac_{int(DOD_BIN_EDGES_PCT[i])}_{int(DOD_BIN_EDGES_PCT[i + 1])}"
    for i in range(len(DOD_BIN_EDGES_PCT) - 1)
)
_DOD_CENTRES = np.array(
    [(DOD_BIN_EDGES_PCT[i] + DOD_BIN_EDGES_PCT[i + 1]) / 200.0 for i in range(len(_DOD_NAMES))]
)

#: Columns of :func:`health_features`, in order.
HEALTH_FEATURE_NAMES: tuple[str, ...] = (
    "age_days",
    "efc",
    "efc_per_day",
    "ah_throughput_per_rated",
    "cycles_completed",
    "mean_dod",
    *_DOD_NAMES,
    "time_hot_h",
    "max_temp_c",
    "capacity_ratio_est",
    "capacity_estimates",
    "resistance_est_ohm",
    "resistance_samples",
)

#: Columns of :func:`priority_features`, in order.
PRIORITY_FEATURE_NAMES: tuple[str, ...] = (
    "soc_pct",
    "soh",
    "hours_to_empty",
    "demand_next_3h",
    "demand_next_6h",
    "idle_h",
    "hour_of_day",
    "charging",
)


class LifetimeCounters(Protocol):
    """What the synthetic path reads: the counters of :class:`sim.ageing.LifetimeSample`.

    A protocol rather than the simulator's class, so the twins (and every shard process)
    never import the simulator.
    """

    @property
    def age_days(self) -> FloatArray: ...
    @property
    def efc(self) -> FloatArray: ...
    @property
    def ah_discharged_ah(self) -> FloatArray: ...
    @property
    def ah_charged_ah(self) -> FloatArray: ...
    @property
    def cycles_completed(self) -> IntArray: ...
    @property
    def dod_hist(self) -> IntArray: ...
    @property
    def time_hot_s(self) -> FloatArray: ...
    @property
    def max_temp_c(self) -> FloatArray: ...
    @property
    def rated_capacity_ah(self) -> FloatArray: ...
    @property
    def capacity_est_ah(self) -> FloatArray: ...
    @property
    def capacity_estimates(self) -> IntArray: ...
    @property
    def resistance_est_ohm(self) -> FloatArray: ...
    @property
    def resistance_samples(self) -> IntArray: ...


@dataclass(frozen=True)
class TwinCounters:
    """The derived counters of ``n`` twins; names match the ``TwinTable`` columns."""

    age_s: FloatArray
    efc: FloatArray
    ah_discharged_ah: FloatArray
    ah_charged_ah: FloatArray
    cycles_completed: IntArray
    dod_hist: IntArray
    time_hot_s: FloatArray
    max_temp_c: FloatArray
    rated_capacity_ah: FloatArray
    capacity_est_ah: FloatArray
    capacity_estimates: IntArray
    resistance_est_ohm: FloatArray
    resistance_samples: IntArray

    def __post_init__(self) -> None:
        n = self.age_s.shape[0]
        for f in fields(self):
            arr = getattr(self, f.name)
            if arr.shape[0] != n:
                raise ValueError(
                    f"Expected every counter with {n} rows (as age_s), got {f.name} with "
                    f"shape {arr.shape}."
                )
        if self.dod_hist.shape != (n, len(_DOD_NAMES)):
            raise ValueError(
                f"Expected dod_hist of shape ({n}, {len(_DOD_NAMES)}), got {self.dod_hist.shape}."
            )

    def __len__(self) -> int:
        return int(self.age_s.shape[0])

    @classmethod
    def from_table(cls, table: TwinTable, slots: IntArray, now_s: float) -> TwinCounters:
        """Online path: the live counters of ``slots`` at time ``now_s``.

        Age counts from the twin's first sample: the operator's commissioning date is not
        in the telemetry, and the training data counts age the same way.
        """
        s = np.asarray(slots, dtype=np.int64)
        return cls(
            age_s=np.maximum(now_s - table.first_ts[s], 0.0),
            efc=table.efc[s].copy(),
            ah_discharged_ah=table.ah_discharged_ah[s].copy(),
            ah_charged_ah=table.ah_charged_ah[s].copy(),
            cycles_completed=table.cycles_completed[s].copy(),
            dod_hist=table.dod_hist[s].copy(),
            time_hot_s=table.time_hot_s[s].copy(),
            max_temp_c=np.where(np.isfinite(table.max_temp_c[s]), table.max_temp_c[s], np.nan),
            rated_capacity_ah=table.rated_capacity_ah[s].copy(),
            capacity_est_ah=table.capacity_est_ah[s].copy(),
            capacity_estimates=table.capacity_estimates[s].copy(),
            resistance_est_ohm=table.resistance_est_ohm[s].copy(),
            resistance_samples=table.resistance_samples[s].copy(),
        )

    @classmethod
    def from_lifetime(cls, sample: LifetimeCounters) -> TwinCounters:
        """Synthetic path: the ageing simulator's snapshots (:class:`sim.ageing.LifetimeSample`)."""
        return cls(
            age_s=sample.age_days * 86_400.0,
            efc=sample.efc,
            ah_discharged_ah=sample.ah_discharged_ah,
            ah_charged_ah=sample.ah_charged_ah,
            cycles_completed=sample.cycles_completed,
            dod_hist=sample.dod_hist,
            time_hot_s=sample.time_hot_s,
            max_temp_c=sample.max_temp_c,
            rated_capacity_ah=sample.rated_capacity_ah,
            capacity_est_ah=sample.capacity_est_ah,
            capacity_estimates=sample.capacity_estimates,
            resistance_est_ohm=sample.resistance_est_ohm,
            resistance_samples=sample.resistance_samples,
        )


def counters_from_history(
    batch: TelemetryBatch, now_s: float, params: TwinTableParams = TwinTableParams()
) -> tuple[list[str], TwinCounters]:
    """Offline path: replay stored telemetry through a fresh table; (battery ids, counters).

    ``batch`` is the history as one :class:`TelemetryBatch` (for instance from the
    telemetry store's replay), in the order it was ingested.
    """
    table = TwinTable(params, initial_capacity=max(16, len(set(batch.battery_ids))))
    # Stored history passed the live twins' checks already; replay it as they took it.
    table.apply(batch, replay=True)
    slots = np.arange(len(table), dtype=np.int64)
    return list(table.ids), TwinCounters.from_table(table, slots, now_s)


def health_features(c: TwinCounters) -> npt.NDArray[np.float32]:
    """Health-model inputs, one row per twin, columns :data:`HEALTH_FEATURE_NAMES`.

    Missing estimates stay NaN: XGBoost learns a default direction for them, which is
    better than inventing a value for a twin that has not completed a full segment yet.
    """
    age_days = c.age_s / 86_400.0
    segs = c.dod_hist.sum(axis=1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        dod_frac = np.where(segs[:, None] > 0, c.dod_hist / segs[:, None], np.nan)
        mean_dod = np.where(segs > 0, (c.dod_hist * _DOD_CENTRES).sum(axis=1) / segs, np.nan)
        efc_per_day = np.where(age_days >= 1.0, c.efc / np.maximum(age_days, 1.0), np.nan)
        cap_ratio = c.capacity_est_ah / c.rated_capacity_ah
    cols = [
        age_days,
        c.efc,
        efc_per_day,
        c.ah_discharged_ah / c.rated_capacity_ah,
        c.cycles_completed.astype(np.float64),
        mean_dod,
        *dod_frac.T,
        c.time_hot_s / 3600.0,
        c.max_temp_c,
        cap_ratio,
        c.capacity_estimates.astype(np.float64),
        c.resistance_est_ohm,
        c.resistance_samples.astype(np.float64),
    ]
    return np.stack(cols, axis=1).astype(np.float32)


@dataclass(frozen=True)
class PriorityInputs:
    """What the priority model needs per battery, named with units.

    ``demand_next_*`` are forecast ride starts in the battery's zone; ``consumption_pct_per_ride``
    is the state of charge one ride takes from this pack (more for an aged pack).
    """

    soc_pct: FloatArray
    soh: FloatArray
    consumption_pct_per_ride: FloatArray
    demand_next_3h: FloatArray
    demand_next_6h: FloatArray
    idle_h: FloatArray
    hour_of_day: FloatArray
    charging: npt.NDArray[np.bool_]


def priority_features(p: PriorityInputs, rentable_soc_pct: float = 15.0) -> npt.NDArray[np.float32]:
    """Priority-model inputs, one row per battery, columns :data:`PRIORITY_FEATURE_NAMES`.

    ``hours_to_empty`` is the physics part: rides the remaining usable charge allows,
    divided by the zone's ride rate. The forest learns the rest (rate uncertainty, idling).
    """
    usable = np.maximum(p.soc_pct - rentable_soc_pct, 0.0)
    rides_left = usable / np.maximum(p.consumption_pct_per_ride, 1e-3)
    rate_per_h = np.maximum(p.demand_next_6h / 6.0, 1e-3)
    hours_to_empty = np.minimum(rides_left / rate_per_h, 48.0)
    cols = [
        p.soc_pct,
        p.soh,
        hours_to_empty,
        p.demand_next_3h,
        p.demand_next_6h,
        p.idle_h,
        p.hour_of_day,
        p.charging.astype(np.float64),
    ]
    return np.stack(cols, axis=1).astype(np.float32)


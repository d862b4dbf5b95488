"""The one feature module: online (live table) and offline (replayed history) agree exactly."""

from __future__ import annotations

import numpy as np
import pytest

from contracts.samples import TelemetryBatch
from sim.ageing import LifetimeSimulator
from twins.features import (
    HEALTH_FEATURE_NAMES,
    PRIORITY_FEATURE_NAMES,
    PriorityInputs,
    TwinCounters,
    counters_from_history,
    health_features,
    priority_features,
)
from twins.twin_table import TwinTable


def _concat(batches: list[TelemetryBatch]) -> TelemetryBatch:
    """All batches as one history batch, in ingest order (what the telemetry store replays)."""
    offsets = [0]
    for b in batches:
        offsets.extend((offsets[-1] + np.asarray(b.msg_offsets[1:])).tolist())
    return TelemetryBatch(
        battery_ids=[i for b in batches for i in b.battery_ids],
        vehicle_ids=[v for b in batches for v in b.vehicle_ids],
        seqs=np.concatenate([b.seqs for b in batches]),
        msg_offsets=np.array(offsets, dtype=np.int64),
        columns={k: np.concatenate([b.columns[k] for b in batches]) for k in batches[0].columns},
    )


def test_online_and_history_features_are_identical(fleet_telemetry: list[TelemetryBatch]) -> None:
    """A live table fed tick by tick and a replay of the stored history give the same features."""
    live = TwinTable()
    for batch in fleet_telemetry:
        live.apply(batch)
    now = float(max(b.columns["ts"].max() for b in fleet_telemetry))
    ids, offline = counters_from_history(_concat(fleet_telemetry), now)
    slots = np.array([live.slot(i) for i in ids], dtype=np.int64)
    online = TwinCounters.from_table(live, slots, now)
    x_on, x_off = health_features(online), health_features(offline)
    assert x_on.shape == (len(ids), len(HEALTH_FEATURE_NAMES))
    # Counts are equal exactly; sums equal up to the order of float additions (a tick sums
    # its samples before adding them to the counter, a replay sums other groups).
    counts = [HEALTH_FEATURE_NAMES.index(n) for n in ("cycles_completed", "capacity_estimates", "resistance_samples")]
    np.testing.assert_array_equal(x_on[:, counts], x_off[:, counts])
    np.testing.assert_allclose(x_on, x_off, rtol=1e-5, atol=1e-6)
    # The fleet rode for 40 minutes: the counters are not trivially zero.
    assert np.nanmax(x_on[:, HEALTH_FEATURE_NAMES.index("efc")]) > 0.05


def test_lifetime_counters_feed_the_same_function() -> None:
    """Simulated lifetimes become features through the same code, NaN where a twin has no estimate."""
    s = LifetimeSimulator(seed=0).run(30, 300, 2)
    x = health_features(TwinCounters.from_lifetime(s))
    assert x.shape == (len(s), len(HEALTH_FEATURE_NAMES))
    cap = x[:, HEALTH_FEATURE_NAMES.index("capacity_ratio_est")]
    assert np.array_equal(np.isnan(cap), s.capacity_estimates == 0)


def test_counters_reject_ragged_columns() -> None:
    """Counters of different lengths are an error naming the column."""
    s = LifetimeSimulator(seed=0).run(5, 50, 1)
    c = TwinCounters.from_lifetime(s)
    with pytest.raises(ValueError, match="efc"):
        TwinCounters(**{**c.__dict__, "efc": c.efc[:-1]})


def test_priority_hours_to_empty_follows_charge_and_demand() -> None:
    """More charge or less demand means more hours to empty; the columns are in order."""
    p = PriorityInputs(
        soc_pct=np.array([20.0, 80.0, 80.0]),
        soh=np.ones(3),
        consumption_pct_per_ride=np.full(3, 4.0),
        demand_next_3h=np.array([3.0, 3.0, 0.3]),
        demand_next_6h=np.array([6.0, 6.0, 0.6]),
        idle_h=np.zeros(3),
        hour_of_day=np.full(3, 17.0),
        charging=np.zeros(3, dtype=bool),
    )
    x = priority_features(p)
    hte = x[:, PRIORITY_FEATURE_NAMES.index("hours_to_empty")]
    assert hte[0] < hte[1] < hte[2]
    assert hte[0] == pytest.approx((20 - 15) / 4 / 1.0)

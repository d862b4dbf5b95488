"""Tests for :mod:`twins.twin_columns`: every twin's state as columns, for the read replicas."""

from __future__ import annotations

import math

import numpy as np
import pytest

from contracts.anomaly_kinds import AnomalyKind
from twins.battery_twin import BatteryTwin
from twins.clock import ManualClock
from twins.twin_columns import TwinColumns
from twins.twin_table import TwinTable, TwinTableParams
from twins.zones import ZoneGrid

from .factories import T0_S, RandomWalk, make_batch, message


def _same(a: object, b: object) -> bool:
    """Equal, with NaN equal to NaN (dicts and lists compared element by element)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


@pytest.fixture
def varied(clock: ManualClock) -> TwinTable:
    """Twins in every state a read meets: a long random walk (capacity estimates, cycles,
    charging), one scored with an anomaly flag and remaining-life bands (its priority model
    failing since: stale), one in no vehicle, and one created by a swap with no sample yet."""
    table = TwinTable(TwinTableParams(window_samples=16, lstm_hidden_size=4), clock)
    walk = RandomWalk(seed=3, n_batteries=6, n_samples=400)
    for m in walk.messages(samples_per_message=20):
        table.apply(make_batch(m))
    table.apply(make_batch(message("bat-scored", 0, [T0_S, T0_S + 5.0], soc_pct=[70.0, 69.9])))
    s = table.index["bat-scored"]
    table.soh_model_pct[s], table.health_score[s], table.health_model_version[s] = 83.5, 71.0, 3
    table.anomaly_flags[s] = int(AnomalyKind.TEMP_RISE | AnomalyKind.CELL_IMBALANCE)
    table.anomaly_score[s], table.priority[s], table.scored_at_s[s] = 0.9, 64.0, T0_S + 6.0
    table.health_scored_at_s[s] = table.anomaly_scored_at_s[s] = T0_S + 3600.0
    table.degradation_scored_at_s[s] = T0_S + 3590.0
    table.priority_scored_at_s[s] = T0_S + 6.0
    # Ten days of history and 20 cycles: remaining life in days too (2 cycles a day).
    table.first_ts[s], table.efc[s] = T0_S - 10 * 86_400.0, 20.0
    for level in ("rul70", "rul80"):
        for q, v in (("p10", 300.0), ("p50", 450.0), ("p90", 700.0)):
            getattr(table, f"{level}_{q}_cycles")[s] = v
    table.apply(make_batch(message("bat-loose", 0, [T0_S], vehicle_id="veh-x")))
    table.vehicle_ids[table.index["bat-loose"]] = None
    table.ensure("bat-new")
    clock.advance(3600.0)
    return table


def test_every_twin_reads_as_its_snapshot(varied: TwinTable, clock: ManualClock) -> None:
    """state_of(row) gives exactly BatteryTwin.snapshot() of that twin, field for field and
    in the same order, for every kind of twin (no sample yet included)."""
    zones = ZoneGrid(0.5)
    cols = TwinColumns.from_table(varied, zones, clock.now_s())
    assert len(cols) == len(varied) == 9
    for slot, battery in enumerate(varied.ids):
        expected = BatteryTwin(varied, slot, zones).snapshot().to_dict()
        got = cols.state_of(slot, clock.now_s())
        assert list(got) == list(expected), battery
        assert _same(got, expected), (battery, {k: (got[k], expected[k]) for k in got if not _same(got[k], expected[k])})


def test_score_ages_are_read_with_the_shards_threshold(varied: TwinTable, clock: ManualClock) -> None:
    """state_of ages each model's score at ``now_s`` and judges staleness with the
    threshold the columns were taken with (the shard's), not a replica's own."""
    s = varied.index["bat-scored"]
    now = clock.now_s()
    strict = TwinColumns.from_table(varied, ZoneGrid(), now, score_stale_after_s=20.0)
    state = strict.state_of(s, now)
    assert state["score_age_s"] == {"health": 0.0, "anomaly": 0.0, "degradation": 10.0, "priority": 3594.0}
    assert state["scores_stale"] is True and state["scored_at_s"] == T0_S + 6.0
    lenient = TwinColumns.from_table(varied, ZoneGrid(), now, score_stale_after_s=4000.0)
    assert lenient.state_of(s, now)["scores_stale"] is False
    fresh = varied.index["bat-loose"]
    assert strict.state_of(fresh, now)["scores_stale"] is False
    assert set(strict.state_of(fresh, now)["score_age_s"].values()) == {None}
    with pytest.raises(ValueError, match="score_stale_after_s > 0, got -1"):
        TwinColumns.from_table(varied, ZoneGrid(), now, score_stale_after_s=-1.0)


def test_the_columns_are_a_copy_taken_at_as_of(varied: TwinTable, clock: ManualClock) -> None:
    """Changing the table afterwards leaves the columns as they were; as_of_s is kept."""
    cols = TwinColumns.from_table(varied, ZoneGrid(), clock.now_s())
    slot = varied.index["bat-scored"]
    before = cols.state_of(slot, clock.now_s())
    varied.apply(make_batch(message("bat-scored", 1, [T0_S + 60.0], soc_pct=60.0)))
    varied.health_score[slot] = 10.0
    varied.vehicle_ids[slot] = "veh-other"
    assert cols.state_of(slot, clock.now_s()) == before
    assert cols.as_of_s == clock.now_s()


def test_derived_columns(varied: TwinTable, clock: ManualClock) -> None:
    """Readings, SOH (model where scored, else the estimate), bands and flag names per row."""
    cols = TwinColumns.from_table(varied, ZoneGrid(), clock.now_s())
    s = varied.index["bat-scored"]
    assert cols.reading("soc_pct")[s] == pytest.approx(69.9, abs=1e-4)
    assert math.isnan(cols.reading("soc_pct")[varied.index["bat-new"]])
    assert cols.soh_pct[s] == 83.5 and cols.health_band[s] == "fair"
    est = ~np.isfinite(varied.soh_model_pct[: len(varied)])
    np.testing.assert_array_equal(cols.soh_pct[est], cols.soh_pct_est[est])
    assert cols.anomaly_names()[s] == ["temp_rise", "cell_imbalance"]
    assert cols.anomaly_names()[varied.index["bat-new"]] == []
    state = cols.state_of(s, clock.now_s())
    assert state["rul_days_to_70pct"]["p50"] == pytest.approx(450.0 / 2.0, rel=1e-3)
    days_per_cycle = state["rul_days_to_70pct"]["p50"] / state["rul_cycles_to_70pct"]["p50"]
    assert state["rul_days_to_80pct"]["p50"] == pytest.approx(state["rul_cycles_to_80pct"]["p50"] * days_per_cycle)


def test_concat_joins_shards_as_of_the_oldest(clock: ManualClock) -> None:
    """Parts of two shards concatenate row after row, as of the older part, with the longer
    stale threshold; one part is answered as it is; no part, or parts on different zone
    grids, are refused."""
    a = TwinTable(TwinTableParams(window_samples=8), clock)
    b = TwinTable(TwinTableParams(window_samples=8), clock)
    a.apply(make_batch(message("bat-a", 0, [T0_S], soc_pct=50.0)))
    b.apply(make_batch(message("bat-b", 0, [T0_S], soc_pct=40.0), message("bat-c", 0, [T0_S], vehicle_id="veh-2")))
    pa = TwinColumns.from_table(a, ZoneGrid(), T0_S + 10.0)
    pb = TwinColumns.from_table(b, ZoneGrid(), T0_S + 12.0, score_stale_after_s=60.0)
    both = TwinColumns.concat([pa, pb])
    assert both.battery_ids == ["bat-a", "bat-b", "bat-c"] and both.as_of_s == T0_S + 10.0
    assert both.score_stale_after_s == 60.0  # the longer threshold: no shard reads stale early
    assert both.reading("soc_pct").tolist()[:2] == [50.0, 40.0]
    assert both.state_of(2, T0_S)["vehicle_id"] == "veh-2"
    assert TwinColumns.concat([pa]) is pa
    with pytest.raises(ValueError, match="at least one part"):
        TwinColumns.concat([])
    with pytest.raises(ValueError, match="one zone grid"):
        TwinColumns.concat([pa, TwinColumns.from_table(b, ZoneGrid(2.0), T0_S)])


def test_misaligned_columns_are_refused(clock: ManualClock) -> None:
    """A column of another length than the ids is an error naming it."""
    t = TwinTable(TwinTableParams(window_samples=8), clock)
    t.apply(make_batch(message("bat-a", 0, [T0_S])))
    cols = TwinColumns.from_table(t, ZoneGrid(), T0_S)
    fields = {name: getattr(cols, name) for name in cols.__dataclass_fields__}
    with pytest.raises(ValueError, match="efc"):
        TwinColumns(**{**fields, "efc": np.zeros(2)})
    with pytest.raises(ValueError, match="vehicle ids"):
        TwinColumns(**{**fields, "vehicle_ids": []})


def test_an_empty_table_gives_empty_columns(clock: ManualClock) -> None:
    cols = TwinColumns.from_table(TwinTable(TwinTableParams(window_samples=8), clock), ZoneGrid(), T0_S)
    assert len(cols) == 0 and cols.anomaly_names() == [] and cols.health_band == []

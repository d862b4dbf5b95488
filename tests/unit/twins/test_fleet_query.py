"""Tests for :mod:`twins.fleet_query`: filters, top-N, grouped stats and shard merges."""

from __future__ import annotations

import math

import numpy as np
import pytest

from twins.clock import ManualClock
from twins.fleet_query import (
    Filter,
    GroupStats,
    group_stats,
    merge_group_stats,
    merge_top_n,
    top_n,
)
from twins.twin_table import TwinTable, TwinTableParams
from twins.zones import ZoneGrid

from .factories import T0_S, RandomWalk, make_batch, message

BERLIN = (52.52, 13.40)
MUNICH = (48.14, 11.58)
NOW_S = T0_S + 600.0


@pytest.fixture
def fleet(clock: ManualClock) -> TwinTable:
    """Five twins with one sample each, chosen so every filter below has a known answer.

    ====  ======  ====  ====  ======  ===============  ============  ========
    twin  zone    SoC   temp  last_ts  capacity (SoH)    band          charging
    ====  ======  ====  ====  ======  ===============  ============  ========
    a     Berlin  10    30    +100    14.25 Ah (95 %)  good          no
    b     Berlin  50    50    +200    12.75 Ah (85 %)  fair          no
    c     Munich  90    20    +300    10.5 Ah (70 %)   poor          yes
    d     Munich  30    40    +400    unknown          unknown       no
    e     -       -     -     never   unknown          unknown       no
    ====  ======  ====  ====  ======  ===============  ============  ========
    """
    table = TwinTable(TwinTableParams(window_samples=4), clock)
    rows = [
        ("a", BERLIN, 10.0, 30.0, 100.0, 5.0, 20.0, 14.25),
        ("b", BERLIN, 50.0, 50.0, 200.0, 5.0, 20.0, 12.75),
        ("c", MUNICH, 90.0, 20.0, 300.0, -5.0, 0.0, 10.5),
        ("d", MUNICH, 30.0, 40.0, 400.0, 5.0, 20.0, math.nan),
    ]
    table.apply(
        make_batch(
            *[
                message(
                    bid,
                    0,
                    [T0_S + t],
                    vehicle_id=f"veh-{bid}",
                    soc_pct=soc,
                    temp_c=temp,
                    lat=pos[0],
                    lon=pos[1],
                    current_a=cur,
                    speed_kmh=speed,
                )
                for bid, pos, soc, temp, t, cur, speed, _ in rows
            ]
        )
    )
    for bid, *_, cap in rows:
        table.capacity_est_ah[table.slot(bid)] = cap
    table.ensure("e")
    return table


def _matching(table: TwinTable, *filters: Filter) -> set[str]:
    """Twins passing ``filters`` (samples_total is finite for every twin, so none is lost)."""
    return {r.battery_id for r in top_n(table, "samples_total", 100, filters=filters, now_s=NOW_S)}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("soc_pct:lt:30", {"a"}),
        ("soc_pct:le:30", {"a", "d"}),
        ("soc_pct:gt:50", {"c"}),
        ("soc_pct:ge:50", {"b", "c"}),
        ("soc_pct:eq:90", {"c"}),
        ("temp_c:gt:35", {"b", "d"}),
        ("soh_pct_est:ge:85", {"a", "b"}),
        ("soh_pct_est:lt:80", {"c"}),
        ("staleness_s:gt:350", {"a", "b", "e"}),  # e never reported: infinitely stale
        ("samples_total:eq:0", {"e"}),
    ],
)
def test_numeric_filters(fleet: TwinTable, text: str, expected: set[str]) -> None:
    """Numeric filters compare as floats; NaN (no reading, no estimate) never matches lt/gt."""
    assert _matching(fleet, Filter.parse(text)) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("health_band:eq:good", {"a"}),
        ("health_band:ne:good", {"b", "c", "d", "e"}),
        ("health_band:eq:unknown", {"d", "e"}),
        (f"zone:eq:{ZoneGrid().zone_id(*BERLIN)}", {"a", "b"}),
        ("zone:eq:unknown", {"e"}),
        ("charging:eq:true", {"c"}),
        ("vehicle_id:eq:veh-b", {"b"}),
        ("vehicle_id:eq:", {"e"}),
    ],
)
def test_categorical_filters(fleet: TwinTable, text: str, expected: set[str]) -> None:
    """Categorical filters compare strings: band, zone, charging flag, vehicle."""
    assert _matching(fleet, Filter.parse(text)) == expected


def test_filters_combine_with_and(fleet: TwinTable) -> None:
    """Several filters keep the twins passing all of them."""
    berlin = ZoneGrid().zone_id(*BERLIN)
    assert _matching(fleet, Filter("zone", "eq", berlin), Filter("soc_pct", "lt", 40.0)) == {"a"}


def test_top_n_descending(fleet: TwinTable) -> None:
    """The three highest SoCs, highest first, with the twin's vehicle, zone and band."""
    rows = top_n(fleet, "soc_pct", 3)
    assert [(r.battery_id, r.value) for r in rows] == [("c", 90.0), ("b", 50.0), ("d", 30.0)]
    top = rows[0]
    assert (top.vehicle_id, top.zone, top.soc_pct, top.health_band) == (
        "veh-c",
        ZoneGrid().zone_id(*MUNICH),
        90.0,
        "poor",
    )


def test_top_n_ascending(fleet: TwinTable) -> None:
    """descending=False ranks the lowest first."""
    rows = top_n(fleet, "soc_pct", 3, descending=False)
    assert [r.battery_id for r in rows] == ["a", "d", "b"]


@pytest.mark.parametrize("descending", [True, False])
def test_top_n_never_ranks_nan(fleet: TwinTable, descending: bool) -> None:
    """Twins without a value (no SoC, no capacity estimate, no temperature) are left out."""
    assert {r.battery_id for r in top_n(fleet, "soc_pct", 10, descending=descending)} == {
        "a",
        "b",
        "c",
        "d",
    }
    by_cap = top_n(fleet, "capacity_est_ah", 10, descending=descending)
    expected = ["a", "b", "c"] if descending else ["c", "b", "a"]
    assert [r.battery_id for r in by_cap] == expected
    assert "e" not in {r.battery_id for r in top_n(fleet, "max_temp_c", 10, descending=descending)}


def test_top_n_row_of_a_twin_without_samples(fleet: TwinTable) -> None:
    """A twin that never reported ranks by counters, with None for its SoC and vehicle."""
    rows = top_n(
        fleet, "samples_total", 1, descending=False, filters=[Filter("zone", "eq", "unknown")]
    )
    assert len(rows) == 1
    row = rows[0]
    assert (row.battery_id, row.value, row.vehicle_id, row.soc_pct) == ("e", 0.0, None, None)
    assert (row.zone, row.health_band) == ("unknown", "unknown")


def test_top_n_by_staleness(fleet: TwinTable) -> None:
    """staleness_s is now_s minus the twin's newest sample: d (200 s old) is the freshest."""
    rows = top_n(fleet, "staleness_s", 2, descending=False, now_s=NOW_S)
    assert [(r.battery_id, r.value) for r in rows] == [("d", 200.0), ("c", 300.0)]


def test_top_n_rejects_bad_arguments(fleet: TwinTable) -> None:
    """top_n needs a numeric field and n >= 1."""
    with pytest.raises(ValueError, match="Expected a numeric field"):
        top_n(fleet, "health_band", 3)
    with pytest.raises(ValueError, match="Expected n >= 1, got 0"):
        top_n(fleet, "soc_pct", 0)


def test_queries_on_an_empty_table(clock: ManualClock) -> None:
    """An empty table answers with no rows and no groups."""
    empty = TwinTable(clock=clock)
    assert top_n(empty, "soc_pct", 5) == []
    assert group_stats(empty, "zone", ["soc_pct"]) == {}


def test_group_stats_by_health_band(fleet: TwinTable) -> None:
    """Counts per band include twins without the field; means use only known values."""
    out = {
        k: v.to_dict() for k, v in group_stats(fleet, "health_band", ["soc_pct", "temp_c"]).items()
    }
    assert {k: v["count"] for k, v in out.items()} == {
        "good": 1,
        "fair": 1,
        "poor": 1,
        "unknown": 2,
    }
    assert out["fair"]["temp_c"] == {"mean": 50.0, "min": 50.0, "max": 50.0, "n": 1}
    assert out["unknown"]["soc_pct"] == {"mean": 30.0, "min": 30.0, "max": 30.0, "n": 1}


def test_group_stats_by_zone(fleet: TwinTable) -> None:
    """Per-zone count, mean, min and max; a zone with no known values reports None."""
    grid = ZoneGrid()
    out = {k: v.to_dict() for k, v in group_stats(fleet, "zone", ["soc_pct"]).items()}
    assert out[grid.zone_id(*BERLIN)] == {
        "count": 2,
        "soc_pct": {"mean": 30.0, "min": 10.0, "max": 50.0, "n": 2},
    }
    assert out[grid.zone_id(*MUNICH)] == {
        "count": 2,
        "soc_pct": {"mean": 60.0, "min": 30.0, "max": 90.0, "n": 2},
    }
    assert out["unknown"] == {
        "count": 1,
        "soc_pct": {"mean": None, "min": None, "max": None, "n": 0},
    }


def test_group_stats_over_everything(fleet: TwinTable) -> None:
    """group_by=None gives one group "all"; filters narrow it."""
    out = group_stats(fleet, None, ["soc_pct", "soh_pct_est"])
    assert list(out) == ["all"]
    d = out["all"].to_dict()
    assert d["count"] == 5
    assert d["soc_pct"] == {"mean": 45.0, "min": 10.0, "max": 90.0, "n": 4}
    assert d["soh_pct_est"]["mean"] == pytest.approx((95.0 + 85.0 + 70.0) / 3)
    hot = group_stats(fleet, None, ["soc_pct"], filters=[Filter("temp_c", "ge", 40.0)])
    assert hot["all"].to_dict() == {
        "count": 2,
        "soc_pct": {"mean": 40.0, "min": 30.0, "max": 50.0, "n": 2},
    }


def test_group_stats_with_nothing_matching(fleet: TwinTable) -> None:
    """No match: "all" with count 0 (no group_by), or no groups at all (group_by)."""
    none = [Filter("soc_pct", "gt", 100.0)]
    assert group_stats(fleet, None, ["soc_pct"], filters=none)["all"].to_dict() == {
        "count": 0,
        "soc_pct": {"mean": None, "min": None, "max": None, "n": 0},
    }
    assert group_stats(fleet, "zone", ["soc_pct"], filters=none) == {}


def test_group_stats_rejects_bad_arguments(fleet: TwinTable) -> None:
    """group_by must be categorical and fields numeric."""
    with pytest.raises(ValueError, match="Expected group_by in"):
        group_stats(fleet, "soc_pct", ["temp_c"])
    with pytest.raises(ValueError, match="Expected fields from"):
        group_stats(fleet, "zone", ["zone"])


# ---------------------------------------------------------------------------- merges
@pytest.fixture
def sharded(clock: ManualClock) -> tuple[TwinTable, TwinTable, TwinTable]:
    """Twenty random-walk twins in one table, and the same twins split 10/10 over two."""
    walk = RandomWalk(seed=13, n_batteries=20, n_samples=12)
    msgs = walk.messages(samples_per_message=6)
    params = TwinTableParams(window_samples=8)
    whole, left, right = (TwinTable(params, clock) for _ in range(3))
    whole.apply(make_batch(*msgs))
    left.apply(make_batch(*[m for m in msgs if m.battery_id in walk.batteries[:10]]))
    right.apply(make_batch(*[m for m in msgs if m.battery_id in walk.batteries[10:]]))
    caps = dict(zip(walk.batteries, np.random.default_rng(2).uniform(9.0, 15.0, 20), strict=True))
    caps[walk.batteries[3]] = math.nan
    for t in (whole, left, right):
        for bid in t.ids:
            t.capacity_est_ah[t.slot(bid)] = caps[bid]
    return whole, left, right


@pytest.mark.parametrize("by", ["soc_pct", "capacity_est_ah", "efc", "temp_c"])
@pytest.mark.parametrize("descending", [True, False])
def test_merge_top_n_equals_top_n_of_one_table(
    sharded: tuple[TwinTable, TwinTable, TwinTable], by: str, descending: bool
) -> None:
    """Merging each shard's top 5 gives the top 5 of the whole fleet."""
    whole, left, right = sharded
    parts = [top_n(t, by, 5, descending=descending) for t in (left, right)]
    assert merge_top_n(parts, 5, descending=descending) == top_n(
        whole, by, 5, descending=descending
    )


@pytest.mark.parametrize("group_by", ["health_band", "zone", None])
def test_merge_group_stats_equals_group_stats_of_one_table(
    sharded: tuple[TwinTable, TwinTable, TwinTable], group_by: str | None
) -> None:
    """Merging per-shard group stats gives the stats of the whole fleet."""
    whole, left, right = sharded
    fields = ["soc_pct", "soh_pct_est", "ah_discharged_ah"]
    merged = merge_group_stats(group_stats(t, group_by, fields) for t in (left, right))
    expected = group_stats(whole, group_by, fields)
    assert merged.keys() == expected.keys()
    assert len(expected) > 1 or group_by is None
    for name, g in expected.items():
        got, want = merged[name].to_dict(), g.to_dict()
        assert got["count"] == want["count"], name
        for f in fields:
            assert got[f]["n"] == want[f]["n"], (name, f)
            for stat in ("mean", "min", "max"):
                if want[f][stat] is None:
                    assert got[f][stat] is None, (name, f, stat)
                else:
                    assert got[f][stat] == pytest.approx(want[f][stat], rel=1e-12), (name, f, stat)


def test_group_stats_merge_skips_empty_parts() -> None:
    """Merging a group with no values into one with values keeps the known min and max."""
    a = GroupStats(count=2, sums={"x": 3.0}, mins={"x": 1.0}, maxs={"x": 2.0}, ns={"x": 2})
    empty = GroupStats(
        count=1, sums={"x": 0.0}, mins={"x": math.inf}, maxs={"x": -math.inf}, ns={"x": 0}
    )
    a.merge(empty)
    assert a.to_dict() == {"count": 3, "x": {"mean": 1.5, "min": 1.0, "max": 2.0, "n": 2}}


# ---------------------------------------------------------------------------- Filter
def test_filter_parse() -> None:
    """field:op:value, numbers for numeric fields, the rest of the text kept for strings."""
    assert Filter.parse("soc_pct:lt:20") == Filter("soc_pct", "lt", 20.0)
    assert Filter.parse("health_band:eq:poor") == Filter("health_band", "eq", "poor")
    assert Filter.parse("vehicle_id:eq:veh:7") == Filter("vehicle_id", "eq", "veh:7")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("soc_pct:lt", r"Expected a filter 'field:op:value', got 'soc_pct:lt'"),
        ("nope:lt:1", r"Expected a field in .*got 'nope'"),
        ("soc_pct:less:1", r"Expected op in .*got 'less'"),
        ("soc_pct:lt:abc", r"Expected a number for 'soc_pct', got 'abc'"),
        ("zone:lt:z1_1", r"Categorical field 'zone' takes eq or ne, got 'lt'"),
    ],
)
def test_filter_parse_errors(text: str, match: str) -> None:
    """A malformed filter is refused with what was expected and what arrived."""
    with pytest.raises(ValueError, match=match):
        Filter.parse(text)

"""Tests for :mod:`twins.twin_table`: derived state, ordering, dedup and checkpoints.

Physics tests feed hand-made series whose answers can be worked out on paper (10 A for
an hour is 10 Ah); ordering tests check that how samples arrive (shuffled, late, split
over batches, mixed with other batteries) never changes what a twin ends up knowing.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pytest

from contracts.samples import TelemetryBatch
from twins.clock import ManualClock
from twins.twin_table import DOD_BIN_EDGES_PCT, SCORED_MODELS, TwinTable, TwinTableParams

from .factories import T0_S, Message, RandomWalk, make_batch, message, permuted

BID = "bat-1"


# ---------------------------------------------------------------------------- helpers
def _state_names(table: TwinTable) -> list[str]:
    """Every per-twin array the checkpoint writes: by definition, all of a twin's state."""
    with np.load(io.BytesIO(table.to_bytes()), allow_pickle=True) as data:
        return [name for name in data.files if name not in ("ids", "vehicle_ids")]


def _twin_state(table: TwinTable, battery_id: str) -> dict[str, object]:
    slot = table.slot(battery_id)
    state: dict[str, object] = {
        name: np.array(getattr(table, name)[slot]) for name in _state_names(table)
    }
    state["vehicle_id"] = table.vehicle_ids[slot]
    return state


def _assert_same_twin(
    a: TwinTable, b: TwinTable, battery_id: str, skip: Sequence[str] = ()
) -> None:
    sa, sb = _twin_state(a, battery_id), _twin_state(b, battery_id)
    assert sa.keys() == sb.keys()
    for name in sa:
        if name in skip:
            continue
        va, vb = sa[name], sb[name]
        if isinstance(va, np.ndarray) and va.dtype.kind == "f":
            np.testing.assert_allclose(
                va, vb, rtol=1e-12, atol=0, equal_nan=True, err_msg=f"{battery_id}.{name}"
            )
        elif isinstance(va, np.ndarray):
            np.testing.assert_array_equal(va, vb, err_msg=f"{battery_id}.{name}")
        else:
            assert va == vb, f"{battery_id}.{name}: {va!r} != {vb!r}"


def _series(
    ts_rel_s: npt.ArrayLike, seq: int = 0, battery_id: str = BID, **columns: npt.ArrayLike
) -> TelemetryBatch:
    """One message of ``battery_id`` with samples at ``T0_S + ts_rel_s``."""
    ts = T0_S + np.asarray(ts_rel_s, dtype=np.float64)
    return make_batch(message(battery_id, seq, ts, **columns))


def _discharge(
    t0_rel_s: float,
    duration_s: float,
    soc_from: float,
    soc_to: float,
    current_a: float,
    seq: int,
    dt_s: float = 60.0,
) -> TelemetryBatch:
    """A drive at constant current with SoC falling linearly, one sample every ``dt_s``."""
    t = np.arange(0.0, duration_s + dt_s / 2, dt_s)
    soc = soc_from + (soc_to - soc_from) * t / duration_s
    return _series(t0_rel_s + t, seq=seq, current_a=current_a, soc_pct=soc, speed_kmh=20.0)


def _charge_sample(t_rel_s: float, soc: float, seq: int, current_a: float = -5.0) -> TelemetryBatch:
    """One sample plugged in at standstill."""
    return _series([t_rel_s], seq=seq, current_a=current_a, soc_pct=soc, speed_kmh=0.0)


# ---------------------------------------------------------------------------- params
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"window_samples": 0}, "window_samples >= 1"),
        ({"rated_capacity_ah": 0.0}, "rated_capacity_ah > 0"),
        ({"capacity_ewma_alpha": 0.0}, "capacity_ewma_alpha in"),
        ({"resistance_ewma_alpha": 1.5}, "resistance_ewma_alpha in"),
        ({"lstm_hidden_size": 0}, "lstm_hidden_size >= 1"),
    ],
)
def test_params_reject_out_of_range_knobs(kwargs: dict[str, float], match: str) -> None:
    """TwinTableParams refuses knobs outside their range and names the knob."""
    with pytest.raises(ValueError, match=match):
        TwinTableParams(**kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- coulomb counting
def test_constant_discharge_for_one_hour_counts_ten_ah(table: TwinTable) -> None:
    """10 A for 3600 s, sampled every minute, integrates to 10 Ah discharged and 0 charged."""
    res = table.apply(_series(np.arange(0, 3601, 60), current_a=10.0, speed_kmh=20.0))
    s = table.slot(BID)
    assert res.applied_samples == 61
    assert table.ah_discharged_ah[s] == pytest.approx(10.0, rel=1e-12)
    assert table.ah_charged_ah[s] == 0.0
    assert table.samples_total[s] == 61
    assert table.first_ts[s] == T0_S
    assert table.last_ts[s] == T0_S + 3600


def test_current_ramp_is_integrated_by_trapezoid(table: TwinTable) -> None:
    """0 A then 10 A 36 s later is 5 A on average: 0.05 Ah (not 0 or 0.1 Ah of a step rule)."""
    table.apply(_series([0.0, 36.0], current_a=[0.0, 10.0]))
    assert table.ah_discharged_ah[table.slot(BID)] == pytest.approx(0.05, rel=1e-12)


def test_standstill_charge_counts_charged_ah(table: TwinTable) -> None:
    """-6 A at standstill for 600 s adds 1 Ah charged, nothing discharged, and sets charging."""
    table.apply(_series(np.arange(0, 601, 60), current_a=-6.0, speed_kmh=0.0))
    s = table.slot(BID)
    assert table.ah_charged_ah[s] == pytest.approx(1.0, rel=1e-12)
    assert table.ah_discharged_ah[s] == 0.0
    assert bool(table.charging[s])


@pytest.mark.parametrize(("gap_s", "integrated"), [(120.0, True), (120.5, False), (3600.0, False)])
def test_gap_longer_than_max_integration_gap_is_not_integrated(
    table: TwinTable, gap_s: float, integrated: bool
) -> None:
    """An interval longer than max_integration_gap_s (120 s) adds neither Ah nor hot time.

    Samples at 0, 60, 60+gap, 120+gap seconds at 10 A and 50 °C: the two 60 s intervals
    always count (1200 A·s = 1/3 Ah, 120 s hot); the middle one only if gap <= 120 s.
    """
    table.apply(_series([0.0, 60.0, 60.0 + gap_s, 120.0 + gap_s], current_a=10.0, temp_c=50.0))
    s = table.slot(BID)
    counted_s = 120.0 + (gap_s if integrated else 0.0)
    assert table.ah_discharged_ah[s] == pytest.approx(10.0 * counted_s / 3600.0, rel=1e-12)
    assert table.time_hot_s[s] == pytest.approx(counted_s)


def test_gap_between_batches_is_not_integrated(table: TwinTable) -> None:
    """The gap rule also holds when the gap falls between two batches of the same twin."""
    table.apply(_series([0.0, 60.0], seq=0, current_a=10.0))
    table.apply(_series([600.0, 660.0], seq=1, current_a=10.0))
    assert table.ah_discharged_ah[table.slot(BID)] == pytest.approx(
        10.0 * 120.0 / 3600.0, rel=1e-12
    )


def test_efc_counts_soc_decreases_only(table: TwinTable) -> None:
    """SoC 100 → 50 → 80 → 30 swings down 50 + 50 points: one equivalent full cycle."""
    # The rise to 80 takes ten minutes: a faster one would be rejected as implausible.
    table.apply(_series([0.0, 10.0, 610.0, 620.0], soc_pct=[100.0, 50.0, 80.0, 30.0]))
    assert table.efc[table.slot(BID)] == pytest.approx(1.0)


def test_time_hot_counts_intervals_ending_above_threshold(table: TwinTable) -> None:
    """Temps 40, 46, 47, 45, 50 °C every 10 s: three intervals end above 45 °C (45 itself is not hot)."""
    table.apply(_series([0.0, 10.0, 20.0, 30.0, 40.0], temp_c=[40.0, 46.0, 47.0, 45.0, 50.0]))
    s = table.slot(BID)
    assert table.time_hot_s[s] == pytest.approx(30.0)
    assert table.max_temp_c[s] == 50.0


def test_missing_readings_do_not_poison_lifetime_counters(table: TwinTable) -> None:
    """A sample without current or temperature (NaN) leaves Ah and max temperature usable.

    10 A at 0, 36, 72 and 108 s with the 36 s sample missing both readings: the two
    intervals touching it are not integrated, the last one is (0.1 Ah); hot time counts the
    intervals ending at 72 and 108 s (50 °C), and the maximum ignores the gap.
    """
    table.apply(_series([0.0, 36.0], seq=0, current_a=[10.0, np.nan], temp_c=[50.0, np.nan]))
    table.apply(_series([72.0, 108.0], seq=1, current_a=10.0, temp_c=50.0))
    s = table.slot(BID)
    assert table.ah_discharged_ah[s] == pytest.approx(0.1, rel=1e-9)
    assert table.ah_charged_ah[s] == 0.0
    assert table.max_temp_c[s] == 50.0
    assert table.time_hot_s[s] == pytest.approx(72.0)


# ---------------------------------------------------------------------------- segments
def test_full_discharge_closed_by_charge_gives_capacity_and_dod(table: TwinTable) -> None:
    """12 A for 30 min while SoC falls 90 → 40 %, then plugged in: 6 Ah / 0.5 = 12 Ah.

    The 50-point segment lands in the 50-60 % DoD bin and completes one cycle.
    """
    table.apply(_discharge(0.0, 1800.0, 90.0, 40.0, 12.0, seq=0))
    s = table.slot(BID)
    assert np.isnan(table.capacity_est_ah[s])  # the segment is still open
    table.apply(_charge_sample(1860.0, 40.0, seq=1))
    assert table.capacity_est_ah[s] == pytest.approx(12.0, rel=1e-9)
    assert table.capacity_estimates[s] == 1
    assert table.cycles_completed[s] == 1
    expected_hist = np.zeros(len(DOD_BIN_EDGES_PCT) - 1, dtype=np.int64)
    expected_hist[5] = 1
    np.testing.assert_array_equal(table.dod_hist[s], expected_hist)
    assert bool(table.charging[s])
    assert np.isnan(table.seg_start_soc[s])


def test_charge_in_the_same_batch_closes_the_segment(table: TwinTable) -> None:
    """Discharge and the charge that ends it in one message give the same 12 Ah estimate."""
    both = TelemetryBatch.concat(
        [_discharge(0.0, 1800.0, 90.0, 40.0, 12.0, seq=0), _charge_sample(1860.0, 40.0, seq=1)]
    )
    table.apply(both)
    s = table.slot(BID)
    assert table.capacity_est_ah[s] == pytest.approx(12.0, rel=1e-9)
    assert table.cycles_completed[s] == 1


def test_discharge_closed_by_soc_jump_gives_capacity(table: TwinTable) -> None:
    """10 A for 18 min while SoC falls 90 → 60 % is 3 Ah / 0.3 = 10 Ah.

    The pack then reappears an hour later at 95 % (charged while offline): the jump of
    35 points closes the segment (DoD bin 30-40 %) and opens a new one at 95 %.
    """
    table.apply(_discharge(0.0, 1080.0, 90.0, 60.0, 10.0, seq=0))
    table.apply(_series([1080.0 + 3600.0], seq=1, current_a=2.0, soc_pct=95.0, speed_kmh=20.0))
    s = table.slot(BID)
    assert table.capacity_est_ah[s] == pytest.approx(10.0, rel=1e-9)
    assert table.cycles_completed[s] == 1
    assert table.dod_hist[s, 3] == 1
    assert table.dod_hist[s].sum() == 1
    assert table.seg_start_soc[s] == 95.0
    assert not bool(table.charging[s])
    assert table.ah_discharged_ah[s] == pytest.approx(3.0, rel=1e-9)  # the hour offline is a gap


def test_capacity_estimate_is_an_ewma_of_segments(table: TwinTable) -> None:
    """Segments measuring 12 Ah then 10 Ah give 12 + 0.3·(10 - 12) = 11.4 Ah (alpha 0.3)."""
    table.apply(_discharge(0.0, 1800.0, 90.0, 40.0, 12.0, seq=0))
    table.apply(_charge_sample(1860.0, 40.0, seq=1))
    # Back at 90 % ten minutes later (charged while not reporting; faster is implausible).
    table.apply(_discharge(2460.0, 1800.0, 90.0, 40.0, 10.0, seq=2))
    table.apply(_charge_sample(4320.0, 40.0, seq=3))
    s = table.slot(BID)
    assert table.capacity_estimates[s] == 2
    assert table.cycles_completed[s] == 2
    assert table.capacity_est_ah[s] == pytest.approx(11.4, rel=1e-9)


def test_short_segment_counts_dod_but_gives_no_capacity(table: TwinTable) -> None:
    """A 10-point discharge (below min_capacity_dod_pct = 20) fills the 10-20 % bin only."""
    table.apply(_discharge(0.0, 600.0, 80.0, 70.0, 10.0, seq=0))
    table.apply(_charge_sample(660.0, 70.0, seq=1))
    s = table.slot(BID)
    assert table.dod_hist[s, 1] == 1
    assert table.cycles_completed[s] == 1
    assert table.capacity_estimates[s] == 0
    assert np.isnan(table.capacity_est_ah[s])


def test_sub_percent_segment_is_not_a_cycle(table: TwinTable) -> None:
    """A discharge of under one SoC point before a charge adds no cycle and no DoD count."""
    table.apply(_discharge(0.0, 120.0, 80.0, 79.5, 5.0, seq=0))
    table.apply(_charge_sample(180.0, 79.5, seq=1))
    s = table.slot(BID)
    assert table.cycles_completed[s] == 0
    assert table.dod_hist[s].sum() == 0


def test_segment_split_over_batches_matches_one_batch(clock: ManualClock) -> None:
    """A segment fed one sample per batch ends with the same estimate as fed in one batch."""
    params = TwinTableParams(window_samples=8)
    whole, split = TwinTable(params, clock), TwinTable(params, clock)
    drive = _discharge(0.0, 1800.0, 90.0, 40.0, 12.0, seq=0)
    whole.apply(drive)
    whole.apply(_charge_sample(1860.0, 40.0, seq=1))
    ts, soc = drive.columns["ts"], drive.columns["soc_pct"]
    for k in range(drive.n_samples):
        split.apply(_series([ts[k] - T0_S], seq=k, current_a=12.0, soc_pct=soc[k], speed_kmh=20.0))
    split.apply(_charge_sample(1860.0, 40.0, seq=drive.n_samples))
    s = split.slot(BID)
    assert split.capacity_est_ah[s] == pytest.approx(12.0, rel=1e-6)
    assert split.capacity_est_ah[s] == pytest.approx(
        whole.capacity_est_ah[whole.slot(BID)], rel=1e-6
    )
    np.testing.assert_array_equal(split.dod_hist[s], whole.dod_hist[whole.slot(BID)])


def test_regen_while_moving_is_not_a_charge(table: TwinTable) -> None:
    """Negative current while moving (regenerative braking) keeps the discharge segment open.

    Neither does a -0.3 A offset at standstill (under charge_current_a); only -5 A at
    standstill is a charge, and it closes the one segment that began at 90 %.
    """
    table.apply(
        _series(
            [0.0, 10.0, 20.0], seq=0, current_a=10.0, soc_pct=[90.0, 89.9, 89.8], speed_kmh=25.0
        )
    )
    table.apply(_series([30.0, 40.0], seq=1, current_a=-8.0, soc_pct=[89.9, 90.0], speed_kmh=25.0))
    s = table.slot(BID)
    assert not bool(table.charging[s])
    assert table.ah_charged_ah[s] > 0.0  # regen is charge throughput all the same
    table.apply(_series([50.0, 60.0], seq=2, current_a=-0.3, soc_pct=90.0, speed_kmh=0.0))
    assert not bool(table.charging[s])
    assert table.cycles_completed[s] == 0
    assert table.seg_start_soc[s] == 90.0
    table.apply(
        _series(
            [70.0, 80.0, 90.0], seq=3, current_a=12.0, soc_pct=[85.0, 80.0, 75.0], speed_kmh=25.0
        )
    )
    table.apply(_charge_sample(100.0, 75.0, seq=4))
    assert bool(table.charging[s])
    assert table.cycles_completed[s] == 1
    assert table.dod_hist[s, 1] == 1  # 90 → 75: one 15-point segment, not two short ones


@pytest.mark.parametrize("per_sample", [False, True], ids=["one-batch", "batch-per-sample"])
def test_regen_inside_a_segment_is_netted_out_of_the_capacity_estimate(
    table: TwinTable, per_sample: bool
) -> None:
    """Capacity is net Ah over net ΔSoC, so braking energy put back does not inflate it.

    A 12 Ah pack: 12 A for 30 min (6 Ah), then 5 min of regen at -6 A while moving, then
    plugged in. SoC follows the true coulomb count, so the estimate must come out at 12 Ah
    (counting only the discharged Ah would give 6.05 / 0.4708 = 12.85 Ah). The segment's
    DoD is start minus its deepest SoC (reached before the regen): 50.4 points. Fed one
    sample per batch, the segment grows through the vectorised path instead of the
    per-twin walk, with the same result.
    """
    dt_s, capacity_ah = 60.0, 12.0
    current = np.array([12.0] * 31 + [-6.0] * 5)
    ah_net = np.concatenate([[0.0], np.cumsum(0.5 * (current[1:] + current[:-1]) * dt_s / 3600.0)])
    soc = 90.0 - 100.0 * ah_net / capacity_ah
    t = dt_s * np.arange(current.size)
    if per_sample:
        for k in range(t.size):
            table.apply(
                _series(t[k : k + 1], seq=k, current_a=current[k], soc_pct=soc[k], speed_kmh=20.0)
            )
    else:
        table.apply(_series(t, seq=0, current_a=current, soc_pct=soc, speed_kmh=20.0))
    table.apply(_charge_sample(t[-1] + dt_s, soc[-1], seq=t.size))
    s = table.slot(BID)
    assert soc[-1] > soc.min()  # the regen left the segment above its deepest point
    assert table.capacity_est_ah[s] == pytest.approx(capacity_ah, rel=1e-6)  # readings kept at float32
    assert table.dod_hist[s, 5] == 1
    # 4 regen minutes at 6 A, then the minute from -6 A to the -5 A charge sample.
    assert table.ah_charged_ah[s] == pytest.approx(0.4 + 5.5 / 60.0, rel=1e-9)


# ---------------------------------------------------------------------------- resistance
OCV_V, R_OHM = 50.0, 0.05


def test_current_step_gives_resistance(table: TwinTable) -> None:
    """V = OCV - I·R with R = 0.05 Ω: steps 2 → 12 A and back within 1 s give R = 0.05 Ω twice."""
    current = np.array([2.0, 12.0, 12.0, 2.0])
    table.apply(
        _series([0.0, 1.0, 2.0, 3.0], current_a=current, pack_voltage_v=OCV_V - current * R_OHM)
    )
    s = table.slot(BID)
    assert table.resistance_samples[s] == 2
    assert table.resistance_est_ohm[s] == pytest.approx(R_OHM, rel=1e-9)


@pytest.mark.parametrize(
    ("dt_s", "step_a"), [(6.0, 10.0), (1.0, 2.0)], ids=["too-slow", "too-small"]
)
def test_slow_or_small_current_steps_give_no_resistance(
    table: TwinTable, dt_s: float, step_a: float
) -> None:
    """A step slower than max_step_dt_s (5 s) or smaller than min_current_step_a (3 A) is ignored."""
    current = np.array([2.0, 2.0 + step_a])
    table.apply(_series([0.0, dt_s], current_a=current, pack_voltage_v=OCV_V - current * R_OHM))
    s = table.slot(BID)
    assert table.resistance_samples[s] == 0
    assert np.isnan(table.resistance_est_ohm[s])


def test_resistance_estimates_are_smoothed_across_batches(table: TwinTable) -> None:
    """A 0.05 Ω step then a 0.15 Ω step give 0.05 + 0.1·(0.15 - 0.05) = 0.06 Ω (alpha 0.1)."""
    i1 = np.array([2.0, 12.0])
    table.apply(_series([0.0, 1.0], seq=0, current_a=i1, pack_voltage_v=OCV_V - i1 * 0.05))
    i2 = np.array([12.0, 2.0])
    table.apply(_series([2.0, 3.0], seq=1, current_a=i2, pack_voltage_v=OCV_V - i2 * 0.15))
    s = table.slot(BID)
    assert table.resistance_samples[s] == 2
    assert table.resistance_est_ohm[s] == pytest.approx(0.06, rel=1e-6)


def test_two_steps_in_one_batch_smooth_like_two_batches(table: TwinTable) -> None:
    """Two 0.15 Ω steps in one batch move a 0.05 Ω estimate as two EWMA updates would:
    0.05 → 0.06 → 0.069 Ω."""
    i1 = np.array([2.0, 12.0])
    table.apply(_series([0.0, 1.0], seq=0, current_a=i1, pack_voltage_v=OCV_V - i1 * 0.05))
    i2 = np.array([12.0, 2.0, 12.0])
    table.apply(_series([2.0, 3.0, 4.0], seq=1, current_a=i2, pack_voltage_v=OCV_V - i2 * 0.15))
    s = table.slot(BID)
    assert table.resistance_samples[s] == 3
    assert table.resistance_est_ohm[s] == pytest.approx(0.069, rel=1e-6)


# ---------------------------------------------------------------------------- ordering
def _all_twins_equal(a: TwinTable, b: TwinTable, skip: Sequence[str] = ()) -> None:
    assert sorted(a.ids) == sorted(b.ids)
    for bid in a.ids:
        _assert_same_twin(a, b, bid, skip)


def test_shuffled_batch_gives_same_state_as_sorted(clock: ManualClock) -> None:
    """Shuffling messages and the samples inside each message changes no twin's state."""
    walk = RandomWalk(seed=3, n_batteries=5, n_samples=30)
    msgs = walk.messages(samples_per_message=10)
    params = TwinTableParams(window_samples=16)
    in_order, shuffled = TwinTable(params, clock), TwinTable(params, clock)
    in_order.apply(make_batch(*msgs))
    rng = np.random.default_rng(11)
    mixed = make_batch(*[msgs[i] for i in rng.permutation(len(msgs))])
    within = np.concatenate(
        [
            lo + rng.permutation(hi - lo)
            for lo, hi in zip(mixed.msg_offsets[:-1], mixed.msg_offsets[1:], strict=True)
        ]
    )
    res = shuffled.apply(permuted(mixed, within))
    assert res.applied_samples == 150
    assert res.late_samples == res.duplicate_samples == 0
    _all_twins_equal(in_order, shuffled)


def test_late_samples_are_counted_and_change_nothing(table: TwinTable) -> None:
    """Samples at or before the twin's newest are late: accepted, counted, never applied."""
    table.apply(_series([0.0, 1.0, 2.0, 3.0, 4.0], seq=0, current_a=5.0))
    before = _twin_state(table, BID)
    res = table.apply(_series([2.5, 4.0], seq=1, current_a=100.0, soc_pct=5.0))
    assert (res.late_samples, res.applied_samples, res.accepted_samples) == (2, 0, 2)
    after = _twin_state(table, BID)
    for name in before:
        if name not in ("last_seq", "seq_mask"):  # the message itself was new
            np.testing.assert_array_equal(after[name], before[name], err_msg=name)


def test_late_sample_mixed_with_new_ones_keeps_window_ordered(table: TwinTable) -> None:
    """In a batch [2.5 s, 5 s] after 0..4 s, only 5 s is applied: the window stays 0..5 s."""
    table.apply(_series([0.0, 1.0, 2.0, 3.0, 4.0], seq=0))
    res = table.apply(_series([5.0, 2.5], seq=1, soc_pct=[70.0, 75.0]))
    assert (res.late_samples, res.applied_samples) == (1, 1)
    w = table.window_of(table.slot(BID))
    np.testing.assert_array_equal(w["ts"], T0_S + np.arange(6.0))
    np.testing.assert_array_equal(w["soc_pct"], [80.0] * 5 + [70.0])
    assert table.samples_total[table.slot(BID)] == 6


def test_equal_timestamps_in_a_batch_are_duplicate_samples(table: TwinTable) -> None:
    """A second sample with the same ts is a duplicate; the first one (in batch order) is kept."""
    res = table.apply(_series([0.0, 1.0, 1.0, 2.0], soc_pct=[80.0, 79.0, 70.0, 78.0]))
    assert (res.duplicate_samples, res.applied_samples, res.late_samples) == (1, 3, 0)
    w = table.window_of(table.slot(BID))
    np.testing.assert_array_equal(w["ts"], T0_S + np.array([0.0, 1.0, 2.0]))
    np.testing.assert_array_equal(w["soc_pct"], [80.0, 79.0, 78.0])


def test_equal_timestamps_across_messages_are_duplicates(table: TwinTable) -> None:
    """Two messages of one battery in one batch that share a timestamp apply it once."""
    batch = make_batch(
        message(BID, 0, T0_S + np.array([0.0, 1.0])), message(BID, 1, T0_S + np.array([1.0, 2.0]))
    )
    res = table.apply(batch)
    assert (res.duplicate_samples, res.applied_samples) == (1, 3)
    assert table.samples_total[table.slot(BID)] == 3


@pytest.mark.parametrize("sizes", [[10], [3, 3, 4], [1] * 10, [5, 5], [4, 4, 2], [2, 8]])
def test_window_keeps_the_last_w_samples_in_order(clock: ManualClock, sizes: list[int]) -> None:
    """With W = 4, ten samples leave the newest four, oldest first, however they are batched."""
    table = TwinTable(TwinTableParams(window_samples=4), clock)
    ts_rel = np.arange(10.0)
    soc = 90.0 - ts_rel
    start = 0
    for seq, size in enumerate(sizes):
        sl = slice(start, start + size)
        table.apply(_series(ts_rel[sl], seq=seq, soc_pct=soc[sl]))
        start += size
    s = table.slot(BID)
    w = table.window_of(s)
    np.testing.assert_array_equal(w["ts"], T0_S + ts_rel[-4:])
    np.testing.assert_array_equal(w["soc_pct"], soc[-4:])
    assert table.count[s] == 4
    assert table.samples_total[s] == 10
    assert table.latest("soc_pct")[s] == soc[-1]


def test_many_twins_in_one_batch_match_each_applied_alone(clock: ManualClock) -> None:
    """Fifty twins applied together (vectorised) end exactly as each applied on its own.

    Seeded random walks with drives, regen, standstill charges, SoC jumps and offline gaps
    exercise the vectorised fast path and the per-twin segment walk alike.
    """
    walk = RandomWalk(seed=7, n_batteries=50, n_samples=40)
    msgs = walk.messages(samples_per_message=8)
    params = TwinTableParams(window_samples=16)
    together = TwinTable(params, clock)
    alone = {bid: TwinTable(params, clock) for bid in walk.batteries}
    rng = np.random.default_rng(1)
    for seq in range(5):
        round_msgs = [m for m in msgs if m.seq == seq]
        together.apply(make_batch(*[round_msgs[i] for i in rng.permutation(len(round_msgs))]))
        for m in round_msgs:
            alone[m.battery_id].apply(make_batch(m))
    for bid in walk.batteries:
        _assert_same_twin(together, alone[bid], bid)
    # The data must reach the rare paths, or the equivalence above proves little.
    assert together.cycles_completed.sum() > 0
    assert together.capacity_estimates.sum() > 0
    assert together.resistance_samples.sum() > 0
    assert together.charging[: len(together)].any()


# ---------------------------------------------------------------------------- seq dedup
def _send(table: TwinTable, seq: int, t_rel_s: float, vehicle_id: str = "veh-1") -> bool:
    """Apply one single-sample message; True if the message was accepted."""
    res = table.apply(make_batch(message(BID, seq, [T0_S + t_rel_s], vehicle_id=vehicle_id)))
    return res.duplicate_messages == 0 and not res.rejected


def test_duplicate_seq_is_dropped(table: TwinTable) -> None:
    """A message whose seq was seen is dropped whole, across batches and within one batch."""
    assert _send(table, 5, 0.0)
    assert not _send(table, 5, 1.0)
    assert table.samples_total[table.slot(BID)] == 1
    batch = make_batch(message(BID, 6, [T0_S + 2.0]), message(BID, 6, [T0_S + 3.0]))
    res = table.apply(batch)
    assert res.duplicate_messages == 1
    np.testing.assert_array_equal(res.accepted_messages, [0])
    assert table.last_ts[table.slot(BID)] == T0_S + 2.0


def test_out_of_order_seq_within_window_is_accepted_once(table: TwinTable) -> None:
    """seq 8 after seq 10 is accepted (a reordered delivery), but only the first time."""
    assert _send(table, 10, 0.0)
    assert _send(table, 8, 1.0)
    assert not _send(table, 8, 2.0)
    assert _send(table, 9, 3.0)
    assert not _send(table, 10, 4.0)


def test_seq_window_is_64_messages_deep(table: TwinTable) -> None:
    """After seq 100, seq 36 (63 back) is still told apart; seq 35 (64 back) is refused
    (as out of range: it cannot be told from a replay)."""
    assert _send(table, 100, 0.0)
    assert _send(table, 36, 1.0)
    assert not _send(table, 36, 2.0)
    assert not _send(table, 35, 3.0)


def test_seq_jump_beyond_window_resets_it(table: TwinTable) -> None:
    """A jump 10 → 100 starts a fresh window: skipped seqs within 64 of 100 arrive once.

    (The jump of 90 comes 9 s after seq 10, within the allowed 64 + 10/s · 9 s.)"""
    assert _send(table, 9, 0.0)
    assert _send(table, 10, 1.0)
    assert _send(table, 100, 10.0)
    assert _send(table, 50, 11.0)
    assert not _send(table, 50, 12.0)
    assert _send(table, 36, 13.0)
    assert not _send(table, 35, 14.0)
    assert not _send(table, 10, 15.0)


def test_seq_jump_of_exactly_64_remembers_the_old_newest(table: TwinTable) -> None:
    """After 10 → 74 the old newest, seq 10, is 63 back: still known, so a replay is dropped."""
    assert _send(table, 10, 0.0)
    assert _send(table, 74, 1.0)
    assert not _send(table, 10, 2.0)
    assert _send(table, 11, 3.0)


def test_seq_window_is_kept_per_battery(table: TwinTable) -> None:
    """The same seq from two batteries is two messages."""
    batch = make_batch(message("bat-a", 0, [T0_S]), message("bat-b", 0, [T0_S]))
    res = table.apply(batch)
    assert res.duplicate_messages == 0
    assert res.new_twins == 2


# ---------------------------------------------------------------------------- vehicles
def test_vehicle_change_is_recorded(table: TwinTable) -> None:
    """A battery moving to another vehicle is reported once; first sightings and repeats are not.

    (veh-2 claims the battery after the claim window of silence, so the move is allowed.)"""
    assert (
        table.apply(make_batch(message(BID, 0, [T0_S], vehicle_id="veh-1"))).vehicle_changes == []
    )
    assert (
        table.apply(make_batch(message(BID, 1, [T0_S + 1], vehicle_id="veh-1"))).vehicle_changes
        == []
    )
    res = table.apply(make_batch(message(BID, 2, [T0_S + 1801], vehicle_id="veh-2")))
    assert res.vehicle_changes == [(BID, "veh-1", "veh-2")]
    assert table.vehicle_ids[table.slot(BID)] == "veh-2"
    # A duplicate message says nothing about the battery's vehicle.
    res = table.apply(make_batch(message(BID, 2, [T0_S + 9000], vehicle_id="veh-3")))
    assert res.vehicle_changes == []
    assert table.vehicle_ids[table.slot(BID)] == "veh-2"


def test_vehicle_changes_within_one_batch_are_all_recorded(table: TwinTable) -> None:
    """veh-1 → veh-2 → veh-1 in one batch (half an hour apart) records both swaps in order."""
    batch = make_batch(
        message(BID, 0, [T0_S], vehicle_id="veh-1"),
        message(BID, 1, [T0_S + 1800], vehicle_id="veh-2"),
        message(BID, 2, [T0_S + 3600], vehicle_id="veh-1"),
    )
    res = table.apply(batch)
    assert res.vehicle_changes == [(BID, "veh-1", "veh-2"), (BID, "veh-2", "veh-1")]


# ---------------------------------------------------------------------------- slots
def test_empty_batch_changes_nothing(table: TwinTable) -> None:
    """Applying an empty batch creates no twin and reports nothing."""
    res = table.apply(TelemetryBatch.empty())
    assert (res.messages, res.applied_samples, res.new_twins) == (0, 0, 0)
    assert len(table) == 0


def test_unknown_battery_has_no_slot(table: TwinTable) -> None:
    """slot() of a battery the table never saw raises KeyError naming it."""
    with pytest.raises(KeyError, match="nope"):
        table.slot("nope")


def test_table_grows_and_keeps_state(clock: ManualClock) -> None:
    """Growing past the initial capacity keeps old twins intact and gives new ones fresh state."""
    table = TwinTable(
        TwinTableParams(window_samples=4, lstm_hidden_size=3), clock, initial_capacity=1
    )
    table.apply(_series([0.0, 1.0], current_a=10.0, soc_pct=[80.0, 79.0]))
    before = _twin_state(table, BID)
    res = table.apply(make_batch(*[message(f"bat-{k + 2}", 0, [T0_S]) for k in range(20)]))
    assert res.new_twins == 20
    assert len(table) == 21 and table.capacity >= 21
    after = _twin_state(table, BID)
    for name in before:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)
    fresh, _ = table.ensure("bat-new")
    assert table.last_seq[fresh] == -1
    assert table.last_ts[fresh] == -np.inf
    assert table.rated_capacity_ah[fresh] == 15.0
    assert table.count[fresh] == 0
    assert np.isnan(table.window[fresh]).all()
    np.testing.assert_array_equal(table.lstm_h[fresh], np.zeros(3))
    assert np.isnan(table.latest("soc_pct")[fresh])


# ---------------------------------------------------------------------------- checkpoints
def _populated(clock: ManualClock, params: TwinTableParams) -> tuple[TwinTable, list[Message]]:
    walk = RandomWalk(seed=5, n_batteries=6, n_samples=30)
    msgs = walk.messages(samples_per_message=10)
    table = TwinTable(params, clock)
    table.apply(make_batch(*[m for m in msgs if m.seq < 2]))
    table.ensure("bat-silent")  # a twin with no samples and no vehicle yet
    table.lstm_h[table.slot("bat-000")] = np.arange(params.lstm_hidden_size, dtype=np.float32)
    table.lstm_c[table.slot("bat-000")] = -1.0
    table.lstm_steps[table.slot("bat-000")] = 3
    return table, msgs


def test_checkpoint_round_trip_keeps_all_state(clock: ManualClock) -> None:
    """from_bytes(to_bytes()) restores every array, id, slot and vehicle exactly."""
    params = TwinTableParams(window_samples=8, lstm_hidden_size=4)
    table, _ = _populated(clock, params)
    restored = TwinTable.from_bytes(table.to_bytes(), params, clock)
    assert restored.ids == table.ids
    assert restored.index == table.index
    assert restored.vehicle_ids == table.vehicle_ids
    assert restored.vehicle_ids[restored.slot("bat-silent")] is None
    n = len(table)
    names = _state_names(table)
    assert {"window", "seq_mask", "seg_ah", "dod_hist", "lstm_h", "capacity_est_ah"} <= set(names)
    for name in names:
        np.testing.assert_array_equal(
            getattr(restored, name)[:n], getattr(table, name)[:n], err_msg=name
        )
        assert getattr(restored, name).dtype == getattr(table, name).dtype, name


def test_restored_table_carries_on_like_the_original(clock: ManualClock) -> None:
    """A restored table drops replayed messages by seq and applies new ones identically."""
    params = TwinTableParams(window_samples=8, lstm_hidden_size=4)
    table, msgs = _populated(clock, params)
    restored = TwinTable.from_bytes(table.to_bytes(), params, clock)
    replay = restored.apply(make_batch(*[m for m in msgs if m.seq < 2]))
    assert replay.duplicate_messages == replay.messages
    rest = make_batch(*[m for m in msgs if m.seq == 2])
    table.apply(rest)
    restored.apply(rest)
    _all_twins_equal(table, restored)


def test_from_bytes_refuses_another_window_size(clock: ManualClock) -> None:
    """A checkpoint of 8-sample windows does not load into a table of 16-sample windows."""
    table, _ = _populated(clock, TwinTableParams(window_samples=8))
    with pytest.raises(
        ValueError, match=r"window shape \(8, 10\) does not match the configured \(16, 10\)"
    ):
        TwinTable.from_bytes(table.to_bytes(), TwinTableParams(window_samples=16), clock)


def test_from_bytes_refuses_another_lstm_hidden_size(clock: ManualClock) -> None:
    """A checkpoint with 4-wide LSTM state does not load into a table configured for 32."""
    table, _ = _populated(clock, TwinTableParams(window_samples=8, lstm_hidden_size=4))
    with pytest.raises(ValueError, match="LSTM"):
        TwinTable.from_bytes(table.to_bytes(), TwinTableParams(window_samples=8), clock)


def test_empty_table_round_trips(clock: ManualClock) -> None:
    """A checkpoint of an empty table restores an empty table."""
    params = TwinTableParams(window_samples=4)
    restored = TwinTable.from_bytes(TwinTable(params, clock).to_bytes(), params, clock)
    assert len(restored) == 0
    assert restored.ids == []


def test_a_checkpoint_from_before_the_score_times_loads_them_as_unknown(clock: ManualClock) -> None:
    """A checkpoint written before the per-model score times existed (the same payload
    without those columns) loads: they are NaN (never scored) for every twin, and every
    other array, id and vehicle is restored as written, scored_at_s included."""
    params = TwinTableParams(window_samples=8, lstm_hidden_size=4)
    table, _ = _populated(clock, params)
    n = len(table)
    table.scored_at_s[:n] = T0_S + 5.0
    for model in SCORED_MODELS:
        table.scored_at_of(model)[:n] = T0_S + 5.0  # so only the stripping can empty them
    added = {f"{model}_scored_at_s" for model in SCORED_MODELS}
    with np.load(io.BytesIO(table.to_bytes()), allow_pickle=True) as data:
        assert added <= set(data.files)
        old = {name: data[name] for name in data.files if name not in added}
    payload = io.BytesIO()
    np.savez(payload, **old)
    restored = TwinTable.from_bytes(payload.getvalue(), params, clock)
    assert restored.ids == table.ids and restored.vehicle_ids == table.vehicle_ids
    for name in added:
        assert np.isnan(getattr(restored, name)[:n]).all(), name
    for name in set(_state_names(table)) - added:
        np.testing.assert_array_equal(getattr(restored, name)[:n], getattr(table, name)[:n], err_msg=name)
    # The restored table grows and scores like any other: the new columns are full arrays.
    assert restored.health_scored_at_s.shape == restored.last_ts.shape


def test_scored_at_s_follows_from_the_per_model_times(clock: ManualClock) -> None:
    """oldest_score_s is the oldest time among the models that scored each twin (a model
    that never did is left out; none at all is NaN); scored_at_of names only the models."""
    table = TwinTable(TwinTableParams(window_samples=4), clock)
    a, b, c = (table.ensure(battery)[0] for battery in ("bat-a", "bat-b", "bat-c"))
    table.health_scored_at_s[[a, b]] = [T0_S + 10.0, T0_S + 30.0]
    table.priority_scored_at_s[[a, b]] = [T0_S + 20.0, T0_S + 5.0]
    table.degradation_scored_at_s[b] = T0_S + 40.0
    oldest = table.oldest_score_s(np.array([a, b, c], dtype=np.int64))
    assert oldest[:2].tolist() == [T0_S + 10.0, T0_S + 5.0] and np.isnan(oldest[2])
    assert table.scored_at_of("health") is table.health_scored_at_s
    with pytest.raises(ValueError, match=r"Expected a model of .*got 'drift'"):
        table.scored_at_of("drift")

"""Each twin learns its own pack (twins/pack_watch.py), and only a persisting change is evidence."""

from __future__ import annotations

import numpy as np
import pytest

from contracts.samples import SAMPLE_FIELDS, TelemetryBatch
from twins import pack_watch
from twins.pack_watch import EVIDENCE_NAMES, PackWatchParams
from twins.twin_table import TwinTable, TwinTableParams

_C = {name: i for i, name in enumerate(EVIDENCE_NAMES)}
_WARM = PackWatchParams(warmup_samples=200, warmup_s=1990.0)


def _pack(n: int = 1200, seed: int = 0, series: int = 13) -> dict[str, np.ndarray]:
    """A 13S pack riding (current 2-20 A; 20 minutes on, 20 parked) at 10 s: voltage from a sloped open-circuit
    curve and a resistance, cells spreading with current, temperature heated by I^2 and
    cooled to 20 C, every reading noisy and quantised as a BMS reports it."""
    rng = np.random.default_rng(seed)
    ts = 1_700_000_000.0 + 10.0 * np.arange(n)
    ride = (np.arange(n) // 60) % 4 < 2  # 20 minutes riding, 20 parked
    current = np.where(ride, rng.uniform(2.0, 20.0, n), 0.0)
    soc = np.clip(100.0 - np.cumsum(current) * 10.0 / 3600.0 / 15.0 * 100.0, 5.0, 100.0)
    cell_ocv = 3.3 + 0.009 * soc
    cell_v = cell_ocv - current / 3.0 * 0.03
    temp = np.empty(n)
    t = 20.0
    for k in range(n):
        t += 10.0 * (2e-4 * current[k] ** 2 - (t - 20.0) / 1800.0)
        temp[k] = t
    half = np.abs(current) / 3.0 * 0.002 + 0.003
    return {
        "ts": ts,
        "pack_voltage_v": np.round((series * cell_v + rng.normal(0, 0.02, n)) / 0.01) * 0.01,
        "current_a": np.round(current + rng.normal(0, 0.05, n), 2),
        "temp_c": np.round((temp + rng.normal(0, 0.3, n)) / 0.5) * 0.5,
        "soc_pct": np.round(soc, 1),
        "cell_min_v": np.round(cell_v - half, 3),
        "cell_max_v": np.round(cell_v + half, 3),
    }


def _replay(cols: dict[str, np.ndarray], params: PackWatchParams = _WARM) -> np.ndarray:
    """The evidence after every sample of one pack."""
    state = pack_watch.new_state(1)
    out = []
    for k in range(cols["ts"].size):
        state = pack_watch.step(state, *(np.array([cols[f][k]]) for f in (
            "ts", "pack_voltage_v", "current_a", "temp_c", "soc_pct", "cell_min_v", "cell_max_v")), params)  # fmt: skip
        out.append(pack_watch.evidence(state, params)[0])
    return np.array(out)


def test_a_healthy_pack_reports_nothing_while_learning_and_little_after() -> None:
    ev = _replay(_pack())
    assert np.isnan(ev[:199]).all() and np.isfinite(ev[250:550, _C["voltage_consistency"]]).all()
    # Every channel spoke (the rest curve once the pack settled), and never loudly.
    peaks = np.max(np.where(np.isnan(ev[200:]), -np.inf, ev[200:]), axis=0)
    assert np.isfinite(peaks).all() and peaks.tolist() == pytest.approx([0.0] * len(EVIDENCE_NAMES), abs=4.0)


@pytest.mark.parametrize(
    ("fault", "channel"),
    [
        ("offset", "voltage_consistency"),
        ("group", "cell_spread"),
        ("heat", "thermal"),
        ("stuck", "temp_stuck"),
    ],
)
def test_a_fault_after_warm_up_is_evidence_on_its_channel_and_stays_so(fault: str, channel: str) -> None:
    cols = _pack()
    after = np.arange(cols["ts"].size) >= 700
    if fault == "offset":
        cols["pack_voltage_v"] = np.where(after, cols["pack_voltage_v"] - 1.5, cols["pack_voltage_v"])
    elif fault == "group":  # one group's resistance tripled: it sags away from the others
        cols["cell_min_v"] = np.where(after, cols["cell_min_v"] - np.abs(cols["current_a"]) / 3.0 * 0.06, cols["cell_min_v"])
    elif fault == "heat":  # 15 C more over 10 minutes
        cols["temp_c"] = cols["temp_c"] + np.clip((np.arange(cols["ts"].size) - 700) / 60.0, 0.0, 1.0) * 15.0
    else:
        cols["temp_c"] = np.where(after, cols["temp_c"][700], cols["temp_c"])
    ev = _replay(cols)
    healthy = _replay(_pack())
    before = np.nanmax(healthy[200:, _C[channel]])
    # Under load within the first ride after onset (stuck: within the quarter hour).
    assert np.nanmax(ev[700:800, _C[channel]]) > 3.0 * max(before, 1.0)
    if fault in ("offset", "stuck"):  # a lasting fault is not learned as the new normal
        assert ev[-1, _C[channel]] > 3.0 * max(before, 1.0)


def test_one_odd_sample_is_not_evidence() -> None:
    cols = _pack()
    cols["pack_voltage_v"][700] -= 3.0
    ev = _replay(cols)
    assert np.nanmax(ev[690:720, _C["voltage_consistency"]]) < 4.0


def _batch(cols: dict[str, np.ndarray], battery: str, seq0: int = 1) -> TelemetryBatch:
    n = cols["ts"].size
    full = {f: np.asarray(cols.get(f, np.zeros(n)), dtype=np.float64) for f in SAMPLE_FIELDS}
    full["lat"], full["lon"] = np.full(n, 52.37), np.full(n, 4.89)
    full["speed_kmh"] = np.where(cols["current_a"] > 1.0, 15.0, 0.0)
    full["odometer_km"] = np.cumsum(full["speed_kmh"]) * 10.0 / 3600.0
    per = 10
    offsets = np.append(np.arange(0, n, per), n).astype(np.int64)
    m = offsets.size - 1
    return TelemetryBatch(
        battery_ids=[battery] * m, vehicle_ids=[f"v-{battery}"] * m, seqs=np.arange(seq0, seq0 + m),
        msg_offsets=offsets, columns=full, received_at_s=full["ts"][offsets[1:] - 1],
    )


def test_the_twin_learns_the_same_however_the_stream_is_cut_and_keeps_it_in_checkpoints() -> None:
    params = TwinTableParams(pack_watch=_WARM)
    cols = _pack(600)
    one = TwinTable(params)
    one.apply(_batch(cols, "b1"))
    cut = TwinTable(params)
    whole = _batch(cols, "b1")
    for k in range(0, whole.n_messages, 7):
        keep = np.zeros(whole.n_messages, dtype=bool)
        keep[k : k + 7] = True
        cut.apply(whole.select_messages(keep))
    np.testing.assert_allclose(one.pack_watch[0], cut.pack_watch[0], rtol=1e-9, equal_nan=True)
    again = TwinTable.from_bytes(cut.to_bytes(), params)
    np.testing.assert_array_equal(again.pack_watch[:1], cut.pack_watch[:1])
    assert again.pack_watch.shape[1] == pack_watch.STATE_WIDTH


def test_twins_learn_apart_in_one_table() -> None:
    params = TwinTableParams(pack_watch=_WARM)
    table = TwinTable(params, initial_capacity=1)  # grows while twins arrive
    a, b = _pack(400, seed=1), _pack(400, seed=2, series=14)
    table.apply(TelemetryBatch.concat([_batch(a, "a"), _batch(b, "b")]))
    alone = TwinTable(params)
    alone.apply(_batch(b, "b"))
    np.testing.assert_allclose(table.pack_watch[table.slot("b")], alone.pack_watch[0], rtol=1e-9, equal_nan=True)
    assert not np.allclose(table.pack_watch[table.slot("a")], table.pack_watch[table.slot("b")], equal_nan=True)


def test_params_say_what_they_expected() -> None:
    with pytest.raises(ValueError, match="Expected warmup_samples >= 10 and warmup_s >= 0, got 3"):
        PackWatchParams(warmup_samples=3)
    with pytest.raises(ValueError, match="learn_alpha and thermal_alpha in"):
        PackWatchParams(learn_alpha=0.0)

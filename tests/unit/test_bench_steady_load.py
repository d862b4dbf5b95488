"""Tests for the soak's load (:class:`bms.bench.steady_load.SteadyLoad`): the same batteries,
timestamps and sequence numbers as the ingest benchmark's load, but samples a pack in
service could send, from the wire (decoded as the bridge decodes them)."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import orjson
import pytest

from bms.bench.ingest import SyntheticLoad
from bms.bench.steady_load import SteadyLoad
from contracts.telemetry import decode_batch
from twins.clock import ManualClock
from twins.plausibility import haversine_m
from twins.twin_table import TwinTable, TwinTableParams

T0_S = 1_800_000_000.0
BATTERIES = 40


def _run(load: SyntheticLoad, messages_each: int = 12, interval_s: float = 10.0) -> list[list[tuple[str, bytes]]]:
    """A warm-up (one sample each, 30 s old: the soak's gap before its paced phase), then
    each battery's next message every ``interval_s``, 50 samples spread over it, in ticks
    of a tenth of the batteries (as the paced publisher sends them round robin)."""
    idx = np.arange(BATTERIES)
    out = [load.messages(idx, T0_S - 30.0, 0.0, m=1)[0]]
    per_tick = BATTERIES // 10
    for tick in range(messages_each * 10):
        now_s = T0_S + (tick + 1) * interval_s / 10
        due = idx[(tick % 10) * per_tick : (tick % 10 + 1) * per_tick]
        out.append(load.messages(due, now_s, interval_s * 49 / 50)[0])
    return out


def _series(chunks: list[list[tuple[str, bytes]]]) -> dict[str, dict[str, np.ndarray]]:
    """Each battery's samples in time order, as the JSON on the wire has them."""
    rows: dict[str, list[dict[str, float]]] = defaultdict(list)
    for chunk in chunks:
        for _, payload in chunk:
            doc = orjson.loads(payload)
            rows[doc["battery_id"]] += doc["samples"]
    return {b: {k: np.array([s[k] for s in r]) for k in r[0]} for b, r in rows.items()}


@pytest.fixture(scope="module")
def steady() -> dict[str, dict[str, np.ndarray]]:
    return _series(_run(SteadyLoad("t1", BATTERIES, 50)))


def test_temperatures_drift_by_hundredths_not_by_degrees(steady: dict[str, dict[str, np.ndarray]]) -> None:
    """Consecutive temperatures of a battery differ by under 1 °C (the sensor's 0.1 °C
    steps at most), and a battery stays within a few degrees over two minutes; the ingest
    benchmark's load, drawn afresh per sample, jumps by degrees."""
    for s in steady.values():
        assert np.abs(np.diff(s["temp_c"])).max() <= 0.1 + 1e-9
        assert np.ptp(s["temp_c"]) < 1.0 and 5.0 < s["temp_c"].min() and s["temp_c"].max() < 45.0
    random = _series(_run(SyntheticLoad("t1", BATTERIES, 50), messages_each=2))
    assert max(np.abs(np.diff(s["temp_c"])).max() for s in random.values()) > 1.0


def test_current_drifts_slowly_round_each_batterys_own_level(steady: dict[str, dict[str, np.ndarray]]) -> None:
    """No current steps (nothing looks like a sudden sag): consecutive currents are within
    a fraction of an ampere; some batteries ride (amperes), the rest are parked (next to 0)."""
    levels = []
    for s in steady.values():
        assert np.abs(np.diff(s["current_a"])).max() < 0.5
        assert s["current_a"].min() > -0.2
        levels.append(float(np.median(s["current_a"])))
    riding = sum(level > 1.0 for level in levels)
    assert 0 < riding < BATTERIES / 2 and all(level < 8.0 for level in levels)


def test_soc_falls_slowly_and_never_rises(steady: dict[str, dict[str, np.ndarray]]) -> None:
    """Coulomb counting: the state of charge only falls, by at most a few % in two minutes
    (a rider's draw), and a parked battery's barely moves."""
    for s in steady.values():
        soc = s["soc_pct"]
        assert np.diff(soc).max() <= 0.0
        assert 0.0 <= soc[0] - soc[-1] < 3.0 and soc.min() > 15.0


def test_voltages_and_positions_are_a_packs_and_a_riders(steady: dict[str, dict[str, np.ndarray]]) -> None:
    """Pack voltage within a 13S pack's range and the sum of its cells' range; the weakest
    cell below the strongest; riders move at their speed, parked batteries not at all."""
    for s in steady.values():
        assert (13 * 3.0 < s["pack_voltage_v"]).all() and (s["pack_voltage_v"] < 13 * 4.2).all()
        assert (s["cell_min_v"] <= s["cell_max_v"]).all()
        assert (13 * s["cell_min_v"] - 0.2 < s["pack_voltage_v"]).all()
        assert (s["pack_voltage_v"] < 13 * s["cell_max_v"] + 0.2).all()
        step_m = haversine_m(s["lat"][:-1], s["lon"][:-1], s["lat"][1:], s["lon"][1:])
        dt_s = np.diff(s["ts"])
        assert (step_m <= 25.0 / 3.6 * dt_s + 1.0).all()
        assert (s["speed_kmh"] <= 25.0).all()
        if s["speed_kmh"].max() == 0.0:
            assert step_m.max() < 0.2  # rounding of the last decimal, at most


def test_the_twins_take_every_message() -> None:
    """The bridge's contract and the twins' checks (sequence, plausibility) accept all of
    it: no message decoded as invalid, none refused by a twin."""
    chunks = _run(SteadyLoad("t2", BATTERIES, 50), messages_each=4)
    table = TwinTable(TwinTableParams(), ManualClock(start_s=T0_S))
    for chunk in chunks:
        batch, _, rejected = decode_batch(chunk, T0_S + 60.0)
        assert rejected == []
        assert table.apply(batch).rejected == []


def test_same_batteries_and_clock_as_the_ingest_load() -> None:
    """Only the sample values differ from SyntheticLoad's: ids, topics, seq and ts are the
    same for the same seed and calls, so both loads stamp and route alike."""

    def frame(chunks: list[list[tuple[str, bytes]]]) -> list[tuple[str, int, list[float]]]:
        out = []
        for chunk in chunks:
            for topic, payload in chunk:
                doc = orjson.loads(payload)
                out.append((topic, doc["seq"], [s["ts"] for s in doc["samples"]]))
        return out

    a = frame(_run(SteadyLoad("t3", BATTERIES, 50), messages_each=2))
    b = frame(_run(SyntheticLoad("t3", BATTERIES, 50), messages_each=2))
    assert a == b


def test_the_same_seed_gives_the_same_load() -> None:
    assert _run(SteadyLoad("t4", BATTERIES, 50, seed=5), 2) == _run(SteadyLoad("t4", BATTERIES, 50, seed=5), 2)

"""Pack telemetry from the electrochemical model (PyBaMM): ageing, the BMS's flaws, the cache."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from sim.electrochem import BmsArtefacts, PackFault, PackRun, PackSpec, pack_run, simulate_pack


def _spec(soh: float = 1.0, resistance_multiple: float = 1.0, seed: int = 3) -> PackSpec:
    """One short duty keeps these tests to seconds: a ride or two, a park, a charge."""
    return PackSpec(soh=soh, ageing_mode="lli", resistance_multiple=resistance_multiple, hours=0.75, seed=seed)


@pytest.fixture(scope="module")
def fresh_and_aged(tmp_path_factory: pytest.TempPathFactory) -> tuple[PackRun, PackRun]:
    cache = tmp_path_factory.mktemp("electrochem")
    fresh = pack_run(_spec(), cache)
    aged = pack_run(_spec(soh=0.85, resistance_multiple=2.0), cache)
    return fresh, aged


def test_an_aged_pack_has_the_soh_it_was_aged_to_and_sags_more(fresh_and_aged: tuple[PackRun, PackRun]) -> None:
    """The calibration hits the target SOH (C/3 capacity) within half a point; the aged pack,
    with twice the resistance, sags further under the same relative load."""
    fresh, aged = fresh_and_aged
    assert fresh.soh == pytest.approx(1.0)
    assert aged.soh == pytest.approx(0.85, abs=0.005)
    assert aged.rated_capacity_ah == pytest.approx(fresh.rated_capacity_ah)
    # 13S: pack voltage within the cells' window times 13.
    assert 13 * 2.5 <= fresh.pack_voltage_v.min() and fresh.pack_voltage_v.max() <= 13 * 4.2 + 0.1
    assert 1.6 < _step_resistance_ohm(aged) / _step_resistance_ohm(fresh) < 2.6  # asked for 2x


def _step_resistance_ohm(run: PackRun) -> float:
    """-dV/dI over consecutive samples: the pack's resistance as a BMS sees it at load steps."""
    dv, di = np.diff(run.pack_voltage_v), np.diff(run.current_a)
    steps = np.abs(di) > 1.0
    return float(-np.sum(dv[steps] * di[steps]) / np.sum(di[steps] ** 2))


def test_the_bms_reads_with_gaps_noise_quantisation_and_a_drifting_soc(fresh_and_aged: tuple[PackRun, PackRun]) -> None:
    """Samples every 10 s with some missing; values on their quantisation grid; the BMS's
    state of charge drifts from the cells' and is set back to 100 % by the closing charge."""
    fresh, _ = fresh_and_aged
    steps = np.diff(fresh.ts)
    assert np.all(steps >= 10.0 - 1e-9) and np.any(steps > 10.0 + 1e-9)
    np.testing.assert_allclose(fresh.pack_voltage_v / 0.01, np.round(fresh.pack_voltage_v / 0.01), atol=1e-6)
    np.testing.assert_allclose(fresh.temp_c / 0.5, np.round(fresh.temp_c / 0.5), atol=1e-6)
    # The BMS calls the end of a CC-CV charge 100 %; the model's own 100 % (where the run
    # starts) sits about 1.5 points higher: the gap is that plus the gain error.
    gap = np.abs(fresh.soc_pct - fresh.true_soc_pct)
    assert 0.1 < gap.max() < 3.0
    assert fresh.soc_pct[-1] == pytest.approx(100.0) and fresh.true_soc_pct[-1] > 97.0
    assert fresh.current_a.min() < 0 < fresh.current_a.max()  # charging and riding
    assert np.all(fresh.cell_min_v <= fresh.cell_max_v)


def test_runs_are_deterministic_per_spec_and_cached(tmp_path: Path, fresh_and_aged: tuple[PackRun, PackRun]) -> None:
    """The same spec gives the same telemetry; the cache returns it without solving again
    (a file per spec); another seed gives another duty."""
    fresh, _ = fresh_and_aged
    again = simulate_pack(_spec())
    np.testing.assert_array_equal(again.pack_voltage_v, fresh.pack_voltage_v)
    first = pack_run(_spec(), tmp_path)
    assert len(list(tmp_path.glob("pack-Chen2020-*.npz"))) == 1
    cached = pack_run(_spec(), tmp_path)
    np.testing.assert_array_equal(cached.current_a, first.current_a)
    assert cached.spec == first.spec and cached.soh == first.soh
    other = simulate_pack(_spec(seed=4))
    assert len(other.ts) != len(fresh.ts) or not np.array_equal(other.current_a, fresh.current_a)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"parameter_set": "Nobody2030"}, "Expected parameter_set among"),
        ({"soh": 0.3}, r"Expected soh in \[0.5, 1\], got 0.3"),
        ({"ageing_mode": "plating"}, "Expected ageing_mode among"),
        ({"resistance_multiple": 0.5}, r"Expected resistance_multiple in \[1, 5\]"),
        ({"series": 0}, "Expected 1-40 cells in series"),
        ({"hours": 100.0}, r"Expected hours in \[0.5, 48\]"),
    ],
)
def test_impossible_specs_say_what_was_expected(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PackSpec(**kwargs)  # type: ignore[arg-type]


def test_impossible_bms_artefacts_are_refused() -> None:
    with pytest.raises(ValueError, match=r"Expected sample_period_s >= 1, got 0\.1"):
        BmsArtefacts(sample_period_s=0.1)
    with pytest.raises(ValueError, match=r"Expected gap_probability in \[0, 0.5\)"):
        BmsArtefacts(gap_probability=0.7)


def test_an_ageing_mode_a_cell_does_not_respond_to_is_refused() -> None:
    """Mohtat2020's capacity is not limited by its negative electrode's lithium: asking for
    lithium-inventory loss cannot reach the SOH, and the run says so instead of returning a
    pack labelled with an SOH it does not have."""
    with pytest.raises(ValueError, match=r"Expected 'lli' ageing of Mohtat2020 to reach SOH 0\.9, got 0\.99"):
        simulate_pack(PackSpec(parameter_set="Mohtat2020", soh=0.9, ageing_mode="lli", hours=0.5))


def _faulty(kind: str, magnitude: float | None = None) -> PackSpec:
    return replace(_spec(), fault=PackFault(kind, onset_h=0.1, magnitude=magnitude))  # mid-ride  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("electrochem-faults")


def _pair(cache: Path, kind: str, magnitude: float | None = None) -> tuple[PackRun, PackRun, np.ndarray]:
    """The healthy pack, the faulty one (same solve, same BMS noise) and the samples after onset."""
    healthy, faulty = pack_run(_spec(), cache), pack_run(_faulty(kind, magnitude), cache)
    np.testing.assert_array_equal(healthy.ts, faulty.ts)
    return healthy, faulty, faulty.ts >= faulty.fault_onset_s


def test_a_faulty_pack_shares_its_healthy_twins_solve_and_differs_only_from_onset(cache: Path) -> None:
    healthy, faulty, after = _pair(cache, "resistance_jump")
    assert len(list(cache.glob("cell-*.npz"))) == 1  # one solve for both
    np.testing.assert_array_equal(faulty.pack_voltage_v[~after], healthy.pack_voltage_v[~after])
    assert faulty.fault_onset_s == 360.0 and np.isnan(healthy.fault_onset_s)
    # A group at 3x resistance: the pack sags by 2 cell-resistances more under load.
    riding = after & (faulty.current_a > 5.0)
    sag = healthy.pack_voltage_v[riding] - faulty.pack_voltage_v[riding]
    assert riding.sum() > 10 and np.median(sag) > 0.02 and np.all(sag > -0.05)
    assert np.median(healthy.cell_min_v[riding] - faulty.cell_min_v[riding]) > 0.02


def test_a_weak_group_and_an_internal_short_pull_the_pack_down_as_charge_goes(cache: Path) -> None:
    """Both leave the current unchanged (the sensor does not see the leak) and lower the
    voltage by more the further the group's charge runs away from the others'."""
    for kind in ("weak_cell", "internal_short"):
        healthy, faulty, after = _pair(cache, kind, 0.3 if kind == "weak_cell" else 0.5)
        np.testing.assert_array_equal(faulty.current_a, healthy.current_a)
        gap = healthy.pack_voltage_v - faulty.pack_voltage_v
        assert np.all(np.abs(gap[~after]) < 1e-9)
        late = after & (faulty.ts > faulty.ts[after][0] + 600.0) & (faulty.current_a > -1.0)
        assert late.any() and np.median(gap[late]) > 0.03, kind


def test_thermal_offset_and_stuck_sensor_faults_change_only_their_reading(cache: Path) -> None:
    healthy, hot, after = _pair(cache, "thermal_excursion")
    np.testing.assert_array_equal(hot.pack_voltage_v, healthy.pack_voltage_v)
    held = after & (hot.ts - hot.fault_onset_s > 600.0) & (hot.ts - hot.fault_onset_s < 2400.0)
    assert held.any() and np.median(hot.temp_c[held] - healthy.temp_c[held]) == pytest.approx(15.0, abs=1.0)
    healthy, offset, after = _pair(cache, "sensor_offset", -2.0)
    np.testing.assert_allclose(offset.pack_voltage_v[after] - healthy.pack_voltage_v[after], -2.0, atol=0.011)
    healthy, stuck, after = _pair(cache, "stuck_sensor")
    assert np.unique(stuck.temp_c[after]).size == 1 and np.unique(healthy.temp_c[after]).size > 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kind": "gremlins", "onset_h": 1.0}, "Expected a fault kind among"),
        ({"kind": "resistance_jump", "onset_h": -1.0}, r"Expected onset_h in \[0, 48\]"),
        ({"kind": "weak_cell", "onset_h": 1.0, "magnitude": 1.5}, r"Expected the weak_cell magnitude .* in \[0.2, 0.95\], got 1.5"),
    ],
)
def test_impossible_faults_say_what_was_expected(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PackFault(**kwargs)  # type: ignore[arg-type]


def test_a_fault_after_the_duty_ends_is_refused() -> None:
    with pytest.raises(ValueError, match=r"Expected the fault's onset within the 0.75 h duty, got 2.0 h"):
        replace(_spec(), fault=PackFault("stuck_sensor", onset_h=2.0))

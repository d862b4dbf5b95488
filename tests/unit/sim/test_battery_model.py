"""Tests for :mod:`sim.battery_model`: the vectorised equivalent-circuit pack model."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from sim.battery_model import PackArray, PackParams, ocv_cell_v


def _packs(n: int = 4, soc_pct: float = 80.0, temp_c: float = 20.0, **params: Any) -> PackArray:
    return PackArray.create(
        n, PackParams(**params), np.random.default_rng(0), soc_pct=soc_pct, temp_c=temp_c
    )


def test_ocv_curve_spans_nmc_window_and_rises() -> None:
    """One NMC cell rests at 3.0 V empty and 4.2 V full, and the OCV rises with SOC."""
    soc = np.linspace(0.0, 100.0, 201)
    ocv = ocv_cell_v(soc)
    assert ocv[0] == pytest.approx(3.0)
    assert ocv[-1] == pytest.approx(4.2)
    assert np.all(np.diff(ocv) > 0)


def test_voltage_falls_with_soc() -> None:
    """At equal current, a pack at lower SOC has a lower terminal voltage."""
    packs = _packs(n=1)
    current = np.array([5.0])
    voltages = []
    for soc in (90.0, 60.0, 30.0, 5.0):
        packs.soc_pct[:] = soc
        voltages.append(float(packs.terminal_voltage_v(current)[0]))
    assert voltages == sorted(voltages, reverse=True)


def test_voltage_sags_under_load_by_i_times_r() -> None:
    """Discharging lowers the terminal voltage by I*R below the open-circuit voltage."""
    packs = _packs()
    current = np.full(len(packs), 20.0)
    sag = packs.open_circuit_voltage_v() - packs.terminal_voltage_v(current)
    np.testing.assert_allclose(sag, 20.0 * packs.resistance_ohm)
    assert np.all(sag > 0)


def test_full_13s_pack_rests_near_54_6_volts() -> None:
    """A full 13S pack rests at 13 x 4.2 V; a 10S pack at 10 x 4.2 V."""
    assert _packs(soc_pct=100.0).open_circuit_voltage_v() == pytest.approx(54.6)
    assert _packs(soc_pct=100.0, series_cells=10).open_circuit_voltage_v() == pytest.approx(42.0)


def test_soc_decreases_by_coulomb_count_with_aged_capacity() -> None:
    """SOC falls by I*dt over the pack's SOH-scaled capacity, not the rated one."""
    packs = _packs(soc_pct=80.0)
    assert np.all(packs.capacity_ah == pytest.approx(15.0 * packs.soh))
    current = np.full(len(packs), 6.0)
    packs.step(600.0, current, ambient_c=20.0)
    expected = 80.0 - 100.0 * 6.0 * (600.0 / 3600.0) / packs.capacity_ah
    np.testing.assert_allclose(packs.soc_pct, expected)


def test_charging_raises_soc_and_stops_at_full() -> None:
    """A negative (charging) current raises SOC, which never exceeds 100 %."""
    packs = _packs(soc_pct=99.0)
    packs.step(3600.0, np.full(len(packs), -10.0), ambient_c=20.0)
    np.testing.assert_array_equal(packs.soc_pct, 100.0)


def test_temperature_rises_under_high_current_and_relaxes_to_ambient() -> None:
    """I^2 R heats the pack above ambient; at rest it cools back towards ambient."""
    packs = _packs(temp_c=20.0)
    packs.step(600.0, np.full(len(packs), 30.0), ambient_c=20.0)
    hot = packs.temp_c.copy()
    assert np.all(hot > 25.0)
    packs.step(6 * 3600.0, np.zeros(len(packs)), ambient_c=20.0)
    np.testing.assert_allclose(packs.temp_c, 20.0, atol=0.1)
    assert np.all(packs.temp_c < hot)


def test_heating_scales_with_resistance() -> None:
    """Under the same current, the pack with the higher resistance gets hotter."""
    packs = _packs(n=50, temp_c=20.0)
    packs.step(300.0, np.full(50, 25.0), ambient_c=20.0)
    order = np.argsort(packs.resistance_ohm)
    assert packs.temp_c[order[-1]] > packs.temp_c[order[0]]


def test_aged_packs_have_more_resistance_and_wider_cell_spread() -> None:
    """Lower SOH means higher internal resistance and a wider cell-voltage spread."""
    packs = PackArray.create(
        2000, PackParams(resistance_spread=0.0), np.random.default_rng(1), soc_pct=50.0
    )
    old, new = packs.soh < 0.8, packs.soh > 0.95
    assert packs.resistance_ohm[old].min() > packs.resistance_ohm[new].max()
    low, high = packs.cell_voltage_range_v(np.zeros(len(packs)))
    spread = high - low
    assert spread[old].mean() > 2 * spread[new].mean()


def test_cell_range_brackets_the_mean_cell_and_sags_under_load() -> None:
    """cell_min <= mean cell voltage <= cell_max, and load pulls the weakest cell lower."""
    packs = _packs(n=100)
    current = np.full(100, 15.0)
    mean = packs.terminal_voltage_v(current) / packs.params.series_cells
    low, high = packs.cell_voltage_range_v(current)
    assert np.all(low <= mean) and np.all(mean <= high)
    low_rest, _ = packs.cell_voltage_range_v(np.zeros(100))
    assert np.all(low < low_rest)


def test_current_for_power_delivers_the_power() -> None:
    """The solved current satisfies P = I (V_oc - I R), for driving and for regen."""
    packs = _packs(n=3)
    power = np.array([300.0, 50.0, -100.0])
    current = packs.current_for_power_a(power)
    delivered = current * packs.terminal_voltage_v(current)
    np.testing.assert_allclose(delivered, power, rtol=1e-9)
    assert current[2] < 0


def test_step_rejects_a_current_per_pack_mismatch() -> None:
    """step() needs exactly one current per pack and says which shape it got."""
    packs = _packs(n=4)
    with pytest.raises(
        ValueError, match=r"Expected one current per pack, shape \(4,\), got \(3,\)"
    ):
        packs.step(1.0, np.zeros(3), ambient_c=20.0)
    with pytest.raises(ValueError, match=r"Expected dt_s > 0, got 0\.0"):
        packs.step(0.0, np.zeros(4), ambient_c=20.0)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"series_cells": 14}, "Expected series_cells in \\[10, 13\\]"),
        ({"soh_min": 0.9, "soh_max": 0.8}, "Expected 0 < soh_min <= soh_max <= 1"),
        ({"cooling_time_constant_s": 0.0}, "cooling_time_constant_s > 0"),
    ],
)
def test_pack_params_reject_invalid_values(changes: dict[str, float], message: str) -> None:
    """PackParams says which field is wrong and what it expected."""
    with pytest.raises(ValueError, match=message):
        PackParams(**changes)  # type: ignore[arg-type]

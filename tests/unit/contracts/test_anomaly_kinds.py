"""The anomaly kinds' names and bits: the one mapping both directions go through."""

from __future__ import annotations

import pytest

from contracts.anomaly_kinds import AnomalyKind, flag_names, flags_from_names
from twins.battery_twin import BatteryTwin


def test_every_bitmask_reads_back_from_its_names() -> None:
    """flags_from_names inverts flag_names for every combination of kinds."""
    for flags in range(1 << len(list(AnomalyKind))):
        assert flags_from_names(flag_names(flags)) == flags
    assert flag_names(int(AnomalyKind.TEMP_RISE | AnomalyKind.CELL_IMBALANCE)) == ["temp_rise", "cell_imbalance"]
    assert flags_from_names([]) == 0 and flag_names(0) == []


def test_a_twin_snapshots_flags_map_back_to_the_twins_bits() -> None:
    """A snapshot names its flags (as the alert manager reads it); the names give back the
    bitmask the twin holds, as a plain int (what a swap candidate carries)."""
    twin = BatteryTwin.standalone("bat-1")
    bits = int(AnomalyKind.TEMP_RISE | AnomalyKind.VOLTAGE_SAG)
    twin.table.anomaly_flags[twin.slot] = bits
    names = twin.snapshot().to_dict()["anomaly_flags"]
    assert names == ["temp_rise", "voltage_sag"]
    got = flags_from_names(names)
    assert got == bits and type(got) is int


def test_names_are_read_in_any_case_and_repeats_count_once() -> None:
    assert flags_from_names(["TEMP_RISE", "temp_rise", "Voltage_Residual"]) == 3


@pytest.mark.parametrize("names", [["temp_rise", "overheating"], [""]])
def test_an_unknown_name_is_refused_with_the_known_ones(names: list[str]) -> None:
    """The error names what arrived and what a name may be."""
    with pytest.raises(ValueError, match=r"among voltage_residual, temp_rise.*; got '"):
        flags_from_names(names)


def test_a_bare_string_is_refused_not_read_letter_by_letter() -> None:
    with pytest.raises(ValueError, match="a list of anomaly kind names, got the string 'temp_rise'"):
        flags_from_names("temp_rise")

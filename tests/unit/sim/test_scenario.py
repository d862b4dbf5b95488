"""What-if scenario files: the shipped examples, delta merging and validation errors."""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sim.scenario import (
    CostConfig,
    LoopConfig,
    Scenario,
    ScenarioError,
    load_scenario,
    scenario_from_mapping,
)

SCENARIOS = Path(__file__).resolve().parents[3] / "sim" / "scenarios"
BASELINE = SCENARIOS / "baseline.yaml"
SHIPPED = sorted(SCENARIOS.glob("*.yaml"))


def _baseline_mapping() -> dict[str, Any]:
    """The validated baseline as plain data, ready to break one value at a time."""
    return load_scenario(BASELINE).model_dump(mode="json")


def _leaf_diff(a: Any, b: Any, path: str = "") -> set[str]:
    """Dotted paths (list items by index) where two dumped scenarios differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out: set[str] = set()
        for k in a.keys() | b.keys():
            out |= _leaf_diff(a.get(k), b.get(k), f"{path}.{k}" if path else str(k))
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        out = set()
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            out |= _leaf_diff(x, y, f"{path}.{i}")
        return out
    return set() if a == b else {path}


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_all_seven_examples_are_shipped() -> None:
    """The folder holds exactly the documented what-ifs."""
    assert {p.stem for p in SHIPPED} == {
        "baseline",
        "plus2_technicians",
        "heatwave",
        "threshold25",
        "demand_plus30",
        "aged_fleet",
        "depot_closed",
    }


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_scenario_loads(path: Path) -> None:
    """Each file validates, is named after itself and tells a manager what it answers."""
    scenario = load_scenario(path)
    assert scenario.name == path.stem
    assert len(scenario.description) > 40
    assert "?" in scenario.description


def test_baseline_states_the_reference_operation() -> None:
    """The baseline: 2000 vehicles, two depots, 4 + 4 technicians, a June Monday in CEST,
    and unit costs and loop settings equal to the documented defaults."""
    s = load_scenario(BASELINE)
    assert s.start_date == dt.date(2026, 6, 1)
    assert s.start_date.weekday() == 0
    assert (s.days, s.seeds) == (2, [1, 2, 3])
    assert (s.city.radius_km, s.city.zone_km, s.city.utc_offset_h) == (5.0, 1.0, 2.0)
    assert s.fleet.vehicles == 2000
    assert [(g.fraction, g.age_days) for g in s.fleet.battery_age] == [
        (0.6, 180.0),
        (0.3, 540.0),
        (0.1, 900.0),
    ]
    assert [d.id for d in s.depots] == ["depot-nw", "depot-se"]
    assert not any(d.closed for d in s.depots)
    assert [(sh.name, sh.start_h, sh.end_h, sh.technicians) for sh in s.shifts] == [
        ("early", 7.0, 15.0, 4),
        ("late", 14.0, 22.0, 4),
    ]
    assert all(sh.depot is None and sh.van_capacity == 25 for sh in s.shifts)
    assert s.technicians == 8
    assert s.swap_policy.kind == "priority_model"
    assert s.costs == CostConfig()
    assert s.loop == LoopConfig()


@pytest.mark.parametrize(
    ("stem", "changed"),
    [
        ("plus2_technicians", {"shifts.1.technicians"}),
        ("heatwave", {"weather.temp_offset_c", "weather.rain_scale"}),
        ("threshold25", {"swap_policy.kind", "swap_policy.threshold_soc_pct"}),
        ("demand_plus30", {"demand.multiplier"}),
        (
            "aged_fleet",
            {
                "fleet.battery_age.0.age_days",
                "fleet.battery_age.1.age_days",
                "fleet.battery_age.2.age_days",
            },
        ),
        ("depot_closed", {"depots.1.closed"}),
    ],
)
def test_delta_differs_from_baseline_only_where_intended(stem: str, changed: set[str]) -> None:
    """A delta file changes its name, its description and the values it is about, nothing else."""
    base = load_scenario(BASELINE).model_dump()
    delta = load_scenario(SCENARIOS / f"{stem}.yaml").model_dump()
    top = {k for k in base if base[k] != delta[k]}
    assert top == {"name", "description"} | {c.split(".")[0] for c in changed}
    assert _leaf_diff(base, delta) == {"name", "description"} | changed


def test_delta_values() -> None:
    """The deltas carry the documented values (a merge kept the rest of each section)."""
    assert load_scenario(SCENARIOS / "plus2_technicians.yaml").technicians == 10
    heat = load_scenario(SCENARIOS / "heatwave.yaml").weather
    assert (heat.temp_offset_c, heat.rain_scale, heat.annual_mean_c) == (12.0, 0.2, 10.0)
    policy = load_scenario(SCENARIOS / "threshold25.yaml").swap_policy
    assert (policy.kind, policy.threshold_soc_pct) == ("threshold", 25.0)
    assert load_scenario(SCENARIOS / "demand_plus30.yaml").demand.multiplier == 1.3
    base_ages = [g.age_days for g in load_scenario(BASELINE).fleet.battery_age]
    aged = load_scenario(SCENARIOS / "aged_fleet.yaml").fleet.battery_age
    assert [g.age_days for g in aged] == [a + 730 for a in base_ages]
    depots = load_scenario(SCENARIOS / "depot_closed.yaml").depots
    assert [(d.id, d.closed) for d in depots] == [("depot-nw", False), ("depot-se", True)]


def test_empty_config_takes_defaults() -> None:
    """Only a name and one depot are required; every section falls back to its defaults."""
    s = scenario_from_mapping(
        {
            "name": "minimal",
            "depots": [
                {"id": "d", "north_km": 0, "east_km": 0, "chargers": 1, "charged_batteries": 0}
            ],
        }
    )
    assert s.fleet.vehicles == 2000
    assert s.shifts == []
    assert s.costs == CostConfig()


def test_missing_required_key_is_named() -> None:
    """A scenario without depots says which key is missing."""
    with pytest.raises(ScenarioError, match=r"depots: missing"):
        scenario_from_mapping({"name": "x"})


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("wind_kmh: 3\n", "wind_kmh"),
        ("fleet: {vehicle: 10}\n", "fleet.vehicle"),
        (
            "depots:\n  - {id: a, north_km: 0, east_km: 0, chargers: 1, charged_batteries: 0, size: 3}\n",
            "depots.0.size",
        ),
    ],
)
def test_unknown_key_is_an_error_naming_its_path(tmp_path: Path, text: str, key: str) -> None:
    """A typo is not silently ignored: the error names the file and the full key path."""
    path = _write(tmp_path / "typo.yaml", f"base: {BASELINE}\nname: typo\n{text}")
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    message = str(info.value)
    assert str(path) in message
    assert f"  {key}: Extra inputs are not permitted" in message


def _set(*keys: str | int, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(data: dict[str, Any]) -> None:
        node: Any = data
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value

    return mutate


def _close_all_depots(data: dict[str, Any]) -> None:
    for depot in data["depots"]:
        depot["closed"] = True


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            _set("fleet", "vehicles", value=0),
            r"fleet\.vehicles: Input should be greater than or equal to 1",
        ),
        (
            _set("depots", 1, "chargers", value=-1),
            r"depots\.1\.chargers: Input should be greater than or equal to 0",
        ),
        (_set("shifts", 0, "end_h", value=6), r"shifts\.0: .*expected end_h > start_h"),
        (
            _set(
                "fleet",
                "battery_age",
                value=[{"fraction": 0.6, "age_days": 1}, {"fraction": 0.6, "age_days": 2}],
            ),
            r"fleet\.battery_age: .*expected fractions summing to 1, got 1\.2",
        ),
        (
            _set("swap_policy", value={"kind": "threshold"}),
            r"swap_policy: .*expected threshold_soc_pct",
        ),
        (_set("shifts", 1, "depot", value="depot-x"), r"shifts\.1\.depot: .*got 'depot-x'"),
        (_set("seeds", value=[1, 2, 1]), r"seeds: .*expected distinct seeds"),
        (_close_all_depots, r"depots: expected at least one open depot"),
        (_set("depots", 1, "id", value="depot-nw"), r"depots: expected distinct ids"),
        (_set("depots", 0, "north_km", value=9.0), r"depots\.0: depot 'depot-nw': expected within"),
    ],
    ids=[
        "no-vehicles",
        "negative-chargers",
        "shift-ends-before-start",
        "fractions-not-1",
        "threshold-without-value",
        "unknown-depot-in-shift",
        "duplicate-seeds",
        "all-depots-closed",
        "duplicate-depot-ids",
        "depot-outside-city",
    ],
)
def test_impossible_values_name_the_key(
    mutate: Callable[[dict[str, Any]], None], expected: str
) -> None:
    """Each impossible value raises a ScenarioError whose message starts at the key path."""
    data = copy.deepcopy(_baseline_mapping())
    mutate(data)
    with pytest.raises(ScenarioError, match=expected) as info:
        scenario_from_mapping(data, "broken")
    # Cross-section checks must not quote the whole scenario back.
    assert len(str(info.value)) < 400


def test_bad_yaml_is_a_clear_error(tmp_path: Path) -> None:
    """A syntax error names the file and says it is not YAML."""
    path = _write(tmp_path / "bad.yaml", "name: [unclosed\n")
    with pytest.raises(ScenarioError, match=r"bad\.yaml: expected YAML, got a syntax error"):
        load_scenario(path)


@pytest.mark.parametrize(
    ("text", "kind"), [("- a\n- b\n", "list"), ("", "NoneType"), ("42\n", "int")]
)
def test_non_mapping_file_is_a_clear_error(tmp_path: Path, text: str, kind: str) -> None:
    """A list, a scalar or an empty file is refused with what arrived."""
    path = _write(tmp_path / "flat.yaml", text)
    with pytest.raises(ScenarioError, match=f"expected a mapping at the top, got {kind}"):
        load_scenario(path)


def test_missing_file_and_base_are_clear_errors(tmp_path: Path) -> None:
    """An absent file, or an absent base file, names the path that could not be read."""
    with pytest.raises(ScenarioError, match=r"nope\.yaml: cannot read the scenario"):
        load_scenario(tmp_path / "nope.yaml")
    path = _write(tmp_path / "orphan.yaml", "base: gone.yaml\nname: orphan\n")
    with pytest.raises(ScenarioError, match=r"gone\.yaml: cannot read the scenario"):
        load_scenario(path)


def test_base_must_be_a_file_name(tmp_path: Path) -> None:
    """``base:`` takes a path, not a mapping."""
    path = _write(tmp_path / "odd.yaml", "base: {file: baseline.yaml}\nname: odd\n")
    with pytest.raises(ScenarioError, match="base: expected a file name"):
        load_scenario(path)


def test_base_cycle_is_an_error_not_a_hang(tmp_path: Path) -> None:
    """Two files that name each other as base stop with an error instead of recursing forever."""
    _write(tmp_path / "a.yaml", "base: b.yaml\nname: a\n")
    _write(tmp_path / "b.yaml", "base: a.yaml\nname: b\n")
    with pytest.raises(ScenarioError, match="cycle"):
        load_scenario(tmp_path / "a.yaml")


def test_delta_merges_mappings_and_replaces_lists(tmp_path: Path) -> None:
    """A base path is relative to the delta file; mappings merge key by key, lists replace."""
    (tmp_path / "deep").mkdir()
    _write(tmp_path / "base.yaml", BASELINE.read_text(encoding="utf-8"))
    path = _write(
        tmp_path / "deep" / "delta.yaml",
        "base: ../base.yaml\nname: delta\nfleet: {vehicles: 500}\nseeds: [7]\n",
    )
    s = load_scenario(path)
    assert s.fleet.vehicles == 500
    assert s.fleet.rentable_min_soc_pct == 15.0
    assert len(s.fleet.battery_age) == 3
    assert s.seeds == [7]


def test_with_seeds_replaces_only_the_seeds() -> None:
    """``with_seeds`` returns a validated copy with new seeds and leaves the original alone."""
    base = load_scenario(BASELINE)
    other = base.with_seeds([11, 12])
    assert isinstance(other, Scenario)
    assert other.seeds == [11, 12]
    assert base.seeds == [1, 2, 3]
    assert other.model_dump(exclude={"seeds"}) == base.model_dump(exclude={"seeds"})
    with pytest.raises(ValueError, match="expected distinct seeds"):
        base.with_seeds([4, 4])
    with pytest.raises(ValueError, match="seeds"):
        base.with_seeds([])

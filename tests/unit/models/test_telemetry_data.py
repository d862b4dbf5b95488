"""The electrochemical pack set and what a twin makes of each pack."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from contracts.samples import SAMPLE_FIELDS
from models.health_xgb import HealthParams, health_score_label
from models.telemetry_data import (
    HealthPackSet,
    health_pack_specs,
    pack_batch,
    twin_counters,
    twin_features,
)
from models.telemetry_eval import HealthEvalPlan, evaluate_health
from sim.ageing import LifetimeSimulator
from sim.electrochem import PackSpec, pack_run
from twins.features import HEALTH_FEATURE_NAMES, TwinCounters, health_features


def test_every_set_at_every_soh_as_a_15_ah_pack() -> None:
    specs = health_pack_specs(("Chen2020", "Prada2013", "NCA_Kim2011"), soh_levels=(1.0, 0.8), hours=2.0)
    assert [(s.parameter_set, s.soh) for s in specs] == [
        ("Chen2020", 1.0), ("Chen2020", 0.8), ("Prada2013", 1.0), ("Prada2013", 0.8),
        ("NCA_Kim2011", 1.0), ("NCA_Kim2011", 0.8),
    ]  # fmt: skip
    assert [s.parallel for s in specs[::2]] == [3, 7, 31]
    assert {s.series for s in specs} == {13} and len({s.seed for s in specs}) == 6
    assert specs[1].resistance_multiple == pytest.approx(1.5)
    assert health_pack_specs(("Chen2020",), hours=2.0) == health_pack_specs(("Chen2020",), hours=2.0)
    with pytest.raises(ValueError, match=r"Expected parameter sets among .*, got \['Nobody2030'\]"):
        health_pack_specs(("Nobody2030",))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> object:
    return pack_run(PackSpec(soh=0.9, hours=0.75, seed=3), tmp_path_factory.mktemp("packs"))


def test_a_pack_becomes_the_messages_a_shard_would_get(run: object) -> None:
    batch = pack_batch(run)  # type: ignore[arg-type]
    n = run.ts.size  # type: ignore[attr-defined]
    assert set(batch.columns) == set(SAMPLE_FIELDS) and batch.n_samples == n
    assert batch.msg_offsets[0] == 0 and batch.msg_offsets[-1] == n and np.all(np.diff(batch.msg_offsets) <= 30)
    np.testing.assert_array_equal(batch.seqs, np.arange(1, batch.n_messages + 1))
    np.testing.assert_array_equal(batch.columns["current_a"], run.current_a)  # type: ignore[attr-defined]


def test_the_twin_counts_the_packs_charge_against_its_own_rating(run: object) -> None:
    c = twin_counters(run)  # type: ignore[arg-type]
    assert c.rated_capacity_ah[0] == pytest.approx(run.rated_capacity_ah)  # type: ignore[attr-defined]
    ridden_ah = float(np.sum(np.clip(run.current_a[1:], 0, None) * np.diff(run.ts)) / 3600.0)  # type: ignore[attr-defined]
    assert c.ah_discharged_ah[0] == pytest.approx(ridden_ah, rel=0.05)
    assert twin_features(run).shape == (1, len(HEALTH_FEATURE_NAMES))  # type: ignore[arg-type]


def test_leaving_each_set_out_reports_model_baseline_and_first_model_per_set() -> None:
    """On stand-in packs (simulated rows split into three 'sets'), the report has each set's
    errors, and the baseline's is the estimate's own error, computed here by hand."""
    sample = LifetimeSimulator(seed=9).run(60, 700, 2)
    x = health_features(TwinCounters.from_lifetime(sample))
    est = HEALTH_FEATURE_NAMES.index("capacity_ratio_est")
    keep = np.isfinite(x[:, est])
    x, soh = x[keep][:30], sample.soh[keep][:30]
    packs = HealthPackSet([], x, soh, np.array(["A", "B", "C"] * 10))
    plan = HealthEvalPlan(packs=60, days=700, snapshots=2, params=HealthParams(n_estimators=20, max_depth=3))
    report = evaluate_health(packs, plan, seeds=(0, 1))
    a = report["by_parameter_set"]["A"]
    rows = packs.group == "A"
    by_hand = float(np.mean(np.abs(100.0 * x[rows, est] - 100.0 * soh[rows])))
    assert a["baseline_soh_mae_pp"] == pytest.approx(by_hand, abs=1e-3)
    assert a["packs"] == 10 and len(a["correction_weights"]) == 2
    for k in ("model_soh_mae_pp", "model_soh_mae_pp_sd", "first_model_soh_mae_pp"):
        assert np.isfinite(report["overall"][k])
    with pytest.raises(ValueError, match="at least 2 parameter sets"):
        evaluate_health(HealthPackSet([], x[:3], soh[:3], np.array(["A"] * 3)), plan)


def test_a_built_set_reads_from_its_cache(tmp_path: Path) -> None:
    from models.telemetry_data import build_health_packs

    specs = [PackSpec(soh=1.0, hours=0.75, seed=3)]
    seen: list[int] = []
    first = build_health_packs(specs, tmp_path, lambda k, n, s: seen.append(k))
    again = build_health_packs(specs, tmp_path)
    assert seen == [0] and len(list(tmp_path.glob("pack-*.npz"))) == 1
    np.testing.assert_array_equal(first.x, again.x)
    assert list(first.group) == ["Chen2020"] and first.soh[0] == pytest.approx(1.0)


def test_a_pack_is_the_same_whichever_sets_are_asked_for_with_it() -> None:
    """The cache key: Prada2013 at 80 % alone or among others is one pack."""
    alone = health_pack_specs(("Prada2013",), soh_levels=(0.8,))
    among = health_pack_specs(("Chen2020", "Prada2013"), soh_levels=(1.0, 0.8))
    assert alone[0] == among[-1]


def test_thresholds_allow_the_budget_of_packs_past_them_times_the_margin() -> None:
    """Ten healthy 100-hour packs (1,000 pack-hours): a budget of 1 per 1,000 h lets one pack
    past, so the threshold is the second-largest peak times the margin; a channel no pack
    ever spoke on gets none (it never flags)."""
    from types import SimpleNamespace

    from models.telemetry_eval import DetectorEvalParams, EvidenceTrace, calibrate_thresholds
    from twins.pack_watch import EVIDENCE_NAMES

    runs, traces = [], []
    for k in range(10):
        t = np.arange(1.0, 361.0) * 1000.0
        ev = np.full((t.size, len(EVIDENCE_NAMES)), np.nan)
        ev[:, 0] = 1.0 + k  # peaks 1..10
        ev[:, 1] = 0.5
        runs.append(SimpleNamespace(ts=t, fault_onset_s=float("nan")))
        traces.append(EvidenceTrace(t, ev))
    th = dict(calibrate_thresholds(runs, traces, DetectorEvalParams(budget_per_1000_h=1.0, margin=1.5)).thresholds)  # type: ignore[arg-type]
    assert th == {"voltage_consistency": 13.5, "cell_spread": 1.5}  # 1.5 x 9; 1.5 x max(0.5, 1)
    strict = dict(calibrate_thresholds(runs, traces, DetectorEvalParams(budget_per_1000_h=0.1, margin=2.0)).thresholds)  # type: ignore[arg-type]
    assert strict["voltage_consistency"] == 20.0


def test_detectors_are_judged_by_false_alarms_and_by_recall_and_delay_per_fault(tmp_path: Path) -> None:
    """A real pack and the same pack heating from within: the twin, warmed up on its first
    10 minutes, finds the excursion within minutes and is silent on the healthy pack."""
    from dataclasses import replace

    from models.telemetry_eval import DetectorEvalParams, evaluate_detectors
    from sim.electrochem import PackFault
    from twins.pack_watch import PackWatchParams

    healthy = pack_run(PackSpec(soh=0.9, hours=0.75, seed=3), tmp_path)
    hot = pack_run(replace(healthy.spec, fault=PackFault("thermal_excursion", onset_h=0.4)), tmp_path)
    params = DetectorEvalParams(pack_watch=PackWatchParams(warmup_samples=60, warmup_s=600.0))
    report = evaluate_detectors([healthy], [hot], params)
    assert report["false_alarms"] == 0
    f = report["faults"]["thermal_excursion"]
    assert f["recall"] == 1.0 and 0.0 < f["median_delay_min"] < 10.0 and f["first_event_kinds"] == {"temp_rise": 1}
    hours = (float(healthy.ts[-1]) + hot.fault_onset_s) / 3600.0
    assert report["healthy_pack_hours"] == pytest.approx(hours, abs=0.05)
    assert set(report["production_thresholds"]) >= {"thermal", "cell_spread", "voltage_consistency"}
    # Thresholds at the floor flag the healthy pack too: false alarms, and the fault is missed.
    noisy = evaluate_detectors([healthy], [hot], replace(params, margin=1e-3))
    assert noisy["false_alarms"] >= 2 and noisy["faults"]["thermal_excursion"]["recall"] == 0.0


def test_training_reads_the_built_healthy_packs_and_solves_nothing(tmp_path: Path) -> None:
    """models.training.cached_health_rows: one labelled row per healthy cached pack, faulty
    packs left out, an empty folder gives None."""
    from dataclasses import replace

    from models.training import cached_health_rows
    from sim.electrochem import PackFault

    assert cached_health_rows(tmp_path) is None
    run = pack_run(PackSpec(soh=0.9, hours=0.75, seed=3), tmp_path)
    pack_run(replace(run.spec, fault=PackFault("stuck_sensor", onset_h=0.1)), tmp_path)
    rows = cached_health_rows(tmp_path)
    assert rows is not None and rows.x.shape == (1, len(HEALTH_FEATURE_NAMES))
    assert rows.soh[0] == pytest.approx(run.soh) and list(rows.group) == ["Chen2020"]


def test_the_shipped_rows_are_the_seven_cells_over_todays_features() -> None:
    """models/data/electrochem_health_rows.json is what every training chooses the correction's
    weight on: a change of the health features must rebuild it (`bms models data`)."""
    from models.training import SHIPPED_HEALTH_ROWS, health_rows

    rows = health_rows(SHIPPED_HEALTH_ROWS)
    assert rows.x.shape == (42, len(HEALTH_FEATURE_NAMES)) and len(set(rows.group.tolist())) == 7
    # The score label carries each pack's resistance growth (x1.625 at 75 %), not just its SOH.
    assert rows.score.min() < health_score_label(np.array([0.75]), np.array([1.0]))[0] - 5.0
    assert 0.74 < rows.soh.min() and rows.soh.max() < 1.01
    assert np.isfinite(rows.x[:, HEALTH_FEATURE_NAMES.index("capacity_ratio_est")]).all()


def test_health_rows_round_trip_and_refuse_other_features(tmp_path: Path, run: object) -> None:
    from models.telemetry_data import read_health_rows, write_health_rows

    packs = HealthPackSet([run], twin_features(run), np.array([run.soh]), np.array(["Chen2020"]))  # type: ignore[arg-type, attr-defined]
    path = tmp_path / "rows.json"
    write_health_rows(packs, path, "test")
    back = read_health_rows(path)
    np.testing.assert_array_equal(back.x, packs.x)
    assert back.soh[0] == pytest.approx(run.soh) and list(back.group) == ["Chen2020"]  # type: ignore[attr-defined]
    # The packs' resistance growth labels the health score: ratio 1 here (none stored).
    assert back.resistance()[0] == 1.0 and back.foreign().score[0] == pytest.approx(packs.foreign().score[0])
    doc = json.loads(path.read_text())
    doc["features"] = doc["features"][:-1]
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="rebuild it with `bms models data`"):
        read_health_rows(path)


def test_the_simulators_fleet_is_judged_with_thresholds_it_had_no_part_in() -> None:
    """A small simulated fleet with each of the simulator's faults after the twins' first
    hour: the report counts healthy battery-hours and false alarms, and per fault kind the
    batteries, how many carried current after onset, recall and delay; a thermal runaway
    (it heats a parked pack too) is found."""
    import json

    from models.anomaly import PackEvidenceParams
    from models.telemetry_eval import FleetEvalPlan, evaluate_fleet
    from models.training import SHIPPED_PACK_THRESHOLDS

    thresholds = PackEvidenceParams(tuple(json.loads(SHIPPED_PACK_THRESHOLDS.read_text())["thresholds"].items()))
    plan = FleetEvalPlan(vehicles=16, hours=2.0, faults=4, fault_after_s=4200.0, fault_window_s=600.0)
    report = evaluate_fleet(thresholds, plan)
    assert report["healthy_battery_hours"] > 16 and report["false_alarms"] == 0
    assert set(report["faults"]) == {"thermal_runaway", "resistance_jump", "weak_cell", "voltage_sensor_offset"}
    runaway = report["faults"]["thermal_runaway"]
    assert runaway["batteries"] == 1 and runaway["recall"] == 1.0 and runaway["first_event_kinds"] == {"temp_rise": 1}
    assert all(0 <= f["carried_current_after_onset"] <= f["batteries"] for f in report["faults"].values())

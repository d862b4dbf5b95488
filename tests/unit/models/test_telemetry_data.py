"""The electrochemical pack set and what a twin makes of each pack."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from contracts.samples import SAMPLE_FIELDS
from models.health_xgb import HealthParams
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
    assert [s.parallel for s in specs[::2]] == [3, 7, 35]
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

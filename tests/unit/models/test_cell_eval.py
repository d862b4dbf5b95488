"""Tests for :mod:`models.cell_eval`: protocols, metric definitions, seeds, the CLI and the JSON."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from typer.testing import CliRunner

import models.cell_eval as cell_eval
from bms.models_cli import models_app
from models.cell_data import CellHistory
from models.cell_eval import (
    BAND_METRICS,
    BASELINES,
    METHODS,
    METRICS,
    CellEvalParams,
    evaluate_cells,
    evaluate_datasets,
    evaluate_held_out,
    evaluate_histories,
    evaluate_seeds,
    seen_cycles,
)
from models.degradation_lstm import DegradationParams
from models.degradation_lstm import train as real_train

_TINY = DegradationParams(train_steps=20, batch_size=4, hidden_size=8)


def _write_cell(directory: Path, cell_id: str, cycles: int, rate: float, seed: int) -> None:
    """A CSV with only the five required columns: a noisy linear fade from 0.98 SOH of 2 Ah."""
    rng = np.random.default_rng(seed)
    soh = 0.98 - rate * np.arange(1, cycles + 1) + rng.normal(0.0, 0.002, cycles)
    lines = ["cell_id,cycle,capacity_Ah,nominal_capacity_Ah,anomaly_flag"]
    lines += [f"{cell_id},{k},{2.0 * s:.5f},2.0,0" for k, s in enumerate(soh, start=1)]
    (directory / f"{cell_id}.csv").write_text("\n".join(lines) + "\n")


def _line(cell_id: str, cycles: int, rate: float, start: float = 1.0) -> CellHistory:
    """A noise-free linear fade ``start - rate k`` (nominal 1 Ah)."""
    return CellHistory.from_soh(cell_id, start - rate * np.arange(1, cycles + 1))


@dataclass(frozen=True)
class _FakeForecast:
    soh: npt.NDArray[np.float64]


@dataclass
class _FakeModel:
    """A model with known answers: the p50 SOH falls 0.005 per cycle from the last seen one
    (p10 / p90 0.01 below / above), the RUL is ``rul`` whatever the input."""

    rul: tuple[float, float, float] = (10.0, 20.0, 30.0)
    horizons: list[int] = field(default_factory=list)
    thresholds: list[float] = field(default_factory=list)

    def forecast_histories(
        self, soh_histories: Sequence[npt.ArrayLike], horizon_cycles: int = 200
    ) -> _FakeForecast:
        self.horizons.append(horizon_cycles)
        out = []
        for s in soh_histories:
            p50 = float(np.asarray(s)[-1]) - 0.005 * np.arange(1, horizon_cycles + 1)
            out.append(np.stack([p50 - 0.01, p50, p50 + 0.01], axis=-1))
        return _FakeForecast(np.array(out))

    def remaining_useful_life_histories(
        self, soh_histories: Sequence[npt.ArrayLike], threshold_frac: float
    ) -> npt.NDArray[np.float64]:
        self.thresholds.append(threshold_frac)
        return np.tile(np.array(self.rul), (len(soh_histories), 1))


@dataclass
class _FakeTrainer:
    """Stands in for ``train``: records each training's cell ids and seed, returns fakes."""

    rul: Callable[[int], tuple[float, float, float]] = lambda seed: (10.0, 20.0, 30.0)
    calls: list[tuple[list[str], int]] = field(default_factory=list)
    models: list[_FakeModel] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)

    def __call__(
        self,
        histories: Sequence[CellHistory],
        params: DegradationParams | None = None,
        seed: int = 0,
    ) -> _FakeModel:
        self.calls.append(([h.cell_id for h in histories], seed))
        self.steps.append((params or DegradationParams()).train_steps)
        self.models.append(_FakeModel(self.rul(seed)))
        return self.models[-1]


@pytest.fixture
def fake_train(monkeypatch: pytest.MonkeyPatch) -> _FakeTrainer:
    """``models.cell_eval.train`` replaced by a recording fake."""
    trainer = _FakeTrainer()
    monkeypatch.setattr(cell_eval, "train", trainer)
    return trainer


# ---------------------------------------------------------------- real training, JSON shape


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Evaluation of three cells reaching 70 %, one that never does, one dead on arrival."""
    directory = tmp_path_factory.mktemp("cells")
    _write_cell(directory, "C1", 110, 0.0035, 1)
    _write_cell(directory, "C2", 90, 0.0045, 2)
    _write_cell(directory, "C3", 130, 0.003, 3)
    _write_cell(directory, "N1", 50, 0.001, 4)  # ends near 0.93: never reaches end of life
    _write_cell(directory, "D1", 6, 0.06, 5)  # end of life at cycle 5: too short to forecast
    return evaluate_cells(directory, _TINY, seed=0, progress=lambda line: None)


def test_result_has_the_promised_shape(result: dict[str, Any]) -> None:
    """cells -> {every method -> every metric; true_eol_cycle}, mean -> every method with
    exactly the metrics (floats, band metrics None but for the model), best_baseline per
    metric; everything JSON-serialisable."""
    parsed = json.loads(json.dumps(result))
    assert parsed["protocol"] == "leave_one_cell_out" and parsed["folds"] == 5
    assert set(parsed["cells"]) == {"C1", "C2", "C3", "N1", "D1"}
    for cell in parsed["cells"].values():
        assert "true_eol_cycle" in cell and "reaches_eol" in cell
        for method in METHODS:
            assert set(cell[method]) == set(METRICS)
    assert list(parsed["mean"]) == list(METHODS)
    for method in METHODS:
        assert set(parsed["mean"][method]) == set(METRICS)
        for metric, value in parsed["mean"][method].items():
            if method != "model" and metric in BAND_METRICS:
                assert value is None
            else:
                assert isinstance(value, float), (method, metric)
    assert set(parsed["best_baseline"]) == set(METRICS)
    for metric in METRICS:
        best = parsed["best_baseline"][metric]
        if metric in BAND_METRICS:
            assert best is None
        else:
            assert best["method"] in BASELINES
            assert best["value"] == min(
                parsed["mean"][m][metric]
                for m in BASELINES
                if parsed["mean"][m][metric] is not None
            )


def test_cells_reaching_eol_are_scored(result: dict[str, Any]) -> None:
    """A cell reaching 70 % has its true EOL, RUL errors at 25 % and 50 %, both capacity RMSEs;
    the model also its band coverage and p10 <= p50 <= p90."""
    cell = result["cells"]["C2"]
    assert cell["reaches_eol"] is True
    eol = cell["true_eol_cycle"]
    assert 50 <= eol <= 75
    assert cell["seen_cycles"] == {"25pct": seen_cycles(eol, 0.25), "50pct": seen_cycles(eol, 0.5)}
    for method in METHODS:
        scored = METRICS if method == "model" else [m for m in METRICS if m not in BAND_METRICS]
        assert all(cell[method][m] is not None and cell[method][m] >= 0 for m in scored)
        predicted = cell["predicted_eol_cycle"][method]["50pct"]
        assert cell[method]["rul_rel_error_at_50pct"] == pytest.approx(abs(predicted - eol) / eol)
    band = cell["predicted_eol_cycle"]["model"]
    assert band["50pct_p10"] <= band["50pct"] <= band["50pct_p90"]
    inside = band["50pct_p10"] <= eol <= band["50pct_p90"]
    assert cell["model"]["eol_in_band_at_50pct"] == (1.0 if inside else 0.0)


def test_cells_without_eol_are_reported_but_not_averaged(result: dict[str, Any]) -> None:
    """A cell that never reaches EOL gets a capacity RMSE only and is excluded from the mean;
    so is a cell whose EOL comes before a forecast is possible; the mean is over the rest."""
    cells = result["cells"]
    never = cells["N1"]
    assert never["reaches_eol"] is False and never["true_eol_cycle"] is None
    assert never["model"]["rul_rel_error_at_50pct"] is None
    assert never["model"]["capacity_rmse_to_eol_pct_nominal"] is None
    assert never["model"]["capacity_rmse_pct_nominal"] is not None
    assert cells["D1"]["reaches_eol"] is True
    assert all(v is None for v in cells["D1"]["model"].values())
    assert set(result["excluded"]) == {"N1", "D1"}
    assert "never reaches 70% of nominal" in result["excluded"]["N1"]
    assert result["n_cells_in_mean"] == 3
    for method in METHODS:
        for metric in METRICS:
            values = [cells[c][method][metric] for c in ("C1", "C2", "C3")]
            if None in values:
                assert result["mean"][method][metric] is None
            else:
                assert result["mean"][method][metric] == pytest.approx(np.mean(values))


def test_eval_params_are_validated() -> None:
    """Protocol knobs are checked with the value that arrived."""
    with pytest.raises(ValueError, match=r"Expected eol_fraction in \(0, 1\), got 1.2"):
        CellEvalParams(eol_fraction=1.2)
    with pytest.raises(
        ValueError, match=r"Expected eol_basis in \['nominal', 'initial'\], got 'rated'"
    ):
        CellEvalParams(eol_basis="rated")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Expected min_seen_cycles >= 2, got 1"):
        CellEvalParams(min_seen_cycles=1)


def test_single_cell_cannot_be_left_out(tmp_path: Path) -> None:
    """Leave-one-out needs at least two cells."""
    _write_cell(tmp_path, "C1", 40, 0.01, 1)
    with pytest.raises(
        ValueError, match=r"Expected at least 2 cells for leave-one-out, got \['C1'\]"
    ):
        evaluate_cells(tmp_path, _TINY)


# ---------------------------------------------------------------- metric definitions


def _hand_case() -> list[CellHistory]:
    """T: 1 - 0.0055 k over 100 cycles, EOL (below 0.7) at 55; U: EOL at 5, too short to
    forecast (1 cycle seen at 25 %), so U only trains T's model."""
    return [_line("T", 100, 0.0055), _line("U", 10, 0.065)]


def test_metrics_on_a_hand_made_case(fake_train: _FakeTrainer) -> None:
    """With a model of known answers every metric is exact: RUL errors from p50, band
    coverage from p10/p90, both RMSEs over their cycle ranges, the baselines' errors, the
    horizon of max(horizon_cycles, 3 x EOL, cycles) and the mean and best baseline."""
    out = evaluate_histories(_hand_case(), _TINY, eval_params=CellEvalParams(horizon_cycles=10))
    assert fake_train.calls == [(["U"], 0)]
    model = fake_train.models[0]
    assert model.horizons == [165] and model.thresholds == [pytest.approx(0.7)]
    t = out["cells"]["T"]
    assert t["true_eol_cycle"] == 55 and t["seen_cycles"] == {"25pct": 13, "50pct": 27}
    assert t["horizon_cycles"] == 165
    assert t["predicted_eol_cycle"]["model"] == {
        "25pct": 33.0, "25pct_p10": 23.0, "25pct_p90": 43.0,
        "50pct": 47.0, "50pct_p10": 37.0, "50pct_p90": 57.0,
    }  # fmt: skip
    m = t["model"]
    assert m["rul_rel_error_at_25pct"] == pytest.approx(22 / 55)
    assert m["rul_rel_error_at_50pct"] == pytest.approx(8 / 55)
    assert m["eol_in_band_at_25pct"] == 0.0  # 55 outside [23, 43]
    assert m["eol_in_band_at_50pct"] == 1.0  # 55 inside [37, 57]
    # From cycle 27 the forecast falls 0.005 per cycle, the cell 0.0055: off by 0.0005 j.
    j_end, j_eol = np.arange(1, 74), np.arange(1, 29)  # cycles 28..100, 28..55
    assert m["capacity_rmse_pct_nominal"] == pytest.approx(
        100 * 0.0005 * np.sqrt(np.mean(j_end**2))
    )
    assert m["capacity_rmse_to_eol_pct_nominal"] == pytest.approx(
        100 * 0.0005 * np.sqrt(np.mean(j_eol**2))
    )
    # The fade curve and the last slope extrapolate the exact line: no error at all.
    for method in ("fade_curve", "last_slope"):
        assert t["predicted_eol_cycle"][method]["25pct"] == 55
        assert t[method]["rul_rel_error_at_25pct"] == pytest.approx(0.0, abs=1e-12)
        assert t[method]["capacity_rmse_to_eol_pct_nominal"] == pytest.approx(0.0, abs=1e-6)
        assert t[method]["eol_in_band_at_50pct"] is None
    # Mean lifetime: U's EOL 5, but T has survived 13 (27) cycles: predicted 14 (28).
    assert t["mean_lifetime"]["rul_rel_error_at_25pct"] == pytest.approx(41 / 55)
    assert t["mean_lifetime"]["rul_rel_error_at_50pct"] == pytest.approx(27 / 55)
    assert out["excluded"] == {
        "U": "too few cycles before the first forecast point: 1 < min_seen_cycles 2"
    }
    assert out["mean"]["model"] == t["model"]
    best = out["best_baseline"]
    assert best["rul_rel_error_at_25pct"]["method"] in ("fade_curve", "last_slope")
    assert best["rul_rel_error_at_25pct"]["value"] == pytest.approx(0.0, abs=1e-12)
    assert best["eol_in_band_at_25pct"] is None


def test_model_eol_beyond_the_horizon_is_capped_and_flagged(
    fake_train: _FakeTrainer,
) -> None:
    """An infinite RUL is scored as EOL at the end of the horizon (a lower bound on the
    error) and flagged; the band's p90 is capped the same way and still counts as covering."""
    fake_train.rul = lambda seed: (10.0, np.inf, np.inf)
    out = evaluate_histories(_hand_case(), _TINY, eval_params=CellEvalParams(horizon_cycles=10))
    predicted = out["cells"]["T"]["predicted_eol_cycle"]["model"]
    assert predicted["25pct"] == 13 + 165 and predicted["25pct_beyond_horizon"] is True
    assert out["cells"]["T"]["model"]["rul_rel_error_at_25pct"] == pytest.approx((178 - 55) / 55)
    assert out["cells"]["T"]["model"]["eol_in_band_at_25pct"] == 1.0  # 23 <= 55 <= 178


@pytest.mark.parametrize(
    ("rul", "in_band"),
    [
        ((42.0, 45.0, 50.0), {"25pct": 1.0, "50pct": 0.0}),  # p10 at 25 %: 13 + 42 = 55
        ((10.0, 20.0, 28.0), {"25pct": 0.0, "50pct": 1.0}),  # p90 at 50 %: 27 + 28 = 55
    ],
)
def test_band_edges_count_as_covering(
    fake_train: _FakeTrainer, rul: tuple[float, float, float], in_band: dict[str, float]
) -> None:
    """A true EOL exactly at the predicted p10 or p90 is inside the band."""
    fake_train.rul = lambda seed: rul
    out = evaluate_histories(_hand_case(), _TINY)
    for point, expected in in_band.items():
        assert out["cells"]["T"]["model"][f"eol_in_band_at_{point}"] == expected


def test_initial_basis_gives_each_cell_its_own_threshold(fake_train: _FakeTrainer) -> None:
    """Basis "initial": the model, the true EOL and the mean-lifetime baseline all use the
    cell's own threshold, 0.8 x initial capacity / nominal."""
    cells = [_line("T", 200, 0.002, start=1.1), _line("V", 200, 0.003, start=0.95)]
    params = CellEvalParams(eol_fraction=0.8, eol_basis="initial")
    out = evaluate_histories(cells, _TINY, eval_params=params)
    for cell, model in zip(cells, fake_train.models, strict=True):  # T's fold first (sorted)
        r = out["cells"][cell.cell_id]
        threshold = 0.8 * cell.initial_capacity_ah() / cell.nominal_capacity_ah
        assert r["eol_threshold_soh"] == pytest.approx(threshold)
        assert model.thresholds == [pytest.approx(threshold)]
        assert r["true_eol_cycle"] == cell.end_of_life_cycle(0.8, "initial")
    # T's mean-lifetime prediction is V's EOL at V's own threshold (and vice versa).
    v_eol = cells[1].end_of_life_cycle(0.8, "initial")
    assert out["cells"]["T"]["predicted_eol_cycle"]["mean_lifetime"]["50pct"] == v_eol
    assert v_eol != cells[1].end_of_life_cycle(0.8, "nominal")


# ---------------------------------------------------------------- protocols


def _seven() -> list[CellHistory]:
    """Seven cells given out of order; c3 never reaches 70 %."""
    rates = {
        "c5": 0.006,
        "c1": 0.005,
        "c3": 0.001,
        "c0": 0.004,
        "c6": 0.0045,
        "c2": 0.0055,
        "c4": 0.0065,
    }
    return [_line(c, 120, r) for c, r in rates.items()]


def test_k_fold_never_trains_on_a_held_out_cell(monkeypatch: pytest.MonkeyPatch) -> None:
    """folds=3: sorted ids dealt round-robin, one (real, tiny) training per fold on the other
    folds' cells only, the never-EOL cell c3 among them; every cell is forecast once."""
    calls: list[list[str]] = []

    def recording(histories: Sequence[CellHistory], params: Any = None, seed: int = 0) -> Any:
        calls.append([h.cell_id for h in histories])
        return real_train(histories, params, seed=seed)

    monkeypatch.setattr(cell_eval, "train", recording)
    out = evaluate_histories(_seven(), _TINY, folds=3)
    folds = {0: ["c0", "c3", "c6"], 1: ["c1", "c4"], 2: ["c2", "c5"]}
    assert out["protocol"] == "k_fold_cells" and out["folds"] == 3 and out["n_trainings"] == 3
    assert calls == [sorted(set(out["cells"]) - set(folds[j])) for j in range(3)]
    for j, held in folds.items():
        for cell in held:
            assert out["cells"][cell]["fold"] == j
            assert cell not in calls[j]
    assert "c3" in calls[1] and "c3" in calls[2]
    assert set(out["excluded"]) == {"c3"}
    assert out["n_cells_in_mean"] == 6
    assert list(out["cells"]) == [h.cell_id for h in _seven()]  # the order given


def test_leave_one_out_trains_once_per_forecastable_cell(fake_train: _FakeTrainer) -> None:
    """folds None (or >= the number of cells) is exact leave-one-out: one training per
    forecastable cell, on all the others; a cell too short to forecast is not trained for."""
    cells = [*_seven()[:3], _line("d", 8, 0.07)]  # d: EOL at 5, 1 cycle seen at 25 %
    for folds in (None, 4, 10):
        fake_train.calls.clear()
        out = evaluate_histories(cells, _TINY, folds=folds)
        assert out["protocol"] == "leave_one_cell_out" and out["folds"] == 4
        ids = sorted(h.cell_id for h in cells)
        assert [c for c, _ in fake_train.calls] == [
            [o for o in ids if o != held] for held in ids if held != "d"
        ]
    with pytest.raises(ValueError, match=r"Expected folds >= 2 \(or None"):
        evaluate_histories(cells, _TINY, folds=1)


def test_training_cells_are_capped_evenly_by_sorted_id(fake_train: _FakeTrainer) -> None:
    """max_train_cells=3 trains each fold on 3 of its cells, evenly spaced by sorted id."""
    out = evaluate_histories(_seven(), _TINY, max_train_cells=3)
    trained = dict(zip(sorted(out["cells"]), fake_train.calls, strict=True))  # all forecast
    assert trained["c0"][0] == ["c1", "c3", "c6"]  # positions 0, 2.5 -> 2, 5 of c1..c6
    assert trained["c6"][0] == ["c0", "c2", "c5"]
    assert all(len(ids) == 3 and held not in ids for held, (ids, _) in trained.items())
    assert out["cells"]["c0"]["n_train_cells"] == 3 and out["max_train_cells"] == 3
    with pytest.raises(ValueError, match="Expected max_train_cells >= 1"):
        evaluate_histories(_seven(), _TINY, max_train_cells=0)


def test_leave_one_dataset_out_trains_only_on_the_other_datasets(fake_train: _FakeTrainer) -> None:
    """One training per dataset on the other datasets' cells; mean lifetime is fitted on
    them too; per-dataset results and the pooled top-level cells and mean have one shape."""
    datasets = {
        "a": [_line("A1", 120, 0.0052), _line("A2", 120, 0.0041)],
        "b": [_line("B1", 200, 0.0026)],
        "c": [_line("C1", 150, 0.0031), _line("C2", 150, 0.0008)],  # C2 never reaches EOL
    }
    out = evaluate_datasets(datasets, _TINY)
    assert [ids for ids, _ in fake_train.calls] == [
        ["B1", "C1", "C2"],
        ["A1", "A2", "C1", "C2"],
        ["A1", "A2", "B1"],
    ]
    assert out["protocol"] == "leave_one_dataset_out" and list(out["datasets"]) == ["a", "b", "c"]
    eol = {h.cell_id: h.end_of_life_cycle() for cells in datasets.values() for h in cells}
    # A1 is predicted to live as long as the mean of B1 and C1 (C2 never reaches EOL).
    b1, c1 = eol["B1"], eol["C1"]
    assert b1 is not None and c1 is not None and eol["C2"] is None
    expected = max((b1 + c1) / 2, out["cells"]["A1"]["seen_cycles"]["50pct"] + 1)
    assert out["cells"]["A1"]["predicted_eol_cycle"]["mean_lifetime"]["50pct"] == expected
    for name, data in out["datasets"].items():
        assert {"cells", "mean", "best_baseline", "excluded", "n_cells_in_mean"} <= set(data)
        assert set(data["cells"]) == {h.cell_id for h in datasets[name]}
        assert all(r["dataset"] == name for r in data["cells"].values())
    assert set(out["cells"]) == set(eol) and out["excluded"] == {
        "C2": out["cells"]["C2"]["excluded_reason"]
    }
    pooled = [out["cells"][c]["model"]["rul_rel_error_at_50pct"] for c in ("A1", "A2", "B1", "C1")]
    assert out["mean"]["model"]["rul_rel_error_at_50pct"] == pytest.approx(np.mean(pooled))
    json.dumps(out)
    with pytest.raises(ValueError, match="Expected at least 2 non-empty datasets"):
        evaluate_datasets({"a": datasets["a"]}, _TINY)


def test_held_out_trains_once_on_the_training_cells_only(fake_train: _FakeTrainer) -> None:
    """The live model's check: one training on the training cells, every held-out cell
    forecast by it; an id in both sets is refused."""
    training = [_line("T1", 120, 0.0052), _line("T2", 150, 0.0031)]
    held_out = [_line("H1", 200, 0.0026), _line("H2", 150, 0.0008)]  # H2 never reaches EOL
    out = evaluate_held_out(held_out, training, _TINY)
    assert fake_train.calls == [(["T1", "T2"], 0)]
    assert out["protocol"] == "held_out" and list(out["cells"]) == ["H1", "H2"]
    assert out["n_cells_in_mean"] == 1 and "H2" in out["excluded"]
    assert out["mean"]["model"]["rul_rel_error_at_50pct"] == out["cells"]["H1"]["model"]["rul_rel_error_at_50pct"]
    json.dumps(out)
    with pytest.raises(ValueError, match=r"Expected unique cell ids, got \['T1'\]"):
        evaluate_held_out([training[0]], training, _TINY)


# ---------------------------------------------------------------- seeds


def _mean_with(**values: float | None) -> dict[str, dict[str, float | None]]:
    mean: dict[str, dict[str, float | None]] = {m: dict.fromkeys(METRICS) for m in METHODS}
    for key, value in values.items():
        method, metric = key.split("__")
        mean[method][metric] = value
    return mean


def test_seeds_aggregate_mean_and_sample_sd() -> None:
    """over_seeds holds the mean and the sample sd (ddof 1) of each mean metric over seeds,
    0 for a single value, None without any; cells and mean are the first seed's; each
    dataset gets its own over_seeds."""
    per_seed = {
        4: _mean_with(model__rul_rel_error_at_25pct=0.1, fade_curve__capacity_rmse_pct_nominal=2.0),
        5: _mean_with(model__rul_rel_error_at_25pct=0.3, fade_curve__capacity_rmse_pct_nominal=2.0),
        6: _mean_with(model__rul_rel_error_at_25pct=0.8, last_slope__capacity_rmse_pct_nominal=1.0),
    }

    def run(seed: int) -> dict[str, Any]:
        mean = per_seed[seed]
        return {"cells": {"seed": seed}, "mean": mean, "datasets": {"x": {"mean": mean}}}

    out = evaluate_seeds(run, [4, 5, 6])
    over = out["over_seeds"]
    assert out["cells"] == {"seed": 4} and out["cells_and_mean_from_seed"] == 4
    assert over["seeds"] == [4, 5, 6] and out["seeds"] == [4, 5, 6]
    assert over["mean"]["model"]["rul_rel_error_at_25pct"] == pytest.approx(0.4)
    assert over["sd"]["model"]["rul_rel_error_at_25pct"] == pytest.approx(np.sqrt(0.13))
    assert over["sd"]["fade_curve"]["capacity_rmse_pct_nominal"] == 0.0
    assert over["sd"]["last_slope"]["capacity_rmse_pct_nominal"] == 0.0  # one seed has it
    assert over["mean"]["mean_lifetime"]["rul_rel_error_at_25pct"] is None
    assert over["sd"]["mean_lifetime"]["rul_rel_error_at_25pct"] is None
    assert over["best_baseline"]["capacity_rmse_pct_nominal"] == {
        "method": "last_slope",
        "value": 1.0,
    }
    assert out["datasets"]["x"]["over_seeds"]["mean"] == over["mean"]
    single = evaluate_seeds(run, [5])["over_seeds"]
    assert single["sd"]["model"]["rul_rel_error_at_25pct"] == 0.0
    with pytest.raises(ValueError, match="Expected one or more distinct seeds"):
        evaluate_seeds(run, [4, 4])


def test_evaluation_runs_once_per_seed(fake_train: _FakeTrainer) -> None:
    """seeds=[3, 5] trains every fold with each seed; the top level is seed 3's."""
    fake_train.rul = lambda seed: (10.0, 20.0 + seed, 40.0)
    out = evaluate_histories(_hand_case(), _TINY, seeds=[3, 5])
    assert [s for _, s in fake_train.calls] == [3, 5]
    assert out["seed"] == 3 and out["cells_and_mean_from_seed"] == 3
    errors = [abs(27 + 20 + s - 55) / 55 for s in (3, 5)]
    assert out["mean"]["model"]["rul_rel_error_at_50pct"] == pytest.approx(errors[0])
    over = out["over_seeds"]
    assert over["mean"]["model"]["rul_rel_error_at_50pct"] == pytest.approx(np.mean(errors))
    assert over["sd"]["model"]["rul_rel_error_at_50pct"] == pytest.approx(np.std(errors, ddof=1))
    assert over["sd"]["fade_curve"]["rul_rel_error_at_50pct"] == 0.0


def test_model_hook_sees_the_first_seeds_models_only(fake_train: _FakeTrainer) -> None:
    """on_model (used for plots) is called once per scored cell with the model that forecast
    it and its training cells, for the first seed only."""
    seen: list[tuple[str, object, list[str]]] = []
    evaluate_histories(
        _hand_case(),
        _TINY,
        seeds=[0, 1],
        on_model=lambda cell, model, training: seen.append(
            (cell.cell_id, model, [h.cell_id for h in training])
        ),
    )
    assert len(fake_train.models) == 2
    assert seen == [("T", fake_train.models[0], ["U"])]


# ---------------------------------------------------------------- CLI


def _invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(models_app, ["eval", *args])
    # Error boxes wrap long lines: compare with the box and line breaks taken out.
    flat = " ".join(result.output.replace("│", " ").split())
    return result.exit_code, flat, result.stdout


@pytest.mark.parametrize(
    ("args", "option", "detail"),
    [
        (["--eol-fraction", "1.5"], "--eol-fraction", "got 1.5"),
        (["--eol-fraction", "0"], "--eol-fraction", "got 0.0"),
        (["--eol-basis", "rated"], "--eol-basis", "'rated'"),
        (["--folds", "1"], "--folds", "got 1"),
        (["--seeds", "2", "--seed", "1"], "--seeds", "--seed 1"),
        (["--seeds", "0"], "--seeds", "got 0"),
        (["--only", "C1,ZZ9,ZZ8"], "--only", "missing ['ZZ8', 'ZZ9']"),
        (["--only", "C1"], "--only", "at least 2 cells"),
        (["--leave-dataset-out"], "--cells", "subdirectories"),
        (["--max-train-cells", "0"], "--max-train-cells", "got 0"),
        (["--train-steps", "0"], "--train-steps", "got 0"),
        (["--plot-cells", "C1"], "--plot-cells", "needs --plot DIR"),
    ],
)
def test_cli_rejects_bad_options_naming_them(
    tmp_path: Path, fake_train: _FakeTrainer, args: list[str], option: str, detail: str
) -> None:
    """A bad value exits with a usage error naming the option and the value, before training."""
    _write_cell(tmp_path, "C1", 60, 0.006, 1)
    _write_cell(tmp_path, "C2", 60, 0.007, 2)
    code, output, _ = _invoke("--cells", str(tmp_path), *args)
    assert code == 2, output
    assert f"Invalid value for '{option}'" in output
    assert detail in output
    assert fake_train.calls == []


def test_cli_prints_one_json_line_and_plots(tmp_path: Path, fake_train: _FakeTrainer) -> None:
    """--folds 2 --seeds 2 --train-steps 3 --eol-basis initial: the last stdout line is the
    result (k-fold, seeds 0 and 1, the basis), training used 3 steps, plots are written for
    the first seed's scored cells."""
    cells = tmp_path / "cells"
    cells.mkdir()
    for i, (cell, rate) in enumerate((("C1", 0.006), ("C2", 0.007), ("C3", 0.005))):
        _write_cell(cells, cell, 60, rate, i)
    args = ["--cells", str(cells), "--folds", "2", "--seeds", "2", "--train-steps", "3"]
    args += ["--eol-basis", "initial", "--eol-fraction", "0.8", "--plot", str(tmp_path / "png")]
    code, output, stdout = _invoke(*args)
    assert code == 0, output
    parsed = json.loads(stdout.strip().splitlines()[-1])
    assert parsed["protocol"] == "k_fold_cells" and parsed["folds"] == 2
    assert parsed["seeds"] == [0, 1] and parsed["over_seeds"]["seeds"] == [0, 1]
    assert parsed["eval_params"]["eol_basis"] == "initial"
    assert parsed["eval_params"]["eol_fraction"] == 0.8
    assert set(parsed["cells"]) == {"C1", "C2", "C3"} and list(parsed["mean"]) == list(METHODS)
    assert fake_train.steps == [3] * 4 and [s for _, s in fake_train.calls] == [0, 0, 1, 1]
    pngs = sorted(p.name for p in (tmp_path / "png").iterdir())
    assert pngs == [f"degradation_forecast_C{i}.png" for i in (1, 2, 3)]
    assert "fold 1/2: training on" in output  # progress, on stderr


def test_cli_leave_dataset_out_with_only(tmp_path: Path, fake_train: _FakeTrainer) -> None:
    """--leave-dataset-out reads each subdirectory as a dataset; --only keeps the asked cells
    and drops a dataset left without any."""
    for name, cells in (("one", ("A1", "A2")), ("two", ("B1",)), ("three", ("Z1",))):
        (tmp_path / name).mkdir()
        for i, cell in enumerate(cells):
            _write_cell(tmp_path / name, cell, 60, 0.006 + 0.001 * i, i)
    code, output, stdout = _invoke(
        "--cells", str(tmp_path), "--leave-dataset-out", "--only", "A1,B1", "--seed", "7"
    )
    assert code == 0, output
    parsed = json.loads(stdout.strip().splitlines()[-1])
    assert parsed["protocol"] == "leave_one_dataset_out" and parsed["seed"] == 7
    assert list(parsed["datasets"]) == ["one", "two"]
    assert fake_train.calls == [(["B1"], 7), (["A1"], 7)]

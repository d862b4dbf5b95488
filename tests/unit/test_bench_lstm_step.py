"""Tests for ``bms bench lstm-step`` at a few hundred twins: it runs on the CPU without a GPU,
checks its options and prints one JSON object as its last line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from bms.bench.lstm_step import LstmStepBenchParams, fleet_step_inputs
from bms.cli import app
from models.degradation_lstm import DegradationLSTM, DegradationParams


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved, seeded, untrained degradation model (training is the slow part, not the subject)."""
    directory = tmp_path_factory.mktemp("degradation")
    DegradationLSTM(DegradationParams(), seed=0).save(directory)
    return directory


def test_bench_prints_timings_and_bf16_error_as_json(model_dir: Path) -> None:
    """Two twin counts on the CPU: a timing row per count and dtype, an accuracy row per count,
    the last line one JSON object."""
    result = CliRunner().invoke(app, [
        "bench", "lstm-step", "--twins", "300,500", "--repeats", "2", "--warmup", "0",
        "--accuracy-twins", "100", "--chain-steps", "3", "--model-dir", str(model_dir),
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["benchmark"] == "lstm_step" and out["cpu_threads"] == 1
    assert out["model"] == {
        "hidden_size": 32,
        "n_inputs": 6,
        "source": str(model_dir),
        "train_s": out["model"]["train_s"],
    }
    rows = {(r["twins"], r["dtype"]): r for r in out["runs"]}
    assert set(rows) == {(300, "float32"), (300, "bfloat16"), (500, "float32"), (500, "bfloat16")}
    for r in rows.values():
        assert r["device"].startswith("cpu ")
        assert 0 < r["cell_ms"]["min"] <= r["cell_ms"]["median"] <= r["cell_ms"]["max"]
        assert 0 < r["step_ms"]["min"] <= r["step_ms"]["median"] <= r["step_ms"]["max"]
    assert [(a["twins"], a["dtype"]) for a in out["accuracy"]] == [
        (300, "bfloat16"),
        (500, "bfloat16"),
    ]
    for a in out["accuracy"]:
        assert 0 < a["h"]["max_abs"] < 0.05 and 0 < a["c"]["mean_abs"] <= a["c"]["max_abs"] < 0.1
        assert a["rul_twins"] == 100 and set(a["rul"]) == {
            f"rul{t}_{q}" for t in (70, 80) for q in ("p10", "p50", "p90")
        }
        assert a["chained"]["steps"] == 3


def test_bad_options_are_rejected_with_expected_and_got(model_dir: Path) -> None:
    """A malformed twin list or an unknown dtype exits 2 with a message naming what arrived."""
    runner = CliRunner()
    bad = runner.invoke(app, ["bench", "lstm-step", "--twins", "1e6"])
    assert bad.exit_code == 2 and "got '1e6'" in bad.output
    bad = runner.invoke(
        app,
        [
            "bench",
            "lstm-step",
            "--twins",
            "10",
            "--dtypes",
            "float16",
            "--model-dir",
            str(model_dir),
        ],
    )
    assert bad.exit_code == 2 and "got ['float16']" in bad.output
    with pytest.raises(
        ValueError, match=r"Expected devices among \['cpu', 'cuda'\], got \['tpu'\]"
    ):
        LstmStepBenchParams(devices=("tpu",))


def test_inputs_are_seeded() -> None:
    """The same seed gives the same step inputs, so float32 and bfloat16 see the same twins."""
    a = fleet_step_inputs(50, np.random.default_rng(1))
    b = fleet_step_inputs(50, np.random.default_rng(1))
    np.testing.assert_array_equal(a[0], b[0])
    assert a[0].shape == (50, 6) and np.isfinite(a[0]).all()

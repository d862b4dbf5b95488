"""Population stability index of live features against a training reference."""

from __future__ import annotations

import json
import math
import threading

import numpy as np
import pytest

from models.drift import (
    EPSILON,
    DriftLevel,
    DriftMonitor,
    DriftReference,
    drift_level,
    psi,
)

NAMES = ("cell_temp_c", "pack_voltage_v")


@pytest.fixture(scope="module")
def training() -> np.ndarray:
    """5,000 rows of two independent normal features (seed 0)."""
    rng = np.random.default_rng(0)
    return np.column_stack([rng.normal(25.0, 5.0, 5_000), rng.normal(400.0, 10.0, 5_000)])


@pytest.fixture(scope="module")
def reference(training: np.ndarray) -> DriftReference:
    """Decile bins of :func:`training`."""
    return DriftReference.from_sample(training, NAMES)


def test_reference_has_decile_bins(reference: DriftReference) -> None:
    """Ten quantile bins per continuous feature (9 inner edges), ~10 % each, no NaN share."""
    for edges, expected in zip(reference.edges, reference.expected, strict=True):
        assert len(edges) == 9
        assert np.allclose(expected[:-1], 0.1, atol=1e-3)
        assert expected[-1] == 0.0
    assert reference.n_samples == 5_000


def test_same_distribution_gives_small_psi(reference: DriftReference) -> None:
    """A fresh sample of the training distribution stays well inside the stable band."""
    rng = np.random.default_rng(1)
    live = np.column_stack([rng.normal(25.0, 5.0, 2_000), rng.normal(400.0, 10.0, 2_000)])
    values = psi(reference, live)
    assert set(values) == set(NAMES)
    assert all(v < 0.02 for v in values.values()), values
    assert all(drift_level(v) is DriftLevel.STABLE for v in values.values())


def test_shifted_feature_raises_an_alert(reference: DriftReference) -> None:
    """Shifting temperature by one standard deviation alerts on it alone, as major drift."""
    rng = np.random.default_rng(2)
    live = np.column_stack([rng.normal(30.0, 5.0, 2_000), rng.normal(400.0, 10.0, 2_000)])
    monitor = DriftMonitor(reference, threshold=0.2, min_samples=500)
    monitor.update(live)
    alerts = monitor.alerts()
    assert [a.feature for a in alerts] == ["cell_temp_c"]
    assert alerts[0].psi > 0.25 and alerts[0].level is DriftLevel.MAJOR
    assert monitor.psi()["pack_voltage_v"] < 0.05


def test_psi_matches_the_formula_with_epsilon_for_empty_bins() -> None:
    """PSI is sum (a - e) ln(a / e), with empty bins floored at EPSILON on both sides."""
    reference = DriftReference(("x",), ((0.5,),), ((0.5, 0.5, 0.0),), 2)
    # Live: all in bin 0 (x <= 0.5); bin 1 and the NaN bin are empty.
    value = psi(reference, np.array([[0.0], [0.1], [0.2], [0.3]]))
    expected = (1.0 - 0.5) * math.log(1.0 / 0.5) + (EPSILON - 0.5) * math.log(EPSILON / 0.5)
    assert value["x"] == pytest.approx(expected)


def test_constant_feature_detects_moves_either_way() -> None:
    """A constant training feature gets bins x<c, x==c, x>c: equal live values give PSI 0,
    values below or above c give major drift."""
    ref = DriftReference.from_sample(np.full((100, 1), 3.7), ["soc_limit"])
    assert ref.expected[0] == (0.0, 1.0, 0.0, 0.0)
    assert psi(ref, np.full((50, 1), 3.7))["soc_limit"] == pytest.approx(0.0)
    assert psi(ref, np.full((50, 1), 3.6))["soc_limit"] > 0.25
    assert psi(ref, np.full((50, 1), 3.8))["soc_limit"] > 0.25


def test_nan_counts_in_its_own_bin() -> None:
    """NaN is a bin of its own: training NaNs set its share, a live rise in NaNs is drift,
    and NaNs do not move the finite bins' edges."""
    rng = np.random.default_rng(3)
    column = rng.normal(0.0, 1.0, 1_000)
    column[:100] = np.nan  # 10 % missing in training
    ref = DriftReference.from_sample(column[:, None], ["ir_mohm"])
    assert ref.expected[0][-1] == pytest.approx(0.1)
    assert sum(ref.expected[0][:-1]) == pytest.approx(0.9)
    assert all(math.isfinite(edge) for edge in ref.edges[0])

    same = rng.normal(0.0, 1.0, 1_000)
    same[:100] = np.nan
    assert psi(ref, same[:, None])["ir_mohm"] < 0.05

    half_missing = rng.normal(0.0, 1.0, 1_000)
    half_missing[:500] = np.nan
    assert psi(ref, half_missing[:, None])["ir_mohm"] > 0.25


def test_all_nan_training_feature_flags_any_finite_value() -> None:
    """A feature that was always missing has one empty finite bin; live values there alert."""
    ref = DriftReference.from_sample(np.full((10, 1), np.nan), ["gps_fix"])
    assert ref.edges == ((),) and ref.expected == ((0.0, 1.0),)
    assert psi(ref, np.full((10, 1), np.nan))["gps_fix"] == pytest.approx(0.0)
    assert psi(ref, np.ones((10, 1)))["gps_fix"] > 0.25


def test_json_round_trip_gives_an_equal_reference(reference: DriftReference) -> None:
    """to_dict survives json.dumps/loads (no NaN) and from_dict rebuilds an equal reference."""
    text = json.dumps(reference.to_dict(), allow_nan=False)
    assert DriftReference.from_dict(json.loads(text)) == reference


def test_from_dict_rejects_malformed_references() -> None:
    """Missing keys, unsorted edges or proportions that do not sum to 1 are refused."""
    good = {
        "names": ["x"],
        "edges": [[0.0, 1.0]],
        "expected": [[0.2, 0.3, 0.5, 0.0]],
        "n_samples": 4,
    }
    DriftReference.from_dict(good)
    with pytest.raises(ValueError, match="keys"):
        DriftReference.from_dict({"names": ["x"]})
    with pytest.raises(ValueError, match="strictly increasing"):
        DriftReference.from_dict({**good, "edges": [[1.0, 0.0]]})
    with pytest.raises(ValueError, match="summing to 1"):
        DriftReference.from_dict({**good, "expected": [[0.2, 0.3, 0.4, 0.0]]})


def test_monitor_window_is_bounded_and_forgets_old_rows(reference: DriftReference) -> None:
    """The monitor keeps only the last `window` rows: after a shifted burst, enough normal rows
    push it out and the alert clears."""
    rng = np.random.default_rng(4)
    monitor = DriftMonitor(reference, min_samples=100, window=1_000)
    monitor.update(np.column_stack([rng.normal(40.0, 5.0, 800), rng.normal(400.0, 10.0, 800)]))
    assert [a.feature for a in monitor.alerts()] == ["cell_temp_c"]
    for _ in range(5):  # batches of 300 wrap the ring several times
        monitor.update(np.column_stack([rng.normal(25.0, 5.0, 300), rng.normal(400.0, 10.0, 300)]))
    assert monitor.samples == 1_000
    assert monitor.alerts() == []
    assert monitor.psi()["cell_temp_c"] < 0.05


def test_monitor_counts_match_a_batch_psi() -> None:
    """Rows fed one by one and in odd batches give the same PSI as psi() on the last window."""
    rng = np.random.default_rng(5)
    ref = DriftReference.from_sample(rng.normal(size=(1_000, 2)), ["a", "b"])
    live = rng.normal(0.3, 1.2, size=(777, 2))
    monitor = DriftMonitor(ref, min_samples=10, window=250)
    for row in live[:13]:
        monitor.update(row)
    for start in range(13, 777, 91):
        monitor.update(live[start : start + 91])
    expected = psi(ref, live[-250:])
    assert monitor.psi() == pytest.approx(expected)


def test_monitor_waits_for_min_samples_and_rejects_bad_shapes(reference: DriftReference) -> None:
    """No alerts below min_samples, PSI refuses an empty window, wrong widths are named."""
    monitor = DriftMonitor(reference, min_samples=500)
    with pytest.raises(ValueError, match="call update"):
        monitor.psi()
    monitor.update(np.array([[90.0, 400.0]] * 10))  # wildly hot, but only 10 rows
    assert monitor.alerts() == []
    assert monitor.psi()["cell_temp_c"] > 0.25
    with pytest.raises(ValueError, match=r"shape \(n, 2\)"):
        monitor.update(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="min_samples <= window"):
        DriftMonitor(reference, min_samples=10, window=5)


def test_monitor_updates_from_several_threads_lose_no_rows() -> None:
    """Four threads updating at once leave the same counts as one pass over all their rows."""
    rng = np.random.default_rng(6)
    ref = DriftReference.from_sample(rng.normal(size=(1_000, 2)), ["a", "b"])
    parts = [rng.normal(0.5, 1.0, size=(400, 2)) for _ in range(4)]
    monitor = DriftMonitor(ref, min_samples=10, window=2_000)

    def feed(rows: np.ndarray) -> None:
        for start in range(0, len(rows), 7):
            monitor.update(rows[start : start + 7])

    threads = [threading.Thread(target=feed, args=(part,)) for part in parts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert monitor.samples == 1_600
    assert monitor.psi() == pytest.approx(psi(ref, np.concatenate(parts)))

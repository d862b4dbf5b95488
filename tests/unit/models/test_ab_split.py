"""A/B traffic split by battery hash, and the per-version metrics of a split."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from contracts.model_registry import ServingConfig
from models.ab_split import (
    VersionMetrics,
    candidate_mask,
    route_versions,
    split_position,
)

# Positions worked out once, by hand, from the documented formula:
# blake2b(salt + "\x1f" + id, digest_size=8) read big-endian, divided by 2**64.
PINNED = [
    ("health_xgb/v4", "bat-000001", 0xC7E747918DC83F2F),
    ("health_xgb/v4", "bat-000002", 0x9DEB05330D48761D),
    ("demand_lstm/v2", "bat-000001", 0x203F01446C53726A),
]


@pytest.mark.parametrize(("salt", "battery_id", "digest"), PINNED)
def test_position_matches_pinned_digest(salt: str, battery_id: str, digest: int) -> None:
    """A battery's split position is the pinned blake2b digest over 2**64, on every run."""
    assert split_position(battery_id, salt) == digest / 2**64


def test_membership_of_pinned_ids_follows_the_threshold() -> None:
    """bat-000001 (u=0.781) and bat-000002 (u=0.617) join the candidate only above their u."""
    ids = ["bat-000001", "bat-000002"]
    assert candidate_mask(ids, 0.6, "health_xgb/v4").tolist() == [False, False]
    assert candidate_mask(ids, 0.7, "health_xgb/v4").tolist() == [False, True]
    assert candidate_mask(ids, 0.79, "health_xgb/v4").tolist() == [True, True]
    # The salt re-draws the fleet: under another experiment bat-000001 sits at u=0.126.
    assert candidate_mask(ids[:1], 0.2, "demand_lstm/v2").tolist() == [True]


def test_mask_is_the_same_in_another_process_with_another_hash_seed() -> None:
    """The split does not use Python's salted hash(): a fresh interpreter agrees exactly."""
    ids = [f"bat-{i:06d}" for i in range(200)]
    here = candidate_mask(ids, 0.3, "anomaly/v7")
    code = (
        "from models.ab_split import candidate_mask;"
        "ids=[f'bat-{i:06d}' for i in range(200)];"
        "print(''.join('1' if x else '0' for x in candidate_mask(ids, 0.3, 'anomaly/v7')))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "".join("1" if x else "0" for x in here)


def test_fraction_is_respected_on_ten_thousand_ids() -> None:
    """On 10k ids each fraction selects that share within 2 points (binomial sd ~0.5 %)."""
    ids = [f"bat-{i:06d}" for i in range(10_000)]
    for fraction in (0.05, 0.25, 0.5, 0.9):
        share = candidate_mask(ids, fraction, "health_xgb/v4").mean()
        assert abs(share - fraction) < 0.02, (fraction, share)


def test_raising_the_fraction_only_adds_batteries() -> None:
    """Ramping 10 % -> 30 % keeps every battery already on the candidate there."""
    ids = [f"bat-{i:06d}" for i in range(2_000)]
    small = candidate_mask(ids, 0.1, "priority_rf/v3")
    large = candidate_mask(ids, 0.3, "priority_rf/v3")
    assert np.all(large[small])
    assert large.sum() > small.sum()


def test_fraction_zero_selects_none_and_one_selects_all() -> None:
    """Fraction 0 routes no battery to the candidate, fraction 1 routes every battery."""
    ids = [f"bat-{i:06d}" for i in range(1_000)]
    assert not candidate_mask(ids, 0.0, "s").any()
    assert candidate_mask(ids, 1.0, "s").all()
    assert candidate_mask([], 0.5, "s").shape == (0,)


@pytest.mark.parametrize("fraction", [-0.1, 1.5, float("nan")])
def test_fraction_outside_unit_interval_is_rejected(fraction: float) -> None:
    """A fraction outside [0, 1] (or NaN) raises and quotes the value."""
    with pytest.raises(ValueError, match=r"fraction in \[0, 1\]"):
        candidate_mask(["bat-1"], fraction, "s")


def test_route_versions_follows_the_serving_config() -> None:
    """Without a split every battery gets production; with one, the masked ones the candidate."""
    ids = ["bat-000001", "bat-000002", "bat-000003"]
    plain = ServingConfig("health_xgb", 3, None, 0.0, 0.0, "ops")
    assert route_versions(ids, plain).tolist() == [3, 3, 3]
    split = ServingConfig("health_xgb", 3, 4, 0.7, 0.0, "ops")
    # Salt "health_xgb/v4": u = 0.781, 0.617, 0.643.
    assert route_versions(ids, split).tolist() == [3, 4, 4]


def test_version_metrics_accumulates_counts_means_and_errors() -> None:
    """Counts and means per version; MAE and RMSE only once feedback arrives."""
    metrics = VersionMetrics()
    metrics.record_predictions(3, [1.0, 2.0, 3.0])
    metrics.record_predictions(4, np.array([[10.0, 20.0]]))
    metrics.record_feedback(4, predictions=[10.0, 20.0], labels=[13.0, 16.0])
    assert metrics.versions() == [3, 4]
    assert metrics.to_dict() == {
        "3": {"predictions": 3, "mean_prediction": 2.0, "labelled": 0, "mae": None, "rmse": None},
        "4": {
            "predictions": 2,
            "mean_prediction": 15.0,
            "labelled": 2,
            "mae": 3.5,
            "rmse": pytest.approx(np.sqrt((9 + 16) / 2)),
        },
    }
    assert metrics.stats(99).predictions == 0 and metrics.stats(99).mae is None


def test_version_metrics_rejects_nan_and_mismatched_feedback() -> None:
    """Non-finite predictions and label arrays of another shape raise and record nothing."""
    metrics = VersionMetrics()
    with pytest.raises(ValueError, match="finite predictions"):
        metrics.record_predictions(1, [1.0, float("nan")])
    with pytest.raises(ValueError, match="one shape"):
        metrics.record_feedback(1, [1.0, 2.0], [1.0])
    assert metrics.to_dict() == {}


def test_version_metrics_records_from_several_threads_lose_nothing() -> None:
    """Four threads recording at once leave exact totals."""
    metrics = VersionMetrics()

    def record() -> None:
        for _ in range(500):
            metrics.record_predictions(1, [1.0, 3.0])
            metrics.record_feedback(1, [1.0], [2.0])

    threads = [threading.Thread(target=record) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stats = metrics.stats(1)
    assert (stats.predictions, stats.mean_prediction, stats.labelled, stats.mae) == (
        4_000,
        2.0,
        2_000,
        1.0,
    )

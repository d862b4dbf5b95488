"""Merging the requests of one model batch (:mod:`contracts.scoring`)."""

from __future__ import annotations

import numpy as np
import pytest

from contracts.scoring import DRIFT_ELIGIBLE, ScoreRequest, merge_arrays, mergeable_groups


def test_arrays_concatenate_in_order_and_missing_drift_flags_count_as_eligible() -> None:
    a = ScoreRequest(["a1", "a2"], {"features": np.ones((2, 3)), DRIFT_ELIGIBLE: np.array([False, True])})
    b = ScoreRequest(["b1"], {"features": np.zeros((1, 3))})  # e.g. the model job: no flags
    merged = merge_arrays([a, b])
    assert merged["features"].shape == (3, 3) and merged["features"][2].sum() == 0
    assert merged[DRIFT_ELIGIBLE].tolist() == [False, True, True]
    assert DRIFT_ELIGIBLE not in merge_arrays([b, b])


def test_requests_with_other_arrays_cannot_share_a_batch() -> None:
    a = ScoreRequest(["a"], {"features": np.ones((1, 3))})
    b = ScoreRequest(["b"], {"values": np.ones((1, 3))})
    with pytest.raises(ValueError, match="Expected every request of a batch to carry arrays"):
        merge_arrays([a, b])


def test_requests_with_other_row_widths_form_separate_groups() -> None:
    # A what-if run's shards (W=64) and the live fleet's (W=32) call one deployment together.
    w64 = ScoreRequest(["a"], {"values": np.ones((1, 64, 5)), DRIFT_ELIGIBLE: np.array([True])})
    w32 = ScoreRequest(["b", "c"], {"values": np.ones((2, 32, 5))})
    w64b = ScoreRequest(["d"], {"values": np.zeros((1, 64, 5))})
    groups = mergeable_groups([w64, w32, w64b])
    assert groups == [[0, 2], [1]]
    for g in groups:
        merge_arrays([[w64, w32, w64b][i] for i in g])  # each group concatenates
    assert mergeable_groups([w32, w32]) == [[0, 1]]

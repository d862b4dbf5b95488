"""What a caller sends a model deployment: one request of row-aligned arrays.

Twin shards (one request per model per scoring tick) and the model job build these; the
Serve deployments in :mod:`runtime.model_deployments` merge the requests that arrive
together into one model call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["DRIFT_ELIGIBLE", "ScoreRequest", "merge_arrays", "mergeable_groups"]

#: Optional boolean array of a request: which rows a model's drift monitor may count. Rows
#: of twins observed too briefly (minutes-old twins have counters near zero) are scored but
#: would make any fleet look drifted against training data that spans years. Absent: all.
DRIFT_ELIGIBLE = "drift_eligible"


@dataclass(frozen=True)
class ScoreRequest:
    """One caller's rows: ids (batteries or zones) and row-aligned arrays."""

    ids: list[str]
    arrays: dict[str, npt.NDArray[Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, a in self.arrays.items():
            if len(a) != len(self.ids):
                raise ValueError(
                    f"Expected array {name!r} to have one row per id ({len(self.ids)}), got {len(a)}."
                )


def _signature(r: ScoreRequest) -> tuple[tuple[str, tuple[int, ...]], ...]:
    return tuple(sorted((k, a.shape[1:]) for k, a in r.arrays.items() if k != DRIFT_ELIGIBLE))


def mergeable_groups(requests: list[ScoreRequest]) -> list[list[int]]:
    """Indices of the requests, grouped so that each group's arrays concatenate.

    Callers may legitimately differ in the width of their rows: shards configured with
    different ``window_samples`` (a rolling change of settings, or a what-if run beside the
    live fleet) send windows of different ``W`` to the same deployment in the same batch.
    Each group then becomes its own model call instead of failing the whole batch. Groups
    keep the order of their first request.
    """
    groups: dict[tuple[tuple[str, tuple[int, ...]], ...], list[int]] = {}
    for i, r in enumerate(requests):
        groups.setdefault(_signature(r), []).append(i)
    return list(groups.values())


def merge_arrays(requests: list[ScoreRequest]) -> dict[str, npt.NDArray[Any]]:
    """The requests' arrays, concatenated in order, for one model call.

    Every request must carry the same arrays, except :data:`DRIFT_ELIGIBLE`, which is True
    for the rows of a request that has none (the model job's rescoring, say).
    """
    keys = set(requests[0].arrays) - {DRIFT_ELIGIBLE}
    for r in requests[1:]:
        if set(r.arrays) - {DRIFT_ELIGIBLE} != keys:
            raise ValueError(
                f"Expected every request of a batch to carry arrays {sorted(keys)}, got "
                f"{sorted(set(r.arrays) - {DRIFT_ELIGIBLE})}."
            )
    merged = {k: np.concatenate([r.arrays[k] for r in requests]) for k in sorted(keys)}
    if any(DRIFT_ELIGIBLE in r.arrays for r in requests):
        merged[DRIFT_ELIGIBLE] = np.concatenate([
            np.asarray(r.arrays.get(DRIFT_ELIGIBLE, np.ones(len(r.ids), dtype=bool)), dtype=bool)
            for r in requests
        ])  # fmt: skip
    return merged

"""What a caller sends a model deployment: one request of row-aligned arrays.

Twin shards (one request per model per scoring tick) and the model job build these; the
Serve deployments in :mod:`runtime.model_deployments` merge the requests that arrive
together into one model call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy.typing as npt

__all__ = ["ScoreRequest"]


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

"""A/B splits of the fleet between a production model and a candidate, and their metrics.

A battery's place in a split is a pure function of its id and the experiment's salt::

    u(id) = int.from_bytes(blake2b(salt + "\\x1f" + id, digest_size=8), "big") / 2**64
    candidate  <=>  u(id) < fraction

so every replica and every process agrees, a battery always sees the same version while the
split runs, and raising the fraction only adds batteries to the candidate. The salt (use
:attr:`contracts.model_registry.ServingConfig.ab_salt`) keeps the split independent of the
shard placement, which hashes the bare battery id with the same function.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from contracts.model_registry import ServingConfig

__all__ = ["VersionMetrics", "VersionStats", "candidate_mask", "route_versions", "split_position"]

_SEPARATOR = "\x1f"  # ASCII unit separator: not expected inside salts or battery ids
_SCALE = float(2**64)


def split_position(battery_id: str, salt: str) -> float:
    """Where ``battery_id`` falls in ``[0, 1)`` for the split salted with ``salt``."""
    key = f"{salt}{_SEPARATOR}{battery_id}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") / _SCALE


def candidate_mask(battery_ids: Sequence[str], fraction: float, salt: str) -> NDArray[np.bool_]:
    """Which batteries the candidate answers for: ``True`` where ``u(id) < fraction``.

    Parameters
    ----------
    battery_ids
        The batteries of one request batch.
    fraction
        Share of the fleet on the candidate, in ``[0, 1]``: 0 selects none, 1 selects all.
    salt
        One per experiment, e.g. ``"health_xgb/v4"``.

    Returns
    -------
    numpy.ndarray of bool
        One flag per id, in order.
    """
    if not 0.0 <= fraction <= 1.0:  # NaN fails this too
        raise ValueError(f"Expected a candidate fraction in [0, 1], got {fraction!r}.")
    positions = np.fromiter(
        (split_position(battery_id, salt) for battery_id in battery_ids),
        dtype=np.float64,
        count=len(battery_ids),
    )
    mask: NDArray[np.bool_] = positions < fraction
    return mask


def route_versions(battery_ids: Sequence[str], serving: ServingConfig) -> NDArray[np.int64]:
    """The model version that answers for each battery under ``serving``.

    Without a running split every battery gets the production version.
    """
    versions = np.full(len(battery_ids), serving.production_version, dtype=np.int64)
    if serving.candidate_version is not None:
        mask = candidate_mask(battery_ids, serving.candidate_fraction, serving.ab_salt)
        versions[mask] = serving.candidate_version
    return versions


@dataclass(frozen=True)
class VersionStats:
    """What one model version has answered so far.

    Parameters
    ----------
    predictions
        Number of predicted values.
    mean_prediction
        Their mean, or ``None`` before the first.
    labelled
        Number of predictions whose true value has arrived.
    mae, rmse
        Mean absolute and root-mean-square error over the labelled ones, or ``None`` before
        the first label.
    """

    predictions: int
    mean_prediction: float | None
    labelled: int
    mae: float | None
    rmse: float | None


class _Sums:
    # Running sums: bounded memory however long the split runs.
    __slots__ = ("abs_error", "labelled", "predictions", "sq_error", "total")

    def __init__(self) -> None:
        self.predictions = 0
        self.total = 0.0
        self.labelled = 0
        self.abs_error = 0.0
        self.sq_error = 0.0

    def copy(self) -> _Sums:
        other = _Sums()
        other.predictions, other.total = self.predictions, self.total
        other.labelled, other.abs_error, other.sq_error = (
            self.labelled,
            self.abs_error,
            self.sq_error,
        )
        return other


def _finite(values: ArrayLike, what: str) -> NDArray[np.float64]:
    array = np.asarray(values, dtype=np.float64).ravel()
    bad = int(np.count_nonzero(~np.isfinite(array)))
    if bad:
        raise ValueError(f"Expected finite {what}, got {bad} NaN or infinite of {array.size}.")
    return array


class VersionMetrics:
    """Per-version prediction counts and, once feedback arrives, errors, for an A/B split.

    Vector-valued predictions (a demand forecast horizon, say) count one per value.
    Thread-safe: a Serve replica records from the worker thread that runs the model while its
    status endpoint reads on the event loop.

    Examples
    --------
    >>> m = VersionMetrics()
    >>> m.record_predictions(3, [0.9, 0.8])
    >>> m.record_feedback(3, predictions=[0.9], labels=[1.0])
    >>> m.to_dict()["3"]["predictions"], round(m.to_dict()["3"]["mae"], 6)
    (2, 0.1)
    """

    def __init__(self) -> None:
        self._sums: dict[int, _Sums] = {}
        self._lock = threading.Lock()

    def record_predictions(self, version: int, predictions: ArrayLike) -> None:
        """Count the values ``version`` predicted (any shape)."""
        values = _finite(predictions, "predictions")
        total = float(values.sum())
        with self._lock:
            sums = self._sums.setdefault(version, _Sums())
            sums.predictions += values.size
            sums.total += total

    def record_feedback(self, version: int, predictions: ArrayLike, labels: ArrayLike) -> None:
        """Add the errors of earlier predictions of ``version`` whose true values arrived.

        ``predictions`` and ``labels`` pair up element by element and must have one shape.
        """
        predicted = np.asarray(predictions, dtype=np.float64)
        actual = np.asarray(labels, dtype=np.float64)
        if predicted.shape != actual.shape:
            raise ValueError(
                f"Expected predictions and labels of one shape, got {predicted.shape} and "
                f"{actual.shape}."
            )
        error = _finite(predicted, "predictions") - _finite(actual, "labels")
        abs_error, sq_error = float(np.abs(error).sum()), float(np.square(error).sum())
        with self._lock:
            sums = self._sums.setdefault(version, _Sums())
            sums.labelled += error.size
            sums.abs_error += abs_error
            sums.sq_error += sq_error

    def versions(self) -> list[int]:
        """Every version seen so far, ascending."""
        with self._lock:
            return sorted(self._sums)

    def stats(self, version: int) -> VersionStats:
        """The summary of ``version``; all counts zero for a version never seen."""
        with self._lock:
            sums = self._sums.get(version, _Sums()).copy()
        return VersionStats(
            predictions=sums.predictions,
            mean_prediction=sums.total / sums.predictions if sums.predictions else None,
            labelled=sums.labelled,
            mae=sums.abs_error / sums.labelled if sums.labelled else None,
            rmse=math.sqrt(sums.sq_error / sums.labelled) if sums.labelled else None,
        )

    def to_dict(self) -> dict[str, dict[str, float | int | None]]:
        """JSON-ready summaries keyed by version as a string (JSON object keys are strings)."""
        out: dict[str, dict[str, float | int | None]] = {}
        for version in self.versions():
            stats = self.stats(version)
            out[str(version)] = {
                "predictions": stats.predictions,
                "mean_prediction": stats.mean_prediction,
                "labelled": stats.labelled,
                "mae": stats.mae,
                "rmse": stats.rmse,
            }
        return out

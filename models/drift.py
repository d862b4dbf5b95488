"""Feature drift: the population stability index (PSI) of live features against training.

For one feature with bins ``i``, training proportions ``e_i`` and live proportions ``a_i``::

    PSI = sum_i (a_i - e_i) * ln(a_i / e_i)

Bins (per feature, from the training sample, see :meth:`DriftReference.from_sample`):

* **Quantile bins.** Inner edges are the training deciles (``bins=10``), de-duplicated, and
  bins are right-closed: ``(-inf, q1], (q1, q2], ..., (qk, inf)``. Live values outside the
  training range fall in the outer bins. Ties (a discrete feature) merge bins, so a feature
  may end up with fewer than ``bins``.
* **Constant features** (one distinct finite value ``c``) get the three bins ``x < c``,
  ``x == c`` and ``x > c``, so a move either way is drift.
* **Missing values.** NaN gets a bin of its own after the finite ones; a sensor that starts
  (or stops) reporting NaN shows up as drift of that feature. Infinite values count in the
  outer bins. A feature that was all NaN in training has no finite bins to speak of: any
  finite live value lands in its one finite bin, of training share 0.
* **Empty bins.** Proportions below ``EPSILON = 1e-4`` are raised to it before the formula,
  so an empty bin contributes a large but finite term (a bin that holds 10 % live and
  nothing in training adds about 0.69), and a bin empty on both sides contributes 0.

Thresholds (the usual credit-scoring bands): PSI < 0.1 stable, 0.1 to 0.25 moderate, above
0.25 major (:func:`drift_level`). :class:`DriftMonitor` alerts above 0.2 by default, inside
the moderate band, so a shift is flagged before it becomes major.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "EPSILON",
    "MAJOR_PSI",
    "MODERATE_PSI",
    "DriftAlert",
    "DriftLevel",
    "DriftMonitor",
    "DriftReference",
    "drift_level",
    "psi",
]

EPSILON = 1e-4
"""Floor of a bin's proportion in the PSI formula (see the module docstring)."""

MODERATE_PSI = 0.1
"""PSI from which drift is moderate."""

MAJOR_PSI = 0.25
"""PSI above which drift is major."""


class DriftLevel(StrEnum):
    """How far a feature has drifted, by the conventional PSI bands."""

    STABLE = "stable"
    MODERATE = "moderate"
    MAJOR = "major"


def drift_level(value: float) -> DriftLevel:
    """The band of a PSI value: ``< 0.1`` stable, ``0.1 .. 0.25`` moderate, ``> 0.25`` major."""
    if value < MODERATE_PSI:
        return DriftLevel.STABLE
    if value <= MAJOR_PSI:
        return DriftLevel.MODERATE
    return DriftLevel.MAJOR


def _as_matrix(features: ArrayLike, width: int, names: Sequence[str]) -> NDArray[np.float64]:
    matrix = np.asarray(features, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[1] != width:
        raise ValueError(
            f"Expected features of shape (n, {width}) in the order {list(names)}, got shape "
            f"{matrix.shape}."
        )
    return matrix


def _edges_of(column: NDArray[np.float64], bins: int) -> NDArray[np.float64]:
    finite = column[np.isfinite(column)]
    if finite.size == 0:
        return np.empty(0)
    low, high = float(finite.min()), float(finite.max())
    if low == high:
        # (-inf, c⁻], (c⁻, c], (c, inf) with c⁻ the float just below c: x < c, x == c, x > c.
        return np.array([np.nextafter(low, -np.inf), low])
    quantiles = np.quantile(finite, np.linspace(0.0, 1.0, bins + 1)[1:-1])
    edges: NDArray[np.float64] = np.unique(quantiles)
    return edges


def _bin_indices(edges: NDArray[np.float64], column: NDArray[np.float64]) -> NDArray[np.intp]:
    # side="left" gives i with edges[i-1] < x <= edges[i]: right-closed bins. NaN would sort
    # last; it gets the bin after the finite ones instead.
    indices = np.searchsorted(edges, column, side="left")
    indices[np.isnan(column)] = edges.size + 1
    return indices


def _psi_terms(expected: NDArray[np.float64], actual: NDArray[np.float64]) -> float:
    e = np.maximum(expected, EPSILON)
    a = np.maximum(actual, EPSILON)
    return float(np.sum((a - e) * np.log(a / e)))


@dataclass(frozen=True)
class DriftReference:
    """Training-time bins and proportions of each feature, to compare live data against.

    Build with :meth:`from_sample`; store with :meth:`to_dict` (JSON-ready) next to the
    model's artifacts, load with :meth:`from_dict`.

    Parameters
    ----------
    names
        Feature names, in column order.
    edges
        Per feature, the strictly increasing inner bin edges; bins are right-closed.
    expected
        Per feature, the training proportion of each bin: ``len(edges) + 1`` finite bins,
        then the NaN bin; they sum to 1.
    n_samples
        Rows of the training sample.
    """

    names: tuple[str, ...]
    edges: tuple[tuple[float, ...], ...]
    expected: tuple[tuple[float, ...], ...]
    n_samples: int

    def __post_init__(self) -> None:
        if not self.names or len(set(self.names)) != len(self.names):
            raise ValueError(f"Expected distinct feature names, got {list(self.names)}.")
        if len(self.edges) != len(self.names) or len(self.expected) != len(self.names):
            raise ValueError(
                f"Expected edges and proportions for each of {len(self.names)} features, got "
                f"{len(self.edges)} and {len(self.expected)}."
            )
        if self.n_samples < 1:
            raise ValueError(f"Expected n_samples >= 1, got {self.n_samples}.")
        for name, edges, expected in zip(self.names, self.edges, self.expected, strict=True):
            edge_array = np.asarray(edges, dtype=np.float64)
            if not np.all(np.isfinite(edge_array)) or np.any(np.diff(edge_array) <= 0):
                raise ValueError(
                    f"Expected finite, strictly increasing bin edges for {name!r}, got "
                    f"{list(edges)}."
                )
            if len(expected) != len(edges) + 2:
                raise ValueError(
                    f"Expected {len(edges) + 2} proportions for {name!r} ({len(edges) + 1} "
                    f"finite bins and the NaN bin), got {len(expected)}."
                )
            shares = np.asarray(expected, dtype=np.float64)
            if np.any(~np.isfinite(shares)) or np.any(shares < 0) or abs(shares.sum() - 1) > 1e-6:
                raise ValueError(
                    f"Expected non-negative proportions summing to 1 for {name!r}, got "
                    f"{list(expected)}."
                )

    @classmethod
    def from_sample(
        cls, features: ArrayLike, names: Sequence[str], bins: int = 10
    ) -> DriftReference:
        """Bin each feature of a training sample at its quantiles (see the module docstring).

        Parameters
        ----------
        features
            Shape ``(n, k)``, one column per name; NaN marks a missing value.
        names
            The ``k`` feature names.
        bins
            Quantile bins per feature before ties merge them; at least 2.
        """
        if bins < 2:
            raise ValueError(f"Expected at least 2 bins, got {bins}.")
        names = tuple(names)
        matrix = _as_matrix(features, len(names), names)
        n = matrix.shape[0]
        if n == 0:
            raise ValueError("Expected a training sample with at least one row, got none.")
        all_edges: list[tuple[float, ...]] = []
        all_expected: list[tuple[float, ...]] = []
        for j in range(len(names)):
            column = matrix[:, j]
            edges = _edges_of(column, bins)
            counts = np.bincount(_bin_indices(edges, column), minlength=edges.size + 2)
            all_edges.append(tuple(float(x) for x in edges))
            all_expected.append(tuple(float(x) for x in counts / n))
        return cls(names, tuple(all_edges), tuple(all_expected), n)

    def bin_counts(self, features: ArrayLike) -> list[NDArray[np.int64]]:
        """Per feature, how many rows of ``features`` (shape ``(n, k)``) fall in each bin."""
        matrix = _as_matrix(features, len(self.names), self.names)
        return [
            np.bincount(
                _bin_indices(np.asarray(edges, dtype=np.float64), matrix[:, j]),
                minlength=len(edges) + 2,
            ).astype(np.int64)
            for j, edges in enumerate(self.edges)
        ]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; :meth:`from_dict` reads it back to an equal reference."""
        return {
            "names": list(self.names),
            "edges": [list(edges) for edges in self.edges],
            "expected": [list(shares) for shares in self.expected],
            "n_samples": self.n_samples,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DriftReference:
        """Read a reference written by :meth:`to_dict`; ``ValueError`` if malformed."""
        expected_keys = {"names", "edges", "expected", "n_samples"}
        if set(data) != expected_keys:
            raise ValueError(
                f"Expected a drift reference with keys {sorted(expected_keys)}, got {sorted(data)}."
            )
        return cls(
            names=tuple(str(name) for name in data["names"]),
            edges=tuple(tuple(float(x) for x in edges) for edges in data["edges"]),
            expected=tuple(tuple(float(x) for x in shares) for shares in data["expected"]),
            n_samples=int(data["n_samples"]),
        )


def psi(reference: DriftReference, sample: ArrayLike) -> dict[str, float]:
    """PSI of each feature of ``sample`` (shape ``(m, k)``, ``m >= 1``) against ``reference``."""
    counts = reference.bin_counts(sample)
    rows = int(counts[0].sum())
    if rows == 0:
        raise ValueError("Expected a sample with at least one row to compare, got none.")
    return {
        name: _psi_terms(np.asarray(expected), count / rows)
        for name, expected, count in zip(reference.names, reference.expected, counts, strict=True)
    }


@dataclass(frozen=True)
class DriftAlert:
    """One feature whose PSI is above the monitor's threshold."""

    feature: str
    psi: float
    level: DriftLevel


class DriftMonitor:
    """PSI of the most recent live feature rows against a training reference.

    Keeps the bin of each feature for the last ``window`` rows in a ring buffer (memory
    ``window * k`` small integers, whatever the traffic) together with running bin counts,
    so :meth:`psi` costs ``O(k * bins)`` however large the window. Thread-safe: a Serve
    replica updates it from the worker thread that runs the model while its status endpoint
    reads it on the event loop.

    Parameters
    ----------
    reference
        The training bins.
    threshold
        PSI above which a feature is reported by :meth:`alerts`; default 0.2 (inside the
        moderate band, see the module docstring).
    min_samples
        Rows needed before :meth:`alerts` reports anything: PSI over a handful of rows is
        mostly sampling noise.
    window
        Most recent rows compared; at least ``min_samples``.
    """

    def __init__(
        self,
        reference: DriftReference,
        threshold: float = 0.2,
        min_samples: int = 500,
        window: int = 5000,
    ) -> None:
        if not threshold > 0 or not math.isfinite(threshold):
            raise ValueError(f"Expected a finite PSI threshold > 0, got {threshold!r}.")
        if min_samples < 1 or window < min_samples:
            raise ValueError(
                f"Expected 1 <= min_samples <= window, got min_samples={min_samples}, "
                f"window={window}."
            )
        self.reference = reference
        self.threshold = threshold
        self.min_samples = min_samples
        self.window = window
        self._edges = [np.asarray(edges, dtype=np.float64) for edges in reference.edges]
        # Bin counts padded to the widest feature; a padded bin is empty on both sides and so
        # adds nothing to the PSI.
        width = max(len(shares) for shares in reference.expected)
        self._expected = np.zeros((len(reference.names), width))
        for j, shares in enumerate(reference.expected):
            self._expected[j, : len(shares)] = shares
        self._counts = np.zeros((len(reference.names), width), dtype=np.int64)
        self._ring = np.zeros((window, len(reference.names)), dtype=np.int32)
        self._next = 0
        self._size = 0
        self._lock = threading.Lock()

    @property
    def samples(self) -> int:
        """Rows in the window now (at most ``window``)."""
        with self._lock:
            return self._size

    def update(self, features: ArrayLike) -> None:
        """Add live rows (shape ``(m, k)``, or ``(k,)`` for one row), evicting the oldest."""
        rows = np.asarray(features, dtype=np.float64)
        if rows.ndim == 1:
            rows = rows[np.newaxis, :]
        matrix = _as_matrix(rows, len(self.reference.names), self.reference.names)
        if matrix.shape[0] == 0:
            return
        matrix = matrix[-self.window :]
        m = matrix.shape[0]
        bins = np.stack(
            [_bin_indices(edges, matrix[:, j]) for j, edges in enumerate(self._edges)], axis=1
        ).astype(np.int32)
        width = self._counts.shape[1]
        with self._lock:
            slots = (self._next + np.arange(m)) % self.window
            # Writing starts at the first free slot; once the free ones are used up, the
            # writes land on the oldest rows, which leave the counts.
            evicted = slots[self.window - self._size :]
            for j in range(bins.shape[1]):
                if evicted.size:
                    self._counts[j] -= np.bincount(self._ring[evicted, j], minlength=width)
                self._counts[j] += np.bincount(bins[:, j], minlength=width)
            self._ring[slots] = bins
            self._next = int((self._next + m) % self.window)
            self._size = min(self.window, self._size + m)

    def psi(self) -> dict[str, float]:
        """PSI of each feature over the rows in the window; ``ValueError`` when empty."""
        with self._lock:
            counts, size = self._counts.copy(), self._size
        return self._psi_of(counts, size)

    def alerts(self) -> list[DriftAlert]:
        """Features with PSI above ``threshold``, worst first.

        Empty until the window holds ``min_samples`` rows.
        """
        with self._lock:
            counts, size = self._counts.copy(), self._size
        if size < self.min_samples:
            return []
        found = [
            DriftAlert(name, value, drift_level(value))
            for name, value in self._psi_of(counts, size).items()
            if value > self.threshold
        ]
        return sorted(found, key=lambda alert: alert.psi, reverse=True)

    def _psi_of(self, counts: NDArray[np.int64], size: int) -> dict[str, float]:
        if size == 0:
            raise ValueError("Expected live rows before computing PSI, got none; call update().")
        actual = counts / size
        return {
            name: _psi_terms(self._expected[j], actual[j])
            for j, name in enumerate(self.reference.names)
        }

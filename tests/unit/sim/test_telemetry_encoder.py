"""Tests for :mod:`sim.telemetry_encoder`: columnar samples to contract JSON."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from contracts.telemetry import TelemetryMessageV2, decode_message
from sim.telemetry_encoder import SAMPLE_COLUMNS, encode_messages

NOW_S = 1_764_170_000.0
_DECIMALS = (3, 2, 2, 1, 2, 6, 6, 3, 1, 3, 3)


def _values(n: int, seed: int = 0) -> np.ndarray:
    """Random in-range samples with negative, zero and tiny values mixed in."""
    rng = np.random.default_rng(seed)
    v = np.empty((n, len(SAMPLE_COLUMNS)))
    v[:, 0] = NOW_S - 100.0 + np.arange(n) * 0.125
    bounds = [(20, 60), (-80, 150), (-40, 110), (0, 100), (-90, 90), (-180, 180), (0, 1e6),
              (0, 90), (1.5, 4.6), (1.5, 4.6)]  # fmt: skip
    for j, (lo, hi) in enumerate(bounds, start=1):
        v[:, j] = rng.uniform(lo, hi, n)
    if n >= 6:
        v[:6, 2] = [-0.004, -0.006, -79.999, -5.5, 0.0, -100.0 / 3]
        v[:6, 5] = [-4e-7, -6e-7, -9.5, -89.9999999, 1e-9, -1.0]
    return v


def test_round_trip_gives_the_rounded_values() -> None:
    """Every number decodes to the input rounded to the field's decimals."""
    values = _values(600)
    counts = [1, 2, 3, 4, 90, 500]
    out = encode_messages(
        [f"v-{i}" for i in range(6)], [f"b-{i}" for i in range(6)], list(range(6)), counts, values
    )
    decoded = [orjson.loads(payload) for _, payload in out]
    got = np.array([[s[c] for c in SAMPLE_COLUMNS] for d in decoded for s in d["samples"]])
    expected = np.column_stack([np.round(values[:, j], d) for j, d in enumerate(_DECIMALS)])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)
    assert [len(d["samples"]) for d in decoded] == counts


def test_payloads_pass_the_contract() -> None:
    """Each payload is a valid TelemetryMessageV2 on its vehicle's topic."""
    values = _values(40)
    out = encode_messages(["v-a", "v-b"], ["b-a", "b-b"], [0, 7], [15, 25], values)
    assert [topic for topic, _ in out] == ["fleet/v-a/telemetry", "fleet/v-b/telemetry"]
    msgs = [decode_message(topic, payload, NOW_S) for topic, payload in out]
    assert all(isinstance(m, TelemetryMessageV2) for m in msgs)
    assert [(m.battery_id, m.seq, len(m.samples)) for m in msgs] == [("b-a", 0, 15), ("b-b", 7, 25)]


def test_out_of_range_values_are_clamped_into_the_contract() -> None:
    """Values beyond the contract's inclusive bounds are clamped, not rejected."""
    values = _values(2)
    values[0, 1:] = [99.0, 400.0, -60.0, 101.0, 95.0, -200.0, 2e6, 120.0, 1.0, 9.0]
    ((topic, payload),) = encode_messages(["v-1"], ["b-1"], [0], [2], values)
    sample = decode_message(topic, payload, NOW_S).samples[0]
    assert (sample.pack_voltage_v, sample.current_a, sample.temp_c, sample.soc_pct) == (
        60.0, 150.0, -40.0, 100.0,
    )  # fmt: skip
    assert (sample.lat, sample.lon, sample.odometer_km, sample.speed_kmh) == (
        90.0, -180.0, 1e6, 90.0,
    )  # fmt: skip
    assert (sample.cell_min_v, sample.cell_max_v) == (1.5, 4.6)


def test_timestamp_outside_the_contract_is_an_error() -> None:
    """A ts the contract cannot hold is the caller's bug: it raises, naming the range."""
    values = _values(1)
    values[0, 0] = 5.0
    with pytest.raises(ValueError, match=r"Expected every ts in \(1e\+09, 1e\+10\), got"):
        encode_messages(["v-1"], ["b-1"], [0], [1], values)


def test_non_finite_values_are_an_error() -> None:
    """NaN or infinity cannot be written as JSON numbers: encoding refuses them."""
    values = _values(1)
    values[0, 3] = np.nan
    with pytest.raises(ValueError, match="Expected finite sample values"):
        encode_messages(["v-1"], ["b-1"], [0], [1], values)


def test_mismatched_counts_are_an_error() -> None:
    """The values must hold exactly sum(counts) rows; the error quotes both shapes."""
    with pytest.raises(ValueError, match=r"Expected values of shape \(3, 11\), got \(2, 11\)"):
        encode_messages(["v-1"], ["b-1"], [0], [3], _values(2))
    with pytest.raises(ValueError, match="Expected at least 1 sample per message, got 0"):
        encode_messages(["v-1", "v-2"], ["b-1", "b-2"], [0, 0], [2, 0], _values(2))


def test_no_messages_encode_to_nothing() -> None:
    """An empty batch yields no messages."""
    assert encode_messages([], [], [], [], np.empty((0, len(SAMPLE_COLUMNS)))) == []

"""Hostile telemetry, generated: the decoder never crashes and its two paths agree.

Property-based (hypothesis, derandomized so CI is repeatable): more than 10,000 payloads a
run, from raw bytes and arbitrary JSON to near-valid messages with one field broken
(wrong types, boundary values, NaN and infinity, unicode and control characters in ids,
huge and deeply nested structures, timestamps at the edges of the accepted window).

Properties, for every generated batch:

* :func:`decode_batch` returns; every message is accepted or rejected exactly once;
* every reject is a :class:`TelemetryRejected` with a reason (an internal error would be a
  bug of ours, dead-lettered as ``internal_error`` by the bridge);
* the vectorised fast path and the pydantic path (:func:`decode_message`, one message at a
  time) accept exactly the same messages, with the same values.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts.telemetry import (
    ContractLimits,
    TelemetryRejected,
    decode_batch,
    decode_message,
)

NOW_S = 1_764_172_800.0
LIMITS = ContractLimits()
#: Examples per property; each example is a batch of 6 to 14 payloads (over 10,000 in all).
EXAMPLES = 1_300
GENERATED = {"payloads": 0}

_IDS = st.one_of(
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,20}", fullmatch=True),
    st.text(max_size=70),  # unicode, control characters, empty, too long
    st.sampled_from(["v1\n", " v1", "v/1", "", "a" * 64, "a" * 65, "ü", "v1\x00"]),
)
_EDGE_FLOATS = st.sampled_from(
    [0.0, -0.0, 1e-300, -1e-300, 1e308, -1e308, 20.0, 60.0, 19.999999, 60.000001, -40.0, 110.0,
     100.0, 100.0000001, -80.0, 150.0, 90.0, 1.5, 4.6, 2**53, -(2**53), 1e9, 1e10]
)
_NUMBERS = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, width=64), _EDGE_FLOATS,
    st.integers(min_value=-(2**70), max_value=2**70),
)
_JUNK = st.recursive(
    st.one_of(st.none(), st.booleans(), _NUMBERS, st.text(max_size=30)),
    lambda children: st.one_of(
        st.lists(children, max_size=6), st.dictionaries(st.text(max_size=12), children, max_size=6)
    ),
    max_leaves=40,
)


def _sample(draw: st.DrawFn) -> dict[str, Any]:
    ts = draw(st.one_of(
        st.floats(NOW_S - 3600.0, NOW_S + 60.0),
        st.sampled_from([NOW_S + LIMITS.max_future_skew_s, NOW_S + LIMITS.max_future_skew_s + 1e-3,
                         NOW_S - LIMITS.max_age_s, NOW_S - LIMITS.max_age_s - 1e-3, 1e9, 1e10]),
    ))  # fmt: skip
    s: dict[str, Any] = {
        "ts": ts,
        "pack_voltage_v": draw(st.floats(20.0, 60.0)),
        "current_a": draw(st.floats(-80.0, 150.0)),
        "temp_c": draw(st.floats(-40.0, 110.0)),
        "soc_pct": draw(st.floats(0.0, 100.0)),
        "lat": draw(st.floats(-90.0, 90.0)),
        "lon": draw(st.floats(-180.0, 180.0)),
        "odometer_km": draw(st.floats(0.0, 1e6)),
        "speed_kmh": draw(st.floats(0.0, 90.0)),
    }
    if draw(st.booleans()):
        s["cell_min_v"] = draw(st.one_of(st.none(), st.floats(1.5, 4.6)))
        s["cell_max_v"] = draw(st.one_of(st.none(), st.floats(1.5, 4.6)))
    return s


@st.composite
def _message(draw: st.DrawFn) -> tuple[str, bytes]:
    """A valid message, then zero or more breakages of one kind or another."""
    vehicle = draw(st.from_regex(r"v[0-9]{1,5}", fullmatch=True))
    doc: dict[str, Any] = {
        "schema_version": draw(st.sampled_from([1, 2])),
        "vehicle_id": vehicle,
        "battery_id": draw(st.from_regex(r"b[0-9]{1,5}", fullmatch=True)),
        "seq": draw(st.integers(0, 2**62 - 1)),
        "samples": [_sample(draw) for _ in range(draw(st.integers(1, 4)))],
    }
    if doc["schema_version"] == 1:
        for smp in doc["samples"]:
            smp.pop("cell_min_v", None)
            smp.pop("cell_max_v", None)
    for _ in range(draw(st.integers(0, 2))):
        kind = draw(st.sampled_from(["field", "sample_field", "drop", "extra", "ids", "samples"]))
        if kind == "field":
            doc[draw(st.sampled_from(sorted(doc)))] = draw(_JUNK)
        elif kind == "sample_field" and isinstance(doc.get("samples"), list) and doc["samples"]:
            smp = draw(st.sampled_from(doc["samples"]))
            if isinstance(smp, dict) and smp:
                smp[draw(st.sampled_from(sorted(smp)))] = draw(st.one_of(_NUMBERS, _JUNK))
        elif kind == "drop":
            doc.pop(draw(st.sampled_from(sorted(doc))), None)
        elif kind == "extra":
            doc[draw(st.text(min_size=1, max_size=10))] = draw(_JUNK)
        elif kind == "ids":
            doc[draw(st.sampled_from(["vehicle_id", "battery_id"]))] = draw(_IDS)
        else:
            first = doc["samples"][0] if isinstance(doc.get("samples"), list) and doc["samples"] else {}
            doc["samples"] = draw(st.one_of(st.just([]), st.lists(_JUNK, max_size=3), st.just([first] * 501)))
    topic = draw(st.one_of(
        st.just(f"fleet/{vehicle}/telemetry"),
        st.sampled_from(["fleet//telemetry", "fleet/v1/status", f"fleet/{vehicle}x/telemetry", "x"]),
    ))  # fmt: skip
    payload = orjson.dumps(doc, option=orjson.OPT_NON_STR_KEYS) if _json_safe(doc) else b"{"
    return topic, payload


_TRICKY = {
    "vehicle_id": None,  # ids are set below; the topic follows the payload's vehicle
    "schema_version": st.sampled_from([0, 3, "2", True, 2.0, None, -1]),
    "seq": st.sampled_from([-1, 0, 2**62 - 1, 2**62, True, 1.0, "1", None, 2**64]),
}
_SAMPLE_EDGES = st.one_of(
    _EDGE_FLOATS, st.booleans(), st.none(), st.text(max_size=5),
    st.sampled_from([1e9, 1e10, 1e9 + 1, 9.99e9, NOW_S + 1e6, -1.0, 2**63]),
)


@st.composite
def _one_break(draw: st.DrawFn) -> tuple[str, bytes]:
    """A valid message with exactly one targeted breakage: a tricky id (the topic agrees
    with the payload's vehicle), an edge or wrongly typed value, a bad version or seq."""
    vehicle = draw(st.from_regex(r"v[0-9]{1,5}", fullmatch=True))
    doc: dict[str, Any] = {
        "schema_version": 2, "vehicle_id": vehicle, "battery_id": "b1", "seq": 7,
        "samples": [_sample(draw) for _ in range(draw(st.integers(1, 3)))],
    }
    for smp in doc["samples"]:
        smp["ts"] = draw(st.floats(NOW_S - 600.0, NOW_S))
    what = draw(st.sampled_from(["vehicle_id", "battery_id", "schema_version", "seq", "value"]))
    if what in ("vehicle_id", "battery_id"):
        doc[what] = draw(_IDS)
    elif what == "value":
        smp = draw(st.sampled_from(doc["samples"]))
        smp[draw(st.sampled_from(sorted(smp)))] = draw(_SAMPLE_EDGES)
    else:
        doc[what] = draw(_TRICKY[what])
    vid = doc["vehicle_id"]
    topic = f"fleet/{vid}/telemetry" if isinstance(vid, str) else f"fleet/{vehicle}/telemetry"
    # The standard json module: orjson refuses integers past 64 bits, which are part of the test.
    return topic, json.dumps(doc).encode()


def _json_safe(x: Any) -> bool:
    try:
        orjson.dumps(x, option=orjson.OPT_NON_STR_KEYS)
    except (orjson.JSONEncodeError, TypeError):
        return False
    return True


def _deep_list() -> bytes:
    return b"[" * 5000 + b"]" * 5000


def _deep_dict() -> bytes:
    return b'{"a":' * 3000 + b"1" + b"}" * 3000


def _many_empty_samples() -> bytes:
    return b'{"schema_version": 2, "samples": [' + b"{}," * 2000 + b"{}]}"


def _oversized() -> bytes:
    return b"x" * (LIMITS.max_payload_bytes + 1)


# Built by named functions: hypothesis prints a strategy's repr, and a 300 kB literal in it
# is an error under this suite's warnings-as-errors.
_HOSTILE = st.sampled_from([_deep_list, _deep_dict, _many_empty_samples, _oversized]).map(lambda make: make())
_RAW = st.one_of(
    st.binary(max_size=300),
    _JUNK.filter(_json_safe).map(lambda d: orjson.dumps(d, option=orjson.OPT_NON_STR_KEYS)),
    st.sampled_from([
        b"NaN", b'{"ts": NaN}', b"\xff\xfe", b"",
        b'{"schema_version": 2, "vehicle_id": "v1", "battery_id": "b1", "seq": 1, "samples": [{"ts": Infinity}]}',
    ]),
    _HOSTILE,
).map(lambda b: ("fleet/v1/telemetry", b))

_BATCH = st.lists(st.one_of(_message(), _one_break(), _one_break(), _RAW), min_size=6, max_size=14)


def _slow_decode(topic: str, payload: bytes) -> Any:
    try:
        return decode_message(topic, payload, NOW_S, LIMITS)
    except TelemetryRejected:
        return None


@settings(max_examples=EXAMPLES, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])  # fmt: skip
@given(_BATCH)
def _decoder_property(raws: list[tuple[str, bytes]]) -> None:
    GENERATED["payloads"] += len(raws)
    batch, accepted, rejected = decode_batch(raws, NOW_S, LIMITS)
    rejected_idx = [k for k, _ in rejected]
    assert sorted(accepted + rejected_idx) == list(range(len(raws)))
    for k, err in rejected:
        assert isinstance(err, TelemetryRejected), f"internal error on message {k}: {err!r}"
        assert err.reason.value and err.detail
    slow = [_slow_decode(t, p) for t, p in raws]
    assert accepted == [k for k, m in enumerate(slow) if m is not None]
    # Same values: the accepted messages, in arrival order, sample by sample.
    offsets = batch.msg_offsets
    for row, k in enumerate(accepted):
        msg = slow[k]
        assert (batch.vehicle_ids[row], batch.battery_ids[row], int(batch.seqs[row])) == (
            msg.vehicle_id, msg.battery_id, msg.seq,
        )  # fmt: skip
        for j, smp in enumerate(msg.samples):
            for name, col in batch.columns.items():
                want = getattr(smp, name)
                got = float(col[offsets[row] + j])
                assert (want is None and math.isnan(got)) or got == want, (name, got, want)


def test_decoder_never_crashes_and_both_paths_agree() -> None:
    """Over 10,000 generated payloads: every message is accepted or rejected with a reason,
    once; the fast path accepts exactly what the pydantic path accepts, with the same values."""
    GENERATED["payloads"] = 0
    _decoder_property()
    assert GENERATED["payloads"] >= 10_000, GENERATED


def test_columns_are_finite_after_decoding() -> None:
    """Whatever is accepted holds no NaN or infinity in a required column."""
    good = ("fleet/v1/telemetry", orjson.dumps({
        "schema_version": 2, "vehicle_id": "v1", "battery_id": "b1", "seq": 3,
        "samples": [{"ts": NOW_S, "pack_voltage_v": 40.0, "current_a": 1.0, "temp_c": 20.0, "soc_pct": 50.0,
                     "lat": 52.5, "lon": 13.4, "odometer_km": 10.0, "speed_kmh": 0.0}],
    }))  # fmt: skip
    batch, accepted, _ = decode_batch([good], NOW_S, LIMITS)
    assert accepted == [0]
    for name in ("ts", "pack_voltage_v", "current_a", "temp_c", "soc_pct", "lat", "lon"):
        assert np.isfinite(batch.columns[name]).all()

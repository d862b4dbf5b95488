"""Tests for :mod:`contracts.telemetry`: topic, versioned schema and both decode paths.

``decode_message`` (pydantic) is the reference: its verdict and reason are final.
``decode_batch`` (orjson + numpy) must accept exactly the messages the reference accepts,
reject the others with the same reason and give the same columns; a seeded random
mutation test pins that parity.
"""

from __future__ import annotations

import copy
import json
import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import contracts.telemetry as tc
from contracts.samples import SAMPLE_FIELDS, TelemetryBatch
from contracts.telemetry import (
    ContractLimits,
    RejectReason,
    TelemetryMessageV2,
    TelemetryRejected,
    decode_batch,
    decode_message,
    json_schemas,
    messages_to_batch,
    topic_for,
)

NOW_S = 1.8e9
LIMITS = ContractLimits()
TOPIC = "fleet/v-1/telemetry"
SCHEMA_DIR = Path(__file__).resolve().parents[3] / "contracts" / "schemas"

# The documented physical bounds, inclusive (``ts`` has exclusive bounds 1e9 < ts < 1e10).
_RANGES: dict[str, tuple[float, float]] = {
    "pack_voltage_v": (20.0, 60.0),
    "current_a": (-80.0, 150.0),
    "temp_c": (-40.0, 110.0),
    "soc_pct": (0.0, 100.0),
    "lat": (-90.0, 90.0),
    "lon": (-180.0, 180.0),
    "odometer_km": (0.0, 1.0e6),
    "speed_kmh": (0.0, 90.0),
    "cell_min_v": (1.5, 4.6),
    "cell_max_v": (1.5, 4.6),
}
_CELL_FIELDS = ("cell_min_v", "cell_max_v")


def _sample(**overrides: Any) -> dict[str, Any]:
    """A valid v1 sample taken 10 s before ``NOW_S``."""
    s: dict[str, Any] = {
        "ts": NOW_S - 10.0,
        "pack_voltage_v": 41.2,
        "current_a": 6.5,
        "temp_c": 28.0,
        "soc_pct": 71.5,
        "lat": 52.52,
        "lon": 13.40,
        "odometer_km": 812.4,
        "speed_kmh": 18.0,
    }
    s.update(overrides)
    return s


def _doc(samples: list[dict[str, Any]] | None = None, **overrides: Any) -> dict[str, Any]:
    """A valid v2 message of vehicle ``v-1`` (one sample unless given)."""
    d: dict[str, Any] = {
        "schema_version": 2,
        "vehicle_id": "v-1",
        "battery_id": "b-1",
        "seq": 17,
        "samples": samples if samples is not None else [_sample(cell_min_v=3.71, cell_max_v=3.74)],
    }
    d.update(overrides)
    return d


def _payload(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def _rejected(
    payload: bytes, topic: str = TOPIC, limits: ContractLimits = LIMITS
) -> TelemetryRejected:
    with pytest.raises(TelemetryRejected) as info:
        decode_message(topic, payload, NOW_S, limits)
    return info.value


# ---------------------------------------------------------------------------- decode_message


def test_valid_v2_message_is_returned_unchanged() -> None:
    """A valid current-version message decodes to the same values."""
    msg = decode_message(TOPIC, _payload(_doc()), NOW_S)
    assert isinstance(msg, TelemetryMessageV2)
    assert (msg.vehicle_id, msg.battery_id, msg.seq) == ("v-1", "b-1", 17)
    s = msg.samples[0]
    assert (s.ts, s.pack_voltage_v, s.cell_min_v, s.cell_max_v) == (NOW_S - 10.0, 41.2, 3.71, 3.74)


def test_topic_for_round_trips_through_decode() -> None:
    """topic_for() builds the topic decode_message expects for that vehicle."""
    assert topic_for("v-1") == TOPIC
    assert decode_message(topic_for("v-1"), _payload(_doc()), NOW_S).vehicle_id == "v-1"


def test_v1_message_is_upgraded_with_unknown_cell_voltages() -> None:
    """A v1 message is accepted and comes out as v2 with both cell voltages None."""
    doc = _doc([_sample(), _sample(ts=NOW_S - 5.0)], schema_version=1)
    msg = decode_message(TOPIC, _payload(doc), NOW_S)
    assert isinstance(msg, TelemetryMessageV2)
    assert msg.schema_version == 2
    assert [(s.cell_min_v, s.cell_max_v) for s in msg.samples] == [(None, None), (None, None)]
    assert [s.ts for s in msg.samples] == [NOW_S - 10.0, NOW_S - 5.0]


def test_v1_message_may_not_carry_cell_voltages() -> None:
    """Cell voltages are a v2 field: a v1 message with one is a schema violation."""
    err = _rejected(_payload(_doc([_sample(cell_min_v=3.7)], schema_version=1)))
    assert err.reason is RejectReason.SCHEMA_VIOLATION
    assert "cell_min_v" in err.detail


def _nonfinite(literal: str) -> bytes:
    return _payload(_doc([_sample(temp_c="@@")])).replace(b'"@@"', literal.encode())


_too_big = _payload(_doc(battery_id="b" * 60)) + b" " * 10


# (id, topic, payload, limits, reason, fragments the detail must contain)
_REJECT_CASES: list[tuple[str, str, bytes, ContractLimits, RejectReason, tuple[str, ...]]] = [
    (
        "oversized",
        TOPIC,
        _too_big,
        ContractLimits(max_payload_bytes=len(_too_big) - 1),
        RejectReason.OVERSIZED,
        (f"expected at most {len(_too_big) - 1} bytes", f"got {len(_too_big)}"),
    ),
    (
        "oversized-before-topic",
        "nonsense",
        _too_big,
        ContractLimits(max_payload_bytes=100),
        RejectReason.OVERSIZED,
        ("expected at most 100 bytes",),
    ),
    (
        "empty-vehicle-in-topic",
        "fleet//telemetry",
        _payload(_doc()),
        LIMITS,
        RejectReason.BAD_TOPIC,
        ("expected topic 'fleet/<vehicle_id>/telemetry'", "got 'fleet//telemetry'"),
    ),
    (
        "too-many-topic-levels",
        "fleet/a/b/telemetry",
        _payload(_doc()),
        LIMITS,
        RejectReason.BAD_TOPIC,
        ("expected topic", "got 'fleet/a/b/telemetry'"),
    ),
    (
        "wrong-topic-suffix",
        "fleet/v-1/status",
        _payload(_doc()),
        LIMITS,
        RejectReason.BAD_TOPIC,
        ("got 'fleet/v-1/status'",),
    ),
    (
        "truncated-json",
        TOPIC,
        _payload(_doc())[:40],
        LIMITS,
        RejectReason.MALFORMED_JSON,
        ("Invalid JSON", "got b'{"),
    ),
    (
        "unknown-version-3",
        TOPIC,
        _payload(_doc(schema_version=3)),
        LIMITS,
        RejectReason.UNKNOWN_VERSION,
        ("expected tags: 1, 2", "'3'"),
    ),
    (
        "unknown-top-level-field",
        TOPIC,
        _payload(_doc(firmware="1.2")),
        LIMITS,
        RejectReason.SCHEMA_VIOLATION,
        ("firmware", "Extra inputs are not permitted", "got '1.2'"),
    ),
    (
        "unknown-sample-field",
        TOPIC,
        _payload(_doc([_sample(humidity_pct=40.0)])),
        LIMITS,
        RejectReason.SCHEMA_VIOLATION,
        ("samples.0.humidity_pct", "Extra inputs are not permitted", "got 40.0"),
    ),
    (
        "missing-field",
        TOPIC,
        _payload({k: v for k, v in _doc().items() if k != "seq"}),
        LIMITS,
        RejectReason.SCHEMA_VIOLATION,
        ("seq", "Field required"),
    ),
    (
        "list-for-seq",
        TOPIC,
        _payload(_doc(seq=[1])),
        LIMITS,
        RejectReason.SCHEMA_VIOLATION,
        ("seq", "valid integer", "got [1]"),
    ),
    (
        "pack-voltage-99",
        TOPIC,
        _payload(_doc([_sample(pack_voltage_v=99)])),
        LIMITS,
        RejectReason.OUT_OF_RANGE,
        ("samples.0.pack_voltage_v", "less than or equal to 60", "got 99"),
    ),
    (
        "soc-101",
        TOPIC,
        _payload(_doc([_sample(soc_pct=101.0)])),
        LIMITS,
        RejectReason.OUT_OF_RANGE,
        ("samples.0.soc_pct", "less than or equal to 100", "got 101.0"),
    ),
    (
        "temp-minus-60",
        TOPIC,
        _payload(_doc([_sample(temp_c=-60.0)])),
        LIMITS,
        RejectReason.OUT_OF_RANGE,
        ("samples.0.temp_c", "greater than or equal to -40", "got -60.0"),
    ),
    (
        "lat-91",
        TOPIC,
        _payload(_doc([_sample(), _sample(lat=91)])),
        LIMITS,
        RejectReason.OUT_OF_RANGE,
        ("samples.1.lat", "less than or equal to 90", "got 91"),
    ),
    (
        "nan-literal",
        TOPIC,
        _nonfinite("NaN"),
        LIMITS,
        RejectReason.NON_FINITE,
        ("samples.0.temp_c", "finite number", "got nan"),
    ),
    (
        "1e999",
        TOPIC,
        _nonfinite("1e999"),
        LIMITS,
        RejectReason.NON_FINITE,
        ("samples.0.temp_c", "finite number", "got inf"),
    ),
    (
        "topic-vehicle-differs",
        "fleet/v-2/telemetry",
        _payload(_doc()),
        LIMITS,
        RejectReason.TOPIC_MISMATCH,
        ("payload vehicle_id 'v-1'", "topic vehicle 'v-2'"),
    ),
    (
        "future-timestamp",
        TOPIC,
        _payload(_doc([_sample(), _sample(ts=NOW_S + 121.5)])),
        LIMITS,
        RejectReason.FUTURE_TIMESTAMP,
        ("expected ts <= now + 120 s", "121.5 s in the future"),
    ),
    (
        "stale-timestamp",
        TOPIC,
        _payload(_doc([_sample(ts=NOW_S - LIMITS.max_age_s - 30.0), _sample()])),
        LIMITS,
        RejectReason.STALE_TIMESTAMP,
        ("expected ts >= now - 604800 s", f"{LIMITS.max_age_s + 30.0:.0f} s old"),
    ),
    (
        "empty-samples",
        TOPIC,
        _payload(_doc([])),
        LIMITS,
        RejectReason.SCHEMA_VIOLATION,
        ("samples", "at least 1 item", "got []"),
    ),
    (
        "501-samples",
        TOPIC,
        _payload(_doc([_sample()] * 501)),
        LIMITS,
        RejectReason.SCHEMA_VIOLATION,
        ("samples", "at most 500 items", "501"),
    ),
]


@pytest.mark.parametrize(
    ("topic", "payload", "limits", "reason", "fragments"),
    [case[1:] for case in _REJECT_CASES],
    ids=[case[0] for case in _REJECT_CASES],
)
def test_every_reject_reason_says_what_was_expected_and_what_arrived(
    topic: str,
    payload: bytes,
    limits: ContractLimits,
    reason: RejectReason,
    fragments: tuple[str, ...],
) -> None:
    """Each contract breach raises TelemetryRejected with its reason and an explaining detail."""
    err = _rejected(payload, topic, limits)
    assert err.reason is reason
    for fragment in fragments:
        assert fragment in err.detail
    assert str(err) == f"{reason.value}: {err.detail}"


def test_reject_cases_cover_every_reason() -> None:
    """The table above exercises every RejectReason of the decoder (a new reason needs a
    case); the twins' reasons are tested with the twins (tests/unit/twins)."""
    assert {case[4] for case in _REJECT_CASES} == set(RejectReason) - tc.TWIN_REJECT_REASONS


def test_payload_at_the_size_limit_is_accepted() -> None:
    """max_payload_bytes is inclusive: a payload of exactly that size passes."""
    payload = _payload(_doc())
    decode_message(TOPIC, payload, NOW_S, ContractLimits(max_payload_bytes=len(payload)))


def test_timestamps_at_the_skew_and_age_limits_are_accepted() -> None:
    """A sample exactly max_future_skew_s ahead or max_age_s old is still accepted."""
    doc = _doc([_sample(ts=NOW_S + LIMITS.max_future_skew_s), _sample(ts=NOW_S - LIMITS.max_age_s)])
    msg = decode_message(TOPIC, _payload(doc), NOW_S)
    assert len(msg.samples) == 2


def test_500_samples_are_accepted() -> None:
    """The sample count limit is inclusive: 500 samples make a valid message."""
    msg = decode_message(TOPIC, _payload(_doc([_sample()] * 500)), NOW_S)
    assert len(msg.samples) == 500


def test_detail_lists_at_most_three_errors() -> None:
    """A message with many errors names three of them and counts the rest."""
    doc = _doc([_sample(soc_pct=101.0, lat=91.0, lon=181.0, speed_kmh=91.0, temp_c=111.0)])
    err = _rejected(_payload(doc))
    assert err.reason is RejectReason.OUT_OF_RANGE
    assert err.detail.count("(got ") == 3
    assert err.detail.endswith(" and 2 more")


def test_contract_limits_are_validated() -> None:
    """ContractLimits refuses a non-positive payload size or age and a negative skew."""
    with pytest.raises(ValueError, match="max_payload_bytes > 0, got 0"):
        ContractLimits(max_payload_bytes=0)
    with pytest.raises(ValueError, match="max_future_skew_s >= 0"):
        ContractLimits(max_future_skew_s=-1.0)
    with pytest.raises(ValueError, match="max_age_s > 0"):
        ContractLimits(max_age_s=0.0)


# ---------------------------------------------------------------------------- messages_to_batch


def test_messages_to_batch_columns_and_offsets() -> None:
    """Messages become flat columns with msg_offsets; missing cell voltages are NaN."""
    cells = {"cell_min_v": 3.71, "cell_max_v": 3.74}
    m1 = decode_message(
        TOPIC,
        _payload(_doc([_sample(soc_pct=70.0, **cells), _sample(soc_pct=69.0, **cells)])),
        NOW_S,
    )
    m2 = decode_message(
        "fleet/v-2/telemetry",
        _payload(
            _doc(
                [_sample(soc_pct=50.0)], schema_version=1, vehicle_id="v-2", battery_id="b-2", seq=3
            )
        ),
        NOW_S,
    )
    m3 = decode_message(TOPIC, _payload(_doc([_sample(cell_max_v=4.1)] * 3, seq=18)), NOW_S)
    batch = messages_to_batch([m1, m2, m3], received_at_s=[1.0, 2.0, 3.0])
    assert list(batch.battery_ids) == ["b-1", "b-2", "b-1"]
    assert list(batch.vehicle_ids) == ["v-1", "v-2", "v-1"]
    np.testing.assert_array_equal(batch.seqs, [17, 3, 18], strict=False)
    assert batch.seqs.dtype == np.int64
    np.testing.assert_array_equal(batch.msg_offsets, [0, 2, 3, 6])
    np.testing.assert_array_equal(batch.recv, [1.0, 2.0, 3.0])
    assert set(batch.columns) == set(SAMPLE_FIELDS)
    assert all(c.dtype == np.float64 for c in batch.columns.values())
    np.testing.assert_array_equal(batch.columns["soc_pct"], [70.0, 69.0, 50.0, 71.5, 71.5, 71.5])
    np.testing.assert_array_equal(batch.columns["cell_min_v"], [3.71, 3.71, np.nan] + [np.nan] * 3)
    np.testing.assert_array_equal(batch.columns["cell_max_v"], [3.74, 3.74, np.nan] + [4.1] * 3)


def test_messages_to_batch_without_receive_times_and_empty() -> None:
    """Receive times default to 0.0 per message; no messages give an empty batch."""
    msg = decode_message(TOPIC, _payload(_doc()), NOW_S)
    np.testing.assert_array_equal(messages_to_batch([msg, msg]).recv, [0.0, 0.0])
    empty = messages_to_batch([])
    assert (empty.n_messages, empty.n_samples) == (0, 0)
    np.testing.assert_array_equal(empty.msg_offsets, [0])


# ---------------------------------------------------------------------------- json_schemas


@pytest.mark.parametrize("version", [1, 2])
def test_committed_json_schema_is_up_to_date(version: int) -> None:
    """contracts/schemas/telemetry-v<N>.json is exactly what ``bms schema --write`` would write."""
    path = SCHEMA_DIR / f"telemetry-v{version}.json"
    assert path.exists(), f"{path} is missing; run 'bms schema --write'"
    expected = json.dumps(json_schemas()[version], indent=2, sort_keys=True) + "\n"
    assert path.read_text() == expected


def test_json_schemas_cover_the_supported_versions() -> None:
    """One schema per supported version, forbidding unknown fields and naming the topic."""
    schemas = json_schemas()
    assert sorted(schemas) == list(tc.SUPPORTED_SCHEMA_VERSIONS)
    for version, doc in schemas.items():
        assert doc["$id"].endswith(f"telemetry-v{version}.json")
        assert doc["additionalProperties"] is False
        assert doc["x-topic"] == "fleet/<vehicle_id>/telemetry"
        assert doc["properties"]["schema_version"]["const"] == version


# ---------------------------------------------------------------------------- decode_batch


def _assert_batches_equal(got: TelemetryBatch, want: TelemetryBatch) -> None:
    assert list(got.battery_ids) == list(want.battery_ids)
    assert list(got.vehicle_ids) == list(want.vehicle_ids)
    np.testing.assert_array_equal(got.seqs, want.seqs, strict=True)
    np.testing.assert_array_equal(got.msg_offsets, want.msg_offsets, strict=True)
    np.testing.assert_array_equal(got.recv, want.recv, strict=True)
    assert set(got.columns) == set(want.columns)
    for name in SAMPLE_FIELDS:
        # assert_array_equal treats NaN == NaN (absent cell voltages).
        np.testing.assert_array_equal(
            got.columns[name], want.columns[name], strict=True, err_msg=name
        )


def _reference(
    raws: list[tuple[str, bytes]], limits: ContractLimits = LIMITS
) -> tuple[list[TelemetryMessageV2], list[int], dict[int, TelemetryRejected]]:
    msgs, ok, bad = [], [], {}
    for k, (topic, payload) in enumerate(raws):
        try:
            msgs.append(decode_message(topic, payload, NOW_S, limits))
            ok.append(k)
        except TelemetryRejected as err:
            bad[k] = err
    return msgs, ok, bad


@pytest.fixture
def slow_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Topics of the messages decode_batch hands to decode_message (its slow path)."""
    calls: list[str] = []
    original = tc.decode_message

    def counting(
        topic: str, payload: bytes, now_s: float, limits: ContractLimits = LIMITS
    ) -> TelemetryMessageV2:
        calls.append(topic)
        return original(topic, payload, now_s, limits)

    monkeypatch.setattr(tc, "decode_message", counting)
    return calls


# Seeded random messages for the parity test. Each starts valid (v1 or v2, ints or floats,
# cell voltages present, null or absent), then most get one or two mutations.

_NONFINITE = "@@nonfinite@@"
_BAD_IDS = [
    "",
    "-v",
    "v" * 64,
    "v" * 65,
    "v 1",
    "v1\n",
    "\nv1",
    "vé-1",
    "ünï",
    "v+1",
    "v#",
    "v.1:2_3-4",
]
_IDS = ["v-1", "veh_2", "A.3", "x:9", "Z"]


def _random_value(rng: random.Random, name: str) -> Any:
    lo, hi = _RANGES[name]
    r = rng.random()
    x: Any = rng.uniform(lo, hi)
    if r < 0.05:
        x = rng.choice([lo, hi])  # inclusive bounds
    elif r < 0.2:
        x = round(x)  # an int where a float is expected
    return x


def _random_sample(rng: random.Random, version: int) -> dict[str, Any]:
    s: dict[str, Any] = {"ts": NOW_S - rng.uniform(0.0, 3600.0)}
    if rng.random() < 0.1:
        s["ts"] = int(s["ts"])
    for name in SAMPLE_FIELDS[1:9]:
        s[name] = _random_value(rng, name)
    if version == 2:
        r = rng.random()
        if r < 0.3:
            s["cell_min_v"], s["cell_max_v"] = (_random_value(rng, n) for n in _CELL_FIELDS)
        elif r < 0.45:
            s[rng.choice(_CELL_FIELDS)] = _random_value(rng, "cell_min_v")
        elif r < 0.6:
            s["cell_min_v"] = s["cell_max_v"] = None
    if rng.random() < 0.2:  # key order must not matter
        items = list(s.items())
        rng.shuffle(items)
        s = dict(items)
    return s


def _bad_number(rng: random.Random, name: str) -> Any:
    lo, hi = _RANGES.get(name, (1.0e9, 1.0e10))
    eps = rng.choice([1e-9, 1e-3, 0.5, 100.0])
    return rng.choice(
        [
            lo - eps,
            hi + eps,
            lo,
            hi,
            str((lo + hi) / 2),
            "abc",
            "",
            True,
            False,
            None,
            _NONFINITE,
            10**30,
            -(10**30),
            2**64 - 1,
            2**63,
            1e308,
            -0.0,
            [1.0],
            {"v": 1.0},
        ]
    )


def _mutate(rng: random.Random, topic: str, doc: Any) -> tuple[str, Any, Callable[[bytes], bytes]]:
    """One random mutation: new topic, new document and a transform of the JSON text."""
    same: Callable[[bytes], bytes] = lambda b: b  # noqa: E731
    kind = rng.randrange(20)
    if not isinstance(doc, dict):  # an earlier mutation replaced the whole document
        return topic, doc, same
    samples = doc.get("samples")
    smp = (
        rng.choice(samples)
        if isinstance(samples, list) and samples and isinstance(samples[0], dict)
        else None
    )
    if kind == 0 and doc:
        del doc[rng.choice(sorted(doc))]
    elif kind == 1 and smp:
        del smp[rng.choice(sorted(smp))]
    elif kind == 2:
        doc[rng.choice(["extra", "Seq", "samples2", "", "vehicle_id "])] = rng.choice(
            [1, "x", None]
        )
    elif kind == 3 and smp is not None:
        smp[rng.choice(["foo", "cell_avg_v", "TS", "cell_min_v", "cell_max_v"])] = rng.choice(
            [3.7, None, "3.7"]
        )
    elif kind in (4, 5, 6) and smp is not None:
        name = rng.choice(list(SAMPLE_FIELDS))
        smp[name] = _bad_number(rng, name)
    elif kind == 7:
        doc["seq"] = rng.choice([-1, 0, 2**62 - 1, 2**62, 1.0, 1.5, "7", True, None, 10**30, 2**64])
    elif kind == 8:
        doc["schema_version"] = rng.choice([3, 0, -1, "2", 2.0, 1.0, True, None, "v2", [2]])
    elif kind == 9:
        vid = rng.choice(_BAD_IDS)
        doc["vehicle_id"] = vid
        if rng.random() < 0.8:  # mostly keep the topic consistent so the id itself is judged
            topic = f"fleet/{vid}/telemetry"
    elif kind == 10:
        doc["battery_id"] = rng.choice([*_BAD_IDS, 7, None])
    elif kind == 11:
        vid = doc.get("vehicle_id", "v-1")
        topic = rng.choice(
            ["fleet//telemetry", "fleet/a/b/telemetry", f"fleet/{vid}/status", f"fleets/{vid}/telemetry",
             "fleet/other/telemetry", f"fleet/{vid}/telemetry/", f"/fleet/{vid}/telemetry", ""]
        )  # fmt: skip
    elif kind == 12 and smp is not None:
        smp["ts"] = rng.choice(
            [NOW_S + LIMITS.max_future_skew_s, NOW_S + LIMITS.max_future_skew_s + rng.uniform(1e-3, 1e3),
             NOW_S - LIMITS.max_age_s, NOW_S - LIMITS.max_age_s - rng.uniform(1e-3, 1e3), 1.0e9, 1.0e10]
        )  # fmt: skip
    elif kind == 13:
        doc["samples"] = rng.choice([[], {}, [1.0], "samples", None, [[]]])
    elif kind == 14 and smp is not None:
        doc["samples"] = [dict(smp) for _ in range(rng.choice([500, 501]))]
    elif kind == 15:
        return topic, rng.choice([[doc], "text", 42, None]), same
    elif kind == 16:
        return topic, doc, lambda b: b[: rng.randrange(len(b))]
    elif kind == 17:
        pad = rng.choice([0, 1])  # exactly at the limit, or one byte over
        return (
            topic,
            doc,
            lambda b: b[:-1] + b" " * (LIMITS.max_payload_bytes - len(b) + pad) + b"}",
        )
    elif kind == 18:
        # A duplicated key: both parsers keep the last one.
        return (
            topic,
            doc,
            lambda b: b[:-1] + b', "seq": ' + rng.choice([b"3", b"-1", b'"x"']) + b"}",
        )
    elif kind == 19 and smp is not None:
        for k in list(smp):
            if isinstance(smp[k], float):
                smp[k] = int(smp[k])
    return topic, doc, same


def _random_messages(n: int, seed: int) -> tuple[list[tuple[str, bytes]], Counter[int]]:
    rng = random.Random(seed)
    raws: list[tuple[str, bytes]] = []
    mutated: Counter[int] = Counter()
    for _ in range(n):
        version = rng.choice([1, 2])
        vid = rng.choice(_IDS)
        doc: Any = {
            "schema_version": version,
            "vehicle_id": vid,
            "battery_id": f"b-{rng.randrange(50)}",
            "seq": rng.randrange(2**40),
            "samples": [_random_sample(rng, version) for _ in range(rng.choice([1, 1, 2, 3, 7]))],
        }
        topic = topic_for(vid)
        transforms: list[Callable[[bytes], bytes]] = []
        n_mutations = 0 if rng.random() < 0.3 else rng.choice([1, 1, 2])
        mutated[n_mutations] += 1
        for _ in range(n_mutations):
            topic, doc, transform = _mutate(rng, topic, copy.deepcopy(doc))
            transforms.append(transform)
        text = json.dumps(doc, ensure_ascii=rng.random() < 0.5)
        text = text.replace(
            f'"{_NONFINITE}"', rng.choice(["NaN", "Infinity", "-Infinity", "1e999", "-1e999"])
        )
        payload = text.encode("utf-8", "surrogatepass")
        for transform in transforms:
            payload = transform(payload)
        raws.append((topic, payload))
    return raws, mutated


def test_decode_batch_agrees_with_decode_message_on_random_mutations(slow_calls: list[str]) -> None:
    """decode_batch accepts exactly what decode_message accepts, with the same reasons and columns.

    400 seeded messages, most randomly broken (missing or extra keys, wrong types, out-of-range,
    non-finite, wrong ids and topics, truncated or oversized JSON, boundary values), go through
    both paths in one batch; the fast path must never accept a message the reference rejects.
    """
    raws, _ = _random_messages(400, seed=20240611)
    want_msgs, want_ok, want_bad = _reference(raws)

    batch, accepted, rejected = decode_batch(raws, NOW_S, LIMITS)

    assert accepted == want_ok
    assert [k for k, _ in rejected] == sorted(want_bad)
    for k, err in rejected:
        assert isinstance(err, TelemetryRejected), (k, raws[k], err)
        assert (err.reason, err.detail) == (want_bad[k].reason, want_bad[k].detail), raws[k]
    _assert_batches_equal(batch, messages_to_batch(want_msgs))

    # The test is only worth something if both paths and most reasons were exercised.
    n_fast = len(raws) - len(slow_calls)
    assert n_fast >= 80, n_fast
    assert len(want_ok) >= 120 and len(want_bad) >= 120, (len(want_ok), len(want_bad))
    reasons = Counter(err.reason for err in want_bad.values())
    assert set(reasons) == set(RejectReason) - tc.TWIN_REJECT_REASONS, reasons


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_decode_batch_agrees_message_by_message(seed: int) -> None:
    """Each random message alone gets the same verdict from decode_batch as from decode_message."""
    raws, _ = _random_messages(150, seed=seed)
    for raw in raws:
        want_msgs, want_ok, want_bad = _reference([raw])
        batch, accepted, rejected = decode_batch([raw], NOW_S, LIMITS)
        assert accepted == want_ok, raw
        assert [(k, e.reason) for k, e in rejected if isinstance(e, TelemetryRejected)] == [
            (k, e.reason) for k, e in want_bad.items()
        ], raw
        assert len(rejected) == len(want_bad)
        _assert_batches_equal(batch, messages_to_batch(want_msgs))


def test_decode_batch_rejects_ids_with_a_trailing_newline() -> None:
    """An id like 'v1\\n' breaks the id pattern on the fast path too (``$`` matches before a newline)."""
    raws = [
        ("fleet/v1\n/telemetry", _payload(_doc(vehicle_id="v1\n"))),
        (TOPIC, _payload(_doc(battery_id="b1\n"))),
    ]
    batch, accepted, rejected = decode_batch(raws, NOW_S)
    assert accepted == [] and batch.n_messages == 0
    assert [(k, e.reason) for k, e in rejected if isinstance(e, TelemetryRejected)] == [
        (0, RejectReason.SCHEMA_VIOLATION),
        (1, RejectReason.SCHEMA_VIOLATION),
    ]


def test_decode_batch_v1_cell_voltages_are_nan() -> None:
    """A v1 message on the fast path gets NaN cell voltages, as messages_to_batch gives."""
    raws = [(TOPIC, _payload(_doc([_sample(), _sample()], schema_version=1)))]
    batch, accepted, rejected = decode_batch(raws, NOW_S)
    assert (accepted, rejected) == ([0], [])
    assert (
        np.isnan(batch.columns["cell_min_v"]).all() and np.isnan(batch.columns["cell_max_v"]).all()
    )
    _assert_batches_equal(batch, messages_to_batch([decode_message(*raws[0], NOW_S)]))


def test_decode_batch_keeps_arrival_order_across_fast_and_slow_paths(slow_calls: list[str]) -> None:
    """Fast-path, slow-path and rejected messages interleaved come out in arrival order."""
    slow_good_a = _doc(battery_id="b-slow-a", seq=3.0)  # integral float seq: only pydantic accepts
    slow_good_b = _doc(
        [_sample(soc_pct="55.5"), _sample()], battery_id="b-slow-b"
    )  # numeric string
    fast_then_slow = _doc([_sample(), _sample(ts=NOW_S - 1.0)], battery_id="b-fast-c")
    raws = [
        ("fleet/v-1/telemetry", _payload(_doc([_sample()] * 2, battery_id="b-fast-a"))),
        ("fleet/v-1/telemetry", _payload(slow_good_a)),
        ("fleet/v-1/telemetry", _payload(_doc([_sample(soc_pct=101.0)], battery_id="b-bad"))),
        ("fleet/v-1/telemetry", _payload(_doc([_sample()] * 3, battery_id="b-fast-b", seq=1))),
        ("fleet/v-1/telemetry", _payload(slow_good_b)),
        ("fleet/v-1/telemetry", _payload(_doc(schema_version=1, battery_id="b-fast-v1",
                                              samples=[_sample()]))),
        ("fleet/v-1/telemetry", _payload(fast_then_slow)),
    ]  # fmt: skip
    batch, accepted, rejected = decode_batch(raws, NOW_S)

    assert len(slow_calls) == 3  # slow_good_a, slow_good_b and the out-of-range one
    assert accepted == [0, 1, 3, 4, 5, 6]
    assert [(k, e.reason) for k, e in rejected if isinstance(e, TelemetryRejected)] == [
        (2, RejectReason.OUT_OF_RANGE)
    ]
    assert list(batch.battery_ids) == [
        "b-fast-a",
        "b-slow-a",
        "b-fast-b",
        "b-slow-b",
        "b-fast-v1",
        "b-fast-c",
    ]
    np.testing.assert_array_equal(batch.msg_offsets, [0, 2, 3, 6, 8, 9, 11])
    want = messages_to_batch(
        [decode_message(t, p, NOW_S) for k, (t, p) in enumerate(raws) if k != 2]
    )
    _assert_batches_equal(batch, want)
    np.testing.assert_array_equal(batch.columns["soc_pct"][6:8], [55.5, 71.5])


def test_decode_batch_returns_unexpected_errors_as_rejections(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bug while decoding one message becomes that message's rejection; the rest go through."""
    original = tc.decode_message

    def failing(
        topic: str, payload: bytes, now_s: float, limits: ContractLimits = LIMITS
    ) -> TelemetryMessageV2:
        if b"b-boom" in payload:
            raise KeyError("boom")
        return original(topic, payload, now_s, limits)

    monkeypatch.setattr(tc, "decode_message", failing)
    raws = [
        (TOPIC, _payload(_doc(battery_id="b-ok"))),
        (TOPIC, _payload(_doc(battery_id="b-boom", seq=1.0))),  # goes to the slow path
        (TOPIC, _payload(_doc(battery_id="b-slow", seq=2.0))),
    ]
    batch, accepted, rejected = decode_batch(raws, NOW_S)
    assert accepted == [0, 2]
    assert list(batch.battery_ids) == ["b-ok", "b-slow"]
    assert len(rejected) == 1
    k, err = rejected[0]
    assert k == 1
    assert isinstance(err, KeyError) and not isinstance(err, TelemetryRejected)


def test_decode_batch_of_nothing_is_empty() -> None:
    """No messages give an empty batch and no verdicts."""
    batch, accepted, rejected = decode_batch([], NOW_S)
    assert (batch.n_messages, batch.n_samples, accepted, rejected) == (0, 0, [], [])


def test_decode_batch_applies_the_given_limits() -> None:
    """Payload size and clock limits passed to decode_batch apply on the fast path too."""
    payload = _payload(_doc([_sample(ts=NOW_S + 5.0)]))
    raws = [(TOPIC, payload)]
    _, accepted, _ = decode_batch(raws, NOW_S, ContractLimits(max_future_skew_s=10.0))
    assert accepted == [0]
    _, _, rejected = decode_batch(raws, NOW_S, ContractLimits(max_future_skew_s=1.0))
    assert [(k, e.reason) for k, e in rejected if isinstance(e, TelemetryRejected)] == [
        (0, RejectReason.FUTURE_TIMESTAMP)
    ]
    _, _, rejected = decode_batch(raws, NOW_S, ContractLimits(max_payload_bytes=len(payload) - 1))
    assert [(k, e.reason) for k, e in rejected if isinstance(e, TelemetryRejected)] == [
        (0, RejectReason.OVERSIZED)
    ]

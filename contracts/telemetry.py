"""The vehicle telemetry contract: topic, versioned payload schema and validation.

Vehicles publish to ``fleet/<vehicle_id>/telemetry`` a JSON object::

    {"schema_version": 2, "vehicle_id": "v-0001", "battery_id": "b-0001", "seq": 17,
     "samples": [{"ts": 1764170000.0, "pack_voltage_v": 41.2, "current_a": 6.5,
                  "temp_c": 28.0, "soc_pct": 71.5, "lat": 52.52, "lon": 13.40,
                  "odometer_km": 812.4, "speed_kmh": 18.0,
                  "cell_min_v": 3.71, "cell_max_v": 3.74}]}

``seq`` increases with every message of a battery (by one; a gap, e.g. after a vehicle
reboot that persisted its counter, is allowed); ``ts`` is Unix time in seconds (UTC);
``current_a`` is positive while discharging. The JSON Schemas in ``contracts/schemas/`` are
generated from the pydantic models below (``bms schema --write``) and a test keeps them equal.

Versions: the bridge accepts the current version (2) and the previous one (1, which had no
cell voltages). Each older version has an ``upgrade()`` to the current model, so everything
behind the bridge sees one shape. The README ("Telemetry contract") says how to add version 3.
"""

from __future__ import annotations

import itertools
import math
import operator
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, Literal

import annotated_types as at
import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from contracts.samples import SAMPLE_FIELDS, TelemetryBatch

__all__ = [
    "CURRENT_SCHEMA_VERSION",
    "ID_PATTERN",
    "SUPPORTED_SCHEMA_VERSIONS",
    "TOPIC_FILTER",
    "TWIN_REJECT_REASONS",
    "ContractLimits",
    "RejectReason",
    "RejectedMessage",
    "TelemetryMessageV1",
    "TelemetryMessageV2",
    "TelemetryRejected",
    "TelemetrySampleV1",
    "TelemetrySampleV2",
    "decode_batch",
    "decode_message",
    "json_schemas",
    "messages_to_batch",
    "topic_for",
]

CURRENT_SCHEMA_VERSION = 2
SUPPORTED_SCHEMA_VERSIONS = (1, 2)
TOPIC_FILTER = "fleet/+/telemetry"
_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
#: What a vehicle or battery id may look like; a vehicle's MQTT username is its id, so
#: ``bms vehicles provision`` checks ids against the same pattern.
ID_PATTERN = _ID_PATTERN
MAX_SAMPLES_PER_MESSAGE = 500


def topic_for(vehicle_id: str) -> str:
    """The MQTT topic a vehicle publishes its telemetry on."""
    return f"fleet/{vehicle_id}/telemetry"


class RejectReason(StrEnum):
    """Why a message went to the dead-letter store (one counter per reason).

    The bridge decides the first ten from the message alone (:func:`decode_message`); a
    twin decides the last three against what it already knows of the battery
    (``twins.twin_table``): the message is well-formed but cannot be this battery's.
    """

    OVERSIZED = "oversized"
    BAD_TOPIC = "bad_topic"
    MALFORMED_JSON = "malformed_json"
    UNKNOWN_VERSION = "unknown_version"
    SCHEMA_VIOLATION = "schema_violation"
    OUT_OF_RANGE = "out_of_range"
    NON_FINITE = "non_finite"
    TOPIC_MISMATCH = "topic_mismatch"
    FUTURE_TIMESTAMP = "future_timestamp"
    STALE_TIMESTAMP = "stale_timestamp"
    #: The battery reports from another vehicle than its twin's, with no swap in between.
    BATTERY_CLAIM_CONFLICT = "battery_claim_conflict"
    #: ``seq`` far ahead of or behind the battery's stream (forged, or a reset counter).
    SEQ_OUT_OF_RANGE = "seq_out_of_range"
    #: Physically impossible next to the battery's last sample (SoC or position jump).
    IMPLAUSIBLE_TELEMETRY = "implausible_telemetry"


#: The reasons a twin refuses a valid message for; the bridge's decoder never gives them.
TWIN_REJECT_REASONS: frozenset[RejectReason] = frozenset(
    {
        RejectReason.BATTERY_CLAIM_CONFLICT,
        RejectReason.SEQ_OUT_OF_RANGE,
        RejectReason.IMPLAUSIBLE_TELEMETRY,
    }
)


@dataclass(frozen=True)
class RejectedMessage:
    """A valid message a twin refused to apply.

    Parameters
    ----------
    index
        Position of the message in the batch that was applied.
    reason
        One of the twin's reasons (``battery_claim_conflict``, ``seq_out_of_range``,
        ``implausible_telemetry``).
    detail
        What was expected and what arrived.
    """

    index: int
    reason: RejectReason
    detail: str


class TelemetryRejected(ValueError):
    """A message that breaks the contract. ``reason`` is the counter; ``detail`` the why."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


# Physical bounds. A scooter pack is 10S-13S Li-ion: 10 x 2.5 V = 25 V empty at the
# smallest, 13 x 4.25 V = 55 V full at the largest; the bounds leave a margin for sensor
# error but reject a pack reading that no such battery can produce.
_SAMPLE_FIELDS_V1: dict[str, Any] = {
    "ts": Field(description="Sample time, Unix seconds (UTC)", gt=1.0e9, lt=1.0e10),
    "pack_voltage_v": Field(description="Pack voltage", ge=20.0, le=60.0),
    "current_a": Field(description="Pack current, positive while discharging", ge=-80.0, le=150.0),
    "temp_c": Field(description="Pack temperature", ge=-40.0, le=110.0),
    "soc_pct": Field(description="State of charge reported by the BMS", ge=0.0, le=100.0),
    "lat": Field(description="WGS84 latitude", ge=-90.0, le=90.0),
    "lon": Field(description="WGS84 longitude", ge=-180.0, le=180.0),
    "odometer_km": Field(description="Vehicle odometer", ge=0.0, le=1.0e6),
    "speed_kmh": Field(description="Vehicle speed", ge=0.0, le=90.0),
}

_MODEL_CONFIG = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, strict=False)


class TelemetrySampleV1(BaseModel):
    """One sample, schema version 1 (no cell voltages)."""

    model_config = _MODEL_CONFIG
    ts: float = _SAMPLE_FIELDS_V1["ts"]
    pack_voltage_v: float = _SAMPLE_FIELDS_V1["pack_voltage_v"]
    current_a: float = _SAMPLE_FIELDS_V1["current_a"]
    temp_c: float = _SAMPLE_FIELDS_V1["temp_c"]
    soc_pct: float = _SAMPLE_FIELDS_V1["soc_pct"]
    lat: float = _SAMPLE_FIELDS_V1["lat"]
    lon: float = _SAMPLE_FIELDS_V1["lon"]
    odometer_km: float = _SAMPLE_FIELDS_V1["odometer_km"]
    speed_kmh: float = _SAMPLE_FIELDS_V1["speed_kmh"]


class TelemetrySampleV2(TelemetrySampleV1):
    """One sample, schema version 2: adds the optional lowest and highest cell voltage."""

    cell_min_v: float | None = Field(default=None, description="Lowest cell voltage", ge=1.5, le=4.6)
    cell_max_v: float | None = Field(default=None, description="Highest cell voltage", ge=1.5, le=4.6)


_Id = Annotated[str, Field(pattern=_ID_PATTERN, description="Identifier: letters, digits, _ . : -")]


class TelemetryMessageV1(BaseModel):
    """Telemetry message, schema version 1 (previous; still accepted)."""

    model_config = _MODEL_CONFIG
    schema_version: Literal[1]
    vehicle_id: _Id
    battery_id: _Id
    seq: int = Field(ge=0, lt=2**62, description="Per-battery message number, +1 per message")
    samples: list[TelemetrySampleV1] = Field(min_length=1, max_length=MAX_SAMPLES_PER_MESSAGE)

    def upgrade(self) -> TelemetryMessageV2:
        """The same message in the current schema (cell voltages unknown)."""
        return TelemetryMessageV2(
            schema_version=2,
            vehicle_id=self.vehicle_id,
            battery_id=self.battery_id,
            seq=self.seq,
            samples=[TelemetrySampleV2(**s.model_dump()) for s in self.samples],
        )


class TelemetryMessageV2(BaseModel):
    """Telemetry message, schema version 2 (current)."""

    model_config = _MODEL_CONFIG
    schema_version: Literal[2]
    vehicle_id: _Id
    battery_id: _Id
    seq: int = Field(ge=0, lt=2**62, description="Per-battery message number, +1 per message")
    samples: list[TelemetrySampleV2] = Field(min_length=1, max_length=MAX_SAMPLES_PER_MESSAGE)


_AnyMessage = Annotated[TelemetryMessageV1 | TelemetryMessageV2, Field(discriminator="schema_version")]
_ADAPTER: TypeAdapter[TelemetryMessageV1 | TelemetryMessageV2] = TypeAdapter(_AnyMessage)


def json_schemas() -> dict[int, dict[str, Any]]:
    """The JSON Schema of each supported version, as committed under ``contracts/schemas/``."""
    out: dict[int, dict[str, Any]] = {}
    for version, model in ((1, TelemetryMessageV1), (2, TelemetryMessageV2)):
        schema = model.model_json_schema()
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"https://bms-fleet-twin.example/schemas/telemetry-v{version}.json"
        schema["x-topic"] = "fleet/<vehicle_id>/telemetry"
        out[version] = schema
    return out


@dataclass(frozen=True)
class ContractLimits:
    """Checks that depend on configuration or on the clock rather than on the schema."""

    max_payload_bytes: int = 256 * 1024
    max_future_skew_s: float = 120.0
    max_age_s: float = 7 * 24 * 3600.0

    def __post_init__(self) -> None:
        if self.max_payload_bytes <= 0:
            raise ValueError(f"Expected max_payload_bytes > 0, got {self.max_payload_bytes}.")
        if self.max_future_skew_s < 0 or self.max_age_s <= 0:
            raise ValueError(
                f"Expected max_future_skew_s >= 0 and max_age_s > 0, got "
                f"{self.max_future_skew_s} and {self.max_age_s}."
            )


_RANGE_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}


def _classify(err: ValidationError) -> TelemetryRejected:
    errors = err.errors(include_url=False)
    types = {e["type"] for e in errors}
    if "json_invalid" in types or "json_type" in types:
        reason = RejectReason.MALFORMED_JSON
    elif "finite_number" in types:
        reason = RejectReason.NON_FINITE
    elif types & {"union_tag_invalid", "union_tag_not_found"}:
        reason = RejectReason.UNKNOWN_VERSION
    elif types <= _RANGE_ERRORS:
        reason = RejectReason.OUT_OF_RANGE
    else:
        reason = RejectReason.SCHEMA_VIOLATION
    parts = []
    for e in errors[:3]:
        loc = ".".join(str(x) for x in e["loc"])
        got = repr(e.get("input"))
        if len(got) > 60:
            got = got[:57] + "..."
        parts.append(f"{loc or '<root>'}: {e['msg']} (got {got})")
    more = f" and {len(errors) - 3} more" if len(errors) > 3 else ""
    return TelemetryRejected(reason, "; ".join(parts) + more)


def vehicle_from_topic(topic: str) -> str:
    """The vehicle id in ``fleet/<vehicle_id>/telemetry``, or :class:`TelemetryRejected`."""
    parts = topic.split("/")
    if len(parts) != 3 or parts[0] != "fleet" or parts[2] != "telemetry" or not parts[1]:
        raise TelemetryRejected(
            RejectReason.BAD_TOPIC, f"expected topic 'fleet/<vehicle_id>/telemetry', got {topic!r}"
        )
    return parts[1]


def decode_message(
    topic: str, payload: bytes, now_s: float, limits: ContractLimits = ContractLimits()
) -> TelemetryMessageV2:
    """Validate one MQTT message and return it in the current schema.

    Raises
    ------
    TelemetryRejected
        With the reason counter and a message that says what was expected and what arrived.
    """
    if len(payload) > limits.max_payload_bytes:
        raise TelemetryRejected(
            RejectReason.OVERSIZED,
            f"expected at most {limits.max_payload_bytes} bytes, got {len(payload)}",
        )
    topic_vehicle = vehicle_from_topic(topic)
    try:
        msg = _ADAPTER.validate_json(payload)
    except ValidationError as err:
        raise _classify(err) from None
    if msg.vehicle_id != topic_vehicle:
        raise TelemetryRejected(
            RejectReason.TOPIC_MISMATCH,
            f"payload vehicle_id {msg.vehicle_id!r} differs from topic vehicle {topic_vehicle!r}",
        )
    ts_max = max(s.ts for s in msg.samples)
    ts_min = min(s.ts for s in msg.samples)
    if ts_max > now_s + limits.max_future_skew_s:
        raise TelemetryRejected(
            RejectReason.FUTURE_TIMESTAMP,
            f"expected ts <= now + {limits.max_future_skew_s:g} s, got a sample "
            f"{ts_max - now_s:.1f} s in the future",
        )
    if ts_min < now_s - limits.max_age_s:
        raise TelemetryRejected(
            RejectReason.STALE_TIMESTAMP,
            f"expected ts >= now - {limits.max_age_s:g} s, got a sample "
            f"{now_s - ts_min:.0f} s old",
        )
    if isinstance(msg, TelemetryMessageV1):
        return msg.upgrade()
    return msg


def messages_to_batch(
    messages: list[TelemetryMessageV2], received_at_s: list[float] | None = None
) -> TelemetryBatch:
    """Columnar form of validated messages (missing cell voltages become NaN)."""
    counts = np.fromiter((len(m.samples) for m in messages), dtype=np.int64, count=len(messages))
    offsets = np.zeros(len(messages) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    n = int(offsets[-1])
    samples = [s for m in messages for s in m.samples]
    nan = math.nan
    columns = {}
    for name in SAMPLE_FIELDS:
        if name in ("cell_min_v", "cell_max_v"):
            it = (nan if (x := getattr(s, name)) is None else x for s in samples)
        else:
            it = (getattr(s, name) for s in samples)
        columns[name] = np.fromiter(it, dtype=np.float64, count=n)
    return TelemetryBatch(
        battery_ids=[m.battery_id for m in messages],
        vehicle_ids=[m.vehicle_id for m in messages],
        seqs=np.fromiter((m.seq for m in messages), dtype=np.int64, count=len(messages)),
        msg_offsets=offsets,
        columns=columns,
        received_at_s=np.asarray(
            received_at_s if received_at_s is not None else [0.0] * len(messages), dtype=np.float64
        ),
    )


# ---------------------------------------------------------------------------- fast path
# Validating with pydantic costs about 3 us a sample here (model objects, then columns);
# a bridge worker must do tens of thousands of samples a second. decode_batch() parses with
# orjson and checks a whole micro-batch with numpy. It only ever *accepts*: any message it
# has the least doubt about goes through decode_message(), whose verdict (and reason) is
# final, so both paths accept exactly the same messages (tests/unit/serve checks this).

_ID_RE = re.compile(_ID_PATTERN)
_MSG_KEYS = frozenset(TelemetryMessageV2.model_fields)
_REQUIRED = tuple(TelemetrySampleV1.model_fields)
_OPTIONAL = tuple(k for k in TelemetrySampleV2.model_fields if k not in TelemetrySampleV1.model_fields)
_ALLOWED = {1: frozenset(_REQUIRED), 2: frozenset(_REQUIRED + _OPTIONAL)}
_NUMBER = (float, int)


def _bounds(model: type[BaseModel], name: str) -> tuple[float, float, bool, bool]:
    lo, hi, lo_inc, hi_inc = -math.inf, math.inf, True, True
    for m in model.model_fields[name].metadata:
        if isinstance(m, at.Ge):
            lo = float(m.ge)  # type: ignore[arg-type]
        elif isinstance(m, at.Gt):
            lo, lo_inc = float(m.gt), False  # type: ignore[arg-type]
        elif isinstance(m, at.Le):
            hi = float(m.le)  # type: ignore[arg-type]
        elif isinstance(m, at.Lt):
            hi, hi_inc = float(m.lt), False  # type: ignore[arg-type]
    return lo, hi, lo_inc, hi_inc


_FIELD_BOUNDS = {name: _bounds(TelemetrySampleV2, name) for name in SAMPLE_FIELDS}
_SEQ_MAX = 2**62


def _in_bounds(x: np.ndarray, name: str) -> np.ndarray:
    lo, hi, lo_inc, hi_inc = _FIELD_BOUNDS[name]
    ok = (x >= lo) if lo_inc else (x > lo)
    ok &= (x <= hi) if hi_inc else (x < hi)
    return ok


_GET_REQUIRED = operator.itemgetter(*_REQUIRED)
_NUMBER_TYPES = frozenset((float, int))
_OPT_TYPES = frozenset((float, int, type(None)))

# (vehicle_id, battery_id, seq, required values per sample, optional values or None)
_FastMsg = tuple[str, str, int, list[tuple[Any, ...]], list[tuple[Any, ...]] | None]


def _fast_columns(doc: object, topic_vehicle: str) -> _FastMsg | None:
    """Values of a message that is well-formed at first sight, else None (slow path)."""
    if type(doc) is not dict or doc.keys() != _MSG_KEYS:
        return None
    version = doc["schema_version"]
    vid, bid, seq, samples = doc["vehicle_id"], doc["battery_id"], doc["seq"], doc["samples"]
    if (
        type(version) is not int or version not in _ALLOWED
        or type(vid) is not str or type(bid) is not str or vid != topic_vehicle
        # fullmatch, not match: Python's ``$`` also matches before a trailing "\n", which
        # pydantic's (Rust) pattern rejects, so match() let ids like "v1\n" through here.
        or not _ID_RE.fullmatch(vid) or not _ID_RE.fullmatch(bid)
        or type(seq) is not int or not 0 <= seq < _SEQ_MAX
        or type(samples) is not list or not 1 <= len(samples) <= MAX_SAMPLES_PER_MESSAGE
    ):
        return None
    allowed = _ALLOWED[version]
    n_req = len(_REQUIRED)
    has_optional = False
    for smp in samples:
        if type(smp) is not dict or not smp.keys() <= allowed:
            return None
        has_optional |= len(smp) != n_req
    try:
        rows = list(map(_GET_REQUIRED, samples))  # KeyError: a required field is missing
    except KeyError:
        return None
    # bool is not a number here (pydantic decides on such messages).
    if not set(map(type, itertools.chain.from_iterable(rows))) <= _NUMBER_TYPES:
        return None
    opt = None
    if has_optional:
        opt = [tuple(smp.get(k) for k in _OPTIONAL) for smp in samples]
        if not set(map(type, itertools.chain.from_iterable(opt))) <= _OPT_TYPES:
            return None
    return vid, bid, seq, rows, opt


def decode_batch(
    raws: Sequence[tuple[str, bytes]],
    now_s: float,
    limits: ContractLimits = ContractLimits(),
) -> tuple[TelemetryBatch, list[int], list[tuple[int, TelemetryRejected | Exception]]]:
    """Validate many messages at once.

    Returns
    -------
    batch
        The accepted messages, columnar, in arrival order.
    accepted
        Index in ``raws`` of each message of ``batch``.
    rejected
        ``(index, error)`` for every other message: :class:`TelemetryRejected` with the
        reason, or any other exception raised while decoding it (a bug of ours).
    """
    slow: list[int] = []
    fast_idx: list[int] = []
    parts: list[_FastMsg] = []
    for k, (topic, payload) in enumerate(raws):
        got = None
        if len(payload) <= limits.max_payload_bytes:
            parts_t = topic.split("/")
            if len(parts_t) == 3 and parts_t[0] == "fleet" and parts_t[2] == "telemetry" and parts_t[1]:
                try:
                    got = _fast_columns(orjson.loads(payload), parts_t[1])
                except Exception:  # malformed JSON, or anything odd: the slow path decides
                    got = None
        if got is None:
            slow.append(k)
        else:
            fast_idx.append(k)
            parts.append(got)

    if parts:
        counts = np.fromiter((len(p[3]) for p in parts), dtype=np.int64, count=len(parts))
        req = np.array(list(itertools.chain.from_iterable(p[3] for p in parts)), dtype=np.float64)
        columns = {name: req[:, i] for i, name in enumerate(_REQUIRED)}
        opt_rows = itertools.chain.from_iterable(
            p[4] if p[4] is not None else [(None,) * len(_OPTIONAL)] * len(p[3]) for p in parts
        )
        opt_arr = np.array(list(opt_rows), dtype=np.float64)  # None becomes NaN
        for i, name in enumerate(_OPTIONAL):
            columns[name] = opt_arr[:, i]
        ok = np.ones(len(columns["ts"]), dtype=bool)
        for name in SAMPLE_FIELDS:
            col = columns[name]
            if name in _OPTIONAL:
                ok &= np.isnan(col) | _in_bounds(col, name)
            else:
                ok &= _in_bounds(col, name)
        ts = columns["ts"]
        ok &= ts <= now_s + limits.max_future_skew_s
        ok &= ts >= now_s - limits.max_age_s
        starts = np.zeros(len(parts), dtype=np.int64)
        np.cumsum(counts[:-1], out=starts[1:])
        msg_ok = np.logical_and.reduceat(ok, starts)
        if not msg_ok.all():
            slow.extend(fast_idx[i] for i in np.flatnonzero(~msg_ok).tolist())
            keep = np.repeat(msg_ok, counts)
            columns = {k: v[keep] for k, v in columns.items()}
            parts = [p for p, good in zip(parts, msg_ok.tolist(), strict=True) if good]
            fast_idx = [i for i, good in zip(fast_idx, msg_ok.tolist(), strict=True) if good]
            counts = counts[msg_ok]
        offsets = np.zeros(len(parts) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        fast_batch = TelemetryBatch(
            battery_ids=[p[1] for p in parts],
            vehicle_ids=[p[0] for p in parts],
            seqs=np.fromiter((p[2] for p in parts), dtype=np.int64, count=len(parts)),
            msg_offsets=offsets,
            columns=columns,
        )
    else:
        fast_batch = TelemetryBatch.empty()

    rejected: list[tuple[int, TelemetryRejected | Exception]] = []
    slow_msgs: list[TelemetryMessageV2] = []
    slow_ok: list[int] = []
    for k in sorted(slow):
        topic, payload = raws[k]
        try:
            slow_msgs.append(decode_message(topic, payload, now_s, limits))
            slow_ok.append(k)
        except TelemetryRejected as err:
            rejected.append((k, err))
        except Exception as err:  # never let one message take the batch down
            rejected.append((k, err))
    if not slow_msgs:
        return fast_batch, fast_idx, rejected
    # Merge back into arrival order (the shard sorts by time anyway; order is for humans).
    merged = TelemetryBatch.concat([fast_batch, messages_to_batch(slow_msgs)])
    order = np.argsort(np.array(fast_idx + slow_ok), kind="stable")
    return _reorder(merged, order), sorted(fast_idx + slow_ok), rejected


def _reorder(batch: TelemetryBatch, order: np.ndarray) -> TelemetryBatch:
    offs = batch.msg_offsets
    counts = np.diff(offs)[order]
    idx = np.concatenate([np.arange(offs[k], offs[k + 1]) for k in order.tolist()]) if len(order) else np.zeros(0, np.int64)
    offsets = np.zeros(len(order) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return TelemetryBatch(
        battery_ids=[batch.battery_ids[k] for k in order.tolist()],
        vehicle_ids=[batch.vehicle_ids[k] for k in order.tolist()],
        seqs=batch.seqs[order],
        msg_offsets=offsets,
        columns={k: v[idx] for k, v in batch.columns.items()},
        received_at_s=batch.recv[order],
    )

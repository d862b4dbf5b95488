"""Tests for :mod:`serve.mqtt_bridge`: validation, delivery and counters of one worker.

No broker: the bridge is built with a fake router and dead-letter sink, and ``decode`` and
``process`` are called with raw ``(topic, payload, received_at_s, mid, qos, generation)``
tuples as the MQTT reader would queue them.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Sequence
from typing import Any

import numpy as np
import pytest

from contracts.samples import TelemetryBatch
from contracts.telemetry import ContractLimits, RejectReason
from serve.mqtt_bridge import BridgeConfig, MqttBridge
from store.dead_letters import DeadLetter
from twins.clock import ManualClock

NOW_S = 1.8e9


class FakeRouter:
    """Records every batch; raises ``fail_times`` times first; counts each sample as applied."""

    def __init__(self, fail_times: int = 0, duplicate_messages: int = 0) -> None:
        self.batches: list[TelemetryBatch] = []
        self.calls = 0
        self.fail_times = fail_times
        self.duplicate_messages = duplicate_messages

    async def submit(self, batch: TelemetryBatch) -> Awaitable[dict[str, int]]:
        return self.route(batch)

    async def route(self, batch: TelemetryBatch) -> dict[str, int]:
        self.calls += 1
        if self.calls <= self.fail_times:
            raise ConnectionError("shard restarting")
        self.batches.append(batch)
        n = batch.n_samples
        return {
            "accepted_samples": n,
            "applied_samples": n,
            "late_samples": 0,
            "duplicate_messages": self.duplicate_messages,
        }


class FakeDeadLetters:
    """Records every list of dead letters it is given."""

    def __init__(self) -> None:
        self.recorded: list[list[DeadLetter]] = []

    async def record(self, letters: Sequence[DeadLetter]) -> None:
        self.recorded.append(list(letters))


def _payload(battery_id: str = "b-1", n_samples: int = 1, **sample: Any) -> bytes:
    s = {
        "ts": NOW_S - 10.0, "pack_voltage_v": 41.2, "current_a": 6.5, "temp_c": 28.0,
        "soc_pct": 71.5, "lat": 52.52, "lon": 13.40, "odometer_km": 812.4, "speed_kmh": 18.0,
    }  # fmt: skip
    s.update(sample)
    doc = {"schema_version": 2, "vehicle_id": "v-1", "battery_id": battery_id, "seq": 1,
           "samples": [s] * n_samples}  # fmt: skip
    return json.dumps(doc).encode()


def _raw(
    payload: bytes, received_at_s: float, topic: str = "fleet/v-1/telemetry", mid: int = 1
) -> tuple[str, bytes, float, int, int, int]:
    return (topic, payload, received_at_s, mid, 1, 1)


@pytest.fixture
def router() -> FakeRouter:
    """A router that always succeeds."""
    return FakeRouter()


@pytest.fixture
def dead_letters() -> FakeDeadLetters:
    """An empty dead-letter recorder."""
    return FakeDeadLetters()


def _bridge(router: FakeRouter, dead_letters: FakeDeadLetters, **config: Any) -> MqttBridge:
    return MqttBridge(
        BridgeConfig(host="127.0.0.1", port=1, **config),
        router,
        dead_letters,
        clock=ManualClock(NOW_S),
    )


@pytest.fixture
def mixed() -> list[tuple[str, bytes, float, int, int, int]]:
    """Two good messages (2 and 3 samples) around three bad ones, received at t = 1..5 s."""
    return [
        _raw(_payload("b-good-1", n_samples=2), 1.0, mid=1),
        _raw(_payload("b-hot", temp_c=200.0), 2.0, mid=2),
        _raw(b"{not json", 3.0, mid=3),
        _raw(_payload("b-good-2", n_samples=3), 4.0, mid=4),
        _raw(_payload("b-x"), 5.0, topic="fleet//telemetry", mid=5),
    ]


def test_decode_splits_good_and_bad(
    router: FakeRouter, dead_letters: FakeDeadLetters, mixed: list[Any]
) -> None:
    """Good messages form the batch with their receive times; bad ones become dead letters."""
    batch, letters = _bridge(router, dead_letters).decode(mixed)
    assert list(batch.battery_ids) == ["b-good-1", "b-good-2"]
    np.testing.assert_array_equal(batch.msg_offsets, [0, 2, 5])
    np.testing.assert_array_equal(batch.recv, [1.0, 4.0])
    assert [(d.topic, d.reason, d.payload, d.received_at_s) for d in letters] == [
        ("fleet/v-1/telemetry", RejectReason.OUT_OF_RANGE.value, mixed[1][1], 2.0),
        ("fleet/v-1/telemetry", RejectReason.MALFORMED_JSON.value, mixed[2][1], 3.0),
        ("fleet//telemetry", RejectReason.BAD_TOPIC.value, mixed[4][1], 5.0),
    ]
    assert "temp_c" in letters[0].detail and "got 200.0" in letters[0].detail


def test_decode_uses_the_injected_clock_and_limits(
    router: FakeRouter, dead_letters: FakeDeadLetters
) -> None:
    """Timestamp checks use the bridge's clock and the config's limits, not the wall clock."""
    bridge = _bridge(router, dead_letters, limits=ContractLimits(max_future_skew_s=5.0))
    raws = [_raw(_payload(ts=NOW_S + 4.0), 1.0), _raw(_payload(ts=NOW_S + 6.0), 2.0)]
    batch, letters = bridge.decode(raws)
    assert batch.n_messages == 1
    assert [d.reason for d in letters] == [RejectReason.FUTURE_TIMESTAMP.value]


def test_decode_dead_letters_unexpected_errors_as_internal_error(
    router: FakeRouter, dead_letters: FakeDeadLetters, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unexpected exception while decoding a message dead-letters it as internal_error."""
    import serve.mqtt_bridge as mb

    def broken(raws: Any, now_s: float, limits: ContractLimits) -> Any:
        return TelemetryBatch.empty(), [], [(0, RuntimeError("bug"))]

    monkeypatch.setattr(mb, "decode_batch", broken)
    batch, letters = _bridge(router, dead_letters).decode([_raw(_payload(), 7.0)])
    assert batch.n_messages == 0
    assert [(d.reason, d.received_at_s) for d in letters] == [("internal_error", 7.0)]
    assert "RuntimeError('bug')" in letters[0].detail


async def test_process_routes_good_dead_letters_bad_and_counts(
    router: FakeRouter, dead_letters: FakeDeadLetters, mixed: list[Any]
) -> None:
    """process() sends the good batch to the router, the rejects to the sink, and counts both."""
    bridge = _bridge(router, dead_letters)
    await bridge.process(mixed)
    assert [list(b.battery_ids) for b in router.batches] == [["b-good-1", "b-good-2"]]
    assert [[d.reason for d in ls] for ls in dead_letters.recorded] == [
        ["out_of_range", "malformed_json", "bad_topic"]
    ]
    s = bridge.stats()
    assert (s.received_messages, s.accepted_messages, s.rejected_messages, s.batches) == (
        5,
        2,
        3,
        1,
    )
    assert (s.accepted_samples, s.applied_samples, s.late_samples, s.duplicate_messages) == (
        5,
        5,
        0,
        0,
    )
    assert s.rejected_by_reason == {"out_of_range": 1, "malformed_json": 1, "bad_topic": 1}
    assert (s.inflight_batches, s.connected, s.reconnects) == (0, False, 0)


async def test_process_accumulates_over_batches(
    router: FakeRouter, dead_letters: FakeDeadLetters
) -> None:
    """Counters add up over batches; an all-good batch records no dead letters."""
    bridge = _bridge(router, dead_letters)
    await bridge.process([_raw(_payload("b-1"), 1.0)])
    await bridge.process([_raw(_payload("b-2", n_samples=4), 2.0), _raw(b"[", 2.0)])
    assert [len(ls) for ls in dead_letters.recorded] == [1]
    s = bridge.stats()
    assert (s.received_messages, s.accepted_messages, s.accepted_samples, s.batches) == (3, 2, 5, 2)
    assert s.rejected_by_reason == {"malformed_json": 1}


async def test_process_with_only_rejects_skips_the_router(
    router: FakeRouter, dead_letters: FakeDeadLetters
) -> None:
    """A batch without a single good message is not sent to the shards."""
    bridge = _bridge(router, dead_letters)
    await bridge.process([_raw(b"nope", 1.0), _raw(_payload(soc_pct=101.0), 2.0)])
    assert router.calls == 0
    assert [[d.reason for d in ls] for ls in dead_letters.recorded] == [
        ["malformed_json", "out_of_range"]
    ]
    s = bridge.stats()
    assert (s.received_messages, s.accepted_messages, s.rejected_messages, s.batches) == (
        2,
        0,
        2,
        1,
    )


async def test_process_retries_a_failed_delivery_and_counts_once(
    dead_letters: FakeDeadLetters, mixed: list[Any]
) -> None:
    """When the router fails once, process() retries, delivers once and counts the batch once."""
    router = FakeRouter(fail_times=1)
    bridge = _bridge(router, dead_letters)
    await bridge.process(mixed)
    assert router.calls == 2
    assert len(router.batches) == 1
    assert len(dead_letters.recorded) == 1
    s = bridge.stats()
    assert (s.received_messages, s.accepted_messages, s.accepted_samples, s.batches) == (5, 2, 5, 1)
    assert s.rejected_by_reason == {"out_of_range": 1, "malformed_json": 1, "bad_topic": 1}


class FlakyDeadLetters(FakeDeadLetters):
    """Fails the first write (a database blip), then records."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    async def record(self, letters: Sequence[DeadLetter]) -> None:
        self.calls += 1
        if self.calls == 1:
            raise ConnectionError("postgres blip")
        await super().record(letters)


async def test_failed_dead_letter_write_does_not_resend_the_batch(mixed: list[Any]) -> None:
    """If only the dead-letter write fails, the retry stores the letters without re-routing.

    Re-routing the delivered batch would make the shards report it as duplicates, and the
    stats would lose its accepted messages and applied samples.
    """
    router, dead_letters = FakeRouter(), FlakyDeadLetters()
    bridge = _bridge(router, dead_letters)
    await bridge.process(mixed)
    assert router.calls == 1
    assert dead_letters.calls == 2 and len(dead_letters.recorded) == 1
    s = bridge.stats()
    assert (s.accepted_messages, s.applied_samples, s.rejected_messages, s.batches) == (2, 5, 3, 1)


async def test_process_gives_up_retrying_once_stopped(
    dead_letters: FakeDeadLetters, mixed: list[Any]
) -> None:
    """A stopped bridge stops retrying: nothing is counted (the broker redelivers the batch)."""
    router = FakeRouter(fail_times=10)
    bridge = _bridge(router, dead_letters)
    bridge.stop()
    await bridge.process(mixed)
    assert router.calls == 1
    assert bridge.stats().received_messages == 0


async def test_duplicates_are_not_counted_as_accepted(dead_letters: FakeDeadLetters) -> None:
    """Messages the shards report as duplicates are left out of accepted_messages."""
    router = FakeRouter(duplicate_messages=1)
    bridge = _bridge(router, dead_letters)
    await bridge.process([_raw(_payload("b-1"), 1.0), _raw(_payload("b-2"), 1.0)])
    s = bridge.stats()
    assert (s.accepted_messages, s.duplicate_messages) == (1, 1)


@pytest.mark.parametrize(
    ("config", "topic"),
    [
        ({}, "fleet/+/telemetry"),
        ({"shared_subscription": True}, "$share/bms/fleet/+/telemetry"),
        ({"shared_subscription": True, "share_group": "west"}, "$share/west/fleet/+/telemetry"),
        ({"share_group": "west"}, "fleet/+/telemetry"),
    ],
)
def test_topic_with_and_without_shared_subscription(config: dict[str, Any], topic: str) -> None:
    """Workers subscribe to the telemetry filter, under $share/<group>/ when sharing."""
    assert BridgeConfig(host="127.0.0.1", port=1, **config).topic == topic


def test_client_id_names_the_worker() -> None:
    """The MQTT client id is '<prefix>-<worker_index>' (stable, so the session persists)."""
    assert BridgeConfig(host="h", port=1).client_id == "bms-bridge-0"
    assert (
        BridgeConfig(host="h", port=1, worker_index=3, client_id_prefix="edge").client_id
        == "edge-3"
    )


def test_fresh_bridge_stats_are_zero(router: FakeRouter, dead_letters: FakeDeadLetters) -> None:
    """A bridge that has processed nothing reports zero counters and is not connected."""
    s = _bridge(router, dead_letters).stats()
    assert (s.received_messages, s.batches, s.rejected_by_reason, s.connected) == (0, 0, {}, False)


class _SlowFirstRouter:
    """Placement of the first batch is slow (new batteries wait on the directory)."""

    def __init__(self) -> None:
        self.submitted: list[list[str]] = []
        self.calls = 0

    async def submit(self, batch: TelemetryBatch) -> Awaitable[dict[str, int]]:
        import asyncio

        self.calls += 1
        if self.calls == 1:
            await asyncio.sleep(0.05)
        self.submitted.append(list(batch.battery_ids))

        async def done() -> dict[str, int]:
            return {"accepted_samples": batch.n_samples}

        return done()


async def test_batches_reach_the_router_in_arrival_order(dead_letters: FakeDeadLetters) -> None:
    """A batch whose placement is slow is not overtaken by the next one: shards must see a
    battery's messages in order, or its older samples would be taken as late."""
    import asyncio

    router = _SlowFirstRouter()
    bridge = MqttBridge(BridgeConfig(host="127.0.0.1", port=1), router, dead_letters, clock=ManualClock(NOW_S))
    first = asyncio.create_task(bridge.process([_raw(_payload("b-1"), 1.0, mid=1)]))
    second = asyncio.create_task(bridge.process([_raw(_payload("b-2"), 2.0, mid=2)]))
    await asyncio.gather(first, second)
    assert router.submitted == [["b-1"], ["b-2"]]

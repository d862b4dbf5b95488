"""Tests for :mod:`serve.mqtt_bridge`: validation, delivery and counters of one worker.

No broker: the bridge is built with a fake router and dead-letter sink, and ``decode`` and
``process`` are called with raw ``(topic, payload, received_at_s, mid, qos, generation)``
tuples as the MQTT reader would queue them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import Awaitable, Sequence
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from contracts.errors import Unavailable
from contracts.samples import TelemetryBatch
from contracts.telemetry import ContractLimits, RejectedMessage, RejectReason
from serve.mqtt_bridge import BridgeConfig, MqttBridge
from store.dead_letters import DeadLetter
from twins.clock import ManualClock
from twins.shard import IngestReport

NOW_S = 1.8e9


def _report(**counts: Any) -> IngestReport:
    """An IngestReport with zero for every count not given."""
    names = [f.name for f in dataclasses.fields(IngestReport) if f.name != "rejected"]
    return IngestReport(**{k: counts.pop(k, 0) for k in names}, **counts)


class FakeRouter:
    """Records every batch; raises ``fail_times`` times first; counts each sample as applied,
    except the messages of the batteries in ``refuse``, which the twins refuse with that reason."""

    def __init__(
        self, fail_times: int = 0, duplicate_messages: int = 0, refuse: dict[str, RejectReason] | None = None
    ) -> None:
        self.batches: list[TelemetryBatch] = []
        self.calls = 0
        self.fail_times = fail_times
        self.duplicate_messages = duplicate_messages
        self.refuse = refuse or {}

    async def submit(self, batch: TelemetryBatch) -> Awaitable[IngestReport]:
        """Fails (queueing nothing) the first ``fail_times`` calls, as a directory or shard
        out of reach at submit time does; the bridge retries before the next batch."""
        self.calls += 1
        if self.calls <= self.fail_times:
            raise ConnectionError("shard restarting")
        return self.deliver(batch)

    async def route(self, batch: TelemetryBatch) -> IngestReport:
        return await (await self.submit(batch))

    async def deliver(self, batch: TelemetryBatch) -> IngestReport:
        self.batches.append(batch)
        refused = tuple(
            RejectedMessage(k, self.refuse[b], f"twin refused {b}")
            for k, b in enumerate(batch.battery_ids) if b in self.refuse
        )  # fmt: skip
        counts = np.diff(batch.msg_offsets)
        n = batch.n_samples - int(sum(counts[r.index] for r in refused))
        return _report(
            accepted_samples=n, applied_samples=n, duplicate_messages=self.duplicate_messages,
            rejected=refused,
        )  # fmt: skip


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


async def test_messages_the_twins_refuse_are_dead_lettered_acked_and_counted(
    dead_letters: FakeDeadLetters, mixed: list[Any]
) -> None:
    """A valid message its twin refuses becomes a dead letter with the twin's reason and
    detail, its own topic, raw payload and receive time (found through the batch index the
    shards report), is counted as rejected, not accepted, and is acknowledged with the rest."""
    router = FakeRouter(refuse={"b-good-2": RejectReason.BATTERY_CLAIM_CONFLICT})
    bridge = _bridge(router, dead_letters)
    paho = _connected(bridge)
    await bridge.process(mixed)
    (stored,) = dead_letters.recorded
    assert [d.reason for d in stored] == [
        "out_of_range", "malformed_json", "bad_topic", "battery_claim_conflict",
    ]  # fmt: skip
    refused = stored[3]
    assert (refused.topic, refused.payload, refused.received_at_s) == (mixed[3][0], mixed[3][1], 4.0)
    assert refused.detail == "twin refused b-good-2"
    assert sorted(paho.acked) == [1, 2, 3, 4, 5]
    s = bridge.stats()
    assert (s.received_messages, s.accepted_messages, s.rejected_messages) == (5, 1, 4)
    assert s.rejected_by_reason["battery_claim_conflict"] == 1
    assert s.accepted_samples == 2


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

    async def submit(self, batch: TelemetryBatch) -> Awaitable[IngestReport]:
        import asyncio

        self.calls += 1
        if self.calls == 1:
            await asyncio.sleep(0.05)
        self.submitted.append(list(batch.battery_ids))

        async def done() -> IngestReport:
            return _report(accepted_samples=batch.n_samples)

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


# -- bounded routing retries --------------------------------------------------------------


class FakePaho:
    """Stands in for the paho client inside aiomqtt: records the mids acknowledged."""

    def __init__(self) -> None:
        self.acked: list[int] = []

    def ack(self, mid: int, qos: int) -> None:
        self.acked.append(mid)


def _connected(bridge: MqttBridge) -> FakePaho:
    """Give ``bridge`` a fake connection (generation 1, as ``_raw`` tags messages), so
    ``process`` acknowledges through it."""
    paho = FakePaho()
    bridge._client = SimpleNamespace(_client=paho)  # type: ignore[assignment]
    bridge._generation = 1
    return paho


class PoisonRouter(FakeRouter):
    """Refuses every batch holding battery ``b-poison`` with a very long error; takes the rest."""

    async def deliver(self, batch: TelemetryBatch) -> IngestReport:
        # The shards' error, after the router's own in-order retries: final for the bridge.
        if "b-poison" in list(batch.battery_ids):
            raise RuntimeError("shard rejected the batch: " + "x" * 2000)
        return await super().deliver(batch)


async def test_batch_the_shards_always_refuse_is_dead_lettered_acked_and_counted(
    dead_letters: FakeDeadLetters, mixed: list[Any]
) -> None:
    """After max_batch_attempts failed routings, each valid message of the batch becomes a
    routing_failed dead letter (same topic, payload and receive time, the last error in the
    detail), stored with the batch's rejects; every message is acknowledged and counted."""
    router = FakeRouter(fail_times=1_000)
    bridge = _bridge(router, dead_letters, max_batch_attempts=3, retry_backoff_s=0.0)
    paho = _connected(bridge)
    await asyncio.wait_for(bridge.process(mixed), 5.0)
    assert router.calls == 3 and router.batches == []
    (stored,) = dead_letters.recorded
    assert [(d.topic, d.reason, d.payload, d.received_at_s) for d in stored[3:]] == [
        ("fleet/v-1/telemetry", "routing_failed", mixed[0][1], 1.0),
        ("fleet/v-1/telemetry", "routing_failed", mixed[3][1], 4.0),
    ]
    assert [d.reason for d in stored[:3]] == ["out_of_range", "malformed_json", "bad_topic"]
    assert "failed 3 times" in stored[3].detail
    assert "ConnectionError: shard restarting" in stored[3].detail
    assert sorted(paho.acked) == [1, 2, 3, 4, 5]
    s = bridge.stats()
    assert (s.received_messages, s.accepted_messages, s.rejected_messages, s.batches) == (5, 0, 3, 1)
    assert (s.failed_batches, s.failed_messages, s.accepted_samples, s.inflight_batches) == (1, 2, 0, 0)
    assert s.rejected_by_reason == {"out_of_range": 1, "malformed_json": 1, "bad_topic": 1}


async def test_routing_error_in_the_dead_letter_detail_is_truncated(
    dead_letters: FakeDeadLetters,
) -> None:
    """A huge error message is cut short in the letter's detail, which still names its type."""
    bridge = _bridge(PoisonRouter(), dead_letters, max_batch_attempts=1)
    await bridge.process([_raw(_payload("b-poison"), 1.0)])
    ((letter,),) = dead_letters.recorded
    assert letter.reason == "routing_failed"
    assert "RuntimeError: shard rejected the batch: xxx" in letter.detail
    assert len(letter.detail) < 500 and letter.detail.endswith("...")


async def test_refused_batch_frees_its_inflight_slot_for_the_next_batch(
    dead_letters: FakeDeadLetters,
) -> None:
    """With one in-flight slot, a batch the shards always refuse gives the slot back after
    its attempts, so the good batch queued behind it is delivered (ingest does not stall)."""
    router = PoisonRouter()
    bridge = _bridge(
        router, dead_letters, max_inflight_batches=1, batch_max_messages=1, batch_max_wait_ms=0,
        max_batch_attempts=2, retry_backoff_s=0.01,
    )  # fmt: skip
    paho = _connected(bridge)
    batcher = asyncio.create_task(bridge._batcher())
    try:
        bridge._enqueue(_raw(_payload("b-poison"), 1.0, mid=1))
        bridge._enqueue(_raw(_payload("b-good"), 2.0, mid=2))
        async with asyncio.timeout(5.0):
            while bridge.stats().batches < 2:
                await asyncio.sleep(0.01)
    finally:
        batcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await batcher
    assert [list(b.battery_ids) for b in router.batches] == [["b-good"]]
    assert [[d.reason for d in ls] for ls in dead_letters.recorded] == [["routing_failed"]]
    assert sorted(paho.acked) == [1, 2]
    s = bridge.stats()
    assert (s.failed_batches, s.failed_messages, s.accepted_messages, s.inflight_batches) == (1, 1, 1, 0)


async def test_transient_routing_failures_deliver_without_a_dead_letter(
    dead_letters: FakeDeadLetters,
) -> None:
    """A router that fails twice and then succeeds gets the batch on the third attempt:
    delivered and acknowledged, no dead letter, nothing counted as failed."""
    router = FakeRouter(fail_times=2)
    bridge = _bridge(router, dead_letters, max_batch_attempts=3, retry_backoff_s=0.0)
    paho = _connected(bridge)
    await bridge.process([_raw(_payload("b-1"), 1.0, mid=1), _raw(_payload("b-2"), 2.0, mid=2)])
    assert router.calls == 3 and [list(b.battery_ids) for b in router.batches] == [["b-1", "b-2"]]
    assert dead_letters.recorded == []
    assert sorted(paho.acked) == [1, 2]
    s = bridge.stats()
    assert (s.accepted_messages, s.failed_batches, s.failed_messages, s.rejected_messages) == (2, 0, 0, 0)


class UnavailableRouter(FakeRouter):
    """Raises :class:`Unavailable` (the database or a shard out of reach) ``outage`` times,
    wrapped the way Ray re-raises an actor's error when it cannot subclass it (``cause``)."""

    def __init__(self, outage: int) -> None:
        super().__init__()
        self.outage = outage

    async def submit(self, batch: TelemetryBatch) -> Awaitable[IngestReport]:
        if self.calls < self.outage:
            self.calls += 1
            if self.calls % 2:
                raise Unavailable("postgres down")
            err = RuntimeError("RayTaskError")
            err.cause = Unavailable("postgres down")  # type: ignore[attr-defined]
            raise err
        return await super().submit(batch)


async def test_a_batch_waits_out_an_outage_without_using_up_its_attempts(
    dead_letters: FakeDeadLetters,
) -> None:
    """Unavailable backends are not the batch's fault: 7 failed tries with only 2 attempts
    allowed still deliver the batch when the outage ends, with no dead letter."""
    router = UnavailableRouter(outage=7)
    bridge = _bridge(router, dead_letters, max_batch_attempts=2, retry_backoff_s=0.0)
    paho = _connected(bridge)
    await asyncio.wait_for(bridge.process([_raw(_payload("b-1"), 1.0, mid=1)]), 5.0)
    assert router.calls == 8 and [list(b.battery_ids) for b in router.batches] == [["b-1"]]
    assert dead_letters.recorded == [] and paho.acked == [1]
    assert (bridge.stats().accepted_messages, bridge.stats().failed_messages) == (1, 0)


class StopWhileFailingDeadLetters(FakeDeadLetters):
    """Fails every write (the database is down) and stops the bridge on the second one."""

    def __init__(self) -> None:
        super().__init__()
        self.bridge: MqttBridge | None = None
        self.calls = 0

    async def record(self, letters: Sequence[DeadLetter]) -> None:
        self.calls += 1
        if self.calls == 2 and self.bridge is not None:
            self.bridge.stop()
        raise ConnectionError("postgres down")


async def test_routing_failed_letters_that_cannot_be_stored_are_not_acknowledged() -> None:
    """A refused batch is acknowledged only once its dead letters are stored: while the
    store fails, the messages stay unacknowledged, and a stopping bridge gives them back to
    the broker uncounted."""
    sink = StopWhileFailingDeadLetters()
    bridge = _bridge(FakeRouter(fail_times=1_000), sink, max_batch_attempts=2, retry_backoff_s=0.0)
    sink.bridge = bridge
    paho = _connected(bridge)
    await asyncio.wait_for(bridge.process([_raw(_payload("b-1"), 1.0, mid=1)]), 5.0)
    assert sink.calls == 2 and sink.recorded == []
    assert paho.acked == []
    s = bridge.stats()
    assert (s.received_messages, s.failed_batches, s.failed_messages) == (0, 0, 0)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("max_batch_attempts", 0, "Expected max_batch_attempts to be an int >= 1, got 0."),
        ("max_batch_attempts", -3, "Expected max_batch_attempts to be an int >= 1, got -3."),
        ("max_batch_attempts", 2.5, "Expected max_batch_attempts to be an int >= 1, got 2.5."),
        ("max_batch_attempts", True, "Expected max_batch_attempts to be an int >= 1, got True."),
        ("retry_backoff_s", -0.1, "Expected retry_backoff_s in [0, 5.0] seconds, got -0.1."),
        ("retry_backoff_s", float("nan"), "Expected retry_backoff_s in [0, 5.0] seconds, got nan."),
        ("retry_backoff_s", 30.0, "Expected retry_backoff_s in [0, 5.0] seconds, got 30.0."),
    ],
)
def test_bad_retry_knobs_are_rejected_with_expected_and_got(field: str, value: Any, message: str) -> None:
    """BridgeConfig refuses attempts below one (or not an int) and a negative, non-finite or
    over-long backoff, saying what it expected and what it got."""
    with pytest.raises(ValueError) as info:
        BridgeConfig(host="127.0.0.1", port=1, **{field: value})
    assert str(info.value) == message


def test_retry_knob_defaults() -> None:
    """By default a batch is tried five times, the first retry after 0.2 s."""
    cfg = BridgeConfig(host="127.0.0.1", port=1)
    assert (cfg.max_batch_attempts, cfg.retry_backoff_s) == (10, 0.2)


async def test_a_failed_submit_is_retried_before_the_next_batch_submits(
    dead_letters: FakeDeadLetters,
) -> None:
    """The next batch waits while the first one's failed submit is retried (with backoff):
    had it overtaken, a shard would see a battery's newer message first and take the older
    one's samples for late ones (what CI's overload run met)."""
    router = FakeRouter(fail_times=1)
    bridge = _bridge(router, dead_letters, max_batch_attempts=3, retry_backoff_s=0.05)
    _connected(bridge)
    first = asyncio.create_task(bridge.process([_raw(_payload("b-older"), 1.0, mid=1)]))
    await asyncio.sleep(0)  # the first batch holds the order lock, its submit failed
    second = asyncio.create_task(bridge.process([_raw(_payload("b-newer"), 2.0, mid=2)]))
    await asyncio.wait_for(asyncio.gather(first, second), 5.0)
    assert [list(b.battery_ids) for b in router.batches] == [["b-older"], ["b-newer"]]
    assert router.calls == 3 and dead_letters.recorded == []


class FakeSocketClient(SimpleNamespace):
    """A connection whose socket reads the bridge pauses and resumes."""

    def __init__(self, paho: FakePaho) -> None:
        super().__init__(_client=paho, calls=[])

    def pause_reading(self) -> None:
        self.calls.append("pause")

    def resume_reading(self) -> None:
        self.calls.append("resume")


async def test_the_bridge_stops_reading_while_receive_maximum_messages_wait(
    dead_letters: FakeDeadLetters,
) -> None:
    """The bound does not depend on the broker honouring the receive maximum (mosquitto
    2.0.11 does not once acks flow; MQTT 3.1.1 has none): at ``receive_maximum`` waiting
    messages the socket is paused, and read again once fewer than half wait."""
    router = FakeRouter()
    bridge = _bridge(router, dead_letters, receive_maximum=10, batch_max_messages=3, batch_max_wait_ms=0)
    client = FakeSocketClient(FakePaho())
    bridge._client = client  # type: ignore[assignment]
    bridge._generation = 1
    for k in range(12):
        bridge._enqueue(_raw(_payload(f"b-{k}"), float(k), mid=k + 1))
    assert client.calls == ["pause"]  # once, at the 10th
    assert bridge.stats().buffered_messages == 12 and bridge.stats().read_pauses == 1
    batcher = asyncio.create_task(bridge._batcher())
    try:
        async with asyncio.timeout(5.0):
            while bridge.stats().accepted_messages < 12:
                await asyncio.sleep(0.01)
    finally:
        batcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await batcher
    assert client.calls == ["pause", "resume"]
    assert bridge.stats().buffered_messages == 0

"""MQTT bridge: vehicle telemetry from the broker into twin shards.

Data path per worker::

    broker --QoS 1--> reader task --> micro-batch (<= batch_max_messages or batch_max_wait_ms)
           --> validate (dead-letter rejects) --> route by shard --> TwinShard.ingest
           --> PUBACK every message of the batch

Delivery is at-least-once end to end: a message is acknowledged only after its shard has
committed it to history (or after its dead letter is stored). Until then the broker holds
it in our persistent session, and a bridge that dies gets it again on reconnect; shards
drop the redelivered copy by ``(battery_id, seq)``.

Backpressure: at most ``max_inflight_batches`` batches are in the shards at once, and the
broker may send at most ``receive_maximum`` unacknowledged messages (MQTT 5), so a slow
shard slows the broker down instead of growing a queue here. MQTT 3.1.1 brokers (the
embedded amqtt) have no receive maximum; there the in-flight batch limit is the bound.

Several workers split the topic through an MQTT 5 shared subscription
(``$share/<group>/fleet/+/telemetry``); with a 3.1.1 broker run one worker with a plain
subscription.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Protocol

import aiomqtt
import numpy as np
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from contracts.samples import TelemetryBatch
from contracts.telemetry import TOPIC_FILTER, ContractLimits, TelemetryRejected, decode_batch
from store.dead_letters import DeadLetter
from twins.clock import Clock, WallClock

__all__ = ["BridgeConfig", "BridgeStats", "DeadLetterSink", "MqttBridge", "Router"]

log = logging.getLogger(__name__)


class Router(Protocol):
    async def submit(self, batch: TelemetryBatch) -> Awaitable[dict[str, int]]:
        """Hand ``batch`` to its shards and return an awaitable of the summed counts
        (accepted_samples, ...).

        Everything that fixes the order in which shards see batches happens before this
        returns, so batches submitted one after another reach every shard in that order.
        """
        ...


class DeadLetterSink(Protocol):
    async def record(self, letters: Sequence[DeadLetter]) -> None: ...


@dataclass(frozen=True)
class BridgeConfig:
    """One worker's connection and batching knobs (see ``BridgeSettings``)."""

    host: str
    port: int
    worker_index: int = 0
    shared_subscription: bool = False
    mqtt_v5: bool = True
    share_group: str = "bms"
    client_id_prefix: str = "bms-bridge"
    batch_max_messages: int = 1000
    batch_max_wait_ms: float = 20.0
    max_inflight_batches: int = 4
    receive_maximum: int = 4000
    session_expiry_s: int = 3600
    limits: ContractLimits = ContractLimits()

    @property
    def client_id(self) -> str:
        return f"{self.client_id_prefix}-{self.worker_index}"

    @property
    def topic(self) -> str:
        if self.shared_subscription:
            return f"$share/{self.share_group}/{TOPIC_FILTER}"
        return TOPIC_FILTER


@dataclass(frozen=True)
class BridgeStats:
    received_messages: int
    accepted_messages: int
    accepted_samples: int
    applied_samples: int
    late_samples: int
    duplicate_samples: int
    duplicate_messages: int
    rejected_messages: int
    rejected_by_reason: dict[str, int]
    batches: int
    inflight_batches: int
    connected: bool
    reconnects: int


# (topic, payload, received_at_s, mid, qos, connection generation)
_Raw = tuple[str, bytes, float, int, int, int]


class MqttBridge:
    """One bridge worker. Call :meth:`run` (it runs until :meth:`stop`).

    Parameters
    ----------
    config
        Broker address and batching knobs.
    router
        Sends validated batches to shards.
    dead_letters
        Stores rejected messages with their reason.
    clock
        Clock used for the timestamp checks.
    """

    def __init__(
        self, config: BridgeConfig, router: Router, dead_letters: DeadLetterSink, clock: Clock | None = None
    ) -> None:
        self.config = config
        self._router = router
        self._dead_letters = dead_letters
        self._clock: Clock = clock or WallClock()
        self._buf: list[_Raw] = []
        self._nonempty = asyncio.Event()
        self._full = asyncio.Event()
        self._stop = asyncio.Event()
        self._inflight = asyncio.Semaphore(config.max_inflight_batches)
        self._order = asyncio.Lock()  # FIFO: batches are submitted in arrival order
        self._tasks: set[asyncio.Task[None]] = set()
        self._client: aiomqtt.Client | None = None
        self._generation = 0
        self._connected = False
        self._counts: Counter[str] = Counter()
        self._rejected: Counter[str] = Counter()
        self.subscribed = asyncio.Event()

    # ------------------------------------------------------------------ validation
    def decode(self, raws: Sequence[_Raw]) -> tuple[TelemetryBatch, list[DeadLetter]]:
        """Validate raw messages: a columnar batch of the good ones, dead letters for the rest.

        Nothing a vehicle sends may crash the bridge: an unexpected error while decoding
        one message dead-letters that message as ``internal_error``.
        """
        now = self._clock.now_s()
        batch, accepted, rejected = decode_batch([(r[0], r[1]) for r in raws], now, self.config.limits)
        letters: list[DeadLetter] = []
        for k, err in rejected:
            topic, payload, rat = raws[k][0], raws[k][1], raws[k][2]
            if isinstance(err, TelemetryRejected):
                letters.append(DeadLetter(topic, err.reason.value, err.detail, payload, rat))
            else:  # a bug of ours; keep the message for inspection
                log.error("unexpected error decoding a message on %s: %r", topic, err)
                letters.append(DeadLetter(topic, "internal_error", repr(err)[:500], payload, rat))
        received = np.array([raws[k][2] for k in accepted], dtype=np.float64)
        batch = TelemetryBatch(
            battery_ids=batch.battery_ids, vehicle_ids=batch.vehicle_ids, seqs=batch.seqs,
            msg_offsets=batch.msg_offsets, columns=batch.columns, received_at_s=received,
        )
        return batch, letters

    async def process(self, raws: Sequence[_Raw]) -> None:
        """Validate, deliver and dead-letter one micro-batch, retrying until it lands."""
        batch, letters = self.decode(raws)
        delay_s = 0.05
        counts: dict[str, int] | None = None
        while True:
            try:
                # Route only until it succeeded once: when only the dead-letter write failed,
                # re-sending the batch made the shards report it as duplicates, so the stats
                # lost its accepted messages and applied samples.
                if counts is None and batch.n_messages:
                    # Submit in arrival order, collect concurrently: a batch that waits on
                    # the directory (new batteries) must not let the next batch overtake it
                    # at the shard, or that battery's older samples would arrive "late".
                    async with self._order:
                        pending = await self._router.submit(batch)
                    counts = await pending
                elif counts is None:
                    counts = {}
                if letters:
                    await self._dead_letters.record(letters)
                break
            except Exception:
                # A shard restarting or a database blip: hold the messages (unacked) and try
                # again; the shards drop what they already applied by seq.
                log.exception("delivering a batch of %d messages failed; retrying", len(raws))
                if self._stop.is_set():
                    return
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, 2.0)
        c = self._counts
        c["received_messages"] += len(raws)
        c["accepted_messages"] += batch.n_messages - counts.get("duplicate_messages", 0)
        for k in ("accepted_samples", "applied_samples", "late_samples", "duplicate_samples", "duplicate_messages"):
            c[k] += counts.get(k, 0)
        c["rejected_messages"] += len(letters)
        c["batches"] += 1
        for letter in letters:
            self._rejected[letter.reason] += 1
        self._ack(raws)

    def _ack(self, raws: Sequence[_Raw]) -> None:
        client = self._client
        if client is None:
            return
        paho = client._client  # aiomqtt exposes no manual ack; paho's is the real one
        for _, _, _, mid, qos, gen in raws:
            # A PUBACK for a message of an earlier connection would ack the wrong packet:
            # the broker already redelivers those on the new connection.
            if qos > 0 and gen == self._generation:
                paho.ack(mid, qos)

    # ------------------------------------------------------------------ MQTT loop
    def _make_client(self) -> aiomqtt.Client:
        cfg = self.config
        if cfg.mqtt_v5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho: unannotated __init__
            props.SessionExpiryInterval = cfg.session_expiry_s
            props.ReceiveMaximum = cfg.receive_maximum
            client = aiomqtt.Client(
                cfg.host, cfg.port, identifier=cfg.client_id,
                protocol=aiomqtt.ProtocolVersion.V5, clean_start=False, properties=props,
                keepalive=30,
            )
        else:
            client = aiomqtt.Client(
                cfg.host, cfg.port, identifier=cfg.client_id,
                protocol=aiomqtt.ProtocolVersion.V311, clean_session=False, keepalive=30,
            )
        # Acknowledge only after the shard committed the message (see module docstring).
        client._client.manual_ack_set(True)
        return client

    async def run(self) -> None:
        """Connect, subscribe and bridge until :meth:`stop`; reconnects with backoff."""
        batcher = asyncio.get_running_loop().create_task(self._batcher())
        delay_s = 0.5
        try:
            while not self._stop.is_set():
                client = self._make_client()
                try:
                    async with client:
                        self._client = client
                        self._generation += 1
                        self._connected = True
                        delay_s = 0.5
                        await client.subscribe(self.config.topic, qos=1)
                        self.subscribed.set()
                        reader = asyncio.get_running_loop().create_task(self._reader(client, self._generation))
                        stop = asyncio.get_running_loop().create_task(self._stop.wait())
                        done, _ = await asyncio.wait({reader, stop}, return_when=asyncio.FIRST_COMPLETED)
                        for t in (reader, stop):
                            t.cancel()
                        if reader in done and reader.exception() is not None:
                            raise reader.exception()  # type: ignore[misc]
                except aiomqtt.MqttError as err:
                    log.warning("MQTT connection lost (%s); reconnecting in %.1fs", err, delay_s)
                    self._counts["reconnects"] += 1
                finally:
                    self._connected = False
                    self.subscribed.clear()
                if not self._stop.is_set():
                    await asyncio.sleep(delay_s)
                    delay_s = min(delay_s * 2, 10.0)
        finally:
            batcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await batcher
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _reader(self, client: aiomqtt.Client, generation: int) -> None:
        cap = self.config.batch_max_messages
        async for m in client.messages:
            payload = m.payload if isinstance(m.payload, bytes) else str(m.payload).encode()
            self._buf.append((m.topic.value, payload, time.time(), m.mid, m.qos, generation))
            if len(self._buf) >= cap:
                self._full.set()
            self._nonempty.set()

    async def _batcher(self) -> None:
        wait_s = self.config.batch_max_wait_ms / 1000.0
        cap = self.config.batch_max_messages
        while True:
            await self._nonempty.wait()
            if len(self._buf) < cap and wait_s > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), wait_s)
            # Take a slot first: while all are busy, messages accumulate (bounded by the
            # broker's receive maximum) and the next batch is simply larger.
            await self._inflight.acquire()
            take, self._buf = self._buf[:cap], self._buf[cap:]
            if not self._buf:
                self._nonempty.clear()
            if len(self._buf) < cap:
                self._full.clear()
            if not take:
                self._inflight.release()
                continue
            task = asyncio.get_running_loop().create_task(self._process_and_release(take))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _process_and_release(self, take: list[_Raw]) -> None:
        try:
            await self.process(take)
        finally:
            self._inflight.release()

    def stop(self) -> None:
        self._stop.set()

    def stats(self) -> BridgeStats:
        c = self._counts
        return BridgeStats(
            received_messages=c["received_messages"],
            accepted_messages=c["accepted_messages"],
            accepted_samples=c["accepted_samples"],
            applied_samples=c["applied_samples"],
            late_samples=c["late_samples"],
            duplicate_samples=c["duplicate_samples"],
            duplicate_messages=c["duplicate_messages"],
            rejected_messages=c["rejected_messages"],
            rejected_by_reason=dict(self._rejected),
            batches=c["batches"],
            inflight_batches=self.config.max_inflight_batches - self._inflight._value,
            connected=self._connected,
            reconnects=c["reconnects"],
        )


"""MQTT bridge: vehicle telemetry from the broker into twin shards.

Data path per worker::

    broker --QoS 1--> reader task --> micro-batch (<= batch_max_messages or batch_max_wait_ms)
           --> validate (dead-letter rejects) --> route by shard --> TwinShard.ingest
           --> dead-letter what the twins refused --> PUBACK every message of the batch

A twin refuses a valid message that cannot be its battery's (another vehicle claiming it
without a swap, a ``seq`` far off the battery's stream, physically impossible values): the
shard reports it, and the bridge stores it as a dead letter with that reason and its raw
payload. It is then handled, so it is acknowledged like every other message, never
redelivered.

Delivery is at-least-once end to end: a message is acknowledged only after its shard has
committed it to history (or after its dead letter is stored). Until then the broker holds
it in our persistent session, and a bridge that dies gets it again on reconnect; shards
drop the redelivered copy by ``(battery_id, seq)``.

A batch the shards keep refusing is tried ``max_batch_attempts`` times (by the router, in
each shard's call order: a retry never lands behind a newer batch), then its messages
are dead-lettered as ``routing_failed`` and acknowledged: they are stored, so nothing is
lost, and the batch gives its in-flight slot back instead of stalling ingest for good.
A batch that failed because the database or a shard was out of reach
(:class:`~contracts.errors.Unavailable`) is not poison: it is retried for as long as the
outage lasts, without counting towards its attempts (docs/reliability.md).

Backpressure: at most ``max_inflight_batches`` batches are in the shards at once, and at
most ``receive_maximum`` received messages wait for a batch: past that the bridge stops
reading its socket, TCP's flow control holds the broker, and the broker keeps the rest in
our session. So a slow shard slows the broker down instead of growing a queue here. The
bridge also asks an MQTT 5 broker for that receive maximum, but does not count on it:
mosquitto 2.0.11 sends past it once acknowledgements flow (measured: 17,000 unacknowledged
messages against a maximum of 100), and MQTT 3.1.1 brokers (the embedded amqtt) have none.

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
from typing import Any, Protocol

import aiomqtt
import numpy as np
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import SecretStr

from contracts.errors import Unavailable
from contracts.samples import TelemetryBatch
from contracts.telemetry import TOPIC_FILTER, ContractLimits, TelemetryRejected, decode_batch
from store.dead_letters import DeadLetter
from twins.clock import Clock, WallClock
from twins.shard import IngestReport

__all__ = [
    "ROUTING_FAILED",
    "BridgeConfig",
    "BridgeStats",
    "DeadLetterSink",
    "MqttBridge",
    "Router",
]

log = logging.getLogger(__name__)

#: Dead-letter reason of a valid message whose batch the shards refused on every attempt.
ROUTING_FAILED = "routing_failed"
#: Longest wait between two attempts at one batch (the wait doubles from retry_backoff_s).
_MAX_RETRY_DELAY_S = 5.0
#: Characters of the last routing error kept in a routing_failed letter's detail.
_MAX_ERROR_CHARS = 300


def _unavailable(err: BaseException) -> bool:
    """Whether routing failed because a backend or shard is out of reach for now.

    Ray re-raises an actor's exception as a ``RayTaskError`` that is usually also an
    instance of the original class; where it cannot be, the original is its ``cause``.
    """
    return isinstance(err, Unavailable) or isinstance(getattr(err, "cause", None), Unavailable)


class Router(Protocol):
    async def submit(self, batch: TelemetryBatch) -> Awaitable[IngestReport]:
        """Hand ``batch`` to its shards and return an awaitable of what they did: the
        summed counts (accepted_samples, ...) and the messages the twins refused, indexed
        into ``batch``.

        Everything that fixes the order in which shards see batches happens before this
        returns, so batches submitted one after another reach every shard in that order.
        A submit that raises queued nothing (the bridge retries it before the next batch);
        an error from the awaitable is final: the router retried the failed parts itself,
        in order, and the bridge dead-letters the batch.
        """
        ...


class DeadLetterSink(Protocol):
    async def record(self, letters: Sequence[DeadLetter]) -> None: ...


@dataclass(frozen=True)
class BridgeConfig:
    """One worker's connection and batching knobs (see ``BridgeSettings``).

    ``max_batch_attempts`` bounds how often one batch is routed to the shards before its
    messages are dead-lettered as ``routing_failed``; between attempts the bridge waits
    ``retry_backoff_s``, doubled after each failure up to 5 s.

    ``username`` and ``password`` are the bridge's broker login (``bms-bridge`` on the
    embedded broker); both None connects without credentials. The password is a
    :class:`~pydantic.SecretStr`, so it never shows in a repr, a log line or Ray's dashboard.
    """

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
    # About 30 s of retries (backoff 0.2, 0.4 ... 5 s): long enough to ride out a shard
    # restart (a few seconds) before a batch is judged poison.
    max_batch_attempts: int = 10
    retry_backoff_s: float = 0.2
    limits: ContractLimits = ContractLimits()
    username: str | None = None
    password: SecretStr | None = None

    def __post_init__(self) -> None:
        if (self.username is None) != (self.password is None):
            given = "username" if self.username is not None else "password"
            raise ValueError(f"Expected a username and a password together, got only a {given}.")
        attempts = self.max_batch_attempts
        # bool is an int subclass; True would silently mean "one attempt".
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
            raise ValueError(f"Expected max_batch_attempts to be an int >= 1, got {attempts!r}.")
        backoff = self.retry_backoff_s
        if not (isinstance(backoff, int | float) and 0 <= backoff <= _MAX_RETRY_DELAY_S):
            raise ValueError(
                f"Expected retry_backoff_s in [0, {_MAX_RETRY_DELAY_S}] seconds, got {backoff!r}."
            )

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
    """One worker's counters since it started.

    Every received message ends up in exactly one of ``accepted_messages``,
    ``duplicate_messages``, ``rejected_messages`` (invalid, or refused by its twin;
    dead-lettered with the reason in ``rejected_by_reason``) or ``failed_messages``
    (valid, but the shards refused its batch on every attempt; dead-lettered as
    ``routing_failed``). ``failed_batches`` counts those batches.
    """

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
    failed_batches: int = 0
    failed_messages: int = 0
    #: Received, not yet in a batch: at most about ``receive_maximum``.
    buffered_messages: int = 0
    #: Times the bridge stopped reading its socket because that many messages waited.
    read_pauses: int = 0


class _PausableClient(aiomqtt.Client):
    """An aiomqtt client whose socket reads can be paused (the bridge's backpressure).

    aiomqtt reads whenever the socket is readable and queues every message, without bound;
    paused, the event loop stops watching the socket, so unread bytes stay in the kernel
    and TCP's window holds the broker. Writes (acknowledgements, pings) go on. A pause
    longer than the keepalive makes paho give up the connection; the bridge then
    reconnects and the broker redelivers, so nothing is lost.
    """

    _fileno: int | None = None
    _reading_paused = False

    def _on_socket_open(self, client: Any, userdata: Any, sock: Any) -> None:
        super()._on_socket_open(client, userdata, sock)
        self._fileno = sock.fileno()
        self._reading_paused = False

    def _on_socket_close(self, client: Any, userdata: Any, sock: Any) -> None:
        super()._on_socket_close(client, userdata, sock)
        self._fileno = None

    def pause_reading(self) -> None:
        if self._fileno is not None and not self._reading_paused:
            self._reading_paused = True
            self._loop.remove_reader(self._fileno)

    def resume_reading(self) -> None:
        if self._fileno is not None and self._reading_paused:
            self._reading_paused = False
            self._loop.add_reader(self._fileno, self._read_ready)

    def _read_ready(self) -> None:
        # What aiomqtt's own reader does: a failed read means the connection broke.
        try:
            self._client.loop_read()
        except Exception as exc:
            if not self._disconnected.done():
                self._disconnected.set_exception(exc)


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
        self._reading = True  # the socket is read (paused while the buffer is full)
        self._counts: Counter[str] = Counter()
        self._rejected: Counter[str] = Counter()
        self.subscribed = asyncio.Event()

    # ------------------------------------------------------------------ validation
    def decode(self, raws: Sequence[_Raw]) -> tuple[TelemetryBatch, list[DeadLetter]]:
        """Validate raw messages: a columnar batch of the good ones, dead letters for the rest.

        Nothing a vehicle sends may crash the bridge: an unexpected error while decoding
        one message dead-letters that message as ``internal_error``.
        """
        batch, _, letters = self._split(raws)
        return batch, letters

    def _split(
        self, raws: Sequence[_Raw]
    ) -> tuple[TelemetryBatch, list[int], list[DeadLetter]]:
        """:meth:`decode`, plus the index in ``raws`` of each message of the batch."""
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
        return batch, accepted, letters

    async def process(self, raws: Sequence[_Raw]) -> None:
        """Validate, deliver and dead-letter one micro-batch, then acknowledge it.

        Submitting to the shards is tried at most ``max_batch_attempts`` times, with backoff
        in between, before the next batch may submit; the shards' own failures are retried
        in order by the router. When routing failed for good, each valid message of the
        batch is dead-lettered as ``routing_failed`` with the last error, and acknowledged
        like the rest: it is stored, and the batch frees its in-flight slot (shards may hold
        part of it already; they drop a later resend by seq). The dead-letter write is retried until it lands,
        since a message is acknowledged only once it is stored somewhere. A bridge stopped
        while retrying gives up, counts and acknowledges nothing; the broker redelivers.
        """
        batch, accepted, letters = self._split(raws)
        report: IngestReport | None = None
        unroutable: list[DeadLetter] = []
        if batch.n_messages:
            # Submit in arrival order, and retry a failed submit before the next batch may
            # submit: a batch that waits on the directory (new batteries) or failed to reach
            # it must not let the next batch overtake it at a shard, or that battery's older
            # samples would arrive "late" (kept in history, never applied to its twin).
            async with self._order:
                submitted = await self._submit(batch, [raws[k] for k in accepted])
            if submitted is None:
                return  # stopping: nothing acknowledged, the broker redelivers
            pending, unroutable = submitted
            if pending is not None:
                try:
                    report = await pending
                except Exception as err:
                    # Final: the router already retried the parts in order (a shard's
                    # calls are resent in turn, never behind a newer batch). Routing the
                    # batch again from here would put it behind the batches submitted
                    # since, and their twins would take its samples for late ones.
                    log.error(
                        "the shards failed a batch of %d messages; dead-lettering them as %s",
                        len(accepted), ROUTING_FAILED, exc_info=err,
                    )  # fmt: skip
                    unroutable = self._routing_failed(
                        [raws[k] for k in accepted], self.config.max_batch_attempts, err
                    )
        refused = self._refused(raws, accepted, report)
        letters += refused
        stored = letters + unroutable
        attempt = 0
        while stored:
            try:
                await self._dead_letters.record(stored)
                break
            except Exception:
                # A database blip: the letters are not stored yet, so the messages stay
                # unacknowledged until they are.
                attempt += 1
                log.exception("storing %d dead letters failed; retrying", len(stored))
                if not await self._backoff(attempt):
                    return
        c = self._counts
        c["received_messages"] += len(raws)
        if unroutable:
            c["failed_batches"] += 1
            c["failed_messages"] += len(unroutable)
        elif report is not None:
            c["accepted_messages"] += batch.n_messages - report.duplicate_messages - len(refused)
        if report is not None:
            for k in ("accepted_samples", "applied_samples", "late_samples", "duplicate_samples", "duplicate_messages"):
                c[k] += getattr(report, k)
        c["rejected_messages"] += len(letters)
        c["batches"] += 1
        for letter in letters:
            self._rejected[letter.reason] += 1
        self._ack(raws)

    async def _submit(
        self, batch: TelemetryBatch, good: Sequence[_Raw]
    ) -> tuple[Awaitable[IngestReport] | None, list[DeadLetter]] | None:
        """Submit ``batch`` (the caller holds the order lock), retrying a failed submit.

        Returns the pending report, or no report and the ``routing_failed`` letters after
        ``max_batch_attempts`` failed submits; None when the bridge stopped meanwhile. An
        :class:`~contracts.errors.Unavailable` failure (the directory or its database out
        of reach) is not the batch's fault and does not count towards its attempts: holding
        the batch (unacked) for as long as the outage lasts is the backpressure; the
        in-flight slots fill, and the broker keeps the rest in our session.
        """
        attempt = 0
        waits = 0
        while True:
            attempt += 1
            try:
                return await self._router.submit(batch), []
            except Exception as err:
                if _unavailable(err):
                    attempt -= 1
                    waits += 1
                    if waits == 1 or waits % 10 == 0:
                        log.warning(
                            "a batch of %d messages waits for the shards' backends (%d "
                            "tries so far): %s", len(good), waits, err,
                        )  # fmt: skip
                    if not await self._backoff(min(waits, 4)):
                        return None
                    continue
                if attempt >= self.config.max_batch_attempts:
                    log.error(
                        "routing a batch of %d messages failed %d times; dead-lettering "
                        "them as %s", len(good), attempt, ROUTING_FAILED, exc_info=err,
                    )  # fmt: skip
                    return None, self._routing_failed(good, attempt, err)
                log.warning(
                    "routing a batch of %d messages failed (attempt %d of %d); retrying",
                    len(good), attempt, self.config.max_batch_attempts, exc_info=err,
                )  # fmt: skip
                if not await self._backoff(attempt):
                    return None

    @staticmethod
    def _refused(
        raws: Sequence[_Raw], accepted: Sequence[int], report: IngestReport | None
    ) -> list[DeadLetter]:
        """One letter per message the twins refused, with their reason and the raw payload
        (``accepted`` maps the batch's message indices back to ``raws``)."""
        if report is None:
            return []
        letters: list[DeadLetter] = []
        for r in report.rejected:
            topic, payload, received_at_s, *_ = raws[accepted[r.index]]
            letters.append(DeadLetter(topic, r.reason.value, r.detail, payload, received_at_s))
        return letters

    @staticmethod
    def _routing_failed(good: Sequence[_Raw], attempts: int, err: Exception) -> list[DeadLetter]:
        """One ``routing_failed`` letter per message of a batch the shards never took."""
        error = f"{type(err).__name__}: {err}"
        if len(error) > _MAX_ERROR_CHARS:
            error = error[: _MAX_ERROR_CHARS - 3] + "..."
        detail = (
            f"Expected the twin shards to take this message; routing its batch failed "
            f"{attempts} times, the last with {error}"
        )
        return [
            DeadLetter(topic, ROUTING_FAILED, detail, payload, received_at_s)
            for topic, payload, received_at_s, *_ in good
        ]

    async def _backoff(self, failures: int) -> bool:
        """Wait before the next attempt; False as soon as the bridge is stopping."""
        delay_s = min(self.config.retry_backoff_s * 2 ** (failures - 1), _MAX_RETRY_DELAY_S)
        if not self._stop.is_set():
            # Wait on the stop event, not a plain sleep: a stopping bridge should not sit
            # out a backoff for a batch the broker will redeliver anyway.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay_s)
        return not self._stop.is_set()

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
        password = cfg.password.get_secret_value() if cfg.password is not None else None
        if cfg.mqtt_v5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho: unannotated __init__
            props.SessionExpiryInterval = cfg.session_expiry_s
            props.ReceiveMaximum = cfg.receive_maximum
            client: aiomqtt.Client = _PausableClient(
                cfg.host, cfg.port, identifier=cfg.client_id,
                protocol=aiomqtt.ProtocolVersion.V5, clean_start=False, properties=props,
                keepalive=30, username=cfg.username, password=password,
            )
        else:
            client = _PausableClient(
                cfg.host, cfg.port, identifier=cfg.client_id,
                protocol=aiomqtt.ProtocolVersion.V311, clean_session=False, keepalive=30,
                username=cfg.username, password=password,
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
                        self._reading = True  # a new socket is read until the buffer fills
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
                    # Capped low: a broker restart takes seconds, and every second of
                    # delay here is a second of telemetry the twins do not see.
                    delay_s = min(delay_s * 2, 2.0)
        finally:
            batcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await batcher
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _reader(self, client: aiomqtt.Client, generation: int) -> None:
        async for m in client.messages:
            payload = m.payload if isinstance(m.payload, bytes) else str(m.payload).encode()
            self._enqueue((m.topic.value, payload, time.time(), m.mid, m.qos, generation))

    def _enqueue(self, raw: _Raw) -> None:
        """Queue one received message for the batcher (the unit tests' way in, too)."""
        self._buf.append(raw)
        if len(self._buf) >= self.config.batch_max_messages:
            self._full.set()
        if len(self._buf) >= self.config.receive_maximum:
            self._set_reading(False)
        self._nonempty.set()

    def _set_reading(self, on: bool) -> None:
        """Pause the socket while ``receive_maximum`` messages wait; resume below half."""
        client = self._client
        method = getattr(client, "resume_reading" if on else "pause_reading", None)
        if method is not None and self._reading != on:
            self._reading = on
            self._counts["read_pauses"] += not on
            method()

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
            if not self._reading and len(self._buf) < self.config.receive_maximum // 2:
                self._set_reading(True)
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
            failed_batches=c["failed_batches"],
            failed_messages=c["failed_messages"],
            buffered_messages=len(self._buf),
            read_pauses=c["read_pauses"],
        )


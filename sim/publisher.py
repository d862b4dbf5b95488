"""Publishing simulated telemetry to an MQTT broker, and the real-time loop that drives it.

A QoS 1 publish is complete when the broker's PUBACK arrives, so one connection is bound
by its round trip and its in-flight window. :class:`FleetPublisher` spreads the messages
over several connections, each with a wide in-flight window, and keeps all the messages
of one topic on the same connection so a battery's ``seq`` reaches the broker in order.

A broker that knows each vehicle (``bms vehicles provision``) lets a vehicle publish only
its own topic, logged in as itself. Given ``credentials`` (a callable ``vehicle_id ->
(username, password)``, supplied by the composition root), :class:`FleetPublisher` opens one
connection per vehicle, as real vehicles do: lazily, at the vehicle's first message, with
a bounded number of connects in flight. Without credentials it multiplexes the whole fleet
over a few connections, anonymous or as one identity allowed to publish for every vehicle
(the benchmark's load generator).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
import zlib
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import dataclass
from enum import Enum
from types import TracebackType
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiomqtt

from contracts.telemetry import TOPIC_FILTER
from sim.fleet import FleetSimulator, SwapEvent

__all__ = [
    "ClientFactory",
    "FleetPublisher",
    "FleetRunSummary",
    "PublishClient",
    "SwapRecorder",
    "VehicleClientFactory",
    "VehicleCredentials",
    "parse_mqtt_url",
    "run_fleet",
]

logger = logging.getLogger(__name__)

_DEFAULT_PORT = 1883
# The sample key appears once per sample and nowhere else in a payload: ids cannot hold a
# quote, so counting it counts samples without parsing the JSON.
_SAMPLE_MARKER = b'"ts":'
_TOPIC_HEAD, _TOPIC_TAIL = TOPIC_FILTER.split("+")


def parse_mqtt_url(url: str) -> tuple[str, int]:
    """Host and port of an ``mqtt://host:port`` URL (``tcp://`` is accepted too).

    The port defaults to 1883 when left out.

    Raises
    ------
    ValueError
        If the scheme is not mqtt or tcp, the host is missing or the port is invalid.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ValueError(f"Expected mqtt://host:port, got {url!r}.") from None
    if (
        parts.scheme not in ("mqtt", "tcp")
        or not parts.hostname
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or parts.username is not None
    ):
        raise ValueError(f"Expected mqtt://host:port, got {url!r}.")
    return parts.hostname, _DEFAULT_PORT if port is None else port


class PublishClient(Protocol):
    """The part of :class:`aiomqtt.Client` the publisher uses (a seam for tests)."""

    async def publish(self, topic: str, payload: bytes, qos: int) -> None:
        """Publish one message; return once the broker acknowledged it (QoS 1)."""


#: Makes the client of connection ``i``; the publisher enters it as an async context.
ClientFactory = Callable[[int], AbstractAsyncContextManager[PublishClient]]
#: A vehicle's MQTT login, ``vehicle_id -> (username, password)``: the simulator's seam for
#: per-vehicle identity. The composition root supplies it (bms derives the passwords from
#: its provisioning key); the simulator only calls it.
VehicleCredentials = Callable[[str], tuple[str, str]]
#: Makes the client of one vehicle's own connection (a seam for tests); called with the
#: vehicle id, username and password.
VehicleClientFactory = Callable[[str, str, str], AbstractAsyncContextManager[PublishClient]]
#: Records the field team's swaps where the fleet's operator keeps them, as a technician's
#: app would (the composition root supplies it: bms records them in the twins).
SwapRecorder = Callable[[list[SwapEvent]], Awaitable[None]]


def _vehicle_of(topic: str) -> str:
    if not (topic.startswith(_TOPIC_HEAD) and topic.endswith(_TOPIC_TAIL)):
        raise ValueError(f"Expected a topic {TOPIC_FILTER.replace('+', '<vehicle_id>')}, got {topic!r}.")
    vehicle_id = topic[len(_TOPIC_HEAD) : len(topic) - len(_TOPIC_TAIL)]
    if not vehicle_id or "/" in vehicle_id:
        raise ValueError(f"Expected a topic {TOPIC_FILTER.replace('+', '<vehicle_id>')}, got {topic!r}.")
    return vehicle_id


class _State(Enum):
    UNOPENED = "unopened"
    OPEN = "open"
    CLOSED = "closed"


class FleetPublisher:
    """QoS 1 publisher: a few shared MQTT connections, or one per vehicle.

    Use as an async context manager; the shared connections open on entry, a vehicle's own
    connection at its first message, and all close on exit.

    Parameters
    ----------
    host, port
        The broker.
    n_connections
        Shared connections (without ``credentials``); messages of one topic always use
        the same one.
    max_inflight_messages
        Unacknowledged QoS 1 messages per connection before the client queues.
    protocol
        MQTT protocol version.
    client_id_prefix
        Client ids are ``<prefix>-<random>-<i>`` (``<prefix>-<random>-<vehicle_id>`` for a
        vehicle's own connection), unique per publisher.
    client_factory
        Replaces the aiomqtt clients of the shared connections (tests); called with the
        connection index.
    username, password
        Login of the shared connections (the benchmark's load generator); None: anonymous.
    credentials
        Each vehicle's login: with it every vehicle publishes on its own connection, as
        itself. Topics must then be ``fleet/<vehicle_id>/telemetry``.
    max_concurrent_connects
        Vehicle connections being opened at once (a fleet's first tick opens them all).
    vehicle_client_factory
        Replaces the aiomqtt clients of the vehicle connections (tests).

    Raises
    ------
    ValueError
        On parameters out of range, or both ``credentials`` and a shared ``username``.
    """

    def __init__(
        self,
        host: str,
        port: int = _DEFAULT_PORT,
        *,
        n_connections: int = 2,
        max_inflight_messages: int = 1000,
        protocol: aiomqtt.ProtocolVersion = aiomqtt.ProtocolVersion.V311,
        client_id_prefix: str = "bms-sim",
        client_factory: ClientFactory | None = None,
        username: str | None = None,
        password: str | None = None,
        credentials: VehicleCredentials | None = None,
        max_concurrent_connects: int = 32,
        vehicle_client_factory: VehicleClientFactory | None = None,
    ) -> None:
        if not 1 <= n_connections <= 64:
            raise ValueError(f"Expected n_connections in [1, 64], got {n_connections}.")
        if not 1 <= max_inflight_messages <= 65535:
            raise ValueError(
                f"Expected max_inflight_messages in [1, 65535], got {max_inflight_messages}."
            )
        if not 1 <= max_concurrent_connects <= 1024:
            raise ValueError(
                f"Expected max_concurrent_connects in [1, 1024], got {max_concurrent_connects}."
            )
        if credentials is not None and (username is not None or password is not None):
            raise ValueError(
                "Expected either credentials (one connection per vehicle, each as itself) or a "
                "username and password (shared connections), got both."
            )
        if (username is None) != (password is None):
            raise ValueError("Expected a username and a password together, got only one of them.")
        self._n = n_connections
        run_id = uuid.uuid4().hex[:8]

        def factory(i: int) -> AbstractAsyncContextManager[PublishClient]:
            return _client(f"{client_id_prefix}-{run_id}-{i}", username, password)

        def vehicle_factory(
            vehicle_id: str, user: str, secret: str
        ) -> AbstractAsyncContextManager[PublishClient]:
            return _client(f"{client_id_prefix}-{run_id}-{vehicle_id}", user, secret)

        def _client(
            identifier: str, user: str | None, secret: str | None
        ) -> AbstractAsyncContextManager[PublishClient]:
            client = aiomqtt.Client(
                host,
                port,
                identifier=identifier,
                protocol=protocol,
                username=user,
                password=secret,
                max_inflight_messages=max_inflight_messages,
            )
            # aiomqtt warns once per publish beyond 10 unacknowledged calls; the
            # window below is what bounds them here.
            client.pending_calls_threshold = max_inflight_messages + 1
            return client

        self._factory: ClientFactory = client_factory or factory
        self._vehicle_factory: VehicleClientFactory = vehicle_client_factory or vehicle_factory
        self._credentials = credentials
        self._window = max_inflight_messages
        self._clients: list[PublishClient] = []
        self._windows: list[asyncio.Semaphore] = []
        self._stack: AsyncExitStack | None = None
        # One connection per vehicle (with credentials), opened at its first message.
        self._vehicle_clients: dict[str, PublishClient] = {}
        self._vehicle_windows: dict[str, asyncio.Semaphore] = {}
        self._vehicle_stacks: dict[str, AsyncExitStack] = {}
        self._opening: dict[str, asyncio.Task[PublishClient]] = {}
        self._connect_slots = asyncio.Semaphore(max_concurrent_connects)
        self._connect_s = 0.0
        self._state = _State.UNOPENED
        self._messages = 0
        self._samples = 0

    @property
    def messages_published(self) -> int:
        """Messages the broker acknowledged."""
        return self._messages

    @property
    def samples_published(self) -> int:
        """Samples in the acknowledged messages."""
        return self._samples

    @property
    def vehicle_connections(self) -> int:
        """Vehicle connections open now (0 without credentials)."""
        return len(self._vehicle_clients)

    @property
    def vehicle_connect_s(self) -> float:
        """Seconds spent opening vehicle connections, summed over the connections."""
        return self._connect_s

    async def __aenter__(self) -> FleetPublisher:
        if self._state is not _State.UNOPENED:
            raise RuntimeError(
                f"Cannot open a FleetPublisher twice: expected state unopened, got "
                f"{self._state.value}."
            )
        if self._credentials is None:
            async with AsyncExitStack() as stack:
                self._clients = [
                    await stack.enter_async_context(self._factory(i)) for i in range(self._n)
                ]
                self._stack = stack.pop_all()
            self._windows = [asyncio.Semaphore(self._window) for _ in range(self._n)]
        self._state = _State.OPEN
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._state = _State.CLOSED
        opening = list(self._opening.values())
        for task in opening:
            task.cancel()
        await asyncio.gather(*opening, return_exceptions=True)
        vehicle_stacks = list(self._vehicle_stacks.values())
        self._vehicle_stacks, self._vehicle_clients = {}, {}
        # Concurrently: a thousand vehicles one after another would take a thousand round
        # trips to say goodbye.
        results = await asyncio.gather(*(s.aclose() for s in vehicle_stacks), return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            logger.warning(
                "%d of %d vehicle connections did not close cleanly; first: %r",
                len(failed), len(vehicle_stacks), failed[0],
            )  # fmt: skip
        stack, self._stack, self._clients = self._stack, None, []
        if stack is not None:
            await stack.aclose()

    async def publish(self, messages: Sequence[tuple[str, bytes]]) -> int:
        """Publish with QoS 1 and wait for every acknowledgement.

        Returns
        -------
        int
            The number of messages published.

        Raises
        ------
        RuntimeError
            If the publisher is not open.
        ValueError
            With credentials, for a topic that names no vehicle.
        aiomqtt.MqttError
            The first failure, after all the other publishes finished (they are counted); a
            vehicle whose connection the broker refused names itself.
        """
        if self._state is not _State.OPEN:
            raise RuntimeError(
                f"Cannot publish, as the publisher is {self._state.value} (expected open; "
                f"use 'async with FleetPublisher(...)')."
            )
        if not messages:
            return 0
        # Creating the tasks in message order keeps each topic's order on its
        # connection: the window semaphore wakes waiters first in, first out, and a task
        # hands its message to the client before it next yields.
        tasks: list[Coroutine[Any, Any, int]]
        if self._credentials is None:
            tasks = [
                self._publish_one(zlib.crc32(topic.encode()) % self._n, topic, payload)
                for topic, payload in messages
            ]
        else:
            tasks = [self._publish_as_vehicle(topic, payload) for topic, payload in messages]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        done = len(results) - len(failures)
        self._messages += done
        self._samples += sum(r for r in results if isinstance(r, int))
        if failures:
            raise failures[0]
        return done

    async def _publish_one(self, connection: int, topic: str, payload: bytes) -> int:
        # The window caps unacknowledged publishes per connection, so a large batch
        # queues here (FIFO, keeping the order) rather than all inside the client, where
        # each would start its acknowledgement timeout at once.
        async with self._windows[connection]:
            await self._clients[connection].publish(topic, payload, qos=1)
        return payload.count(_SAMPLE_MARKER)

    async def _publish_as_vehicle(self, topic: str, payload: bytes) -> int:
        vehicle_id = _vehicle_of(topic)
        client = self._vehicle_clients.get(vehicle_id)
        if client is None:
            # The tasks of one vehicle wait for the same connect and resume in creation
            # order, so its messages still reach the window (and the broker) in order.
            client = await self._open_vehicle(vehicle_id)
        async with self._vehicle_windows[vehicle_id]:
            await client.publish(topic, payload, qos=1)
        return payload.count(_SAMPLE_MARKER)

    async def _open_vehicle(self, vehicle_id: str) -> PublishClient:
        task = self._opening.get(vehicle_id)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._connect_vehicle(vehicle_id))
            self._opening[vehicle_id] = task
            # A failed connect is forgotten, so the vehicle's next message tries again.
            task.add_done_callback(lambda _: self._opening.pop(vehicle_id, None))
        # Shielded: one waiter cancelled must not cancel the connect the others wait for.
        return await asyncio.shield(task)

    async def _connect_vehicle(self, vehicle_id: str) -> PublishClient:
        assert self._credentials is not None
        username, password = self._credentials(vehicle_id)
        stack = AsyncExitStack()
        async with self._connect_slots:
            t0 = time.perf_counter()
            try:
                client = await stack.enter_async_context(
                    self._vehicle_factory(vehicle_id, username, password)
                )
            except aiomqtt.MqttError as err:
                await stack.aclose()
                raise aiomqtt.MqttError(
                    f"Expected the broker to accept vehicle {vehicle_id} as {username!r}, it "
                    f"refused: {err}"
                ) from err
            except BaseException:
                await stack.aclose()
                raise
            self._connect_s += time.perf_counter() - t0
        self._vehicle_stacks[vehicle_id] = stack
        self._vehicle_windows[vehicle_id] = asyncio.Semaphore(self._window)
        self._vehicle_clients[vehicle_id] = client
        return client

def _save_snapshot(sim: FleetSimulator, save: Callable[[bytes], None]) -> None:
    try:
        save(sim.snapshot())
    except OSError as err:
        # A full disk must not stop the fleet; the next save tries again.
        logger.warning("Could not save the fleet snapshot: %s", err)


@dataclass(frozen=True)
class FleetRunSummary:
    """What :func:`run_fleet` did."""

    ticks: int
    simulated_s: float
    wall_s: float
    messages: int
    samples: int
    swaps: int


async def _publish_and_record(
    publisher: FleetPublisher,
    messages: list[tuple[str, bytes]],
    swaps: list[SwapEvent],
    on_swaps: SwapRecorder | None,
) -> int:
    """Publish one tick's messages, then record that tick's swaps.

    In this order because a swap's removed battery sends its last samples in the tick of
    the swap, from the vehicle it leaves (the simulator flushes them before the swap): a
    removal recorded before they arrive would be undone by them, the battery linked to
    the vehicle again and, silent from then on, reported missing. The installed battery
    sends nothing before the next tick, whose messages go out only once this returns, so
    its twin already knows its vehicle and never mistakes the first of them for a claim
    by a stranger (``battery_claim_conflict``). (An acknowledgement means the broker has
    the messages, not yet the twins: a recorder that must not overtake them waits a
    moment before it records a removal; bms's does.)
    """
    try:
        published = await publisher.publish(messages)
    except BaseException:
        if swaps and on_swaps is not None:
            logger.warning("%d battery swap(s) not recorded: their tick was not published.", len(swaps))
        raise
    if swaps and on_swaps is not None:
        try:
            await on_swaps(swaps)
        except Exception as err:  # the fleet runs on; the lost records are counted
            logger.warning(
                "Could not record %d battery swap(s) (the twins keep the old links): %r",
                len(swaps), err,
            )  # fmt: skip
    return published


async def _sleep_or_stop(delay_s: float, stop: asyncio.Event | None) -> None:
    if delay_s <= 0:
        return
    if stop is None:
        await asyncio.sleep(delay_s)
        return
    # A timeout is the normal case: the tick's time came before a stop request.
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=delay_s)


async def run_fleet(
    sim: FleetSimulator,
    mqtt_url: str,
    duration_s: float | None,
    tick_s: float = 1.0,
    stop: asyncio.Event | None = None,
    *,
    time_scale: float = 1.0,
    start_s: float | None = None,
    n_connections: int = 2,
    log_interval_s: float = 10.0,
    client_factory: ClientFactory | None = None,
    credentials: VehicleCredentials | None = None,
    vehicle_client_factory: VehicleClientFactory | None = None,
    save_snapshot: Callable[[bytes], None] | None = None,
    snapshot_interval_s: float = 5.0,
    on_swaps: SwapRecorder | None = None,
) -> FleetRunSummary:
    """Advance ``sim`` in (scaled) real time and publish its messages.

    Tick ``k`` waits until ``k * tick_s`` wall seconds after the start, advances the
    simulation by ``tick_s * time_scale`` to ``start_s + k * tick_s * time_scale`` (in a
    worker thread, so acknowledgements keep flowing) and publishes the result while the
    next tick is computed. A line is logged every ``log_interval_s``.

    Parameters
    ----------
    sim
        The fleet; it continues from its current state.
    mqtt_url
        ``mqtt://host:port`` of the broker.
    duration_s
        Wall-clock seconds to run; None runs until ``stop`` is set.
    tick_s
        Wall-clock seconds between ticks.
    stop
        Set it to end the run after the current tick.
    time_scale
        Simulated seconds per wall second. Above 1 the simulated clock would run ahead
        of the wall clock, which the bridge rejects as future timestamps, so the run then
        starts ``duration_s * (time_scale - 1)`` in the past and ends at the present.
    start_s
        Simulated Unix time at the start; by default as described under ``time_scale``
        (or, for a simulator that already ran, its last time).
    n_connections, client_factory
        Passed to :class:`FleetPublisher`.
    credentials, vehicle_client_factory
        Passed to :class:`FleetPublisher`: with credentials every vehicle publishes on its
        own connection, logged in as itself.
    log_interval_s
        Period of the progress log line.
    save_snapshot
        Called with :meth:`FleetSimulator.snapshot` bytes (in a worker thread, right after
        a tick, so never during one) every ``snapshot_interval_s`` wall seconds and once at
        the end, also when the run fails or is stopped, unless it was cancelled in the middle
        of a tick. A save that raises ``OSError`` is logged and the fleet runs on.
    snapshot_interval_s
        Wall-clock seconds between two saves.
    on_swaps
        Awaited with each tick's swaps (:meth:`FleetSimulator.drain_swap_events`) once
        that tick's messages are acknowledged and before the next tick's are published
        (why: ``_publish_and_record``). One that raises is logged with the number of swaps
        it did not record, and the fleet runs on. Without it the swap events stay in
        ``sim`` for someone else to drain.

    Raises
    ------
    ValueError
        On a malformed URL or parameters, or ``time_scale > 1`` without a duration.
    """
    host, port = parse_mqtt_url(mqtt_url)
    if not tick_s > 0 or not time_scale > 0 or not log_interval_s > 0 or not snapshot_interval_s > 0:
        raise ValueError(
            f"Expected tick_s, time_scale, log_interval_s and snapshot_interval_s > 0, got "
            f"{tick_s}, {time_scale}, {log_interval_s} and {snapshot_interval_s}."
        )
    if duration_s is not None and not duration_s >= 0:
        raise ValueError(f"Expected duration_s >= 0 or None, got {duration_s}.")
    wall_start_s = time.time()
    if start_s is None:
        if sim.now_s is not None:
            start_s = sim.now_s
        elif time_scale > 1.0:
            if duration_s is None:
                raise ValueError(
                    f"Expected a duration_s with time_scale {time_scale} > 1 (the run starts "
                    f"in the past so that it ends at the present), got None."
                )
            start_s = wall_start_s - duration_s * (time_scale - 1.0)
        else:
            start_s = wall_start_s
    dt_s = tick_s * time_scale
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    ticks = 0
    swaps0 = sim.swap_count
    pending: asyncio.Task[int] | None = None
    last_log_t, last_log_messages = t0, 0
    next_save_t = t0 + snapshot_interval_s
    # True while a tick runs in its worker thread: a snapshot then would catch it half done.
    ticking = False

    def tick(now_s: float, save: bool) -> tuple[list[tuple[str, bytes]], list[SwapEvent]]:
        messages = sim.advance(dt_s, now_s)
        swaps = sim.drain_swap_events() if on_swaps is not None else []
        if save and save_snapshot is not None:
            _save_snapshot(sim, save_snapshot)
        return messages, swaps

    async with FleetPublisher(
        host, port, n_connections=n_connections, client_factory=client_factory,
        credentials=credentials, vehicle_client_factory=vehicle_client_factory,
    ) as publisher:  # fmt: skip
        try:
            while stop is None or not stop.is_set():
                if duration_s is not None and (ticks + 1) * tick_s > duration_s + 1e-9:
                    break
                await _sleep_or_stop(t0 + (ticks + 1) * tick_s - loop.time(), stop)
                if stop is not None and stop.is_set():
                    break
                ticks += 1
                save = save_snapshot is not None and loop.time() >= next_save_t
                if save:
                    next_save_t = loop.time() + snapshot_interval_s
                ticking = True
                messages, swaps = await asyncio.to_thread(tick, start_s + ticks * dt_s, save)
                ticking = False
                if pending is not None:
                    await pending
                pending = asyncio.create_task(
                    _publish_and_record(publisher, messages, swaps, on_swaps)
                )
                now = loop.time()
                if now - last_log_t >= log_interval_s:
                    rate = (publisher.messages_published - last_log_messages) / (now - last_log_t)
                    logger.info(
                        "sim t=%.0f: %d/%d riding, %.1f msg/s, %d samples, %d swaps, lag %.2f s%s",
                        start_s + ticks * dt_s,
                        sim.riding_count,
                        sim.params.vehicles,
                        rate,
                        publisher.samples_published,
                        sim.swap_count - swaps0,
                        max(0.0, now - (t0 + ticks * tick_s)),
                        f", {publisher.vehicle_connections} vehicle connections"
                        if credentials is not None
                        else "",
                    )
                    last_log_t, last_log_messages = now, publisher.messages_published
            if pending is not None:
                await pending
        finally:
            if pending is not None and not pending.done():
                pending.cancel()
            if save_snapshot is not None and not ticking:
                # In the loop's thread: this must also run when the task is being
                # cancelled, and it is one save of a few milliseconds at the end.
                _save_snapshot(sim, save_snapshot)
        return FleetRunSummary(
            ticks=ticks,
            simulated_s=ticks * dt_s,
            wall_s=loop.time() - t0,
            messages=publisher.messages_published,
            samples=publisher.samples_published,
            swaps=sim.swap_count - swaps0,
        )

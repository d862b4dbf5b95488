"""Publishing simulated telemetry to an MQTT broker, and the real-time loop that drives it.

A QoS 1 publish is complete when the broker's PUBACK arrives, so one connection is bound
by its round trip and its in-flight window. :class:`FleetPublisher` spreads the messages
over several connections, each with a wide in-flight window, and keeps all the messages
of one topic on the same connection so a battery's ``seq`` reaches the broker in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
import zlib
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import dataclass
from enum import Enum
from types import TracebackType
from typing import Protocol
from urllib.parse import urlsplit

import aiomqtt

from sim.fleet import FleetSimulator

__all__ = [
    "ClientFactory",
    "FleetPublisher",
    "FleetRunSummary",
    "PublishClient",
    "parse_mqtt_url",
    "run_fleet",
]

logger = logging.getLogger(__name__)

_DEFAULT_PORT = 1883
# The sample key appears once per sample and nowhere else in a payload: ids cannot hold a
# quote, so counting it counts samples without parsing the JSON.
_SAMPLE_MARKER = b'"ts":'


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


class _State(Enum):
    UNOPENED = "unopened"
    OPEN = "open"
    CLOSED = "closed"


class FleetPublisher:
    """QoS 1 publisher over ``n_connections`` MQTT connections.

    Use as an async context manager; the connections open on entry and close on exit.

    Parameters
    ----------
    host, port
        The broker.
    n_connections
        Parallel connections; messages of one topic always use the same one.
    max_inflight_messages
        Unacknowledged QoS 1 messages per connection before the client queues.
    protocol
        MQTT protocol version.
    client_id_prefix
        Client ids are ``<prefix>-<random>-<i>``, unique per publisher.
    client_factory
        Replaces the aiomqtt clients (tests); called with the connection index.
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
    ) -> None:
        if not 1 <= n_connections <= 64:
            raise ValueError(f"Expected n_connections in [1, 64], got {n_connections}.")
        if not 1 <= max_inflight_messages <= 65535:
            raise ValueError(
                f"Expected max_inflight_messages in [1, 65535], got {max_inflight_messages}."
            )
        self._n = n_connections
        self._factory: ClientFactory
        if client_factory is None:
            run_id = uuid.uuid4().hex[:8]

            def factory(i: int) -> AbstractAsyncContextManager[PublishClient]:
                client = aiomqtt.Client(
                    host,
                    port,
                    identifier=f"{client_id_prefix}-{run_id}-{i}",
                    protocol=protocol,
                    max_inflight_messages=max_inflight_messages,
                )
                # aiomqtt warns once per publish beyond 10 unacknowledged calls; the
                # window below is what bounds them here.
                client.pending_calls_threshold = max_inflight_messages + 1
                return client

            self._factory = factory
        else:
            self._factory = client_factory
        self._window = max_inflight_messages
        self._clients: list[PublishClient] = []
        self._windows: list[asyncio.Semaphore] = []
        self._stack: AsyncExitStack | None = None
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

    async def __aenter__(self) -> FleetPublisher:
        if self._state is not _State.UNOPENED:
            raise RuntimeError(
                f"Cannot open a FleetPublisher twice: expected state unopened, got "
                f"{self._state.value}."
            )
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
        aiomqtt.MqttError
            The first failure, after all the other publishes finished (they are counted).
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
        tasks = [
            self._publish_one(zlib.crc32(topic.encode()) % self._n, topic, payload)
            for topic, payload in messages
        ]
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


@dataclass(frozen=True)
class FleetRunSummary:
    """What :func:`run_fleet` did."""

    ticks: int
    simulated_s: float
    wall_s: float
    messages: int
    samples: int
    swaps: int


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
    log_interval_s
        Period of the progress log line.

    Raises
    ------
    ValueError
        On a malformed URL or parameters, or ``time_scale > 1`` without a duration.
    """
    host, port = parse_mqtt_url(mqtt_url)
    if not tick_s > 0 or not time_scale > 0 or not log_interval_s > 0:
        raise ValueError(
            f"Expected tick_s, time_scale and log_interval_s > 0, got {tick_s}, "
            f"{time_scale} and {log_interval_s}."
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
    async with FleetPublisher(
        host, port, n_connections=n_connections, client_factory=client_factory
    ) as publisher:
        try:
            while stop is None or not stop.is_set():
                if duration_s is not None and (ticks + 1) * tick_s > duration_s + 1e-9:
                    break
                await _sleep_or_stop(t0 + (ticks + 1) * tick_s - loop.time(), stop)
                if stop is not None and stop.is_set():
                    break
                ticks += 1
                messages = await asyncio.to_thread(sim.advance, dt_s, start_s + ticks * dt_s)
                if pending is not None:
                    await pending
                pending = asyncio.create_task(publisher.publish(messages))
                now = loop.time()
                if now - last_log_t >= log_interval_s:
                    rate = (publisher.messages_published - last_log_messages) / (now - last_log_t)
                    logger.info(
                        "sim t=%.0f: %d/%d riding, %.1f msg/s, %d samples, %d swaps, lag %.2f s",
                        start_s + ticks * dt_s,
                        sim.riding_count,
                        sim.params.vehicles,
                        rate,
                        publisher.samples_published,
                        sim.swap_count - swaps0,
                        max(0.0, now - (t0 + ticks * tick_s)),
                    )
                    last_log_t, last_log_messages = now, publisher.messages_published
            if pending is not None:
                await pending
        finally:
            if pending is not None and not pending.done():
                pending.cancel()
        return FleetRunSummary(
            ticks=ticks,
            simulated_s=ticks * dt_s,
            wall_s=loop.time() - t0,
            messages=publisher.messages_published,
            samples=publisher.samples_published,
            swaps=sim.swap_count - swaps0,
        )

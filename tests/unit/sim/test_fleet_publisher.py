"""Tests for :mod:`sim.publisher` with in-memory clients: no broker is involved."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from sim.fleet import FleetSimulator
from sim.fleet_params import FleetParams
from sim.publisher import ClientFactory, FleetPublisher, PublishClient, parse_mqtt_url, run_fleet


class _FakeClient:
    """Records what it was asked to publish; can be told to fail one topic."""

    def __init__(self, index: int, log: list[tuple[int, str, bytes, int]], fail_topic: str | None):
        self.index, self.log, self.fail_topic = index, log, fail_topic

    async def publish(self, topic: str, payload: bytes, qos: int) -> None:
        await asyncio.sleep(0)  # an acknowledgement takes at least one loop turn
        if topic == self.fail_topic:
            raise ConnectionError(f"broker refused {topic}")
        self.log.append((self.index, topic, payload, qos))


def _factory(
    log: list[tuple[int, str, bytes, int]], fail_topic: str | None = None
) -> ClientFactory:
    @asynccontextmanager
    async def make(i: int) -> AsyncIterator[PublishClient]:
        yield _FakeClient(i, log, fail_topic)

    return make


def _message(vehicle: str, seq: int, n_samples: int = 1) -> tuple[str, bytes]:
    samples = ",".join(['{"ts":1764170000.0}'] * n_samples)
    return f"fleet/{vehicle}/telemetry", f'{{"seq":{seq},"samples":[{samples}]}}'.encode()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mqtt://127.0.0.1:1883", ("127.0.0.1", 1883)),
        ("mqtt://broker.local:8883", ("broker.local", 8883)),
        ("tcp://localhost:1884", ("localhost", 1884)),
        ("mqtt://localhost", ("localhost", 1883)),
    ],
)
def test_parse_mqtt_url(url: str, expected: tuple[str, int]) -> None:
    """mqtt:// and tcp:// URLs give host and port; the port defaults to 1883."""
    assert parse_mqtt_url(url) == expected


@pytest.mark.parametrize(
    "url",
    ["http://host:1883", "mqtt://:1883", "mqtt://host:notaport", "mqtt://host:70000",
     "host:1883", "mqtt://host:1883/topic", ""],
)  # fmt: skip
def test_parse_mqtt_url_rejects_other_urls(url: str) -> None:
    """Anything but mqtt://host:port raises ValueError quoting the URL."""
    with pytest.raises(ValueError, match=f"Expected mqtt://host:port, got {url!r}"):
        parse_mqtt_url(url)


async def test_publish_counts_and_keeps_each_topic_on_one_connection_in_order() -> None:
    """All messages go out with QoS 1, one topic on one connection, in the given order."""
    log: list[tuple[int, str, bytes, int]] = []
    messages = [_message(f"v-{k % 7}", k // 7, n_samples=1 + k % 3) for k in range(70)]
    async with FleetPublisher("h", n_connections=3, client_factory=_factory(log)) as pub:
        assert await pub.publish(messages) == 70
        assert await pub.publish([]) == 0
    assert pub.messages_published == 70
    assert pub.samples_published == sum(1 + k % 3 for k in range(70))
    assert {qos for *_, qos in log} == {1}
    by_topic: dict[str, list[tuple[int, bytes]]] = {}
    for index, topic, payload, _ in log:
        by_topic.setdefault(topic, []).append((index, payload))
    for topic, sent in by_topic.items():
        assert len({index for index, _ in sent}) == 1
        assert [p for _, p in sent] == [p for t, p in messages if t == topic]
    assert len({index for index, *_ in log}) > 1


async def test_publish_window_bounds_outstanding_calls() -> None:
    """More messages than the window still all go out, in order, through the window."""
    log: list[tuple[int, str, bytes, int]] = []
    messages = [_message("v-1", k) for k in range(50)]
    async with FleetPublisher(
        "h", n_connections=1, max_inflight_messages=4, client_factory=_factory(log)
    ) as pub:
        assert await pub.publish(messages) == 50
    assert [payload for _, _, payload, _ in log] == [p for _, p in messages]


async def test_publish_failure_is_raised_after_the_rest_are_counted() -> None:
    """One failed publish raises its error; the others still count."""
    log: list[tuple[int, str, bytes, int]] = []
    messages = [_message("v-1", 0), _message("v-bad", 0), _message("v-2", 0)]
    factory = _factory(log, fail_topic="fleet/v-bad/telemetry")
    async with FleetPublisher("h", client_factory=factory) as pub:
        with pytest.raises(ConnectionError, match="broker refused fleet/v-bad/telemetry"):
            await pub.publish(messages)
        assert pub.messages_published == 2


async def test_publish_needs_an_open_publisher() -> None:
    """Publishing outside 'async with' is an error that says so; so is re-opening."""
    pub = FleetPublisher("h", client_factory=_factory([]))
    with pytest.raises(RuntimeError, match="the publisher is unopened"):
        await pub.publish([_message("v-1", 0)])
    async with pub:
        assert pub.messages_published == 0
    with pytest.raises(RuntimeError, match="the publisher is closed"):
        await pub.publish([_message("v-1", 0)])
    with pytest.raises(RuntimeError, match="Cannot open a FleetPublisher twice"):
        await pub.__aenter__()


def test_publisher_rejects_bad_sizes() -> None:
    """Connection count and in-flight window must be positive."""
    with pytest.raises(ValueError, match="Expected n_connections in"):
        FleetPublisher("h", n_connections=0)
    with pytest.raises(ValueError, match="Expected max_inflight_messages in"):
        FleetPublisher("h", max_inflight_messages=0)


async def test_run_fleet_publishes_every_tick_for_the_duration() -> None:
    """run_fleet ticks duration/tick times and publishes everything the fleet emits."""
    log: list[tuple[int, str, bytes, int]] = []
    params = FleetParams(
        vehicles=10, samples_per_message=1, report_interval_s=0.05, parked_report_factor=1.0
    )
    fleet = FleetSimulator(params)
    summary = await run_fleet(
        fleet, "mqtt://h:1", duration_s=0.3, tick_s=0.05, client_factory=_factory(log)
    )
    assert summary.ticks == 6
    assert summary.simulated_s == pytest.approx(0.3)
    assert summary.messages == len(log) == summary.samples
    assert summary.messages >= 50  # every vehicle samples nearly every tick


async def test_run_fleet_stops_on_the_event() -> None:
    """Setting stop ends an open-ended run promptly."""
    stop = asyncio.Event()
    fleet = FleetSimulator(FleetParams(vehicles=5))
    task = asyncio.create_task(
        run_fleet(fleet, "mqtt://h:1", None, tick_s=0.02, stop=stop, client_factory=_factory([]))
    )
    await asyncio.sleep(0.15)
    stop.set()
    summary = await asyncio.wait_for(task, 2.0)
    assert summary.ticks >= 2


async def test_run_fleet_accelerated_needs_a_duration_and_ends_at_the_present() -> None:
    """time_scale > 1 without a duration is refused; with one, no sample is in the future."""
    fleet = FleetSimulator(FleetParams(vehicles=5))
    with pytest.raises(ValueError, match="Expected a duration_s with time_scale 60"):
        await run_fleet(fleet, "mqtt://h:1", None, time_scale=60.0, client_factory=_factory([]))
    with pytest.raises(ValueError, match="Expected mqtt://host:port"):
        await run_fleet(fleet, "http://h:1", 1.0)
    log: list[tuple[int, str, bytes, int]] = []
    summary = await run_fleet(
        fleet, "mqtt://h:1", 0.2, tick_s=0.05, time_scale=600.0, client_factory=_factory(log)
    )
    assert summary.simulated_s == pytest.approx(120.0)
    assert fleet.now_s is not None and fleet.now_s <= time.time() + 1.0


def test_a_small_part_of_the_simulator_loads_alone() -> None:
    """Importing one simulator module (the model code's demand profile) loads neither the
    fleet nor the MQTT publisher: the package re-exports nothing."""
    code = "import sys, sim.demand; print(sorted(m for m in sys.modules if m.startswith(('sim', 'aiomqtt'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "['sim', 'sim.demand']"

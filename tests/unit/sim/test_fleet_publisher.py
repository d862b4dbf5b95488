"""Tests for :mod:`sim.publisher` with in-memory clients: no broker is involved."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import aiomqtt
import orjson
import pytest

from sim.fleet import FleetSimulator, SwapEvent
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


# -- one connection per vehicle (credentials) ---------------------------------------------------


class _VehicleClients:
    """Fake per-vehicle connections: records who connected as whom, and the most connects
    in flight at once; a vehicle in ``refuse`` is refused once."""

    def __init__(self, refuse: set[str] | None = None) -> None:
        self.logins: list[tuple[str, str, str]] = []
        self.log: list[tuple[str, str, bytes]] = []
        self.refuse = set(refuse or ())
        self.connecting = self.most_connecting = 0
        self.closed: list[str] = []

    def factory(self, vehicle_id: str, username: str, password: str) -> AbstractAsyncContextManager[PublishClient]:
        outer = self

        @asynccontextmanager
        async def connect() -> AsyncIterator[PublishClient]:
            outer.connecting += 1
            outer.most_connecting = max(outer.most_connecting, outer.connecting)
            await asyncio.sleep(0.001)
            outer.connecting -= 1
            if vehicle_id in outer.refuse:
                outer.refuse.discard(vehicle_id)
                raise aiomqtt.MqttCodeError(5, "Not authorized")
            outer.logins.append((vehicle_id, username, password))

            class Client:
                async def publish(self, topic: str, payload: bytes, qos: int) -> None:
                    await asyncio.sleep(0)
                    outer.log.append((vehicle_id, topic, payload))

            try:
                yield Client()
            finally:
                outer.closed.append(vehicle_id)

        return connect()


def _creds(vehicle_id: str) -> tuple[str, str]:
    return vehicle_id, f"pw-of-{vehicle_id}"


async def test_credentials_open_one_connection_per_vehicle_as_that_vehicle() -> None:
    """With credentials each vehicle publishes on its own connection, logged in as itself,
    opened at its first message (none before), each vehicle's messages in order; exit
    closes them all."""
    clients = _VehicleClients()
    messages = [_message(f"v-{k % 5}", k // 5) for k in range(40)]
    async with FleetPublisher("h", credentials=_creds, vehicle_client_factory=clients.factory) as pub:
        assert pub.vehicle_connections == 0
        assert await pub.publish(messages[:3]) == 3
        assert pub.vehicle_connections == 3
        assert await pub.publish(messages[3:]) == 37
        assert pub.vehicle_connections == 5
    assert sorted(clients.logins) == [(f"v-{k}", f"v-{k}", f"pw-of-v-{k}") for k in range(5)]
    assert all(vehicle_id == topic.split("/")[1] for vehicle_id, topic, _ in clients.log)
    for k in range(5):
        topic = f"fleet/v-{k}/telemetry"
        assert [p for _, t, p in clients.log if t == topic] == [p for t, p in messages if t == topic]
    assert sorted(clients.closed) == [f"v-{k}" for k in range(5)]
    assert pub.vehicle_connections == 0 and pub.messages_published == 40


async def test_vehicle_connects_are_bounded_and_a_refused_vehicle_retries() -> None:
    """At most max_concurrent_connects connects run at once; a refused connect fails that
    vehicle's messages with an error naming it, and its next message tries again."""
    clients = _VehicleClients(refuse={"v-3"})
    messages = [_message(f"v-{k}", 0) for k in range(20)]
    async with FleetPublisher(
        "h", credentials=_creds, vehicle_client_factory=clients.factory, max_concurrent_connects=2
    ) as pub:
        with pytest.raises(aiomqtt.MqttError, match="accept vehicle v-3 as 'v-3', it refused"):
            await pub.publish(messages)
        assert clients.most_connecting == 2
        assert pub.messages_published == 19
        assert await pub.publish([_message("v-3", 1)]) == 1
        assert pub.vehicle_connections == 20


async def test_credentials_need_vehicle_topics_and_exclude_a_shared_login() -> None:
    """A topic naming no vehicle is an error quoting it; credentials and a shared
    username, or a username without a password, are refused at construction."""
    async with FleetPublisher("h", credentials=_creds, vehicle_client_factory=_VehicleClients().factory) as pub:
        for topic in ("other/v-1/telemetry", "fleet//telemetry", "fleet/a/b/telemetry"):
            with pytest.raises(ValueError, match=f"Expected a topic fleet/<vehicle_id>/telemetry, got '{topic}'"):
                await pub.publish([(topic, b"{}")])
    with pytest.raises(ValueError, match=r"either credentials .* or a username and password"):
        FleetPublisher("h", credentials=_creds, username="bms-loadgen", password="x")
    with pytest.raises(ValueError, match="username and a password together"):
        FleetPublisher("h", username="bms-loadgen")
    with pytest.raises(ValueError, match="max_concurrent_connects in"):
        FleetPublisher("h", max_concurrent_connects=0)


async def test_run_fleet_with_credentials_connects_every_vehicle_that_reports() -> None:
    """run_fleet passes the credentials on: every message goes out on its vehicle's own
    connection."""
    clients = _VehicleClients()
    params = FleetParams(vehicles=6, samples_per_message=1, report_interval_s=0.05, parked_report_factor=1.0)
    summary = await run_fleet(
        FleetSimulator(params), "mqtt://h:1", duration_s=0.2, tick_s=0.05,
        credentials=_creds, vehicle_client_factory=clients.factory,
    )  # fmt: skip
    assert summary.messages == len(clients.log) > 0
    assert {v for v, *_ in clients.logins} == {t.split("/")[1] for _, t, _ in clients.log}


# -- the field team's swaps ------------------------------------------------------------------

#: 20 parked vehicles with nearly empty batteries and 3 charged spares: 3 swaps at once.
_LOW_FLEET = FleetParams(
    vehicles=20, seed=5, initial_soc_min_pct=5.0, initial_soc_max_pct=8.0, spare_fraction=0.0,
    min_spares=3, samples_per_message=1, report_interval_s=0.05, parked_report_factor=1.0,
)  # fmt: skip


def _battery_of(payload: bytes) -> str:
    return str(orjson.loads(payload)["battery_id"])


async def test_run_fleet_records_each_ticks_swaps_after_its_messages_and_before_the_next() -> None:
    """on_swaps gets every swap once, after the broker acknowledged the messages of the
    swap's tick (the removed battery's last samples are out) and before any message of the
    installed battery is published (its twin knows the vehicle before it reports)."""
    log: list[tuple[int, str, bytes, int]] = []
    calls: list[tuple[list[SwapEvent], list[str]]] = []

    async def on_swaps(events: list[SwapEvent]) -> None:
        calls.append((events, [_battery_of(p) for _, _, p, _ in log]))

    fleet = FleetSimulator(_LOW_FLEET)
    summary = await run_fleet(
        fleet, "mqtt://h:1", duration_s=0.3, tick_s=0.05, client_factory=_factory(log), on_swaps=on_swaps
    )
    events = [e for batch, _ in calls for e in batch]
    assert len(events) == summary.swaps == fleet.swap_count == 3
    assert fleet.drain_swap_events() == []  # drained by run_fleet, nothing left behind
    for batch, published in calls:
        for e in batch:
            assert e.removed_battery_id in published
            assert e.installed_battery_id not in published
    assert {e.installed_battery_id for e in events} <= {_battery_of(p) for _, _, p, _ in log}


async def test_a_failing_swap_recorder_is_logged_with_the_count_and_the_fleet_runs_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A recorder that raises costs its records, not the run: the warning says how many
    swaps went unrecorded, and every tick still runs and publishes."""
    async def on_swaps(events: list[SwapEvent]) -> None:
        raise RuntimeError("twins unreachable")

    log: list[tuple[int, str, bytes, int]] = []
    with caplog.at_level(logging.WARNING, logger="sim.publisher"):
        summary = await run_fleet(
            FleetSimulator(_LOW_FLEET), "mqtt://h:1", duration_s=0.3, tick_s=0.05,
            client_factory=_factory(log), on_swaps=on_swaps,
        )  # fmt: skip
    assert summary.ticks == 6 and summary.swaps == 3 and summary.messages == len(log) > 0
    assert "Could not record 3 battery swap(s)" in caplog.text and "twins unreachable" in caplog.text


async def test_without_a_recorder_the_swap_events_stay_in_the_simulator() -> None:
    """No on_swaps: run_fleet leaves the events for whoever drains them, as before."""
    fleet = FleetSimulator(_LOW_FLEET)
    await run_fleet(fleet, "mqtt://h:1", duration_s=0.1, tick_s=0.05, client_factory=_factory([]))
    assert len(fleet.drain_swap_events()) == 3

"""The fleet publisher against a real MQTT broker (Mosquitto on 127.0.0.1:1883 by default,
or ``BMS_MQTT_URL``)."""

from __future__ import annotations

import asyncio
import uuid

import aiomqtt
import pytest

from contracts.telemetry import decode_message
from sim.fleet import FleetSimulator
from sim.fleet_params import FleetParams
from sim.publisher import FleetPublisher, parse_mqtt_url

from .conftest import ServiceHandles

pytestmark = pytest.mark.integration

_N_MESSAGES = 200
_START_S = 1_764_172_800.0


async def test_all_published_messages_reach_a_subscriber(services: ServiceHandles) -> None:
    """200 QoS 1 messages from FleetPublisher all arrive at an aiomqtt subscriber, valid
    and with each battery's seq in order.

    Vehicle ids carry a random prefix, so other traffic on the shared broker's
    ``fleet/+/telemetry`` is ignored.
    """
    host, port = parse_mqtt_url(services.urls.mqtt_url)
    prefix = f"it{uuid.uuid4().hex[:8]}-v"
    sim = FleetSimulator(FleetParams(vehicles=300, seed=3, vehicle_id_prefix=prefix))
    messages: list[tuple[str, bytes]] = []
    now_s = _START_S
    while len(messages) < _N_MESSAGES:
        now_s += 1.0
        messages.extend(sim.advance(1.0, now_s))
    messages = messages[:_N_MESSAGES]

    received: list[tuple[str, bytes]] = []
    async with aiomqtt.Client(host, port, identifier=f"{prefix}-sub") as sub:
        await sub.subscribe("fleet/+/telemetry", qos=1)

        async def collect() -> None:
            async for m in sub.messages:
                topic = m.topic.value
                if topic.startswith(f"fleet/{prefix}") and isinstance(m.payload, bytes):
                    received.append((topic, m.payload))
                    if len(received) == _N_MESSAGES:
                        return

        reader = asyncio.create_task(collect())
        async with FleetPublisher(host, port, n_connections=2) as pub:
            assert await pub.publish(messages) == _N_MESSAGES
        await asyncio.wait_for(reader, timeout=20.0)

    assert pub.messages_published == _N_MESSAGES
    assert sorted(received) == sorted(messages)
    seqs: dict[str, list[int]] = {}
    for topic, payload in received:
        msg = decode_message(topic, payload, now_s)
        seqs.setdefault(msg.battery_id, []).append(msg.seq)
    assert all(s == sorted(s) for s in seqs.values())

"""Vehicle identity on MQTT against a real mosquitto: the generated password file and ACL.

Each test module broker is a dedicated mosquitto (EmbeddedServices, MQTT only) that knows
vehicles v-00000 ... v-00002 and the bridge. Refusals are checked two ways: with MQTT 5 the
broker's PUBACK says 0x87 (not authorized); with 3.1.1 it drops the message silently, so a
bridge-user subscriber must see nothing, which is proven by a later message that does arrive
(a sentinel) rather than by waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import paho.mqtt.client as paho
import pytest

from bms.broker_auth import (
    LOADGEN_USERNAME,
    BrokerIdentities,
    MqttLogin,
    VehicleCredentials,
    bridge_login,
    check_mosquitto_password,
    load_provisioning_key,
    mosquitto_password_hash,
    write_provisioning,
)
from bms.services import EmbeddedServices, free_port, reachable
from bms.settings import Settings
from sim.publisher import FleetPublisher, parse_mqtt_url

pytestmark = pytest.mark.integration

# Never contacted: only the broker is embedded here.
_UNUSED = {"postgres_url": "postgresql://postgres@127.0.0.1:5432/unused", "redis_url": "redis://127.0.0.1:6379/0"}
NOT_AUTHORIZED = 0x87
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


class Broker:
    """A started embedded broker: where it is and who may log in."""

    def __init__(self, host: str, port: int, identities: BrokerIdentities) -> None:
        self.host, self.port, self.identities = host, port, identities

    @classmethod
    def of(cls, services: EmbeddedServices) -> Broker:
        return cls(*parse_mqtt_url(services.urls.mqtt_url), services.mqtt_identities)

    def vehicle(self, vehicle_id: str) -> dict[str, str]:
        assert self.identities.vehicles is not None
        username, password = self.identities.vehicles(vehicle_id)
        return {"username": username, "password": password}

    def bridge(self) -> dict[str, str]:
        return _login(self.identities.bridge)

    def client(self, login: dict[str, str] | None = None, v5: bool = False) -> aiomqtt.Client:
        return aiomqtt.Client(
            self.host, self.port, identifier=f"t-{uuid.uuid4().hex[:10]}",
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            **(login or {}),
        )  # fmt: skip


def _login(login: MqttLogin | None) -> dict[str, str]:
    assert login is not None
    return {"username": login.username, "password": login.password.get_secret_value()}


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A dedicated authenticated mosquitto knowing v-00000 ... v-00002 and bms-bridge."""
    settings = Settings.model_validate(
        {**_UNUSED, "data_dir": str(tmp_path_factory.mktemp("acl")), "sim": {"vehicles": 3}}
    )
    with EmbeddedServices(settings) as services:
        assert services.pids.keys() == {"mqtt"}
        yield Broker.of(services)


async def _topics_until(sub: aiomqtt.Client, sentinel: str, timeout_s: float = 10.0) -> list[str]:
    """Topics received up to and including ``sentinel`` (fails if it never comes)."""
    seen: list[str] = []
    async with asyncio.timeout(timeout_s):
        async for message in sub.messages:
            seen.append(str(message.topic))
            if seen[-1] == sentinel:
                return seen
    raise AssertionError(f"Expected {sentinel} to arrive, the subscription ended after {seen}.")


async def _topics(sub: aiomqtt.Client, n: int, timeout_s: float = 10.0) -> list[str]:
    """The topics of the next ``n`` messages."""
    seen: list[str] = []
    async with asyncio.timeout(timeout_s):
        async for message in sub.messages:
            seen.append(str(message.topic))
            if len(seen) == n:
                break
    return seen


def _publish_v5(broker: Broker, login: dict[str, str], topic: str) -> int:
    """Publish one QoS 1 message with MQTT 5 and return the PUBACK's reason code."""
    done = threading.Event()
    codes: list[int] = []

    def on_publish(client: paho.Client, userdata: object, mid: int, rc: object, props: object) -> None:
        codes.append(int(getattr(rc, "value", rc)))  # type: ignore[call-overload]
        done.set()

    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"t-{uuid.uuid4().hex[:10]}", protocol=paho.MQTTv5)
    c.username_pw_set(login["username"], login["password"])
    c.on_publish = on_publish
    c.connect(broker.host, broker.port)
    c.loop_start()
    try:
        c.publish(topic, b'{"x": 1}', qos=1)
        assert done.wait(10), "Expected a PUBACK within 10 s, none came."
    finally:
        c.disconnect()
        c.loop_stop()
    return codes[0]


async def test_vehicle_publishes_its_own_topic_and_the_bridge_receives_it(broker: Broker) -> None:
    """A vehicle logged in as itself publishes fleet/<its id>/telemetry; the bridge user,
    subscribed through a shared subscription as the bridge is, receives it."""
    async with broker.client(broker.bridge(), v5=True) as sub:
        await sub.subscribe("$share/bms/fleet/+/telemetry", qos=1)
        async with broker.client(broker.vehicle("v-00001")) as car:
            await car.publish("fleet/v-00001/telemetry", b"{}", qos=1)
        assert await _topics_until(sub, "fleet/v-00001/telemetry") == ["fleet/v-00001/telemetry"]


async def test_publishing_for_another_vehicle_is_refused(broker: Broker) -> None:
    """v-00001 publishing on v-00002's topic: MQTT 5 gets PUBACK 0x87 (not authorized), its
    own topic 0x00; with 3.1.1 the broker drops it silently, and the bridge sees neither."""
    async with broker.client(broker.bridge(), v5=True) as sub:
        await sub.subscribe("fleet/+/telemetry", qos=1)
        forged = await asyncio.to_thread(_publish_v5, broker, broker.vehicle("v-00001"), "fleet/v-00002/telemetry")
        own = await asyncio.to_thread(_publish_v5, broker, broker.vehicle("v-00001"), "fleet/v-00001/telemetry")
        assert (forged, own) == (NOT_AUTHORIZED, 0)
        car = broker.client(broker.vehicle("v-00001"))
        await car.__aenter__()
        await car.publish("fleet/v-00002/telemetry", b"{}", qos=1)  # 3.1.1: acknowledged...
        # mosquitto 2.0.11 with max_queued_messages 0 then also drops the connection; with a
        # finite queue (the embedded broker's, the provisioned snippet's) it keeps it.
        with contextlib.suppress(aiomqtt.MqttError):
            await car.__aexit__(None, None, None)
        async with broker.client(broker.vehicle("v-00001")) as car:
            await car.publish("fleet/v-00001/telemetry", b"{}", qos=1)
        # ...but delivered to no one: only the two own-topic messages arrive.
        seen = await _topics_until(sub, "fleet/v-00001/telemetry")
        seen += await _topics_until(sub, "fleet/v-00001/telemetry")
        assert seen == ["fleet/v-00001/telemetry"] * 2


async def test_a_vehicle_subscription_reads_nothing(broker: Broker) -> None:
    """A vehicle may subscribe to fleet/# (mosquitto 2.0's ACL file does not check
    subscriptions), but no message is delivered to it: not another vehicle's, not its own."""
    async with broker.client(broker.vehicle("v-00000"), v5=True) as spy, broker.client(broker.bridge()) as sub:
        await spy.subscribe("fleet/#", qos=1)
        await sub.subscribe("fleet/+/telemetry", qos=1)
        async with broker.client(broker.vehicle("v-00002")) as car:
            await car.publish("fleet/v-00002/telemetry", b"{}", qos=1)
        async with broker.client(broker.vehicle("v-00000")) as own:
            await own.publish("fleet/v-00000/telemetry", b"{}", qos=1)
        await _topics_until(sub, "fleet/v-00000/telemetry")
        # The bridge got both; the spy, on the same broker, got nothing meanwhile.
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                async for message in spy.messages:
                    raise AssertionError(f"Expected no delivery to a vehicle, got {message.topic}")


@pytest.mark.parametrize(
    "case", ["anonymous", "wrong password", "unknown vehicle", "bridge as a vehicle", "loadgen"]
)
async def test_clients_without_valid_credentials_cannot_connect(broker: Broker, case: str) -> None:
    """No credentials, a wrong password, a vehicle the broker was not provisioned with (its
    derived password included), and the load generator (not on this broker) are refused."""
    bridge = broker.bridge()
    logins: dict[str, dict[str, str] | None] = {
        "anonymous": None,
        "wrong password": {"username": "v-00001", "password": "not-the-password"},
        "unknown vehicle": broker.vehicle("v-00003"),
        "bridge as a vehicle": {"username": "v-00001", "password": bridge["password"]},
        "loadgen": {"username": LOADGEN_USERNAME, "password": bridge["password"]},
    }
    for v5 in (False, True):
        with pytest.raises(aiomqtt.MqttError):
            async with broker.client(logins[case], v5=v5):
                pass


async def test_loadgen_publishes_for_any_vehicle_only_on_the_bench_broker(tmp_path: Path) -> None:
    """A broker started with loadgen=True (bms bench) admits bms-loadgen, which may publish
    on every vehicle's topic and use bench/#; the default broker's ACL does not name it."""
    settings = Settings.model_validate({**_UNUSED, "data_dir": str(tmp_path), "sim": {"vehicles": 2}})
    with EmbeddedServices(settings, loadgen=True) as services:
        bench = Broker.of(services)
        loadgen = _login(bench.identities.loadgen)
        assert "bms-loadgen" in (tmp_path / "mqtt" / "acl").read_text()
        async with bench.client(bench.bridge()) as sub, bench.client(loadgen) as own:
            await sub.subscribe("fleet/+/telemetry", qos=1)
            await own.subscribe("bench/#", qos=1)
            async with FleetPublisher(bench.host, bench.port, **loadgen) as pub:
                await pub.publish([("fleet/v-00001/telemetry", b"{}"), ("fleet/x-77/telemetry", b"{}"),
                                   ("bench/r/v/telemetry", b"{}")])  # fmt: skip
            assert sorted(await _topics(sub, 2)) == ["fleet/v-00001/telemetry", "fleet/x-77/telemetry"]
            assert await _topics_until(own, "bench/r/v/telemetry") == ["bench/r/v/telemetry"]
    plain = Settings.model_validate({**_UNUSED, "data_dir": str(tmp_path / "plain")})
    with EmbeddedServices(plain) as services:
        assert services.mqtt_identities.loadgen is None
        assert "bms-loadgen" not in (tmp_path / "plain" / "mqtt" / "acl").read_text()


async def test_simulated_fleet_publishes_one_connection_per_vehicle(broker: Broker) -> None:
    """FleetPublisher with credentials opens one connection per vehicle, as that vehicle,
    and every message reaches the bridge user in order."""
    assert broker.identities.vehicles is not None
    async with broker.client(broker.bridge(), v5=True) as sub:
        await sub.subscribe("fleet/+/telemetry", qos=1)
        messages = [(f"fleet/v-0000{k % 3}/telemetry", f'{{"seq":{k}}}'.encode()) for k in range(9)]
        async with FleetPublisher(broker.host, broker.port, credentials=broker.identities.vehicles) as pub:
            assert await pub.publish(messages) == 9
            assert pub.vehicle_connections == 3
        got: list[tuple[str, bytes]] = []
        async with asyncio.timeout(10):
            async for m in sub.messages:
                got.append((str(m.topic), bytes(m.payload)))  # type: ignore[arg-type]
                if len(got) == 9:
                    break
        for v in ("v-00000", "v-00001", "v-00002"):
            topic = f"fleet/{v}/telemetry"
            assert [p for t, p in got if t == topic] == [p for t, p in messages if t == topic]


async def test_a_refused_vehicle_connection_names_the_vehicle(broker: Broker) -> None:
    """A vehicle the broker does not know fails its publish with an MqttError naming it."""
    async with FleetPublisher(broker.host, broker.port, credentials=VehicleCredentials(b"k" * 32)) as pub:
        with pytest.raises(aiomqtt.MqttError, match="vehicle v-00001 as 'v-00001'"):
            await pub.publish([("fleet/v-00001/telemetry", b"{}")])


# -- the files `bms vehicles provision` writes, in a mosquitto of their own -------------------


def _start_mosquitto(conf: Path, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read().decode() if proc.stdout else ""
            raise AssertionError(f"Expected mosquitto to start with {conf}, it exited {proc.returncode}:\n{out}"
                                 f"\n{conf.with_suffix('.log').read_text() if conf.with_suffix('.log').exists() else ''}")
        if reachable("127.0.0.1", port, timeout_s=0.2):
            return proc
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"Expected mosquitto to listen on {port} within 10 s.")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def _runnable_conf(snippet: str, out: Path) -> Path:
    conf = out / "run.conf"
    extra = [f"log_dest file {out / 'run.log'}", f"persistence_location {out}/"]
    if os.geteuid() == 0:
        extra.append("user root")  # else mosquitto drops to a user that cannot read 0600 files
    conf.write_text(snippet + "\n".join(extra) + "\n")
    return conf


async def test_provisioned_files_work_in_a_real_mosquitto(tmp_path: Path) -> None:
    """passwd, acl and the mosquitto.conf snippet from write_provisioning run as they are:
    a device logs in with its credentials.csv row and publishes; the bridge reads it."""
    data = tmp_path / "data"
    key = load_provisioning_key(data, env={})
    bridge = bridge_login(data)
    port = free_port()
    files = write_provisioning(tmp_path / "out", ["car-7", "car-8"], key, bridge, port=port)
    row = files.credentials_csv.read_text().splitlines()[1].split(",")
    assert row[:2] == ["car-7", "car-7"]
    proc = _start_mosquitto(_runnable_conf(files.mosquitto_conf.read_text(), tmp_path / "out"), port)
    try:
        broker = Broker("127.0.0.1", port, BrokerIdentities(bridge=bridge, vehicles=None))
        async with broker.client(_login(bridge)) as sub:
            await sub.subscribe("fleet/+/telemetry", qos=1)
            async with broker.client({"username": row[1], "password": row[2]}) as car:
                await car.publish("fleet/car-8/telemetry", b"{}", qos=1)  # dropped: not its own
                await car.publish("fleet/car-7/telemetry", b"{}", qos=1)
            assert await _topics_until(sub, "fleet/car-7/telemetry") == ["fleet/car-7/telemetry"]
    finally:
        _stop(proc)


def test_hashes_agree_with_mosquitto_passwd(tmp_path: Path) -> None:
    """A hash mosquitto_passwd writes checks out with our verifier, and ours (with the salt
    it used) is the same text: the format is mosquitto's own."""
    tool = shutil.which("mosquitto_passwd")
    if tool is None:
        pytest.skip("mosquitto_passwd is not installed")
    pw = tmp_path / "pw"
    pw.touch()
    subprocess.run([tool, "-b", str(pw), "car-7", "s3cret"], check=True, capture_output=True)
    hashed = pw.read_text().strip().split(":", 1)[1]
    assert check_mosquitto_password("s3cret", hashed)
    assert not check_mosquitto_password("s3cret!", hashed)
    import base64

    _, _, iterations, salt, _ = hashed.split("$")
    assert mosquitto_password_hash("s3cret", salt=base64.b64decode(salt), iterations=int(iterations)) == hashed


def test_tls_listener_snippet_is_accepted_by_mosquitto(tmp_path: Path) -> None:
    """The commented TLS listener, uncommented and pointed at openssl-made test certificates,
    starts: mosquitto accepts require_certificate and use_identity_as_username."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, cwd=tmp_path, timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=fleet-ca",
        "-keyout", "ca.key", "-out", "ca.crt")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", "broker.key", "-out", "broker.csr")
    run("x509", "-req", "-in", "broker.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "1", "-out", "broker.crt")  # fmt: skip
    data = tmp_path / "data"
    files = write_provisioning(
        tmp_path / "out", ["car-7"], load_provisioning_key(data, env={}), bridge_login(data), port=free_port()
    )
    tls_port = free_port()
    snippet = files.mosquitto_conf.read_text()
    snippet = snippet.replace("#listener 8883", f"listener {tls_port} 127.0.0.1")
    snippet = snippet.replace("/etc/mosquitto/certs/fleet-ca.crt", str(tmp_path / "ca.crt"))
    snippet = snippet.replace("/etc/mosquitto/certs/", f"{tmp_path}/")
    for option in ("#cafile", "#certfile", "#keyfile", "#require_certificate", "#use_identity_as_username"):
        snippet = snippet.replace(option, option[1:])
    assert f"\nlistener {tls_port} 127.0.0.1\n" in snippet and "\nuse_identity_as_username true\n" in snippet
    proc = _start_mosquitto(_runnable_conf(snippet, tmp_path / "out"), tls_port)
    _stop(proc)


async def test_anonymous_broker_ignores_credentials(tmp_path: Path) -> None:
    """The machine's anonymous broker (integration tests) accepts a client that brings a
    username and password it has no file for: the bridge and per-vehicle publishers work."""
    if not reachable("127.0.0.1", 1883):
        pytest.skip("no broker on 127.0.0.1:1883")
    vehicles = VehicleCredentials(load_provisioning_key(tmp_path, env={}))
    run = uuid.uuid4().hex[:8]
    async with aiomqtt.Client("127.0.0.1", 1883, username="bms-bridge", password="any",
                              protocol=aiomqtt.ProtocolVersion.V5) as sub:  # fmt: skip
        await sub.subscribe("fleet/+/telemetry", qos=1)
        async with FleetPublisher("127.0.0.1", 1883, credentials=vehicles) as pub:
            await pub.publish([(f"fleet/acl{run}-1/telemetry", b"{}")])
        seen = await _topics_until(sub, f"fleet/acl{run}-1/telemetry")
        assert seen[-1] == f"fleet/acl{run}-1/telemetry"


async def test_amqtt_fallback_enforces_the_same_identities(tmp_path: Path) -> None:
    """Without mosquitto, the amqtt broker refuses anonymous clients and wrong passwords,
    delivers a vehicle's own telemetry to the bridge and drops what it sends for another."""
    settings = Settings.model_validate({**_UNUSED, "data_dir": str(tmp_path), "sim": {"vehicles": 3}})
    with EmbeddedServices(settings, prefer_mosquitto=False) as services:
        amqtt = Broker.of(services)
        for login in (None, {"username": "v-00001", "password": "not-the-password"}):
            with pytest.raises(aiomqtt.MqttError):
                async with amqtt.client(login):
                    pass
        async with amqtt.client(amqtt.bridge()) as sub:
            await sub.subscribe("fleet/+/telemetry", qos=1)
            async with amqtt.client(amqtt.vehicle("v-00001")) as car:
                await car.publish("fleet/v-00002/telemetry", b"{}", qos=1)
                await car.publish("fleet/v-00001/telemetry", b"{}", qos=1)
            assert await _topics_until(sub, "fleet/v-00001/telemetry") == ["fleet/v-00001/telemetry"]

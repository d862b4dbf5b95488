"""EmbeddedServices starting real servers in a temporary data directory."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import aiomqtt
import psutil
import psycopg
import pytest
import redis.asyncio as aioredis

from bms.broker_auth import BrokerIdentities
from bms.services import EmbeddedServices, ServiceError, ServiceUrls, free_port, reachable
from bms.settings import Settings

pytestmark = pytest.mark.integration

POSTGRES_URL = os.environ.get("BMS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("BMS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie counts: the container's init may not reap it)."""
    try:
        status: str = psutil.Process(pid).status()
    except psutil.NoSuchProcess:
        return True
    return status == str(psutil.STATUS_ZOMBIE)


async def mqtt_round_trip(
    url: str,
    protocol: aiomqtt.ProtocolVersion,
    topic_filter: str = "fleet/+/telemetry",
    identities: BrokerIdentities | None = None,
) -> aiomqtt.Message:
    """Subscribe to ``topic_filter`` (as the bridge), publish one QoS 1 message as vehicle
    v-00001, return what arrives. Without ``identities`` both clients are anonymous."""
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    host, port = parts.hostname, parts.port
    sub_login: dict[str, str | None] = {"username": None, "password": None}
    pub_login: dict[str, str | None] = {"username": None, "password": None}
    if identities is not None:
        assert identities.bridge is not None and identities.vehicles is not None
        sub_login = {"username": identities.bridge.username,
                     "password": identities.bridge.password.get_secret_value()}
        user, password = identities.vehicles("v-00001")
        pub_login = {"username": user, "password": password}
    async with aiomqtt.Client(
        host, port, protocol=protocol, identifier=f"sub-{uuid.uuid4().hex[:8]}", **sub_login
    ) as sub:
        await sub.subscribe(topic_filter, qos=1)
        async with aiomqtt.Client(host, port, protocol=protocol, **pub_login) as pub:
            await pub.publish("fleet/v-00001/telemetry", b'{"hello": 1}', qos=1)
        async with asyncio.timeout(10):
            async for message in sub.messages:
                return message
    raise AssertionError("Expected one message, the subscription ended without any.")


async def postgres_answers(url: str) -> None:
    """A query works from this process and from a separate one (as a Ray worker would)."""
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cur = await conn.execute("SELECT 40 + 2")
        assert await cur.fetchone() == (42,)
    out = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-c",
            f"import psycopg; print(psycopg.connect({url!r}).execute('SELECT 7').fetchone()[0])",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout.strip() == "7"


async def redis_answers(url: str) -> None:
    client = aioredis.Redis.from_url(url)
    try:
        assert await client.ping()
        await client.set("bms:test", b"x")
        assert await client.get("bms:test") == b"x"
    finally:
        await client.aclose()


def test_helpers_find_a_free_port_and_probe_it() -> None:
    """``free_port`` returns a port nothing listens on, and ``reachable`` says so."""
    assert not reachable("127.0.0.1", free_port(), timeout_s=0.2)


async def test_embedded_servers_answer_and_stop_without_leftovers(tmp_path: Path) -> None:
    """With no URLs configured, real pgserver, redis-server and mosquitto start under
    data_dir, each answers a real round trip (incl. an MQTT 5 shared subscription), and
    stop() leaves none of their processes running; a second stop() is a no-op."""
    services = EmbeddedServices(Settings(data_dir=tmp_path / "data"))
    with services:
        urls = services.urls
        pids = dict(services.pids)
        assert set(pids) == {"postgres", "redis", "mqtt"}
        assert services.mqtt_supports_shared_subscriptions
        assert urls.mqtt_url.startswith("mqtt://127.0.0.1:")
        assert urls.redis_url.startswith("redis://127.0.0.1:")
        await postgres_answers(urls.postgres_url)
        await redis_answers(urls.redis_url)
        identities = services.mqtt_identities
        message = await mqtt_round_trip(
            urls.mqtt_url, aiomqtt.ProtocolVersion.V5, identities=identities
        )
        assert message.payload == b'{"hello": 1}'
        shared = await mqtt_round_trip(
            urls.mqtt_url, aiomqtt.ProtocolVersion.V5, "$share/bms/fleet/+/telemetry", identities
        )
        assert str(shared.topic) == "fleet/v-00001/telemetry"
        config = (tmp_path / "data" / "mqtt" / "mosquitto.conf").read_text()
        # A deep queue (not 0: see bms.services) and sessions kept on disk (docs/reliability.md).
        assert "max_queued_messages 10000000" in config and "persistence true" in config
    assert all(gone(pid) for pid in pids.values()), pids
    services.stop()
    with pytest.raises(ServiceError, match="Expected started services"):
        _ = services.urls


async def test_postgres_data_persists_across_restarts(tmp_path: Path) -> None:
    """A row committed before stop() is there after a new start on the same data_dir."""
    settings = Settings(data_dir=tmp_path / "data", redis_url=REDIS_URL, mqtt_url="mqtt://x:1")
    with EmbeddedServices(settings) as services:
        async with await psycopg.AsyncConnection.connect(
            services.urls.postgres_url, autocommit=True
        ) as conn:
            await conn.execute("CREATE TABLE kept (x int); INSERT INTO kept VALUES (5)")
    with EmbeddedServices(settings) as services:
        async with await psycopg.AsyncConnection.connect(services.urls.postgres_url) as conn:
            cur = await conn.execute("SELECT x FROM kept")
            assert await cur.fetchall() == [(5,)]


async def test_amqtt_fallback_broker_round_trip(tmp_path: Path) -> None:
    """Without mosquitto the amqtt broker serves MQTT 3.1.1, reports no shared
    subscriptions, and is stopped; configured Postgres and Redis URLs are passed through."""
    settings = Settings(data_dir=tmp_path / "data", postgres_url=POSTGRES_URL, redis_url=REDIS_URL)
    with EmbeddedServices(settings, prefer_mosquitto=False) as services:
        pids = dict(services.pids)
        assert set(pids) == {"mqtt"}
        assert services.urls.postgres_url == POSTGRES_URL
        assert services.urls.redis_url == REDIS_URL
        assert not services.mqtt_supports_shared_subscriptions
        message = await mqtt_round_trip(
            services.urls.mqtt_url, aiomqtt.ProtocolVersion.V311,
            identities=services.mqtt_identities,
        )
        assert message.payload == b'{"hello": 1}'
    assert gone(pids["mqtt"])


def test_external_urls_start_nothing(tmp_path: Path) -> None:
    """With all three URLs configured, start() returns them unchanged and starts no process."""
    settings = Settings(
        data_dir=tmp_path / "data",
        postgres_url=POSTGRES_URL,
        redis_url=REDIS_URL,
        mqtt_url="mqtt://broker.example:1883",
    )
    with EmbeddedServices(settings) as services:
        assert services.urls == ServiceUrls(POSTGRES_URL, REDIS_URL, "mqtt://broker.example:1883")
        assert services.pids == {}
        assert services.mqtt_supports_shared_subscriptions


def test_broker_that_cannot_bind_fails_with_its_log_tail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When every port offered is taken, start() retries, then raises an error naming the
    server, the port and the broker's own log lines, and leaves nothing running."""
    import socket

    import bms.services

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        monkeypatch.setattr(bms.services, "free_port", lambda host="127.0.0.1": port)
        settings = Settings(
            data_dir=tmp_path / "data", postgres_url=POSTGRES_URL, redis_url=REDIS_URL
        )
        services = EmbeddedServices(settings, start_timeout_s=5)
        with pytest.raises(
            ServiceError, match=r"(?s)mosquitto did not start after 3 ports.*Log tail"
        ):
            services.start()
        assert services.pids == {}

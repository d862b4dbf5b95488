"""``bms bench ingest``: end-to-end ingest through a real broker into real twins.

One run:

1. starts the servers (embedded, or the ``BMS_*`` URLs) and the system (directory, shards,
   bridge workers) in a fresh Ray namespace, PostgreSQL schema and Redis prefix;
2. warms up: one message per battery, so every twin exists before timing starts;
3. publishes for ``seconds``: as fast as the publisher can, or each battery every
   ``report_interval_s``; samples carry the publish time, so a shard's
   ``apply time - sample ts`` is the publish-to-visible freshness;
4. drains, then counts: published = accepted + rejected + lost;
5. measures, in the same run, a bare aiomqtt subscriber that only parses the same messages
   (in its own process), as the ceiling a bridge could reach on this machine.

The last line printed is one JSON object.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import multiprocessing as mp
import os
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from bms.broker_auth import BENCH_TOPIC_ROOT, MqttLogin
from bms.services import EmbeddedServices, ServiceUrls
from bms.settings import Settings
from sim.publisher import FleetPublisher, parse_mqtt_url
from sim.telemetry_encoder import SAMPLE_COLUMNS, encode_messages

__all__ = [
    "IngestBenchParams",
    "SyntheticLoad",
    "bridge_totals",
    "login_args",
    "own_ray_processes",
    "publish_warm_up",
    "ray_processes",
    "ray_pss_mb",
    "run_ingest_bench",
    "system_rss_mb",
    "wait_drained",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IngestBenchParams:
    batteries: int
    seconds: float
    shard_size: int
    samples_per_message: int = 50
    report_interval_s: float | None = None
    bridge_workers: int = 1
    chunk_messages: int = 500

    def __post_init__(self) -> None:
        if self.batteries < 1 or self.seconds <= 0 or self.shard_size < 1:
            raise ValueError(
                f"Expected batteries >= 1, seconds > 0, shard_size >= 1, got "
                f"{self.batteries}, {self.seconds}, {self.shard_size}."
            )
        if not 1 <= self.samples_per_message <= 500:
            raise ValueError(f"Expected samples_per_message in [1, 500], got {self.samples_per_message}.")
        if self.report_interval_s is not None and self.report_interval_s <= 0:
            raise ValueError(f"Expected report_interval_s > 0, got {self.report_interval_s}.")


def ray_processes(
    exclude_pids: set[int], among: list[psutil.Process] | None = None
) -> list[tuple[psutil.Process, str]]:
    """Ray's processes (GCS, raylet, dashboard, workers), each with its role.

    Roles: twin shards (``shard``), bridge workers (``bridge``), the directory, and
    ``other`` (GCS, raylet, dashboard, Serve, idle workers). ``among`` limits the search to
    those processes (default: every process on the machine); ``exclude_pids`` are skipped.
    """
    out: list[tuple[psutil.Process, str]] = []
    for p in psutil.process_iter(["pid", "name", "cmdline"]) if among is None else among:
        try:
            pid, name, argv = p.pid, p.name(), p.cmdline()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if pid in exclude_pids:
            continue
        cmd = " ".join(argv or [])
        if not ("ray" in name or "/ray/" in cmd or cmd.startswith("ray::") or "gcs_server" in cmd or "raylet" in cmd):
            continue
        role = ("shard" if "_ShardActor" in cmd else "bridge" if "BridgeWorker" in cmd
                else "directory" if "_DirectoryActor" in cmd else "other")  # fmt: skip
        out.append((p, role))
    return out


def own_ray_processes(exclude_pids: set[int]) -> list[tuple[psutil.Process, str]]:
    """:func:`ray_processes` of the Ray this process started (its descendants), so another
    cluster on a shared machine is not counted; every Ray process on the machine when this
    process started none (the system joined a running cluster)."""
    mine = psutil.Process().children(recursive=True)
    return ray_processes(exclude_pids, among=mine) or ray_processes(exclude_pids)


def ray_pss_mb(exclude_pids: set[int]) -> dict[str, list[float]]:
    """Proportional set size of Ray's processes (GCS, raylet, dashboard, workers), by role.

    PSS charges each shared page to its sharers pro rata, so summing it over processes
    counts the memory once. Database and broker servers are not Ray processes and are
    not counted; neither is the benchmark's own publisher (``exclude_pids``), nor another
    Ray cluster on the machine (:func:`own_ray_processes`). Roles: as
    :func:`ray_processes` gives them.
    """
    out: dict[str, list[float]] = {"shard": [], "bridge": [], "directory": [], "other": []}
    for p, role in own_ray_processes(exclude_pids):
        try:
            pss = p.memory_full_info().pss / 2**20
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        out[role].append(pss)
    return out


def system_rss_mb(exclude_pids: set[int]) -> float:
    """Total PSS of Ray's processes, in MB (see :func:`ray_pss_mb`)."""
    return sum(sum(v) for v in ray_pss_mb(exclude_pids).values())


class SyntheticLoad:
    """Synthetic but valid telemetry for N batteries (fixed seed), encoded in bulk.

    Battery ``i`` is ``bb<run>-<i:06d>`` (:meth:`battery_prefix`) in vehicle
    ``bv<run>-<i:06d>``, parked within a few km of (:attr:`CENTER_LAT`, :attr:`CENTER_LON`);
    each call of :meth:`messages` gives the batteries picked their next message (``seq`` one
    up, timestamps after the previous message's, the last one at ``now_s``).
    """

    #: Where the batteries are (central Berlin, as the simulated fleet's default centre).
    CENTER_LAT = 52.52
    CENTER_LON = 13.40

    def __init__(self, run: str, n: int, m: int, seed: int = 11) -> None:
        self.vehicles = [f"bv{run}-{i:06d}" for i in range(n)]
        self.batteries = [f"{self.battery_prefix(run)}{i:06d}" for i in range(n)]
        self.seq = np.zeros(n, dtype=np.int64)
        self.last_ms = np.zeros(n, dtype=np.int64)
        self.m = m
        self.rng = np.random.default_rng(seed)
        self.soc = self.rng.uniform(40, 95, n)
        self.lat = self.CENTER_LAT + self.rng.normal(0, 0.03, n)
        self.lon = self.CENTER_LON + self.rng.normal(0, 0.05, n)
        self.odo = self.rng.uniform(0, 3000, n)
        self.col = {c: i for i, c in enumerate(SAMPLE_COLUMNS)}

    @staticmethod
    def battery_prefix(run: str) -> str:
        """What every battery id of run ``run`` starts with."""
        return f"bb{run}-"

    def messages(self, idx: np.ndarray, now_s: float, span_s: float, m: int | None = None) -> tuple[list[tuple[str, bytes]], int]:
        m = self.m if m is None else m
        k = idx.size
        n = k * m
        # Whole milliseconds: the encoder writes ts with 3 decimals, and two samples of one
        # battery with the same ts are duplicates. Each message starts after the previous one.
        step_ms = max(1, round(span_s * 1000 / (m - 1))) if m > 1 else 1
        offs_ms = np.arange(m, dtype=np.int64) * step_ms
        start_ms = np.maximum(int(now_s * 1000) - int(offs_ms[-1]), self.last_ms[idx] + 1)
        ts_ms = start_ms[:, None] + offs_ms[None, :]
        previous_ms = self.last_ms[idx].copy()
        self.last_ms[idx] = ts_ms[:, -1]
        v = self._values(idx, ts_ms, previous_ms)
        seqs = self.seq[idx].copy()
        self.seq[idx] += 1
        msgs = encode_messages(
            [self.vehicles[i] for i in idx.tolist()],
            [self.batteries[i] for i in idx.tolist()],
            seqs,
            np.full(k, m),
            v,
        )
        return msgs, n

    def _values(self, idx: np.ndarray, ts_ms: np.ndarray, previous_ms: np.ndarray) -> np.ndarray:
        """The ``(k * m, len(SAMPLE_COLUMNS))`` sample values of the ``k`` batteries ``idx``,
        ``m`` samples each at ``ts_ms`` (``(k, m)``, whole ms), battery by battery;
        ``previous_ms`` is each battery's sample before them (0: none yet).

        Current, temperature and speed are drawn afresh for every sample: cheap, and
        enough to load the ingest path, though no pack behaves like that (the soak's
        :class:`bms.bench.steady_load.SteadyLoad` does).
        """
        k, m = ts_ms.shape
        n = k * m
        v = np.empty((n, len(SAMPLE_COLUMNS)))
        c = self.col
        # Drains slowly and stops at 15 %: jumping back to full would be a SoC rise the
        # twins refuse as implausible (a swap is a different battery, not a refill).
        self.soc[idx] = np.maximum(self.soc[idx] - 0.05 * m / 50, 15.0)
        rep = np.repeat
        v[:, c["ts"]] = (ts_ms / 1000.0).ravel()
        current = self.rng.uniform(0.0, 15.0, n)
        v[:, c["current_a"]] = current
        soc = rep(self.soc[idx], m)
        v[:, c["soc_pct"]] = soc
        v[:, c["pack_voltage_v"]] = 13 * (3.4 + 0.008 * soc) - 0.15 * current
        v[:, c["temp_c"]] = self.rng.uniform(15.0, 40.0, n)
        v[:, c["lat"]] = rep(self.lat[idx], m)
        v[:, c["lon"]] = rep(self.lon[idx], m)
        v[:, c["odometer_km"]] = rep(self.odo[idx], m)
        v[:, c["speed_kmh"]] = self.rng.uniform(0.0, 25.0, n)
        v[:, c["cell_min_v"]] = 3.4 + 0.008 * soc - 0.01
        v[:, c["cell_max_v"]] = 3.4 + 0.008 * soc + 0.01
        return v


def _bare_subscriber(
    host: str, port: int, topic: str, expect_messages: int, out: Any, ready: Any,
    username: str | None = None, password: str | None = None,
) -> None:  # fmt: skip
    """Child process: subscribe, parse every payload with orjson, report samples/s."""
    import aiomqtt
    import orjson

    async def main() -> None:
        async with aiomqtt.Client(
            host, port, identifier=f"bare-{uuid.uuid4().hex[:6]}", protocol=aiomqtt.ProtocolVersion.V5,
            username=username, password=password,
        ) as c:  # fmt: skip
            await c.subscribe(topic, qos=1)
            ready.set()
            n = samples = 0
            t0 = t1 = 0.0
            async for m in c.messages:
                doc = orjson.loads(m.payload)
                samples += len(doc["samples"])
                n += 1
                if n == 1:
                    t0 = time.perf_counter()
                t1 = time.perf_counter()
                if n >= expect_messages:
                    break
            out.put({"messages": n, "samples": samples, "seconds": t1 - t0})

    asyncio.run(main())


async def publish_warm_up(pub: FleetPublisher, load: SyntheticLoad, age_s: float = 0.0) -> int:
    """One one-sample message per battery, so every twin and directory entry exists before
    a timed phase starts; returns the samples published (acknowledged).

    The sample is stamped ``age_s`` in the past: a battery's next message starts after it,
    so a paced phase whose messages reach that far back must not find it newer (its first
    messages would end in the future).
    """
    published = 0
    all_idx = np.arange(len(load.batteries))
    for a in range(0, all_idx.size, 2000):
        msgs, n = load.messages(all_idx[a : a + 2000], time.time() - age_s, 0.0, m=1)
        await pub.publish(msgs)  # raises unless every message was acknowledged
        published += n
    return published


def login_args(login: MqttLogin | None) -> tuple[str | None, str | None]:
    """Username and password of the load generator, or none (an anonymous broker)."""
    if login is None:
        return None, None
    return login.username, login.password.get_secret_value()


async def _measure_bare(
    urls: ServiceUrls, load: SyntheticLoad, n_messages: int, run: str, loadgen: MqttLogin | None
) -> dict[str, float]:
    host, port = parse_mqtt_url(urls.mqtt_url)
    # Away from fleet/, so the bridge does not see it; the load generator may use bench/#.
    topic_root = f"{BENCH_TOPIC_ROOT}/bare{run}"
    ctx = mp.get_context("spawn")
    out, ready = ctx.Queue(), ctx.Event()
    username, password = login_args(loadgen)
    proc = ctx.Process(
        target=_bare_subscriber,
        args=(host, port, f"{topic_root}/+/telemetry", n_messages, out, ready, username, password),
    )
    proc.start()
    try:
        await asyncio.get_running_loop().run_in_executor(None, ready.wait, 30)
        idx_all = np.arange(len(load.batteries))
        sent = 0
        async with FleetPublisher(host, port, n_connections=2, client_id_prefix=f"benchbare{run}",
                                  username=username, password=password) as pub:
            while sent < n_messages:
                k = min(500, n_messages - sent)
                idx = idx_all[(sent + np.arange(k)) % idx_all.size]
                msgs, _ = load.messages(idx, time.time(), 1.0)
                await pub.publish([(f"{topic_root}/{t.split('/')[1]}/telemetry", p) for t, p in msgs])
                sent += k
        res = await asyncio.get_running_loop().run_in_executor(None, out.get, True, 120)
    finally:
        proc.join(5)
        if proc.is_alive():
            proc.kill()
    return {"samples_per_s": res["samples"] / max(res["seconds"], 1e-9), "messages": res["messages"]}


async def bridge_totals(namespace: str, bridge_names: list[str]) -> dict[str, int]:
    """Accepted samples, rejected and duplicate messages, duplicate samples: summed over
    the bridge workers, since they started."""
    from runtime.system import bridge_stats

    stats = await bridge_stats(namespace, bridge_names)
    return {
        "accepted_samples": sum(s.accepted_samples for s in stats),
        "rejected_messages": sum(s.rejected_messages for s in stats),
        "duplicate_messages": sum(s.duplicate_messages for s in stats),
        "duplicate_samples": sum(s.duplicate_samples for s in stats),
    }


async def wait_drained(namespace: str, bridge_names: list[str], target: int, timeout_s: float) -> dict[str, int]:
    """Bridge totals once ``target`` samples were accepted (or at the timeout)."""
    deadline = time.time() + timeout_s
    while True:
        totals = await bridge_totals(namespace, bridge_names)
        if totals["accepted_samples"] >= target or time.time() > deadline:
            return totals
        await asyncio.sleep(0.1)


def run_ingest_bench(p: IngestBenchParams, base: Settings | None = None) -> dict[str, Any]:
    """Run the benchmark; returns the result object (also printed by the CLI)."""
    import ray

    from bms.system import FleetSystem, init_ray, ray_options, system_spec
    from runtime.twins import FleetClient

    run = uuid.uuid4().hex[:6]
    base = base or Settings.load()
    tmp = tempfile.TemporaryDirectory(prefix="bms-bench-")
    settings = base.model_copy(update={
        "data_dir": Path(tmp.name),
        "twins": base.twins.model_copy(update={"shard_size": p.shard_size, "checkpoint_interval_s": 3600.0}),
        "bridge": base.bridge.model_copy(update={"workers": p.bridge_workers, "session_expiry_s": 60}),
        "ray": base.ray.model_copy(update={"namespace": f"bench{run}"}),
    })
    # The embedded broker admits the load generator, which publishes for every battery over
    # two connections: 100,000 vehicle connections would measure the broker, not ingest.
    services = EmbeddedServices(settings, loadgen=True)
    urls = services.start()
    loadgen = services.mqtt_identities.loadgen
    schema = f"bench_{run}"
    with psycopg.connect(urls.postgres_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    urls = dataclasses.replace(urls, postgres_url=make_conninfo(urls.postgres_url, options=f"-c search_path={schema}"))
    shared = services.mqtt_supports_shared_subscriptions
    system = FleetSystem(system_spec(
        settings, urls, shared_subscriptions=shared, mqtt_v5=shared, redis_prefix=f"bench{run}:",
        with_http=False, initial_shards=math.ceil(p.batteries / p.shard_size), include_dashboard=False,
    ))
    try:
        init_ray(ray_options(settings, include_dashboard=False))
        t0 = time.time()
        system.start()
        startup_s = time.time() - t0
        # Shards start empty: their PSS now is a shard's fixed cost, the growth is the twins'.
        empty = ray_pss_mb({os.getpid()})["shard"]
        # Ray runs its workers at niceness 15; the load generator gets the same, so it does
        # not starve the system it is measuring (they share this machine's two cores).
        os.nice(15 - os.nice(0))
        result = asyncio.run(_bench(p, system, urls, run, FleetClient(system.namespace), loadgen))
        result["startup_s"] = round(startup_s, 1)
        result["broker"] = "mosquitto/external" if shared else "amqtt"
        full = ray_pss_mb({os.getpid()})
        twins = max(1, int(result["twins_resident"]))
        result["empty_shard_pss_mb"] = round(float(np.median(empty)), 1) if empty else None
        result["shard_pss_mb"] = [round(v, 1) for v in sorted(full["shard"])]
        result["shard_mb_per_twin"] = round((sum(full["shard"]) - sum(empty)) / twins, 4)
        result["mb_per_twin"] = round(result["rss_mb"] / twins, 4)
        result["pss_by_role_mb"] = {k: round(sum(v), 1) for k, v in full.items()}
        return result
    finally:
        with contextlib.suppress(Exception):
            system.stop()
        with contextlib.suppress(Exception):
            ray.shutdown()
        with contextlib.suppress(Exception), psycopg.connect(services.urls.postgres_url, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
        services.stop()
        tmp.cleanup()


async def _bench(
    p: IngestBenchParams, system: Any, urls: ServiceUrls, run: str, fleet: Any, loadgen: MqttLogin | None
) -> dict[str, Any]:
    host, port = parse_mqtt_url(urls.mqtt_url)
    load = SyntheticLoad(run, p.batteries, p.samples_per_message)
    me = {os.getpid()}
    rss_peak = 0.0
    all_idx = np.arange(p.batteries)
    username, password = login_args(loadgen)
    async with FleetPublisher(
        host, port, n_connections=2, client_id_prefix=f"bench{run}", username=username, password=password
    ) as pub:
        published = await publish_warm_up(pub, load)
        await wait_drained(system.namespace, system.bridge_names, published, 600)
        base = await bridge_totals(system.namespace, system.bridge_names)
        await fleet.call_all("reset_latency")
        rss_peak = system_rss_mb(me)

        t_start = time.time()
        timed_published = 0
        inflight: set[asyncio.Task[int]] = set()
        next_rss = t_start + 2.0
        if p.report_interval_s is None:
            cursor = 0
            while time.time() - t_start < p.seconds:
                k = min(p.chunk_messages, p.batteries)
                idx = all_idx[(cursor + np.arange(k)) % p.batteries]
                cursor = (cursor + k) % p.batteries
                # 1 ms between samples: as fast as it publishes, a battery's clock must not
                # run far ahead of real time (the bridge rejects future timestamps).
                msgs, n = load.messages(idx, time.time(), 1e-3 * (p.samples_per_message - 1))
                while len(inflight) >= 4:
                    _, inflight = await asyncio.wait(inflight, return_when=asyncio.FIRST_COMPLETED)
                task = asyncio.create_task(pub.publish(msgs))
                inflight.add(task)
                timed_published += n
                if time.time() > next_rss:
                    rss_peak = max(rss_peak, system_rss_mb(me))
                    next_rss = time.time() + 2.0
        else:
            interval = p.report_interval_s
            phase = (all_idx * interval / p.batteries)
            tick = 0.05
            k_tick = 0
            while time.time() - t_start < p.seconds:
                lo, hi = (k_tick * tick) % interval, (k_tick * tick + tick) % interval
                due = all_idx[(phase >= lo) & (phase < hi)] if lo < hi else all_idx[(phase >= lo) | (phase < hi)]
                if due.size:
                    msgs, n = load.messages(due, time.time(), interval * (p.samples_per_message - 1) / p.samples_per_message)
                    task = asyncio.create_task(pub.publish(msgs))
                    inflight.add(task)
                    task.add_done_callback(inflight.discard)
                    timed_published += n
                k_tick += 1
                if time.time() > next_rss:
                    rss_peak = max(rss_peak, system_rss_mb(me))
                    next_rss = time.time() + 2.0
                await asyncio.sleep(max(0.0, t_start + k_tick * tick - time.time()))
        if inflight:
            await asyncio.gather(*inflight)
        t_published = time.time()
        total = published + timed_published
        end = await wait_drained(system.namespace, system.bridge_names, total, 300)
        rss_peak = max(rss_peak, system_rss_mb(me))

    shard_stats = await fleet.shard_stats()
    # What a bigger shard costs besides memory: one checkpoint of the whole table (the
    # shards checkpoint concurrently; a restarted shard reloads one of these).
    t_ckpt = time.time()
    ckpt_bytes: list[int] = await fleet.call_all("checkpoint")
    checkpoint_s = time.time() - t_ckpt
    last_apply = max((s.last_apply_at_s or 0.0) for s in shard_stats)
    lat = await fleet.latencies()
    accepted = end["accepted_samples"] - base["accepted_samples"]
    rejected = 0  # every published message is valid; rejections would show as rejected_messages
    rejected_msgs = end["rejected_messages"] - base["rejected_messages"]
    elapsed = max(last_apply, t_published) - t_start
    bare = await _measure_bare(urls, load, min(20_000, max(2000, timed_published // p.samples_per_message)), run, loadgen)
    sps = accepted / elapsed if elapsed > 0 else 0.0
    return {
        "benchmark": "ingest",
        "batteries": p.batteries,
        "twins_resident": sum(s.twins for s in shard_stats),
        "shard_size": p.shard_size,
        "shards": len(shard_stats),
        "bridge_workers": len(system.bridge_names),
        "samples_per_message": p.samples_per_message,
        "report_interval_s": p.report_interval_s,
        "seconds": p.seconds,
        "published_samples": timed_published,
        "accepted_samples": accepted,
        "rejected_samples": rejected + rejected_msgs * p.samples_per_message,
        "lost_samples": timed_published - accepted - rejected - rejected_msgs * p.samples_per_message,
        "duplicate_messages": end["duplicate_messages"] - base["duplicate_messages"],
        "duplicate_samples": end["duplicate_samples"] - base["duplicate_samples"],
        "samples_per_s": round(sps, 1),
        "publish_samples_per_s": round(timed_published / max(t_published - t_start, 1e-9), 1),
        "freshness_p50_s": round(float(np.percentile(lat, 50)), 4) if lat.size else None,
        "freshness_p99_s": round(float(np.percentile(lat, 99)), 4) if lat.size else None,
        "rss_mb": round(rss_peak, 1),
        "checkpoint_s": round(checkpoint_s, 2),
        "checkpoint_mb_per_shard": round(max(ckpt_bytes) / 2**20, 1) if ckpt_bytes else None,
        "bare_subscriber_samples_per_s": round(bare["samples_per_s"], 1),
        "ratio_to_bare": round(sps / bare["samples_per_s"], 3) if bare["samples_per_s"] else None,
    }

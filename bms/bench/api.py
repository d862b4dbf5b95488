"""``bms bench api``: HTTP read throughput of the running system, next to a bare Serve endpoint.

One run:

1. starts the servers (embedded, or the ``BMS_*`` URLs) and the whole system as ``bms run``
   does (twins, bridge, the Serve app, and the models, planner and alerts as configured),
   in a fresh Ray namespace, PostgreSQL schema, Redis prefix and data directory, plus a
   bare Serve endpoint: a deployment answering ``{}``, deployed with the API ingress's
   options and reached through the same proxy, the ceiling of the serving path itself;
2. starts the simulated fleet (``--vehicles``) in its own process, each vehicle on its own
   MQTT connection as in ``bms run``, and waits until every vehicle's battery is in the
   API's read snapshot (``GET /api/v1/fleet/map``);
3. for each route in turn, runs ``--clients`` closed-loop clients for ``--seconds`` (after
   a short warm-up) with real tokens: reads of random known batteries (a fleet manager's
   token), availability queries at random points of the service area (a customer's), the
   fleet summary (fleet manager) and the bare endpoint;
4. reports per route requests per second, p50/p99 latency and errors, the CPU each part
   of the system used meanwhile (% of one core), and the load generator's own CPU.

The load generator is one asyncio process (uvloop when installed) speaking HTTP/1.1 with
keep-alive over raw streams, one connection per client, at the niceness of Ray's workers
(15), so it takes a small, reported share of the cores it shares with the system. The last
line printed is one JSON object.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import multiprocessing as mp
import os
import random
import re
import resource
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from bms.bench.harness import fleet_process, free_port, issue_tokens
from bms.settings import Settings

__all__ = ["ROUTES", "ApiBenchParams", "LoadResult", "run_api_bench", "run_load"]

log = logging.getLogger(__name__)

#: The measured routes, in the order they run.
ROUTES: tuple[str, ...] = ("battery", "availability", "summary", "bare_serve")
#: Where the bare endpoint is mounted.
BARE_PREFIX = "/bench-bare"
_STALENESS_RE = re.compile(rb'"staleness_s":([0-9.eE+-]+)')


@dataclass(frozen=True)
class ApiBenchParams:
    """What one ``bms bench api`` run measures.

    Parameters
    ----------
    vehicles
        Simulated vehicles (one battery each, plus the spares the simulated operations
        team swaps in).
    clients
        Concurrent closed-loop clients per route (one keep-alive connection each).
    seconds
        Measured time per route, after ``warmup_s``.
    routes
        Which of :data:`ROUTES` to measure.
    models
        Deploy the models (and so the planner), as ``bms run`` does by default.
    direct_ingress
        HAProxy in front of the ingress replicas' own HTTP servers (the default serving
        path); False measures Serve's Python proxy instead.
    ingress_replicas
        Replicas of the API's ingress deployment (each holds its own read snapshot).
    radius_m
        Search radius of the availability queries.
    wait_s
        Longest wait for every vehicle's twin.
    """

    vehicles: int = 1000
    clients: int = 32
    seconds: float = 20.0
    warmup_s: float = 3.0
    routes: tuple[str, ...] = ROUTES
    models: bool = True
    direct_ingress: bool = True
    ingress_replicas: int = 1
    radius_m: float = 1000.0
    wait_s: float = 600.0

    def __post_init__(self) -> None:
        if self.vehicles < 1 or self.clients < 1 or self.seconds <= 0 or self.warmup_s < 0:
            raise ValueError(
                f"Expected vehicles >= 1, clients >= 1, seconds > 0 and warmup_s >= 0, got "
                f"{self.vehicles}, {self.clients}, {self.seconds} and {self.warmup_s}."
            )
        unknown = [r for r in self.routes if r not in ROUTES]
        if unknown or not self.routes:
            raise ValueError(f"Expected routes from {ROUTES}, got {list(self.routes)}.")
        if self.ingress_replicas < 1:
            raise ValueError(f"Expected ingress_replicas >= 1, got {self.ingress_replicas}.")
        if not self.radius_m > 0 or not self.wait_s > 0:
            raise ValueError(f"Expected radius_m > 0 and wait_s > 0, got {self.radius_m} and {self.wait_s}.")


# ---------------------------------------------------------------------- the load generator
@dataclass(frozen=True)
class LoadResult:
    """What the clients of one route saw in the measured window."""

    seconds: float
    latencies_s: list[float]
    errors: dict[str, int]
    cpu_s: float
    staleness_s: list[float]

    def summary(self) -> dict[str, Any]:
        """The route's entry of the benchmark's JSON line."""
        lat_ms = np.asarray(self.latencies_s) * 1000.0
        out: dict[str, Any] = {
            "requests_per_s": round(len(self.latencies_s) / self.seconds, 1),
            "p50_ms": round(float(np.percentile(lat_ms, 50)), 1) if lat_ms.size else None,
            "p99_ms": round(float(np.percentile(lat_ms, 99)), 1) if lat_ms.size else None,
            "errors": sum(self.errors.values()),
            "loadgen_cpu_pct": round(100.0 * self.cpu_s / self.seconds, 1),
        }
        if self.errors:
            out["errors_by_kind"] = dict(sorted(self.errors.items()))
        if self.staleness_s:
            out["staleness_p50_s"] = round(float(np.median(self.staleness_s)), 3)
            out["staleness_max_s"] = round(max(self.staleness_s), 3)
        return out


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One HTTP/1.1 response: its status and body (Content-Length or chunked)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length, chunked = -1, False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if chunked:
        body = bytearray()
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return status, bytes(body)
            body += (await reader.readexactly(size + 2))[:-2]
    return status, (await reader.readexactly(length)) if length > 0 else b""


def _cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return float(ru.ru_utime + ru.ru_stime)


async def run_load(
    host: str,
    port: int,
    paths: Sequence[str],
    headers: dict[str, str],
    clients: int,
    seconds: float,
    *,
    warmup_s: float = 0.0,
    seed: int = 0,
    staleness_every: int = 0,
) -> LoadResult:
    """``clients`` closed-loop clients GETting random ``paths`` for ``seconds``.

    Each client holds one keep-alive connection and sends its next request as soon as the
    previous answer is in. Only requests sent and answered inside the measured window
    (after ``warmup_s``) count. A broken connection counts as an error and is reopened.
    With ``staleness_every`` > 0, every n-th answer's ``staleness_s`` is kept.
    """
    if not paths:
        raise ValueError("Expected at least one path to request, got none.")
    rng = random.Random(seed)
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    requests = [f"GET {p} HTTP/1.1\r\nHost: {host}:{port}\r\n{extra}\r\n".encode() for p in paths]
    latencies: list[float] = []
    errors: dict[str, int] = {}
    staleness: list[float] = []
    t_measure = time.perf_counter() + warmup_s
    t_end = t_measure + seconds

    async def client() -> None:
        reader: asyncio.StreamReader | None = None
        writer: asyncio.StreamWriter | None = None
        answered = 0
        while time.perf_counter() < t_end:
            try:
                if reader is None or writer is None:
                    reader, writer = await asyncio.open_connection(host, port)
                t0 = time.perf_counter()
                writer.write(requests[rng.randrange(len(requests))])
                status, body = await _read_response(reader)
                t1 = time.perf_counter()
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as err:
                if time.perf_counter() >= t_measure:
                    kind = type(err).__name__
                    errors[kind] = errors.get(kind, 0) + 1
                if writer is not None:
                    writer.close()
                reader = writer = None
                await asyncio.sleep(0.01)
                continue
            if t0 < t_measure or t1 > t_end:
                continue
            latencies.append(t1 - t0)
            if status != 200:
                errors[str(status)] = errors.get(str(status), 0) + 1
            answered += 1
            if staleness_every and answered % staleness_every == 0:
                m = _STALENESS_RE.search(body)
                if m is not None:
                    staleness.append(float(m.group(1)))
        if writer is not None:
            writer.close()

    tasks = [asyncio.create_task(client()) for _ in range(clients)]
    await asyncio.sleep(max(0.0, t_measure - time.perf_counter()))
    cpu0 = _cpu_s()
    await asyncio.sleep(max(0.0, t_end - time.perf_counter()))
    cpu1 = _cpu_s()
    await asyncio.gather(*tasks)
    return LoadResult(
        seconds=seconds, latencies_s=latencies, errors=errors, cpu_s=cpu1 - cpu0, staleness_s=staleness
    )


def _load_process(args: dict[str, Any], out: Any) -> None:
    """Child process: the load of one route (uvloop when installed), result to ``out``."""
    os.nice(max(0, 15 - os.nice(0)))  # Ray's workers run at 15: neither side is favoured
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    res = asyncio.run(run_load(**args))
    out.put(dataclasses.asdict(res))


def _measure_route(
    args: dict[str, Any], timeout_s: float, names: dict[int, str]
) -> tuple[LoadResult, dict[str, float]]:
    """Run one route's load in a child process; its result and the CPU by role meanwhile
    (``names``: roles of other processes of ours, by pid)."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=_load_process, args=(args, out), daemon=True)
    proc.start()
    # The child warms up for warmup_s; sample the system's CPU over the measured window.
    time.sleep(args["warmup_s"] + 0.5)
    before = _cpu_by_process()
    t0 = time.time()
    time.sleep(max(0.0, args["seconds"] - 1.0))
    after = _cpu_by_process()
    elapsed = time.time() - t0
    try:
        res = LoadResult(**out.get(timeout=timeout_s))
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
    return res, _cpu_pct_by_role(before, after, elapsed, {**names, proc.pid or 0: "loadgen"})


# ---------------------------------------------------------------------- where the CPU went
def _role(cmd: str, name: str) -> str:
    if "haproxy" in name:
        return "haproxy"
    for key, role in (
        ("ApiIngress", "api_ingress"), ("BenchBare", "bare_serve"), ("ModelServer", "models"),
        ("ServeReplica", "models"), ("ProxyActor", "serve_proxy"), ("HAProxyManager", "serve_proxy"),
        ("ServeController", "serve_controller"), ("_ShardActor", "shards"), ("BridgeWorker", "bridge"),
        ("_DirectoryActor", "directory"), ("Planner", "planner"), ("ModelJob", "model_job"),
        ("Alert", "alerts"), ("postgres", "postgres"), ("redis", "redis"), ("mosquitto", "mqtt_broker"),
        ("amqtt", "mqtt_broker"), ("raylet", "ray_core"), ("gcs_server", "ray_core"),
        ("ray", "ray_other"),
    ):  # fmt: skip
        if key in cmd or key in name:
            return role
    return "other"


def _cpu_by_process() -> dict[int, tuple[str, float]]:
    """CPU seconds so far of this process and everything it started (the servers, Ray's
    processes, the fleet and the load generator), by pid, with each one's role; the rest
    of the machine as pid 0, role ``not_ours`` (other work sharing the cores)."""
    me = psutil.Process()
    out: dict[int, tuple[str, float]] = {}
    for p in [me, *me.children(recursive=True)]:
        try:
            t = p.cpu_times()
            name, cmd = p.name(), " ".join(p.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        out[p.pid] = (_role(cmd, name), t.user + t.system + t.children_user + t.children_system)
    machine = psutil.cpu_times()
    busy = machine.user + machine.nice + machine.system + machine.irq + machine.softirq + machine.steal
    out[0] = ("not_ours", busy - sum(cpu for _, cpu in out.values()))
    return out


def _cpu_pct_by_role(
    before: dict[int, tuple[str, float]],
    after: dict[int, tuple[str, float]],
    elapsed_s: float,
    names: dict[int, str],
) -> dict[str, float]:
    """% of one core each role used between the two samples (processes in both)."""
    me = os.getpid()
    used: dict[str, float] = {}
    for pid, (role, cpu) in after.items():
        if pid not in before:
            continue
        role = names.get(pid, "bench" if pid == me else role)
        used[role] = used.get(role, 0.0) + cpu - before[pid][1]
    pct = {r: round(100.0 * s / elapsed_s, 1) for r, s in used.items() if s > 0.005 * elapsed_s}
    pct["total"] = round(sum(pct.values()), 1)
    return dict(sorted(pct.items(), key=lambda kv: -kv[1]))


# ---------------------------------------------------------------------- the simulated fleet
# ---------------------------------------------------------------------- the bare endpoint
def _deploy_bare(direct_ingress: bool) -> None:
    """The baseline: ``{}`` from a deployment with the ingress's options, same proxy."""
    from typing import cast

    from ray import serve
    from ray.serve import Deployment

    from runtime.ingress import ApiIngress

    ingress = cast(Deployment, ApiIngress)

    @serve.deployment(
        name="BenchBare",
        ray_actor_options={"num_cpus": 0},
        max_ongoing_requests=ingress.max_ongoing_requests,
        logging_config=ingress.logging_config,
    )
    class BenchBare:
        async def __call__(self, request: Any) -> dict[str, Any]:
            return {}

    serve.run(cast(Deployment, BenchBare).bind(), name="bench-bare", route_prefix=BARE_PREFIX)


# ---------------------------------------------------------------------- the run
def _get_json(port: int, path: str, token: str, timeout_s: float = 30.0) -> tuple[int, Any]:
    import httpx

    r = httpx.get(
        f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {token}"}, timeout=timeout_s
    )
    return r.status_code, (r.json() if r.headers.get("content-type", "").startswith("application/json") else None)


def _wait_for_twins(port: int, token: str, vehicles: int, wait_s: float) -> dict[str, Any]:
    """The fleet map once it shows a twin in a vehicle for every vehicle (or at the timeout)."""
    deadline = time.time() + wait_s
    last: dict[str, Any] = {}
    while time.time() < deadline:
        with contextlib.suppress(Exception):
            status, body = _get_json(port, "/api/v1/fleet/map", token)
            if status == 200:
                last = body
                if sum(v is not None for v in body["vehicle_id"]) >= vehicles:
                    out: dict[str, Any] = body
                    return out
        time.sleep(2.0)
    seen = sum(v is not None for v in last.get("vehicle_id", []))
    raise TimeoutError(f"Expected twins of {vehicles} vehicles within {wait_s:.0f} s, saw {seen}.")


def _availability_paths(
    center_lat: float, center_lon: float, radius_km: float, radius_m: float, n: int, seed: int
) -> list[str]:
    """``n`` availability queries at points uniform over the service area (a disc)."""
    rng = np.random.default_rng(seed)
    r = radius_km * np.sqrt(rng.uniform(0, 1, n))
    theta = rng.uniform(0, 2 * math.pi, n)
    lat = center_lat + r * np.cos(theta) / 111.32
    lon = center_lon + r * np.sin(theta) / (111.32 * math.cos(math.radians(center_lat)))
    return [
        f"/api/v1/availability?lat={a:.6f}&lon={o:.6f}&radius_m={radius_m:g}&limit=20"
        for a, o in zip(lat.tolist(), lon.tolist(), strict=True)
    ]


def run_api_bench(p: ApiBenchParams, base: Settings | None = None) -> dict[str, Any]:
    """Run the benchmark; returns the result object (also printed by the CLI)."""
    import psycopg
    import ray
    from psycopg import sql
    from psycopg.conninfo import make_conninfo

    from bms.services import EmbeddedServices
    from bms.system import FleetSystem, init_ray, ray_options, system_spec

    run = uuid.uuid4().hex[:6]
    base = base or Settings.load()
    tmp = tempfile.TemporaryDirectory(prefix="bms-bench-api-")
    port = free_port()
    settings = base.model_copy(update={
        "data_dir": Path(tmp.name),
        "serve": base.serve.model_copy(update={"http_host": "127.0.0.1", "http_port": port}),
        "ray": base.ray.model_copy(update={"namespace": f"bench{run}"}),
        "sim": base.sim.model_copy(update={"vehicles": p.vehicles}),
        "models": base.models.model_copy(update={"enabled": p.models}),
    })  # fmt: skip
    services = EmbeddedServices(settings)
    urls = services.start()
    schema = f"bench_{run}"
    with psycopg.connect(urls.postgres_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    urls = dataclasses.replace(urls, postgres_url=make_conninfo(urls.postgres_url, options=f"-c search_path={schema}"))
    shared = services.mqtt_supports_shared_subscriptions
    spec = system_spec(
        settings, urls, shared_subscriptions=shared, mqtt_v5=shared, redis_prefix=f"bench{run}:",
        initial_shards=max(1, -(-p.vehicles // settings.twins.shard_size)), include_dashboard=False,
    )  # fmt: skip
    assert spec.http is not None
    http = dataclasses.replace(
        spec.http,
        direct_ingress=p.direct_ingress,
        app=spec.http.app.model_copy(update={"ingress_replicas": p.ingress_replicas}),
    )
    spec = dataclasses.replace(spec, http=http)
    system = FleetSystem(spec)
    ctx = mp.get_context("spawn")
    stop_fleet = ctx.Event()
    fleet_proc = None
    try:
        init_ray(ray_options(settings, include_dashboard=False))
        t0 = time.time()
        system.start()
        _deploy_bare(p.direct_ingress)
        startup_s = time.time() - t0
        tokens = asyncio.run(issue_tokens(urls.postgres_url))
        proc = ctx.Process(
            target=fleet_process,
            args=(settings.sim.model_dump_json(), urls.mqtt_url, services.mqtt_identities.vehicles, stop_fleet),
            daemon=True,
        )
        proc.start()
        fleet_proc = proc
        t_fleet = time.time()
        fleet_map = _wait_for_twins(port, tokens["fleet_manager"], p.vehicles, p.wait_s)
        twins_s = time.time() - t_fleet
        batteries = [b for b, v in zip(fleet_map["battery_id"], fleet_map["vehicle_id"], strict=True) if v]
        s = settings.sim
        paths = {
            "battery": [f"/api/v1/batteries/{b}" for b in batteries],
            "availability": _availability_paths(s.center_lat, s.center_lon, s.radius_km, p.radius_m, 4096, 7),
            "summary": ["/api/v1/fleet/summary"],
            "bare_serve": [BARE_PREFIX],
        }
        token_of = {"battery": "fleet_manager", "availability": "customer", "summary": "fleet_manager"}
        routes: dict[str, Any] = {}
        for i, route in enumerate(p.routes):
            headers = {"Authorization": f"Bearer {tokens[token_of[route]]}"} if route in token_of else {}
            args = {
                "host": "127.0.0.1", "port": port, "paths": paths[route], "headers": headers,
                "clients": p.clients, "seconds": p.seconds, "warmup_s": p.warmup_s, "seed": i,
                "staleness_every": 20 if route in ("battery", "availability") else 0,
            }  # fmt: skip
            res, cpu = _measure_route(args, p.seconds + p.warmup_s + 120, {fleet_proc.pid or 0: "sim"})
            routes[route] = {**res.summary(), "cpu_pct_by_role": cpu}
        return {
            "benchmark": "api",
            "routes": routes,
            "clients": p.clients,
            "vehicles": p.vehicles,
            "twins": len(fleet_map["battery_id"]),
            "seconds": p.seconds,
            "proxy": "haproxy+direct_ingress" if p.direct_ingress else "serve_proxy",
            "ingress_replicas": p.ingress_replicas,
            "models": p.models,
            "cpus": os.cpu_count(),
            "startup_s": round(startup_s, 1),
            "twins_visible_s": round(twins_s, 1),
        }
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



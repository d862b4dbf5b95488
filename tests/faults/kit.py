"""What the fault tests share: servers that can fail, a publisher that keeps a ledger, and the
battery-by-battery check that nothing was lost or applied twice.

* :class:`FaultProxy`: a TCP proxy in front of PostgreSQL or Redis whose link can be cut.
  Cutting closes every open connection and refuses new ones, which is what the clients see
  when the server goes down; restoring listens again on the same port.
* :class:`Broker`: a private mosquitto with persistence, stopped (SIGTERM) and started again
  on the same port and database, as an operator restarts a broker.
* :class:`SeqPublisher`: vehicles publishing telemetry with known per-battery sequence
  numbers over MQTT QoS 1. A message counts as accepted when the broker acknowledged it
  (PUBACK); a publish that fails is retried on a new connection until it is acknowledged,
  as a vehicle's MQTT client does. Each battery publishes in order (its next message waits
  for the previous one's PUBACK), as a vehicle's single outgoing queue does.
* :func:`verify`: every accepted sample in its twin (sample count and last sample) and in
  PostgreSQL history exactly once.
* :func:`record`: one JSON line per fault, for docs/reliability.md (``BMS_FAULT_REPORT``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import psycopg

from bms.services import free_port, mosquitto_binary, spawn_mosquitto

__all__ = [
    "Broker",
    "FaultProxy",
    "Ledger",
    "SeqPublisher",
    "Verdict",
    "record",
    "verify",
    "wait_for",
]


# ---------------------------------------------------------------------------------- proxy
class FaultProxy:
    """A TCP proxy ``127.0.0.1:<port>`` → ``target`` that can be cut and restored.

    Runs its own event loop in a daemon thread, so a test can cut the link from anywhere.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.StreamWriter] = set()
        self.connections = 0

    def start(self) -> FaultProxy:
        self._thread.start()
        self._call(self._listen())
        return self

    def cut(self) -> None:
        """The server goes away: open connections are reset, new ones refused."""
        self._call(self._cut())

    def restore(self) -> None:
        """The server is back, on the same address."""
        self._call(self._listen())

    def stop(self) -> None:
        self._call(self._cut())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    async def _listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port, reuse_address=True)

    async def _cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for w in list(self._links):
            w.transport.abort()  # RST: what a dead server's host answers
        self._links.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.connections += 1
        self._links.update((writer, up_writer))

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass  # either side went away: close the other below
            finally:
                dst.transport.abort()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))
        self._links.difference_update((writer, up_writer))


# ---------------------------------------------------------------------------------- broker
class Broker:
    """A private mosquitto on a free port, with its database in ``data_dir``."""

    def __init__(self, data_dir: Path) -> None:
        binary = mosquitto_binary()
        if binary is None:
            raise RuntimeError(
                "Expected a mosquitto binary for the fault tests (apt-get install mosquitto), "
                "found none: the broker-restart fault needs a broker the tests can restart."
            )
        self.binary = binary
        self.data_dir = data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self._proc: Any = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> Broker:
        self._proc = spawn_mosquitto(self.binary, self.data_dir, self.port)
        self._proc.wait_listening(self.port, 15.0)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self._proc is not None and self._proc.proc.poll() is None:
            self._proc.proc.send_signal(sig)
            try:
                self._proc.proc.wait(15)
            except subprocess.TimeoutExpired:
                self._proc.proc.kill()
                self._proc.proc.wait(5)
        self._proc = None

    def restart(self, down_s: float = 2.0) -> None:
        """Stop cleanly (mosquitto saves its sessions and queues), stay down, start again."""
        self.stop()
        time.sleep(down_s)
        self.start()


# ---------------------------------------------------------------------------------- publisher
@dataclass
class Ledger:
    """What the broker acknowledged: per battery, seq → (samples, last sample ts)."""

    acked: dict[str, dict[int, tuple[int, float]]] = field(default_factory=dict)
    publish_errors: int = 0
    reconnects: int = 0

    def samples(self, battery_id: str | None = None) -> int:
        ids = self.acked if battery_id is None else [battery_id]
        return sum(n for b in ids for n, _ in self.acked.get(b, {}).values())

    def last_ts(self, battery_id: str) -> float | None:
        msgs = self.acked.get(battery_id, {})
        return msgs[max(msgs)][1] if msgs else None


#: One sample, as a vehicle sends it; only the time and the charge change. Formatted, not
#: built as dicts: the overload test needs the publisher faster than the system it loads.
_SAMPLE = (
    '{"ts":%.6f,"pack_voltage_v":47.5,"current_a":6.0,"temp_c":28.0,"soc_pct":%.3f,'
    '"lat":%.6f,"lon":%.6f,"odometer_km":120.5,"speed_kmh":16.0,"cell_min_v":3.64,"cell_max_v":3.67}'
)


def _payload(
    vehicle: str, battery: str, seq: int, first_ts: float, n: int, dt_s: float, lat: float, lon: float,
    soc_start_pct: float = 90.0,
) -> tuple[bytes, float]:  # fmt: skip
    """One message of ``n`` samples ``dt_s`` apart from ``first_ts``; and its last sample's ts."""
    soc = max(15.0, soc_start_pct - 0.002 * seq)  # slow, steady discharge: plausible for any twin
    ts = [round(first_ts + i * dt_s, 6) for i in range(n)]
    samples = ",".join(_SAMPLE % (t, soc, lat, lon) for t in ts)
    body = (
        f'{{"schema_version":2,"vehicle_id":"{vehicle}","battery_id":"{battery}","seq":{seq},'
        f'"samples":[{samples}]}}'
    )
    return body.encode(), ts[-1]


class SeqPublisher:
    """``n_batteries`` vehicles, each publishing a message of ``samples_per_message`` samples
    every ``period_s``, until :meth:`stop`; in its own thread and event loop.

    Sample timestamps are the publish time (the newest sample of a message is "now"), so a
    twin's ``last_ts`` says how fresh it is.
    """

    def __init__(
        self, mqtt_port: int, tag: str, n_batteries: int, period_s: float = 1.0,
        samples_per_message: int = 5, window: int = 2000, soc_start_pct: float = 90.0,
    ) -> None:  # fmt: skip
        run = uuid.uuid4().hex[:6]
        self.port = mqtt_port
        self.vehicles = [f"ft{tag}{run}-v{i:04d}" for i in range(n_batteries)]
        self.batteries = [f"ft{tag}{run}-b{i:04d}" for i in range(n_batteries)]
        self.period_s = period_s
        self.samples_per_message = samples_per_message
        self.soc_start_pct = soc_start_pct
        self.ledger = Ledger()
        self._window = window
        self._seq = dict.fromkeys(self.batteries, 1)
        self._last_ts = dict.fromkeys(self.batteries, 0.0)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=f"publisher-{tag}", daemon=True)
        self._stopping: asyncio.Event | None = None
        self._client: aiomqtt.Client | None = None
        self._connected: asyncio.Event | None = None
        self._lost: asyncio.Event | None = None
        self._lock = threading.Lock()
        self.started_at_s = 0.0

    # -- control (any thread)
    def start(self) -> SeqPublisher:
        self.started_at_s = time.time()
        self._thread.start()
        while self._connected is None or not self._connected.is_set():
            time.sleep(0.05)
        return self

    def set_period(self, period_s: float) -> None:
        self.period_s = period_s

    def stop(self, timeout_s: float = 120.0) -> Ledger:
        """Stop publishing new messages; wait until every message published is acknowledged."""
        assert self._stopping is not None
        self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise AssertionError(f"Expected the publisher to finish within {timeout_s} s, it did not.")
        return self.ledger

    def snapshot(self) -> dict[str, float | None]:
        """Each battery's newest acknowledged sample ts (copy, thread-safe)."""
        with self._lock:
            return {b: self.ledger.last_ts(b) for b in self.batteries}

    def acked_samples(self) -> int:
        with self._lock:
            return self.ledger.samples()

    # -- the publisher's own thread
    def _run(self) -> None:
        self._loop.run_until_complete(self._main())

    async def _main(self) -> None:
        self._stopping = asyncio.Event()
        self._connected = asyncio.Event()
        self._lost = asyncio.Event()
        conn = asyncio.create_task(self._connection())
        await self._connected.wait()
        tasks = [asyncio.create_task(self._vehicle(i)) for i in range(len(self.batteries))]
        await asyncio.gather(*tasks)
        conn.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await conn

    async def _connection(self) -> None:
        assert self._connected is not None and self._lost is not None
        while True:
            client = aiomqtt.Client(
                "127.0.0.1", self.port, identifier=f"ft-pub-{uuid.uuid4().hex[:8]}",
                max_inflight_messages=self._window, timeout=10,
            )  # fmt: skip
            client.pending_calls_threshold = self._window + 1
            try:
                async with client:
                    self._client = client
                    self._lost.clear()
                    self._connected.set()
                    await self._lost.wait()
            except aiomqtt.MqttError:
                pass
            finally:
                self._connected.clear()
                self._client = None
            self.ledger.reconnects += 1
            await asyncio.sleep(0.5)

    async def _vehicle(self, i: int) -> None:
        assert self._stopping is not None
        b, v = self.batteries[i], self.vehicles[i]
        lat, lon = 52.52 + 0.0005 * (i % 40), 13.40 + 0.0005 * (i // 40)
        topic = f"fleet/{v}/telemetry"
        # Spread the vehicles over the period, so the load is even.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), self.period_s * i / len(self.batteries))
        while not self._stopping.is_set():
            started = time.monotonic()
            now = time.time()
            # Samples 10 ms apart, closer when messages come faster than k x 10 ms: the
            # newest sample of every message stays at "now", never in the future.
            k = self.samples_per_message
            dt = min(0.01, 0.5 * self.period_s / k)
            first = max(now - (k - 1) * dt, self._last_ts[b] + dt)
            seq = self._seq[b]
            payload, last_ts = _payload(v, b, seq, first, k, dt, lat, lon, self.soc_start_pct)
            await self._publish(topic, payload)
            with self._lock:
                self.ledger.acked.setdefault(b, {})[seq] = (k, last_ts)
            self._last_ts[b] = last_ts
            self._seq[b] = seq + 1
            # In short steps, so a new period (set_period) takes effect at once.
            while (wait := started + self.period_s - time.monotonic()) > 0 and not self._stopping.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), min(wait, 0.25))

    async def _publish(self, topic: str, payload: bytes) -> None:
        """Until the broker acknowledges it, on whatever connection is up."""
        assert self._connected is not None and self._lost is not None
        while True:
            await self._connected.wait()
            client = self._client
            if client is None:
                continue
            try:
                await client.publish(topic, payload, qos=1, timeout=10)
                return
            except (aiomqtt.MqttError, RuntimeError):
                self.ledger.publish_errors += 1
                self._lost.set()
                await asyncio.sleep(0.2)


# ---------------------------------------------------------------------------------- checks
@dataclass(frozen=True)
class Verdict:
    """Battery by battery: what the broker accepted, where it ended up."""

    batteries: int
    published_messages: int
    published_samples: int
    in_history_samples: int
    lost_samples: int  # accepted by the broker, missing from history
    history_duplicate_rows: int  # rows beyond one per sample
    twin_missing_samples: int  # accepted, not counted by the twin
    twin_extra_samples: int  # counted by the twin beyond what was accepted: applied twice
    twins_behind: tuple[str, ...]  # twins whose last sample is not the last one accepted
    twins_short: tuple[tuple[str, int], ...] = ()  # (battery, samples the twin did not count)

    @property
    def applied_twice(self) -> int:
        return self.history_duplicate_rows + self.twin_extra_samples

    def assert_exact(self) -> None:
        problems = []
        if self.lost_samples:
            problems.append(f"{self.lost_samples} accepted samples missing from history")
        if self.history_duplicate_rows:
            problems.append(f"{self.history_duplicate_rows} duplicate history rows")
        if self.twin_missing_samples or self.twin_extra_samples:
            problems.append(
                f"twins counted {self.twin_missing_samples} samples too few and "
                f"{self.twin_extra_samples} too many (short: {list(self.twins_short[:5])})"
            )
        if self.twins_behind:
            problems.append(f"{len(self.twins_behind)} twins behind, e.g. {self.twins_behind[:3]}")
        assert not problems, "Expected every accepted sample exactly once in twin and history, got: " + "; ".join(problems)


async def twin_columns(namespace: str) -> dict[str, tuple[int, float]]:
    """battery → (samples_total, last_ts) over every shard of the system."""
    import ray

    from runtime.names import DIRECTORY_NAME, shard_actor_name

    directory = ray.get_actor(DIRECTORY_NAME, namespace=namespace)
    n = await directory.num_shards.remote()
    out: dict[str, tuple[int, float]] = {}
    for i in range(n):
        cols = await ray.get_actor(shard_actor_name(i), namespace=namespace).columns.remote()
        for k, b in enumerate(cols.battery_ids):
            out[b] = (int(cols.samples_total[k]), float(cols.last_ts[k]))
    return out


def history_counts(postgres_url: str, battery_ids: Sequence[str]) -> dict[tuple[str, int], tuple[int, int]]:
    """(battery, seq) → (rows, distinct sample times) in PostgreSQL history."""
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT battery_id, seq, count(*), count(DISTINCT ts) FROM telemetry "
            "WHERE battery_id = ANY(%s) GROUP BY battery_id, seq",
            (list(battery_ids),),
        ).fetchall()
    return {(b, int(s)): (int(n), int(d)) for b, s, n, d in rows}


def verify(ledger: Ledger, batteries: Sequence[str], postgres_url: str, twins: dict[str, tuple[int, float]]) -> Verdict:
    history = history_counts(postgres_url, batteries)
    published_msgs = published = in_history = lost = dup = missing = extra = 0
    behind: list[str] = []
    short: list[tuple[str, int]] = []
    for b in batteries:
        msgs = ledger.acked.get(b, {})
        published_msgs += len(msgs)
        for seq, (n, _) in msgs.items():
            published += n
            rows, distinct = history.get((b, seq), (0, 0))
            in_history += min(distinct, n)
            lost += max(0, n - distinct)
            dup += rows - distinct
        total_b = ledger.samples(b)
        twin_n, twin_last = twins.get(b, (0, float("nan")))
        missing += max(0, total_b - twin_n)
        if twin_n < total_b:
            short.append((b, total_b - twin_n))
        extra += max(0, twin_n - total_b)
        last = ledger.last_ts(b)
        if last is not None and not abs(twin_last - last) < 1e-3:
            behind.append(b)
    unknown = [k for k in history if k[1] not in ledger.acked.get(k[0], {})]
    assert not unknown, f"Expected history to hold only published messages, got {unknown[:5]}"
    return Verdict(
        batteries=len(batteries), published_messages=published_msgs, published_samples=published,
        in_history_samples=in_history, lost_samples=lost, history_duplicate_rows=dup,
        twin_missing_samples=missing, twin_extra_samples=extra, twins_behind=tuple(behind),
        twins_short=tuple(short),
    )  # fmt: skip


async def wait_complete(
    ledger: Ledger, batteries: Sequence[str], namespace: str, postgres_url: str, timeout_s: float = 120.0
) -> dict[str, tuple[int, float]]:
    """Poll until every twin holds every sample the broker accepted and history holds them
    too (a twin applies a sample before its history write commits), or time runs out."""
    deadline = time.monotonic() + timeout_s
    wanted = ledger.samples()
    while True:
        twins = await twin_columns(namespace)
        done = all(twins.get(b, (0, 0.0))[0] >= ledger.samples(b) for b in batteries)
        if done:
            counts = await asyncio.to_thread(history_counts, postgres_url, batteries)
            done = sum(distinct for _, distinct in counts.values()) >= wanted
        if done or time.monotonic() > deadline:
            return twins
        await asyncio.sleep(0.5)


async def wait_fresh(pub: SeqPublisher, namespace: str, since_s: float, timeout_s: float = 180.0) -> float:
    """Seconds from ``since_s`` until every twin holds a sample published after ``since_s``:
    the time the system took to be current again."""
    deadline = time.monotonic() + timeout_s
    while True:
        twins = await twin_columns(namespace)
        if all(twins.get(b, (0, 0.0))[1] >= since_s for b in pub.batteries):
            return time.time() - since_s
        if time.monotonic() > deadline:
            stale = [b for b in pub.batteries if twins.get(b, (0, 0.0))[1] < since_s]
            raise AssertionError(
                f"Expected every twin to hold a sample newer than the fault within {timeout_s} s, "
                f"{len(stale)} did not (e.g. {stale[:3]})."
            )
        await asyncio.sleep(0.25)


async def wait_for(pred: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.25) -> Any:
    """Await ``pred()`` (sync or async) until truthy; its value."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = pred()
            if asyncio.iscoroutine(last):
                last = await last
        except Exception as err:  # the thing waited for may raise until it is back
            last = err
        if last and not isinstance(last, Exception):
            return last
        await asyncio.sleep(interval_s)
    raise AssertionError(f"Timed out after {timeout_s} s waiting for {what}; last value {last!r}")


# ---------------------------------------------------------------------------------- report
def record(fault: str, verdict: Verdict | None, recovery_s: float | None, **extra: Any) -> dict[str, Any]:
    """One row of docs/reliability.md: appended as a JSON line to ``$BMS_FAULT_REPORT``
    (when set) and printed (``pytest -s`` shows it)."""
    row: dict[str, Any] = {"fault": fault, "date": time.strftime("%Y-%m-%d")}
    if verdict is not None:
        row.update(asdict(verdict))
        row["twins_behind"] = len(verdict.twins_behind)
        row["twins_short"] = len(verdict.twins_short)
        row["applied_twice"] = verdict.applied_twice
    row["recovery_s"] = None if recovery_s is None else round(recovery_s, 2)
    row.update(extra)
    line = json.dumps(row, sort_keys=True)
    print(line)
    path = os.environ.get("BMS_FAULT_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")
    return row


def pid_of(handle: Any) -> int:
    """The OS process of a Ray actor (to kill it as the kernel would: SIGKILL)."""
    import ray

    return int(ray.get(handle.__ray_call__.remote(lambda self: os.getpid()), timeout=30))


def reachable(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0

"""TwinShard: one Ray actor hosting many battery twins in a :class:`TwinTable`.

A Ray actor is a whole worker process (50-100 MB, a few started per second), so one actor
per battery does not scale to a fleet. A shard hosts up to ``shard_size`` twins in
columnar arrays and applies a whole micro-batch from the bridge in one vectorised pass.

Durability: :meth:`TwinShard.ingest` returns only after the accepted samples are committed
to history, and the bridge acknowledges MQTT messages only after that. A shard that dies
restarts (Ray ``max_restarts``), reloads its latest checkpoint and replays history written
after it; the bridge's retried call then finds its messages already applied (by ``seq``).

The class is plain asyncio: :func:`shard_actor` wraps it as a Ray actor, and unit tests use
it directly with in-memory sinks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, Protocol

import numpy as np
import orjson

from contracts.anomaly_kinds import AnomalyKind
from contracts.candidates import Candidate
from contracts.health import HealthRow
from contracts.samples import TelemetryBatch
from contracts.telemetry import RejectedMessage, RejectReason
from twins.alert_rules import TwinAlertReport, TwinAlertRules
from twins.battery_twin import BatteryTwin, TwinSnapshot, health_bands
from twins.clock import Clock, WallClock
from twins.fleet_query import (
    AvailableVehicle,
    Filter,
    GroupStats,
    TopNRow,
    group_stats,
    top_n,
    vehicles_near,
)
from twins.ordered_lane import CallOrder, LaneSequencer
from twins.scoring import AnomalyEvent, ScoreReport, ScoringParams, TwinScorer
from twins.sinks import ShardBackends
from twins.twin_columns import TwinColumns
from twins.twin_table import TwinTable, TwinTableParams
from twins.zones import ZoneGrid

__all__ = ["AlertSink", "IngestReport", "ShardStats", "TwinShard", "UrgentSink"]

log = logging.getLogger(__name__)

_REPLAY_MARGIN_S = 600.0  # writes a restarted shard re-reads from before its checkpoint
_LATENCY_RESERVOIR = 65_536
_MAX_INGEST_EVENTS = 10_000  # refused-message events kept per shard (newest win)
#: The anomaly event a twin's refusal of a message raises.
_EVENT_KIND = {
    RejectReason.BATTERY_CLAIM_CONFLICT: AnomalyKind.BATTERY_CLAIM_CONFLICT,
    RejectReason.SEQ_OUT_OF_RANGE: AnomalyKind.SEQ_OUT_OF_RANGE,
    RejectReason.IMPLAUSIBLE_TELEMETRY: AnomalyKind.IMPLAUSIBLE_TELEMETRY,
}


class UrgentSink(Protocol):
    """Where a shard pushes the candidates of new anomalies (the planner, in production).

    The shard never looks the planner up: the runtime injects a sink, so the twins run and
    test with no Ray at all.
    """

    async def __call__(self, candidates: list[Candidate]) -> None: ...


class AlertSink(Protocol):
    """Where a shard sends its complete alert report each tick (the alert manager, in
    production; injected by the runtime like :class:`UrgentSink`)."""

    async def __call__(self, report: TwinAlertReport) -> None: ...


@dataclass(frozen=True)
class IngestReport:
    """What one :meth:`TwinShard.ingest` call did.

    ``rejected`` holds the messages the twins refused (claim conflict, ``seq`` out of
    range, implausible values), indexed into the ingested batch, for the caller to
    dead-letter.
    """

    messages: int
    accepted_messages: int
    duplicate_messages: int
    accepted_samples: int
    applied_samples: int
    late_samples: int
    duplicate_samples: int
    new_twins: int
    vehicle_changes: int
    rejected: tuple[RejectedMessage, ...] = ()

    @classmethod
    def total(cls, parts: Sequence[tuple[IngestReport, Sequence[int]]]) -> IngestReport:
        """The report of a whole batch from the reports of its parts (one per shard).

        Each part comes with the batch index of each of its messages, so the rejected
        messages are indexed into the whole batch again.
        """
        counts = dict.fromkeys((f.name for f in fields(cls) if f.name != "rejected"), 0)
        rejected: list[RejectedMessage] = []
        for report, positions in parts:
            for name in counts:
                counts[name] += getattr(report, name)
            rejected.extend(replace(r, index=int(positions[r.index])) for r in report.rejected)
        rejected.sort(key=lambda r: r.index)
        return cls(**counts, rejected=tuple(rejected))


@dataclass(frozen=True)
class ShardStats:
    shard_id: int
    twins: int
    messages: int
    accepted_samples: int
    applied_samples: int
    late_samples: int
    duplicate_messages: int
    vehicle_changes: int
    freshness_p50_s: float | None
    freshness_p99_s: float | None
    freshness_count: int
    last_apply_at_s: float | None
    checkpoints: int
    restored_from_checkpoint: bool
    replayed_samples: int


class _GroupWriter:
    """Group commit: concurrent ``write`` calls share one COPY and one commit.

    Pending samples are bounded; past the bound callers wait, which pushes back through
    the bridge's in-flight limit to the broker instead of growing a queue.

    **Fail-stop.** Once a COPY fails, every write pending or arriving fails with the same
    error until :meth:`resume`. The shard rebuilds its table from history before it resumes;
    a later write that committed in between would put a newer sample into history ahead of
    the failed older one, and the older one, retried, would then be *late* to its twin (kept
    in history, never applied).
    """

    def __init__(
        self, write: Callable[[TelemetryBatch], Awaitable[int]], max_pending_samples: int
    ) -> None:
        self._write = write
        self._max = max_pending_samples
        self._pending: list[tuple[TelemetryBatch, asyncio.Future[int]]] = []
        self._pending_samples = 0
        self._wake = asyncio.Event()
        self._room = asyncio.Condition()
        self._idle = asyncio.Event()
        self._idle.set()
        self._failed: BaseException | None = None
        #: Failures so far: each one makes the shard rebuild its table once.
        self.generation = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    @property
    def failed(self) -> bool:
        return self._failed is not None

    async def write(self, batch: TelemetryBatch) -> int:
        async with self._room:
            await self._room.wait_for(lambda: self._pending_samples < self._max)
        if self._failed is not None:
            raise self._failed
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending.append((batch, fut))
        self._pending_samples += batch.n_samples
        self._idle.clear()
        self._wake.set()
        return await fut

    async def idle(self) -> None:
        """Return once nothing is pending or being written (every write so far committed
        or failed)."""
        await self._idle.wait()

    def resume(self) -> None:
        """Take writes again after a failure (the shard rebuilt its table)."""
        self._failed = None

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._pending:
                self._idle.set()
                continue
            work, self._pending = self._pending, []
            n = self._pending_samples
            try:
                if self._failed is not None:
                    raise self._failed
                await self._write(TelemetryBatch.concat([b for b, _ in work]))
            except Exception as err:  # every waiter learns the write failed
                if self._failed is None:
                    self.generation += 1
                self._failed = err
                for _, fut in work:
                    if not fut.done():
                        fut.set_exception(err)
            else:
                for b, fut in work:
                    if not fut.done():
                        fut.set_result(b.n_samples)
            async with self._room:
                self._pending_samples -= n
                self._room.notify_all()
            if not self._pending:
                self._idle.set()

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class TwinShard:
    """Hosts many twins; every method is safe to call concurrently on one event loop.

    Parameters
    ----------
    shard_id
        Position on the directory's ring; names the actor and its checkpoint.
    params
        Twin estimator knobs (window size, thresholds).
    connect
        Opens the shard's backends (history, state cache, checkpoints, assignments).
    zones
        Grid for zone names.
    clock
        Wall clock (freshness, checkpoints).
    checkpoint_interval_s, state_flush_interval_s
        Periods of the background checkpoint and latest-state tasks.
    background
        Run the periodic tasks (flush, checkpoint, scoring, alerts) on wall time. A what-if
        run turns them off and calls :meth:`score` itself on its simulated clock.

    Attributes
    ----------
    score_stale_after_s
        How long a model may go without scoring a twin before the twin's reads
        (:meth:`get`, :meth:`columns`) say ``scores_stale``: the scorer's
        ``stale_after_ticks`` times ``score_interval_s``. The shard is the one place that
        knows both, and the columns carry it to the HTTP replicas.
    """

    def __init__(
        self,
        shard_id: int,
        params: TwinTableParams,
        connect: Callable[[], Awaitable[ShardBackends]],
        *,
        zones: ZoneGrid = ZoneGrid(),
        clock: Clock | None = None,
        checkpoint_interval_s: float = 60.0,
        state_flush_interval_s: float = 1.0,
        max_pending_samples: int = 500_000,
        scorer: TwinScorer | None = None,
        score_interval_s: float = 10.0,
        push_urgent: UrgentSink | None = None,
        alert_rules: TwinAlertRules | None = None,
        alert_sink: AlertSink | None = None,
        alert_interval_s: float = 10.0,
        background: bool = True,
    ) -> None:
        self.shard_id = shard_id
        self._background = background
        self.params = params
        self.zones = zones
        self.clock: Clock = clock or WallClock()
        self._connect = connect
        self._checkpoint_interval_s = checkpoint_interval_s
        self._state_flush_interval_s = state_flush_interval_s
        self._max_pending_samples = max_pending_samples
        self.table = TwinTable(params, self.clock)
        self._backends: ShardBackends | None = None
        self._writer: _GroupWriter | None = None
        self._started: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._dirty: set[int] = set()
        self._latency = np.zeros(_LATENCY_RESERVOIR)
        self._latency_n = 0
        self._counters = dict.fromkeys(
            (
                "messages",
                "accepted_samples",
                "applied_samples",
                "late_samples",
                "duplicate_messages",
                "vehicle_changes",
                "checkpoints",
                "replayed_samples",
            ),
            0,
        )
        # Events of messages the twins refused. Kept here, not in the scorer's events: the
        # scorer is None with the models off, and the scorer hands its newest events to
        # the planner as urgent jobs, which a forged message must never become.
        self._ingest_events: deque[AnomalyEvent] = deque(maxlen=_MAX_INGEST_EVENTS)
        self._restored = False
        self._last_apply_at_s: float | None = None
        self._healthy: asyncio.Event | None = None
        self._rebuilt_generation = 0
        self._sequencer = LaneSequencer()
        # Cleared while a checkpoint waits for pending writes and takes its snapshot.
        self._apply_gate = asyncio.Event()
        self._apply_gate.set()
        self._recoveries = 0
        self.scorer = scorer
        self.push_urgent = push_urgent
        self._score_interval_s = score_interval_s
        # With the models off nothing refreshes the scores a checkpoint brought back: they
        # go stale after the default number of ticks, and say so.
        ticks = (scorer.params if scorer is not None else ScoringParams()).stale_after_ticks
        self.score_stale_after_s = ticks * score_interval_s
        self._score_lock = asyncio.Lock()
        self.alert_rules = alert_rules
        self.alert_sink = alert_sink
        self._alert_interval_s = alert_interval_s
        self._alert_lock = asyncio.Lock()

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Connect backends, restore the checkpoint, replay, start background tasks.

        Idempotent, and every public method awaits it first, so a shard that Ray restarts
        after a crash restores itself on its first call.
        """
        if self._started is None:
            self._started = asyncio.get_running_loop().create_task(self._start())
        await asyncio.shield(self._started)

    async def _start(self) -> None:
        self._healthy = asyncio.Event()
        self._healthy.set()
        self._backends = await self._connect()
        await self._restore()
        self._writer = _GroupWriter(self._backends.history.write, self._max_pending_samples)
        self._writer.start()
        if not self._background:
            return
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._every(self._state_flush_interval_s, self.flush_state)),
            loop.create_task(self._every(self._checkpoint_interval_s, self.checkpoint)),
        ]
        if self.scorer is not None:
            self._tasks.append(loop.create_task(self._every(self._score_interval_s, self.score)))
        if self.alert_rules is not None and self.alert_sink is not None:
            # Its own tick, so the critical thresholds are judged with the models off too.
            self._tasks.append(
                loop.create_task(self._every(self._alert_interval_s, self.evaluate_alerts))
            )

    async def _restore(self) -> None:
        """Rebuild the table from the latest checkpoint plus history written after it.

        The new table is built aside and swapped in at the end, so no read, flush or
        checkpoint ever sees a half-restored table.
        """
        assert self._backends is not None
        saved = await self._backends.checkpoints.load(self.shard_id)
        since = -np.inf
        table = TwinTable(self.params, self.clock)
        if saved is not None:
            payload, taken_at_s = saved
            table = TwinTable.from_bytes(payload, self.params, self.clock)
            self._restored = True
            # Margin: the store stamps writes with its own clock, which may differ a little.
            since = taken_at_s - _REPLAY_MARGIN_S
        assigned = await self._backends.assignments.batteries_of(self.shard_id)
        ids = sorted(set(assigned) | set(table.ids))
        if ids:
            batch = await self._backends.history.replay(ids, float(since))
            if batch.n_messages:
                # History holds only messages the twins accepted once: not checked again.
                res = table.apply(batch, replay=True)
                self._counters["replayed_samples"] += res.applied_samples
                log.info(
                    "shard %d replayed %d samples after restore", self.shard_id, res.applied_samples
                )
        self.table = table

    async def _every(self, period_s: float, fn: Callable[[], Awaitable[Any]]) -> None:
        while True:
            await asyncio.sleep(period_s)
            try:
                await fn()
            except Exception:  # a failed flush must not stop the next one
                log.exception("shard %d: periodic %s failed", self.shard_id, fn.__name__)

    async def aclose(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if self._writer is not None:
            await self._writer.aclose()
        if self._backends is not None:
            await self._backends.aclose()

    # ------------------------------------------------------------------ writes
    async def ingest(self, batch: TelemetryBatch, order: CallOrder | None = None) -> IngestReport:
        """Apply a micro-batch and persist what was accepted; return the counts.

        If the history write fails the error is raised (the bridge retries, the broker keeps
        the messages), and the shard first rebuilds its table from checkpoint and history:
        the table held samples history never got, and the retry must not be taken for a
        duplicate of them.
        """
        await self.start()
        assert self._writer is not None and self._healthy is not None
        await self._healthy.wait()
        await self._apply_gate.wait()  # a checkpoint is taking a committed snapshot
        if order is not None:
            # A call that would overtake an older one of its lane waits for it, and is
            # refused (the lane resends it in turn) if it does not come: before it touches a
            # twin either way. Then the gates again: a rebuild or a checkpoint may have begun.
            await self._sequencer.wait_turn(order)
            await self._healthy.wait()
            await self._apply_gate.wait()
        res = self.table.apply(batch)
        if order is not None:
            self._sequencer.applied(order)
        now = self.clock.now_s()
        acc = res.accepted_messages
        if acc.size:
            offs = batch.msg_offsets
            nonempty = np.diff(offs) > 0
            msg_max_ts = np.full(batch.n_messages, np.nan)
            if nonempty.any():
                msg_max_ts[nonempty] = np.maximum.reduceat(batch.columns["ts"], offs[:-1][nonempty])
            lat = now - msg_max_ts[acc]
            self._record_latency(lat[np.isfinite(lat)])
            self._dirty.update(self.table.index[batch.battery_ids[i]] for i in acc.tolist())
        c = self._counters
        c["messages"] += res.messages
        c["accepted_samples"] += res.accepted_samples
        c["applied_samples"] += res.applied_samples
        c["late_samples"] += res.late_samples
        c["duplicate_messages"] += res.duplicate_messages
        c["vehicle_changes"] += len(res.vehicle_changes)
        for r in res.rejected:
            # A refusal is yes or no, so its score is 1 (the models' events carry their z).
            kind = str(_EVENT_KIND[r.reason].name).lower()
            self._ingest_events.append(AnomalyEvent(batch.battery_ids[r.index], kind, 1.0, now))
        if res.rejected:
            # One line per batch, not per message: a flood of forgeries must not flood the log.
            first = res.rejected[0]
            log.warning(
                "shard %d refused %d messages; the first, of battery %s: %s: %s", self.shard_id,
                len(res.rejected), batch.battery_ids[first.index], first.reason.value, first.detail,
            )  # fmt: skip
        self._last_apply_at_s = now
        if res.accepted_samples:
            keep = np.zeros(batch.n_messages, dtype=bool)
            keep[acc] = True
            try:
                await self._writer.write(batch.select_messages(keep))
            except Exception:
                await self._recover(self._writer.generation)
                raise
        if order is not None:
            self._sequencer.committed(order)
        return IngestReport(
            messages=res.messages,
            accepted_messages=int(acc.size),
            duplicate_messages=res.duplicate_messages,
            accepted_samples=res.accepted_samples,
            applied_samples=res.applied_samples,
            late_samples=res.late_samples,
            duplicate_samples=res.duplicate_samples,
            new_twins=res.new_twins,
            vehicle_changes=len(res.vehicle_changes),
            rejected=tuple(res.rejected),
        )

    async def _recover(self, generation: int) -> None:
        """Rebuild the table from the latest checkpoint plus history (see :meth:`ingest`).

        ``generation`` is the writer's failure count the caller saw: a failure the table was
        already rebuilt after needs no second rebuild (which could drop samples applied and
        committed since).
        """
        assert self._healthy is not None and self._writer is not None
        if self._rebuilt_generation >= generation:
            return
        if not self._healthy.is_set():  # another failed ingest is already rebuilding
            await self._healthy.wait()
            return
        self._healthy.clear()
        delay_s = 0.1
        try:
            # Every write of the failed generation comes back (failed) first: a rebuild
            # must not race a write still in flight.
            await self._writer.idle()
            while True:
                try:
                    await self._restore()
                    self._dirty = set(range(len(self.table)))
                    self._recoveries += 1
                    self._rebuilt_generation = self._writer.generation
                    self._sequencer.rewind()  # what was applied and not committed is gone
                    self._writer.resume()
                    log.warning(
                        "shard %d rebuilt its twins after a failed history write", self.shard_id
                    )
                    return
                except Exception:
                    log.exception(
                        "shard %d: rebuilding after a failed write failed; retrying", self.shard_id
                    )
                    await asyncio.sleep(delay_s)
                    delay_s = min(2 * delay_s, 5.0)
        finally:
            self._healthy.set()

    def _record_latency(self, values: np.ndarray) -> None:
        n = values.size
        if n == 0:
            return
        pos = (self._latency_n + np.arange(n)) % _LATENCY_RESERVOIR
        self._latency[pos] = values
        self._latency_n += n

    def reset_latency(self) -> None:
        self._latency_n = 0

    async def set_lstm_state(
        self, battery_ids: Sequence[str], h: np.ndarray, c: np.ndarray
    ) -> None:
        """Replace the LSTM (h, c) of many twins at once (one model step of a batch)."""
        await self.start()
        slots = np.array([self.table.slot(b) for b in battery_ids], dtype=np.int64)
        self.table.lstm_h[slots] = h
        self.table.lstm_c[slots] = c
        self.table.lstm_steps[slots] += 1

    async def flush_state(self) -> int:
        """Push the compact latest state of changed twins to the state cache."""
        await self.start()
        assert self._backends is not None
        if not self._dirty:
            return 0
        taken = self._dirty
        self._dirty = set()
        slots = np.fromiter(taken, dtype=np.int64, count=len(taken))
        t = self.table
        pos = (t.head[slots] - 1) % t.params.window_samples
        latest = t.window[slots, pos, :5].astype(np.float64)  # voltage, current, temp, soc, lat
        soh = 100.0 * t.capacity_est_ah[slots] / t.rated_capacity_ah[slots]
        soh_model = t.soh_model_pct[slots]
        bands = health_bands(np.where(np.isfinite(soh_model), soh_model, soh))

        def opt(a: np.ndarray) -> list[float | None]:
            return [x if np.isfinite(x) else None for x in a.tolist()]

        cols = [
            slots.tolist(),
            t.last_ts[slots].tolist(),
            latest[:, 0].tolist(),
            latest[:, 1].tolist(),
            latest[:, 2].tolist(),
            latest[:, 3].tolist(),
            t.last_lat[slots].tolist(),
            t.last_lon[slots].tolist(),
            opt(soh),
            bands,
            t.efc[slots].tolist(),
            opt(soh_model),
            opt(t.health_score[slots]),
            opt(t.priority[slots]),
            t.anomaly_flags[slots].tolist(),
        ]
        states: dict[str, bytes] = {}
        for s, ts, v, i, temp, soc, lat, lon, sh, band, efc, shm, hs, prio, flags in zip(
            *cols, strict=True
        ):
            states[t.ids[s]] = orjson.dumps(
                {
                    "battery_id": t.ids[s],
                    "vehicle_id": t.vehicle_ids[s],
                    "ts": ts,
                    "pack_voltage_v": v,
                    "current_a": i,
                    "temp_c": temp,
                    "soc_pct": soc,
                    "lat": lat,
                    "lon": lon,
                    "soh_pct_est": sh,
                    "health_band": band,
                    "efc": efc,
                    "shard": self.shard_id,
                    "soh_model_pct": shm,
                    "health_score": hs,
                    "priority": prio,
                    "anomaly_flags": flags,
                }
            )
        try:
            await self._backends.state.publish(states)
        except Exception:
            self._dirty |= taken  # publish them again next period
            raise
        return len(states)

    async def checkpoint(self) -> int:
        """Save the whole table; returns bytes written."""
        await self.start()
        assert self._backends is not None and self._healthy is not None
        # Never checkpoint a table that is being rebuilt after a failed write: it may
        # hold samples history does not have.
        await self._healthy.wait()
        # Nor one holding samples whose history write is still in flight: restored after a
        # crash, it would take the bridge's redelivery of those messages for duplicates,
        # and they would never reach history. So hold new applies, let pending writes
        # commit, and snapshot before anything else runs (no await in between).
        assert self._writer is not None
        self._apply_gate.clear()
        try:
            await self._writer.idle()
            if self._writer.failed or not self._healthy.is_set():  # rebuilt before the next
                raise RuntimeError(
                    f"Expected shard {self.shard_id}'s pending writes to commit before its "
                    "checkpoint, got a failed write; the next checkpoint follows the rebuild."
                )
            taken_at = self.clock.now_s()
            payload = self.table.to_bytes()
        finally:
            self._apply_gate.set()
        await self._backends.checkpoints.save(self.shard_id, payload, len(self.table), taken_at)
        self._counters["checkpoints"] += 1
        return len(payload)

    # ------------------------------------------------------------------ models
    async def score(self) -> ScoreReport:
        """One scoring tick over every twin (also run every ``score_interval_s``).

        Serialised: a tick that is still waiting on the models when the next is due makes
        the next one wait instead of scoring the same twins twice in parallel.
        """
        await self.start()
        if self.scorer is None:
            raise RuntimeError(f"shard {self.shard_id} has no scorer: models are not enabled")
        async with self._score_lock:
            report = await self.scorer.score(self.table)
        self._dirty.update(range(len(self.table)))
        if self.alert_sink is not None:
            # The anomaly flags just written become alert signals in this tick, not the next.
            try:
                await self.evaluate_alerts()
            except Exception:  # the alert manager being down must not fail scoring
                log.exception("shard %d: sending the alert report failed", self.shard_id)
        if report.new_anomalies and self.push_urgent is not None:
            # New anomalies go to the planner now, not at its next pull.
            fresh = {e.battery_id for e in list(self.scorer.events)[-report.new_anomalies :]}
            slots = np.array(sorted(self.table.index[b] for b in fresh), dtype=np.int64)
            try:
                await self.push_urgent(self._candidate_rows(slots))
            except Exception:  # the planner being down must not fail scoring
                log.exception(
                    "shard %d: pushing %d urgent candidates failed", self.shard_id, len(slots)
                )
        return report

    async def evaluate_alerts(self) -> TwinAlertReport | None:
        """Judge the twins with the alert rules and send the complete report to the sink.

        Serialised, so reports reach the alert manager in the order they were made (each
        one replaces the previous one of this shard).
        """
        await self.start()
        if self.alert_rules is None:
            return None
        async with self._alert_lock:
            report = self.alert_rules.evaluate(self.table, self.clock.now_s())
            if self.alert_sink is not None:
                await self.alert_sink(report)
        return report

    def _candidate_rows(self, slots: np.ndarray) -> list[Candidate]:
        t = self.table
        soc = t.latest("soc_pct")
        return [
            Candidate(
                battery_id=t.ids[s],
                vehicle_id=t.vehicle_ids[s],
                lat=float(t.last_lat[s]),
                lon=float(t.last_lon[s]),
                soc_pct=float(soc[s]),
                priority=float(t.priority[s]),
                lost_rides_6h=float(t.lost_rides_6h[s]),
                hours_to_empty=float(t.hours_to_empty[s]),
                health_score=float(t.health_score[s]),
                anomaly_flags=int(t.anomaly_flags[s]),
                charging=bool(t.charging[s]),
            )
            for s in slots.tolist()
        ]

    async def swap_candidates(self, n: int) -> list[Candidate]:
        """The planner's pull: this shard's ``n`` most urgent scored twins, plus every twin
        with an anomaly flag or a health score under 50 (replacement and inspection jobs)."""
        await self.start()
        t = self.table
        m = len(t)
        scored = np.flatnonzero(np.isfinite(t.priority[:m]))
        top = scored[np.argsort(-t.priority[:m][scored], kind="stable")[:n]]
        flagged = np.flatnonzero((t.anomaly_flags[:m] != 0) | (t.health_score[:m] < 50.0))
        return self._candidate_rows(np.union1d(top, flagged))

    async def set_vehicle(self, battery_id: str, vehicle_id: str | None) -> None:
        """Record which vehicle a battery is in (a done swap); creates the twin if new."""
        await self.start()
        slot, _ = self.table.ensure(battery_id)
        self.table.vehicle_ids[slot] = vehicle_id
        self._dirty.add(slot)

    async def anomaly_events(self, limit: int = 100) -> list[AnomalyEvent]:
        """The newest anomaly events of this shard's twins, newest first: the models' flags
        (when the models are on) and the messages the twins refused (always)."""
        await self.start()
        scored = list(self.scorer.events)[-limit:] if self.scorer is not None else []
        refused = list(self._ingest_events)[-limit:]
        # Each list newest first; the sort is stable, so events of one tick keep that order.
        return sorted(scored[::-1] + refused[::-1], key=lambda e: e.at_s, reverse=True)[:limit]

    async def health_rows(self) -> list[HealthRow]:
        """One health row (battery, cohort, SOH %, health score, EFC, model version) per scored twin.

        The cohort is the month the twin was first seen (``YYYY-MM``), for fleet trends.
        """
        await self.start()
        t = self.table
        n = len(t)
        scored = np.flatnonzero(np.isfinite(t.soh_model_pct[:n]) & np.isfinite(t.health_score[:n]))
        first = t.first_ts[scored]
        months = (
            np.where(np.isfinite(first), first, 0).astype("datetime64[s]").astype("datetime64[M]")
        )
        return [
            HealthRow(
                t.ids[s],
                str(m),
                float(t.soh_model_pct[s]),
                float(t.health_score[s]),
                float(t.efc[s]),
                int(t.health_model_version[s]),
            )
            for s, m in zip(scored.tolist(), months.tolist(), strict=True)
        ]

    async def scoring_report(self) -> ScoreReport | None:
        """What the last scoring tick did (a copy), or ``None`` when models are not enabled."""
        await self.start()
        if self.scorer is None:
            return None
        last = self.scorer.last_report
        return replace(last, rows=dict(last.rows), errors=dict(last.errors), retries=dict(last.retries))

    # ------------------------------------------------------------------ reads
    async def get(self, battery_id: str) -> TwinSnapshot | None:
        await self.start()
        slot = self.table.index.get(battery_id)
        if slot is None:
            return None
        twin = BatteryTwin(self.table, slot, self.zones, score_stale_after_s=self.score_stale_after_s)
        return twin.snapshot()

    async def window(self, battery_id: str) -> dict[str, list[float | None]] | None:
        await self.start()
        slot = self.table.index.get(battery_id)
        if slot is None:
            return None
        return {
            k: [None if not np.isfinite(x) else float(x) for x in arr]
            for k, arr in self.table.window_of(slot).items()
        }

    async def top_n(
        self, by: str, n: int, descending: bool, filters: Sequence[Filter]
    ) -> list[TopNRow]:
        await self.start()
        return top_n(
            self.table,
            by,
            n,
            descending=descending,
            filters=filters,
            zones=self.zones,
            now_s=self.clock.now_s(),
        )

    async def group_stats(
        self, group_by: str | None, fields: Sequence[str], filters: Sequence[Filter]
    ) -> dict[str, GroupStats]:
        await self.start()
        return group_stats(
            self.table,
            group_by,
            fields,
            filters=filters,
            zones=self.zones,
            now_s=self.clock.now_s(),
        )

    async def vehicles_near(
        self, lat: float, lon: float, radius_m: float, limit: int
    ) -> list[AvailableVehicle]:
        """Rentable vehicles of this shard near a point (:func:`twins.fleet_query.vehicles_near`)."""
        await self.start()
        return vehicles_near(self.table, lat, lon, radius_m, limit, now_s=self.clock.now_s())

    async def battery_ids(self) -> list[str]:
        await self.start()
        return list(self.table.ids)

    async def columns(self) -> TwinColumns:
        """Every twin's latest state as columns (what the HTTP replicas read from)."""
        await self.start()
        return TwinColumns.from_table(
            self.table, self.zones, self.clock.now_s(), score_stale_after_s=self.score_stale_after_s
        )

    async def stats(self) -> ShardStats:
        await self.start()
        n = min(self._latency_n, _LATENCY_RESERVOIR)
        lat = self._latency[:n]
        c = self._counters
        return ShardStats(
            shard_id=self.shard_id,
            twins=len(self.table),
            messages=c["messages"],
            accepted_samples=c["accepted_samples"],
            applied_samples=c["applied_samples"],
            late_samples=c["late_samples"],
            duplicate_messages=c["duplicate_messages"],
            vehicle_changes=c["vehicle_changes"],
            freshness_p50_s=float(np.percentile(lat, 50)) if n else None,
            freshness_p99_s=float(np.percentile(lat, 99)) if n else None,
            freshness_count=n,
            last_apply_at_s=self._last_apply_at_s,
            checkpoints=c["checkpoints"],
            restored_from_checkpoint=self._restored,
            replayed_samples=c["replayed_samples"],
        )

    async def latencies(self) -> np.ndarray:
        """Raw freshness values (publish-time to applied), for fleet-wide percentiles."""
        n = min(self._latency_n, _LATENCY_RESERVOIR)
        return self._latency[:n].copy()

    async def ping(self) -> bool:
        return True

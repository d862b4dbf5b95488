"""A shard's scoring tick: its twins, batched, through every model deployment.

Once per tick the scorer builds one array per model from the shard's columnar table (the
features come from :mod:`twins.features`, the one feature code), makes one call per model
(not one per battery), and writes the answers back into the table's model columns: SOH and
health score, anomaly flags (new ones become events on the twin), the degradation LSTM's
step (the twin keeps h and c; the deployment is stateless) with remaining-life bands, and
the priority. A model that is not deployed or fails leaves its columns as they were and the
others still run: scoring is advisory, ingest never waits on it.

Each model's step stamps ``<model>_scored_at_s`` for the twins it scored, and only when it
succeeded, so a twin whose model is down keeps its last outputs with their true age
(:class:`twins.twin_table.TwinTable`, "Score times"). A call that fails is retried within
the tick when the model answered the tick before (a replica that was just killed is
replaced within seconds: :class:`ScoringParams`, ``model_retries``).

Plain asyncio, no Ray: the shard passes a :class:`ModelClient` (Serve handles in
production, in-process models in unit tests).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from contracts.anomaly_kinds import AnomalyKind
from contracts.scoring import DRIFT_ELIGIBLE
from twins.clock import Clock, WallClock
from twins.cycle_inputs import DEFAULT_STEP_FRACTION, SLOPE_EWMA_COLUMN, cycle_inputs, step_due
from twins.features import (
    PRIORITY_FEATURE_NAMES,
    PriorityInputs,
    TwinCounters,
    health_features,
    priority_features,
)
from twins.telemetry_windows import windows_from_table
from twins.twin_table import TwinTable
from twins.zones import ZoneGrid

__all__ = [
    "AnomalyEvent",
    "DemandSource",
    "MemoryDemand",
    "ModelClient",
    "ScoreReport",
    "ScoringParams",
    "TwinScorer",
]

log = logging.getLogger(__name__)
Arrays = dict[str, npt.NDArray[Any]]


class ModelClient(Protocol):
    async def call(self, model: str, ids: list[str], arrays: Mapping[str, npt.NDArray[Any]]) -> Arrays:
        """Run ``model`` on row-aligned ``arrays`` (one row per id)."""
        ...


class DemandSource(Protocol):
    async def forecast(self, zones: Sequence[str]) -> dict[str, npt.NDArray[np.float64]]:
        """Per zone that has one: the next hourly ride requests per vehicle, from now."""
        ...

    async def add_ride_starts(self, counts: Mapping[tuple[str, int], int]) -> None:
        """Add observed ride starts per (zone, hour start in Unix s)."""
        ...


@dataclass
class MemoryDemand:
    """A :class:`DemandSource` in memory (tests, what-if runs)."""

    forecasts: dict[str, npt.NDArray[np.float64]] = field(default_factory=dict)
    rides: dict[tuple[str, int], int] = field(default_factory=dict)

    async def forecast(self, zones: Sequence[str]) -> dict[str, npt.NDArray[np.float64]]:
        return {z: self.forecasts[z] for z in set(zones) if z in self.forecasts}

    async def add_ride_starts(self, counts: Mapping[tuple[str, int], int]) -> None:
        for k, v in counts.items():
            self.rides[k] = self.rides.get(k, 0) + v


@dataclass(frozen=True)
class ScoringParams:
    """Knobs of the scoring tick.

    Parameters
    ----------
    consumption_pct_new
        State of charge one ride takes from a new pack; an aged pack takes ``/ SOH`` more.
    default_rides_per_vehicle_h
        Ride requests per vehicle and hour assumed where the demand model has no forecast
        yet (cold start): 5 trips a day, a typical shared-scooter figure.
    utc_offset_h
        Local time of the fleet, for the hour-of-day input.
    ride_gap_s
        A vehicle seen moving after this long standing still has started a new ride.
    max_events
        Anomaly events kept per shard (newest win).
    drift_min_history_s
        Only twins observed at least this long count towards the models' drift monitors
        (:data:`contracts.scoring.DRIFT_ELIGIBLE`): a twin minutes old has counters near zero,
        and a fleet of them would look drifted against training data that spans years. A
        week covers the daily and weekly patterns of use.
    model_retries, model_retry_backoff_s
        A model call that fails is tried again up to ``model_retries`` times in the same
        tick, after ``model_retry_backoff_s``, then twice that, and so on: Serve replaces a
        killed replica (or routes to another) within seconds, so the twins need not wait a
        whole tick. Only a model that answered the tick before is retried: one that is down
        for a whole tick (not deployed, no version in production yet) is tried once a tick,
        and its backoff does not hold up the other models' steps every tick.
    stale_after_ticks
        A twin's scores are stale (``scores_stale`` in its snapshot) when a model that has
        scored it has not succeeded for longer than this many scoring intervals: one missed
        tick is a blip a retry usually covers, three in a row is an outage worth showing.
        The shard turns it into seconds with its ``score_interval_s``.
    """

    consumption_pct_new: float = 4.0
    default_rides_per_vehicle_h: float = 0.2
    utc_offset_h: float = 1.0
    ride_gap_s: float = 180.0
    max_events: int = 10_000
    drift_min_history_s: float = 7 * 24 * 3600.0
    model_retries: int = 2
    model_retry_backoff_s: float = 0.5
    stale_after_ticks: float = 3.0

    def __post_init__(self) -> None:
        if not self.consumption_pct_new > 0.0 or self.default_rides_per_vehicle_h < 0.0:
            raise ValueError(
                f"Expected consumption_pct_new > 0 and default_rides_per_vehicle_h >= 0, got "
                f"{self.consumption_pct_new} and {self.default_rides_per_vehicle_h}."
            )
        # `not >=` so a NaN backoff is refused too: it would make asyncio.sleep raise.
        if self.model_retries < 0 or not self.model_retry_backoff_s >= 0.0:
            raise ValueError(
                f"Expected model_retries >= 0 and model_retry_backoff_s >= 0, got "
                f"{self.model_retries} and {self.model_retry_backoff_s}."
            )
        if not self.stale_after_ticks >= 1.0:
            raise ValueError(
                f"Expected stale_after_ticks >= 1 (a score is at least a tick old before the "
                f"next one), got {self.stale_after_ticks}."
            )


@dataclass(frozen=True)
class AnomalyEvent:
    """A flag that switched on for a twin."""

    battery_id: str
    kind: str
    score: float
    at_s: float

    def to_dict(self) -> dict[str, Any]:
        return {"battery_id": self.battery_id, "kind": self.kind, "score": self.score, "at_s": self.at_s}


@dataclass
class ScoreReport:
    """What one tick did: rows sent per model, models that failed and why.

    ``model_seconds`` is how long each model's step took (its inputs, the call and writing
    the answers back), failed steps and retries included; ``seconds`` is the whole tick.
    ``retries`` counts, per model, the calls made again after a failure (absent: none),
    whether the step then succeeded or is in ``errors``.
    """

    twins: int = 0
    rows: dict[str, int] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    retries: dict[str, int] = field(default_factory=dict)
    new_anomalies: int = 0
    ride_starts: int = 0
    seconds: float = 0.0
    model_seconds: dict[str, float] = field(default_factory=dict)


class TwinScorer:
    """Scores a :class:`TwinTable` through a :class:`ModelClient`.

    Parameters
    ----------
    client
        Where the models run.
    demand
        Zone demand forecasts (priority input) and the sink of observed ride starts.
    zones
        The fleet's zone grid.
    params
        Tick knobs.
    clock
        Time source.
    """

    def __init__(
        self,
        client: ModelClient,
        demand: DemandSource,
        zones: ZoneGrid = ZoneGrid(),
        params: ScoringParams = ScoringParams(),
        clock: Clock | None = None,
    ) -> None:
        self.client = client
        self.demand = demand
        self.zones = zones
        self.params = params
        self.clock: Clock = clock or WallClock()
        self.events: deque[AnomalyEvent] = deque(maxlen=params.max_events)
        self.last_report = ScoreReport()
        self._seen_moving_ts = np.zeros(0)
        self._last_tick_s: float | None = None
        # Models whose last call answered: only these are retried (see ScoringParams).
        self._answered: set[str] = set()

    async def score(self, table: TwinTable) -> ScoreReport:
        """One tick over every twin with telemetry."""
        started = self.clock.now_s()
        now = started
        n = len(table)
        slots = np.flatnonzero(table.count[:n] > 0).astype(np.int64)
        report = ScoreReport(twins=int(slots.size))
        if slots.size:
            ids = [table.ids[s] for s in slots.tolist()]
            zones = self.zones.zone_ids(table.last_lat[slots], table.last_lon[slots])
            report.ride_starts = await self._count_rides(table, slots, zones, now)
            await self._guard(report, "health", self._health(table, slots, ids, now, report))
            await self._guard(report, "anomaly", self._anomaly(table, slots, ids, now, report))
            await self._guard(report, "degradation", self._degradation(table, slots, ids, now, report))
            await self._guard(report, "priority", self._priority(table, slots, ids, zones, now, report))
            # Where no model has scored the twin yet, keep what was there: a checkpoint
            # from before the per-model times has only scored_at_s.
            oldest = table.oldest_score_s(slots)
            table.scored_at_s[slots] = np.where(np.isfinite(oldest), oldest, table.scored_at_s[slots])
        report.seconds = self.clock.now_s() - started
        self.last_report = report
        return report

    async def _guard(self, report: ScoreReport, model: str, work: Any) -> None:
        started = self.clock.now_s()
        try:
            report.rows[model] = await work
        except Exception as exc:  # one model down must not stop the others
            report.errors[model] = f"{type(exc).__name__}: {exc}"
            log.warning("scoring with %s failed: %s", model, report.errors[model])
        finally:
            report.model_seconds[model] = self.clock.now_s() - started

    async def _call(
        self, report: ScoreReport, model: str, ids: list[str], arrays: Mapping[str, npt.NDArray[Any]]
    ) -> Arrays:
        """``client.call``, retried as :class:`ScoringParams` says; the last error is raised."""
        p = self.params
        retries = p.model_retries if model in self._answered else 0
        made = 0
        while True:
            try:
                out = await self.client.call(model, ids, arrays)
            except Exception as exc:
                if made == retries:
                    self._answered.discard(model)
                    raise
                wait_s = p.model_retry_backoff_s * 2**made
                made += 1
                report.retries[model] = made
                log.info(
                    "scoring with %s failed (%s: %s); retry %d of %d in %.2f s",
                    model, type(exc).__name__, exc, made, retries, wait_s,
                )  # fmt: skip
                await asyncio.sleep(wait_s)
            else:
                self._answered.add(model)
                return out

    def _drift_eligible(self, t: TwinTable, slots: npt.NDArray[np.int64], now: float) -> npt.NDArray[np.bool_]:
        """Twins observed long enough to count towards drift (see ``drift_min_history_s``)."""
        with np.errstate(invalid="ignore"):
            eligible: npt.NDArray[np.bool_] = (now - t.first_ts[slots]) >= self.params.drift_min_history_s
        return eligible

    async def _health(
        self, t: TwinTable, slots: npt.NDArray[np.int64], ids: list[str], now: float, report: ScoreReport
    ) -> int:
        x = health_features(TwinCounters.from_table(t, slots, now))
        out = await self._call(report, "health", ids, {"features": x, DRIFT_ELIGIBLE: self._drift_eligible(t, slots, now)})
        t.soh_model_pct[slots] = out["soh_pct"]
        t.health_score[slots] = out["health_score"]
        t.health_model_version[slots] = out["model_version"]
        t.health_scored_at_s[slots] = now
        return len(ids)

    async def _anomaly(
        self, t: TwinTable, slots: npt.NDArray[np.int64], ids: list[str], now: float, report: ScoreReport
    ) -> int:
        w = windows_from_table(t, slots)
        assert w.evidence is not None  # windows_from_table always reads the twins' evidence
        request: dict[str, npt.NDArray[Any]] = {
            "values": w.values, "ts_s": w.ts_s, "lengths": w.lengths, "evidence": w.evidence,
        }  # fmt: skip
        out = await self._call(report, "anomaly", ids, request)
        flags = out["flags"].astype(np.int64)
        new = flags & ~t.anomaly_flags[slots]
        for k in np.flatnonzero(new).tolist():
            for flag in AnomalyKind(int(new[k])):
                self.events.append(AnomalyEvent(ids[k], str(flag.name).lower(), float(out["anomaly_score"][k]), now))
                report.new_anomalies += 1
        t.anomaly_flags[slots] = flags
        t.anomaly_score[slots] = out["anomaly_score"]
        t.anomaly_scored_at_s[slots] = now
        return len(ids)

    async def _degradation(
        self, t: TwinTable, slots: npt.NDArray[np.int64], ids: list[str], now: float, report: ScoreReport
    ) -> int:
        # The LSTM steps on a completed capacity measurement (a cycle observed end to end)
        # once the twin's cycle count has grown by DEFAULT_STEP_FRACTION of itself since its
        # last step, as the model was trained (twins/cycle_inputs.py); the twin carries
        # (h, c) between steps, the deployment is stateless.
        fresh = (t.capacity_estimates[slots] > t.lstm_capacity_mark[slots]) & np.isfinite(t.capacity_est_ah[slots])
        due = fresh & step_due(t.efc[slots], t.lstm_last_cycle[slots], DEFAULT_STEP_FRACTION)
        # A measurement too soon after the last step is used up: the next one is newer.
        t.lstm_capacity_mark[slots[fresh & ~due]] = t.capacity_estimates[slots[fresh & ~due]]
        step = slots[due]
        # A twin with no step due owes the LSTM nothing: its forecast is as current as it
        # can be, whatever the deployment is doing. One never stepped has no score.
        waiting = slots[~due]
        t.degradation_scored_at_s[waiting[t.lstm_steps[waiting] > 0]] = now
        if step.size == 0:
            return 0
        soh = t.capacity_est_ah[step] / t.rated_capacity_ah[step]
        cycle = t.efc[step]
        first = t.lstm_last_cycle[step] <= 0
        # A first step starts from a zero state (also for state a checkpoint of an older
        # model left behind without a step cycle).
        h, c = t.lstm_h[step].copy(), t.lstm_c[step].copy()
        h[first], c[first] = 0.0, 0.0
        x = cycle_inputs(
            soh, cycle, np.where(first, np.nan, t.lstm_last_soh[step]), np.where(first, 0.0, t.lstm_last_cycle[step]),
            np.where(first, np.nan, t.lstm_first_soh[step]), np.where(first, 0.0, t.lstm_slope_ewma[step]),
        )  # fmt: skip
        step_ids = [ids[k] for k in np.flatnonzero(due).tolist()]
        out = await self._call(
            report, "degradation", step_ids, {"x": x, "h": h, "c": c, "soh": soh, "cycle": cycle}
        )
        t.lstm_h[step] = out["h"]
        t.lstm_c[step] = out["c"]
        t.lstm_steps[step] = np.where(first, 1, t.lstm_steps[step] + 1)
        t.lstm_first_soh[step] = np.where(first, soh, t.lstm_first_soh[step])
        t.lstm_last_soh[step] = soh
        t.lstm_last_cycle[step] = cycle
        t.lstm_slope_ewma[step] = x[:, SLOPE_EWMA_COLUMN]
        t.lstm_capacity_mark[step] = t.capacity_estimates[step]
        for level in ("rul70", "rul80"):
            for q in ("p10", "p50", "p90"):
                getattr(t, f"{level}_{q}_cycles")[step] = out[f"{level}_{q}_cycles"]
        t.degradation_scored_at_s[step] = now
        return int(step.size)

    async def _priority(
        self,
        t: TwinTable,
        slots: npt.NDArray[np.int64],
        ids: list[str],
        zones: list[str],
        now: float,
        report: ScoreReport,
    ) -> int:
        p = self.params
        # Forecasts are per vehicle (the zone's rides shared by its vehicles) and start at
        # the current hour: the next 3 and 6 values are what counts.
        forecasts = await self.demand.forecast(zones)
        d3 = np.empty(len(zones))
        d6 = np.empty(len(zones))
        for k, z in enumerate(zones):
            f = forecasts.get(z)
            if f is None:
                d3[k], d6[k] = 3 * p.default_rides_per_vehicle_h, 6 * p.default_rides_per_vehicle_h
            else:
                d3[k], d6[k] = float(f[:3].sum()), float(f[:6].sum())
        soh = t.soh_model_pct[slots] / 100.0
        est = t.capacity_est_ah[slots] / t.rated_capacity_ah[slots]
        soh = np.where(np.isfinite(soh), soh, np.where(np.isfinite(est), est, 1.0))
        soh = np.clip(soh, 0.3, 1.2)
        idle_from = np.where(np.isfinite(t.last_moving_ts[slots]), t.last_moving_ts[slots], t.first_ts[slots])
        inputs = PriorityInputs(
            soc_pct=t.latest("soc_pct")[slots],
            soh=soh,
            consumption_pct_per_ride=p.consumption_pct_new / soh,
            demand_next_3h=d3,
            demand_next_6h=d6,
            idle_h=np.maximum(now - idle_from, 0.0) / 3600.0,
            hour_of_day=np.full(len(ids), ((now / 3600.0) + p.utc_offset_h) % 24.0),
            charging=t.charging[slots].copy(),
        )
        x = priority_features(inputs)
        out = await self._call(report, "priority", ids, {"features": x, DRIFT_ELIGIBLE: self._drift_eligible(t, slots, now)})
        t.hours_to_empty[slots] = x[:, PRIORITY_FEATURE_NAMES.index("hours_to_empty")]
        t.lost_rides_6h[slots] = out["lost_rides_6h"]
        t.priority[slots] = out["priority"]
        t.priority_scored_at_s[slots] = now
        return len(ids)

    async def _count_rides(
        self, t: TwinTable, slots: npt.NDArray[np.int64], zones: list[str], now: float
    ) -> int:
        """Ride starts since the last tick: twins moving again after standing ``ride_gap_s``.

        They are the demand model's history (where and when rides begin).
        """
        cap = t.capacity
        if self._seen_moving_ts.shape[0] < cap:
            grown = np.full(cap, np.nan)
            grown[: self._seen_moving_ts.shape[0]] = self._seen_moving_ts
            self._seen_moving_ts = grown
        before = self._seen_moving_ts[slots]
        after = t.last_moving_ts[slots]
        # A twin seen for the first time counts only if it moved since the previous tick
        # (after a shard restart, old movement is not a new ride).
        since = now if self._last_tick_s is None else self._last_tick_s
        fresh = np.where(np.isfinite(before), after - before > self.params.ride_gap_s, after > since)
        started = np.isfinite(after) & fresh
        self._seen_moving_ts[slots] = after
        self._last_tick_s = now
        counts: dict[tuple[str, int], int] = {}
        for k in np.flatnonzero(started).tolist():
            key = (zones[k], int(after[k] // 3600) * 3600)
            counts[key] = counts.get(key, 0) + 1
        if counts:
            await self.demand.add_ride_starts(counts)
        return int(started.sum())


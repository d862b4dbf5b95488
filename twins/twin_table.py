"""Columnar state of many battery twins, updated with vectorised numpy.

Every twin owns one *slot*: a row in each array below. A batch of samples for many
batteries is applied in a handful of numpy passes (sort, shift, reduce, scatter), so the
cost per sample stays flat whether a shard hosts one twin or a hundred thousand. The only
per-twin Python runs for rare events: a discharge segment ending (a charge starts), which
updates the depth-of-discharge histogram and the coulomb-counted capacity estimate.

Conventions: ``current_a`` is positive while discharging; times are Unix seconds.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from contracts.samples import SAMPLE_FIELDS, WINDOW_FIELDS, TelemetryBatch
from contracts.telemetry import RejectedMessage, RejectReason
from twins import pack_watch
from twins.clock import Clock, WallClock
from twins.pack_watch import PackWatchParams
from twins.plausibility import (
    Sample,
    SampleColumns,
    implausible_steps,
    message_ends,
    step_problem,
)

__all__ = ["DOD_BIN_EDGES_PCT", "SCORED_MODELS", "ApplyResult", "TwinTable", "TwinTableParams"]

#: Depth-of-discharge histogram bins: 0-10 %, 10-20 %, ..., 90-100 %.
DOD_BIN_EDGES_PCT = tuple(float(x) for x in range(0, 101, 10))
#: The model families of a scoring tick, in tick order; each has a ``<model>_scored_at_s``
#: column (:meth:`TwinTable.scored_at_of`).
SCORED_MODELS = ("health", "anomaly", "degradation", "priority")
_N_DOD_BINS = len(DOD_BIN_EDGES_PCT) - 1
_SEQ_WINDOW = 64  # how far back an out-of-order message is still told from a duplicate
_MASK64 = (1 << 64) - 1
_F = {name: i for i, name in enumerate(WINDOW_FIELDS)}
_DIFFERENCED = ("current_a", "soc_pct", "pack_voltage_v")
# Where a message's seq falls for its battery (TwinTable._seq_verdict).
_NEW, _DUPLICATE, _OUT_OF_RANGE = "new", "duplicate", "out_of_range"


@dataclass(frozen=True)
class TwinTableParams:
    """Knobs of the derived-state estimators.

    Parameters
    ----------
    window_samples
        Samples kept per twin in its ring buffer.
    rated_capacity_ah
        Rated capacity given to a battery the first time it is seen.
    hot_threshold_c
        Time above this temperature is counted as ``time_hot_s``.
    max_integration_gap_s
        Intervals between samples longer than this are not integrated (the vehicle was
        offline; coulomb counting across the gap would invent charge).
    charge_current_a
        A sample at standstill with current below ``-charge_current_a`` is charging;
        negative current while moving is regenerative braking, not a charge.
    soc_jump_pct
        A rise of SoC by at least this much between two samples means the pack was
        charged while not reporting: the discharge segment ends there too.
    min_capacity_dod_pct
        A segment must span at least this much SoC to yield a capacity estimate (short
        spans make Ah/ΔSoC dominated by SoC quantisation).
    capacity_ewma_alpha, resistance_ewma_alpha
        Smoothing of the per-segment capacity and per-step resistance estimates.
    min_current_step_a, max_step_dt_s
        A current step of at least ``min_current_step_a`` within ``max_step_dt_s``
        seconds gives one resistance sample R = -ΔV/ΔI (OCV barely moves that fast).
    lstm_hidden_size
        Width of the LSTM (h, c) state kept per twin for the model deployments.
    claim_after_silence_s
        A battery moves to another vehicle only if its twin has no vehicle (never seen,
        or taken out by a recorded swap) or has been silent this long, judged on sample
        time: a pack pulled out and parked (charging in a depot) that long counts as
        removed. Anything sooner is a ``battery_claim_conflict``.
    max_seq_jump, max_message_rate_hz
        A new ``seq`` may run ahead of the battery's last by at most ``max_seq_jump`` plus
        ``max_message_rate_hz`` per second of sample time since the last sample: a vehicle
        that was off for D seconds (a restarted simulator seeds its counter with the
        clock) comes back about D ahead. Further ahead, or behind the replay window, is
        ``seq_out_of_range``.
    resync_messages
        So many out-of-range messages in a row, each ``seq`` one more than the previous
        and each later in time, re-base the battery's sequence on them: a device whose
        counter reset (or jumped) is locked out for this many messages only.
    max_soc_rise_pct_per_s, soc_jump_slack_pct
        SoC may rise between two samples by at most ``soc_jump_slack_pct`` plus
        ``max_soc_rise_pct_per_s`` per second (0.1 %/s is a full charge in about 17
        minutes, faster than any scooter charger); more is ``implausible_telemetry``.
    pack_watch
        How each twin learns what its pack normally looks like (:mod:`twins.pack_watch`).
    max_speed_mps
        Two positions of one battery further apart than this speed allows are
        ``implausible_telemetry`` (50 m/s: no scooter, nor a van carrying the pack).
    """

    window_samples: int = 64
    rated_capacity_ah: float = 15.0
    hot_threshold_c: float = 45.0
    max_integration_gap_s: float = 120.0
    charge_current_a: float = 0.5
    soc_jump_pct: float = 5.0
    min_capacity_dod_pct: float = 20.0
    capacity_ewma_alpha: float = 0.3
    resistance_ewma_alpha: float = 0.1
    min_current_step_a: float = 3.0
    max_step_dt_s: float = 5.0
    lstm_hidden_size: int = 32
    claim_after_silence_s: float = 1800.0
    max_seq_jump: int = 64
    max_message_rate_hz: float = 10.0
    resync_messages: int = 3
    max_soc_rise_pct_per_s: float = 0.1
    soc_jump_slack_pct: float = 5.0
    max_speed_mps: float = 50.0
    pack_watch: PackWatchParams = field(default_factory=PackWatchParams)

    def __post_init__(self) -> None:
        if self.window_samples < 1:
            raise ValueError(f"Expected window_samples >= 1, got {self.window_samples}.")
        if not self.rated_capacity_ah > 0:
            raise ValueError(f"Expected rated_capacity_ah > 0, got {self.rated_capacity_ah}.")
        for name in ("capacity_ewma_alpha", "resistance_ewma_alpha"):
            v = getattr(self, name)
            if not 0 < v <= 1:
                raise ValueError(f"Expected {name} in (0, 1], got {v}.")
        if self.lstm_hidden_size < 1:
            raise ValueError(f"Expected lstm_hidden_size >= 1, got {self.lstm_hidden_size}.")
        if self.max_seq_jump < 1 or self.resync_messages < 1:
            raise ValueError(
                f"Expected max_seq_jump >= 1 and resync_messages >= 1, got "
                f"{self.max_seq_jump} and {self.resync_messages}."
            )
        for name in (
            "claim_after_silence_s", "max_message_rate_hz", "max_soc_rise_pct_per_s",
            "soc_jump_slack_pct", "max_speed_mps",
        ):  # fmt: skip
            v = getattr(self, name)
            # NaN fails this too: a NaN limit would silently switch its check off.
            if not v >= 0:
                raise ValueError(f"Expected {name} >= 0, got {v}.")


@dataclass
class ApplyResult:
    """What one :meth:`TwinTable.apply` did."""

    messages: int = 0
    duplicate_messages: int = 0
    applied_samples: int = 0
    late_samples: int = 0
    duplicate_samples: int = 0
    new_twins: int = 0
    vehicle_changes: list[tuple[str, str | None, str]] = field(default_factory=list)
    #: Indices (into the batch) of messages that were neither duplicates nor rejected.
    accepted_messages: npt.NDArray[np.int64] = field(
        default_factory=lambda: np.zeros(0, dtype=np.int64)
    )
    #: Messages refused against the twin's state (claim, seq range, plausibility), in
    #: batch order; none of their samples was applied or accepted.
    rejected: list[RejectedMessage] = field(default_factory=list)

    @property
    def accepted_samples(self) -> int:
        """Samples taken into the twin's history (applied live, or late)."""
        return self.applied_samples + self.late_samples


# Every per-twin array the table grows and checkpoints: the 2-D ones, then _SCALARS.
_ARRAYS_2D = ("window", "window_ts", "head", "count", "dod_hist", "lstm_h", "lstm_c", "pack_watch")

# Array attributes of the table, with dtype and per-slot fill value. The checkpoint
# writes exactly these, so adding state means adding a row here.
_SCALARS: dict[str, tuple[type, float]] = {
    "last_ts": (np.float64, -math.inf),
    "first_ts": (np.float64, math.nan),
    "last_seq": (np.int64, -1),
    "seq_mask": (np.uint64, 0),
    # Re-sync after a counter reset: the last out-of-range seq, how many came in a row
    # (each one more than the previous) and the newest sample time among them.
    "resync_seq": (np.int64, -1),
    "resync_count": (np.int64, 0),
    "resync_ts": (np.float64, math.nan),
    "last_lat": (np.float64, math.nan),
    "last_lon": (np.float64, math.nan),
    "samples_total": (np.int64, 0),
    "ah_discharged_ah": (np.float64, 0.0),
    "ah_charged_ah": (np.float64, 0.0),
    "efc": (np.float64, 0.0),
    "time_hot_s": (np.float64, 0.0),
    "max_temp_c": (np.float64, -math.inf),
    "rated_capacity_ah": (np.float64, math.nan),
    "capacity_est_ah": (np.float64, math.nan),
    "capacity_estimates": (np.int64, 0),
    "resistance_est_ohm": (np.float64, math.nan),
    "resistance_samples": (np.int64, 0),
    "cycles_completed": (np.int64, 0),
    "charging": (np.bool_, False),
    "seg_start_soc": (np.float64, math.nan),
    "seg_last_soc": (np.float64, math.nan),
    "seg_min_soc": (np.float64, math.nan),
    "seg_ah": (np.float64, 0.0),
    "updated_at_s": (np.float64, math.nan),
    "lstm_steps": (np.int64, 0),
    "last_moving_ts": (np.float64, math.nan),
    # Model outputs, written by the scorer (twins/scoring.py) from the Serve deployments.
    "lstm_capacity_mark": (np.int64, 0),
    "lstm_last_soh": (np.float64, math.nan),
    # Cycle count (equivalent full cycles) at the degradation LSTM's last step (0: none yet)
    # and SOH at its first: the model reads time relative to the cycles lived
    # (twins/cycle_inputs.py).
    "lstm_last_cycle": (np.float64, 0.0),
    "lstm_first_soh": (np.float64, math.nan),
    # The last step's smoothed fade slope (cycle_inputs' slope_ewma): the next step's input
    # and the unit of the forecast.
    "lstm_slope_ewma": (np.float64, 0.0),
    # When each model family last scored the twin successfully (NaN: never), so a read can
    # tell a score kept through a model outage from a fresh one; scored_at_s is the oldest
    # of them (see TwinTable). Checkpoints from before these columns load them as NaN.
    "health_scored_at_s": (np.float64, math.nan),
    "anomaly_scored_at_s": (np.float64, math.nan),
    "degradation_scored_at_s": (np.float64, math.nan),
    "priority_scored_at_s": (np.float64, math.nan),
    "scored_at_s": (np.float64, math.nan),
    "soh_model_pct": (np.float64, math.nan),
    "health_score": (np.float64, math.nan),
    "health_model_version": (np.int64, 0),
    "anomaly_flags": (np.int64, 0),
    "anomaly_score": (np.float64, math.nan),
    "rul70_p10_cycles": (np.float64, math.nan),
    "rul70_p50_cycles": (np.float64, math.nan),
    "rul70_p90_cycles": (np.float64, math.nan),
    "rul80_p10_cycles": (np.float64, math.nan),
    "rul80_p50_cycles": (np.float64, math.nan),
    "rul80_p90_cycles": (np.float64, math.nan),
    "lost_rides_6h": (np.float64, math.nan),
    "priority": (np.float64, math.nan),
    "hours_to_empty": (np.float64, math.nan),
}
_ARRAYS = (*_ARRAYS_2D, *_SCALARS)


class TwinTable:
    """Columnar state of many twins (plain Python and numpy: no Ray needed).

    Parameters
    ----------
    params
        Estimator knobs.
    clock
        Source of wall-clock time (``updated_at_s``).
    initial_capacity
        Slots allocated up front; the table doubles when full.

    Notes
    -----
    Score times. ``<model>_scored_at_s``, one column per model family of
    :data:`SCORED_MODELS`, is when that model last scored the twin successfully (NaN: it
    never has); a failed model step leaves its outputs *and* its time as they were, so a
    score kept through an outage shows its age. ``scored_at_s`` is the oldest of those times
    among the models that have scored the twin: every model output the twin holds is at
    least that fresh. It is not "the last tick in which every model succeeded": the
    degradation LSTM steps only on a new capacity measurement, and a twin that has had none
    would never count as scored.
    """

    # One array per _SCALARS row, allocated in __init__ with setattr (the table drives
    # allocation, growth and checkpoints); declared here so the attributes are typed.
    last_ts: npt.NDArray[np.float64]
    first_ts: npt.NDArray[np.float64]
    last_seq: npt.NDArray[np.int64]
    seq_mask: npt.NDArray[np.uint64]
    resync_seq: npt.NDArray[np.int64]
    resync_count: npt.NDArray[np.int64]
    resync_ts: npt.NDArray[np.float64]
    last_lat: npt.NDArray[np.float64]
    last_lon: npt.NDArray[np.float64]
    samples_total: npt.NDArray[np.int64]
    ah_discharged_ah: npt.NDArray[np.float64]
    ah_charged_ah: npt.NDArray[np.float64]
    efc: npt.NDArray[np.float64]
    time_hot_s: npt.NDArray[np.float64]
    max_temp_c: npt.NDArray[np.float64]
    rated_capacity_ah: npt.NDArray[np.float64]
    capacity_est_ah: npt.NDArray[np.float64]
    capacity_estimates: npt.NDArray[np.int64]
    resistance_est_ohm: npt.NDArray[np.float64]
    resistance_samples: npt.NDArray[np.int64]
    cycles_completed: npt.NDArray[np.int64]
    charging: npt.NDArray[np.bool_]
    seg_start_soc: npt.NDArray[np.float64]
    seg_last_soc: npt.NDArray[np.float64]
    seg_min_soc: npt.NDArray[np.float64]
    seg_ah: npt.NDArray[np.float64]
    updated_at_s: npt.NDArray[np.float64]
    lstm_steps: npt.NDArray[np.int64]
    last_moving_ts: npt.NDArray[np.float64]
    lstm_capacity_mark: npt.NDArray[np.int64]
    lstm_last_soh: npt.NDArray[np.float64]
    lstm_last_cycle: npt.NDArray[np.float64]
    lstm_first_soh: npt.NDArray[np.float64]
    lstm_slope_ewma: npt.NDArray[np.float64]
    health_scored_at_s: npt.NDArray[np.float64]
    anomaly_scored_at_s: npt.NDArray[np.float64]
    degradation_scored_at_s: npt.NDArray[np.float64]
    priority_scored_at_s: npt.NDArray[np.float64]
    scored_at_s: npt.NDArray[np.float64]
    soh_model_pct: npt.NDArray[np.float64]
    health_score: npt.NDArray[np.float64]
    health_model_version: npt.NDArray[np.int64]
    anomaly_flags: npt.NDArray[np.int64]
    anomaly_score: npt.NDArray[np.float64]
    rul70_p10_cycles: npt.NDArray[np.float64]
    rul70_p50_cycles: npt.NDArray[np.float64]
    rul70_p90_cycles: npt.NDArray[np.float64]
    rul80_p10_cycles: npt.NDArray[np.float64]
    rul80_p50_cycles: npt.NDArray[np.float64]
    rul80_p90_cycles: npt.NDArray[np.float64]
    lost_rides_6h: npt.NDArray[np.float64]
    priority: npt.NDArray[np.float64]
    hours_to_empty: npt.NDArray[np.float64]

    def __init__(
        self,
        params: TwinTableParams = TwinTableParams(),
        clock: Clock | None = None,
        initial_capacity: int = 16,
    ) -> None:
        self.params = params
        self.clock: Clock = clock or WallClock()
        self.ids: list[str] = []
        self.index: dict[str, int] = {}
        self.vehicle_ids: list[str | None] = []
        cap = max(1, initial_capacity)
        w, f, h = params.window_samples, len(WINDOW_FIELDS), params.lstm_hidden_size
        # float32 for the window: 4 bytes a value is plenty for sensor readings and halves
        # the memory of 100k resident twins; timestamps stay float64 (sub-second).
        self.window = np.full((cap, w, f), np.nan, dtype=np.float32)
        self.window_ts = np.full((cap, w), np.nan, dtype=np.float64)
        self.head = np.zeros(cap, dtype=np.int64)
        self.count = np.zeros(cap, dtype=np.int64)
        self.dod_hist = np.zeros((cap, _N_DOD_BINS), dtype=np.int64)
        self.lstm_h = np.zeros((cap, h), dtype=np.float32)
        self.lstm_c = np.zeros((cap, h), dtype=np.float32)
        # What each pack normally looks like, learned online (twins/pack_watch.py).
        self.pack_watch = pack_watch.new_state(cap)
        for name, (dtype, fill) in _SCALARS.items():
            setattr(self, name, np.full(cap, fill, dtype=dtype))

    # ------------------------------------------------------------------ slots
    def __len__(self) -> int:
        return len(self.ids)

    @property
    def capacity(self) -> int:
        return int(self.head.shape[0])

    def _grow(self, need: int) -> None:
        cap = self.capacity
        if need <= cap:
            return
        new_cap = max(need, cap * 2)
        for name in _ARRAYS:
            old = getattr(self, name)
            fill = _SCALARS[name][1] if name in _SCALARS else (np.nan if old.dtype.kind == "f" else 0)
            new = np.full((new_cap, *old.shape[1:]), fill, dtype=old.dtype)
            if name in ("lstm_h", "lstm_c"):
                new[:] = 0
            if name == "pack_watch":
                new = pack_watch.new_state(new_cap)
            new[:cap] = old
            setattr(self, name, new)

    def slot(self, battery_id: str) -> int:
        """The slot of ``battery_id``; :class:`KeyError` if the table has no such twin."""
        try:
            return self.index[battery_id]
        except KeyError:
            raise KeyError(f"No twin for battery {battery_id!r} in this table.") from None

    def ensure(self, battery_id: str) -> tuple[int, bool]:
        """The slot of ``battery_id``, creating the twin if needed; (slot, created)."""
        slot = self.index.get(battery_id)
        if slot is not None:
            return slot, False
        slot = len(self.ids)
        self._grow(slot + 1)
        self.ids.append(battery_id)
        self.vehicle_ids.append(None)
        self.index[battery_id] = slot
        self.rated_capacity_ah[slot] = self.params.rated_capacity_ah
        return slot, True

    # ------------------------------------------------------------------ dedup
    def _accept_seq(self, slot: int, seq: int) -> bool:
        """Anti-replay window: True if ``seq`` is new for this battery."""
        last = int(self.last_seq[slot])
        if seq > last:
            shift = seq - last
            if last < 0 or shift > _SEQ_WINDOW:
                mask = 0
            else:
                mask = ((int(self.seq_mask[slot]) << shift) | (1 << (shift - 1))) & _MASK64
            self.seq_mask[slot] = mask
            self.last_seq[slot] = seq
            return True
        if seq == last:
            return False
        back = last - seq - 1
        if back >= _SEQ_WINDOW:
            # Too old to tell from a replay: the broker redelivers recent messages, and
            # a message this late would only land in the past of the window anyway.
            return False
        mask = int(self.seq_mask[slot])
        if mask >> back & 1:
            return False
        self.seq_mask[slot] = mask | (1 << back)
        return True

    def _seq_verdict(self, slot: int, seq: int, since_last_s: float) -> str:
        """Where ``seq`` falls for this battery (changes nothing): new, duplicate or out of range.

        New: ahead of the last by at most ``max_seq_jump + max_message_rate_hz * since_last_s``
        (seconds of sample time since the twin's newest sample), or an unseen gap in the
        replay window behind it. Out of range: further ahead, or behind the window.
        """
        last = int(self.last_seq[slot])
        if last < 0:
            return _NEW
        if seq > last:
            gap_s = since_last_s if since_last_s > 0 else 0.0  # NaN (empty message): no credit
            if math.isinf(gap_s):  # a twin with no sample yet has no rate to hold it to
                return _NEW
            p = self.params
            return _NEW if seq - last <= p.max_seq_jump + p.max_message_rate_hz * gap_s else _OUT_OF_RANGE
        if seq == last:
            return _DUPLICATE
        back = last - seq - 1
        if back >= _SEQ_WINDOW:
            return _OUT_OF_RANGE
        return _DUPLICATE if int(self.seq_mask[slot]) >> back & 1 else _NEW

    def _resync(self, slot: int, seq: int, first_ts: float, last_ts: float) -> bool:
        """Count an out-of-range message towards a re-base of the battery's ``seq``.

        ``resync_messages`` of them in a row, each ``seq`` one more than the previous and
        starting after it in time, are a device whose counter reset or jumped, not a
        forger replaying one message: the high-water mark moves to them (True).
        """
        count = int(self.resync_count[slot])
        if count > 0 and seq == int(self.resync_seq[slot]):
            return False  # the same candidate again (a redelivery): no step closer
        if count > 0 and seq == int(self.resync_seq[slot]) + 1 and first_ts > self.resync_ts[slot]:
            count += 1
        else:
            count = 1
        if count >= self.params.resync_messages:
            self.last_seq[slot] = seq
            self.seq_mask[slot] = 0
            self._clear_resync(slot)
            return True
        self.resync_count[slot] = count
        self.resync_seq[slot] = seq
        self.resync_ts[slot] = last_ts
        return False

    def _clear_resync(self, slot: int) -> None:
        self.resync_count[slot] = 0
        self.resync_seq[slot] = -1
        self.resync_ts[slot] = math.nan

    # ------------------------------------------------------------------ checks
    def _newest_samples(self, slots: npt.NDArray[np.int64]) -> SampleColumns:
        """:meth:`_newest_sample` of many slots at once; slot -1 (no twin yet) has none."""
        has = slots >= 0
        s = np.where(has, slots, 0)
        pos = (self.head[s] - 1) % self.params.window_samples
        soc = self.window[s, pos, _F["soc_pct"]].astype(np.float64)
        some = has & (self.count[s] > 0)
        return (
            np.where(has, self.last_ts[s], -np.inf),
            np.where(some, soc, np.nan),
            np.where(has, self.last_lat[s], np.nan),
            np.where(has, self.last_lon[s], np.nan),
        )

    def _newest_sample(self, slot: int) -> Sample:
        """The twin's newest applied sample: (ts, SoC, lat, lon); ts is -inf if none."""
        soc = math.nan
        if self.count[slot] > 0:
            pos = (int(self.head[slot]) - 1) % self.params.window_samples
            soc = float(self.window[slot, pos, _F["soc_pct"]])
        return float(self.last_ts[slot]), soc, float(self.last_lat[slot]), float(self.last_lon[slot])

    def _claim_problem(
        self, slot: int, battery_id: str, vehicle_id: str, silence_s: float
    ) -> tuple[RejectReason, str] | None:
        """Why ``vehicle_id`` may not take the battery over now, or None if it may."""
        old = self.vehicle_ids[slot]
        limit_s = self.params.claim_after_silence_s
        if old is None or old == vehicle_id or silence_s >= limit_s:
            return None
        return RejectReason.BATTERY_CLAIM_CONFLICT, (
            f"battery {battery_id!r} is in vehicle {old!r}, whose last sample is "
            f"{silence_s:.0f} s before this message; expected messages from {old!r}, or "
            f"another vehicle only after a recorded swap or {limit_s:g} s of silence, got "
            f"vehicle {vehicle_id!r}"
        )

    def _check_messages(
        self,
        batch: TelemetryBatch,
        msg_slots: npt.NDArray[np.int64],
        keep: npt.NDArray[np.bool_],
        res: ApplyResult,
    ) -> None:
        """Dedup and check the messages of ``batch`` in order (see :meth:`apply`).

        Fills ``msg_slots``, clears ``keep`` for duplicates and rejects, and moves the
        vehicle and ``seq`` state of the accepted; samples are applied afterwards.
        """
        p = self.params
        ends = message_ends(batch, p)
        # The step from each twin's newest sample to the message, for all messages at once
        # against the table as it is now (the common case: one message per battery).
        known = np.fromiter((self.index.get(b, -1) for b in batch.battery_ids), np.int64, batch.n_messages)
        before = self._newest_samples(known)
        step_bad = implausible_steps(before, ends.first, p).tolist()
        before_ts, first_ts, last_ts = before[0].tolist(), ends.first_ts.tolist(), ends.last_ts.tolist()
        # The message holding each twin's newest sample once this batch's messages are
        # accepted: a second message of a battery is judged against the first, not the table.
        newest: dict[int, int] = {}
        for k, (bid, vid, seq) in enumerate(
            zip(batch.battery_ids, batch.vehicle_ids, batch.seqs.tolist(), strict=True)
        ):
            slot, created = self.ensure(bid)
            res.new_twins += created
            msg_slots[k] = slot
            running = newest.get(slot)
            t0, t1 = first_ts[k], last_ts[k]
            newest_ts = before_ts[k] if running is None else last_ts[running]
            since_s = t0 - newest_ts
            verdict = _NEW if seq < 0 else self._seq_verdict(slot, seq, since_s)
            if verdict == _DUPLICATE:
                keep[k] = False
                res.duplicate_messages += 1
                continue
            problem = self._claim_problem(slot, bid, vid, since_s) or ends.inner.get(k)
            if problem is None and running is not None:
                problem = step_problem(ends.last_of(running), ends.first_of(k), p)
            elif problem is None and step_bad[k]:
                problem = step_problem(self._newest_sample(slot), ends.first_of(k), p)
            if problem is None and verdict == _OUT_OF_RANGE and not self._resync(slot, seq, t0, t1):
                last_seq = int(self.last_seq[slot])
                gap_s = max(0.0, since_s)
                problem = RejectReason.SEQ_OUT_OF_RANGE, (
                    f"last seq {last_seq}, got seq {seq}: expected at most "
                    f"{p.max_seq_jump + p.max_message_rate_hz * gap_s:.0f} ahead ({p.max_seq_jump} "
                    f"+ {p.max_message_rate_hz:g}/s over the {gap_s:.0f} s since the last "
                    f"sample) or within the {_SEQ_WINDOW} before it; "
                    f"{int(self.resync_count[slot])} of {p.resync_messages} consecutive "
                    f"out-of-range messages towards a re-sync"
                )
            if problem is not None:
                keep[k] = False
                res.rejected.append(RejectedMessage(k, *problem))
                continue
            if verdict == _NEW and seq >= 0:
                self._accept_seq(slot, seq)
                # The stream goes on where the twin expects it: out-of-range messages so
                # far were not a reset counter.
                if self.resync_count[slot]:
                    self._clear_resync(slot)
            self._move_vehicle(slot, vid, res)
            if t1 > newest_ts:
                newest[slot] = k

    def _move_vehicle(self, slot: int, vehicle_id: str, res: ApplyResult) -> None:
        old = self.vehicle_ids[slot]
        if old != vehicle_id:
            if old is not None:
                res.vehicle_changes.append((self.ids[slot], old, vehicle_id))
            self.vehicle_ids[slot] = vehicle_id

    # ------------------------------------------------------------------ apply
    def apply(self, batch: TelemetryBatch, *, replay: bool = False) -> ApplyResult:
        """Take a batch into the twins: dedup and check messages, then update windows and
        counters.

        Messages whose (battery, seq) was seen before are dropped whole. Every other
        message is checked against what its twin knows, in batch order (the knobs are in
        :class:`TwinTableParams`): the battery must not be claimed by another vehicle
        without a swap (``battery_claim_conflict``), its ``seq`` must continue the
        battery's stream (``seq_out_of_range``), and its samples must be physically
        possible next to each other and to the twin's last sample
        (``implausible_telemetry``). A message that fails is rejected whole
        (:attr:`ApplyResult.rejected`): none of its samples is applied or accepted, and
        it moves nothing of the twin (vehicle, ``seq`` mark, ``last_ts``) but the count
        towards a ``seq`` re-sync. One forged message therefore cannot take a battery
        over, nor make the genuine stream look like replays or late samples.

        Samples older than a twin's newest applied sample are *late*: they are accepted
        (the caller persists them to history) but not applied, so the window stays
        time-ordered and the integrated counters never count an interval twice.

        Parameters
        ----------
        batch
            The messages, in arrival order.
        replay
            The batch is history this table's owner stored itself (a restore, offline
            features): every message in it passed the checks once, so only duplicates
            are dropped. Checking it again would judge it against a twin that does not
            know later facts yet, such as a swap recorded with ``set_vehicle``.
        """
        res = ApplyResult(messages=batch.n_messages)
        if batch.n_messages == 0:
            return res
        msg_slots = np.empty(batch.n_messages, dtype=np.int64)
        keep = np.ones(batch.n_messages, dtype=bool)
        if replay:
            for k, (bid, vid, seq) in enumerate(
                zip(batch.battery_ids, batch.vehicle_ids, batch.seqs.tolist(), strict=True)
            ):
                slot, created = self.ensure(bid)
                res.new_twins += created
                msg_slots[k] = slot
                if seq >= 0 and not self._accept_seq(slot, seq):
                    keep[k] = False
                    res.duplicate_messages += 1
                    continue
                self._move_vehicle(slot, vid, res)
        else:
            self._check_messages(batch, msg_slots, keep, res)
        res.accepted_messages = np.flatnonzero(keep)
        counts = np.diff(batch.msg_offsets)
        sample_keep = np.repeat(keep, counts)
        slots = np.repeat(msg_slots, counts)[sample_keep]
        if slots.size == 0:
            return res
        cols = {k: v[sample_keep] for k, v in batch.columns.items()}
        self._apply_samples(slots, cols, res)
        return res

    def _apply_samples(
        self, slots: npt.NDArray[np.int64], cols: dict[str, npt.NDArray[np.float64]], res: ApplyResult
    ) -> None:
        p = self.params
        ts = cols["ts"]
        order = np.lexsort((ts, slots))
        slots = slots[order]
        ts = ts[order]
        # A sample is new if it is strictly after the previous one of its battery (the
        # twin's newest for the first in the batch); equal timestamps are duplicates.
        first = np.ones(slots.size, dtype=bool)
        first[1:] = slots[1:] != slots[:-1]
        prev_ts = np.empty_like(ts)
        prev_ts[1:] = ts[:-1]
        prev_ts[first] = self.last_ts[slots[first]]
        is_dup = np.zeros(slots.size, dtype=bool)
        is_dup[1:] = (~first[1:]) & (ts[1:] == ts[:-1])
        late = (ts <= self.last_ts[slots]) & ~is_dup
        fresh = ~(late | is_dup)
        res.late_samples += int(late.sum())
        res.duplicate_samples += int(is_dup.sum())
        if not fresh.any():
            return
        sel = order[fresh]
        slots = slots[fresh]
        ts = ts[fresh]
        n = slots.size
        v = {k: cols[k][sel] for k in SAMPLE_FIELDS if k != "ts"}
        # The readings that are differenced with the previous sample, at the window's float32
        # precision: the previous sample of a batch's first sample comes from the (float32)
        # window, so this makes every estimator give the same answer however the stream was
        # cut into batches (live ticks vs a replay of the history).
        for name in _DIFFERENCED:
            v[name] = v[name].astype(np.float32).astype(np.float64)

        starts = np.flatnonzero(np.r_[True, slots[1:] != slots[:-1]])
        ends = np.r_[starts[1:], n]
        gslots = slots[starts]
        gsize = ends - starts
        first = np.zeros(n, dtype=bool)
        first[starts] = True

        # Previous sample of each sample: within the batch, or the twin's newest.
        had = self.count[gslots] > 0
        last_pos = (self.head[gslots] - 1) % p.window_samples
        prev: dict[str, npt.NDArray[np.float64]] = {}
        for name in ("current_a", "soc_pct", "pack_voltage_v"):
            arr = v[name]
            pv = np.empty(n)
            pv[1:] = arr[:-1]
            tw = self.window[gslots, last_pos, _F[name]].astype(np.float64)
            pv[starts] = np.where(had, tw, np.nan)
            prev[name] = pv
        pts = np.empty(n)
        pts[1:] = ts[:-1]
        pts[starts] = np.where(had, self.last_ts[gslots], np.nan)
        dt = ts - pts
        dt_ok = np.isfinite(dt) & (dt <= p.max_integration_gap_s)
        dt_int = np.where(dt_ok, dt, 0.0)

        # Coulomb counting with the trapezoid rule over each interval. An interval with a
        # missing current at either end is skipped like a gap (fixed: one NaN reading used
        # to make ah_discharged_ah / ah_charged_ah NaN for the rest of the twin's life).
        i_ok = dt_ok & np.isfinite(v["current_a"]) & np.isfinite(prev["current_a"])
        i_avg = np.where(i_ok, 0.5 * (v["current_a"] + prev["current_a"]), 0.0)
        ah = i_avg * dt_int / 3600.0
        ah_dis = np.maximum(ah, 0.0)
        ah_chg = np.maximum(-ah, 0.0)
        dsoc = v["soc_pct"] - prev["soc_pct"]
        dsoc_dis = np.where(np.isfinite(dsoc), np.maximum(-dsoc, 0.0), 0.0)
        hot = np.where(v["temp_c"] > p.hot_threshold_c, dt_int, 0.0)

        red = np.add.reduceat
        self.ah_discharged_ah[gslots] += red(ah_dis, starts)
        self.ah_charged_ah[gslots] += red(ah_chg, starts)
        self.efc[gslots] += red(dsoc_dis, starts) / 100.0
        self.time_hot_s[gslots] += red(hot, starts)
        # fmax ignores a missing (NaN) temperature; np.maximum kept the NaN forever (fixed).
        self.max_temp_c[gslots] = np.fmax(self.max_temp_c[gslots], np.fmax.reduceat(v["temp_c"], starts))
        self.samples_total[gslots] += gsize
        # Idle time (a priority input) counts from the last sample that showed the vehicle moving.
        moving_ts = np.where(v["speed_kmh"] > 1.0, ts, np.nan)
        self.last_moving_ts[gslots] = np.fmax(self.last_moving_ts[gslots], np.fmax.reduceat(moving_ts, starts))

        # Internal resistance from fast current steps: V = OCV - I*R, so R = -dV/dI.
        d_i = v["current_a"] - prev["current_a"]
        d_v = v["pack_voltage_v"] - prev["pack_voltage_v"]
        step = (np.abs(d_i) >= p.min_current_step_a) & (dt > 0) & (dt <= p.max_step_dt_s)
        with np.errstate(invalid="ignore", divide="ignore"):
            r = np.where(step, -d_v / np.where(step, d_i, 1.0), np.nan)
        r_ok = step & (r > 0.002) & (r < 5.0)
        if r_ok.any():
            k = red(r_ok.astype(np.int64), starts)
            r_sum = red(np.where(r_ok, r, 0.0), starts)
            del r_sum
            # The exact sequential EWMA over the batch's samples, vectorised: sample i of k in
            # its group weighs a(1-a)^(k-i) and the old estimate (1-a)^k; a twin without an
            # estimate starts from its first sample. The result does not depend on how the
            # stream was cut into batches (live ticks and a replay agree).
            a = p.resistance_ewma_alpha
            pos = np.flatnonzero(r_ok)
            grp = np.searchsorted(starts, pos, side="right") - 1
            rank = np.arange(pos.size) - np.searchsorted(grp, grp, side="left") + 1
            kk_all = k[grp]
            w = a * (1.0 - a) ** (kk_all - rank)
            cur_all = self.resistance_est_ohm[gslots[grp]]
            first_of_fresh = (rank == 1) & np.isnan(cur_all)
            w = np.where(first_of_fresh, (1.0 - a) ** (kk_all - 1), w)
            g_count = len(starts)
            acc = np.bincount(grp, weights=w * r[pos], minlength=g_count)
            has = k > 0
            gs, kk = gslots[has], k[has]
            cur = self.resistance_est_ohm[gs]
            keep = np.where(np.isnan(cur), 0.0, cur * (1.0 - a) ** kk)
            self.resistance_est_ohm[gs] = keep + acc[has]
            self.resistance_samples[gs] += kk

        # Discharge segments (for the DoD histogram and capacity estimate). A segment
        # ends when charging starts (standstill, negative current) or SoC jumps up.
        chg = (v["current_a"] < -p.charge_current_a) & (v["speed_kmh"] <= 0.5)
        jump = np.where(np.isfinite(dsoc), dsoc >= p.soc_jump_pct, False)
        prev_chg = np.empty(n, dtype=bool)
        prev_chg[1:] = chg[:-1]
        prev_chg[starts] = self.charging[gslots]
        event = (chg != prev_chg) | jump
        seg_new = np.isnan(self.seg_start_soc[gslots]) & ~chg[starts]
        complex_g = (red(event.astype(np.int64), starts) > 0) | seg_new
        simple_g = ~complex_g
        # A segment counts *net* Ah (``ah``, not ``ah_dis``): regen while moving stays in the
        # segment and puts charge back, so Ah / ΔSoC must net it out as the SoC does, or
        # braking inflates the capacity estimate (fixed: this used ``ah_dis``).
        if simple_g.any():
            # No transition inside these groups: discharging groups extend their open
            # segment; charging groups only add to ah_charged (done above).
            dis = simple_g & ~chg[starts]
            gsd = gslots[dis]
            if gsd.size:
                self.seg_ah[gsd] += red(ah, starts)[dis]
                seg_min = np.minimum.reduceat(v["soc_pct"], starts)[dis]
                self.seg_min_soc[gsd] = np.fmin(self.seg_min_soc[gsd], seg_min)
                self.seg_last_soc[gsd] = v["soc_pct"][ends[dis] - 1]
        for g in np.flatnonzero(complex_g).tolist():
            self._segments_scalar(
                int(gslots[g]), chg[starts[g] : ends[g]], jump[starts[g] : ends[g]],
                v["soc_pct"][starts[g] : ends[g]], ah[starts[g] : ends[g]],
            )

        # Ring buffers: only the newest window_samples of a group can survive.
        rank = np.arange(n) - np.repeat(starts, gsize)
        size_per = np.repeat(gsize, gsize)
        w = p.window_samples
        writable = rank >= size_per - w
        pos = (self.head[slots] + rank) % w
        ws, wp = slots[writable], pos[writable]
        self.window_ts[ws, wp] = ts[writable]
        block = np.stack([v[name][writable] for name in WINDOW_FIELDS], axis=1)
        self.window[ws, wp, :] = block.astype(np.float32)
        self.head[gslots] = (self.head[gslots] + gsize) % w
        self.count[gslots] = np.minimum(self.count[gslots] + gsize, w)

        lastidx = ends - 1
        self.last_ts[gslots] = ts[lastidx]
        self.first_ts[gslots] = np.where(np.isnan(self.first_ts[gslots]), ts[starts], self.first_ts[gslots])
        self.last_lat[gslots] = v["lat"][lastidx]
        self.last_lon[gslots] = v["lon"][lastidx]
        self.charging[gslots] = chg[lastidx]
        self.updated_at_s[gslots] = self.clock.now_s()
        pack_watch.apply_samples(
            self.pack_watch, slots, starts, {**v, "ts": ts}, p.pack_watch
        )
        res.applied_samples += n

    def _segments_scalar(
        self,
        slot: int,
        chg: npt.NDArray[np.bool_],
        jump: npt.NDArray[np.bool_],
        soc: npt.NDArray[np.float64],
        ah_net: npt.NDArray[np.float64],
    ) -> None:
        """Walk one twin's samples through segment starts and ends (rare events)."""
        charging = bool(self.charging[slot])
        for j in range(len(soc)):
            c, s = bool(chg[j]), float(soc[j])
            if jump[j] and not c:
                self._close_segment(slot)
                self._open_segment(slot, s)
            elif c and not charging:
                self._close_segment(slot)
            elif not c and (charging or math.isnan(self.seg_start_soc[slot])):
                self._open_segment(slot, s)
            elif not c:
                self.seg_ah[slot] += ah_net[j]
                self.seg_min_soc[slot] = min(self.seg_min_soc[slot], s)
                self.seg_last_soc[slot] = s
            charging = c
        self.charging[slot] = charging

    def _open_segment(self, slot: int, soc: float) -> None:
        self.seg_start_soc[slot] = soc
        self.seg_min_soc[slot] = soc
        self.seg_last_soc[slot] = soc
        self.seg_ah[slot] = 0.0

    def _close_segment(self, slot: int) -> None:
        start, last = float(self.seg_start_soc[slot]), float(self.seg_last_soc[slot])
        if math.isnan(start) or math.isnan(last):
            return
        dod = max(0.0, start - float(self.seg_min_soc[slot]))
        if dod >= 1.0:
            b = min(int(dod // 10), _N_DOD_BINS - 1)
            self.dod_hist[slot, b] += 1
            self.cycles_completed[slot] += 1
        span = start - last
        ah = float(self.seg_ah[slot])
        if span >= self.params.min_capacity_dod_pct and ah > 0:
            estimate = ah / (span / 100.0)
            cur = float(self.capacity_est_ah[slot])
            a = self.params.capacity_ewma_alpha
            self.capacity_est_ah[slot] = estimate if math.isnan(cur) else cur + a * (estimate - cur)
            self.capacity_estimates[slot] += 1
        self.seg_start_soc[slot] = math.nan
        self.seg_min_soc[slot] = math.nan
        self.seg_last_soc[slot] = math.nan
        self.seg_ah[slot] = 0.0

    # ------------------------------------------------------------------ reads
    def window_of(self, slot: int) -> dict[str, npt.NDArray[np.float64]]:
        """The twin's rolling window, oldest first, as float64 columns."""
        w = self.params.window_samples
        n = int(self.count[slot])
        idx = (int(self.head[slot]) - n + np.arange(n)) % w
        out = {"ts": self.window_ts[slot, idx].copy()}
        for name, i in _F.items():
            out[name] = self.window[slot, idx, i].astype(np.float64)
        return out

    def scored_at_of(self, model: str) -> npt.NDArray[np.float64]:
        """The ``<model>_scored_at_s`` column (every slot) of a model of :data:`SCORED_MODELS`."""
        if model not in SCORED_MODELS:
            raise ValueError(f"Expected a model of {SCORED_MODELS}, got {model!r}.")
        column: npt.NDArray[np.float64] = getattr(self, f"{model}_scored_at_s")
        return column

    def oldest_score_s(self, slots: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        """What ``scored_at_s`` is for ``slots``: the oldest per-model score time among the
        models that have scored each twin, NaN where none has."""
        out = np.full(len(slots), np.nan)
        for model in SCORED_MODELS:
            # fmin skips NaN: a model that never scored the twin does not make it unscored.
            out = np.fmin(out, self.scored_at_of(model)[slots])
        return out

    def latest(self, name: str) -> npt.NDArray[np.float64]:
        """Newest value of window column ``name`` for every slot (NaN if none)."""
        n = len(self.ids)
        pos = (self.head[:n] - 1) % self.params.window_samples
        out: npt.NDArray[np.float64] = self.window[np.arange(n), pos, _F[name]].astype(np.float64)
        out[self.count[:n] == 0] = np.nan
        return out

    # ------------------------------------------------------------------ checkpoints
    def to_bytes(self) -> bytes:
        """Serialise the whole table (npz) for a shard checkpoint."""
        n = len(self.ids)
        arrays: dict[str, npt.NDArray[np.generic]] = {
            name: getattr(self, name)[:n]
            for name in _ARRAYS
        }
        arrays["ids"] = np.array(self.ids, dtype=object)
        arrays["vehicle_ids"] = np.array(["" if x is None else x for x in self.vehicle_ids], dtype=object)
        buf = io.BytesIO()
        # Object arrays need pickle; the payload only ever comes from our own checkpoints.
        np.savez(buf, **arrays)  # type: ignore[arg-type]
        return buf.getvalue()

    @classmethod
    def from_bytes(
        cls, payload: bytes, params: TwinTableParams, clock: Clock | None = None
    ) -> TwinTable:
        """Rebuild a table written by :meth:`to_bytes` (same window and hidden sizes).

        A column the payload lacks (a checkpoint written before the column existed, such
        as the per-model score times) keeps its fill value for every twin.
        """
        data = np.load(io.BytesIO(payload), allow_pickle=True)
        ids = [str(x) for x in data["ids"]]
        table = cls(params, clock, initial_capacity=max(16, len(ids)))
        if data["window"].shape[1:] != table.window.shape[1:]:
            raise ValueError(
                f"Checkpoint window shape {data['window'].shape[1:]} does not match the "
                f"configured {table.window.shape[1:]} (window_samples, fields)."
            )
        # The docstring promises the same hidden size too; without this check a mismatch
        # surfaced as numpy's bare "could not broadcast input array" error below.
        if data["lstm_h"].shape[1:] != table.lstm_h.shape[1:]:
            raise ValueError(
                f"Checkpoint LSTM state width {data['lstm_h'].shape[1]} does not match the "
                f"configured lstm_hidden_size {params.lstm_hidden_size}."
            )
        n = len(ids)
        for name in _ARRAYS:
            # Skipping a missing column is what lets an older checkpoint load: the new
            # state starts from its default, as for a twin seen for the first time.
            if name in data:
                getattr(table, name)[:n] = data[name]
        table.ids = ids
        table.index = {b: i for i, b in enumerate(ids)}
        table.vehicle_ids = [str(x) or None for x in data["vehicle_ids"]]
        return table

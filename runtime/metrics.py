"""Every metric the system exports through Ray, and the code that feeds them.

Metrics go through Ray's metrics API (:mod:`ray.util.metrics`): each node's metrics agent
serves them on the node's Prometheus endpoint (:func:`prometheus_url`), next to Ray's own,
and the Ray dashboard and Grafana read them from there. Ray prefixes application metrics
with ``ray_``: the counter declared here as ``bms_ingest_samples_total`` is scraped as
``ray_bms_ingest_samples_total`` (:attr:`MetricSpec.exported_name`).

The hot paths pay nothing. The domain objects already count what they do
(:class:`~twins.shard.ShardStats`, :class:`~serve.mqtt_bridge.BridgeStats`,
:class:`~planners.planner.PlanRecord`, :class:`~twins.scoring.ScoreReport`); a small loop in
each actor (:func:`export_every`, every :data:`EXPORT_INTERVAL_S`) reads those stats and
records what changed since its last look: cumulative counts become counter increments,
current values set gauges. Ray itself exports every few seconds, so a finer loop would show
nothing sooner.

=================================  =========  ====================  ==========================
metric (declared name)             kind       tags                  fed by
=================================  =========  ====================  ==========================
``bms_ingest_samples_total``       counter                          :class:`BridgeMetrics`
``bms_telemetry_rejects_total``    counter    reason                :class:`BridgeMetrics`
``bms_freshness_p50_seconds``      gauge      shard                 :class:`ShardMetrics`
``bms_freshness_p99_seconds``      gauge      shard                 :class:`ShardMetrics`
``bms_twins_resident``             gauge      shard                 :class:`ShardMetrics`
``bms_scoring_latency_seconds``    histogram  model                 :class:`ScoringMetrics`
``bms_scoring_errors_total``       counter    model                 :class:`ScoringMetrics`
``bms_planner_queue_jobs``         gauge                            :class:`PlannerMetrics`
``bms_plan_value_eur``             gauge      outcome               :class:`PlannerMetrics`
``bms_plan_distance_meters``       gauge                            :class:`PlannerMetrics`
``bms_plan_solve_seconds``         gauge                            :class:`PlannerMetrics`
``bms_plans_total``                counter    reason                :class:`PlannerMetrics`
``bms_alerts``                     gauge      state, severity       :class:`AlertMetrics`
``bms_webhook_deliveries_total``   counter    outcome               :class:`WebhookMetrics`
``bms_model_feature_psi``          gauge      model, version,       the model deployments
                                              feature
=================================  =========  ====================  ==========================

``docs/grafana-bms.json`` charts every one of them (a unit test keeps the two in step).

A twin shard process imports this module (through :mod:`runtime.twins`), so it imports the
domain types for annotations only: nothing here may load the MQTT client or the planner.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

import ray
from ray.util import metrics as ray_metrics

if TYPE_CHECKING:
    from planners.planner import PlanRecord
    from serve.mqtt_bridge import BridgeStats
    from twins.scoring import ScoreReport
    from twins.shard import ShardStats

__all__ = [
    "ALERTS",
    "EXPORT_INTERVAL_S",
    "FRESHNESS_P50",
    "FRESHNESS_P99",
    "INGEST_SAMPLES",
    "METRICS",
    "MODEL_FEATURE_PSI",
    "PLANNER_QUEUE",
    "PLANS",
    "PLAN_DISTANCE",
    "PLAN_SOLVE",
    "PLAN_VALUE",
    "PROMETHEUS_PREFIX",
    "SCORING_ERRORS",
    "SCORING_LATENCY",
    "TELEMETRY_REJECTS",
    "TWINS_RESIDENT",
    "WEBHOOK_DELIVERIES",
    "WEBHOOK_OUTCOMES",
    "AlertMetrics",
    "BridgeMetrics",
    "MemoryRecorder",
    "MetricKind",
    "MetricSpec",
    "PlannerMetrics",
    "RayRecorder",
    "Recorder",
    "ScoringMetrics",
    "ShardMetrics",
    "WebhookMetrics",
    "export_every",
    "prometheus_url",
]

log = logging.getLogger(__name__)

#: What Ray puts before every application metric's name on the Prometheus endpoint.
PROMETHEUS_PREFIX = "ray_"
#: How often each actor reads its stats into the metrics. Ray exports every 5-10 s.
EXPORT_INTERVAL_S = 5.0
#: Dead-letter reason of messages whose batch the shards never took
#: (``serve.mqtt_bridge.ROUTING_FAILED``; not imported: shard processes import this module).
_ROUTING_FAILED = "routing_failed"
_NAME = re.compile(r"^bms_[a-z0-9_]+$")


class MetricKind(StrEnum):
    """The three metric types of :mod:`ray.util.metrics` (Prometheus' counter, gauge, histogram)."""

    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


@dataclass(frozen=True)
class MetricSpec:
    """One metric: its name (with its unit), kind, description, tag keys and buckets.

    Parameters
    ----------
    name
        As declared to Ray: ``bms_`` first, the unit last (``_seconds``, ``_meters``,
        ``_eur``), and ``_total`` last for counters.
    kind
        Counter, gauge or histogram.
    description
        The ``# HELP`` line on the Prometheus endpoint.
    tag_keys
        Every record gives a value for each of these, and no other.
    boundaries
        A histogram's bucket upper bounds (increasing, positive); nothing for the others.
    """

    name: str
    kind: MetricKind
    description: str
    tag_keys: tuple[str, ...] = ()
    boundaries: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"Expected a metric name like 'bms_<what>_<unit>', got {self.name!r}.")
        if (self.kind is MetricKind.COUNTER) != self.name.endswith("_total"):
            raise ValueError(f"Expected '_total' at the end of counter names only, got {self.kind} {self.name!r}.")
        if self.kind is MetricKind.HISTOGRAM:
            b = self.boundaries
            if not b or b[0] <= 0 or any(x >= y for x, y in itertools.pairwise(b)):
                raise ValueError(f"Expected increasing positive boundaries for {self.name}, got {b!r}.")
        elif self.boundaries:
            raise ValueError(f"Expected no boundaries for the {self.kind} {self.name}, got {self.boundaries!r}.")

    @property
    def exported_name(self) -> str:
        """The name on the Prometheus endpoint (``ray_bms_...``)."""
        return PROMETHEUS_PREFIX + self.name

    @property
    def series(self) -> tuple[str, ...]:
        """Every series name this metric shows up as (a histogram's three)."""
        if self.kind is MetricKind.HISTOGRAM:
            return tuple(self.exported_name + s for s in ("_bucket", "_sum", "_count"))
        return (self.exported_name,)


# ---------------------------------------------------------------------------- the metrics
INGEST_SAMPLES = MetricSpec(
    "bms_ingest_samples_total", MetricKind.COUNTER,
    "Telemetry samples the twins accepted, counted by the MQTT bridge workers",
)  # fmt: skip
TELEMETRY_REJECTS = MetricSpec(
    "bms_telemetry_rejects_total", MetricKind.COUNTER,
    "Telemetry messages dead-lettered by the MQTT bridge, by reason", ("reason",),
)  # fmt: skip
FRESHNESS_P50 = MetricSpec(
    "bms_freshness_p50_seconds", MetricKind.GAUGE,
    "Median delay from a sample's timestamp to its twin showing it, over a shard's recent samples",
    ("shard",),
)  # fmt: skip
FRESHNESS_P99 = MetricSpec(
    "bms_freshness_p99_seconds", MetricKind.GAUGE,
    "99th-percentile delay from a sample's timestamp to its twin showing it, over a shard's recent samples",
    ("shard",),
)  # fmt: skip
TWINS_RESIDENT = MetricSpec("bms_twins_resident", MetricKind.GAUGE, "Twins a shard hosts", ("shard",))
SCORING_LATENCY = MetricSpec(
    "bms_scoring_latency_seconds", MetricKind.HISTOGRAM,
    "Time of one model's step in a shard's scoring tick (inputs, model call, write-back)",
    ("model",), (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)  # fmt: skip
SCORING_ERRORS = MetricSpec(
    "bms_scoring_errors_total", MetricKind.COUNTER,
    "Scoring steps that failed (model not deployed, call failed), by model", ("model",),
)  # fmt: skip
PLANNER_QUEUE = MetricSpec("bms_planner_queue_jobs", MetricKind.GAUGE, "Open jobs in the planner's queue")
PLAN_VALUE = MetricSpec(
    "bms_plan_value_eur", MetricKind.GAUGE,
    "Job value of the latest plan: routed (outcome=collected) or left out (outcome=dropped)",
    ("outcome",),
)  # fmt: skip
PLAN_DISTANCE = MetricSpec(
    "bms_plan_distance_meters", MetricKind.GAUGE, "Driving distance of the latest plan, all technicians"
)
PLAN_SOLVE = MetricSpec("bms_plan_solve_seconds", MetricKind.GAUGE, "Solver time of the latest plan")
PLANS = MetricSpec(
    "bms_plans_total", MetricKind.COUNTER,
    "Planning rounds, by reason (scheduled, urgent, manual, other)", ("reason",),
)  # fmt: skip
ALERTS = MetricSpec("bms_alerts", MetricKind.GAUGE, "Alerts by state and severity", ("state", "severity"))
WEBHOOK_DELIVERIES = MetricSpec(
    "bms_webhook_deliveries_total", MetricKind.COUNTER,
    "Webhook deliveries by outcome (succeeded, failed, retried, disabled)", ("outcome",),
)  # fmt: skip
#: Recorded by :class:`runtime.model_deployments.ModelServer` (per model version and feature).
MODEL_FEATURE_PSI = MetricSpec(
    "bms_model_feature_psi", MetricKind.GAUGE,
    "Population stability index of a model input against its training data",
    ("model", "version", "feature"),
)  # fmt: skip

#: Every metric of the system, in the order of the table above.
METRICS: tuple[MetricSpec, ...] = (
    INGEST_SAMPLES, TELEMETRY_REJECTS, FRESHNESS_P50, FRESHNESS_P99, TWINS_RESIDENT,
    SCORING_LATENCY, SCORING_ERRORS, PLANNER_QUEUE, PLAN_VALUE, PLAN_DISTANCE, PLAN_SOLVE, PLANS,
    ALERTS, WEBHOOK_DELIVERIES, MODEL_FEATURE_PSI,
)  # fmt: skip
#: The outcomes :class:`WebhookMetrics` takes.
WEBHOOK_OUTCOMES = ("succeeded", "failed", "retried", "disabled")
_PLAN_REASONS = ("scheduled", "urgent", "follow-up", "manual")


def _tags(spec: MetricSpec, tags: Mapping[str, str]) -> dict[str, str]:
    """``tags`` checked against the metric's tag keys (Ray drops a record it refuses, in
    another process's log; failing here shows the mistake in a unit test)."""
    if set(tags) != set(spec.tag_keys):
        raise ValueError(f"Expected tags {sorted(spec.tag_keys)} for {spec.name}, got {sorted(tags)}.")
    bad = {k: v for k, v in tags.items() if not isinstance(v, str)}
    if bad:
        raise TypeError(f"Expected str tag values for {spec.name}, got {bad!r}.")
    return dict(tags)


def _check_kind(spec: MetricSpec, kind: MetricKind) -> None:
    if spec.kind is not kind:
        raise TypeError(f"{spec.name} is a {spec.kind}; a {kind} operation was asked of it.")


class Recorder(Protocol):
    """Where metric values go: Ray (:class:`RayRecorder`) or memory (:class:`MemoryRecorder`)."""

    def inc(self, spec: MetricSpec, value: float, tags: Mapping[str, str]) -> None:
        """Add ``value`` (> 0) to a counter."""
        ...

    def set(self, spec: MetricSpec, value: float, tags: Mapping[str, str]) -> None:
        """Set a gauge."""
        ...

    def observe(self, spec: MetricSpec, value: float, tags: Mapping[str, str]) -> None:
        """Add one observation to a histogram."""
        ...


class RayRecorder:
    """Records through :mod:`ray.util.metrics`.

    Each Ray metric object is made on first use, in the process that records it: a metric
    belongs to the worker that creates it, and a process that only imports this module
    (the driver, unit tests) makes none. Values pass through ``float``: Ray refuses numpy
    integers (``np.int64`` is no ``int``), which the domain's stats may hold.
    """

    def __init__(self) -> None:
        self._metrics: dict[str, ray_metrics.Metric] = {}

    def _metric(self, spec: MetricSpec) -> ray_metrics.Metric:
        m = self._metrics.get(spec.name)
        if m is None:
            if spec.kind is MetricKind.COUNTER:
                m = ray_metrics.Counter(spec.name, spec.description, spec.tag_keys)
            elif spec.kind is MetricKind.GAUGE:
                m = ray_metrics.Gauge(spec.name, spec.description, spec.tag_keys)
            else:
                m = ray_metrics.Histogram(spec.name, spec.description, list(spec.boundaries), spec.tag_keys)
            self._metrics[spec.name] = m
        return m

    def inc(self, spec: MetricSpec, value: float, tags: Mapping[str, str]) -> None:
        _check_kind(spec, MetricKind.COUNTER)
        self._metric(spec).inc(float(value), tags=_tags(spec, tags))  # type: ignore[attr-defined]

    def set(self, spec: MetricSpec, value: float, tags: Mapping[str, str]) -> None:
        _check_kind(spec, MetricKind.GAUGE)
        self._metric(spec).set(float(value), tags=_tags(spec, tags))  # type: ignore[attr-defined]

    def observe(self, spec: MetricSpec, value: float, tags: Mapping[str, str]) -> None:
        _check_kind(spec, MetricKind.HISTOGRAM)
        self._metric(spec).observe(float(value), tags=_tags(spec, tags))  # type: ignore[attr-defined]


_TagKey = tuple[tuple[str, str], ...]


@dataclass
class MemoryRecorder:
    """A :class:`Recorder` that keeps values in dictionaries: the test seam of the exporters.

    It checks tags and kinds as :class:`RayRecorder` does. Read values back with
    :meth:`value` (counters and gauges) and :meth:`observations` (histograms).
    """

    values: dict[tuple[str, _TagKey], float] = field(default_factory=dict)
    histograms: dict[tuple[str, _TagKey], list[float]] = field(default_factory=dict)

    @staticmethod
    def _key(spec: MetricSpec, tags: Mapping[str, str]) -> tuple[str, _TagKey]:
        return spec.name, tuple(sorted(_tags(spec, tags).items()))

    def inc(self, spec: MetricSpec, value: float, tags: Mapping[str, str]) -> None:
        _check_kind(spec, MetricKind.COUNTER)
        if not value > 0:
            raise ValueError(f"Expected a counter increment > 0 for {spec.name}, got {value}.")
        key = self._key(spec, tags)
        self.values[key] = self.values.get(key, 0.0) + value

    def set(self, spec: MetricSpec, value: float, tags: Mapping[str, str]) -> None:
        _check_kind(spec, MetricKind.GAUGE)
        self.values[self._key(spec, tags)] = float(value)

    def observe(self, spec: MetricSpec, value: float, tags: Mapping[str, str]) -> None:
        _check_kind(spec, MetricKind.HISTOGRAM)
        self.histograms.setdefault(self._key(spec, tags), []).append(float(value))

    def value(self, spec: MetricSpec, **tags: str) -> float | None:
        """A counter's total or a gauge's value for these tags; ``None`` if never recorded."""
        return self.values.get(self._key(spec, tags))

    def observations(self, spec: MetricSpec, **tags: str) -> list[float]:
        """A histogram's observations for these tags, in order."""
        return list(self.histograms.get(self._key(spec, tags), []))


_DEFAULT: RayRecorder | None = None


def _default_recorder() -> RayRecorder:
    """One :class:`RayRecorder` per process, shared by every exporter in it."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = RayRecorder()
    return _DEFAULT


class _Exporter:
    """Base of the exporters: a recorder, and cumulative counts turned into increments."""

    def __init__(self, recorder: Recorder | None = None) -> None:
        self.recorder: Recorder = recorder if recorder is not None else _default_recorder()
        self._totals: dict[Hashable, float] = {}

    def _count_up(self, spec: MetricSpec, total: float, tags: Mapping[str, str]) -> None:
        """Add to the counter what ``total`` (a cumulative count) grew by since the last call.

        A total lower than the last one means its source started over (a restarted
        worker): all of it is new.
        """
        key = (spec.name, tuple(sorted(tags.items())))
        last = self._totals.get(key, 0.0)
        self._totals[key] = total
        delta = total - last if total >= last else total
        if delta > 0:
            self.recorder.inc(spec, delta, tags)


class BridgeMetrics(_Exporter):
    """Ingest and rejects from one MQTT bridge worker's :class:`~serve.mqtt_bridge.BridgeStats`."""

    def update(self, stats: BridgeStats) -> None:
        """Record what the worker's cumulative counters grew by since the last update."""
        self._count_up(INGEST_SAMPLES, stats.accepted_samples, {})
        rejects = dict(stats.rejected_by_reason)
        if stats.failed_messages:
            # Dead-lettered too, but counted apart by the bridge (valid, yet never routed).
            rejects[_ROUTING_FAILED] = rejects.get(_ROUTING_FAILED, 0) + stats.failed_messages
        for reason, n in rejects.items():
            self._count_up(TELEMETRY_REJECTS, n, {"reason": reason})


class ShardMetrics(_Exporter):
    """Twins resident and freshness from one shard's :class:`~twins.shard.ShardStats`."""

    def update(self, stats: ShardStats) -> None:
        """Set the shard's gauges (freshness only once the shard has applied samples)."""
        tags = {"shard": str(stats.shard_id)}
        self.recorder.set(TWINS_RESIDENT, stats.twins, tags)
        if stats.freshness_p50_s is not None:
            self.recorder.set(FRESHNESS_P50, stats.freshness_p50_s, tags)
        if stats.freshness_p99_s is not None:
            self.recorder.set(FRESHNESS_P99, stats.freshness_p99_s, tags)


class ScoringMetrics(_Exporter):
    """Per-model latency and errors from each :class:`~twins.scoring.ScoreReport` (one per tick)."""

    def observe(self, report: ScoreReport) -> None:
        """Record one tick: each model step that ran (rows sent, or failed) and each failure.

        A step with nothing to send (no twin due an LSTM step) made no call: its near-zero
        time would only drag the latency quantiles down.
        """
        for model, seconds in report.model_seconds.items():
            if report.rows.get(model) or model in report.errors:
                self.recorder.observe(SCORING_LATENCY, seconds, {"model": model})
        for model in report.errors:
            self.recorder.inc(SCORING_ERRORS, 1, {"model": model})


class PlannerMetrics(_Exporter):
    """Queue length and the latest plan from the planner (its queue and
    :class:`~planners.planner.PlanRecord` history)."""

    def __init__(self, recorder: Recorder | None = None) -> None:
        super().__init__(recorder)
        self._last_plan_id = 0

    def update(self, queue_jobs: int, plans: Iterable[PlanRecord]) -> None:
        """Set the queue gauge; count the plans not seen yet and show the newest one.

        ``plans`` is the planner's recent history (oldest first or not): each plan counts
        once, by its reason (``manual (who)`` counts as ``manual``; reasons outside
        scheduled, urgent and manual as ``other``, so free text cannot grow the tags).
        """
        self.recorder.set(PLANNER_QUEUE, queue_jobs, {})
        new = sorted((p for p in plans if p.plan_id > self._last_plan_id), key=lambda p: p.plan_id)
        for p in new:
            reason = p.reason.split(" ", 1)[0]
            self.recorder.inc(PLANS, 1, {"reason": reason if reason in _PLAN_REASONS else "other"})
        if new:
            latest = new[-1]
            self._last_plan_id = latest.plan_id
            self.recorder.set(PLAN_VALUE, latest.value_collected, {"outcome": "collected"})
            self.recorder.set(PLAN_VALUE, latest.value_dropped, {"outcome": "dropped"})
            self.recorder.set(PLAN_DISTANCE, latest.distance_m, {})
            self.recorder.set(PLAN_SOLVE, latest.solve_time_s, {})


class AlertMetrics(_Exporter):
    """Alerts by state and severity, for the alert actor to call with its current counts.

    Example: ``metrics = AlertMetrics()`` once in the actor, then every few seconds
    ``metrics.update({("firing", "critical"): 2, ("acknowledged", "warning"): 1})``.
    """

    def __init__(self, recorder: Recorder | None = None) -> None:
        super().__init__(recorder)
        self._seen: set[tuple[str, str]] = set()

    def update(self, counts: Mapping[tuple[str, str], int]) -> None:
        """Set ``bms_alerts{state, severity}`` to the number of alerts in each pair now.

        ``counts`` holds the current number per ``(state, severity)``; a pair reported
        before and missing now is set to 0, so a resolved alert does not linger on the chart.
        """
        for state, severity in self._seen - counts.keys():
            self.recorder.set(ALERTS, 0, {"state": state, "severity": severity})
        for (state, severity), n in counts.items():
            if n < 0:
                raise ValueError(f"Expected alert counts >= 0, got {n} for ({state!r}, {severity!r}).")
            self.recorder.set(ALERTS, n, {"state": state, "severity": severity})
        self._seen |= set(counts)


class WebhookMetrics(_Exporter):
    """Webhook deliveries by outcome, from the deliverer's cumulative counts.

    Example: ``metrics = WebhookMetrics()`` once, then every few seconds
    ``metrics.update({"succeeded": 120, "failed": 3, "retried": 7, "disabled": 1})`` with
    the totals since the deliverer started; the counter grows by the difference.
    """

    def update(self, stats: Mapping[str, int]) -> None:
        """Count up ``bms_webhook_deliveries_total{outcome}`` by what each total grew.

        Outcomes are those of :data:`WEBHOOK_OUTCOMES`; a missing one has not changed, a
        total lower than the last one means the deliverer started over.
        """
        unknown = sorted(set(stats) - set(WEBHOOK_OUTCOMES))
        if unknown:
            raise ValueError(f"Expected webhook outcomes among {list(WEBHOOK_OUTCOMES)}, got {unknown}.")
        for outcome, total in stats.items():
            self._count_up(WEBHOOK_DELIVERIES, total, {"outcome": outcome})


async def export_every(period_s: float, update: Callable[[], Awaitable[None]], what: str) -> None:
    """Run ``update`` now and then every ``period_s`` until cancelled (an actor's metrics loop).

    A failed update is logged and the loop goes on: metrics must never take an actor down.
    """
    while True:
        try:
            await update()
        except Exception:
            log.exception("exporting the metrics of %s failed", what)
        await asyncio.sleep(period_s)


def prometheus_url() -> str | None:
    """The Prometheus endpoint of the Ray node this process runs on, or ``None`` when that
    node collects no metrics. Needs Ray to be initialised.

    Ray's metrics agent picks the port (``MetricsExportPort``, a free one unless the node was
    started with ``--metrics-export-port``) and listens on every interface, or on the
    loopback only when the node's address is the loopback: 127.0.0.1 reaches it either way.
    """
    node_id = ray.get_runtime_context().get_node_id()
    for node in ray.nodes():  # type: ignore[no-untyped-call]  # ray: unannotated
        if node.get("NodeID") == node_id:
            port = node.get("MetricsExportPort")
            return f"http://127.0.0.1:{port}/metrics" if isinstance(port, int) and port > 0 else None
    return None

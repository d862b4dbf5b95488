"""The metrics (:mod:`runtime.metrics`): their names, the exporters' arithmetic and the Grafana
dashboard that charts them. No Ray: the exporters record into a :class:`MemoryRecorder`."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from contracts.samples import TelemetryBatch
from planners.planner import PlanRecord
from runtime.metrics import (
    ALERTS,
    FRESHNESS_P50,
    FRESHNESS_P99,
    INGEST_SAMPLES,
    METRICS,
    MODEL_FEATURE_PSI,
    PLAN_DISTANCE,
    PLAN_SOLVE,
    PLAN_VALUE,
    PLANNER_QUEUE,
    PLANS,
    SCORING_ERRORS,
    SCORING_LATENCY,
    TELEMETRY_REJECTS,
    TWINS_RESIDENT,
    WEBHOOK_DELIVERIES,
    AlertMetrics,
    BridgeMetrics,
    MemoryRecorder,
    MetricKind,
    MetricSpec,
    PlannerMetrics,
    RayRecorder,
    ScoringMetrics,
    ShardMetrics,
    WebhookMetrics,
    export_every,
)
from serve.mqtt_bridge import ROUTING_FAILED, BridgeStats
from twins.clock import ManualClock
from twins.scoring import MemoryDemand, ScoreReport, TwinScorer
from twins.shard import ShardStats
from twins.twin_table import TwinTable

ROOT = Path(__file__).resolve().parents[3]
DASHBOARD = ROOT / "docs" / "grafana-bms.json"
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


# ---------------------------------------------------------------------------- helpers
def _bridge(accepted: int, by_reason: Mapping[str, int] | None = None, failed: int = 0) -> BridgeStats:
    rejected = dict(by_reason or {})
    return BridgeStats(
        received_messages=0, accepted_messages=0, accepted_samples=accepted, applied_samples=accepted,
        late_samples=0, duplicate_samples=0, duplicate_messages=0, rejected_messages=sum(rejected.values()),
        rejected_by_reason=rejected, batches=0, inflight_batches=0, connected=True, reconnects=0,
        failed_batches=1 if failed else 0, failed_messages=failed,
    )  # fmt: skip


def _shard(shard_id: int, twins: int, p50: float | None, p99: float | None) -> ShardStats:
    return ShardStats(
        shard_id=shard_id, twins=twins, messages=0, accepted_samples=0, applied_samples=0, late_samples=0,
        duplicate_messages=0, vehicle_changes=0, freshness_p50_s=p50, freshness_p99_s=p99,
        freshness_count=0 if p50 is None else 10, last_apply_at_s=None, checkpoints=0,
        restored_from_checkpoint=False, replayed_samples=0,
    )  # fmt: skip


def _plan(plan_id: int, reason: str, collected: float = 10.0, dropped: float = 2.0, distance_m: int = 1500,
          solve_s: float = 0.5) -> PlanRecord:  # fmt: skip
    return PlanRecord(plan_id, reason, 1.8e9, (), (), 3, collected, dropped, distance_m, solve_s, False)


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel that is not a row, including those inside collapsed rows."""
    out: list[dict[str, Any]] = []
    for p in dashboard["panels"]:
        if p["type"] == "row":
            out.extend(p.get("panels", []))
        else:
            out.append(p)
    return out


def _metric_names(expr: str) -> set[str]:
    """The identifiers in a PromQL expression that name one of ours (contain ``bms_``)."""
    return {name for name in _IDENT.findall(expr) if "bms_" in name}


# ---------------------------------------------------------------------------- the specs
def test_every_metric_is_named_bms_with_its_unit_and_exported_with_ray_prefix() -> None:
    """Names are unique, start with bms_, counters end in _total, and Prometheus sees ray_bms_..."""
    names = [m.name for m in METRICS]
    assert len(names) == len(set(names))
    for m in METRICS:
        assert m.name.startswith("bms_")
        assert m.exported_name == f"ray_{m.name}"
        assert m.name.endswith("_total") == (m.kind is MetricKind.COUNTER)
    assert SCORING_LATENCY.series == (
        "ray_bms_scoring_latency_seconds_bucket", "ray_bms_scoring_latency_seconds_sum",
        "ray_bms_scoring_latency_seconds_count",
    )  # fmt: skip
    assert INGEST_SAMPLES.series == ("ray_bms_ingest_samples_total",)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "ingest_total", "kind": MetricKind.COUNTER}, "bms_<what>_<unit>"),
        ({"name": "bms_ingest", "kind": MetricKind.COUNTER}, "'_total'"),
        ({"name": "bms_x_total", "kind": MetricKind.GAUGE}, "'_total'"),
        ({"name": "bms_x_seconds", "kind": MetricKind.HISTOGRAM}, "increasing positive boundaries"),
        ({"name": "bms_x_seconds", "kind": MetricKind.HISTOGRAM, "boundaries": (1.0, 0.5)}, "got \\(1.0, 0.5\\)"),
        ({"name": "bms_x_seconds", "kind": MetricKind.GAUGE, "boundaries": (1.0,)}, "Expected no boundaries"),
    ],
)
def test_a_malformed_spec_is_refused(kwargs: dict[str, Any], message: str) -> None:
    """A metric spec checks its name, its kind's suffix and its buckets, quoting what came."""
    with pytest.raises(ValueError, match=message):
        MetricSpec(description="x", **kwargs)


def test_recorders_check_tags_and_kinds() -> None:
    """Missing or extra tags and the wrong operation for a kind fail where they are made."""
    rec = MemoryRecorder()
    with pytest.raises(ValueError, match=r"Expected tags \['reason'\]"):
        rec.inc(TELEMETRY_REJECTS, 1, {})
    with pytest.raises(ValueError, match="Expected tags"):
        rec.set(TWINS_RESIDENT, 1, {"shard": "0", "extra": "x"})
    with pytest.raises(TypeError, match="str tag values"):
        rec.set(TWINS_RESIDENT, 1, {"shard": 0})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="is a counter"):
        rec.set(INGEST_SAMPLES, 1, {})
    with pytest.raises(ValueError, match="> 0"):
        rec.inc(INGEST_SAMPLES, 0, {})
    # The Ray recorder checks the same before it touches Ray (no metric object is made).
    with pytest.raises(TypeError, match="is a gauge"):
        RayRecorder().observe(TWINS_RESIDENT, 1.0, {"shard": "0"})


def test_model_deployments_record_the_declared_psi_metric() -> None:
    """The drift gauge the model deployments record is the one declared here."""
    source = (ROOT / "runtime" / "model_deployments.py").read_text()
    assert MODEL_FEATURE_PSI.name in source or "MODEL_FEATURE_PSI" in source
    assert MODEL_FEATURE_PSI.tag_keys == ("model", "version", "feature")


def test_importing_the_metrics_loads_no_mqtt_client_or_planner() -> None:
    """A twin shard imports runtime.metrics: the domain types it names stay unloaded."""
    probe = "import runtime.metrics, sys; print(sorted({m.split('.')[0] for m in sys.modules}))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    loaded = set(out.stdout.strip().splitlines()[-1].strip("[]").replace("'", "").split(", "))
    assert not loaded & {"aiomqtt", "paho", "ortools", "planners", "serve", "torch"}


# ---------------------------------------------------------------------------- exporters
def test_bridge_counts_become_increments() -> None:
    """Cumulative bridge counters add only their growth; routing failures count as a reason."""
    rec = MemoryRecorder()
    m = BridgeMetrics(rec)
    m.update(_bridge(100, {"invalid_json": 2}))
    m.update(_bridge(100, {"invalid_json": 2}))  # nothing new
    m.update(_bridge(250, {"invalid_json": 3, "seq_out_of_range": 1}, failed=4))
    assert rec.value(INGEST_SAMPLES) == 250
    assert rec.value(TELEMETRY_REJECTS, reason="invalid_json") == 3
    assert rec.value(TELEMETRY_REJECTS, reason="seq_out_of_range") == 1
    assert rec.value(TELEMETRY_REJECTS, reason=ROUTING_FAILED) == 4


def test_a_restarted_bridge_counts_from_zero_again() -> None:
    """A total lower than the last one is a fresh start: all of it is new."""
    rec = MemoryRecorder()
    m = BridgeMetrics(rec)
    m.update(_bridge(500))
    m.update(_bridge(40))
    assert rec.value(INGEST_SAMPLES) == 540


def test_shard_gauges_wait_for_freshness() -> None:
    """Twins resident is set at once; freshness only once the shard has applied samples."""
    rec = MemoryRecorder()
    m = ShardMetrics(rec)
    m.update(_shard(3, 0, None, None))
    assert rec.value(TWINS_RESIDENT, shard="3") == 0
    assert rec.value(FRESHNESS_P50, shard="3") is None
    m.update(_shard(3, 42, 0.4, 1.9))
    assert rec.value(TWINS_RESIDENT, shard="3") == 42
    assert (rec.value(FRESHNESS_P50, shard="3"), rec.value(FRESHNESS_P99, shard="3")) == (0.4, 1.9)


def test_scoring_latency_per_model_skips_steps_that_called_nothing() -> None:
    """Each model step that sent rows or failed is observed; a step with nothing due is not;
    failures count per model."""
    rec = MemoryRecorder()
    m = ScoringMetrics(rec)
    report = ScoreReport(
        twins=10, rows={"health": 10, "degradation": 0, "priority": 10}, errors={"anomaly": "RuntimeError: down"},
        model_seconds={"health": 0.02, "anomaly": 1.5, "degradation": 0.0001, "priority": 0.03},
    )  # fmt: skip
    m.observe(report)
    m.observe(report)
    assert rec.observations(SCORING_LATENCY, model="health") == [0.02, 0.02]
    assert rec.observations(SCORING_LATENCY, model="anomaly") == [1.5, 1.5]
    assert rec.observations(SCORING_LATENCY, model="degradation") == []
    assert rec.value(SCORING_ERRORS, model="anomaly") == 2
    assert rec.value(SCORING_ERRORS, model="health") is None


def test_planner_counts_each_plan_once_and_shows_the_newest() -> None:
    """Plans are counted once by normalised reason; the gauges show the newest plan."""
    rec = MemoryRecorder()
    m = PlannerMetrics(rec)
    m.update(0, [])
    assert rec.value(PLANNER_QUEUE) == 0 and rec.value(PLAN_DISTANCE) is None
    plans = [_plan(1, "scheduled"), _plan(2, "manual (it-manager)", collected=30.0, dropped=5.0, distance_m=9000, solve_s=2.5)]
    m.update(7, plans)
    m.update(7, plans)  # the same history again: nothing new
    assert rec.value(PLANNER_QUEUE) == 7
    assert rec.value(PLANS, reason="scheduled") == 1 and rec.value(PLANS, reason="manual") == 1
    assert rec.value(PLAN_VALUE, outcome="collected") == 30.0 and rec.value(PLAN_VALUE, outcome="dropped") == 5.0
    assert rec.value(PLAN_DISTANCE) == 9000 and rec.value(PLAN_SOLVE) == 2.5
    m.update(5, [*plans, _plan(3, "urgent"), _plan(4, "whatever the API said")])
    assert rec.value(PLANS, reason="urgent") == 1 and rec.value(PLANS, reason="other") == 1
    assert rec.value(PLAN_DISTANCE) == 1500


def test_alerts_set_current_counts_and_zero_pairs_that_went_away() -> None:
    """AlertMetrics.update sets each (state, severity) and zeroes pairs no longer reported."""
    rec = MemoryRecorder()
    m = AlertMetrics(rec)
    m.update({("firing", "critical"): 2, ("firing", "warning"): 1})
    m.update({("acknowledged", "critical"): 2})
    assert rec.value(ALERTS, state="firing", severity="critical") == 0
    assert rec.value(ALERTS, state="firing", severity="warning") == 0
    assert rec.value(ALERTS, state="acknowledged", severity="critical") == 2
    with pytest.raises(ValueError, match="got -1"):
        m.update({("firing", "critical"): -1})


def test_webhook_totals_become_increments_per_outcome() -> None:
    """WebhookMetrics.update turns cumulative totals into counter growth, restarts included."""
    rec = MemoryRecorder()
    m = WebhookMetrics(rec)
    m.update({"succeeded": 10, "failed": 1})
    m.update({"succeeded": 15, "failed": 1, "retried": 3, "disabled": 1})
    m.update({"succeeded": 2})  # the deliverer restarted
    assert rec.value(WEBHOOK_DELIVERIES, outcome="succeeded") == 17
    assert rec.value(WEBHOOK_DELIVERIES, outcome="failed") == 1
    assert rec.value(WEBHOOK_DELIVERIES, outcome="retried") == 3
    assert rec.value(WEBHOOK_DELIVERIES, outcome="disabled") == 1
    with pytest.raises(ValueError, match=r"got \['bounced'\]"):
        m.update({"bounced": 1})


async def test_export_loop_survives_a_failed_update(caplog: pytest.LogCaptureFixture) -> None:
    """The export loop runs at once and then periodically; an exception is logged, not fatal."""
    calls = 0

    async def update() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("stats unavailable")

    task = asyncio.get_running_loop().create_task(export_every(0.001, update, "a test actor"))
    for _ in range(200):
        if calls >= 3:
            break
        await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert calls >= 3
    assert "exporting the metrics of a test actor failed" in caplog.text


async def test_score_report_times_each_model_step(fleet_telemetry: list[TelemetryBatch]) -> None:
    """The scoring tick reports each model step's time, failed steps included."""
    clock = ManualClock(float(max(b.columns["ts"].max() for b in fleet_telemetry)))
    table = TwinTable(clock=clock)
    for b in fleet_telemetry[:20]:
        table.apply(b)

    class SlowDownModels:
        async def call(self, model: str, ids: list[str], arrays: Mapping[str, npt.NDArray[Any]]) -> dict[str, Any]:
            clock.advance(0.25)
            raise RuntimeError(f"{model} is down")

    report = await TwinScorer(SlowDownModels(), MemoryDemand(), clock=clock).score(table)
    assert set(report.errors) >= {"health", "anomaly", "priority"}
    for model in report.errors:
        assert report.model_seconds[model] == pytest.approx(0.25)
    assert set(report.model_seconds) == {"health", "anomaly", "degradation", "priority"}
    assert np.isfinite(report.seconds)


# ---------------------------------------------------------------------------- Grafana
def test_dashboard_is_grafana_json_with_a_prometheus_datasource_variable() -> None:
    """The dashboard parses, uses one ${datasource} variable for every query, and its panels
    have unique ids and fit the 24-column grid."""
    d = _dashboard()
    assert d["schemaVersion"] >= 36 and d["uid"] and d["title"]
    (var,) = [v for v in d["templating"]["list"] if v["name"] == "datasource"]
    assert var["type"] == "datasource" and var["query"] == "prometheus"
    ids = [p["id"] for p in d["panels"]] + [q["id"] for r in d["panels"] for q in r.get("panels", [])]
    assert len(ids) == len(set(ids))
    for p in _panels(d):
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert p["targets"], p["title"]
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}" and t["expr"].strip(), p["title"]


def test_dashboard_queries_only_metrics_that_exist_and_charts_them_all() -> None:
    """Every expression names only series of runtime.metrics, and every metric has a panel."""
    series = {s: m for m in METRICS for s in m.series}
    charted: set[str] = set()
    for p in _panels(_dashboard()):
        for t in p["targets"]:
            names = _metric_names(t["expr"])
            assert names, f"panel {p['title']!r} queries none of our metrics: {t['expr']}"
            unknown = names - set(series)
            assert not unknown, f"panel {p['title']!r} queries unknown metrics {sorted(unknown)}"
            charted |= {series[n].name for n in names}
    assert charted == {m.name for m in METRICS}, sorted({m.name for m in METRICS} - charted)


def test_dashboard_rates_counters_and_quantiles_histograms() -> None:
    """Counters are charted as rate()/increase() and the latency histogram through
    histogram_quantile, never as raw values."""
    exprs = [t["expr"] for p in _panels(_dashboard()) for t in p["targets"]]
    for m in METRICS:
        uses = [e for e in exprs if set(m.series) & _metric_names(e)]
        if m.kind is MetricKind.COUNTER:
            assert all(re.search(r"\b(rate|increase)\(", e) for e in uses), (m.name, uses)
    latency = [e for e in exprs if SCORING_LATENCY.series[0] in e]
    assert any("histogram_quantile(0.5" in e for e in latency)
    assert any("histogram_quantile(0.99" in e for e in latency)
    assert all("by (model, le)" in e for e in latency)

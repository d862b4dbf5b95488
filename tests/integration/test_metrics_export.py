"""The system's metrics on Ray's Prometheus endpoint, scraped like Prometheus would.

Telemetry goes through the broker into the running system; the bridge, shard and planner
actors export their stats through Ray's metrics API (``runtime.metrics``), and the node's
metrics agent serves them, a few seconds later, on the endpoint :func:`prometheus_url` names.
"""

from __future__ import annotations

import re
import time
import urllib.request
from dataclasses import dataclass
from typing import Any

import pytest

from runtime.metrics import (
    INGEST_SAMPLES,
    PLANNER_QUEUE,
    SCORING_LATENCY,
    TELEMETRY_REJECTS,
    TWINS_RESIDENT,
    prometheus_url,
)

from .conftest import ServiceHandles
from .test_system import _ids, _message, _publish, _sample

pytestmark = pytest.mark.integration

#: Ray exports every few seconds and the actors every EXPORT_INTERVAL_S; the first scoring
#: tick also waits for the model replicas to load.
_DEADLINE_S = 90.0
_LINE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class Sample:
    """One line of the Prometheus text format."""

    name: str
    labels: dict[str, str]
    value: float


def _scrape(url: str) -> list[Sample]:
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    out = []
    for line in text.splitlines():
        m = _LINE.match(line)
        if m and not line.startswith("#"):
            out.append(Sample(m[1], dict(_LABEL.findall(m[2] or "")), float(m[3])))
    return out


def _wait_for(url: str, wanted: dict[str, Any]) -> list[Sample]:
    """Scrape until every check in ``wanted`` (what → predicate over the samples) holds."""
    deadline = time.time() + _DEADLINE_S
    missing: list[str] = list(wanted)
    while time.time() < deadline:
        samples = _scrape(url)
        missing = [what for what, ok in wanted.items() if not ok(samples)]
        if not missing:
            return samples
        time.sleep(1.0)
    raise AssertionError(f"After {_DEADLINE_S:.0f} s, {url} still lacks: {missing}")


def test_metrics_endpoint_serves_ingest_scoring_shard_and_planner_metrics(
    fleet_system: Any, services: ServiceHandles
) -> None:
    """After telemetry flows, the node's Prometheus endpoint has the ingest counter (> 0), a
    reject counter by reason, the scoring latency histogram per model, twins per shard and
    the planner's queue length."""
    url = prometheus_url()
    assert url is not None, "the Ray node collects no metrics"
    now = time.time()
    msgs = []
    for k in range(3):
        vehicle, battery = _ids(services, f"m{k}")
        msgs += [
            (f"fleet/{vehicle}/telemetry",
             _message(vehicle, battery, seq, [_sample(now - 20 + seq * 5 + i, soc=70 - seq) for i in range(5)]))
            for seq in range(3)
        ]  # fmt: skip
    bad_vehicle, _ = _ids(services, "mbad")
    msgs.append((f"fleet/{bad_vehicle}/telemetry", b"{not json"))
    _publish(services, msgs)

    (ingest,) = INGEST_SAMPLES.series
    (rejects,) = TELEMETRY_REJECTS.series
    bucket = SCORING_LATENCY.series[0]
    (twins,) = TWINS_RESIDENT.series
    (queue,) = PLANNER_QUEUE.series
    samples = _wait_for(url, {
        f"{ingest} > 0": lambda ss: sum(s.value for s in ss if s.name == ingest) >= 45,
        # This message's own reason: other tests' rejects (another reason) may be exported
        # before the bridge's next export carries this one.
        f"{rejects} for malformed_json": lambda ss: any(
            s.name == rejects and s.labels.get("reason") == "malformed_json" for s in ss
        ),
        f"{bucket} with a model tag": lambda ss: any(
            s.name == bucket and s.labels.get("model") == "health" and s.value > 0 for s in ss
        ),
        f"{twins} per shard": lambda ss: any(s.name == twins and "shard" in s.labels and s.value > 0 for s in ss),
        queue: lambda ss: any(s.name == queue for s in ss),
    })  # fmt: skip
    # The histogram comes whole: buckets up to +Inf, a count and a sum, per model.
    health = [s for s in samples if s.name.startswith(SCORING_LATENCY.exported_name) and s.labels.get("model") == "health"]
    names = {s.name for s in health}
    assert names >= set(SCORING_LATENCY.series)
    assert {s.labels["le"] for s in health if s.name == bucket} >= {"+Inf", str(SCORING_LATENCY.boundaries[0])}
    rejected = {s.labels["reason"] for s in samples if s.name == rejects}
    assert "malformed_json" in rejected

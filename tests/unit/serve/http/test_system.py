"""Tests for :mod:`serve.http.system`: liveness, shard and bridge counters, dead letters."""

from __future__ import annotations

import dataclasses

from fastapi.testclient import TestClient

from serve.http.system import BridgeStatsOut, ShardStatsOut
from serve.mqtt_bridge import BridgeStats
from twins.shard import ShardStats

from .conftest import Fakes
from .fakes import shard_stats


def test_the_counter_models_list_every_counter() -> None:
    """ShardStatsOut and BridgeStatsOut have exactly the fields of the counters they show
    (plus the worker name), so a new counter fails here rather than as a 500."""
    assert set(ShardStatsOut.model_fields) == {f.name for f in dataclasses.fields(ShardStats)}
    assert set(BridgeStatsOut.model_fields) == {f.name for f in dataclasses.fields(BridgeStats)} | {"name"}


def test_healthz_pings_every_shard(fakes: Fakes, client: TestClient) -> None:
    """/healthz answers ok with the shard count after every shard answered a ping."""
    assert client.get("/healthz").json() == {"status": "ok", "shards": 1}
    assert fakes.fleet.pings == 1


def test_stats_show_shards_and_bridges_running_or_not(fakes: Fakes, ops_client: TestClient) -> None:
    """Shard counters come per shard (NaN as null); a bridge that is not running is listed
    with an error instead of counters."""
    fakes.fleet.shards = [shard_stats(0), shard_stats(1)]
    body = ops_client.get("/api/v1/system/stats").json()
    assert [s["shard_id"] for s in body["shards"]] == [0, 1]
    assert body["shards"][0]["freshness_p50_s"] is None
    running, stopped = body["bridges"]
    assert running["name"] == "bms-bridge-0" and running["connected"] is True
    assert running["rejected_by_reason"] == {"malformed_json": 1}
    assert stopped == {"name": "bms-bridge-1", "error": "not running"}


def test_dead_letters_show_counts_and_readable_payloads(fakes: Fakes, ops_client: TestClient) -> None:
    """Dead letters answer the counts by reason and the newest letters, their payload bytes
    decoded as UTF-8 with bad bytes replaced; ``limit`` is passed on."""
    fakes.stores.letters.by_reason = {"malformed_json": 2}
    letter = {
        "id": "1-0", "topic": "fleet/v1/telemetry", "reason": "malformed_json",
        "detail": "Expected JSON, got b'{'", "payload": b"{\xff", "payload_bytes": 2,
        "received_at_s": 1.8e9,
    }  # fmt: skip
    fakes.stores.letters.letters = [letter, {**letter, "id": "0-0"}]
    body = ops_client.get("/api/v1/dead-letters", params={"limit": 1}).json()
    assert body["counts"] == {"malformed_json": 2}
    assert [r["id"] for r in body["recent"]] == ["1-0"]
    assert body["recent"][0]["payload"] == "{\ufffd"

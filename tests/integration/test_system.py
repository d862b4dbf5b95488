"""The whole data path on real servers and a real Ray instance.

broker → bridge → shard → twin, history in PostgreSQL, latest state in Redis, reads over
Ray Serve HTTP; bad input dead-lettered; duplicates and reordering; shard restart.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import aiomqtt
import httpx
import orjson
import psycopg
import pytest
import ray
import redis
from psycopg.conninfo import make_conninfo

from bms.settings import Settings
from contracts.access import Role
from sim.publisher import parse_mqtt_url

from .conftest import ServiceHandles, api_client

pytestmark = pytest.mark.integration


def _sample(ts: float, soc: float = 80.0, **over: Any) -> dict[str, Any]:
    s: dict[str, Any] = {
        "ts": ts, "pack_voltage_v": 47.5, "current_a": 6.0, "temp_c": 28.0, "soc_pct": soc,
        "lat": 52.52, "lon": 13.40, "odometer_km": 120.5, "speed_kmh": 16.0,
        "cell_min_v": 3.64, "cell_max_v": 3.67,
    }
    s.update(over)
    return s


def _message(vehicle: str, battery: str, seq: int, samples: list[dict[str, Any]], version: int = 2) -> bytes:
    return orjson.dumps({"schema_version": version, "vehicle_id": vehicle, "battery_id": battery, "seq": seq, "samples": samples})


def _publish(services: ServiceHandles, items: list[tuple[str, bytes]]) -> None:
    host, port = parse_mqtt_url(services.urls.mqtt_url)

    async def go() -> None:
        async with aiomqtt.Client(host, port, identifier=f"test-pub-{uuid.uuid4().hex[:6]}") as c:
            for topic, payload in items:
                await c.publish(topic, payload, qos=1)

    asyncio.run(go())


def _wait(pred: Callable[[], Any], timeout_s: float = 30.0, what: str = "condition") -> Any:
    deadline = time.time() + timeout_s
    last = None
    while time.time() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"Timed out after {timeout_s}s waiting for {what}; last value {last!r}")


@pytest.fixture(scope="module")
def api(fleet_system: Any, system_settings: Settings, api_tokens: dict[Role, str]) -> httpx.Client:
    """A fleet manager's client."""
    with api_client(system_settings, api_tokens[Role.FLEET_MANAGER], 30) as c:
        _wait(lambda: c.get("/healthz").status_code == 200, 60, "the HTTP app")
        yield c


@pytest.fixture(scope="module")
def ops_api(fleet_system: Any, system_settings: Settings, api_tokens: dict[Role, str]) -> httpx.Client:
    """An ops client (dead letters, system stats)."""
    with api_client(system_settings, api_tokens[Role.OPS], 30) as c:
        yield c


def _ids(services: ServiceHandles, tag: str) -> tuple[str, str]:
    u = uuid.uuid4().hex[:6]
    return f"{services.id_prefix}-v{tag}{u}", f"{services.id_prefix}-b{tag}{u}"


def _twin(api: httpx.Client, battery: str, samples: int) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        r = api.get(f"/api/v1/batteries/{battery}")
        if r.status_code == 200 and r.json()["samples_total"] >= samples:
            return r.json()  # type: ignore[no-any-return]
        return None

    return _wait(ready, 30, f"twin {battery} with {samples} samples")  # type: ignore[no-any-return]


def test_telemetry_reaches_twin_history_and_redis(services: ServiceHandles, api: httpx.Client) -> None:
    """Published samples update the twin (read over HTTP), land in PostgreSQL history and
    in the Redis latest-state hash."""
    vehicle, battery = _ids(services, "ok")
    now = time.time()
    msgs = [
        (f"fleet/{vehicle}/telemetry", _message(vehicle, battery, seq, [_sample(now - 30 + seq * 10 + i, soc=80 - seq - 0.1 * i) for i in range(5)]))
        for seq in range(3)
    ]
    _publish(services, msgs)
    twin = _twin(api, battery, 15)
    assert twin["vehicle_id"] == vehicle
    assert twin["soc_pct"] == pytest.approx(80 - 2 - 0.4, abs=1e-3)
    assert twin["pack_voltage_v"] == pytest.approx(47.5, abs=1e-4)
    assert twin["cell_max_v"] == pytest.approx(3.67, abs=1e-4)
    assert twin["lat"] == pytest.approx(52.52)
    assert twin["ah_discharged_ah"] > 0

    # The twin shows samples as soon as they are applied; their COPY commits just after.
    hist = _wait(
        lambda: (h := api.get(f"/api/v1/batteries/{battery}/telemetry", params={"from": now - 60, "to": now + 60}).json())["count"] == 15 and h,
        10, "15 history rows",
    )
    assert hist["columns"]["ts"] == sorted(hist["columns"]["ts"])
    window = api.get(f"/api/v1/batteries/{battery}/window").json()["samples"]
    assert len(window["ts"]) == 15

    r = redis.Redis.from_url(services.urls.redis_url)
    # The latest state is pushed every flush period: wait for the push after the last sample
    # (an earlier push may still show the first message's state).
    def latest() -> Any:
        raw = r.hget(f"{services.redis_prefix}twin_state", battery)
        return raw if raw is not None and abs(orjson.loads(raw)["soc_pct"] - 77.6) < 1e-3 else None

    state = _wait(latest, 10, "redis state after the last sample")
    assert orjson.loads(state)["soc_pct"] == pytest.approx(77.6, abs=1e-3)
    r.close()


def test_duplicate_and_reordered_messages(services: ServiceHandles, api: httpx.Client) -> None:
    """A redelivered (battery, seq) is applied once and stored once; messages reordered
    within a micro-batch are applied in time order; a message older than what the twin
    already holds is kept in history but leaves the time-ordered window alone."""
    vehicle, battery = _ids(services, "dup")
    now = time.time()
    m = [_message(vehicle, battery, k, [_sample(now - 40 + 10 * k), _sample(now - 39 + 10 * k)]) for k in range(4)]
    topic = f"fleet/{vehicle}/telemetry"
    _publish(services, [(topic, m[1]), (topic, m[1])])
    _twin(api, battery, 2)
    _publish(services, [(topic, m[0])])  # older than the twin's newest sample: late
    _publish(services, [(topic, m[3]), (topic, m[2])])  # reversed, one batch or two
    _wait(lambda: api.get(f"/api/v1/batteries/{battery}/telemetry").json()["count"] == 8, 10, "8 history rows")
    # The state comes from the read snapshot, refreshed about every second: wait for the
    # one after the last messages (4 samples, or 6 when m2 came in m3's micro-batch).
    twin = _twin(api, battery, 4)
    window = api.get(f"/api/v1/batteries/{battery}/window").json()["samples"]
    assert window["ts"] == sorted(window["ts"])
    assert now - 40 not in window["ts"]
    # m2 is late only if it arrived in a later micro-batch than m3.
    assert twin["samples_total"] in (4, 6)
    assert window["ts"][-1] == pytest.approx(now - 9)
    hist = api.get(f"/api/v1/batteries/{battery}/telemetry").json()
    assert sorted(hist["columns"]["seq"]) == [0, 0, 1, 1, 2, 2, 3, 3]


def test_previous_schema_version_is_accepted(services: ServiceHandles, api: httpx.Client) -> None:
    """A version-1 message (no cell voltages) is upgraded and applied."""
    vehicle, battery = _ids(services, "v1")
    s = _sample(time.time() - 1)
    del s["cell_min_v"], s["cell_max_v"]
    _publish(services, [(f"fleet/{vehicle}/telemetry", _message(vehicle, battery, 0, [s], version=1))])
    twin = _twin(api, battery, 1)
    assert twin["cell_min_v"] is None


def _dead_letter_counts(api: httpx.Client) -> dict[str, int]:
    return api.get("/api/v1/dead-letters", params={"limit": 1}).json()["counts"]  # type: ignore[no-any-return]


def test_every_bad_input_class_is_dead_lettered(
    services: ServiceHandles, api: httpx.Client, ops_api: httpx.Client
) -> None:
    """Each kind of bad message is rejected with its reason (Postgres row, Redis stream and
    counter), and the bridge keeps working: a good message sent after them is applied."""
    vehicle, battery = _ids(services, "bad")
    now = time.time()
    t = f"fleet/{vehicle}/telemetry"
    good = _sample(now)
    cases: list[tuple[str, str, bytes]] = [
        ("malformed_json", t, b'{"schema_version": 2, "vehicle_id": '),
        ("schema_violation", t, _message(vehicle, battery, 1, [_sample(now, extra_field=1)])),
        ("schema_violation", t, orjson.dumps({"schema_version": 2, "vehicle_id": vehicle, "battery_id": battery, "seq": 1, "samples": [good], "x": 1})),
        ("unknown_version", t, _message(vehicle, battery, 1, [good], version=9)),
        ("out_of_range", t, _message(vehicle, battery, 1, [_sample(now, pack_voltage_v=99.0)])),
        ("out_of_range", t, _message(vehicle, battery, 1, [_sample(now, soc_pct=101.0)])),
        ("out_of_range", t, _message(vehicle, battery, 1, [_sample(now, temp_c=-70.0)])),
        ("non_finite", t, _message(vehicle, battery, 1, [good]).replace(b'"temp_c":28.0', b'"temp_c":NaN')),
        ("non_finite", t, _message(vehicle, battery, 1, [good]).replace(b'"temp_c":28.0', b'"temp_c":1e999')),
        ("future_timestamp", t, _message(vehicle, battery, 1, [_sample(now + 3600)])),
        ("stale_timestamp", t, _message(vehicle, battery, 1, [_sample(now - 30 * 86400)])),
        ("oversized", t, b"{" + b" " * (300 * 1024) + b"}"),
        ("topic_mismatch", "fleet/someone-else/telemetry", _message(vehicle, battery, 1, [good])),
        ("bad_topic", "fleet//telemetry", _message(vehicle, battery, 1, [good])),
    ]
    assert b"NaN" in cases[7][2] and b"1e999" in cases[8][2]
    before = _dead_letter_counts(ops_api)
    _publish(services, [(topic, payload) for _, topic, payload in cases])
    _publish(services, [(t, _message(vehicle, battery, 2, [good]))])
    _twin(api, battery, 1)
    expected: dict[str, int] = {}
    for reason, _, _ in cases:
        expected[reason] = expected.get(reason, 0) + 1

    def counted() -> bool:
        now_counts = _dead_letter_counts(ops_api)
        return all(now_counts.get(k, 0) - before.get(k, 0) >= v for k, v in expected.items())

    _wait(counted, 20, f"dead letters {expected}")
    recent = ops_api.get("/api/v1/dead-letters", params={"limit": 50}).json()["recent"]
    over = next(r for r in recent if r["reason"] == "oversized")
    assert over["payload_bytes"] > 300 * 1024 and len(over["payload"]) <= 4096
    assert any("expected" in r["detail"] or "Input should" in r["detail"] for r in recent)

    def stored() -> tuple[dict[str, int], list[Any]]:
        with psycopg.connect(services.urls.postgres_url, autocommit=True) as conn:
            rows = conn.execute("SELECT reason, count(*) FROM dead_letters WHERE topic = %s GROUP BY reason", (t,)).fetchall()
            everything = conn.execute("SELECT topic, reason, count(*) FROM dead_letters GROUP BY 1, 2").fetchall()
        return dict(rows), everything

    # The store counts a letter in Redis only after its COPY committed. Still poll: the
    # bridge dead-letters whatever arrives on the broker's telemetry topics (other test runs
    # on the same broker publish there too), so those counters can pass the wait above
    # before this test's own letters are in. A table that stays empty fails after 20 s.
    # (Interleaved COPYs once left the bridge's connection in a transaction nothing
    # committed: Redis counted every letter and the table stayed empty.)
    want = {"malformed_json": 1, "out_of_range": 3, "non_finite": 2}
    deadline = time.time() + 20
    got, everything = stored()
    while any(got.get(k, 0) < v for k, v in want.items()) and time.time() < deadline:
        time.sleep(0.5)
        got, everything = stored()
    assert got, f"no dead letters stored for {t}; table holds {everything}"
    assert {k: got.get(k) for k in want} == want, f"stored for {t}: {got}"


def test_http_errors_are_clear(api: httpx.Client) -> None:
    """Unknown battery → 404 naming it; bad filter, bad field and inverted range → 422 in
    FastAPI's validation-error shape (a list of {loc, msg, type}), naming what was expected."""
    r = api.get("/api/v1/batteries/nobody-here")
    assert r.status_code == 404 and "nobody-here" in r.json()["detail"]
    assert api.get("/api/v1/batteries/bad id!").status_code in (404, 422)
    r = api.get("/api/v1/fleet/top", params={"by": "soc_pct", "filter": "soc_pct:lt"})
    assert r.status_code == 422 and "field:op:value" in r.json()["detail"][0]["msg"]
    r = api.get("/api/v1/fleet/top", params={"by": "colour"})
    assert r.status_code == 422
    r = api.get("/api/v1/batteries/x/telemetry", params={"from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"})
    assert r.status_code == 422 and "from <= to" in r.json()["detail"][0]["msg"]
    r = api.get("/api/v1/batteries/x/telemetry", params={"from": "yesterday"})
    assert r.status_code == 422 and "ISO 8601" in r.json()["detail"][0]["msg"]


def test_fleet_reads(services: ServiceHandles, api: httpx.Client, ops_api: httpx.Client) -> None:
    """Summary, top-N and grouped reads see every twin across shards."""
    now = time.time()
    items = []
    batteries = []
    for i in range(6):
        vehicle, battery = _ids(services, f"f{i}")
        batteries.append(battery)
        items.append((f"fleet/{vehicle}/telemetry", _message(vehicle, battery, 0, [_sample(now - 1, soc=5.0 + i, temp_c=20.0 + i)])))
    _publish(services, items)
    for b in batteries:
        _twin(api, b, 1)
    summary = api.get("/api/v1/fleet/summary").json()
    assert summary["batteries"] >= 6 and summary["low_soc_lt_20pct"] >= 6
    top = api.get("/api/v1/fleet/top", params={"by": "soc_pct", "order": "asc", "n": 3}).json()["rows"]
    assert [r["value"] for r in top] == sorted(r["value"] for r in top)
    assert top[0]["value"] <= 5.0 + 1e-6
    groups = api.get("/api/v1/fleet/groups", params={"group_by": "zone", "fields": "soc_pct", "filter": "soc_pct:lt:11"}).json()["groups"]
    assert sum(g["count"] for g in groups.values()) >= 6
    stats = ops_api.get("/api/v1/system/stats").json()
    assert stats["bridges"][0]["connected"] is True
    assert sum(s["twins"] for s in stats["shards"]) >= 6


def test_reads_from_the_snapshot_say_how_old_they_are(
    services: ServiceHandles, api: httpx.Client, ops_api: httpx.Client, system_settings: Settings,
    api_tokens: dict[Role, str],
) -> None:  # fmt: skip
    """A battery, the availability query and the fleet map answer from the API's read
    snapshot: the new twin shows in each within a refresh, and every answer carries
    as_of_s and staleness_s (about a refresh period old); the map is columnar, one entry
    per twin in every list, for fleet managers and ops; customers get vehicles only."""
    lat, lon = 52.4011, 13.2502  # away from the other tests' vehicles
    vehicle, battery = _ids(services, "snap")
    low_vehicle, low_battery = _ids(services, "snaplow")
    now = time.time()
    _publish(services, [
        (f"fleet/{vehicle}/telemetry", _message(vehicle, battery, 0, [_sample(now - 3 + i, soc=77.0 - 0.1 * i, lat=lat, lon=lon) for i in range(3)])),
        (f"fleet/{low_vehicle}/telemetry", _message(low_vehicle, low_battery, 0, [_sample(now - 1, soc=4.0, lat=lat, lon=lon + 0.0005)])),
    ])  # fmt: skip

    twin = _twin(api, battery, 3)
    assert twin["soc_pct"] == pytest.approx(76.8, abs=1e-3) and twin["vehicle_id"] == vehicle
    assert twin["as_of_s"] >= now - 3 and 0 <= twin["staleness_s"] < 30
    assert twin["last_ts"] <= twin["as_of_s"] + 1.0

    with api_client(system_settings, api_tokens[Role.CUSTOMER]) as customer:
        def offered() -> dict[str, Any] | None:
            r = customer.get("/api/v1/availability", params={"lat": lat, "lon": lon, "radius_m": 300})
            assert r.status_code == 200, r.text
            body = r.json()
            return body if any(v["vehicle_id"] == vehicle for v in body["vehicles"]) else None

        avail = _wait(offered, 30, "the vehicle to be offered")
        assert 0 <= avail["staleness_s"] < 30 and avail["as_of_s"] > 0
        mine = [v for v in avail["vehicles"] if v["vehicle_id"] in (vehicle, low_vehicle)]
        assert [v["vehicle_id"] for v in mine] == [vehicle]  # 4 % is below the rentable charge
        assert set(mine[0]) == {"vehicle_id", "lat", "lon", "distance_m", "soc_pct", "est_range_km"}
        assert mine[0]["distance_m"] < 5 and mine[0]["est_range_km"] > 0
        assert customer.get("/api/v1/fleet/map").status_code == 403

    for client in (api, ops_api):
        r = client.get("/api/v1/fleet/map")
        assert r.status_code == 200, r.text
        fleet_map = r.json()
        columns = ("battery_id", "vehicle_id", "lat", "lon", "soc_pct", "health_score", "soh_pct",
                   "temp_c", "health_band", "anomaly_flags", "charging")  # fmt: skip
        assert all(len(fleet_map[c]) == fleet_map["count"] for c in columns)
        row = fleet_map["battery_id"].index(battery)
        assert fleet_map["vehicle_id"][row] == vehicle and fleet_map["soc_pct"][row] == pytest.approx(76.8, abs=0.05)
        assert fleet_map["lat"][row] == pytest.approx(lat) and fleet_map["charging"][row] is False
        assert 0 <= fleet_map["staleness_s"] < 30


def test_restarted_shard_restores_checkpoint_and_replays(services: ServiceHandles, api: httpx.Client, fleet_system: Any) -> None:
    """Killing a shard actor: Ray restarts it, it reloads its checkpoint, replays history
    written after it, and serves the same twin state; new telemetry still applies."""
    vehicle, battery = _ids(services, "rs")
    now = time.time()
    topic = f"fleet/{vehicle}/telemetry"
    _publish(services, [(topic, _message(vehicle, battery, 0, [_sample(now - 20 + i, soc=70 - i) for i in range(4)]))])
    _twin(api, battery, 4)
    directory = ray.get_actor("bms-directory", namespace=services.namespace)
    (shard_id,) = ray.get(directory.lookup.remote([battery]))
    shard = ray.get_actor(f"bms-shard-{shard_id}", namespace=services.namespace)
    ray.get(shard.checkpoint.remote())
    _publish(services, [(topic, _message(vehicle, battery, 1, [_sample(now - 10 + i, soc=60 - i) for i in range(3)]))])
    before = _twin(api, battery, 7)
    assert not ray.get(shard.stats.remote()).restored_from_checkpoint
    ray.kill(shard, no_restart=False)

    def restarted() -> Any:
        # ray.kill returns before the actor is gone: wait for the *new* process.
        try:
            st = ray.get(shard.stats.remote(), timeout=10)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            return None
        return st if st.restored_from_checkpoint else None

    stats = _wait(restarted, 60, "restarted shard")
    assert stats.replayed_samples >= 3
    after = api.get(f"/api/v1/batteries/{battery}").json()
    for key in ("samples_total", "soc_pct", "ah_discharged_ah", "efc", "last_ts", "vehicle_id"):
        assert after[key] == pytest.approx(before[key]), key
    _publish(services, [(topic, _message(vehicle, battery, 2, [_sample(now - 1, soc=50)]))])
    assert _twin(api, battery, 8)["soc_pct"] == pytest.approx(50.0)


def test_the_directory_places_a_battery_on_its_shard_and_node(services: ServiceHandles, api: httpx.Client) -> None:
    """directory.placement: battery -> (shard, the Ray node the shard runs on); None for a
    battery the fleet has not seen. On this one-node cluster the node is the only node."""
    vehicle, battery = _ids(services, "pl")
    _publish(services, [(f"fleet/{vehicle}/telemetry", _message(vehicle, battery, 0, [_sample(time.time() - 5)]))])
    _twin(api, battery, 1)
    directory = ray.get_actor("bms-directory", namespace=services.namespace)
    (shard_id,) = ray.get(directory.lookup.remote([battery]))
    placed, unknown = ray.get(directory.placement.remote([battery, f"{battery}-never-seen"]))
    alive = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
    assert unknown is None
    assert placed == (shard_id, alive[0]) and len(alive) == 1


def test_shard_size_one_runs_one_actor_per_battery(services: ServiceHandles, ray_session: None) -> None:
    """With shard_size=1 the directory starts a separate TwinShard actor for every battery."""
    from bms.services import ServiceUrls
    from bms.settings import Settings
    from bms.system import run_migrations, twin_runtime_spec
    from contracts.samples import TelemetryBatch
    from runtime.twins import FleetClient, ShardRouter, start_directory

    ns = f"{services.namespace}one"
    # A second system needs its own schema: checkpoints and assignments are per shard id.
    schema = f"{services.schema}_one"
    with psycopg.connect(services.postgres_admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
    url = make_conninfo(services.postgres_admin_url, options=f"-c search_path={schema}")
    asyncio.run(run_migrations(url))
    settings = Settings.model_validate({"twins": {"window_samples": 8, "shard_size": 1}, "ray": {"namespace": ns}})
    spec = twin_runtime_spec(
        settings, ServiceUrls(url, services.urls.redis_url, services.urls.mqtt_url), redis_prefix=services.redis_prefix
    )
    directory = start_directory(spec)
    try:
        batteries = [f"{services.id_prefix}-one{i}" for i in range(4)]
        now = time.time()
        from contracts.telemetry import decode_message, messages_to_batch

        msgs = [decode_message(f"fleet/v{i}/telemetry", _message(f"v{i}", b, 0, [_sample(now)]), now) for i, b in enumerate(batteries)]
        batch: TelemetryBatch = messages_to_batch(msgs)
        report = asyncio.run(ShardRouter(ns).route(batch))
        assert report.accepted_samples == 4
        assert ray.get(directory.num_shards.remote()) == 4
        assert sorted(ray.get(directory.loads.remote())) == [1, 1, 1, 1]
        stats = asyncio.run(FleetClient(ns).shard_stats())
        assert [s.twins for s in stats] == [1, 1, 1, 1]
        names = {a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["namespace"] == ns}
        assert {f"bms-shard-{i}" for i in range(4)} <= names
    finally:
        for i in range(ray.get(directory.num_shards.remote())):
            ray.kill(ray.get_actor(f"bms-shard-{i}", namespace=ns))
        ray.kill(directory)
        with psycopg.connect(services.postgres_admin_url, autocommit=True) as admin:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')

"""The persistence layer against the machine's real Postgres and Redis.

Every test gets its own Postgres schema (dropped afterwards) and its own Redis key prefix
(deleted afterwards), so tests neither see nor leave each other's data.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import numpy as np
import psycopg
import pytest
import redis.asyncio as aioredis
from psycopg import sql

from contracts.samples import SAMPLE_FIELDS, TelemetryBatch
from store import (
    CheckpointStore,
    DeadLetter,
    DeadLetterStore,
    DirectoryStore,
    StoreUsageError,
    TelemetryStore,
    TwinStateCache,
    apply_migrations,
    migration_versions,
    open_postgres,
)

from .conftest import ServiceHandles

pytestmark = pytest.mark.integration


# A fixed "now" (2026-03-10 12:00:00 UTC) so partition names are known in advance.
NOW_S = 1_773_144_000.0
DAY_S = 86_400.0


# -- fixtures -----------------------------------------------------------------------------


def make_batch(
    messages: list[tuple[str, str, int, list[float]]],
    cell_min_v: list[float] | None = None,
) -> TelemetryBatch:
    """A batch of ``(battery_id, vehicle_id, seq, sample timestamps)`` messages.

    Sample values are derived from the sample's position so a round trip can check them.
    """
    counts = [len(ts) for *_, ts in messages]
    offsets = np.zeros(len(messages) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    n = int(offsets[-1])
    k = np.arange(n, dtype=np.float64)
    columns = {name: 1.0 + k + 0.25 * i for i, name in enumerate(SAMPLE_FIELDS)}
    columns["ts"] = np.array([t for *_, ts in messages for t in ts], dtype=np.float64)
    columns["lat"] = 52.5 + k * 1e-6
    columns["lon"] = 13.4 + k * 1e-6
    columns["cell_min_v"] = (
        np.array(cell_min_v, dtype=np.float64) if cell_min_v is not None else 3.5 + k * 0.01
    )
    columns["cell_max_v"] = np.full(n, np.nan)
    return TelemetryBatch(
        battery_ids=[b for b, *_ in messages],
        vehicle_ids=[v for _, v, *_ in messages],
        seqs=np.array([s for _, _, s, _ in messages], dtype=np.int64),
        msg_offsets=offsets,
        columns=columns,
        received_at_s=np.zeros(len(messages)),
    )


async def partitions(conn: psycopg.AsyncConnection) -> dict[str, int]:
    """Partition name -> row count, for the telemetry table in the current schema."""
    cur = await conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'telemetry'::regclass ORDER BY 1"
    )
    out = {}
    for (name,) in await cur.fetchall():
        count = await conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(name)))
        row = await count.fetchone()
        assert row is not None
        out[name] = row[0]
    return out


# -- migrations ---------------------------------------------------------------------------


async def test_migrations_apply_once_then_are_a_no_op(schema_url: str) -> None:
    """The first run applies every shipped migration in order; a second run applies none."""
    async with open_postgres(schema_url) as conn:
        first = await apply_migrations(conn)
        second = await apply_migrations(conn)
        cur = await conn.execute("SELECT version FROM schema_migrations ORDER BY version")
        recorded = [v for (v,) in await cur.fetchall()]
    assert first == migration_versions()
    assert first[:3] == ["0001_telemetry", "0002_dead_letters", "0003_checkpoints"]
    assert second == []
    assert recorded == first


async def test_concurrent_migrators_apply_each_version_once(schema_url: str) -> None:
    """Two processes migrating at once: the advisory lock lets each version apply exactly once."""
    async with open_postgres(schema_url) as a, open_postgres(schema_url) as b:
        applied_a, applied_b = await asyncio.gather(apply_migrations(a), apply_migrations(b))
    assert sorted(applied_a + applied_b) == migration_versions()


async def test_stores_refuse_a_non_autocommit_connection(schema_url: str) -> None:
    """A connection that would leave transactions open is rejected with a clear error."""
    async with await psycopg.AsyncConnection.connect(schema_url) as conn:
        with pytest.raises(StoreUsageError, match="autocommit=True"):
            TelemetryStore(conn)


async def test_redis_stores_refuse_a_decoding_client(services: ServiceHandles) -> None:
    """A Redis client that decodes replies to str cannot return raw payload bytes: rejected."""
    client = aioredis.Redis.from_url(services.urls.redis_url, decode_responses=True)
    try:
        with pytest.raises(StoreUsageError, match="decode_responses=False"):
            TwinStateCache(client)
    finally:
        await client.aclose()


# -- telemetry ----------------------------------------------------------------------------


async def test_write_then_history_round_trips_values_and_null_cells(
    conn: psycopg.AsyncConnection,
) -> None:
    """Every column comes back as written (float32 precision), NaN cell voltages as None."""
    store = TelemetryStore(conn, clock=lambda: NOW_S)
    batch = make_batch(
        [
            ("b-1", "v-1", 7, [NOW_S - 30.0, NOW_S - 20.000001]),
            ("b-long-battery-id-ü", "v-2", 3, [NOW_S - 25.0]),
            ("b-1", "v-1", 8, [NOW_S - 10.0]),
        ],
        cell_min_v=[3.61, np.nan, 3.7, 3.55],
    )
    assert await store.write(batch) == 4

    got = await store.history("b-1", limit=10)
    assert got["ts"] == pytest.approx([NOW_S - 30.0, NOW_S - 20.000001, NOW_S - 10.0], abs=1e-6)
    assert got["seq"] == [7, 7, 8]
    assert got["vehicle_id"] == ["v-1"] * 3
    assert got["cell_min_v"] == [pytest.approx(3.61), None, pytest.approx(3.55)]
    assert got["cell_max_v"] == [None, None, None]
    rows = [0, 1, 3]  # sample positions of b-1 in the batch
    for name in ("pack_voltage_v", "current_a", "temp_c", "soc_pct", "odometer_km", "speed_kmh"):
        assert got[name] == pytest.approx(batch.columns[name][rows], rel=1e-6), name
    assert got["lat"] == pytest.approx(batch.columns["lat"][rows], abs=1e-12)

    other = await store.history("b-long-battery-id-ü")
    assert other["vehicle_id"] == ["v-2"]
    assert other["cell_min_v"] == [pytest.approx(3.7)]


async def test_write_creates_one_partition_per_day(conn: psycopg.AsyncConnection) -> None:
    """Samples from two UTC days land in two new daily partitions; the default stays empty."""
    store = TelemetryStore(conn, clock=lambda: NOW_S)
    batch = make_batch([("b-1", "v-1", 0, [NOW_S - DAY_S, NOW_S - DAY_S + 1, NOW_S])])
    await store.write(batch)
    await store.write(batch)  # cached: no new partitions, no error
    assert await partitions(conn) == {
        "telemetry_default": 0,
        "telemetry_p20260309": 4,
        "telemetry_p20260310": 2,
    }


async def test_out_of_window_rows_move_when_their_partition_is_created(
    conn: psycopg.AsyncConnection,
) -> None:
    """Rows far from now go to the default partition; creating their day's partition later
    moves them out of it instead of failing."""
    old_s = NOW_S - 100 * DAY_S  # 2025-11-30
    narrow = TelemetryStore(conn, clock=lambda: NOW_S, partition_days_back=31)
    await narrow.write(make_batch([("b-1", "v-1", 0, [old_s, old_s + 60])]))
    assert (await partitions(conn))["telemetry_default"] == 2

    wide = TelemetryStore(conn, clock=lambda: NOW_S, partition_days_back=365)
    await wide.write(make_batch([("b-1", "v-1", 1, [old_s + 120])]))
    assert await partitions(conn) == {"telemetry_default": 0, "telemetry_p20251130": 3}
    assert len((await wide.history("b-1"))["ts"]) == 3


async def test_history_keeps_the_newest_within_bounds_oldest_first(
    conn: psycopg.AsyncConnection,
) -> None:
    """Bounds are inclusive; with more matches than ``limit`` the newest are returned, by ts."""
    store = TelemetryStore(conn, clock=lambda: NOW_S)
    ts = [NOW_S - 100.0 + i for i in range(10)]
    await store.write(make_batch([("b-1", "v-1", 0, ts), ("b-2", "v-2", 0, ts)]))

    got = await store.history("b-1", from_ts=ts[2], to_ts=ts[7], limit=3)
    assert got["ts"] == pytest.approx(ts[5:8])
    assert await store.history("b-1", from_ts=NOW_S + 1.0) == {name: [] for name in got}
    with pytest.raises(ValueError, match="limit > 0"):
        await store.history("b-1", limit=0)


async def test_replay_orders_by_battery_then_seq(conn: psycopg.AsyncConnection) -> None:
    """Replay returns one message per stored (battery, seq) (ids ascending, then seq, samples
    by ts, each with its own vehicle), selected by write time whatever the sample time,
    NaN for NULL cells."""
    store = TelemetryStore(conn, clock=lambda: NOW_S)
    t = NOW_S - 50.0
    before = (await (await conn.execute("SELECT extract(epoch FROM clock_timestamp())::float8")).fetchone())[0]
    await store.write(
        make_batch(
            [
                ("b-2", "v-2", 5, [t + 3, t + 4]),
                ("b-1", "v-1", 9, [t + 2]),
                ("b-2", "v-9", 6, [t + 1]),  # older sample, from another vehicle
                ("b-1", "v-7", 10, [t + 5]),  # the battery moved to vehicle v-7
                ("b-3", "v-3", 1, [t + 6]),  # not asked for
            ],
            cell_min_v=[3.6, 3.61, np.nan, 3.62, 3.63, 3.64],
        )
    )
    after = (await (await conn.execute("SELECT extract(epoch FROM clock_timestamp())::float8")).fetchone())[0]
    batch = await store.replay(["b-2", "b-1", "b-unknown"], ingested_since_s=before - 1.0, max_sample_age_s=1e9)

    assert list(batch.battery_ids) == ["b-1", "b-1", "b-2", "b-2"]
    assert list(batch.vehicle_ids) == ["v-1", "v-7", "v-2", "v-9"]
    assert batch.seqs.tolist() == [9, 10, 5, 6]
    assert batch.msg_offsets.tolist() == [0, 1, 2, 4, 5]
    assert batch.columns["ts"] == pytest.approx([t + 2, t + 5, t + 3, t + 4, t + 1])
    assert np.isnan(batch.columns["cell_min_v"][0])
    assert batch.columns["cell_min_v"][[1, 2, 3, 4]] == pytest.approx([3.63, 3.6, 3.61, 3.62])
    assert (await store.replay([], ingested_since_s=0.0)).n_messages == 0
    assert (await store.replay(["b-1"], ingested_since_s=after + 1.0)).n_messages == 0


# -- dead letters -------------------------------------------------------------------------


async def test_dead_letters_are_recorded_counted_and_truncated(
    conn: psycopg.AsyncConnection, redis_client: tuple[aioredis.Redis, str]
) -> None:
    """Letters reach Postgres and the Redis stream with payloads cut to 4 KiB (full size
    kept), counts add up per reason across calls, and ``recent`` is newest first."""
    client, prefix = redis_client
    store = DeadLetterStore(conn, client, key_prefix=prefix)
    big = bytes(range(256)) * 40  # 10 KiB, not valid UTF-8
    await store.record(
        [
            DeadLetter("fleet/v-1/telemetry", "oversized", "got 10240 bytes", big, NOW_S),
            DeadLetter("fleet/v-2/telemetry", "malformed_json", "bad json", b"{", NOW_S + 1),
        ]
    )
    await store.record([DeadLetter("x", "malformed_json", "again", b"[", NOW_S + 2)])
    await store.record([])

    assert await store.counts() == {"oversized": 1, "malformed_json": 2}
    recent = await store.recent(limit=2)
    assert [r["detail"] for r in recent] == ["again", "bad json"]
    oldest = (await store.recent(limit=10))[-1]
    assert oldest["payload"] == big[:4096]
    assert oldest["payload_bytes"] == 10240
    assert oldest["received_at_s"] == NOW_S

    cur = await conn.execute(
        "SELECT reason, length(payload), payload_bytes, received_at FROM dead_letters ORDER BY id"
    )
    assert await cur.fetchall() == [
        ("oversized", 4096, 10240, datetime.fromtimestamp(NOW_S, UTC)),
        ("malformed_json", 1, 1, datetime.fromtimestamp(NOW_S + 1, UTC)),
        ("malformed_json", 1, 1, datetime.fromtimestamp(NOW_S + 2, UTC)),
    ]


# -- checkpoints, twin state, directory ---------------------------------------------------


async def test_checkpoint_save_load_overwrite_5_mb(conn: psycopg.AsyncConnection) -> None:
    """A 5 MB payload comes back byte for byte; a second save replaces it (one row per shard)."""
    store = CheckpointStore(conn)
    rng = np.random.default_rng(7)
    first = rng.bytes(5 * 1024 * 1024)
    second = rng.bytes(5 * 1024 * 1024 + 3)

    assert await store.load(1) is None
    await store.save(1, first, n_twins=10_000, taken_at_s=NOW_S)
    assert await store.load(1) == (first, NOW_S)
    await store.save(1, second, n_twins=10_001, taken_at_s=NOW_S + 60.5)
    await store.save(2, b"other", n_twins=1, taken_at_s=NOW_S)
    assert await store.load(1) == (second, NOW_S + 60.5)
    cur = await conn.execute("SELECT shard_id, n_twins FROM shard_checkpoints ORDER BY 1")
    assert await cur.fetchall() == [(1, 10_001), (2, 1)]


async def test_twin_state_publish_and_get_across_chunks(
    redis_client: tuple[aioredis.Redis, str],
) -> None:
    """States published over several HSET chunks are all readable; unknown ids read None."""
    client, prefix = redis_client
    cache = TwinStateCache(client, key_prefix=prefix, chunk_fields=5)
    states = {f"b-{i}": f'{{"soc_pct": {i}}}'.encode() for i in range(12)}
    await cache.publish(states)
    await cache.publish({"b-3": b'{"soc_pct": 99}'})

    assert await cache.get("b-0") == b'{"soc_pct": 0}'
    assert await cache.get("b-3") == b'{"soc_pct": 99}'
    assert await cache.get("b-missing") is None
    ids = [f"b-{i}" for i in range(12)] + ["b-missing"]
    got = await cache.get_many(ids)
    assert list(got) == ids
    assert got["b-11"] == b'{"soc_pct": 11}'
    assert got["b-missing"] is None
    assert await client.hlen(f"{prefix}twin_state") == 12


async def test_directory_save_and_load_upserts(conn: psycopg.AsyncConnection) -> None:
    """Saving inserts new batteries, moves changed ones and keeps assigned_at of unchanged ones."""
    store = DirectoryStore(conn)
    assert await store.load_all() == {}
    await store.save({"b-1": 0, "b-2": 1})
    cur = await conn.execute("SELECT assigned_at FROM battery_shards WHERE battery_id = 'b-1'")
    before = await cur.fetchone()
    await asyncio.sleep(0.01)
    await store.save({"b-2": 2, "b-3": 0, "b-1": 0})
    cur = await conn.execute("SELECT assigned_at FROM battery_shards WHERE battery_id = 'b-1'")
    assert await cur.fetchone() == before
    assert await store.load_all() == {"b-1": 0, "b-2": 2, "b-3": 0}

"""Stores sharing one Postgres connection, against the machine's real Postgres.

A twin shard gives its telemetry, checkpoint and directory stores one connection and calls
them from concurrent tasks (the group-commit writer, periodic checkpoints, restores).
psycopg serialises single statements on a connection but not transactions: a second
transaction entered meanwhile nested as a savepoint of the first and both failed out of
order, leaving the connection inside a transaction nothing committed; a checkpoint upsert
run between another store's ``BEGIN`` and ``COMMIT`` became part of that transaction and
was rolled back with it after ``save()`` had returned. These tests pin that the stores now
take turns on the connection, and that a store refuses a connection someone left inside a
transaction instead of silently joining it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
import pytest

from contracts.health import HealthRow
from contracts.model_registry import ModelVersion
from contracts.work_orders import WorkOrderKind
from store import (
    CheckpointStore,
    DirectoryStore,
    StoreUsageError,
    TelemetryStore,
    apply_migrations,
)
from store.health_history import HealthHistoryStore
from store.model_registry_store import ModelRegistryStore
from store.work_order_store import WorkOrderStore

from .test_store import NOW_S, make_batch

pytestmark = pytest.mark.integration

IDLE = psycopg.pq.TransactionStatus.IDLE


async def _rows(conn: psycopg.AsyncConnection, query: str) -> list[tuple[Any, ...]]:
    cur = await conn.execute(query)
    return await cur.fetchall()


async def test_concurrent_shard_stores_on_one_connection_all_commit(
    conn: psycopg.AsyncConnection, schema_url: str
) -> None:
    """Telemetry writes, checkpoint saves and directory saves started at once on one
    connection all succeed, the connection ends idle, and a second connection sees every
    row, checkpoint and assignment they wrote."""
    history = TelemetryStore(conn, clock=lambda: NOW_S)
    checkpoints = CheckpointStore(conn)
    directory = DirectoryStore(conn)
    # A few hundred samples per write keep each COPY long enough for the tasks to overlap.
    ts = [NOW_S - 600.0 + k for k in range(300)]
    calls: list[Awaitable[object]] = []
    for w in range(6):
        calls.append(history.write(make_batch([(f"b-{w}", f"v-{w}", 1, ts)])))
        calls.append(checkpoints.save(w, bytes([w]) * 200_000, n_twins=w, taken_at_s=NOW_S + w))
        calls.append(directory.save({f"b-{w}": w, f"b-{w}-spare": w}))
    # Every call runs to its end before the asserts (and the teardown's DROP SCHEMA), also
    # when one fails: a half-finished transaction would keep its locks.
    results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), timeout=60)
    assert [r for r in results if r is not None and not isinstance(r, int)] == []
    await history.write(make_batch([("b-late", "v-late", 1, [NOW_S])]))
    assert conn.info.transaction_status == IDLE

    async with await psycopg.AsyncConnection.connect(schema_url, autocommit=True) as other:
        samples = await _rows(
            other, "SELECT battery_id, count(*) FROM telemetry GROUP BY 1 ORDER BY 1"
        )
        saved = await _rows(
            other, "SELECT shard_id, n_twins, length(payload) FROM shard_checkpoints ORDER BY 1"
        )
        placed = await _rows(other, "SELECT battery_id, shard_id FROM battery_shards")
    assert dict(samples) == {**{f"b-{w}": 300 for w in range(6)}, "b-late": 1}
    assert saved == [(w, w, 200_000) for w in range(6)]
    assert dict(placed) == {
        **{f"b-{w}": w for w in range(6)},
        **{f"b-{w}-spare": w for w in range(6)},
    }


async def test_failed_history_write_does_not_roll_back_a_concurrent_checkpoint(
    conn: psycopg.AsyncConnection, schema_url: str
) -> None:
    """A telemetry COPY the server rejects (a NUL byte in a battery id) fails and is rolled
    back alone: the checkpoint saved concurrently on the same connection is committed and
    visible from a second connection, and the connection ends idle."""
    history = TelemetryStore(conn, clock=lambda: NOW_S)
    checkpoints = CheckpointStore(conn)
    await history.write(make_batch([("b-ok", "v-ok", 1, [NOW_S - 1.0])]))  # partition exists
    # Started together: the checkpoint's upsert is issued while the write's BEGIN is in
    # flight, which put it inside the write's transaction before the fix.
    bad = make_batch([("b-\x00bad", "v-bad", 2, [NOW_S, NOW_S + 1.0])])
    results = await asyncio.wait_for(
        asyncio.gather(
            history.write(bad),
            checkpoints.save(7, b"checkpoint-7", n_twins=3, taken_at_s=NOW_S),
            return_exceptions=True,
        ),
        timeout=60,
    )
    assert isinstance(results[0], psycopg.Error), results[0]
    assert results[1] is None
    assert conn.info.transaction_status == IDLE

    async with await psycopg.AsyncConnection.connect(schema_url, autocommit=True) as other:
        saved = await _rows(other, "SELECT shard_id, n_twins, payload FROM shard_checkpoints")
        samples = await _rows(other, "SELECT battery_id, count(*) FROM telemetry GROUP BY 1")
    assert saved == [(7, 3, b"checkpoint-7")]
    assert samples == [("b-ok", 1)]


def _self_committing_calls() -> dict[str, Callable[[psycopg.AsyncConnection], Awaitable[object]]]:
    return {
        "telemetry": lambda c: TelemetryStore(c, clock=lambda: NOW_S).write(
            make_batch([("b-1", "v-1", 1, [NOW_S])])
        ),
        "checkpoint": lambda c: CheckpointStore(c).save(1, b"x", n_twins=1, taken_at_s=NOW_S),
        "directory": lambda c: DirectoryStore(c).save({"b-1": 0}),
        "health-history": lambda c: HealthHistoryStore(c).append(
            [HealthRow("b-1", "2026-03", 97.5, 0.9, 12.0, 1)], NOW_S
        ),
        "work-order": lambda c: WorkOrderStore(c).create(
            WorkOrderKind.INSPECTION, "v-1", "b-1", 52.5, 13.4, 1.0, 10.0, "ci"
        ),
        "model-registry": lambda c: ModelRegistryStore(c).register(
            "health_xgb", {"val_mae": 0.1}, {}, "fp", "health_xgb/v1", "ci"
        ),
        "migration": apply_migrations,
    }


@pytest.mark.parametrize("owner", sorted(_self_committing_calls()))
async def test_write_on_a_connection_inside_a_transaction_is_refused(
    conn: psycopg.AsyncConnection, owner: str
) -> None:
    """Every store write that commits on its own refuses a connection left inside a
    transaction (it would only join that transaction), names the status, and writes
    nothing once that transaction is rolled back."""
    call = _self_committing_calls()[owner]
    await conn.execute("BEGIN")
    try:
        with pytest.raises(StoreUsageError) as info:
            await call(conn)
    finally:
        await conn.execute("ROLLBACK")
    assert f"Expected the {owner} connection to be idle (no open transaction)" in str(info.value)
    assert "got transaction status INTRANS" in str(info.value)
    written = await _rows(
        conn,
        "SELECT (SELECT count(*) FROM telemetry) + (SELECT count(*) FROM shard_checkpoints)"
        " + (SELECT count(*) FROM battery_shards) + (SELECT count(*) FROM health_history)"
        " + (SELECT count(*) FROM work_orders) + (SELECT count(*) FROM model_versions)",
    )
    assert written == [(0,)]


async def test_callback_inside_a_transaction_may_read_but_not_commit_on_the_connection(
    conn: psycopg.AsyncConnection,
) -> None:
    """A ``before_commit`` callback runs in its store's turn: a read through a store on the
    same connection proceeds (inside the transaction) instead of waiting for itself, while
    a checkpoint save from it is refused rather than silently joining the registration,
    which then rolls back and records nothing."""
    registry = ModelRegistryStore(conn)
    checkpoints = CheckpointStore(conn)
    seen: list[ModelVersion] = []

    async def read_then_save(version: ModelVersion) -> None:
        seen.append(await registry.get(version.name, version.version))
        await checkpoints.save(1, b"inside", n_twins=1, taken_at_s=NOW_S)

    with pytest.raises(StoreUsageError, match="Expected the checkpoint connection to be idle"):
        await asyncio.wait_for(
            registry.register(
                "health_xgb", {"val_mae": 0.1}, {}, "fp", "health_xgb/v1", "ci",
                before_commit=read_then_save,
            ),
            timeout=10,
        )  # fmt: skip
    assert [(v.name, v.version) for v in seen] == [("health_xgb", 1)]
    assert conn.info.transaction_status == IDLE
    assert await registry.names() == []
    assert await checkpoints.load(1) is None


async def test_a_lost_connection_reopens_on_the_next_store_call(schema_url: str, services: Any) -> None:
    """A server-side disconnect (what a PostgreSQL restart or failover does to every client)
    fails the call in flight; the next call reconnects instead of failing for good."""
    from store import open_postgres

    async with open_postgres(schema_url, application_name="bms-resilience-test") as conn:
        await apply_migrations(conn)
        store = CheckpointStore(conn)
        await store.save(1, b"first", 1, NOW_S)
        pid = conn.info.backend_pid
        async with await psycopg.AsyncConnection.connect(services.postgres_admin_url, autocommit=True) as admin:
            await admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(psycopg.OperationalError):
            await store.load(1)  # the call that meets the dead connection fails ...
        assert await store.load(1) == (b"first", NOW_S)  # ... and the retry reconnects
        assert conn.info.backend_pid != pid
        assert conn.reconnects == 1  # type: ignore[attr-defined]  # ResilientConnection

"""The dead-letter store under concurrent writers, against the machine's real Postgres and Redis.

The bridge stores the rejects of several in-flight batches at once on one connection. When
those writes interleaved, psycopg nested the second transaction as a savepoint of the first,
both failed out of order, and the connection stayed inside a transaction nothing committed:
every later letter was counted in Redis but never reached the table.
"""

from __future__ import annotations

import asyncio

import psycopg
import pytest
import redis.asyncio as aioredis

from store import DeadLetter, DeadLetterStore, StoreUsageError

pytestmark = pytest.mark.integration

NOW_S = 1_773_144_000.0


def _letters(tag: str, n: int) -> list[DeadLetter]:
    # Payloads of a few KiB make each COPY long enough for the writers to overlap.
    return [
        DeadLetter(f"fleet/{tag}/telemetry", "malformed_json", f"{tag} {k}", b"{" * 4000, NOW_S + k)
        for k in range(n)
    ]


async def test_concurrent_records_all_commit_and_match_the_counts(
    conn: psycopg.AsyncConnection, schema_url: str, redis_client: tuple[aioredis.Redis, str]
) -> None:
    """Eight writers sharing one connection all succeed; afterwards the connection is idle,
    and a separate connection sees every letter the Redis counts show, and no more."""
    client, prefix = redis_client
    store = DeadLetterStore(conn, client, key_prefix=prefix)
    await asyncio.gather(*(store.record(_letters(f"v-{w}", 40)) for w in range(8)))
    await store.record(_letters("v-late", 1))
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert await store.counts() == {"malformed_json": 321}
    async with await psycopg.AsyncConnection.connect(schema_url, autocommit=True) as other:
        cur = await other.execute("SELECT topic, count(*) FROM dead_letters GROUP BY topic")
        rows: dict[str, int] = dict(await cur.fetchall())
    assert rows == {**{f"fleet/v-{w}/telemetry": 40 for w in range(8)}, "fleet/v-late/telemetry": 1}


async def test_record_on_a_connection_inside_a_transaction_is_refused(
    conn: psycopg.AsyncConnection, redis_client: tuple[aioredis.Redis, str]
) -> None:
    """A connection left inside a transaction would turn the COPY into an uncommitted
    savepoint; record() refuses it, names the status, and counts nothing in Redis."""
    client, prefix = redis_client
    store = DeadLetterStore(conn, client, key_prefix=prefix)
    await conn.execute("BEGIN")
    try:
        with pytest.raises(StoreUsageError) as info:
            await store.record(_letters("v-1", 1))
    finally:
        await conn.execute("ROLLBACK")
    assert "Expected the dead-letter connection to be idle" in str(info.value)
    assert "got transaction status INTRANS" in str(info.value)
    assert await store.counts() == {}

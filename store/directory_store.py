"""The battery -> twin shard directory, persisted in Postgres."""

from __future__ import annotations

from collections.abc import Mapping

import psycopg

from store.postgres import connection_turn, own_transaction, require_autocommit

__all__ = ["DirectoryStore"]

_STAGE = """
CREATE TEMP TABLE battery_shards_stage (battery_id text, shard_id integer) ON COMMIT DROP
"""
_MERGE = """
INSERT INTO battery_shards AS b (battery_id, shard_id)
SELECT DISTINCT ON (battery_id) battery_id, shard_id FROM battery_shards_stage
ON CONFLICT (battery_id) DO UPDATE
SET shard_id = EXCLUDED.shard_id, assigned_at = now()
WHERE b.shard_id IS DISTINCT FROM EXCLUDED.shard_id
"""


class DirectoryStore:
    """Rows of ``battery_shards``: which shard hosts each battery's twin.

    Parameters
    ----------
    conn
        An autocommit Postgres connection with the migrations applied. It may be shared
        with other stores (a twin shard's telemetry, checkpoint and directory stores share
        one): their calls take turns on it (:func:`store.postgres.connection_turn`).
    """

    def __init__(self, conn: psycopg.AsyncConnection) -> None:
        require_autocommit(conn, "DirectoryStore")
        self._conn = conn

    async def load_all(self) -> dict[str, int]:
        """Every stored assignment, battery id -> shard id."""
        async with connection_turn(self._conn):
            cur = await self._conn.execute("SELECT battery_id, shard_id FROM battery_shards")
            rows = await cur.fetchall()
        return {battery_id: shard_id for battery_id, shard_id in rows}

    async def batteries_of(self, shard_id: int) -> list[str]:
        """Batteries placed on ``shard_id`` (a restarted shard replays their history)."""
        async with connection_turn(self._conn):
            cur = await self._conn.execute(
                "SELECT battery_id FROM battery_shards WHERE shard_id = %s ORDER BY battery_id",
                (shard_id,),
            )
            rows = await cur.fetchall()
        return [row[0] for row in rows]

    async def save(self, assignments: Mapping[str, int]) -> None:
        """Insert or update ``assignments`` in one transaction.

        Uses COPY into a temporary table and one merge, so saving a whole fleet is a
        single round of statements. ``assigned_at`` changes only when the shard does.

        Raises
        ------
        StoreUsageError
            If the connection is already inside a transaction: this one would only be a
            savepoint of it, and nothing here would commit it.
        """
        if not assignments:
            return
        action = f"saving {len(assignments)} assignments"
        async with own_transaction(self._conn, "directory", action), self._conn.cursor() as cur:
            await cur.execute(_STAGE)
            async with cur.copy(
                "COPY battery_shards_stage (battery_id, shard_id) FROM STDIN"
            ) as copy:
                for item in assignments.items():
                    await copy.write_row(item)
            await cur.execute(_MERGE)

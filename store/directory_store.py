"""The battery -> twin shard directory, persisted in Postgres."""

from __future__ import annotations

from collections.abc import Mapping

import psycopg

from store.postgres import require_autocommit

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
        An autocommit Postgres connection with the migrations applied.
    """

    def __init__(self, conn: psycopg.AsyncConnection) -> None:
        require_autocommit(conn, "DirectoryStore")
        self._conn = conn

    async def load_all(self) -> dict[str, int]:
        """Every stored assignment, battery id -> shard id."""
        cur = await self._conn.execute("SELECT battery_id, shard_id FROM battery_shards")
        return {battery_id: shard_id for battery_id, shard_id in await cur.fetchall()}

    async def batteries_of(self, shard_id: int) -> list[str]:
        """Batteries placed on ``shard_id`` (a restarted shard replays their history)."""
        cur = await self._conn.execute(
            "SELECT battery_id FROM battery_shards WHERE shard_id = %s ORDER BY battery_id", (shard_id,)
        )
        return [row[0] for row in await cur.fetchall()]

    async def save(self, assignments: Mapping[str, int]) -> None:
        """Insert or update ``assignments`` in one transaction.

        Uses COPY into a temporary table and one merge, so saving a whole fleet is a
        single round of statements. ``assigned_at`` changes only when the shard does.
        """
        if not assignments:
            return
        async with self._conn.transaction(), self._conn.cursor() as cur:
            await cur.execute(_STAGE)
            async with cur.copy(
                "COPY battery_shards_stage (battery_id, shard_id) FROM STDIN"
            ) as copy:
                for item in assignments.items():
                    await copy.write_row(item)
            await cur.execute(_MERGE)

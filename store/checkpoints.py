"""The latest checkpoint of each twin shard, as opaque bytes in Postgres."""

from __future__ import annotations

from datetime import UTC, datetime

import psycopg

from store.postgres import connection_turn, require_autocommit, require_idle

__all__ = ["CheckpointStore"]

_UPSERT = """
INSERT INTO shard_checkpoints (shard_id, taken_at, payload, n_twins)
VALUES (%s, %s, %s, %s)
ON CONFLICT (shard_id) DO UPDATE
SET taken_at = EXCLUDED.taken_at, payload = EXCLUDED.payload, n_twins = EXCLUDED.n_twins
"""


class CheckpointStore:
    """One row per shard in ``shard_checkpoints``; a save replaces the shard's previous one.

    Parameters
    ----------
    conn
        An autocommit Postgres connection with the migrations applied. It may be shared
        with other stores (a twin shard's telemetry, checkpoint and directory stores share
        one): their calls take turns on it (:func:`store.postgres.connection_turn`).
    """

    def __init__(self, conn: psycopg.AsyncConnection) -> None:
        require_autocommit(conn, "CheckpointStore")
        self._conn = conn

    async def save(self, shard_id: int, payload: bytes, n_twins: int, taken_at_s: float) -> None:
        """Replace the checkpoint of ``shard_id`` with ``payload`` (committed on return).

        The payload travels as a binary parameter, so tens of MB cost no hex encoding. The
        upsert is one autocommit statement, run in the connection's turn: on a connection
        shared with other stores it must not land inside their transaction, where a failed
        telemetry write would roll it back after this method had returned.

        Raises
        ------
        StoreUsageError
            If the connection is already inside a transaction, which would commit (or not)
            the upsert in its place.
        """
        if n_twins < 0:
            raise ValueError(f"Expected n_twins >= 0, got {n_twins}.")
        taken_at = datetime.fromtimestamp(taken_at_s, UTC)
        async with connection_turn(self._conn), self._conn.cursor(binary=True) as cur:
            require_idle(self._conn, "checkpoint", f"saving the checkpoint of shard {shard_id}")
            await cur.execute(_UPSERT, (shard_id, taken_at, payload, n_twins), binary=True)

    async def load(self, shard_id: int) -> tuple[bytes, float] | None:
        """The latest payload of ``shard_id`` and its ``taken_at`` in Unix seconds, if any."""
        async with connection_turn(self._conn), self._conn.cursor(binary=True) as cur:
            await cur.execute(
                "SELECT payload, extract(epoch FROM taken_at)::float8 FROM shard_checkpoints"
                " WHERE shard_id = %s",
                (shard_id,),
            )
            row = await cur.fetchone()
        if row is None:
            return None
        payload, taken_at_s = row
        return bytes(payload), float(taken_at_s)

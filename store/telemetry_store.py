"""Raw telemetry in Postgres: bulk writes with binary COPY, history and replay reads."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import date, timedelta
from typing import Any

import numpy as np
import psycopg
from psycopg import sql

from contracts.errors import Unavailable
from contracts.samples import SAMPLE_FIELDS, TelemetryBatch
from store._copy_binary import COPY_COLUMNS, encode_copy_binary
from store.postgres import connection_turn, open_postgres, require_autocommit, require_idle

__all__ = ["HISTORY_COLUMNS", "TelemetryStore"]

_SECONDS_PER_DAY = 86_400
_EPOCH = date(1970, 1, 1)
_COPY_SQL = sql.SQL("COPY telemetry ({}) FROM STDIN (FORMAT binary)").format(
    sql.SQL(", ").join(sql.Identifier(c) for c in COPY_COLUMNS)
)
# psycopg hands libpq one buffer per write; 1 MiB pieces keep each send short.
_COPY_CHUNK_BYTES = 1 << 20

#: Keys of :meth:`TelemetryStore.history`'s result, in order.
HISTORY_COLUMNS: tuple[str, ...] = ("ts", "vehicle_id", "seq", *SAMPLE_FIELDS[1:])
_VALUE_FIELDS = SAMPLE_FIELDS[1:]


class TelemetryStore:
    """Telemetry rows in the daily-partitioned ``telemetry`` table.

    Parameters
    ----------
    conn
        An autocommit connection (see :func:`store.open_postgres`); the migrations must
        have been applied in its ``search_path``. It may be shared with other stores (a
        twin shard's telemetry, checkpoint and directory stores share one): their calls
        take turns on it (:func:`store.postgres.connection_turn`).
    partition_days_back, partition_days_ahead
        Daily partitions are created on demand only for days this close to ``clock()``; rows
        of other days (a vehicle with a broken clock) go to the default partition instead of
        creating one partition per bogus day.
    clock
        Unix time in seconds, for the partition window.
    """

    def __init__(
        self,
        conn: psycopg.AsyncConnection,
        *,
        partition_days_back: int = 31,
        partition_days_ahead: int = 1,
        clock: Callable[[], float] = time.time,
    ) -> None:
        require_autocommit(conn, "TelemetryStore")
        if partition_days_back < 0 or partition_days_ahead < 0:
            raise ValueError(
                f"Expected partition_days_back >= 0 and partition_days_ahead >= 0, got "
                f"{partition_days_back} and {partition_days_ahead}."
            )
        self._conn = conn
        self._days_back = partition_days_back
        self._days_ahead = partition_days_ahead
        self._clock = clock
        # Days (since 1970-01-01 UTC) whose partition is known to exist.
        self._known_days: set[int] = set()

    @classmethod
    @asynccontextmanager
    async def connect(cls, url: str, **kwargs: Any) -> AsyncIterator[TelemetryStore]:
        """A store on its own connection to ``url``, closed on exit.

        ``kwargs`` go to the constructor.
        """
        async with open_postgres(url, application_name="bms-telemetry") as conn:
            yield cls(conn, **kwargs)

    async def write(self, batch: TelemetryBatch) -> int:
        """Write every sample of ``batch`` with one binary ``COPY`` and commit.

        Missing daily partitions for the batch's days are created first. NaN cell
        voltages are stored as NULL.

        Concurrent calls, and calls of other stores sharing the connection, take turns on
        it (:func:`store.postgres.connection_turn`).

        Returns
        -------
        int
            Rows written (``batch.n_samples``).

        Raises
        ------
        StoreUsageError
            If the connection is already inside a transaction: the COPY would only be a
            savepoint of it, and nothing here would commit it.
        """
        n = batch.n_samples
        if n == 0:
            return 0
        # Encoded before taking the connection's turn: the other stores on it need not wait
        # for this CPU work.
        payload = encode_copy_binary(batch)
        view = memoryview(payload)
        try:
            async with connection_turn(self._conn):
                require_idle(self._conn, "telemetry", f"writing {n} samples")
                # In the same turn: partition DDL run inside another store's transaction would
                # be rolled back with it while _known_days already counts the partition.
                await self._ensure_partitions(batch.columns["ts"])
                async with self._conn.transaction(), self._conn.cursor() as cur:
                    async with cur.copy(_COPY_SQL) as copy:
                        for at in range(0, len(view), _COPY_CHUNK_BYTES):
                            await copy.write(view[at : at + _COPY_CHUNK_BYTES])
        except (psycopg.OperationalError, psycopg.InterfaceError) as err:
            # The server is out of reach (down, restarting, the network cut): the samples may
            # be written later, so the caller waits instead of judging them poison.
            raise Unavailable(
                f"Expected PostgreSQL to take {n} samples, got {type(err).__name__}: {err}"
            ) from err
        return n

    async def _ensure_partitions(self, ts_s: np.ndarray[Any, np.dtype[np.float64]]) -> None:
        # Called in the connection's turn, with the connection idle (see write()).
        today = int(self._clock() // _SECONDS_PER_DAY)
        finite = ts_s[np.isfinite(ts_s)]
        days = np.unique(np.floor(finite / _SECONDS_PER_DAY).astype(np.int64))
        wanted = [
            int(d)
            for d in days
            if today - self._days_back <= d <= today + self._days_ahead
            and int(d) not in self._known_days
        ]
        if not wanted:
            return
        dates = [_EPOCH + timedelta(days=d) for d in wanted]
        await self._conn.execute(
            "SELECT telemetry_ensure_partition(d) FROM unnest(%s::date[]) AS d", (dates,)
        )
        self._known_days.update(wanted)

    async def history(
        self,
        battery_id: str,
        from_ts: float | None = None,
        to_ts: float | None = None,
        limit: int = 1000,
    ) -> dict[str, list[Any]]:
        """The latest ``limit`` samples of one battery in ``[from_ts, to_ts]``, oldest first.

        Parameters
        ----------
        battery_id
            The battery.
        from_ts, to_ts
            Inclusive bounds in Unix seconds; ``None`` leaves that side open.
        limit
            Most samples returned; when more match, the newest ones are kept.

        Returns
        -------
        dict of str to list
            One list per name in :data:`HISTORY_COLUMNS`, ordered by ``ts``; ``ts`` is Unix
            seconds, missing cell voltages are ``None``.
        """
        if limit <= 0:
            raise ValueError(f"Expected limit > 0, got {limit}.")
        conditions = [sql.SQL("battery_id = %(battery_id)s")]
        if from_ts is not None:
            conditions.append(sql.SQL("ts >= to_timestamp(%(from_ts)s)"))
        if to_ts is not None:
            conditions.append(sql.SQL("ts <= to_timestamp(%(to_ts)s)"))
        # Order by the column, not the epoch alias, so the (battery_id, ts) index serves it.
        query = sql.SQL(
            "SELECT * FROM (SELECT extract(epoch FROM ts)::float8 AS ts, vehicle_id, seq, {values}"
            " FROM telemetry WHERE {where} ORDER BY telemetry.ts DESC LIMIT %(limit)s) AS newest"
            " ORDER BY ts"
        ).format(
            values=sql.SQL(", ").join(sql.Identifier(c) for c in _VALUE_FIELDS),
            where=sql.SQL(" AND ").join(conditions),
        )
        params = {"battery_id": battery_id, "from_ts": from_ts, "to_ts": to_ts, "limit": limit}
        async with connection_turn(self._conn):
            cur = await self._conn.execute(query, params)
            rows = await cur.fetchall()
        if not rows:
            return {name: [] for name in HISTORY_COLUMNS}
        return {
            name: list(values)
            for name, values in zip(HISTORY_COLUMNS, zip(*rows, strict=True), strict=True)
        }

    async def replay(
        self, battery_ids: Sequence[str], ingested_since_s: float, max_sample_age_s: float = 7 * 86_400.0
    ) -> TelemetryBatch:
        """Samples of ``battery_ids`` written after ``ingested_since_s``, to rebuild twins
        after a restart.

        Selection is by write time, not sample time: a vehicle that uploads hours of buffered
        telemetry just before a crash must be replayed too. ``max_sample_age_s`` (the bridge's
        oldest accepted sample) bounds ``ts`` as well, so only recent partitions are read.

        Returns
        -------
        TelemetryBatch
            One message per stored (battery, seq), batteries in ascending id order, then by
            seq, samples by ``ts``; keeping ``seq`` lets the twin's duplicate detection see
            what it had already taken, so a retried delivery is not applied twice. Missing
            cell voltages are NaN.
        """
        if not battery_ids:
            return TelemetryBatch.empty()
        query = sql.SQL(
            "SELECT battery_id, vehicle_id, seq, extract(epoch FROM ts)::float8, {values}"
            " FROM telemetry WHERE battery_id = ANY(%s) AND ingested_at > to_timestamp(%s)"
            " AND ts > to_timestamp(%s) ORDER BY battery_id, seq, ts"
        ).format(
            values=sql.SQL(", ").join(
                sql.SQL("coalesce({}, 'NaN')").format(sql.Identifier(c))
                if c in ("cell_min_v", "cell_max_v")
                else sql.Identifier(c)
                for c in _VALUE_FIELDS
            )
        )
        async with connection_turn(self._conn):
            cur = await self._conn.execute(
                query, (list(battery_ids), ingested_since_s, ingested_since_s - max_sample_age_s)
            )
            rows = await cur.fetchall()
        if not rows:
            return TelemetryBatch.empty()
        batteries, vehicles, seqs, *values = zip(*rows, strict=True)
        battery_arr = np.array(batteries, dtype=object)
        seq_arr = np.array(seqs, dtype=np.int64)
        new_msg = np.r_[True, (battery_arr[1:] != battery_arr[:-1]) | (seq_arr[1:] != seq_arr[:-1])]
        starts = np.flatnonzero(new_msg)
        offsets = np.r_[starts, len(rows)].astype(np.int64)
        columns = {
            name: np.array(col, dtype=np.float64)
            for name, col in zip(SAMPLE_FIELDS, values, strict=True)
        }
        return TelemetryBatch(
            battery_ids=[batteries[i] for i in starts],
            vehicle_ids=[vehicles[i] for i in starts],
            seqs=seq_arr[starts],
            msg_offsets=offsets,
            columns=columns,
            received_at_s=np.zeros(len(starts)),
        )

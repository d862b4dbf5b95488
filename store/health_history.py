"""Per-battery health over time in Postgres, and the trends computed from it.

The batch job appends one row per battery per run; a trend is the least-squares slope of
SOH against time over a look-back window, per battery and per cohort (the month a battery
was first seen), in SOH percentage points per 30 days.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from contracts.health import HealthPoint, HealthRow, HealthTrend
from store.postgres import connection_turn, own_transaction, require_autocommit

__all__ = ["HealthHistoryStore"]

_SLOPE = """
    regr_slope(soh_pct, extract(epoch FROM scored_at)) * 30 * 86400 AS slope_pct_per_30d,
    count(*) AS points,
    avg(soh_pct) AS mean_soh_pct
"""


class HealthHistoryStore:
    """Appends and reads ``health_history`` over one autocommit connection.

    The connection may be shared with other stores and tasks: their calls take turns on it
    (:func:`store.postgres.connection_turn`).
    """

    def __init__(self, conn: psycopg.AsyncConnection) -> None:
        require_autocommit(conn, "HealthHistoryStore")
        self._conn = conn

    async def append(self, rows: Sequence[HealthRow], scored_at_s: float) -> int:
        """Insert the rows of one run (binary COPY); returns rows written."""
        if not rows:
            return 0
        action = f"appending {len(rows)} rows"
        async with (
            own_transaction(self._conn, "health-history", action),
            self._conn.cursor() as cur,
        ):
            async with cur.copy(
                "COPY health_history (battery_id, scored_at, cohort, soh_pct, health_score, efc,"
                " model_version) FROM STDIN"
            ) as copy:
                at = datetime.fromtimestamp(scored_at_s, tz=UTC)
                for r in rows:
                    await copy.write_row(
                        (r.battery_id, at, r.cohort, r.soh_pct, r.health_score, r.efc, r.model_version)
                    )
        return len(rows)

    async def battery_history(
        self, battery_id: str, from_s: float | None, to_s: float | None, limit: int
    ) -> list[HealthPoint]:
        """The newest ``limit`` rows of one battery in ``[from_s, to_s]``, oldest first."""
        if limit <= 0:
            raise ValueError(f"Expected limit > 0, got {limit}.")
        # The primary key (battery_id, scored_at) serves this as one backward index scan.
        q = (
            "SELECT extract(epoch FROM scored_at) AS at_s, soh_pct, health_score, efc, model_version"
            " FROM health_history WHERE battery_id = %s"
            " AND (%s::double precision IS NULL OR scored_at >= to_timestamp(%s::double precision))"
            " AND (%s::double precision IS NULL OR scored_at <= to_timestamp(%s::double precision))"
            " ORDER BY scored_at DESC LIMIT %s"
        )
        async with connection_turn(self._conn), self._conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(q, (battery_id, from_s, from_s, to_s, to_s, limit))
            rows: list[dict[str, Any]] = await cur.fetchall()
        return [
            HealthPoint(
                float(r["at_s"]), float(r["soh_pct"]), float(r["health_score"]), float(r["efc"]),
                int(r["model_version"]),
            )
            for r in reversed(rows)
        ]

    async def battery_trends(self, since_s: float, limit: int = 1000) -> list[HealthTrend]:
        """Fastest-fading batteries first (most negative slope)."""
        return await self._trends("battery_id", since_s, limit)

    async def cohort_trends(self, since_s: float) -> list[HealthTrend]:
        return await self._trends("cohort", since_s, 10_000)

    async def _trends(self, key: str, since_s: float, limit: int) -> list[HealthTrend]:
        q = (
            f"SELECT {key} AS key, {_SLOPE} FROM health_history"
            f" WHERE scored_at >= to_timestamp(%s) GROUP BY {key}"
            " ORDER BY slope_pct_per_30d ASC NULLS LAST, key LIMIT %s"
        )
        async with connection_turn(self._conn), self._conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(q, (since_s, limit))
            rows: list[dict[str, Any]] = await cur.fetchall()
        return [
            HealthTrend(
                str(r["key"]),
                None if r["slope_pct_per_30d"] is None else float(r["slope_pct_per_30d"]),
                int(r["points"]),
                float(r["mean_soh_pct"]),
            )
            for r in rows
        ]

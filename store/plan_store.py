"""The planner's plans in Postgres, so a restarted planner keeps the plan in force.

The store knows the contracts, not the planner: a plan travels as the plain JSON object
the planner makes of it (:meth:`planners.planner.PlanRecord.to_dict`) and comes back as
that object; the planner converts both ways.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import psycopg

from store.postgres import connection_turn, own_transaction, require_autocommit

__all__ = ["PlanStore"]

_INSERT = "INSERT INTO plans (made_at, reason, record) VALUES (%s, %s, %s::jsonb) RETURNING id"

# Everything older than the newest ``keep`` rows goes, in the transaction of the insert.
_TRIM = """
DELETE FROM plans
WHERE id < (SELECT min(id) FROM (SELECT id FROM plans ORDER BY id DESC LIMIT %s) AS newest)
"""

_LATEST = "SELECT record FROM plans ORDER BY id DESC LIMIT 1"


class PlanStore:
    """Plans in ``plans``, newest last, at most ``keep`` of them.

    Parameters
    ----------
    conn
        An autocommit Postgres connection with the migrations applied; it may be shared
        with other stores (their calls take turns, :func:`store.postgres.connection_turn`).
    keep
        How many plans the table holds: each save deletes all but the newest ``keep``. A
        restart reads only the newest; the rest are kept for inspection, and the bound
        keeps a planner re-planning every few minutes from growing the table without end.
    """

    def __init__(self, conn: psycopg.AsyncConnection, keep: int = 200) -> None:
        require_autocommit(conn, "PlanStore")
        if keep < 1:
            raise ValueError(
                f"Expected keep >= 1 (the newest plan is what a restart reads), got {keep}."
            )
        self._conn = conn
        self.keep = keep

    async def save(self, made_at_s: float, reason: str, record: Mapping[str, Any]) -> int:
        """Append a plan and trim the table to the newest ``keep``; returns the row's id.

        Parameters
        ----------
        made_at_s
            When the plan was made, Unix time (the planner's clock, simulated or not).
        reason
            Why it was made (``scheduled``, ``urgent``, ``manual``...).
        record
            The plan as a JSON object: str keys, JSON values, finite numbers.

        Raises
        ------
        ValueError
            ``record`` is not a JSON object of that kind (jsonb has no NaN or infinity),
            or ``made_at_s`` is not finite; nothing is written.
        """
        if not math.isfinite(made_at_s):
            raise ValueError(f"Expected a finite made_at_s, got {made_at_s}.")
        if not isinstance(record, Mapping):
            raise ValueError(
                f"Expected the plan as a JSON object (a mapping), got {type(record).__name__}."
            )
        try:
            text = json.dumps(dict(record), allow_nan=False)
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"Expected the plan as JSON values with finite numbers, got one that is not: {err}"
            ) from err
        made_at = datetime.fromtimestamp(made_at_s, UTC)
        async with (
            own_transaction(self._conn, "plan", f"saving a {reason} plan"),
            self._conn.cursor() as cur,
        ):
            await cur.execute(_INSERT, (made_at, reason, text))
            row = await cur.fetchone()
            assert row is not None  # INSERT ... RETURNING always returns the row
            await cur.execute(_TRIM, (self.keep,))
        return int(row[0])

    async def latest(self) -> dict[str, Any] | None:
        """The newest plan as it was saved, or ``None`` when none was."""
        async with connection_turn(self._conn), self._conn.cursor() as cur:
            await cur.execute(_LATEST)
            row = await cur.fetchone()
        if row is None:
            return None
        record: dict[str, Any] = row[0]
        return record

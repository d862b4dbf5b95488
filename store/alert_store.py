"""Alerts in PostgreSQL: the alert rows, their attributed history, and silences.

The alert manager (:class:`alerts.manager.AlertManager`) saves what its book changed through
:meth:`AlertStore.save`; the API reads from here. One report can open thousands of alerts
(a broker outage: one ``battery_silent`` per battery), so a save sends its rows as arrays
(``unnest``), a few thousand rows per statement, all in one transaction.

Tables (``migrations/0009_alerts.sql``): ``alerts`` (a partial unique index allows one open
alert per dedup key), ``alert_events`` (one row per transition) and ``alert_silences``.
"""

from __future__ import annotations

import builtins
import math
import time
from collections.abc import Sequence
from typing import Any

import orjson
import psycopg
from psycopg.rows import dict_row

from contracts.alerts import (
    Alert,
    AlertCategory,
    AlertSeverity,
    AlertState,
    AlertTransition,
    Silence,
)
from store.postgres import connection_turn, own_transaction, require_autocommit

__all__ = ["AlertStore"]

#: Rows per statement in a save: bounds one statement's parameters (about 1 kB a row).
_BATCH_ROWS = 5000

_STATES = ("open", *(s.value for s in AlertState))


def _epoch(column: str) -> str:
    return f"extract(epoch FROM {column})::float8 AS {column}_s"


_COLUMNS = ", ".join(
    [
        "id, dedup_key, kind, category, severity, state, summary, source, battery_id,"
        " vehicle_id, zone, lat, lon, labels, evidence",
        *(_epoch(c) for c in ("started_at", "fired_at", "acknowledged_at")),
        "acknowledged_by",
        *(_epoch(c) for c in ("resolved_at", "last_active_at", "clear_since")),
        "silenced_by, inhibited_by",
    ]
)

# The row's values, as arrays: (name, array type, SQL expression that stores the element).
_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("dedup_key", "text", "u.dedup_key"),
    ("kind", "text", "u.kind"),
    ("category", "text", "u.category"),
    ("severity", "text", "u.severity"),
    ("state", "text", "u.state"),
    ("summary", "text", "u.summary"),
    ("source", "text", "u.source"),
    ("battery_id", "text", "u.battery_id"),
    ("vehicle_id", "text", "u.vehicle_id"),
    ("zone", "text", "u.zone"),
    ("lat", "float8", "u.lat"),
    ("lon", "float8", "u.lon"),
    ("labels", "text", "u.labels::jsonb"),
    ("evidence", "text", "u.evidence::jsonb"),
    ("started_at", "float8", "to_timestamp(u.started_at)"),
    ("fired_at", "float8", "to_timestamp(u.fired_at)"),
    ("acknowledged_at", "float8", "to_timestamp(u.acknowledged_at)"),
    ("acknowledged_by", "text", "u.acknowledged_by"),
    ("resolved_at", "float8", "to_timestamp(u.resolved_at)"),
    ("last_active_at", "float8", "to_timestamp(u.last_active_at)"),
    ("clear_since", "float8", "to_timestamp(u.clear_since)"),
    ("silenced_by", "int8", "u.silenced_by"),
    ("inhibited_by", "text", "u.inhibited_by"),
)


def _unnest(fields: Sequence[tuple[str, str, str]]) -> str:
    """``unnest(%(a)s::text[], ...) AS u(a, ...)``: one row per array element."""
    arrays = ", ".join(f"%({name})s::{kind}[]" for name, kind, _ in fields)
    return f"unnest({arrays}) AS u({', '.join(name for name, _, _ in fields)})"


_INSERT = (
    f"INSERT INTO alerts ({', '.join(n for n, _, _ in _FIELDS)})"
    f" SELECT {', '.join(expr for _, _, expr in _FIELDS)}"
    f" FROM {_unnest(_FIELDS)} RETURNING id, dedup_key"
)

_UPDATE = (
    f"UPDATE alerts AS a SET {', '.join(f'{n} = {expr}' for n, _, expr in _FIELDS)}"
    f" FROM {_unnest((*_FIELDS, ('id', 'int8', 'u.id')))}"
    " WHERE a.id = u.id RETURNING a.id"
)

_INSERT_EVENTS = """
INSERT INTO alert_events (alert_id, at, from_state, to_state, actor, note)
SELECT u.alert_id, to_timestamp(u.at), u.from_state, u.to_state, u.actor, u.note
FROM unnest(%(alert_id)s::int8[], %(at)s::float8[], %(from_state)s::text[],
            %(to_state)s::text[], %(actor)s::text[], %(note)s::text[]) WITH ORDINALITY
     AS u(alert_id, at, from_state, to_state, actor, note, n)
ORDER BY u.n
"""

_HISTORY = """
SELECT a.dedup_key, e.alert_id, extract(epoch FROM e.at)::float8 AS at_s, e.from_state,
       e.to_state, e.actor, e.note
FROM alert_events e JOIN alerts a ON a.id = e.alert_id
WHERE e.alert_id = %s ORDER BY e.id
"""

_SILENCE_COLUMNS = "id, matchers, author, comment, expired_by, " + ", ".join(
    _epoch(c) for c in ("starts_at", "ends_at", "created_at")
)

_INSERT_SILENCE = f"""
INSERT INTO alert_silences (matchers, starts_at, ends_at, author, comment, created_at)
VALUES (%s::jsonb, to_timestamp(%s), to_timestamp(%s), %s, %s, coalesce(to_timestamp(%s), now()))
RETURNING {_SILENCE_COLUMNS}
"""

_EXPIRE_SILENCE = f"""
UPDATE alert_silences SET ends_at = to_timestamp(%(at)s), expired_by = %(actor)s
WHERE id = %(id)s AND starts_at < to_timestamp(%(at)s) AND ends_at > to_timestamp(%(at)s)
RETURNING {_SILENCE_COLUMNS}
"""


def _alert(row: dict[str, Any]) -> Alert:
    return Alert(
        id=row["id"],
        key=row["dedup_key"],
        kind=row["kind"],
        category=AlertCategory(row["category"]),
        severity=AlertSeverity(row["severity"]),
        state=AlertState(row["state"]),
        summary=row["summary"],
        source=row["source"],
        battery_id=row["battery_id"],
        vehicle_id=row["vehicle_id"],
        zone=row["zone"],
        lat=row["lat"],
        lon=row["lon"],
        labels=dict(row["labels"]),
        evidence=dict(row["evidence"]),
        started_at_s=row["started_at_s"],
        fired_at_s=row["fired_at_s"],
        acknowledged_at_s=row["acknowledged_at_s"],
        acknowledged_by=row["acknowledged_by"],
        resolved_at_s=row["resolved_at_s"],
        last_active_at_s=row["last_active_at_s"],
        clear_since_s=row["clear_since_s"],
        silenced_by=row["silenced_by"],
        inhibited_by=row["inhibited_by"],
    )


def _silence(row: dict[str, Any]) -> Silence:
    return Silence(
        id=row["id"],
        matchers=dict(row["matchers"]),
        starts_at_s=row["starts_at_s"],
        ends_at_s=row["ends_at_s"],
        author=row["author"],
        comment=row["comment"],
        created_at_s=row["created_at_s"],
    )


def _transition(row: dict[str, Any]) -> AlertTransition:
    return AlertTransition(
        alert_key=row["dedup_key"],
        from_state=None if row["from_state"] is None else AlertState(row["from_state"]),
        to_state=AlertState(row["to_state"]),
        at_s=row["at_s"],
        actor=row["actor"],
        note=row["note"],
        alert_id=row["alert_id"],
    )


def _json(value: object) -> str:
    # orjson writes NaN and infinities as null: PostgreSQL's jsonb refuses them.
    return orjson.dumps(value).decode()


def _finite_or_none(value: float | None) -> float | None:
    return value if value is None or math.isfinite(value) else None


def _arrays(alerts: Sequence[Alert]) -> dict[str, list[Any]]:
    return {
        "dedup_key": [a.key for a in alerts],
        "kind": [a.kind for a in alerts],
        "category": [AlertCategory(a.category).value for a in alerts],
        "severity": [AlertSeverity(a.severity).value for a in alerts],
        "state": [AlertState(a.state).value for a in alerts],
        "summary": [a.summary for a in alerts],
        "source": [a.source for a in alerts],
        "battery_id": [a.battery_id for a in alerts],
        "vehicle_id": [a.vehicle_id for a in alerts],
        "zone": [a.zone for a in alerts],
        "lat": [_finite_or_none(a.lat) for a in alerts],
        "lon": [_finite_or_none(a.lon) for a in alerts],
        "labels": [_json(a.labels) for a in alerts],
        "evidence": [_json(a.evidence) for a in alerts],
        "started_at": [a.started_at_s for a in alerts],
        "fired_at": [a.fired_at_s for a in alerts],
        "acknowledged_at": [a.acknowledged_at_s for a in alerts],
        "acknowledged_by": [a.acknowledged_by for a in alerts],
        "resolved_at": [a.resolved_at_s for a in alerts],
        "last_active_at": [a.last_active_at_s for a in alerts],
        "clear_since": [a.clear_since_s for a in alerts],
        "silenced_by": [a.silenced_by for a in alerts],
        "inhibited_by": [a.inhibited_by for a in alerts],
    }


def _batches(items: Sequence[Any]) -> list[Sequence[Any]]:
    return [items[i : i + _BATCH_ROWS] for i in range(0, len(items), _BATCH_ROWS)]


class AlertStore:
    """Alerts in ``alerts``, their history in ``alert_events``, silences in
    ``alert_silences``; implements :class:`alerts.manager.AlertStoreProtocol` and the
    API's reads.

    Parameters
    ----------
    conn
        An autocommit connection with the migrations applied; other stores may share it
        (calls take turns, :func:`store.postgres.connection_turn`).
    """

    def __init__(self, conn: psycopg.AsyncConnection) -> None:
        require_autocommit(conn, "AlertStore")
        self._conn = conn

    # -- the manager's protocol ------------------------------------------------------------

    async def load_open(self) -> tuple[builtins.list[Alert], builtins.list[Silence]]:
        """Every open alert (oldest first) and every silence that has not ended."""
        async with connection_turn(self._conn), self._conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                f"SELECT {_COLUMNS} FROM alerts WHERE state <> 'resolved' ORDER BY id"
            )
            alerts = [_alert(r) for r in await cur.fetchall()]
            await cur.execute(
                f"SELECT {_SILENCE_COLUMNS} FROM alert_silences WHERE ends_at > now() ORDER BY id"
            )
            silences = [_silence(r) for r in await cur.fetchall()]
        return alerts, silences

    async def save(self, alerts: Sequence[Alert], transitions: Sequence[AlertTransition]) -> None:
        """Upsert ``alerts`` and append ``transitions``, in one transaction.

        Alerts with an id are updated, the others inserted; once the transaction committed,
        each inserted alert's ``id`` is set (not before: a rolled-back insert has no row).
        Updates run before inserts, so an alert resolved and its key's new alert opened in
        one save pass the open-key index. A transition whose ``alert_id`` is ``None``
        belongs to the id-less alert in ``alerts`` with its key; events are appended in the
        order given.

        Raises
        ------
        ValueError
            Two id-less alerts share a key, or an id-less transition has no id-less alert
            of its key in ``alerts``; nothing is written.
        KeyError
            An alert's id names no row; nothing is written.
        psycopg.errors.UniqueViolation
            The save would leave two open alerts of one key (another writer opened one).
        """
        existing = [a for a in alerts if a.id is not None]
        new = [a for a in alerts if a.id is None]
        new_keys = {a.key for a in new}
        if len(new_keys) != len(new):
            raise ValueError(
                "Expected at most one alert without an id per key in one save, got "
                f"{len(new)} alerts for {len(new_keys)} keys."
            )
        orphans = sorted({t.alert_key for t in transitions if t.alert_id is None} - new_keys)
        if orphans:
            raise ValueError(
                "Expected every transition without an alert id to belong to a new alert of "
                f"this save, got ones for {orphans[:5]}."
            )
        if not alerts and not transitions:
            return
        ids: dict[str, int] = {}
        action = f"saving {len(alerts)} alerts and {len(transitions)} transitions"
        async with own_transaction(self._conn, "alert", action), self._conn.cursor() as cur:
            for batch in _batches(existing):
                params = _arrays(batch)
                params["id"] = [a.id for a in batch]
                await cur.execute(_UPDATE, params)
                updated = {row[0] for row in await cur.fetchall()}
                if len(updated) != len(batch):
                    missing = sorted(
                        a.id for a in batch if a.id is not None and a.id not in updated
                    )
                    raise KeyError(
                        f"No alert with id {missing[0]} to update ({len(missing)} missing)."
                    )
            for batch in _batches(new):
                await cur.execute(_INSERT, _arrays(batch))
                ids.update((key, alert_id) for alert_id, key in await cur.fetchall())
            for batch in _batches(transitions):
                await cur.execute(
                    _INSERT_EVENTS,
                    {
                        "alert_id": [
                            ids[t.alert_key] if t.alert_id is None else t.alert_id for t in batch
                        ],
                        "at": [t.at_s for t in batch],
                        "from_state": [
                            None if t.from_state is None else t.from_state.value for t in batch
                        ],
                        "to_state": [t.to_state.value for t in batch],
                        "actor": [t.actor for t in batch],
                        "note": [t.note for t in batch],
                    },
                )
        for alert in new:
            alert.id = ids[alert.key]

    async def add_silence(self, silence: Silence) -> Silence:
        """Store a new silence; returns it with its id (and ``created_at_s``, now unless set).

        Raises
        ------
        ValueError
            ``silence`` already has an id (it is stored already).
        """
        if silence.id is not None:
            raise ValueError(f"Expected a new silence without an id, got one with id {silence.id}.")
        async with connection_turn(self._conn), self._conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                _INSERT_SILENCE,
                (
                    _json(dict(silence.matchers)),
                    silence.starts_at_s,
                    silence.ends_at_s,
                    silence.author,
                    silence.comment,
                    silence.created_at_s,
                ),
            )
            row = await cur.fetchone()
        assert row is not None  # INSERT ... RETURNING returns the row
        return _silence(row)

    async def expire_silence(
        self, silence_id: int, actor: str, at_s: float | None = None
    ) -> Silence:
        """End an active silence at ``at_s`` (default now), recording ``actor``.

        Raises
        ------
        KeyError
            No silence has that id, or it has ended already.
        ValueError
            It starts after ``at_s`` (it would end before it began), or ``actor`` is empty.
        """
        if not actor.strip():
            raise ValueError(f"Expected a non-empty actor to expire the silence, got {actor!r}.")
        at = time.time() if at_s is None else at_s
        async with connection_turn(self._conn), self._conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(_EXPIRE_SILENCE, {"id": silence_id, "at": at, "actor": actor})
            row = await cur.fetchone()
            if row is None:
                await cur.execute(
                    f"SELECT {_SILENCE_COLUMNS} FROM alert_silences WHERE id = %s", (silence_id,)
                )
                found = await cur.fetchone()
        if row is not None:
            return _silence(row)
        if found is None or found["ends_at_s"] <= at:
            raise KeyError(f"No active silence with id {silence_id}.")
        raise ValueError(
            f"Expected silence {silence_id} to have started before expiring it, got one that "
            f"starts at {found['starts_at_s']} (expiring at {at})."
        )

    # -- reads for the API -----------------------------------------------------------------

    async def list(
        self,
        state: str | None = "open",
        severity: str | None = None,
        category: str | None = None,
        battery_id: str | None = None,
        limit: int = 200,
    ) -> builtins.list[Alert]:
        """Up to ``limit`` alerts, newest first (by start).

        Parameters
        ----------
        state
            ``"open"`` (every state but resolved), a state's name, or ``None`` for all.
        severity, category, battery_id
            Only those with this value, when given.
        limit
            At most this many, > 0.
        """
        if limit <= 0:
            raise ValueError(f"Expected limit > 0, got {limit}.")
        if state is not None and state not in _STATES:
            raise ValueError(
                f"Expected state to be one of {', '.join(_STATES)} or None, got {state!r}."
            )
        params = {
            "state": state,
            "severity": None if severity is None else AlertSeverity(severity).value,
            "category": None if category is None else AlertCategory(category).value,
            "battery_id": battery_id,
            "limit": limit,
        }
        async with connection_turn(self._conn), self._conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                f"SELECT {_COLUMNS} FROM alerts"
                " WHERE (%(state)s::text IS NULL"
                "        OR (%(state)s = 'open' AND state <> 'resolved') OR state = %(state)s)"
                " AND (%(severity)s::text IS NULL OR severity = %(severity)s)"
                " AND (%(category)s::text IS NULL OR category = %(category)s)"
                " AND (%(battery_id)s::text IS NULL OR battery_id = %(battery_id)s)"
                " ORDER BY started_at DESC, id DESC LIMIT %(limit)s",
                params,
            )
            rows = await cur.fetchall()
        return [_alert(r) for r in rows]

    async def open_counts(self) -> dict[str, int]:
        """Open alerts per state: ``{"pending": n, "firing": n, "acknowledged": n}``."""
        out = {s.value: 0 for s in AlertState if s.is_open}
        async with connection_turn(self._conn), self._conn.cursor() as cur:
            await cur.execute(
                "SELECT state, count(*) FROM alerts WHERE state <> 'resolved' GROUP BY state"
            )
            for state, n in await cur.fetchall():
                out[state] = int(n)
        return out

    async def get(self, alert_id: int) -> Alert:
        """The alert with ``alert_id``; :class:`KeyError` when there is none."""
        async with connection_turn(self._conn), self._conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(f"SELECT {_COLUMNS} FROM alerts WHERE id = %s", (alert_id,))
            row = await cur.fetchone()
        if row is None:
            raise KeyError(f"No alert with id {alert_id}.")
        return _alert(row)

    async def history(self, alert_id: int) -> builtins.list[AlertTransition]:
        """Every transition of an alert, oldest first; :class:`KeyError` for an unknown alert."""
        async with connection_turn(self._conn), self._conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(_HISTORY, (alert_id,))
            rows = await cur.fetchall()
            if not rows:
                await cur.execute("SELECT 1 FROM alerts WHERE id = %s", (alert_id,))
                if await cur.fetchone() is None:
                    raise KeyError(f"No alert with id {alert_id}.")
        return [_transition(r) for r in rows]

    async def silences(self, include_expired: bool = False) -> builtins.list[Silence]:
        """Silences that have not ended (active or starting later), newest first; with
        ``include_expired`` the ended ones too."""
        where = "" if include_expired else " WHERE ends_at > now()"
        async with connection_turn(self._conn), self._conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                f"SELECT {_SILENCE_COLUMNS} FROM alert_silences{where} ORDER BY id DESC"
            )
            rows = await cur.fetchall()
        return [_silence(r) for r in rows]

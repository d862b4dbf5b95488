"""API tokens in PostgreSQL: issue, look up by hash, list and revoke.

The secret of a token is shown once, by :meth:`TokenStore.create`, and never stored; the
table keeps its SHA-256 (:func:`contracts.access.hash_token`), the role and subject it
stands for, its expiry and its revocation.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg
from psycopg.rows import dict_row

from contracts.access import Principal, Role, TokenInfo, TokenRejected, hash_token, new_token
from store.postgres import connection_turn, require_autocommit

__all__ = ["MAX_TTL_S", "TokenStore"]

_COLUMNS = (
    "id, role, subject, label, created_by,"
    " extract(epoch FROM created_at)::float8 AS created_at_s,"
    " extract(epoch FROM expires_at)::float8 AS expires_at_s,"
    " extract(epoch FROM revoked_at)::float8 AS revoked_at_s"
)

_INSERT = f"""
INSERT INTO api_tokens (token_sha256, role, subject, label, created_by, expires_at)
VALUES (%s, %s, %s, %s, %s, to_timestamp(%s))
RETURNING {_COLUMNS}
"""

_BY_HASH = f"SELECT {_COLUMNS} FROM api_tokens WHERE token_sha256 = %s"

_LIST = f"SELECT {_COLUMNS} FROM api_tokens ORDER BY id"

_REVOKE = f"""
UPDATE api_tokens SET revoked_at = coalesce(revoked_at, now()) WHERE id = %s
RETURNING {_COLUMNS}
"""

#: Longest lifetime a token may be given; a token that never expires is asked for explicitly.
MAX_TTL_S = 366 * 24 * 3600.0


def _info(row: dict[str, Any]) -> TokenInfo:
    return TokenInfo(
        id=row["id"],
        role=Role(row["role"]),
        subject=row["subject"],
        label=row["label"],
        created_at_s=row["created_at_s"],
        expires_at_s=row["expires_at_s"],
        revoked_at_s=row["revoked_at_s"],
        created_by=row["created_by"],
    )


def _check_text(name: str, value: str, *, allow_empty: bool = False) -> None:
    if (not value.strip() and not allow_empty) or len(value) > 200 or not value.isprintable():
        raise ValueError(
            f"Expected {name} to be 1-200 printable characters, got {value[:40]!r}"
            f"{'...' if len(value) > 40 else ''} ({len(value)} characters)."
        )


class TokenStore:
    """Tokens in ``api_tokens``.

    Parameters
    ----------
    conn
        An autocommit connection with the migrations applied; other stores may share it
        (calls take turns, :func:`store.postgres.connection_turn`).
    """

    def __init__(self, conn: psycopg.AsyncConnection) -> None:
        require_autocommit(conn, "TokenStore")
        self._conn = conn

    async def create(
        self,
        role: Role | str,
        subject: str,
        *,
        created_by: str,
        ttl_s: float | None,
        label: str = "",
    ) -> tuple[str, TokenInfo]:
        """Issue a token; returns the secret (shown once, never stored) and its record.

        Parameters
        ----------
        role, subject
            What the token stands for; a technician token's subject is the technician id.
        created_by
            Who issued it (a CLI user, or the subject of the ops token that asked).
        ttl_s
            Lifetime in seconds, at most a year; ``None`` for a token that never expires.
        label
            A note for the list (what the token is for).
        """
        role = Role(role)
        _check_text("subject", subject)
        _check_text("created_by", created_by)
        _check_text("label", label, allow_empty=True)
        if ttl_s is not None and not 0 < ttl_s <= MAX_TTL_S:
            raise ValueError(f"Expected ttl_s in (0, {MAX_TTL_S:.0f}] or None, got {ttl_s}.")
        token = new_token()
        expires_at_s = None if ttl_s is None else time.time() + ttl_s
        async with connection_turn(self._conn), self._conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                _INSERT, (hash_token(token), role.value, subject, label, created_by, expires_at_s)
            )
            row = await cur.fetchone()
        assert row is not None  # INSERT ... RETURNING returns the row
        return token, _info(row)

    async def authenticate(self, token: str, now_s: float | None = None) -> Principal:
        """The principal ``token`` stands for; :class:`TokenRejected` when it may not be used."""
        async with connection_turn(self._conn), self._conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(_BY_HASH, (hash_token(token),))
            row = await cur.fetchone()
        if row is None:
            raise TokenRejected("unknown token")
        info = _info(row)
        state = info.state_at(time.time() if now_s is None else now_s)
        if state != "active":
            raise TokenRejected(f"token {info.id} is {state}")
        return Principal(token_id=info.id, role=info.role, subject=info.subject)

    async def list(self) -> list[TokenInfo]:
        """Every token ever issued (active, expired and revoked), oldest first."""
        async with connection_turn(self._conn), self._conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(_LIST)
            rows = await cur.fetchall()
        return [_info(r) for r in rows]

    async def revoke(self, token_id: int) -> TokenInfo:
        """Revoke a token (idempotent); ``KeyError`` when there is no such token."""
        async with connection_turn(self._conn), self._conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(_REVOKE, (token_id,))
            row = await cur.fetchone()
        if row is None:
            raise KeyError(f"No token with id {token_id}.")
        return _info(row)

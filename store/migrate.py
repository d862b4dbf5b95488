"""Versioned SQL migrations, applied once each and in order.

The files are ``store/migrations/NNNN_name.sql`` (package data); a file's version is its
name without ``.sql``. ``schema_migrations`` records what has been applied.
"""

from __future__ import annotations

from importlib import resources

import psycopg

from store.errors import MigrationError
from store.postgres import own_transaction, require_autocommit

__all__ = ["apply_migrations", "migration_versions"]

# One key for every process that migrates this database: concurrent starters (several shard
# actors, the API) queue behind each other instead of running the same DDL twice.
_LOCK_KEY = 0x626D735F6D6967  # "bms_mig"

_CREATE_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     text        PRIMARY KEY,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""


def _migrations() -> list[tuple[str, str]]:
    folder = resources.files("store") / "migrations"
    files = sorted((f for f in folder.iterdir() if f.name.endswith(".sql")), key=lambda f: f.name)
    return [(f.name.removesuffix(".sql"), f.read_text(encoding="utf-8")) for f in files]


def migration_versions() -> list[str]:
    """Every migration version shipped with this package, in the order they apply."""
    return [version for version, _ in _migrations()]


async def apply_migrations(conn: psycopg.AsyncConnection) -> list[str]:
    """Apply the migrations not yet recorded in ``schema_migrations``.

    Each migration runs in its own transaction under a transaction-level advisory lock, so
    two processes starting at once apply each file exactly once.

    Parameters
    ----------
    conn
        An autocommit connection; its ``search_path`` decides the schema migrated.

    Returns
    -------
    list of str
        The versions applied by this call, in order (empty when up to date).

    Raises
    ------
    MigrationError
        Naming the file that failed; that file and later ones are not applied.
    StoreUsageError
        If ``conn`` is inside a transaction, which would swallow the migrations uncommitted.
    """
    require_autocommit(conn, "apply_migrations")
    # Each transaction takes the connection's turn, like every store method: migrating a
    # connection that stores already use must not nest into one of their transactions.
    async with own_transaction(conn, "migration", "creating schema_migrations"):
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
        await conn.execute(_CREATE_LEDGER)
    applied: list[str] = []
    for version, sql in _migrations():
        try:
            async with own_transaction(conn, "migration", f"applying {version}.sql"):
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
                cur = await conn.execute(
                    "SELECT 1 FROM schema_migrations WHERE version = %s", (version,)
                )
                if await cur.fetchone() is not None:
                    continue
                # No parameters: psycopg sends the file as one simple query, so a file may hold
                # several statements and dollar-quoted function bodies.
                await conn.execute(sql.encode())
                await conn.execute(
                    "INSERT INTO schema_migrations (version) VALUES (%s)", (version,)
                )
        except psycopg.Error as err:
            raise MigrationError(
                f"Migration {version}.sql failed and was rolled back: {err}"
            ) from err
        applied.append(version)
    return applied

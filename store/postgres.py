"""Opening the Postgres connections that the stores run on."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import psycopg

from store.errors import StoreUsageError

__all__ = ["open_postgres", "require_autocommit"]


@asynccontextmanager
async def open_postgres(
    url: str, *, application_name: str = "bms"
) -> AsyncIterator[psycopg.AsyncConnection]:
    """An autocommit connection to ``url``, closed on exit.

    Every store method runs its own explicit transaction, so the connection itself stays in
    autocommit mode and never holds a transaction open between calls.
    """
    conn = await psycopg.AsyncConnection.connect(
        url, autocommit=True, application_name=application_name
    )
    async with conn:
        yield conn


def require_autocommit(conn: psycopg.AsyncConnection, owner: str) -> None:
    """Raise :class:`StoreUsageError` unless ``conn`` is in autocommit mode."""
    if not conn.autocommit:
        raise StoreUsageError(
            f"Expected an autocommit connection for {owner} (each method commits its own "
            "transaction), got one with autocommit=False. Open it with autocommit=True or "
            "use store.open_postgres()."
        )

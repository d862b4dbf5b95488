"""Opening the Postgres connections that the stores run on, and taking turns on one.

Several stores may share one connection (a twin shard gives its telemetry, checkpoint and
directory stores the same one, because connections are the scarce resource). psycopg
serialises single operations on a connection, but not transactions: two
``conn.transaction()`` blocks entered by concurrent tasks nest, the second as a savepoint of
the first; both exits then fail out of order, and the connection is left inside a
transaction that nothing commits any more. Every later write "succeeds" into it and is never
seen by another connection. A plain statement run while another task's transaction is open
lands inside that transaction instead, and is committed or rolled back with it.

So every store method takes the connection's turn (:func:`connection_turn`) for as long as
it uses the connection, and one that opens its own transaction first checks that the
connection is idle (:func:`own_transaction`).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, cast

import psycopg

from store.errors import StoreUsageError

__all__ = [
    "ResilientConnection",
    "connection_lock",
    "connection_turn",
    "open_postgres",
    "own_transaction",
    "require_autocommit",
    "require_idle",
]

#: Seconds a (re)connect may take: an unreachable host (a network cut rather than a refused
#: port) would otherwise hold the connection's turn, and every store waiting on it, forever.
_CONNECT_TIMEOUT_S = 10

_BUSY = (psycopg.pq.TransactionStatus.INTRANS, psycopg.pq.TransactionStatus.INERROR)


@dataclass
class _Turn:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # The task holding the lock, so that it may use the connection again from inside its own
    # turn (a callback run inside its transaction) instead of waiting for itself forever.
    holder: asyncio.Task[Any] | None = None


# Keyed weakly: the entry goes with the connection, and a store object holds no lock of its
# own, so every store built on the connection (now or later) finds the same one.
_TURNS: weakref.WeakKeyDictionary[psycopg.AsyncConnection[Any], _Turn] = weakref.WeakKeyDictionary()


def _turn_of(conn: psycopg.AsyncConnection[Any]) -> _Turn:
    turn = _TURNS.get(conn)
    if turn is None:
        turn = _TURNS[conn] = _Turn()
    return turn


class ResilientConnection:
    """An autocommit connection that opens itself again after the server went away.

    A component holds one connection for its whole life (a shard, the bridge, the planner).
    psycopg never reopens a connection that was lost: a PostgreSQL restart, a failover or a
    network cut would leave every later statement failing with "the connection is closed",
    for good, and the component would need a restart to recover. This wrapper stands in for
    the connection: attribute access goes to the current psycopg connection, and
    :func:`connection_turn` (which every store method takes first) calls :meth:`ensure_open`,
    which replaces a closed or broken connection with a new one. While the server is down
    that raises psycopg's :class:`~psycopg.OperationalError`, as the lost connection did, and
    the caller's retry succeeds once the server is back.

    A transaction cut off with its connection is rolled back by the server; nothing here
    retries a statement, so the caller decides, as with a plain connection.
    """

    def __init__(self, conn: psycopg.AsyncConnection[Any], url: str, application_name: str) -> None:
        self._conn = conn
        self._url = url
        self._application_name = application_name
        self.reconnects = 0

    @classmethod
    async def connect(cls, url: str, application_name: str) -> ResilientConnection:
        conn = await psycopg.AsyncConnection.connect(
            url, autocommit=True, application_name=application_name,
            connect_timeout=_CONNECT_TIMEOUT_S,
        )  # fmt: skip
        return cls(conn, url, application_name)

    @property
    def connection(self) -> psycopg.AsyncConnection[Any]:
        """The psycopg connection in use now (a new object after each reconnect)."""
        return self._conn

    async def ensure_open(self) -> None:
        """Reconnect if the connection was closed or lost; raise if the server is still down."""
        if not self._conn.closed:
            return
        self._conn = await psycopg.AsyncConnection.connect(
            self._url, autocommit=True, application_name=self._application_name,
            connect_timeout=_CONNECT_TIMEOUT_S,
        )  # fmt: skip
        self.reconnects += 1

    async def close(self) -> None:
        await self._conn.close()

    def __getattr__(self, name: str) -> Any:
        # Only called for names not found on the wrapper: everything psycopg offers.
        return getattr(self._conn, name)


@asynccontextmanager
async def open_postgres(
    url: str, *, application_name: str = "bms"
) -> AsyncIterator[psycopg.AsyncConnection]:
    """An autocommit connection to ``url`` that reconnects when lost, closed on exit.

    Every store method runs its own explicit transaction, so the connection itself stays in
    autocommit mode and never holds a transaction open between calls. What is yielded is a
    :class:`ResilientConnection` typed as the connection it stands in for: stores take their
    turn on it (:func:`connection_turn`), which reopens it after the server went away.
    """
    conn = await ResilientConnection.connect(url, application_name)
    try:
        yield cast("psycopg.AsyncConnection[Any]", conn)
    finally:
        await conn.close()


def require_autocommit(conn: psycopg.AsyncConnection, owner: str) -> None:
    """Raise :class:`StoreUsageError` unless ``conn`` is in autocommit mode."""
    if not conn.autocommit:
        raise StoreUsageError(
            f"Expected an autocommit connection for {owner} (each method commits its own "
            "transaction), got one with autocommit=False. Open it with autocommit=True or "
            "use store.open_postgres()."
        )


def connection_lock(conn: psycopg.AsyncConnection[Any]) -> asyncio.Lock:
    """The one lock that every store on ``conn`` holds while it uses the connection.

    The same object for every caller as long as ``conn`` lives. Code outside the stores
    that runs its own transactions on a store's connection should hold it through
    :func:`connection_turn`, which also lets the holding task call store methods from
    inside its turn; holding the bare lock and then calling a store method would wait for
    itself forever.
    """
    return _turn_of(conn).lock


@asynccontextmanager
async def connection_turn(conn: psycopg.AsyncConnection[Any]) -> AsyncIterator[None]:
    """Hold ``conn`` for one unit of work: no other task's statements run on it meanwhile.

    Re-entrant within one task: a task already holding the turn (for example a callback
    awaited inside its store's transaction) proceeds at once, and its statements run inside
    that transaction. Child tasks it spawns are other tasks and wait like any other.
    """
    turn = _turn_of(conn)
    task = asyncio.current_task()
    if task is not None and turn.holder is task:
        yield
        return
    async with turn.lock:
        turn.holder = task
        try:
            if isinstance(conn, ResilientConnection):
                await conn.ensure_open()
            yield
        finally:
            turn.holder = None


def require_idle(conn: psycopg.AsyncConnection[Any], owner: str, action: str) -> None:
    """Raise :class:`StoreUsageError` if ``conn`` is inside a transaction.

    Called with the connection's turn held, before work that must commit on its own: inside
    an open transaction it would only be part of that one, committed (or rolled back) by
    whoever opened it. Store methods take turns, so such a transaction was opened by code
    outside them, or by the calling task itself from inside its own turn.

    Parameters
    ----------
    owner
        Names the connection in the message, e.g. ``"checkpoint"``.
    action
        What was about to happen, e.g. ``"saving the checkpoint of shard 3"``.
    """
    # A lost connection (status UNKNOWN) is left to psycopg, whose OperationalError says
    # so; only a live transaction is a usage error.
    status = conn.info.transaction_status
    if status in _BUSY:
        raise StoreUsageError(
            f"Expected the {owner} connection to be idle (no open transaction) before "
            f"{action}, got transaction status {status.name}. Store methods on one "
            "connection take turns (store.postgres.connection_turn), so this transaction was "
            "opened outside them or from inside one; commit or roll it back first, or give "
            "the store a connection of its own."
        )


@asynccontextmanager
async def own_transaction(
    conn: psycopg.AsyncConnection[Any], owner: str, action: str
) -> AsyncIterator[None]:
    """Hold ``conn``'s turn and run one top-level transaction in it, committed on exit.

    Raises
    ------
    StoreUsageError
        If ``conn`` is already inside a transaction (see :func:`require_idle`): this one
        would only be a savepoint of it, and nothing here would commit it.
    """
    async with connection_turn(conn):
        require_idle(conn, owner, action)
        async with conn.transaction():
            yield

"""Messages the bridge rejected: kept in Postgres, streamed and counted in Redis."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
import redis.asyncio as aioredis
from redis.typing import EncodableT, FieldT

from store._redis import as_bytes, require_bytes_responses
from store.postgres import own_transaction, require_autocommit

__all__ = ["DeadLetter", "DeadLetterStore"]

_COPY_SQL = (
    "COPY dead_letters (received_at, topic, reason, detail, payload, payload_bytes) FROM STDIN"
)


@dataclass(frozen=True)
class DeadLetter:
    """One rejected MQTT message.

    Parameters
    ----------
    topic
        The topic it arrived on.
    reason
        The counter it goes to (a ``contracts.telemetry.RejectReason`` value).
    detail
        What was expected and what arrived.
    payload
        The raw payload (stored truncated).
    received_at_s
        Unix time the bridge received it.
    """

    topic: str
    reason: str
    detail: str
    payload: bytes
    received_at_s: float


class DeadLetterStore:
    """Dead letters in the ``dead_letters`` table, a capped Redis stream and per-reason counts.

    Parameters
    ----------
    conn
        An autocommit Postgres connection with the migrations applied.
    redis
        A client with ``decode_responses=False``.
    key_prefix
        Prefix of the Redis keys ``<prefix>dead_letters`` (stream) and
        ``<prefix>dead_letters:counts`` (hash reason -> count).
    max_payload_bytes
        Payload bytes kept per letter, in both stores; the full size is kept alongside.
    stream_max_len
        Approximate length the Redis stream is trimmed to.

    Notes
    -----
    :meth:`record` may be called from concurrent tasks (the bridge stores the rejects of
    several in-flight batches at once); the calls take turns on the connection with each
    other and with every other store on it (:func:`store.postgres.connection_turn`). Two
    transactions cannot interleave on one connection: psycopg would open the second as a
    savepoint inside the first, both exits would fail out of order, and the connection would
    be left inside a transaction that nothing commits any more. Every later write would then
    "succeed" into that transaction, counted in Redis but never visible in the table.
    """

    def __init__(
        self,
        conn: psycopg.AsyncConnection,
        redis: aioredis.Redis,
        *,
        key_prefix: str = "bms:",
        max_payload_bytes: int = 4096,
        stream_max_len: int = 100_000,
    ) -> None:
        require_autocommit(conn, "DeadLetterStore")
        require_bytes_responses(redis, "DeadLetterStore")
        if max_payload_bytes < 0 or stream_max_len <= 0:
            raise ValueError(
                f"Expected max_payload_bytes >= 0 and stream_max_len > 0, got "
                f"{max_payload_bytes} and {stream_max_len}."
            )
        self._conn = conn
        self._redis = redis
        self._stream_key = f"{key_prefix}dead_letters"
        self._counts_key = f"{key_prefix}dead_letters:counts"
        self._max_payload_bytes = max_payload_bytes
        self._stream_max_len = stream_max_len

    async def record(self, letters: Sequence[DeadLetter]) -> None:
        """Store ``letters``: one COPY into Postgres, then one pipelined Redis round trip.

        Postgres is written first, as the record of truth, and Redis only once the COPY has
        committed: the counts never show a letter the table lacks. If Redis then fails, the
        stream and counts miss these letters but the table has them.

        Raises
        ------
        StoreUsageError
            If the connection is already inside a transaction: the COPY would only be a
            savepoint of it, and nothing here would commit it.
        psycopg.Error
            If the COPY failed; nothing was written to Redis then.
        """
        if not letters:
            return
        cut = self._max_payload_bytes
        action = f"storing {len(letters)} letters"
        async with own_transaction(self._conn, "dead-letter", action), self._conn.cursor() as cur:
            async with cur.copy(_COPY_SQL) as copy:
                for letter in letters:
                    await copy.write_row(
                        (
                            datetime.fromtimestamp(letter.received_at_s, UTC),
                            letter.topic,
                            str(letter.reason),
                            letter.detail,
                            letter.payload[:cut],
                            len(letter.payload),
                        )
                    )
        # Redis outside the connection's turn: waiting on it does not touch Postgres, and
        # the other stores on the connection should not wait for it.
        pipe = self._redis.pipeline(transaction=False)
        per_reason: dict[str, int] = {}
        for letter in letters:
            fields: dict[FieldT, EncodableT] = {
                "topic": letter.topic,
                "reason": str(letter.reason),
                "detail": letter.detail,
                "payload": letter.payload[:cut],
                "payload_bytes": len(letter.payload),
                "received_at_s": repr(letter.received_at_s),
            }
            pipe.xadd(self._stream_key, fields, maxlen=self._stream_max_len, approximate=True)
            per_reason[str(letter.reason)] = per_reason.get(str(letter.reason), 0) + 1
        for reason, count in per_reason.items():
            pipe.hincrby(self._counts_key, reason, count)
        await pipe.execute()

    async def counts(self) -> dict[str, int]:
        """Letters recorded so far, per reason (from Redis)."""
        raw = await self._redis.hgetall(self._counts_key)
        return {as_bytes(k).decode(): int(as_bytes(v)) for k, v in raw.items()}

    async def recent(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest ``limit`` letters from the Redis stream, newest first.

        Returns
        -------
        list of dict
            Keys ``id`` (stream entry id), ``topic``, ``reason``, ``detail``, ``payload``
            (truncated bytes), ``payload_bytes`` (full size) and ``received_at_s``.
        """
        if limit <= 0:
            raise ValueError(f"Expected limit > 0, got {limit}.")
        entries = await self._redis.xrevrange(self._stream_key, count=limit) or []
        out: list[dict[str, Any]] = []
        for entry_id, raw_fields in entries:
            fields = {as_bytes(k).decode(): as_bytes(v) for k, v in (raw_fields or {}).items()}
            out.append(
                {
                    "id": as_bytes(entry_id).decode(),
                    "topic": fields["topic"].decode(),
                    "reason": fields["reason"].decode(),
                    "detail": fields["detail"].decode(),
                    "payload": fields["payload"],
                    "payload_bytes": int(fields["payload_bytes"]),
                    "received_at_s": float(fields["received_at_s"]),
                }
            )
        return out

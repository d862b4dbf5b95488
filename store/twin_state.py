"""The latest state of every twin, as JSON documents in one Redis hash."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import redis.asyncio as aioredis
from redis.typing import EncodableT, FieldT

from store._redis import as_bytes, require_bytes_responses

__all__ = ["TwinStateCache"]


class TwinStateCache:
    """Battery id -> JSON state in the Redis hash ``<key_prefix>twin_state``.

    Parameters
    ----------
    redis
        A client with ``decode_responses=False``.
    key_prefix
        Prefix of the hash key.
    chunk_fields
        Fields per ``HSET`` / ``HMGET``: big enough to amortise round trips, small enough
        that one command does not stall Redis for other clients.
    """

    def __init__(
        self, redis: aioredis.Redis, *, key_prefix: str = "bms:", chunk_fields: int = 5000
    ) -> None:
        require_bytes_responses(redis, "TwinStateCache")
        if chunk_fields <= 0:
            raise ValueError(f"Expected chunk_fields > 0, got {chunk_fields}.")
        self._redis = redis
        self._key = f"{key_prefix}twin_state"
        self._chunk = chunk_fields

    async def publish(self, states: Mapping[str, bytes]) -> None:
        """Overwrite the states of the given batteries (others stay), in one pipelined trip."""
        if not states:
            return
        pipe = self._redis.pipeline(transaction=False)
        pairs = list(states.items())
        for at in range(0, len(pairs), self._chunk):
            chunk: dict[FieldT, EncodableT] = dict(pairs[at : at + self._chunk])
            pipe.hset(self._key, mapping=chunk)
        await pipe.execute()

    async def get(self, battery_id: str) -> bytes | None:
        """The latest state of one battery, ``None`` when it never published."""
        value = await self._redis.hget(self._key, battery_id)
        return None if value is None else as_bytes(value)

    async def get_many(self, battery_ids: Sequence[str]) -> dict[str, bytes | None]:
        """The latest state of each battery in ``battery_ids`` (``None`` where unknown)."""
        if not battery_ids:
            return {}
        pipe = self._redis.pipeline(transaction=False)
        for at in range(0, len(battery_ids), self._chunk):
            pipe.hmget(self._key, list(battery_ids[at : at + self._chunk]))
        replies = await pipe.execute()
        values = [None if v is None else as_bytes(v) for reply in replies for v in reply]
        return dict(zip(battery_ids, values, strict=True))

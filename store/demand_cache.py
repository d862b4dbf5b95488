"""Zone demand in Redis: observed ride starts per zone-hour, and the latest 24 h forecast.

Keys (``<prefix>`` is the system's Redis prefix)::

    <prefix>rides:<hour start, Unix s>   hash  zone -> ride starts in that hour
    <prefix>demand_forecast              hash  zone -> JSON {"start_s": ..., "rides": [24 floats],
                                                                 "vehicles": n}

Shards add ride starts every scoring tick (``HINCRBY``, pipelined) and read forecasts for
the priority model; the demand job reads the ride history hourly, runs the demand model and
writes the forecasts. Ride hashes expire after ``history_ttl_s`` so Redis holds a bounded
window (the demand model reads at most a week back).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt
import orjson
import redis.asyncio as aioredis

from store._redis import require_bytes_responses

__all__ = ["RedisDemand"]

_HOUR_S = 3600


class RedisDemand:
    """:class:`twins.scoring.DemandSource` on Redis, plus what the demand job needs."""

    def __init__(
        self, redis: aioredis.Redis, *, key_prefix: str = "bms:", history_ttl_s: int = 8 * 86_400
    ) -> None:
        require_bytes_responses(redis, "RedisDemand")
        self._redis = redis
        self._prefix = key_prefix
        self._ttl = history_ttl_s

    def _rides_key(self, hour_s: int) -> str:
        return f"{self._prefix}rides:{hour_s}"

    async def add_ride_starts(self, counts: Mapping[tuple[str, int], int]) -> None:
        if not counts:
            return
        pipe = self._redis.pipeline(transaction=False)
        for (zone, hour_s), n in counts.items():
            if hour_s % _HOUR_S:
                raise ValueError(f"Expected an hour start (multiple of 3600 s), got {hour_s}.")
            key = self._rides_key(hour_s)
            pipe.hincrby(key, zone, int(n))
            pipe.expire(key, self._ttl)
        await pipe.execute()

    async def ride_history(
        self, end_hour_s: int, hours: int
    ) -> tuple[list[str], npt.NDArray[np.float64]]:
        """(zones, rides of shape (zones, hours)) for the ``hours`` before ``end_hour_s``."""
        if hours < 1 or end_hour_s % _HOUR_S:
            raise ValueError(
                f"Expected hours >= 1 and end_hour_s a multiple of 3600, got {hours} and {end_hour_s}."
            )
        starts = [end_hour_s - (hours - k) * _HOUR_S for k in range(hours)]
        pipe = self._redis.pipeline(transaction=False)
        for h in starts:
            pipe.hgetall(self._rides_key(h))
        per_hour: list[dict[bytes, bytes]] = await pipe.execute()
        zones = sorted({z.decode() for d in per_hour for z in d})
        index = {z: i for i, z in enumerate(zones)}
        out = np.zeros((len(zones), hours))
        for k, d in enumerate(per_hour):
            for z, n in d.items():
                out[index[z.decode()], k] = float(n)
        return zones, out

    async def write_forecast(
        self,
        start_s: int,
        forecasts: Mapping[str, npt.NDArray[np.float64]],
        vehicles: Mapping[str, int],
    ) -> None:
        """Replace the forecast of each given zone (24 hourly rides from ``start_s``), with
        the number of vehicles in the zone that share them."""
        if not forecasts:
            return
        mapping: dict[str | bytes, bytes | str] = {
            z: orjson.dumps({"start_s": start_s, "rides": [float(x) for x in f], "vehicles": int(vehicles.get(z, 0))})
            for z, f in forecasts.items()
        }
        await self._redis.hset(f"{self._prefix}demand_forecast", mapping=mapping)  # type: ignore[arg-type]

    async def forecast(self, zones: Sequence[str]) -> dict[str, npt.NDArray[np.float64]]:
        """Ride requests per vehicle and hour in each zone that has a forecast, from the
        current hour (the zone's rides divided among its vehicles)."""
        wanted = sorted(set(zones))
        if not wanted:
            return {}
        raw = await self._redis.hmget(f"{self._prefix}demand_forecast", wanted)
        out: dict[str, npt.NDArray[np.float64]] = {}
        now_hour = int(time.time() // _HOUR_S) * _HOUR_S
        for z, payload in zip(wanted, raw, strict=True):
            if payload is None:
                continue
            doc = orjson.loads(payload)
            rides = np.asarray(doc["rides"], dtype=np.float64) / max(1, int(doc.get("vehicles", 1)))
            # A forecast issued earlier is still good for its remaining hours.
            skip = max(0, (now_hour - int(doc["start_s"])) // _HOUR_S)
            if skip < rides.size:
                out[z] = rides[skip:]
        return out

"""The planner's plans against the machine's real Postgres: round trip, newest, bound.

Every test gets its own Postgres schema with the migrations applied, dropped afterwards.
"""

from __future__ import annotations

import json
import math
from typing import Any

import psycopg
import pytest

from store import StoreUsageError
from store.plan_store import PlanStore

pytestmark = pytest.mark.integration

NOW_S = 1_764_147_600.0


def record(plan_id: int) -> dict[str, Any]:
    """A plan as PlanRecord.to_dict writes one: nested routes and stops, lists, nulls."""
    stop = {
        "battery_id": "b1", "vehicle_id": "v1", "kind": "battery_swap", "lat": 52.5,
        "lon": 13.4, "eta_s": NOW_S + 600, "service_start_s": NOW_S + 600.5, "service_s": 360,
        "value": 17.5, "work_order_id": 7, "soc_pct": None, "health_score": 80.0,
        "anomaly_flags": ["voltage_residual"],
    }  # fmt: skip
    route = {
        "technician_id": "t1", "depot_id": "north", "depart_s": NOW_S, "return_s": NOW_S + 1800,
        "distance_m": 4200, "batteries_loaded": 9, "stops": [stop],
    }  # fmt: skip
    return {
        "plan_id": plan_id, "reason": "scheduled", "created_at_s": NOW_S + plan_id,
        "routes": [route], "dropped": ["b2"], "jobs": 2, "value_collected": 17.5,
        "value_dropped": 3.5, "distance_m": 4200, "solve_time_s": 0.25, "warm_started": False,
    }  # fmt: skip


async def test_the_newest_plan_comes_back_as_it_was_saved(conn: psycopg.AsyncConnection) -> None:
    """latest() is None on an empty table, then the last saved record, equal as JSON."""
    store = PlanStore(conn)
    assert await store.latest() is None
    first = await store.save(NOW_S, "scheduled", record(1))
    second = await store.save(NOW_S - 3600, "urgent", record(2))  # a clock may go back
    assert second > first
    assert await store.latest() == record(2)
    cur = await conn.execute("SELECT reason, extract(epoch FROM made_at)::float8 FROM plans ORDER BY id")
    assert await cur.fetchall() == [("scheduled", NOW_S), ("urgent", NOW_S - 3600)]


async def test_the_table_keeps_only_the_newest_plans(conn: psycopg.AsyncConnection) -> None:
    """Each save trims the table to the newest ``keep`` rows, in the same transaction."""
    store = PlanStore(conn, keep=3)
    for k in range(1, 8):
        await store.save(NOW_S + k, "scheduled", record(k))
    cur = await conn.execute("SELECT record->>'plan_id' FROM plans ORDER BY id")
    assert [int(r[0]) for r in await cur.fetchall()] == [5, 6, 7]
    assert (await store.latest() or {})["plan_id"] == 7
    with pytest.raises(ValueError, match="Expected keep >= 1"):
        PlanStore(conn, keep=0)


async def test_a_record_jsonb_cannot_hold_is_refused_and_writes_nothing(
    conn: psycopg.AsyncConnection,
) -> None:
    """NaN, infinities and non-JSON values are refused with what was expected; so is a
    made_at that is not a time."""
    store = PlanStore(conn)
    with pytest.raises(ValueError, match="finite numbers"):
        await store.save(NOW_S, "scheduled", {**record(1), "value_collected": math.nan})
    with pytest.raises(ValueError, match="finite numbers"):
        await store.save(NOW_S, "scheduled", {**record(1), "jobs": object()})
    with pytest.raises(ValueError, match="finite made_at_s"):
        await store.save(math.inf, "scheduled", record(1))
    with pytest.raises(ValueError, match="JSON object"):
        await store.save(NOW_S, "scheduled", [record(1)])  # type: ignore[arg-type]
    assert await store.latest() is None
    assert json.dumps(record(1))  # the fixture itself is fine


async def test_store_refuses_a_non_autocommit_connection(schema_url: str) -> None:
    """A connection that would leave transactions open is rejected with a clear error."""
    async with await psycopg.AsyncConnection.connect(schema_url) as raw:
        with pytest.raises(StoreUsageError, match="PlanStore"):
            PlanStore(raw)

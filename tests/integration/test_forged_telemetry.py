"""Forged telemetry against the running system: broker → bridge → shard → twin.

The attack of the security issue, end to end: one battery's genuine stream, then a message
for it on another vehicle's topic with ``seq`` +1e8 and 80 °C / 3 % SoC, then a second
forgery on the battery's own vehicle's topic with ``seq`` +1e8. Neither may touch the twin
or stop the genuine stream; both must reach the dead letters with their reason and raw
payload, and an anomaly event of the battery must show in ``GET /api/v1/anomalies``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import psycopg
import pytest

from bms.settings import Settings
from contracts.access import Role

from .conftest import ServiceHandles, api_client
from .test_system import _publish, _wait  # one connection, in order: the bridge sees this order

pytestmark = pytest.mark.integration


def _message(vehicle: str, battery: str, seq: int, ts: float, soc_pct: float, temp_c: float = 28.0) -> bytes:
    sample = {
        "ts": ts, "pack_voltage_v": 47.5, "current_a": 6.0, "temp_c": temp_c, "soc_pct": soc_pct,
        "lat": 52.52, "lon": 13.40, "odometer_km": 120.5, "speed_kmh": 16.0,
    }  # fmt: skip
    return orjson.dumps(
        {"schema_version": 2, "vehicle_id": vehicle, "battery_id": battery, "seq": seq, "samples": [sample]}
    )


@pytest.fixture(scope="module")
def manager(fleet_system: Any, system_settings: Settings, api_tokens: dict[Role, str]) -> Iterator[httpx.Client]:
    """A fleet manager's client (twins, anomalies)."""
    with api_client(system_settings, api_tokens[Role.FLEET_MANAGER], 30) as c:
        _wait(lambda: c.get("/healthz").status_code == 200, 60, "the HTTP app")
        yield c


def test_forged_messages_are_refused_dead_lettered_and_raise_an_anomaly(
    services: ServiceHandles, manager: httpx.Client
) -> None:
    """The twin stays on its vehicle with genuine values and keeps applying the genuine
    stream; the forgery on another vehicle's topic is dead-lettered as
    battery_claim_conflict, the one on the battery's own topic as seq_out_of_range, both
    with their raw payload; and the battery has an anomaly event."""
    u = uuid.uuid4().hex[:6]
    home, thief, battery = (f"{services.id_prefix}-{tag}{u}" for tag in ("vhome", "vthief", "bforged"))
    home_topic, thief_topic = f"fleet/{home}/telemetry", f"fleet/{thief}/telemetry"
    now = time.time()
    seq0 = int(now)  # what ``bms run`` starts the simulator's counter at
    genuine = [(home_topic, _message(home, battery, seq0 + k, now - 60 + 5 * k, 70.0 - k)) for k in range(3)]
    _publish(services, genuine)

    def twin(samples: int) -> dict[str, Any] | None:
        r = manager.get(f"/api/v1/batteries/{battery}")
        return r.json() if r.status_code == 200 and r.json()["samples_total"] >= samples else None  # type: ignore[no-any-return]

    # The session's first ingest when this module runs first: it may start the battery's
    # shard process while the system's other processes (Serve replicas, planner, alert
    # manager: about 20 at once) are still starting on the two cores. A CI run took over 30 s.
    _wait(lambda: twin(3), 90, "the genuine stream's first 3 samples")

    forged_claim = _message(thief, battery, seq0 + 100_000_000, now - 40, 3.0, temp_c=80.0)
    forged_seq = _message(home, battery, seq0 + 100_000_000, now - 35, 3.0, temp_c=80.0)
    later = [(home_topic, _message(home, battery, seq0 + 3 + k, now - 30 + 5 * k, 66.0 - k)) for k in range(3)]
    _publish(services, [(thief_topic, forged_claim), later[0], (home_topic, forged_seq), *later[1:]])

    state = _wait(lambda: twin(6), 30, "the 3 genuine samples after the forgeries")
    assert state["vehicle_id"] == home
    assert state["samples_total"] == 6
    assert state["soc_pct"] == pytest.approx(64.0)
    assert state["temp_c"] == pytest.approx(28.0)
    assert state["max_temp_c"] == pytest.approx(28.0)  # the forged 80 °C was never applied
    assert state["last_ts"] == pytest.approx(now - 20, abs=1e-3)

    def letters() -> dict[str, tuple[str, bytes]] | None:
        with psycopg.connect(services.urls.postgres_url, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT reason, topic, payload FROM dead_letters WHERE topic = ANY(%s) AND reason <> 'routing_failed'",
                ([home_topic, thief_topic],),
            ).fetchall()
        got = {reason: (topic, bytes(payload)) for reason, topic, payload in rows}
        return got if len(got) >= 2 else None

    got = _wait(letters, 20, "the two forgeries in the dead letters")
    assert got == {
        "battery_claim_conflict": (thief_topic, forged_claim),
        "seq_out_of_range": (home_topic, forged_seq),
    }

    def events() -> set[str] | None:
        r = manager.get("/api/v1/anomalies", params={"limit": 5000})
        kinds = {e["kind"] for e in r.json()["events"] if e["battery_id"] == battery}
        return kinds if len(kinds) >= 2 else None

    assert _wait(events, 20, "the battery's anomaly events") == {"battery_claim_conflict", "seq_out_of_range"}

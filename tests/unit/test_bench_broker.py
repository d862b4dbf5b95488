"""``bms bench broker`` runs end to end on a small count and reports the broker's own cost."""

from __future__ import annotations

import shutil

import pytest

from bms.bench.broker import run_broker_bench
from bms.services import mosquitto_binary

pytestmark = pytest.mark.skipif(
    mosquitto_binary() is None or shutil.which("mosquitto_pub") is None,
    reason="needs mosquitto and mosquitto-clients (apt-get install mosquitto mosquitto-clients)",
)


def test_every_message_arrives_and_the_broker_cost_is_measured() -> None:
    out = run_broker_bench(messages=2_000, repeats=1)
    (row,) = out["rounds"]
    assert out["messages"] == 2_000 and out["qos"] == 1 and out["message_bytes"] > 200
    # mosquitto_sub -C 2000 exits only once all 2,000 arrived; the broker did some work.
    assert row["broker_cpu_s"] > 0 and row["messages_per_broker_core_s"] > 0
    assert out["messages_per_s"]["median"] == pytest.approx(2_000 / row["wall_s"], rel=0.01)  # wall_s is rounded


def test_nonsense_counts_are_refused() -> None:
    with pytest.raises(ValueError, match="messages >= 1"):
        run_broker_bench(messages=0)

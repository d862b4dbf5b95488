"""The scoring tick while a model is down: last outputs kept with their age, retries.

The models are :class:`FlakyModels`, a fake :class:`twins.scoring.ModelClient` that answers
fixed outputs and can be told to fail a model's next calls, as a killed replica does until
Serve replaces it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from twins.clock import ManualClock
from twins.scoring import MemoryDemand, ScoringParams, TwinScorer
from twins.twin_table import SCORED_MODELS, TwinTable

from .factories import T0_S, make_batch, message

TICK_S = 10.0
#: Retries that take no real time to speak of.
FAST = ScoringParams(model_retries=2, model_retry_backoff_s=0.001)
#: Each model's answer, the same for every twin, so a kept output is easy to tell.
ANSWER = {"soh_pct": 91.0, "health_score": 80.0, "anomaly_score": 0.1, "priority": 42.0}


class ReplicaKilled(RuntimeError):
    """What a call to a model whose replica just died raises (Ray's is an actor error)."""


@dataclass
class FlakyModels:
    """Every model of a tick, answering :data:`ANSWER`; ``fail[model] = n`` fails its next
    ``n`` calls. ``calls`` counts every call per model, failed ones included."""

    hidden: int
    fail: dict[str, int] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    requests: dict[str, Mapping[str, npt.NDArray[Any]]] = field(default_factory=dict)

    async def call(
        self, model: str, ids: list[str], arrays: Mapping[str, npt.NDArray[Any]]
    ) -> dict[str, npt.NDArray[Any]]:
        self.calls[model] = self.calls.get(model, 0) + 1
        self.requests[model] = arrays
        if self.fail.get(model, 0) > 0:
            self.fail[model] -= 1
            raise ReplicaKilled(f"the {model} replica died")
        n = len(ids)

        def full(value: float) -> npt.NDArray[np.float64]:
            return np.full(n, value)

        if model == "health":
            return {
                "soh_pct": full(ANSWER["soh_pct"]), "health_score": full(ANSWER["health_score"]),
                "model_version": np.ones(n, dtype=np.int64),
            }  # fmt: skip
        if model == "anomaly":
            return {"flags": np.zeros(n, dtype=np.int64), "anomaly_score": full(ANSWER["anomaly_score"])}
        if model == "degradation":
            state = np.zeros((n, self.hidden), dtype=np.float32)
            ruls = {f"{lvl}_{q}_cycles": full(100.0) for lvl in ("rul70", "rul80") for q in ("p10", "p50", "p90")}
            return {"h": state, "c": state, **ruls}
        if model == "priority":
            return {"lost_rides_6h": full(0.5), "priority": full(ANSWER["priority"])}
        raise AssertionError(f"no such model in a tick: {model!r}")


@pytest.fixture
def fleet(table: TwinTable, clock: ManualClock) -> TwinTable:
    """Three twins with telemetry, at ``T0_S + 60``."""
    table.apply(make_batch(*(message(f"bat-{k}", 0, [T0_S, T0_S + 30.0], soc_pct=[60.0, 59.5]) for k in range(3))))
    clock.set(T0_S + 60.0)
    return table


def _scorer(models: FlakyModels, clock: ManualClock, params: ScoringParams = FAST) -> TwinScorer:
    return TwinScorer(models, MemoryDemand(), params=params, clock=clock)


def _measured(table: TwinTable, slot: int) -> None:
    """Give a twin a new capacity measurement after a cycle more: its LSTM is due a step."""
    table.capacity_est_ah[slot] = 14.0
    table.capacity_estimates[slot] += 1
    table.efc[slot] += 1.0


async def test_a_failing_model_keeps_its_outputs_and_time_while_the_others_advance(
    fleet: TwinTable, clock: ManualClock
) -> None:
    """After a good tick, a tick with health down leaves SOH, health score and
    health_scored_at_s as they were; anomaly and priority are stamped with the new tick, and
    scored_at_s is the oldest of the four (health's)."""
    models = FlakyModels(fleet.params.lstm_hidden_size)
    scorer = _scorer(models, clock)
    first_s = clock.now_s()
    await scorer.score(fleet)
    n = len(fleet)
    for model in ("health", "anomaly", "priority"):
        np.testing.assert_array_equal(fleet.scored_at_of(model)[:n], first_s, err_msg=model)
    np.testing.assert_array_equal(fleet.scored_at_s[:n], first_s)

    fleet.soh_model_pct[:n] = 77.0  # what the model said before: the failed tick keeps it
    clock.advance(TICK_S)
    models.fail["health"] = 100
    report = await scorer.score(fleet)
    assert "health" in report.errors and "ReplicaKilled" in report.errors["health"]
    np.testing.assert_array_equal(fleet.soh_model_pct[:n], 77.0)
    np.testing.assert_array_equal(fleet.health_scored_at_s[:n], first_s)
    np.testing.assert_array_equal(fleet.anomaly_scored_at_s[:n], first_s + TICK_S)
    np.testing.assert_array_equal(fleet.priority_scored_at_s[:n], first_s + TICK_S)
    np.testing.assert_array_equal(fleet.scored_at_s[:n], first_s)


async def test_a_twin_never_scored_by_any_model_stays_unscored(
    fleet: TwinTable, clock: ManualClock
) -> None:
    """Every model down from the start: no time is stamped and scored_at_s stays NaN (it no
    longer claims a score that never happened)."""
    models = FlakyModels(fleet.params.lstm_hidden_size, fail=dict.fromkeys(SCORED_MODELS, 100))
    report = await _scorer(models, clock).score(fleet)
    assert set(report.errors) == {"health", "anomaly", "priority"}  # no LSTM step due: no call
    n = len(fleet)
    for model in SCORED_MODELS:
        assert np.isnan(fleet.scored_at_of(model)[:n]).all(), model
    assert np.isnan(fleet.scored_at_s[:n]).all()


async def test_a_killed_replica_is_retried_within_the_tick(
    fleet: TwinTable, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A model that answered the tick before and now fails twice is called a third time in
    the same tick, after a backoff that doubles; the tick succeeds and counts 2 retries."""
    models = FlakyModels(fleet.params.lstm_hidden_size)
    scorer = _scorer(models, clock, ScoringParams(model_retries=2, model_retry_backoff_s=0.01))
    await scorer.score(fleet)
    clock.advance(TICK_S)
    models.fail["health"] = 2
    models.calls.clear()
    with caplog.at_level(logging.INFO, logger="twins.scoring"):
        report = await scorer.score(fleet)
    assert report.errors == {} and report.retries == {"health": 2}
    assert models.calls["health"] == 3 and models.calls["priority"] == 1
    assert report.rows["health"] == len(fleet)
    np.testing.assert_array_equal(fleet.health_scored_at_s[: len(fleet)], clock.now_s())
    assert "retry 1 of 2 in 0.01 s" in caplog.text and "retry 2 of 2 in 0.02 s" in caplog.text


async def test_retries_give_up_after_model_retries_and_the_next_tick_tries_once(
    fleet: TwinTable, clock: ManualClock
) -> None:
    """A model still failing after ``model_retries`` retries is an error of the tick; the
    next tick calls it once (it did not answer the tick before), and once it answers again
    a later failure is retried again."""
    models = FlakyModels(fleet.params.lstm_hidden_size)
    scorer = _scorer(models, clock)
    await scorer.score(fleet)
    models.fail["priority"] = 100
    models.calls.clear()
    down = await scorer.score(fleet)
    assert down.retries == {"priority": 2} and "priority" in down.errors
    assert models.calls["priority"] == 3
    models.calls.clear()
    still = await scorer.score(fleet)
    assert still.retries == {} and "priority" in still.errors and models.calls["priority"] == 1
    models.fail["priority"] = 0
    assert (await scorer.score(fleet)).errors == {}
    models.fail["priority"] = 1
    back = await scorer.score(fleet)
    assert back.retries == {"priority": 1} and back.errors == {}


async def test_a_model_that_never_answered_is_not_retried(fleet: TwinTable, clock: ManualClock) -> None:
    """At start (nothing deployed yet) each model is called once a tick: no backoff holds
    up the others."""
    models = FlakyModels(fleet.params.lstm_hidden_size, fail={"anomaly": 100})
    report = await _scorer(models, clock).score(fleet)
    assert report.retries == {} and set(report.errors) == {"anomaly"} and models.calls["anomaly"] == 1


async def test_no_retries_when_model_retries_is_zero(fleet: TwinTable, clock: ManualClock) -> None:
    """``model_retries=0`` calls a failing model once even when it answered before."""
    models = FlakyModels(fleet.params.lstm_hidden_size)
    scorer = _scorer(models, clock, ScoringParams(model_retries=0))
    await scorer.score(fleet)
    models.fail["health"] = 1
    models.calls.clear()
    report = await scorer.score(fleet)
    assert report.retries == {} and "health" in report.errors and models.calls["health"] == 1


async def test_degradation_times_follow_each_twins_lstm(fleet: TwinTable, clock: ManualClock) -> None:
    """The LSTM steps only twins with a new capacity measurement. With the deployment down,
    the due twin keeps its time, a stepped twin with nothing due counts as scored now (its
    forecast is current), and a twin never stepped has no degradation time at all."""
    models = FlakyModels(fleet.params.lstm_hidden_size)
    scorer = _scorer(models, clock)
    due, waiting, never = (fleet.slot(f"bat-{k}") for k in range(3))
    _measured(fleet, due)
    _measured(fleet, waiting)
    first_s = clock.now_s()
    assert (await scorer.score(fleet)).rows["degradation"] == 2
    assert fleet.degradation_scored_at_s[due] == fleet.degradation_scored_at_s[waiting] == first_s
    assert math.isnan(fleet.degradation_scored_at_s[never])
    # scored_at_s leaves out the model that never scored the twin.
    assert fleet.scored_at_s[never] == first_s

    _measured(fleet, due)
    models.fail["degradation"] = 100
    clock.advance(TICK_S)
    report = await scorer.score(fleet)
    assert "degradation" in report.errors
    assert fleet.degradation_scored_at_s[due] == first_s
    assert fleet.degradation_scored_at_s[waiting] == first_s + TICK_S
    assert math.isnan(fleet.degradation_scored_at_s[never])
    assert fleet.scored_at_s[due] == first_s and fleet.scored_at_s[waiting] == first_s + TICK_S


async def test_the_lstm_steps_when_the_cycles_lived_have_grown_by_the_step_fraction(
    fleet: TwinTable, clock: ManualClock
) -> None:
    """A measurement steps the LSTM once the twin's equivalent full cycles have grown by
    3 % since its last step; one too soon is used up without a step. The deployment gets the
    cycle count, and the inputs are relative to the previous step."""
    models = FlakyModels(fleet.params.lstm_hidden_size)
    scorer = _scorer(models, clock)
    slot = fleet.slot("bat-0")
    fleet.efc[slot] = 100.0
    _measured(fleet, slot)  # 101 cycles lived: the first step
    assert (await scorer.score(fleet)).rows["degradation"] == 1
    req = models.requests["degradation"]
    assert req["cycle"].tolist() == [101.0]
    assert req["x"][0, 1:].tolist() == [0.0, 0.0, 0.0, 0.0, 0.0]  # a first step: nothing before it
    assert fleet.lstm_last_cycle[slot] == 101.0 and fleet.lstm_steps[slot] == 1

    _measured(fleet, slot)  # 102: 1 % more, too soon
    clock.advance(TICK_S)
    assert (await scorer.score(fleet)).rows["degradation"] == 0
    assert fleet.lstm_steps[slot] == 1 and fleet.lstm_capacity_mark[slot] == fleet.capacity_estimates[slot]

    fleet.efc[slot] += 3.0
    _measured(fleet, slot)  # 106: 5 % more than at the last step
    clock.advance(TICK_S)
    assert (await scorer.score(fleet)).rows["degradation"] == 1
    x = models.requests["degradation"]["x"]
    assert x[0, 2] == pytest.approx(math.log(5.0 / 106.0) / 2.0, rel=1e-5)
    assert fleet.lstm_steps[slot] == 2 and fleet.lstm_last_cycle[slot] == 106.0
    # The twin carries the smoothed slope to its next step.
    assert fleet.lstm_slope_ewma[slot] == x[0, 5]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"model_retries": -1}, "model_retries >= 0"),
        ({"model_retry_backoff_s": -0.5}, "model_retry_backoff_s >= 0"),
        ({"model_retry_backoff_s": math.nan}, "model_retry_backoff_s >= 0"),
        ({"stale_after_ticks": 0.5}, "stale_after_ticks >= 1"),
    ],
)
def test_params_refuse_bad_retry_and_stale_knobs(kwargs: dict[str, float], match: str) -> None:
    """Negative retries or backoff, a NaN backoff and a stale threshold under one tick are
    refused, naming the knob and the value."""
    with pytest.raises(ValueError, match=match):
        ScoringParams(**kwargs)  # type: ignore[arg-type]

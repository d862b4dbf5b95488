"""Random-Forest priority: expected lost rides from simulated outcomes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.priority_rf import (
    PriorityParams,
    PriorityRF,
    priority_from_lost_rides,
    simulate_lost_rides,
    train_priority,
)
from twins.features import PriorityInputs, priority_features


def _inputs(soc: list[float], charging: bool = False) -> PriorityInputs:
    n = len(soc)
    return PriorityInputs(
        soc_pct=np.array(soc),
        soh=np.ones(n),
        consumption_pct_per_ride=np.full(n, 4.0),
        demand_next_3h=np.full(n, 6.0),
        demand_next_6h=np.full(n, 12.0),
        idle_h=np.zeros(n),
        hour_of_day=np.full(n, 17.0),
        charging=np.full(n, charging),
    )


def test_outcome_simulation_loses_more_rides_with_less_charge() -> None:
    """An empty vehicle loses every request; a full one loses none in 6 h at 2 rides/h."""
    rate = np.full((3, 36), 2.0)
    lost = simulate_lost_rides(_inputs([5.0, 30.0, 100.0]), rate, PriorityParams(), np.random.default_rng(0), 20)
    assert lost[0] > lost[1] > lost[2]
    assert lost[0] == pytest.approx(12.0 * np.exp(-0.0), rel=0.35)
    on_charger = simulate_lost_rides(_inputs([5.0], charging=True), rate[:1], PriorityParams(), np.random.default_rng(0))
    assert on_charger[0] == 0.0


@pytest.fixture(scope="module")
def model() -> PriorityRF:
    m, _ = train_priority(5000, PriorityParams(n_estimators=40), seed=1)
    return m


def test_forest_beats_the_rule_and_ranks_low_charge_first(model: PriorityRF) -> None:
    """Held-out MAE below the physics rule's; lower charge gets a higher priority."""
    assert model.metrics["lost_rides_mae"] < model.metrics["baseline_rule_mae"]
    pred = model.predict(_inputs([3.0, 18.0, 90.0]))
    assert pred.priority[0] > pred.priority[1] > pred.priority[2]
    assert np.all((pred.priority >= 0) & (pred.priority <= 100))


def test_save_load_round_trip(model: PriorityRF, tmp_path: Path) -> None:
    """The artifact reloads to identical predictions; a wrong feature width is an error."""
    model.save(tmp_path)
    again = PriorityRF.load(tmp_path)
    x = priority_features(_inputs([10.0, 50.0]))
    np.testing.assert_array_equal(model.predict_features(x).lost_rides_6h, again.predict_features(x).lost_rides_6h)
    with pytest.raises(ValueError, match="shape"):
        again.predict_features(np.zeros((1, 2), dtype=np.float32))


def test_priority_score_scale() -> None:
    """0 lost rides: 0; one: 50; nine: 90."""
    np.testing.assert_allclose(priority_from_lost_rides(np.array([0.0, 1.0, 9.0])), [0.0, 50.0, 90.0])

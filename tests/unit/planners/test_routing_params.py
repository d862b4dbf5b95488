"""Tests for :mod:`planners.routing_params`."""

from __future__ import annotations

import tomllib

import pytest

from planners import ProblemError, RoutingParams


def test_defaults_follow_the_issue() -> None:
    """Insertion first solution and guided local search by default; distance objective."""
    params = RoutingParams()
    assert params.first_solution_strategy == "PARALLEL_CHEAPEST_INSERTION"
    assert params.local_search_metaheuristic == "GUIDED_LOCAL_SEARCH"
    assert params.objective == "distance"
    assert params.solution_limit is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"time_limit_s": 0}, "Expected time_limit_s > 0, got 0"),
        ({"solution_limit": 0}, "Expected solution_limit >= 1 or None, got 0"),
        ({"first_solution_strategy": "FASTEST"}, "Expected first_solution_strategy in .*got 'FASTEST'"),
        ({"local_search_metaheuristic": "gls"}, "Expected local_search_metaheuristic in .*got 'gls'"),
        ({"objective": "time"}, "Expected objective in \\['distance', 'hierarchical'\\], got 'time'"),
        ({"vehicle_cost": -1}, "Expected vehicle_cost >= 0 or None, got -1"),
        ({"guided_local_search_lambda_coefficient": 0}, "lambda_coefficient > 0, got 0"),
    ],
)
def test_validation(kwargs: dict[str, object], message: str) -> None:
    """Out-of-range values and unknown names are rejected, quoting the value."""
    with pytest.raises(ProblemError, match=message):
        RoutingParams(**kwargs)  # type: ignore[arg-type]


def test_from_full_and_empty_config() -> None:
    """A full TOML section sets every field; an empty one gives the defaults."""
    full = tomllib.loads(
        """
        time_limit_s = 30.0
        solution_limit = 100
        first_solution_strategy = "SAVINGS"
        local_search_metaheuristic = "TABU_SEARCH"
        objective = "hierarchical"
        vehicle_cost = 1000000
        guided_local_search_lambda_coefficient = 0.2
        log_search = true
        """
    )
    params = RoutingParams.from_mapping(full)
    assert params == RoutingParams(**full)
    assert RoutingParams.from_mapping({}) == RoutingParams()


def test_unknown_config_keys_are_an_error() -> None:
    """A typo in a config key is reported rather than ignored."""
    with pytest.raises(ProblemError, match="got unknown \\['time_limit'\\]"):
        RoutingParams.from_mapping({"time_limit": 5})

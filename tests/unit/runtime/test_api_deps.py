"""Tests for :mod:`runtime.api_deps` and :mod:`runtime.ingress` that need no Ray cluster.

The adapters' two translations are checked with Ray's own exception objects and a patched
``ray.get_actor``: a failed remote call re-raises its cause, and a missing actor is a
:class:`serve.http.errors.ServiceUnavailable`.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, cast

import pytest
import ray
from pydantic import ValidationError
from ray.exceptions import RayTaskError
from ray.serve import Deployment

from contracts.errors import WorkOrderError
from runtime.api_deps import (
    RayBridgeStats,
    RayFleetReader,
    RayPlannerClient,
    ServeModelStatus,
    unwrapped,
)
from runtime.ingress import ApiIngress, IngressConfig
from serve.http.errors import PlannerNotRunning, ServiceUnavailable


async def _raising(err: BaseException) -> Any:
    raise err


def _no_actor(*args: object, **kwargs: object) -> Any:
    raise ValueError("Failed to look up actor with name 'x'.")


@pytest.mark.parametrize("cause", [KeyError("No work order with id 7."), WorkOrderError("refused")])
async def test_a_remote_error_is_re_raised_as_its_cause(cause: Exception) -> None:
    """A RayTaskError (plain or dual-class) re-raises the very exception the task raised."""
    for wrapped in (RayTaskError("report", "tb", cause), RayTaskError("report", "tb", cause).as_instanceof_cause()):
        with pytest.raises(type(cause)) as info:
            await unwrapped(_raising(wrapped))
        assert info.value is cause and not isinstance(info.value, RayTaskError)


async def test_a_successful_call_answers_its_value() -> None:
    """unwrapped awaits the call and answers what it answered."""

    async def seven() -> int:
        return 7

    assert await unwrapped(seven()) == 7


async def test_no_planner_actor_is_planner_not_running(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every planner call without the actor raises PlannerNotRunning (a 503 in the API)."""
    monkeypatch.setattr(ray, "get_actor", _no_actor)
    planner = RayPlannerClient("bms")
    calls: list[Awaitable[Any]] = [planner.queue(), planner.roster(), planner.route_of("t")]
    for call in calls:
        with pytest.raises(PlannerNotRunning, match="planner is not running"):
            await call


async def test_fleet_errors_keep_their_meaning(monkeypatch: pytest.MonkeyPatch) -> None:
    """A shard refusing an argument stays a ValueError (a 422); no directory actor to ask
    is ServiceUnavailable (a 503), not a ValueError."""
    fleet = RayFleetReader("bms")
    refused = RayTaskError("group_stats", "tb", ValueError("Expected group_by in (...), got 'x'."))
    with pytest.raises(ValueError, match="group_by"):
        await fleet._call(_raising(refused))
    monkeypatch.setattr(ray, "get_actor", _no_actor)
    with pytest.raises(ServiceUnavailable, match="twin shards are not running"):
        await fleet.num_shards()


async def test_a_stopped_bridge_is_reported_as_none(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bridge worker that is not running has no counters (None), and is not an error."""
    monkeypatch.setattr(ray, "get_actor", _no_actor)
    assert await RayBridgeStats("bms", ["bms-bridge-0"]).stats() == {"bms-bridge-0": None}


class _Method:
    def __init__(self, result: object) -> None:
        self.result = result

    def remote(self) -> Awaitable[object]:
        async def answer() -> object:
            if isinstance(self.result, BaseException):
                raise self.result
            return self.result

        return answer()


class _Handle:
    def __init__(self, status: object) -> None:
        self.status = _Method(status)


async def test_model_status_goes_through_the_handles() -> None:
    """Deployed models answer their replica's status; others None; a replica's error is
    re-raised as its cause."""
    models = ServeModelStatus({"health": _Handle({"name": "health"}), "demand": _Handle(RayTaskError("status", "tb", RuntimeError("down")))})  # type: ignore[dict-item]
    assert models.names() == ["demand", "health"]
    assert await models.status("health") == {"name": "health"}
    assert await models.status("priority") is None
    with pytest.raises(RuntimeError, match="down"):
        await models.status("demand")


def test_the_ingress_deployment_keeps_its_options() -> None:
    """The ingress reserves no CPU, takes up to 200 requests at once, and builds its app
    after construction (Serve's late-bound ingress)."""
    deployment = cast(Deployment, ApiIngress)  # @serve.deployment made the class a Deployment
    assert deployment.ray_actor_options == {"num_cpus": 0}
    assert deployment.max_ongoing_requests == 200
    assert hasattr(deployment.func_or_class, "__serve_build_asgi_app__")


def test_ingress_config_refuses_unknown_keys() -> None:
    """IngressConfig is strict: a misspelt key is an error naming it, not ignored."""
    with pytest.raises(ValidationError, match="postgres_ur"):
        IngressConfig(postgres_url="postgresql://x", redis_url="redis://x", postgres_ur="y")  # type: ignore[call-arg]

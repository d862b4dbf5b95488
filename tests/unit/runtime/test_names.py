"""Actor and deployment names, and the options every actor role is started with."""

from __future__ import annotations

import pytest

from runtime.names import bridge_actor_name, model_deployment_name, shard_actor_name
from runtime.options import ACTOR_ROLES, HEAD_RESOURCE, PLACEMENT, actor_options


def test_actor_names() -> None:
    """Shards are named after their ring position, bridge workers after their index."""
    assert shard_actor_name(7) == "bms-shard-7"
    assert bridge_actor_name(0) == "bms-bridge-0"
    assert model_deployment_name("health") == "model-health"


def test_negative_ids_are_refused() -> None:
    """A negative shard id or worker index is a bug upstream: say what arrived."""
    with pytest.raises(ValueError, match="got -1"):
        shard_actor_name(-1)
    with pytest.raises(ValueError, match="got -2"):
        bridge_actor_name(-2)


def test_every_role_is_named_detached_and_restartable() -> None:
    """Every actor is found by name after its creator exits and comes back after a crash."""
    for role in ACTOR_ROLES:
        opts = actor_options(role, "x", "ns")
        assert opts["name"] == "x" and opts["namespace"] == "ns"
        assert opts["lifetime"] == "detached" and opts["get_if_exists"] is True
        assert opts["max_restarts"] == -1 and opts["num_cpus"] == 0


def test_unknown_role() -> None:
    """A typo in a role names the known ones."""
    with pytest.raises(ValueError, match="shard"):
        actor_options("shrad", "x", "ns")


def test_singletons_run_on_the_head_and_the_rest_spread() -> None:
    """On a cluster the singletons go to the head (a worker's loss never takes them), twin
    shards and bridge workers spread over the nodes that can take them."""
    assert set(PLACEMENT) == set(ACTOR_ROLES)
    for role in ACTOR_ROLES:
        opts = actor_options(role, "x", "ns")
        if role in ("shard", "bridge"):
            assert opts["scheduling_strategy"] == "SPREAD" and "resources" not in opts
        else:
            assert opts["resources"] == {HEAD_RESOURCE: 0.001} and "scheduling_strategy" not in opts

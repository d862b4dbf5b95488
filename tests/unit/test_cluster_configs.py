"""The cluster launcher configs pass Ray's own validation, and their resources are the ones
the twin shards ask for."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from bms.settings import Settings
from bms.system import twin_runtime_spec
from runtime.twins import shard_options

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = [ROOT / "cluster.yaml", ROOT / "deploy" / "cluster-onprem.yaml"]
SHARD_RESOURCE = "bms_twin_shard"


def _load(path: Path) -> dict[str, Any]:
    config = yaml.safe_load(path.read_text())
    assert isinstance(config, dict), f"{path} is not a YAML mapping"
    return config


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_ray_validates_the_config(path: Path) -> None:
    """What `ray up` does first: fill in the provider's defaults, then check the launcher's
    schema. A placeholder the launcher does not expand (``${...}``) fails here."""
    config = _load(path)
    assert "${" not in path.read_text().split("\ncluster_name:", 1)[1], "the launcher expands no variables"
    prepared = prepare_config(config)
    validate_config(prepared)
    assert prepared["head_node_type"] in prepared["available_node_types"]


def test_aws_node_types_give_shard_slots_to_the_twin_workers_only() -> None:
    """cluster.yaml: the head advertises no shard slot, the twin workers 4 each, and the
    autoscaling bounds keep at least two twin workers."""
    types = _load(ROOT / "cluster.yaml")["available_node_types"]
    assert SHARD_RESOURCE not in types["head"]["resources"]
    worker = types["twin_worker"]
    assert worker["resources"][SHARD_RESOURCE] == 4
    assert 2 <= worker["min_workers"] <= worker["max_workers"]


def test_onprem_workers_start_with_shard_slots() -> None:
    """deploy/cluster-onprem.yaml: the local provider has no node types, so the workers'
    `ray start` offers the slots; the head's does not."""
    config = _load(ROOT / "deploy" / "cluster-onprem.yaml")
    (worker,) = [c for c in config["worker_start_ray_commands"] if "ray start" in c]
    (flag,) = [t for t in shlex.split(worker) if t.startswith("--resources=")]  # as the shell passes it
    assert json.loads(flag.removeprefix("--resources=")) == {SHARD_RESOURCE: 4}
    (head,) = [c for c in config["head_start_ray_commands"] if "ray start" in c]
    assert "--resources" not in head and "--head" in shlex.split(head)


def test_shards_take_one_slot_when_the_config_names_the_resource() -> None:
    """[twins] shard_resource makes every shard ask for one unit; without it (one machine,
    where no node advertises it) shards ask for none."""
    urls = ("postgresql://127.0.0.1/x", "redis://127.0.0.1:6379/0")
    from bms.services import ServiceUrls

    service = ServiceUrls(*urls, "mqtt://127.0.0.1:1883")
    plain = twin_runtime_spec(Settings(), service)
    assert "resources" not in shard_options(3, plain)
    clustered = twin_runtime_spec(Settings.model_validate({"twins": {"shard_resource": SHARD_RESOURCE}}), service)
    options = shard_options(3, clustered)
    assert options["resources"] == {SHARD_RESOURCE: 1}
    assert options["name"].endswith("3") and options["max_restarts"] == -1

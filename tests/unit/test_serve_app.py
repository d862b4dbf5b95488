"""The Serve application builder's arguments and settings (no Ray: the start itself runs in
the fault session's ``test_serve_deploy.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from bms.serve_app import ServeAppArgs, ServeAppError, cluster_settings
from bms.settings import Settings
from bms.system import initial_shards

URLS = {
    "BMS_POSTGRES_URL": "postgresql://bms@db:5432/bms",
    "BMS_REDIS_URL": "redis://cache:6379/0",
    "BMS_MQTT_URL": "mqtt://broker:1883",
}


def test_unknown_args_are_refused() -> None:
    """A typo in the Serve config's args is an error, not a default silently used."""
    with pytest.raises(ValidationError, match="confg"):
        ServeAppArgs.model_validate({"confg": "/etc/bms/bms.toml"})


@pytest.mark.parametrize("unset", sorted(URLS))
def test_a_cluster_needs_every_server_external(unset: str) -> None:
    """An embedded server would live in Serve's build task and die with it: say which
    variable is missing."""
    env = {k: v for k, v in URLS.items() if k != unset}
    with pytest.raises(ServeAppError, match=f"Missing: {unset}"):
        cluster_settings(ServeAppArgs(), env)


def test_settings_come_from_the_file_and_the_environment(tmp_path: Path) -> None:
    config = tmp_path / "bms.toml"
    config.write_text('[twins]\nshard_resource = "bms_twin_shard"\nshard_size = 1000\nfleet_size = 2500\n')
    s = cluster_settings(ServeAppArgs(config=str(config)), dict(URLS))
    assert s.twins.shard_resource == "bms_twin_shard" and s.postgres_url == URLS["BMS_POSTGRES_URL"]
    assert initial_shards(s) == 3  # ceil(2500 / 1000)


def test_shards_follow_the_fleet_size() -> None:
    """[twins] fleet_size sets the shards started up front; unset, the simulated fleet does."""
    s = Settings.model_validate({"twins": {"shard_size": 100, "fleet_size": 1001}})
    assert initial_shards(s) == 11
    s = Settings.model_validate({"twins": {"shard_size": 100}, "sim": {"vehicles": 50}})
    assert initial_shards(s) == 1
